//! The pingora `ProxyHttp` implementation: request phases around a per-request [`Ctx`].
//! Decisions are made by plain functions elsewhere ([`super::choose`], the routing core,
//! [`super::oci`], [`super::token`]); the shared request helpers are in [`super::request`].
//! This file wires them to pingora's phases:
//!
//! - `request_filter` (`decide`): gathers the facts (client behind trusted proxies, path,
//!   upload token verdict, affinity), lets [`choose`] pick the region, records the affinity or
//!   session it names; refusals answered here in OCI error JSON; manifest PUTs handed to
//!   [`super::manifest`].
//! - `upstream_peer`: the region's address; the next region after a 404 read or a refused
//!   connection.
//! - `upstream_request_filter`: token stripped, `X-Forwarded-*` set.
//! - `upstream_response_filter`: 404 reads retried elsewhere; `Location` rewritten with a token.
//! - `fail_to_connect` / `error_while_proxy` / `fail_to_proxy`: failover and error answers.
//! - `logging`: metrics.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::Method;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};

use super::choose::{
    choose, held_elsewhere, next_region, refusal_of, routed, Binding, Facts, Refusal,
};
use super::oci::{self, Route};
use super::request::{
    is_timeout, passive_failure, passive_success, peer_for, respond, set_forwarding, Ctx, Kind,
    Shared,
};
use super::token;
use crate::config::RegionId;
use crate::metrics::ProxyMetrics;
use crate::routing::ClientKey;
use crate::snapshot::Snapshot;

pub(super) struct BerthProxy {
    shared: Arc<Shared>,
}

impl BerthProxy {
    pub(super) fn new(shared: Arc<Shared>) -> BerthProxy {
        BerthProxy { shared }
    }
}

/// Where a request goes when its region fails it: the routing core's next region, except for
/// an upload session, which lives in its region or nowhere.
fn failover_target(ctx: &Ctx) -> Option<RegionId> {
    match ctx.binding {
        Binding::Affinity | Binding::Client => {
            let snap = ctx.snap();
            routed(&snap).and_then(|rn| next_region(&snap, rn, ctx.client, &ctx.tried))
        }
        Binding::Session | Binding::None => None,
    }
}

/// Unix time in seconds: upload tokens carry their expiry in it, so every instance agrees.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl BerthProxy {
    /// The regions replication knows hold what a manifest or blob request names (a short
    /// lock on its status table, no IO); None when replication is off or it is another path.
    fn holders(&self, snap: &Snapshot, route: Route) -> Option<Vec<RegionId>> {
        let r = self.shared.live.replication.get()?;
        let names = match route {
            Route::Manifest { repo, reference } => r.manifest_holders(repo, reference),
            Route::Blob { repo, digest } => r.blob_holders(repo, digest),
            _ => return None,
        };
        Some(
            names
                .iter()
                .filter_map(|n| snap.config.region_id(n))
                .collect(),
        )
    }

    /// Gather the facts (client, path, token, affinity), let [`choose`] decide, and record
    /// what it says; Some(refusal) if Berth answers itself.
    fn decide(&self, session: &Session, ctx: &mut Ctx, snap: &Snapshot) -> Option<Refusal> {
        let Some(rn) = routed(snap) else {
            return Some(refusal_of(
                503,
                "UNAVAILABLE",
                "the proxy's routed name is not configured",
                None,
            ));
        };
        ctx.read_client(session, &snap.config.proxy.trusted_proxies);
        let req = session.req_header();
        ctx.method = ProxyMetrics::method_index(req.method.as_str());
        let path = req.uri.path();
        // Registries decode the path before routing it (`team%2fapp` is `team/app`), so we
        // classify what the registry will see; otherwise an encoded name would pass as
        // "other" and skip tokens, affinity and the safety net.
        let Some(decoded) = oci::decode_path(path) else {
            return Some(refusal_of(
                400,
                "NAME_INVALID",
                "invalid repository name",
                Some("the request path's percent-encoding is malformed".to_string()),
            ));
        };
        let route = oci::parse(&decoded);
        ctx.kind = Kind::of(&route);
        ctx.repo = route.repo().map(String::from);
        let (tok, rest) = match req.uri.query() {
            Some(q) => token::take_token(q),
            None => (None, None),
        };
        if tok.is_some() {
            let pq = match &rest {
                Some(q) => format!("{path}?{q}"),
                None => path.to_string(),
            };
            ctx.upstream_uri = pq.parse().ok();
        }
        let uuid = match route {
            Route::Upload { uuid, .. } => Some(uuid),
            _ => None,
        };
        ctx.uuid = uuid.map(String::from);

        let now = self.shared.live.now();
        let key = ClientKey::new(ctx.client, rn.client_prefix(&ctx.client));
        let session_token = match (route, tok) {
            (Route::Upload { repo, uuid }, Some(tok)) => {
                Some(self.shared.signer.verify(tok, repo, uuid, unix_now()))
            }
            _ => None,
        };
        let affinity = match (&session_token, route.repo()) {
            (None, Some(repo)) => self.shared.affinity.get(key, repo, now),
            _ => None,
        };
        let holders = self.holders(snap, route);
        let facts = Facts {
            client: ctx.client,
            route,
            method: &req.method,
            session: session_token,
            affinity: affinity.as_ref().map(|(name, since)| (&**name, *since)),
            holders: holders.as_deref(),
        };
        let choice = choose(snap, rn, &facts, now);
        ctx.binding = choice.binding;
        ctx.fallback_left = choice.read_fallback;
        if choice.read {
            ctx.holders = holders.unwrap_or_default();
        }
        let id = match choice.region {
            Ok(id) => id,
            Err(r) => {
                if choice.binding == Binding::Session {
                    let m = &self.shared.live.metrics.proxy;
                    m.refused_sessions.fetch_add(1, Ordering::Relaxed);
                }
                return Some(r);
            }
        };
        ctx.region = Some(id);
        let name = &snap.config.regions[id].name;
        match (choice.binding, route.repo(), uuid) {
            (Binding::Session, _, Some(uuid)) => self.shared.sessions.touch(uuid, name, now),
            (Binding::Affinity, Some(repo), _) => self.shared.affinity.record(key, repo, name, now),
            _ => {}
        }
        None
    }
}

