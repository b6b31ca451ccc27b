//! The admin API and metrics, on their own listener (demo: 127.0.0.1:9180). JSON throughout.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/api/v1/regions` | every region: flag, health, last error, probe latency, answers, proxy figures |
//! | GET | `/api/v1/regions/{name}` | one region |
//! | PUT | `/api/v1/regions/{name}` | `{"endpoint_enabled": false, "reason": "...", "by": "...", "for": "2h"}`: set the operator flag (reason, by, for optional; `for` makes a disable lapse by itself); with `[cluster]` 503 while etcd is unreachable |
//! | GET | `/api/v1/cluster` | `[cluster]`: connectivity, members (version, config hash), each instance's verdict per region beside the shared one |
//! | GET | `/api/v1/route?client=ADDRESS&name=NAME` | a decision and its explanation |
//! | POST | `/api/v1/reload` | reload config, zones, GeoIP; 422 with the error if rejected |
//! | GET | `/api/v1/events?after=SEQ` | recent events (health flips, flags, reloads, fail-open) |
//! | GET, POST | `/api/v1/replication...` | replication status, sync, registry notifications ([`replication`]) |
//! | GET | `/metrics` | Prometheus text |
//! | GET | `/readyz` | 200 `ready` once started (listeners bound, every region probed once) while every DNS worker runs; 503 and why not (no token needed) |
//! | GET | `/healthz` | 200 `ok` while the process answers: liveness (no token needed) |
//! | GET | `/`, `/dashboard/...` | the dashboard page and its assets ([`dashboard`]) |
//!
//! Changes (PUT, POST) need `Authorization: Bearer <token>`; reads are open to loopback
//! clients and need the token from anywhere else, except the dashboard's static files, which
//! hold no data. Errors are `{"error": "..."}`.
//!
//! Limits ([`serve`]): a request whose `Host` is not one this listener is reached by gets
//! 421 (DNS rebinding: a hostile page whose name was re-pointed at 127.0.0.1 sends its own
//! name); a connection must deliver each request head within `header_timeout` (idle,
//! partial and trickled connections are closed); at most `max_connections` are served at
//! once, the rest wait in the kernel's accept queue.
//! Not here: what a flag or a reload does (that is [`crate::live`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::live::{HealthInfo, Live};
use crate::routing::{Eligibility, Source};

pub mod dashboard;
mod replication;

#[derive(Clone)]
struct Ctx {
    live: Arc<Live>,
    /// The bearer token for changes; None refuses every change.
    token: Option<Arc<str>>,
}

/// The API's router; `serve` it with `into_make_service_with_connect_info::<SocketAddr>()`.
pub fn router(live: Arc<Live>, token: Option<String>) -> Router {
    let ctx = Ctx {
        live,
        token: token.map(Arc::from),
    };
    Router::new()
        .route("/api/v1/regions", get(regions))
        .route("/api/v1/regions/{name}", get(region).put(set_region))
        .route("/api/v1/route", get(route))
        .route("/api/v1/reload", post(reload))
        .route("/api/v1/events", get(events))
        .route("/api/v1/cluster", get(cluster_status))
        .route("/metrics", get(metrics))
        .merge(replication::routes())
        .merge(dashboard::routes())
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(middleware::from_fn_with_state(ctx.clone(), auth))
        // After the auth layer: load balancers and supervisors probe it without a token, and
        // it says nothing but ready or not and which worker is down.
        .route("/readyz", get(readyz))
        // Liveness: the process answers. Nothing else, so a slow region or a reload never
        // gets Berth restarted.
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(ctx)
}

/// How much of the process one listener may hold ([`crate::config::AdminConfig`]).
#[derive(Debug, Clone)]
pub struct Limits {
    pub header_timeout: Duration,
    pub max_connections: usize,
    /// Host names besides the address literals and `localhost`, lowercase.
    pub allowed_hosts: Vec<String>,
}

impl Limits {
    pub fn of(cfg: &crate::config::AdminConfig) -> Limits {
        Limits {
            header_timeout: cfg.header_timeout,
            max_connections: cfg.max_connections,
            allowed_hosts: cfg.allowed_hosts.clone(),
        }
    }
}

