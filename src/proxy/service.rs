//! The pingora `ProxyHttp` implementation: request phases around a per-request [`Ctx`].
//! Decisions are made by plain functions elsewhere (routing core, [`super::next_region`],
//! [`super::oci`], [`super::token`]); this file wires them to pingora's phases:
//!
//! - `request_filter`: client key, public host, path; the region (token, affinity or the
//!   client's own); refusals answered here in OCI error JSON; manifest PUTs handed to
//!   [`super::manifest`].
//! - `upstream_peer`: the region's address; the next region after a 404 read or a refused
//!   connection.
//! - `upstream_request_filter`: token stripped, `X-Forwarded-*` set.
//! - `upstream_response_filter`: 404 reads retried elsewhere; `Location` rewritten with a token.
//! - `fail_to_connect` / `error_while_proxy` / `fail_to_proxy`: failover and error answers.
//! - `logging`: metrics.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::Method;
use ipnet::IpNet;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};

use super::oci::{self, Route};
use super::{next_region, passive, token, usable, Shared};
use crate::config::{RegionId, RoutedName, UpstreamUrl};
use crate::live::HealthInfo;
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

/// What kind of OCI request this is (owned copy of [`Route`]'s variant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Base,
    Blob,
    UploadStart,
    Upload,
    Manifest,
    Tags,
    Referrers,
    Other,
}

/// How the request's region was chosen; it decides what may happen on failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Binding {
    /// Not chosen yet.
    None,
    /// A non-repository path: the client's region.
    Client,
    /// (client key, repository) affinity.
    Affinity,
    /// An upload session's token: that region or nothing.
    Session,
}

/// An answer Berth gives itself, in OCI error JSON.
#[derive(Debug, Clone)]
pub(super) struct Refusal {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub detail: Option<String>,
}