#[async_trait]
impl ProxyHttp for BerthProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new(&self.shared.inflight)
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let snap = self.shared.live.snapshot.load_full();
        ctx.snap = Some(snap.clone());
        if let Some(r) = self.decide(session, ctx, &snap) {
            ctx.answered_by_berth = true;
            respond(session, &r).await?;
            return Ok(true);
        }
        if ctx.kind == Kind::Manifest && session.req_header().method == Method::PUT {
            return super::manifest::put(&self.shared, session, ctx).await;
        }
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let snap = ctx.snap();
        if let Some(next) = ctx.next.take() {
            ctx.move_on(next);
            if ctx.failover {
                ctx.failover = false;
                if let (Some(from), Some(rn)) = (ctx.region, routed(&snap)) {
                    if let Some(c) = snap.counters.region(from) {
                        c.proxy.failovers.fetch_add(1, Ordering::Relaxed);
                    }
                    if let (Binding::Affinity, Some(repo)) = (ctx.binding, &ctx.repo) {
                        let key = ClientKey::new(ctx.client, rn.client_prefix(&ctx.client));
                        self.shared.affinity.record(
                            key,
                            repo,
                            &snap.config.regions[next].name,
                            self.shared.live.now(),
                        );
                    }
                }
            }
            ctx.region = Some(next);
        }
        let id = ctx
            .region
            .expect("request_filter chooses a region or answers");
        if !ctx.tried.contains(&id) {
            ctx.tried.push(id);
        }
        match peer_for(&self.shared, &snap, id) {
            Ok((peer, url)) => {
                ctx.upstream_authority = url.authority;
                Ok(Box::new(peer))
            }
            Err(r) => {
                let status = r.status;
                ctx.refusal = Some(r);
                Err(Error::explain(
                    ErrorType::HTTPStatus(status),
                    "no usable upstream for the region",
                ))
            }
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(b) = body {
            ctx.bytes_in += b.len() as u64;
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(uri) = &ctx.upstream_uri {
            req.set_uri(uri.clone());
        }
        set_forwarding(req, ctx)
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let snap = ctx.snap();
        let status = resp.status.as_u16();
        ctx.attempt_status = status;
        if status == 404 && ctx.fallback_left > 0 {
            if let Some(next) =
                routed(&snap).and_then(|rn| next_region(&snap, rn, ctx.client, &ctx.tried))
            {
                ctx.fallback_left -= 1;
                ctx.fell_back = true;
                ctx.next = Some(next);
                let mut e = Error::explain(
                    ErrorType::HTTPStatus(404),
                    "not in this region (yet): read fallback",
                );
                e.set_retry(true);
                return Err(e);
            }
        }
        let id = ctx.region.expect("a peer was chosen");
        passive_success(&self.shared, &snap, id);
        if status == 404 && !ctx.holders.is_empty() {
            if let Some(r) = held_elsewhere(&snap, &ctx.holders, &ctx.earlier) {
                // This region answered (its 404 is an attempt like the earlier ones), but
                // Berth answers the client.
                ctx.earlier.push((id, status));
                ctx.refusal = Some(r);
                return Err(Error::explain(
                    ErrorType::HTTPStatus(503),
                    "the content's holder cannot be reached",
                ));
            }
        }
        if ctx.fell_back && resp.status.is_success() {
            if let Some(c) = snap.counters.region(id) {
                c.proxy.fallbacks.fetch_add(1, Ordering::Relaxed);
            }
        }
        let region = snap.config.regions[id].name.as_str();
        let now = self.shared.live.now();
        if let Some(loc) = resp
            .headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(String::from)
        {
            let parsed = token::Location::parse(&loc);
            let tok = match oci::parse(parsed.path) {
                Route::Upload { repo, uuid } => {
                    self.shared.sessions.touch(uuid, region, now);
                    let expires = unix_now()
                        .saturating_add(snap.config.proxy.upload_token_lifetime.as_secs());
                    Some(self.shared.signer.sign(region, repo, uuid, expires))
                }
                _ => None,
            };
            if let Some(new) = token::rewrite_location(
                &loc,
                &ctx.upstream_authority,
                &ctx.public_origin(),
                tok.as_deref(),
            ) {
                resp.insert_header("location", new)?;
            }
        }
        let method = &session.req_header().method;
        let finished = (*method == Method::PUT && status == 201)
            || (*method == Method::DELETE && (200..300).contains(&status));
        if let (Kind::Upload, true, Some(uuid)) = (ctx.kind, finished, &ctx.uuid) {
            self.shared.sessions.finish(uuid);
        }
        if ctx.kind == Kind::Manifest && *method == Method::DELETE {
            super::manifest::deleted(&self.shared, ctx, &snap, session.req_header(), resp);
        }
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        if let Some(b) = body {
            ctx.bytes_out += b.len() as u64;
        }
        Ok(None)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(id) = ctx.region {
            passive_failure(&self.shared, &ctx.snap(), id, &e);
        }
        // A session lives in its region: never elsewhere. Anything else moves on to the next
        // region the routing core would pick, and its affinity follows.
        match failover_target(ctx) {
            Some(n) => {
                ctx.next = Some(n);
                ctx.failover = true;
                e.set_retry(true);
            }
            None => e.set_retry(false),
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer {peer}"));
        if is_timeout(&e) && *e.esource() == ErrorSource::Upstream {
            if let Some(id) = ctx.region {
                passive_failure(&self.shared, &ctx.snap(), id, &e);
            }
        }
        if ctx.next.is_some() {
            // Our own read fallback: retry on the next region.
            e.set_retry(true);
            return e;
        }
        // Sending it again is safe when nothing reached the client yet and the request can be
        // repeated whole: idempotent, or starting an upload (a second start only leaves an
        // unused session behind), with its body still in the retry buffer.
        let method = &session.req_header().method;
        let repeatable = session.response_written().is_none()
            && (method.is_idempotent() || ctx.kind == Kind::UploadStart)
            && !session.as_ref().retry_buffer_truncated()
            && *e.esource() == ErrorSource::Upstream;
        if !repeatable {
            e.set_retry(false);
        } else if client_reused && !is_timeout(&e) {
            // Most likely a keep-alive connection the registry had closed: same region. (A
            // timeout is no such thing: the region is slow or hung, so it moves on.)
            e.set_retry(true);
        } else {
            // A fresh connection failed mid-request: the region is going away. A session stays
            // (and is refused in fail_to_proxy); anything else moves on.
            let next = failover_target(ctx);
            ctx.failover = next.is_some();
            ctx.next = next;
            e.set_retry(next.is_some());
        }
        e
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        ctx: &Ctx,
        _error: &Error,
        _context: pingora::proxy::ProxyWarnLogContext,
    ) -> bool {
        // A planned read fallback is not worth a warning; failovers are counted in metrics.
        ctx.next.is_some() && !ctx.failover
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        if let Some(resp) = session.response_written() {
            return FailToProxy {
                error_code: resp.status.as_u16(),
                can_reuse_downstream: false,
            };
        }
        let region = ctx
            .snap
            .as_ref()
            .zip(ctx.region)
            .map(|(s, id)| s.config.regions[id].name.clone())
            .unwrap_or_default();
        let r = if let Some(r) = ctx.refusal.take() {
            ctx.answered_by_berth = true;
            r
        } else if ctx.binding == Binding::Session && *e.esource() != ErrorSource::Downstream {
            self.shared
                .live
                .metrics
                .proxy
                .refused_sessions
                .fetch_add(1, Ordering::Relaxed);
            refusal_of(
                404,
                "BLOB_UPLOAD_UNKNOWN",
                "blob upload unknown to registry",
                Some(format!(
                    "the upload's region {region} cannot be reached ({}); start the upload again",
                    e.etype().as_str()
                )),
            )
        } else {
            match (e.etype(), e.esource()) {
                (ErrorType::HTTPStatus(code), _) => refusal_of(
                    *code,
                    "UNAVAILABLE",
                    "the request failed",
                    Some(e.to_string()),
                ),
                (
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed,
                    ErrorSource::Downstream,
                ) => {
                    return FailToProxy {
                        error_code: 0,
                        can_reuse_downstream: false,
                    }
                }
                (_, ErrorSource::Downstream) => {
                    refusal_of(400, "UNSUPPORTED", "bad request", Some(e.to_string()))
                }
                // UNAVAILABLE is the registry's own code for "try again later"
                // (distribution's errcode.ErrorCodeUnavailable); clients retry on it, and
                // 504 tells an operator it was a gateway timeout, not a refusal.
                (t, ErrorSource::Upstream) if is_timeout(e) => refusal_of(
                    504,
                    "UNAVAILABLE",
                    "the region's registry did not answer in time",
                    Some(format!(
                        "{region}: {} ([proxy] {})",
                        t.as_str(),
                        match t {
                            ErrorType::ConnectTimedout => "connect_timeout",
                            ErrorType::WriteTimedout => "upstream_write_timeout",
                            _ => "upstream_read_timeout",
                        }
                    )),
                ),
                (_, ErrorSource::Upstream) => refusal_of(
                    502,
                    "UNAVAILABLE",
                    "the region's registry cannot be reached",
                    Some(format!("{region}: {}", e.etype().as_str())),
                ),
                _ => refusal_of(500, "UNKNOWN", "internal error", Some(e.to_string())),
            }
        };
        let code = r.status;
        if let Err(we) = respond(session, &r).await {
            tracing::debug!(error = %we, "cannot send the error answer");
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let region = if ctx.answered_by_berth {
            None
        } else {
            ctx.region
        };
        let metrics = &self.shared.live.metrics.proxy;
        let counters = ctx.snap.as_ref().map(|s| &*s.counters);
        for (r, st) in &ctx.earlier {
            metrics.row(counters, Some(*r)).attempt(ctx.method, *st);
        }
        // A request that failed after its answer began (the client went away mid-body)
        // keeps the status it was sent with; one that failed before has none.
        let took = ctx.started.elapsed();
        metrics.row(counters, region).finished(
            ctx.method,
            if e.is_some() && status == 0 {
                0
            } else {
                status
            },
            (ctx.bytes_in, ctx.bytes_out),
            took,
        );
        let name = ctx
            .snap
            .as_ref()
            .zip(region)
            .map_or("-", |(s, id)| s.config.regions[id].name.as_str());
        if crate::logs::access_log_on() {
            let req = session.req_header();
            tracing::info!(
                target: crate::logs::ACCESS_TARGET,
                client = %ctx.client,
                method = %req.method,
                repository = ctx.repo.as_deref().unwrap_or("-"),
                path = %req.uri.path(),
                region = name,
                status,
                bytes_in = ctx.bytes_in,
                bytes_out = ctx.bytes_out,
                duration_seconds = took.as_secs_f64(),
                request_id = %ctx.request_id,
                tried = ctx.tried.len(),
                error = e.map(|e| e.etype().as_str()).unwrap_or("-"),
                "request"
            );
        }
    }
}
