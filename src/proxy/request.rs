//! What every phase of a request shares, and the helpers both the pingora phases
//! ([`super::service`]) and the manifest exchange ([`super::manifest`]) use: the per-request
//! [`Ctx`], the proxy-wide [`Shared`] state, the client behind trusted proxies, the forwarding
//! headers, OCI error answers, the pingora peer of a region, and passive-health reports.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::Method;
use ipnet::IpNet;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

use super::affinity::{AffinityTable, SessionTable};
use super::choose::{refusal_of, Binding, Refusal};
use super::oci::{self, Route};
use super::passive::{self, Passive};
use super::token::Signer;
use super::upstream::Addresses;
use crate::config::{RegionId, UpstreamUrl};
use crate::live::{HealthInfo, Live};
use crate::snapshot::Snapshot;

/// What every request of the proxy shares.
pub(super) struct Shared {
    pub live: Arc<Live>,
    pub signer: Signer,
    pub affinity: AffinityTable,
    pub sessions: SessionTable,
    pub addresses: Arc<Addresses>,
    /// For the requests the proxy makes itself (manifest PUTs, the safety net's HEADs).
    pub connector: pingora::connectors::http::Connector,
    /// Requests in flight, so a stop can wait for them (up to the grace period).
    pub inflight: Arc<AtomicUsize>,
    /// Runs of timeouts and failed connections per region (passive health).
    pub passive: Passive,
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

impl Kind {
    pub fn of(route: &Route) -> Kind {
        match route {
            Route::Base => Kind::Base,
            Route::Blob { .. } => Kind::Blob,
            Route::UploadStart { .. } => Kind::UploadStart,
            Route::Upload { .. } => Kind::Upload,
            Route::Manifest { .. } => Kind::Manifest,
            Route::Tags { .. } => Kind::Tags,
            Route::Referrers { .. } => Kind::Referrers,
            Route::Other => Kind::Other,
        }
    }
}

/// Counts a request in flight from creation to drop, for a graceful stop.
pub(super) struct Inflight(Arc<AtomicUsize>);

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
    /// For a read: the regions replication knows hold its content (empty: not known).
    pub holders: Vec<RegionId>,
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
    /// When the request arrived: its duration for the histogram and the access log.
    pub started: std::time::Instant,
    /// What the region tried now answered (0: nothing yet), set in `upstream_response_filter`.
    pub attempt_status: u16,
    /// Attempts at other regions before the last one, with what each answered (0: no
    /// answer): each is counted in the metrics too.
    pub earlier: Vec<(RegionId, u16)>,
    /// Names this request in the access log: the client's `X-Request-Id` when it sent a
    /// short printable one, else this process's start time and a counter, both in hex.
    pub request_id: String,
}

/// A fresh request id, unique within this process and across restarts.
fn new_request_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static BOOT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let boot = BOOT.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });
    format!("{boot:x}-{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

impl Ctx {
    /// A request that has just arrived: counted in flight until dropped.
    pub fn new(inflight: &Arc<AtomicUsize>) -> Ctx {
        inflight.fetch_add(1, Ordering::Relaxed);
        Ctx {
            _inflight: Inflight(inflight.clone()),
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
            holders: Vec::new(),
            proto: String::new(),
            public_host: String::new(),
            upstream_authority: String::new(),
            upstream_uri: None,
            refusal: None,
            answered_by_berth: false,
            bytes_in: 0,
            bytes_out: 0,
            started: std::time::Instant::now(),
            attempt_status: 0,
            earlier: Vec::new(),
            request_id: new_request_id(),
        }
    }

    /// The region being tried is given up for `next`: remember how it answered.
    pub fn move_on(&mut self, next: RegionId) {
        if let Some(prev) = self.region.filter(|p| *p != next) {
            self.earlier.push((prev, self.attempt_status));
        }
        self.attempt_status = 0;
    }

    pub fn public_origin(&self) -> String {
        format!("{}://{}", self.proto, self.public_host)
    }

    pub fn snap(&self) -> Arc<Snapshot> {
        self.snap
            .clone()
            .expect("request_filter loads the snapshot before any later phase")
    }

    /// Who the client is and how it sees us: the TCP peer, the scheme and the `Host`, or what
    /// a trusted proxy in front of us says about them (`X-Forwarded-For/Host/Proto`).
    pub fn read_client(&mut self, session: &Session, trusted: &[IpNet]) {
        let req = session.req_header();
        self.peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
        self.peer_trusted = trusted.iter().any(|n| n.contains(&self.peer));
        if let Some(id) = req
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
        {
            self.request_id = id.to_string();
        }
        self.client = self.peer;
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        self.proto = if tls { "https" } else { "http" }.to_string();
        self.public_host = header(req, "host")
            .map(String::from)
            .or_else(|| req.uri.authority().map(|a| a.to_string()))
            .or_else(|| session.server_addr().map(|a| a.to_string()))
            .unwrap_or_default();
        if !self.peer_trusted {
            return;
        }
        let xff: Vec<&str> = req
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        self.client = forwarded_client(&xff, self.peer, trusted);
        if let Some(h) = header(req, "x-forwarded-host") {
            self.public_host = h.split(',').next().unwrap_or(h).trim().to_string();
        }
        if let Some(p) = header(req, "x-forwarded-proto") {
            let p = p.split(',').next().unwrap_or(p).trim();
            if p == "http" || p == "https" {
                self.proto = p.to_string();
            }
        }
    }
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
    if passive::passively_down(&prev) {
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