/// Serve the API on an already-bound listener until `shutdown` completes, within `limits`.
/// Connections are served by hand with hyper: axum's own loop has neither a head deadline
/// nor a cap.
pub async fn serve(
    listener: tokio::net::TcpListener,
    live: Arc<Live>,
    token: Option<String>,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let hosts = Arc::new(limits.allowed_hosts.clone());
    let app = router(live, token).layer(middleware::from_fn_with_state(hosts, host_check));
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // A free slot first, then accept: past the cap, clients wait in the accept queue
        // and hold none of our descriptors.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: retrying at once would spin; the descriptors
                    // come back as other connections close.
                    tracing::warn!(error = %e, "admin listener cannot accept; retrying shortly");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let svc = hyper_util::service::TowerToHyperService::new(
            app.clone().layer(axum::Extension(ConnectInfo(peer))),
        );
        let mut stop = stop_rx.clone();
        let header_timeout = limits.header_timeout;
        conns.spawn(async move {
            let _permit = permit;
            let mut http = hyper::server::conn::http1::Builder::new();
            // A deadline for the whole head, from its first poll (idle keep-alive time
            // included), not per read: a byte every few seconds does not extend it.
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout);
            let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, %peer, "admin connection ended");
                    }
                }
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
        while conns.try_join_next().is_some() {}
    }
    let _ = stop_tx.send(true);
    while conns.join_next().await.is_some() {}
    Ok(())
}

/// Is `host` (a `Host` header value) one a client reaching this listener on purpose uses?
/// Address literals (any: a page can only send one if the browser went to that address, so
/// no rebinding is involved; this keeps `0.0.0.0` listeners usable by LAN address),
/// `localhost`, and the configured names (an entry without a port allows any port).
pub fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let host = host.trim().to_ascii_lowercase();
    let (name, port) = match host.rsplit_once(':') {
        // `[v6]:port` or `name:port`; a bare v6 literal has more than one colon.
        Some((n, p)) if !n.contains(':') || n.ends_with(']') => (n, Some(p)),
        _ => (host.as_str(), None),
    };
    let name = name.trim_end_matches('.');
    let literal = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    if literal.parse::<IpAddr>().is_ok() || name == "localhost" {
        return true;
    }
    allowed.iter().any(|a| match a.rsplit_once(':') {
        Some((an, ap)) if !an.contains(':') || an.ends_with(']') => an == name && Some(ap) == port,
        _ => a == name,
    })
}

async fn host_check(State(allowed): State<Arc<Vec<String>>>, req: Request, next: Next) -> Response {
    // A request without Host (HTTP/1.0 tools) cannot come from a browser, which rebinding
    // needs: let it through.
    let host = req
        .headers()
        .get(header::HOST)
        .map(|h| h.to_str().unwrap_or("\u{fffd}").to_string());
    match host {
        Some(h) if !host_allowed(&h, &allowed) => error(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "this admin listener does not answer for host {h:?}; use its address or \
                 localhost, or add the name to [admin] allowed_hosts"
            ),
        ),
        _ => next.run(req).await,
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// Compare without an early exit, so response timing does not leak the token's prefix.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(
    State(ctx): State<Ctx>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let change = !matches!(*req.method(), Method::GET | Method::HEAD);
    let loopback = match peer.ip() {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    };
    if !change && (loopback || dashboard::is_asset(req.uri().path())) {
        return next.run(req).await;
    }
    let Some(token) = &ctx.token else {
        return error(
            StatusCode::FORBIDDEN,
            "changes are disabled: no admin token is configured (admin.token_env or admin.token_file)",
        );
    };
    let given = bearer(req.headers());
    if given.is_some_and(|g| same(g.as_bytes(), token.as_bytes())) {
        return next.run(req).await;
    }
    let mut resp = error(
        StatusCode::UNAUTHORIZED,
        if given.is_some() {
            "wrong bearer token"
        } else {
            "this needs Authorization: Bearer <admin token>"
        },
    );
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"berth-admin\""),
    );
    resp
}

fn bearer(h: &HeaderMap) -> Option<&str> {
    let v = h.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(rest.trim())
}

/// One region as the API shows it.
#[derive(Serialize)]
pub struct RegionView {
    pub name: String,
    pub latitude: f64,
    pub longitude: f64,
    pub upstream: Option<String>,
    pub endpoint_enabled: bool,
    /// "unknown", "up" or "down".
    pub health: &'static str,
    pub healthy: bool,
    /// Enabled and healthy: answerable without failing open.
    pub eligible: bool,
    /// Who set the flag, when, why, and until when (absent: never set).
    pub flag: Option<crate::flags::FlagRecord>,
    pub last_error: Option<String>,
    pub probe_latency_ms: Option<f64>,
    /// Routed DNS answers served with this region since start.
    pub answers: u64,
    /// The proxy's requests, bytes, errors, sessions, fallbacks for this region.
    pub proxy: crate::metrics::ProxyRegionStats,
}

