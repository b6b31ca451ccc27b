//! Manifest PUTs, with the safety net. A manifest is small: it is read whole (up to
//! `manifest_buffer_limit`) and sent to the request's region by Berth itself. If that region
//! answers MANIFEST_BLOB_UNKNOWN (or cannot be reached), the blobs of this push are somewhere
//! else: the other eligible regions are asked, in the routing core's order, whether they hold
//! every blob (and child manifest) the manifest names, and the first that does gets the PUT.
//! The affinity follows, so the rest of the client's work lands there too. If none does, the
//! client gets the registry's own refusal: never a manifest without its blobs.

use bytes::{Bytes, BytesMut};
use http::Method;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::Result;
use std::sync::atomic::Ordering;

use super::choose::{next_region, refusal_of, routed};
use super::oci::{self, References};
use super::request::{
    is_timeout, passive_failure, passive_success, peer_for, respond, set_forwarding, Ctx, Shared,
};
use super::token;
use crate::config::RegionId;
use crate::routing::ClientKey;
use crate::snapshot::Snapshot;

/// Error bodies are small; more than this of one is not kept.
const MAX_REPLY_BODY: usize = 1 << 20;

const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// A whole answer from a region.
struct Reply {
    header: ResponseHeader,
    body: Bytes,
}

/// Send one request to a region and read the whole answer.
async fn exchange(
    shared: &Shared,
    snap: &Snapshot,
    id: RegionId,
    req: RequestHeader,
    body: Option<Bytes>,
) -> Exchanged {
    // A pooled connection the registry has closed fails at once: then try a new one.
    for _ in 0..3 {
        match exchange_once(shared, snap, id, req.clone(), body.clone()).await {
            Err((msg, true)) => tracing::debug!(error = %msg, "reused connection failed; again"),
            Err((msg, false)) => return Err(msg),
            Ok(r) => return Ok(r),
        }
    }
    Err("the region's connections keep failing".to_string())
}

/// One attempt; on failure, whether it was on a reused connection.
async fn exchange_once(
    shared: &Shared,
    snap: &Snapshot,
    id: RegionId,
    req: RequestHeader,
    body: Option<Bytes>,
) -> std::result::Result<(Reply, String), (String, bool)> {
    let (peer, url) = peer_for(shared, snap, id).map_err(|r| (r.message, false))?;
    let (mut s, reused) = shared
        .connector
        .get_http_session(&peer)
        .await
        .map_err(|e| {
            passive_failure(shared, snap, id, &e);
            (e.to_string(), false)
        })?;
    // The connector leaves these to its caller (the proxy loop sets them from the peer too).
    s.set_read_timeout(peer.options.read_timeout);
    s.set_write_timeout(peer.options.write_timeout);
    // A pooled connection the registry closed is worth another try; a timeout is not (the
    // region is slow or hung, and trying again only makes the client wait longer).
    let io = |e: Box<pingora::Error>| {
        let timeout = is_timeout(&e);
        if timeout {
            passive_failure(shared, snap, id, &e);
        }
        (e.to_string(), reused && !timeout)
    };
    s.write_request_header(Box::new(req)).await.map_err(io)?;
    if let Some(b) = body {
        s.write_request_body(b, true).await.map_err(io)?;
    }
    s.finish_request_body().await.map_err(io)?;
    s.read_response_header().await.map_err(io)?;
    passive_success(shared, snap, id);
    let header = s
        .response_header()
        .cloned()
        .ok_or_else(|| ("no response header".to_string(), false))?;
    let mut out = BytesMut::new();
    while let Some(chunk) = s.read_response_body().await.map_err(io)? {
        if out.len() + chunk.len() <= MAX_REPLY_BODY {
            out.extend_from_slice(&chunk);
        }
    }
    shared
        .connector
        .release_http_session(s, &peer, peer.options.idle_timeout)
        .await;
    Ok((
        Reply {
            header,
            body: out.freeze(),
        },
        url.authority,
    ))
}

/// Does region `id` hold everything `refs` names (HEAD each, with the client's credentials)?
async fn holds_all(
    shared: &Shared,
    snap: &Snapshot,
    id: RegionId,
    repo: &str,
    refs: &References,
    template: &RequestHeader,
    ctx: &Ctx,
) -> bool {
    let paths = refs
        .blobs
        .iter()
        .map(|d| format!("/v2/{repo}/blobs/{d}"))
        .chain(
            refs.manifests
                .iter()
                .map(|d| format!("/v2/{repo}/manifests/{d}")),
        );
    for path in paths {
        let Ok(mut req) = RequestHeader::build(Method::HEAD, path.as_bytes(), Some(6)) else {
            return false;
        };
        for name in ["host", "authorization", "user-agent"] {
            if let Some(v) = template.headers.get(name) {
                let _ = req.insert_header(name, v.clone());
            }
        }
        let _ = req.insert_header("accept", MANIFEST_TYPES);
        if set_forwarding(&mut req, ctx).is_err() {
            return false;
        }
        match exchange(shared, snap, id, req, None).await {
            Ok((r, _)) if r.header.status.as_u16() == 200 => {}
            _ => return false,
        }
    }
    true
}