/// Counts a request in flight from creation to drop, for a graceful stop.
pub(super) struct Inflight(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Inflight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Per-request state. Every field is set in `request_filter` unless said otherwise.
pub(super) struct Ctx {
    _inflight: Inflight,
    pub snap: Option<Arc<Snapshot>>,
    /// The client (the TCP peer, or from a trusted `X-Forwarded-For`).
    pub client: IpAddr,
    /// The TCP peer, and whether its forwarding headers are believed.
    pub peer: IpAddr,
    pub peer_trusted: bool,
    /// Index in [`crate::metrics::PROXY_METHODS`].
    pub method: usize,
    pub kind: Kind,
    pub repo: Option<String>,
    pub uuid: Option<String>,
    pub binding: Binding,
    /// The region the request goes (went) to.
    pub region: Option<RegionId>,
    /// Regions already tried, in order.
    pub tried: Vec<RegionId>,
    /// Set by a failure phase: the region the next attempt goes to.
    pub next: Option<RegionId>,
    /// `next` is a failover from a refused connection (re-pins the affinity).
    pub failover: bool,
    /// Regions a 404 read may still be retried on.
    pub fallback_left: usize,
    /// A 404 read was retried elsewhere.
    pub fell_back: bool,
    /// `http` or `https`, and `host[:port]`, as the client sees us.
    pub proto: String,
    pub public_host: String,
    /// The region's authority as its upstream URL writes it (set in `upstream_peer`).
    pub upstream_authority: String,
    /// The URI to forward, when it differs from the client's (token removed).
    pub upstream_uri: Option<http::Uri>,
    /// Berth's own answer to give in `fail_to_proxy`.
    pub refusal: Option<Refusal>,
    /// No region was involved: Berth answered.
    pub answered_by_berth: bool,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl Ctx {
    pub fn public_origin(&self) -> String {
        format!("{}://{}", self.proto, self.public_host)
    }

    pub fn snap(&self) -> Arc<Snapshot> {
        self.snap
            .clone()
            .expect("request_filter loads the snapshot before any later phase")
    }
}

fn routed(snap: &Snapshot) -> Option<&RoutedName> {
    snap.config.routed_names.get(snap.config.proxy.routed_name)
}

/// The client behind a trusted proxy: the right-most `X-Forwarded-For` address that is not
/// itself a trusted proxy (the left-most if all are), else the peer.
pub(super) fn forwarded_client(xff: &[&str], peer: IpAddr, trusted: &[IpNet]) -> IpAddr {
    let hops: Vec<IpAddr> = xff
        .iter()
        .flat_map(|v| v.split(','))
        .filter_map(|h| h.trim().parse::<IpAddr>().ok())
        .collect();
    hops.iter()
        .rev()
        .find(|a| !trusted.iter().any(|n| n.contains(*a)))
        .or(hops.first())
        .copied()
        .unwrap_or(peer)
}

fn header<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Set the forwarding headers on a request to a region (proxied or made by Berth itself).
pub(super) fn set_forwarding(req: &mut RequestHeader, ctx: &Ctx) -> Result<()> {
    // The registry prefers `Forwarded` over X-Forwarded-*: drop it, ours say it all.
    req.remove_header("forwarded");
    let xff = match header(req, "x-forwarded-for") {
        Some(prior) if ctx.peer_trusted => format!("{prior}, {}", ctx.peer),
        _ => ctx.peer.to_string(),
    };
    req.insert_header("x-forwarded-for", xff)?;
    req.insert_header("x-forwarded-host", ctx.public_host.as_str())?;
    req.insert_header("x-forwarded-proto", ctx.proto.as_str())?;
    Ok(())
}

/// Answer with an OCI error body. The connection is not reused if a request body may be unread.
pub(super) async fn respond(session: &mut Session, r: &Refusal) -> Result<()> {
    let body = oci::error_body(r.code, &r.message, r.detail.as_deref());
    let mut resp = ResponseHeader::build(r.status, Some(4))?;
    resp.insert_header("content-type", "application/json; charset=utf-8")?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("docker-distribution-api-version", "registry/2.0")?;
    if !session.is_body_done() {
        session.set_keepalive(None);
    }
    let head = session.req_header().method == Method::HEAD;
    session.write_response_header(Box::new(resp), head).await?;
    if !head {
        session
            .write_response_body(Some(Bytes::from(body)), true)
            .await?;
    }
    Ok(())
}

pub(super) fn refusal_of(
    status: u16,
    code: &'static str,
    message: impl Into<String>,
    detail: Option<String>,
) -> Refusal {
    Refusal {
        status,
        code,
        message: message.into(),
        detail,
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

pub(super) fn is_timeout(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
    )
}

/// Region `id` failed a request the way a dead or hung replica does (no connection, or a
/// timeout): count it, and after `passive_fall` in a row report the region down through the
/// probes' road, so DNS and the proxy stop sending clients there until it answers again.
pub(super) fn passive_failure(shared: &Shared, snap: &Snapshot, id: RegionId, e: &Error) {
    let metrics = &shared.live.metrics;
    if is_timeout(e) {
        metrics
            .proxy_upstream_timeouts
            .fetch_add(1, Ordering::Relaxed);
    }
    let Some(region) = snap.config.regions.get(id) else {
        return;
    };
    let fall = snap.config.proxy.passive_fall;
    if !shared.passive.failure(&region.name, fall) {
        return;
    }
    let prev = shared.live.health(&region.name);
    if !prev.healthy {
        return;
    }
    metrics.proxy_passive_downs.fetch_add(1, Ordering::Relaxed);
    let why = format!(
        "{}{fall} proxied requests in a row failed (last: {}); down until the next probe or answer",
        passive::MARK,
        e.etype().as_str()
    );
    tracing::warn!(region = %region.name, "{why}");
    shared.live.set_health(
        &region.name,
        HealthInfo {
            state: "down",
            healthy: false,
            last_error: Some(why),
            probe_latency_ms: prev.probe_latency_ms,
        },
    );
}

/// Region `id` answered: a run of failures ends, and a passive "down" is lifted.
pub(super) fn passive_success(shared: &Shared, snap: &Snapshot, id: RegionId) {
    let Some(region) = snap.config.regions.get(id) else {
        return;
    };
    if !shared.passive.success(&region.name) {
        return;
    }
    let prev = shared.live.health(&region.name);
    if super::passively_down(&prev) {
        shared.live.set_health(
            &region.name,
            HealthInfo {
                state: "up",
                healthy: true,
                last_error: None,
                probe_latency_ms: prev.probe_latency_ms,
            },
        );
    }
}

/// The pingora peer for a region, or why there is none.
pub(super) fn peer_for(
    shared: &Shared,
    snap: &Snapshot,
    id: RegionId,
) -> std::result::Result<(HttpPeer, UpstreamUrl), Refusal> {
    let region = &snap.config.regions[id];
    let url = region
        .upstream
        .as_deref()
        .and_then(UpstreamUrl::parse)
        .ok_or_else(|| {
            refusal_of(
                503,
                "UNAVAILABLE",
                "the region has no usable upstream",
                Some(region.name.clone()),
            )
        })?;
    let addr = shared.addresses.socket_addr(&url).ok_or_else(|| {
        refusal_of(
            503,
            "UNAVAILABLE",
            "the region's upstream host is not resolved yet",
            Some(format!("{}: {}", region.name, url.host)),
        )
    })?;
    let cfg = &snap.config.proxy;
    let mut peer = HttpPeer::new(addr, url.tls, url.host.clone());
    // TCP connect, and connect plus TLS handshake: both bounded by the same setting.
    peer.options.connection_timeout = Some(cfg.connect_timeout);
    peer.options.total_connection_timeout = Some(cfg.connect_timeout);
    // Per read and per write (pingora applies them to each call), never to a whole body: a
    // multi-GB blob streams as long as bytes keep moving.
    peer.options.read_timeout = Some(cfg.upstream_read_timeout);
    peer.options.write_timeout = Some(cfg.upstream_write_timeout);
    peer.options.idle_timeout = Some(cfg.upstream_idle_timeout);
    Ok((peer, url))
}

impl BerthProxy {
    /// Choose the region and fill in `ctx`; Some(refusal) if Berth answers itself.
    fn decide(&self, session: &Session, ctx: &mut Ctx, snap: &Arc<Snapshot>) -> Option<Refusal> {
        let cfg = &snap.config.proxy;
        let Some(rn) = routed(snap) else {
            return Some(refusal_of(
                503,
                "UNAVAILABLE",
                "the proxy's routed name is not configured",
                None,
            ));
        };
        let req = session.req_header();
        ctx.peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
        ctx.peer_trusted = cfg.trusted_proxies.iter().any(|n| n.contains(&ctx.peer));
        ctx.client = ctx.peer;
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        ctx.proto = if tls { "https" } else { "http" }.to_string();
        ctx.public_host = header(req, "host")
            .map(String::from)
            .or_else(|| req.uri.authority().map(|a| a.to_string()))
            .or_else(|| session.server_addr().map(|a| a.to_string()))
            .unwrap_or_default();
        if ctx.peer_trusted {
            let xff: Vec<&str> = req
                .headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            ctx.client = forwarded_client(&xff, ctx.peer, &cfg.trusted_proxies);
            if let Some(h) = header(req, "x-forwarded-host") {
                ctx.public_host = h.split(',').next().unwrap_or(h).trim().to_string();
            }
            if let Some(p) = header(req, "x-forwarded-proto") {
                let p = p.split(',').next().unwrap_or(p).trim();
                if p == "http" || p == "https" {
                    ctx.proto = p.to_string();
                }
            }
        }
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
        ctx.kind = match route {
            Route::Base => Kind::Base,
            Route::Blob { .. } => Kind::Blob,
            Route::UploadStart { .. } => Kind::UploadStart,
            Route::Upload { .. } => Kind::Upload,
            Route::Manifest { .. } => Kind::Manifest,
            Route::Tags { .. } => Kind::Tags,
            Route::Referrers { .. } => Kind::Referrers,
            Route::Other => Kind::Other,
        };
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
        let is_get = req.method == Method::GET;
        let is_head = req.method == Method::HEAD;
        // Reads that may miss because replication lags. Not blob HEADs: that is how a push
        // asks what it must upload, and an answer from another region would make it skip an
        // upload to its own.
        if (matches!(route, Route::Manifest { .. }) && (is_get || is_head))
            || (matches!(route, Route::Blob { .. }) && is_get)
        {
            ctx.fallback_left = cfg.read_fallback_max;
        }
        let now = self.shared.live.now();

        if let (Route::Upload { repo, uuid }, Some(tok)) = (route, tok) {
            ctx.uuid = Some(uuid.to_string());
            let metrics = &self.shared.live.metrics.proxy;
            let name = match self.shared.signer.verify(tok, repo, uuid, unix_now()) {
                Ok(name) => name,
                Err(e) => {
                    metrics.refused_sessions.fetch_add(1, Ordering::Relaxed);
                    return Some(refusal_of(
                        404,
                        "BLOB_UPLOAD_INVALID",
                        "blob upload invalid",
                        Some(e.to_string()),
                    ));
                }
            };
            let unknown = |why: String| {
                metrics.refused_sessions.fetch_add(1, Ordering::Relaxed);
                Some(refusal_of(
                    404,
                    "BLOB_UPLOAD_UNKNOWN",
                    "blob upload unknown to registry",
                    Some(format!("{why}; start the upload again")),
                ))
            };
            let Some(id) = snap.config.region_id(name) else {
                return unknown(format!(
                    "the upload's region {name} is no longer configured"
                ));
            };
            // A disabled region drains: its sessions finish. Only a down one refuses them
            // (unless every region is down and the name fails open).
            let up = snap.states.get(id).is_some_and(|s| s.healthy) || snap.fail_open(rn);
            if !up {
                return unknown(format!("the upload's region {name} is down"));
            }
            ctx.binding = Binding::Session;
            ctx.region = Some(id);
            self.shared.sessions.touch(uuid, name, now);
            return None;
        }
        if let Route::Upload { uuid, .. } = route {
            ctx.uuid = Some(uuid.to_string());
        }

        let chosen = match route.repo() {
            Some(repo) => {
                let key = ClientKey::new(ctx.client, rn.client_prefix(&ctx.client));
                let drain = cfg.push_affinity.as_millis() as u64;
                let pinned = self
                    .shared
                    .affinity
                    .get(key, repo, now)
                    .and_then(|(name, since)| Some((snap.config.region_id(&name)?, since)))
                    .filter(|(id, since)| {
                        rn.regions.contains(id)
                            && (usable(snap, rn, *id)
                                // Draining: a disabled region that is still healthy keeps
                                // the pushes already pinned to it, for one affinity period,
                                // so they finish where their blobs are.
                                || (snap.states.get(*id).is_some_and(|s| s.healthy)
                                    && now.saturating_sub(*since) < drain))
                    })
                    .map(|(id, _)| id);
                let region = pinned.or_else(|| next_region(snap, rn, ctx.client, &[]));
                if let Some(id) = region {
                    self.shared
                        .affinity
                        .record(key, repo, &snap.config.regions[id].name, now);
                }
                ctx.binding = Binding::Affinity;
                region
            }
            None => {
                ctx.binding = Binding::Client;
                next_region(snap, rn, ctx.client, &[])
            }
        };
        match chosen {
            Some(id) => {
                ctx.region = Some(id);
                None
            }
            None => Some(refusal_of(
                503,
                "UNAVAILABLE",
                "no region can serve this request",
                Some(format!("every region of {} is disabled or down", rn.name)),
            )),
        }
    }
}

#[async_trait]
impl ProxyHttp for BerthProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        self.shared.inflight.fetch_add(1, Ordering::Relaxed);
        Ctx {
            _inflight: Inflight(self.shared.inflight.clone()),
            snap: None,
            client: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            peer: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            peer_trusted: false,
            method: 0,
            kind: Kind::Other,
            repo: None,
            uuid: None,
            binding: Binding::None,
            region: None,
            tried: Vec::new(),
            next: None,
            failover: false,
            fallback_left: 0,
            fell_back: false,
            proto: String::new(),
            public_host: String::new(),
            upstream_authority: String::new(),
            upstream_uri: None,
            refusal: None,
            answered_by_berth: false,
            bytes_in: 0,
            bytes_out: 0,
        }
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
        metrics
            .row(ctx.snap.as_ref().map(|s| &*s.counters), region)
            .request(
                ctx.method,
                e.is_some() || status >= 500 || status == 0,
                ctx.bytes_in,
                ctx.bytes_out,
            );
        let name = ctx
            .snap
            .as_ref()
            .zip(region)
            .map_or("-", |(s, id)| s.config.regions[id].name.as_str());
        tracing::debug!(
            client = %ctx.client,
            method = %session.req_header().method,
            path = %session.req_header().uri.path(),
            kind = ?ctx.kind,
            region = name,
            status,
            tried = ctx.tried.len(),
            "proxied"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_behind_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let peer: IpAddr = "10.0.0.1".parse().expect("ip");
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(
            forwarded_client(&["203.0.113.7"], peer, &trusted),
            ip("203.0.113.7")
        );
        // A client-supplied left part is not believed: the right-most untrusted hop is.
        assert_eq!(
            forwarded_client(&["198.51.100.1, 203.0.113.7, 10.1.1.1"], peer, &trusted),
            ip("203.0.113.7")
        );
        assert_eq!(
            forwarded_client(&["198.51.100.1", "203.0.113.7"], peer, &trusted),
            ip("203.0.113.7")
        );
        assert_eq!(
            forwarded_client(&["10.2.2.2"], peer, &trusted),
            ip("10.2.2.2")
        );
        assert_eq!(forwarded_client(&["junk"], peer, &trusted), peer);
        assert_eq!(forwarded_client(&[], peer, &trusted), peer);
    }
}