/// Region `id` of `snap` (one snapshot for the whole answer: a reload between two regions
/// must not shift the ids under us).
fn region_view(live: &Live, snap: &crate::snapshot::Snapshot, id: usize) -> RegionView {
    let r = &snap.config.regions[id];
    let mut h: HealthInfo = live.health(&r.name);
    // The published state, not the flag against the clock: a maintenance window that just
    // ended counts once the snapshot says so, as DNS sees it.
    let enabled = snap
        .states
        .get(id)
        .map_or_else(|| live.is_enabled(&r.name), |s| s.enabled);
    // With [cluster] the routing verdict is the shared one (this instance's own is in
    // /api/v1/cluster); alone, both are the same.
    let shared_healthy = snap.states.get(id).is_none_or(|s| s.healthy);
    if live.cluster.get().is_some() && shared_healthy != h.healthy {
        h.healthy = shared_healthy;
        h.state = if shared_healthy { "up" } else { "down" };
    }
    RegionView {
        name: r.name.clone(),
        latitude: r.latitude,
        longitude: r.longitude,
        upstream: r.upstream.clone(),
        endpoint_enabled: enabled,
        health: h.state,
        healthy: h.healthy,
        eligible: enabled && h.healthy,
        flag: live.flag(&r.name),
        last_error: h.last_error,
        probe_latency_ms: h.probe_latency_ms,
        answers: snap.counters.region_answers(id),
        proxy: snap
            .counters
            .region(id)
            .map(|c| c.proxy.stats())
            .unwrap_or_default(),
    }
}

async fn regions(State(ctx): State<Ctx>) -> Response {
    let snap = ctx.live.snapshot.load_full();
    let regions: Vec<RegionView> = (0..snap.config.regions.len())
        .map(|id| region_view(&ctx.live, &snap, id))
        .collect();
    let names: Vec<_> = snap
        .config
        .routed_names
        .iter()
        .map(|n| {
            json!({
                "name": n.name,
                "policy": n.policy.name(),
                "ttl": n.ttl,
                "regions": n.regions.iter().map(|id| &snap.config.regions[*id].name).collect::<Vec<_>>(),
                "fail_open": snap.fail_open(n),
            })
        })
        .collect();
    let rcodes = ctx.live.metrics.queries_by_rcode();
    Json(json!({
        "generation": snap.generation,
        "regions": regions,
        "routed_names": names,
        "sticky_entries": ctx.live.sticky.len(),
        "proxy": {
            "running": ctx.live.metrics.proxy.running.load(std::sync::atomic::Ordering::Relaxed),
            "affinity_entries": ctx.live.metrics.proxy.affinity_entries.load(std::sync::atomic::Ordering::Relaxed),
            "refused_sessions": ctx.live.metrics.proxy.refused_sessions.load(std::sync::atomic::Ordering::Relaxed),
        },
        "queries": {
            "NOERROR": rcodes[0], "FORMERR": rcodes[1], "SERVFAIL": rcodes[2],
            "NXDOMAIN": rcodes[3], "NOTIMP": rcodes[4], "REFUSED": rcodes[5],
        },
        "last_reload": ctx.live.last_reload(),
        "workers": ctx.live.metrics.workers.view(),
        "instance": crate::metrics::process::instance(),
    }))
    .into_response()
}