/// What a region answered, with its authority as its upstream URL writes it; or why not.
type Exchanged = std::result::Result<(Reply, String), String>;

/// Handle a manifest PUT whole; always answers (returns Ok(true) for pingora).
pub(super) async fn put(shared: &Shared, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
    let snap = ctx.snap();
    let limit = snap.config.proxy.manifest_buffer_limit;
    let Some(body) = read_body(session, ctx, limit).await? else {
        return Ok(true);
    };
    ctx.bytes_in = body.len() as u64;
    let req = upstream_request(session.req_header(), ctx, body.len())?;

    let first = ctx.region.expect("request_filter chose a region");
    ctx.tried.push(first);
    let mut reply = exchange(shared, &snap, first, req.clone(), Some(body.clone())).await;
    let refused = match &reply {
        Ok((r, _)) => {
            r.header.status.as_u16() == 400 && oci::has_error_code(&r.body, "MANIFEST_BLOB_UNKNOWN")
        }
        Err(e) => {
            tracing::warn!(region = %snap.config.regions[first].name, error = %e, "manifest PUT: region unreachable");
            if let Some(c) = snap.counters.region(first) {
                c.proxy.failovers.fetch_add(1, Ordering::Relaxed);
            }
            true
        }
    };
    if refused {
        let first_status = reply.as_ref().map_or(0, |(r, _)| r.header.status.as_u16());
        if let Some(second) = safety_net(shared, &snap, ctx, &req, &body).await {
            // The first region's refusal was an attempt too (`logging` counts it).
            ctx.earlier.push((first, first_status));
            reply = Ok(second);
        }
    }
    if let Ok((r, _)) = &reply {
        pushed(shared, ctx, &snap, &req, &r.header);
    }
    answer(session, ctx, &snap, first, reply).await?;
    Ok(true)
}

/// The whole manifest, or None when it is over `limit` (then Berth has answered 413).
async fn read_body(session: &mut Session, ctx: &mut Ctx, limit: usize) -> Result<Option<Bytes>> {
    let mut body = BytesMut::new();
    while let Some(chunk) = session.read_request_body().await? {
        if body.len() + chunk.len() > limit {
            ctx.answered_by_berth = true;
            let r = refusal_of(
                413,
                "MANIFEST_INVALID",
                "manifest invalid",
                Some(format!(
                    "larger than the proxy's manifest_buffer_limit of {limit} bytes"
                )),
            );
            respond(session, &r).await?;
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body.freeze()))
}

/// The client's PUT as Berth sends it on: HTTP/1.1, token stripped, a whole body of `len`.
fn upstream_request(client: &RequestHeader, ctx: &Ctx, len: usize) -> Result<RequestHeader> {
    let mut req = client.clone();
    req.set_version(http::Version::HTTP_11);
    let pq = match &ctx.upstream_uri {
        Some(u) => u.clone(),
        None => req
            .uri
            .path_and_query()
            .map_or("/".parse().expect("literal URI"), |p| {
                p.as_str().parse().expect("a path and query re-parse")
            }),
    };
    req.set_uri(pq);
    for h in ["transfer-encoding", "expect", "connection", "keep-alive"] {
        req.remove_header(h);
    }
    req.insert_header("content-length", len.to_string())?;
    if req.headers.get("host").is_none() {
        req.insert_header("host", ctx.public_host.as_str())?;
    }
    set_forwarding(&mut req, ctx)?;
    Ok(req)
}