async fn region(State(ctx): State<Ctx>, Path(name): Path<String>) -> Response {
    let snap = ctx.live.snapshot.load_full();
    match snap.config.region_id(&name) {
        Some(id) => Json(region_view(&ctx.live, &snap, id)).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no region is named {name:?}"),
        ),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetRegion {
    endpoint_enabled: bool,
    /// Why, shown beside the flag and in the event.
    reason: Option<String>,
    /// Who; default the API client's address.
    by: Option<String>,
    /// A maintenance window: a disable lapses after this long ("2h").
    #[serde(rename = "for")]
    for_: Option<String>,
}

impl SetRegion {
    fn record(self, peer: SocketAddr) -> Result<crate::flags::FlagRecord, String> {
        let at = crate::live::unix_ms();
        let until_ms = match &self.for_ {
            None => None,
            Some(_) if self.endpoint_enabled => {
                return Err("\"for\" applies to a disable (endpoint_enabled false) only".into())
            }
            Some(d) => {
                let d = crate::config::parse_duration(d).map_err(|m| format!("for: {m}"))?;
                Some(at.saturating_add(d.as_millis() as u64))
            }
        };
        let clean = |s: Option<String>| s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        let reason = clean(self.reason);
        if reason.as_ref().is_some_and(|r| r.len() > 1000) {
            return Err("reason is longer than 1000 bytes".into());
        }
        Ok(crate::flags::FlagRecord {
            endpoint_enabled: self.endpoint_enabled,
            reason,
            by: clean(self.by).or_else(|| Some(peer.ip().to_string())),
            at_ms: Some(at),
            until_ms,
        })
    }
}

async fn set_region(
    State(ctx): State<Ctx>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    body: Result<Json<SetRegion>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "expected {{\"endpoint_enabled\": true|false}}: {}",
                    e.body_text()
                ),
            )
        }
    };
    let record = match body.record(peer) {
        Ok(r) => r,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    if let Some(cluster) = ctx.live.cluster.get() {
        return set_region_shared(&ctx, cluster.as_ref(), name, record).await;
    }
    let live = ctx.live.clone();
    // The state file is fsynced: keep that off the async workers.
    let result =
        tokio::task::spawn_blocking(move || live.set_flag(&name, record).map(|_| name)).await;
    match result {
        Ok(Ok(name)) => {
            let snap = ctx.live.snapshot.load_full();
            match snap.config.region_id(&name) {
                Some(id) => Json(region_view(&ctx.live, &snap, id)).into_response(),
                None => error(StatusCode::CONFLICT, "the region went away in a reload"),
            }
        }
        Ok(Err(crate::live::ControlError::UnknownRegion(n))) => {
            error(StatusCode::NOT_FOUND, format!("no region is named {n:?}"))
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, crate::report(&e)),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `[cluster]`: the flag goes to etcd for every instance, or nowhere (503).
async fn set_region_shared(
    ctx: &Ctx,
    cluster: &dyn crate::live::SharedWriter,
    name: String,
    record: crate::flags::FlagRecord,
) -> Response {
    let snap = ctx.live.snapshot.load_full();
    let Some(id) = snap.config.region_id(&name) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no region is named {name:?}"),
        );
    };
    match cluster.set_flag(&name, record).await {
        Ok(()) => {
            let snap = ctx.live.snapshot.load_full();
            Json(region_view(&ctx.live, &snap, id)).into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// `[cluster]` status: this instance, etcd connectivity, the members, and per region each
/// live instance's verdict beside the shared one. Without `[cluster]`: `{"enabled": false}`.
async fn cluster_status(State(ctx): State<Ctx>) -> Response {
    let Some(shared) = ctx.live.shared() else {
        return Json(json!({ "enabled": false })).into_response();
    };
    let snap = ctx.live.snapshot.load_full();
    let local = ctx.live.local_health();
    let cfg = snap.config.cluster.as_ref();
    let regions: Vec<_> = snap
        .config
        .regions
        .iter()
        .enumerate()
        .map(|(id, r)| {
            let mine = local.get(&r.name).map(|h| h.healthy);
            json!({
                "name": r.name,
                "healthy": snap.states.get(id).is_none_or(|s| s.healthy),
                "verdicts": shared.region_verdicts(&r.name, mine),
            })
        })
        .collect();
    Json(json!({
        "enabled": true,
        "instance": shared.instance,
        "connected": shared.connected,
        "last_error": shared.last_error,
        "etcd": cfg.map(|c| c.etcd.clone()),
        "prefix": cfg.map(|c| c.prefix.clone()),
        "health_quorum": shared.quorum.name(),
        "revision": shared.revision,
        "config_hash": crate::shared::config_hash(&snap.config),
        "config_hashes_differ": shared.config_hashes_differ(),
        "members": shared.members.values().collect::<Vec<_>>(),
        "regions": regions,
    }))
    .into_response()
}

#[derive(Deserialize)]
struct RouteQuery {
    client: String,
    name: Option<String>,
}

/// A decision as JSON: what `berth route --admin` prints and the dashboard's "why" box shows.
async fn route(State(ctx): State<Ctx>, Query(q): Query<RouteQuery>) -> Response {
    let Ok(addr) = q.client.trim().parse::<IpAddr>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("client {:?} is not an IP address", q.client),
        );
    };
    let snap = ctx.live.snapshot.load_full();
    let index = match &q.name {
        Some(n) => {
            let n = n.trim_end_matches('.').to_ascii_lowercase();
            snap.config.routed_names.iter().position(|r| r.name == n)
        }
        None => (!snap.config.routed_names.is_empty()).then_some(0),
    };
    let Some(index) = index else {
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "{} is not a routed name",
                q.name.as_deref().unwrap_or("(none)")
            ),
        );
    };
    let rn = &snap.config.routed_names[index];
    let key = crate::routing::ClientKey::new(addr, rn.client_prefix(&addr));
    // Show what the server would answer now, memory included, without changing the memory.
    let remembered = ctx
        .live
        .sticky
        .get(&(snap.keys.names[index], key), ctx.live.now())
        .and_then(|r| snap.keys.region_id(r));
    let routed = snap.route_with(rn, addr, remembered);
    let d = &routed.decision;
    let cands: Vec<_> = d
        .candidates
        .iter()
        .map(|c| {
            let (source, detail) = match &c.source {
                Source::Table(net) => ("latency-table", json!(net.to_string())),
                Source::Distance { km } => ("distance", json!(km)),
                Source::Rank(r) => ("rank", if *r == usize::MAX { json!(null) } else { json!(r + 1) }),
                Source::Weight { weight, score } => ("weight", json!({"weight": weight, "score": if score.is_finite() { json!(score) } else { json!(null) }})),
                Source::Geo { code, rank } => ("geo", json!({"code": code, "rank": rank + 1})),
                Source::Unmapped => ("unmapped", json!(null)),
            };
            json!({
                "region": snap.config.regions[c.region].name,
                "eligibility": match c.eligibility {
                    Eligibility::Eligible => "eligible",
                    Eligibility::Unhealthy => "unhealthy",
                    Eligibility::Disabled => "disabled",
                },
                "estimate_ms": c.ms,
                "source": source,
                "detail": detail,
                "chosen": Some(c.region) == d.region,
            })
        })
        .collect();
    Json(json!({
        "name": rn.name,
        "client": addr.to_string(),
        "client_key": d.key.to_string(),
        "region": d.region.map(|r| snap.config.regions[r].name.clone()),
        "fail_open": d.fail_open,
        "sticky": remembered.map(|r| snap.config.regions[r].name.clone()),
        "location": routed.geo.as_ref().map(|g| json!({
            "city": g.location.city, "country": g.location.country, "continent": g.location.continent,
            "latitude": g.location.latitude, "longitude": g.location.longitude, "network": g.network.to_string(),
        })),
        "candidates": cands,
        "explanation": snap.explain(rn, &routed),
    }))
    .into_response()
}

async fn reload(State(ctx): State<Ctx>) -> Response {
    let live = ctx.live.clone();
    match tokio::task::spawn_blocking(move || live.reload()).await {
        Ok(Ok(generation)) => Json(json!({ "ok": true, "generation": generation })).into_response(),
        Ok(Err(e)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({
                "ok": false,
                "error": crate::report(&e),
                "generation": ctx.live.snapshot.load().generation,
            })),
        )
            .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Deserialize)]
struct EventsQuery {
    after: Option<u64>,
}

async fn events(State(ctx): State<Ctx>, Query(q): Query<EventsQuery>) -> Response {
    Json(json!({ "events": ctx.live.events(q.after.unwrap_or(0)) })).into_response()
}

async fn readyz(State(ctx): State<Ctx>) -> Response {
    match ctx.live.metrics.workers.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(ctx): State<Ctx>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        ctx.live.render_metrics(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::host_allowed;

    #[test]
    fn hosts_a_client_reaches_the_listener_by() {
        let allowed = vec![
            "berth.example.net".to_string(),
            "ops.example.net:8443".to_string(),
        ];
        for (host, ok) in [
            ("127.0.0.1:9180", true),
            ("10.1.2.3", true),
            ("[::1]:9180", true),
            ("::1", true),
            ("localhost:9180", true),
            ("LocalHost.", true),
            ("berth.example.net", true),
            ("berth.example.net:9180", true),
            ("ops.example.net:8443", true),
            ("ops.example.net:9180", false),
            ("ops.example.net", false),
            ("evil.example", false),
            ("localhost.evil.example", false),
            ("127.0.0.1.evil.example", false),
            ("[evil]:80", false),
            ("", false),
        ] {
            assert_eq!(host_allowed(host, &allowed), ok, "{host:?}");
        }
    }
}