/// The first region refused the manifest (or could not be reached): store it in the next
/// eligible region that holds everything it names, and move the affinity there.
async fn safety_net(
    shared: &Shared,
    snap: &Snapshot,
    ctx: &mut Ctx,
    req: &RequestHeader,
    body: &Bytes,
) -> Option<(Reply, String)> {
    let refs = oci::references(body)?;
    let repo = ctx.repo.clone()?;
    let rn = routed(snap)?;
    while let Some(id) = next_region(snap, rn, ctx.client, &ctx.tried) {
        ctx.tried.push(id);
        if !holds_all(shared, snap, id, &repo, &refs, req, ctx).await {
            continue;
        }
        let name = &snap.config.regions[id].name;
        tracing::info!(region = %name, repo = %repo, "manifest safety net: the blobs are here, storing the manifest here");
        if let Ok(second) = exchange(shared, snap, id, req.clone(), Some(body.clone())).await {
            if let Some(c) = snap.counters.region(id) {
                c.proxy.safety_net.fetch_add(1, Ordering::Relaxed);
            }
            let key = ClientKey::new(ctx.client, rn.client_prefix(&ctx.client));
            shared.affinity.record(key, &repo, name, shared.live.now());
            ctx.region = Some(id);
            return Some(second);
        }
    }
    None
}

/// The replication hook: a manifest was stored in `ctx.region`. Sends (repository,
/// reference, digest, region) to the replicator without waiting; nothing else of
/// replication runs in the request path.
fn pushed(
    shared: &Shared,
    ctx: &Ctx,
    snap: &Snapshot,
    req: &RequestHeader,
    header: &ResponseHeader,
) {
    if let Some((r, ev)) = replication_event(shared, ctx, snap, req, header) {
        r.pushed(ev);
    }
}

/// The replication hook for a manifest DELETE that the region answered with success: sends
/// (repository, reference, region) to the replicator without waiting.
pub(super) fn deleted(
    shared: &Shared,
    ctx: &Ctx,
    snap: &Snapshot,
    req: &RequestHeader,
    header: &ResponseHeader,
) {
    if let Some((r, ev)) = replication_event(shared, ctx, snap, req, header) {
        r.deleted(ev);
    }
}

/// What the hooks send: None unless replication is on and the region answered with success.
/// The replicator, if replication is on, and the event for this response, if it is one.
fn replication_event<'a>(
    shared: &'a Shared,
    ctx: &Ctx,
    snap: &Snapshot,
    req: &RequestHeader,
    header: &ResponseHeader,
) -> Option<(
    &'a std::sync::Arc<crate::replication::Replication>,
    crate::replication::Pushed,
)> {
    let r = shared.live.replication.get()?;
    Some((r, event(ctx, snap, req, header)?))
}

fn event(
    ctx: &Ctx,
    snap: &Snapshot,
    req: &RequestHeader,
    header: &ResponseHeader,
) -> Option<crate::replication::Pushed> {
    let (Some(repo), Some(id)) = (&ctx.repo, ctx.region) else {
        return None;
    };
    if !header.status.is_success() {
        return None;
    }
    // `/v2/<repo>/manifests/<reference>`: the last segment (a digest's ':' may come encoded).
    let reference = req.uri.path().rsplit('/').next().unwrap_or_default();
    let reference = reference.replace("%3A", ":").replace("%3a", ":");
    let digest = header
        .headers
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(String::from)
        .or_else(|| reference.contains(':').then(|| reference.clone()));
    Some(crate::replication::Pushed {
        repo: repo.clone(),
        reference,
        digest,
        region: snap.config.regions[id].name.clone(),
        at_ms: crate::replication::unix_ms(),
    })
}

/// Give the client the region's answer (its `Location` made public), or the refusal when no
/// region took the manifest.
async fn answer(
    session: &mut Session,
    ctx: &mut Ctx,
    snap: &Snapshot,
    first: RegionId,
    reply: Exchanged,
) -> Result<()> {
    match reply {
        Ok((r, authority)) => {
            let mut header = r.header;
            for h in ["transfer-encoding", "connection", "keep-alive"] {
                header.remove_header(h);
            }
            header.insert_header("content-length", r.body.len().to_string())?;
            if let Some(loc) = header
                .headers
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(String::from)
            {
                if let Some(new) =
                    token::rewrite_location(&loc, &authority, &ctx.public_origin(), None)
                {
                    header.insert_header("location", new)?;
                }
            }
            ctx.bytes_out = r.body.len() as u64;
            let empty = r.body.is_empty();
            session
                .write_response_header(Box::new(header), empty)
                .await?;
            if !empty {
                session.write_response_body(Some(r.body), true).await?;
            }
        }
        Err(e) => {
            let name = &snap.config.regions[first].name;
            let r = refusal_of(
                400,
                "MANIFEST_BLOB_UNKNOWN",
                "blob unknown to registry",
                Some(format!(
                    "the blobs of this push are in region {name}, which cannot be reached ({e}), and no other region holds them all; push again"
                )),
            );
            respond(session, &r).await?;
        }
    }
    Ok(())
}
