//! Counters the front ends bump on the hot path (plain atomics, no locks, no allocation), and
//! their rendering as Prometheus text for `GET /metrics`.
//!
//! Counters are indexed by routed-name and region ids of the current config; a reload that
//! renames or reorders them remaps the counters (see [`Metrics::remap`]), so a count never moves
//! to another label. Gauges (health, flags, sticky size) are read from live state at render time.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Most routed names and regions counted per routed name; config validation enforces it.
pub const MAX_NAMES: usize = 32;
pub const MAX_REGIONS: usize = 64;

pub struct Metrics {
    /// [transport][rcode]: every query answered. Transport 0 = UDP, 1 = TCP.
    queries: [[AtomicU64; 16]; 2],
    /// [routed name][region]; the extra last column counts NODATA (no region answerable).
    answers: Box<[[AtomicU64; MAX_REGIONS + 1]]>,
    /// [routed name]: decisions made while failing open.
    fail_open_answers: [AtomicU64; MAX_NAMES],
    /// Health transitions from up to down, per region: each is a failover for its clients.
    pub region_down_events: Box<[AtomicU64; MAX_REGIONS]>,
    pub fail_open_events: AtomicU64,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// Queries dropped without an answer (too short, or a response).
    pub dropped: AtomicU64,
    /// The HTTP proxy front end's counters and gauges.
    pub proxy: ProxyMetrics,
    /// UDP answers the response rate limiter dropped.
    pub rrl_dropped: AtomicU64,
    /// UDP answers the response rate limiter sent as empty truncated ones (slip).
    pub rrl_slipped: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            queries: Default::default(),
            answers: (0..MAX_NAMES)
                .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
                .collect(),
            fail_open_answers: Default::default(),
            region_down_events: Box::new(std::array::from_fn(|_| AtomicU64::new(0))),
            fail_open_events: AtomicU64::new(0),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            proxy: ProxyMetrics::default(),
            rrl_dropped: AtomicU64::new(0),
            rrl_slipped: AtomicU64::new(0),
        }
    }
}

/// Request methods the proxy counts separately; the last is everything else.
pub const PROXY_METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OTHER"];

/// The proxy's counters, by region; row `MAX_REGIONS` counts requests Berth answered itself
/// (no region: a refused token, no eligible region).
pub struct ProxyMetrics {
    /// Set when a proxy listener starts: only then is the proxy rendered.
    pub running: std::sync::atomic::AtomicBool,
    requests: Box<[[AtomicU64; PROXY_METHODS.len()]]>,
    /// Answers of 500 and above, and requests that failed without an answer.
    errors: Box<[[AtomicU64; PROXY_METHODS.len()]]>,
    /// Request body bytes sent to the region.
    bytes_in: Box<[AtomicU64]>,
    /// Response body bytes received from the region.
    bytes_out: Box<[AtomicU64]>,
    /// Reads this region served after another region answered 404 (read fallback).
    fallbacks: Box<[AtomicU64]>,
    /// Manifests the safety net stored in this region after another refused them.
    safety_net: Box<[AtomicU64]>,
    /// Requests moved away from this region because it refused connections.
    failovers: Box<[AtomicU64]>,
    /// Upload requests refused: forged token, or the session's region gone.
    pub refused_sessions: AtomicU64,
    /// Gauge: (client key, repository) affinities remembered.
    pub affinity_entries: AtomicU64,
    /// Gauge: upload sessions seen lately and not finished, by region.
    pub upload_sessions: Box<[AtomicU64]>,
}

fn counters(n: usize) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        let table = || {
            (0..=MAX_REGIONS)
                .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
                .collect()
        };
        ProxyMetrics {
            running: std::sync::atomic::AtomicBool::new(false),
            requests: table(),
            errors: table(),
            bytes_in: counters(MAX_REGIONS + 1),
            bytes_out: counters(MAX_REGIONS + 1),
            fallbacks: counters(MAX_REGIONS),
            safety_net: counters(MAX_REGIONS),
            failovers: counters(MAX_REGIONS),
            refused_sessions: AtomicU64::new(0),
            affinity_entries: AtomicU64::new(0),
            upload_sessions: counters(MAX_REGIONS),
        }
    }
}

/// One region's proxy figures, as the admin API shows them.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ProxyRegionStats {
    /// Requests by method (only methods seen).
    pub requests: std::collections::BTreeMap<&'static str, u64>,
    pub errors: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub upload_sessions: u64,
    pub fallbacks: u64,
    pub safety_net_retries: u64,
    pub failovers: u64,
}

impl ProxyMetrics {
    fn row(region: Option<usize>) -> usize {
        region.filter(|r| *r < MAX_REGIONS).unwrap_or(MAX_REGIONS)
    }

    /// Index of a method in [`PROXY_METHODS`].
    pub fn method_index(method: &str) -> usize {
        PROXY_METHODS[..PROXY_METHODS.len() - 1]
            .iter()
            .position(|m| *m == method)
            .unwrap_or(PROXY_METHODS.len() - 1)
    }

    /// One finished request: where it went (None: answered by Berth), its method index, whether
    /// it failed, and its body bytes each way.
    pub fn request(
        &self,
        region: Option<usize>,
        method: usize,
        error: bool,
        bytes_in: u64,
        bytes_out: u64,
    ) {
        let r = Self::row(region);
        let m = method.min(PROXY_METHODS.len() - 1);
        self.requests[r][m].fetch_add(1, Ordering::Relaxed);
        if error {
            self.errors[r][m].fetch_add(1, Ordering::Relaxed);
        }
        self.bytes_in[r].fetch_add(bytes_in, Ordering::Relaxed);
        self.bytes_out[r].fetch_add(bytes_out, Ordering::Relaxed);
    }

    pub fn fallback(&self, region: usize) {
        if let Some(c) = self.fallbacks.get(region) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn safety_net(&self, region: usize) {
        if let Some(c) = self.safety_net.get(region) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn failover(&self, from: usize) {
        if let Some(c) = self.failovers.get(from) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn region_stats(&self, region: usize) -> ProxyRegionStats {
        if region >= MAX_REGIONS {
            return ProxyRegionStats::default();
        }
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ProxyRegionStats {
            requests: PROXY_METHODS
                .iter()
                .zip(self.requests[region].iter())
                .filter(|(_, c)| load(c) > 0)
                .map(|(m, c)| (*m, load(c)))
                .collect(),
            errors: self.errors[region].iter().map(load).sum(),
            bytes_in: load(&self.bytes_in[region]),
            bytes_out: load(&self.bytes_out[region]),
            upload_sessions: load(&self.upload_sessions[region]),
            fallbacks: load(&self.fallbacks[region]),
            safety_net_retries: load(&self.safety_net[region]),
            failovers: load(&self.failovers[region]),
        }
    }

    /// Move per-region counters to new region indices after a reload.
    fn remap(&self, region: &impl Fn(usize) -> Option<usize>) {
        let take = |c: &AtomicU64| c.swap(0, Ordering::Relaxed);
        let rows: Vec<(Vec<u64>, Vec<u64>, [u64; 6])> = (0..MAX_REGIONS)
            .map(|r| {
                (
                    self.requests[r].iter().map(take).collect(),
                    self.errors[r].iter().map(take).collect(),
                    [
                        take(&self.bytes_in[r]),
                        take(&self.bytes_out[r]),
                        take(&self.fallbacks[r]),
                        take(&self.safety_net[r]),
                        take(&self.failovers[r]),
                        take(&self.upload_sessions[r]),
                    ],
                )
            })
            .collect();
        for (r, (req, err, scalars)) in rows.into_iter().enumerate() {
            let Some(n) = region(r).filter(|x| *x < MAX_REGIONS) else {
                continue;
            };
            for (m, v) in req.into_iter().enumerate() {
                self.requests[n][m].fetch_add(v, Ordering::Relaxed);
            }
            for (m, v) in err.into_iter().enumerate() {
                self.errors[n][m].fetch_add(v, Ordering::Relaxed);
            }
            let targets = [
                &self.bytes_in[n],
                &self.bytes_out[n],
                &self.fallbacks[n],
                &self.safety_net[n],
                &self.failovers[n],
                &self.upload_sessions[n],
            ];
            for (c, v) in targets.into_iter().zip(scalars) {
                c.fetch_add(v, Ordering::Relaxed);
            }
        }
    }

    fn render(&self, o: &mut String, regions: &[RegionGauge<'_>]) {
        if !self.running.load(Ordering::Relaxed) {
            return;
        }
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut rows: Vec<(usize, &str)> = regions
            .iter()
            .enumerate()
            .take(MAX_REGIONS)
            .map(|(i, r)| (i, r.name))
            .collect();
        rows.push((MAX_REGIONS, ""));
        for (metric, help, table) in [
            (
                "berth_proxy_requests_total",
                "Proxied requests by region and method (region=\"\": answered by Berth).",
                &self.requests,
            ),
            (
                "berth_proxy_errors_total",
                "Proxied requests that failed or got a 5xx, by region and method.",
                &self.errors,
            ),
        ] {
            let _ = writeln!(o, "# HELP {metric} {help}");
            let _ = writeln!(o, "# TYPE {metric} counter");
            for (i, name) in &rows {
                for (m, method) in PROXY_METHODS.iter().enumerate() {
                    let v = load(&table[*i][m]);
                    if v > 0 || (*i < MAX_REGIONS && m == 0) {
                        let _ =
                            writeln!(o, "{metric}{{region=\"{name}\",method=\"{method}\"}} {v}");
                    }
                }
            }
        }
        for (metric, help, list, with_none) in [
            (
                "berth_proxy_request_bytes_total",
                "Request body bytes sent to each region.",
                &self.bytes_in,
                true,
            ),
            (
                "berth_proxy_response_bytes_total",
                "Response body bytes received from each region.",
                &self.bytes_out,
                true,
            ),
            (
                "berth_proxy_read_fallbacks_total",
                "Reads a region served after another answered 404.",
                &self.fallbacks,
                false,
            ),
            (
                "berth_proxy_safety_net_retries_total",
                "Manifests stored in a region by the safety net after another refused them.",
                &self.safety_net,
                false,
            ),
            (
                "berth_proxy_failovers_total",
                "Requests moved away from a region that refused connections.",
                &self.failovers,
                false,
            ),
        ] {
            let _ = writeln!(o, "# HELP {metric} {help}");
            let _ = writeln!(o, "# TYPE {metric} counter");
            for (i, name) in &rows {
                if *i == MAX_REGIONS && !with_none {
                    continue;
                }
                let _ = writeln!(o, "{metric}{{region=\"{name}\"}} {}", load(&list[*i]));
            }
        }
        let _ = writeln!(o, "# HELP berth_proxy_upload_sessions Upload sessions seen lately and not finished, by region.");
        let _ = writeln!(o, "# TYPE berth_proxy_upload_sessions gauge");
        for (i, name) in rows.iter().filter(|(i, _)| *i < MAX_REGIONS) {
            let _ = writeln!(
                o,
                "berth_proxy_upload_sessions{{region=\"{name}\"}} {}",
                load(&self.upload_sessions[*i])
            );
        }
        let _ = writeln!(o, "# HELP berth_proxy_refused_sessions_total Upload requests refused: forged token or the session's region gone.");
        let _ = writeln!(o, "# TYPE berth_proxy_refused_sessions_total counter");
        let _ = writeln!(
            o,
            "berth_proxy_refused_sessions_total {}",
            load(&self.refused_sessions)
        );
        let _ = writeln!(
            o,
            "# HELP berth_proxy_affinity_entries (client, repository) affinities remembered."
        );
        let _ = writeln!(o, "# TYPE berth_proxy_affinity_entries gauge");
        let _ = writeln!(
            o,
            "berth_proxy_affinity_entries {}",
            load(&self.affinity_entries)
        );
    }
}

impl Metrics {
    pub fn query(&self, tcp: bool, rcode: u8) {
        self.queries[usize::from(tcp)][usize::from(rcode & 0x0f)].fetch_add(1, Ordering::Relaxed);
    }

    /// A routed answer for name `name`: `region` None is NODATA.
    pub fn answer(&self, name: usize, region: Option<usize>, fail_open: bool) {
        if name >= MAX_NAMES {
            return;
        }
        let col = region.filter(|r| *r < MAX_REGIONS).unwrap_or(MAX_REGIONS);
        self.answers[name][col].fetch_add(1, Ordering::Relaxed);
        if fail_open {
            self.fail_open_answers[name].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Answers served with `region`, over all routed names.
    pub fn region_answers(&self, region: usize) -> u64 {
        if region >= MAX_REGIONS {
            return 0;
        }
        self.answers
            .iter()
            .map(|row| row[region].load(Ordering::Relaxed))
            .sum()
    }

    pub fn queries_by_rcode(&self) -> [u64; 16] {
        let mut out = [0u64; 16];
        for t in &self.queries {
            for (i, c) in t.iter().enumerate() {
                out[i] += c.load(Ordering::Relaxed);
            }
        }
        out
    }

    /// Move counters to new indices after a reload; counters of names that are gone are dropped.
    pub fn remap(
        &self,
        name: impl Fn(usize) -> Option<usize>,
        region: impl Fn(usize) -> Option<usize>,
    ) {
        let old: Vec<Vec<u64>> = self
            .answers
            .iter()
            .map(|row| row.iter().map(|c| c.swap(0, Ordering::Relaxed)).collect())
            .collect();
        let old_fo: Vec<u64> = self
            .fail_open_answers
            .iter()
            .map(|c| c.swap(0, Ordering::Relaxed))
            .collect();
        let old_down: Vec<u64> = self
            .region_down_events
            .iter()
            .map(|c| c.swap(0, Ordering::Relaxed))
            .collect();
        for (n, row) in old.iter().enumerate() {
            let Some(nn) = name(n).filter(|x| *x < MAX_NAMES) else {
                continue;
            };
            self.fail_open_answers[nn].fetch_add(old_fo[n], Ordering::Relaxed);
            for (r, v) in row.iter().enumerate() {
                let col = if r == MAX_REGIONS {
                    Some(MAX_REGIONS)
                } else {
                    region(r).filter(|x| *x < MAX_REGIONS)
                };
                if let Some(c) = col {
                    self.answers[nn][c].fetch_add(*v, Ordering::Relaxed);
                }
            }
        }
        for (r, v) in old_down.iter().enumerate() {
            if let Some(nr) = region(r).filter(|x| *x < MAX_REGIONS) {
                self.region_down_events[nr].fetch_add(*v, Ordering::Relaxed);
            }
        }
        self.proxy.remap(&region);
    }
}

/// Live values the renderer needs that are not counters.
pub struct Gauges<'a> {
    pub names: Vec<&'a str>,
    pub regions: Vec<RegionGauge<'a>>,
    pub fail_open: Vec<bool>,
    pub sticky_entries: usize,
    pub generation: u64,
    pub last_reload_ok: bool,
}

pub struct RegionGauge<'a> {
    pub name: &'a str,
    pub enabled: bool,
    pub healthy: bool,
    pub probe_latency_ms: Option<f64>,
}

const RCODES: [&str; 16] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET",
    "NXRRSET", "NOTAUTH", "NOTZONE", "RCODE11", "RCODE12", "RCODE13", "RCODE14", "RCODE15",
];

impl Metrics {
    pub fn render(&self, g: &Gauges<'_>) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "# HELP berth_dns_queries_total DNS queries answered, by transport and response code."
        );
        let _ = writeln!(o, "# TYPE berth_dns_queries_total counter");
        for (t, tname) in ["udp", "tcp"].iter().enumerate() {
            for (rc, rname) in RCODES.iter().enumerate() {
                let v = self.queries[t][rc].load(Ordering::Relaxed);
                if v > 0 || rc == 0 || rc == 3 || rc == 5 {
                    let _ = writeln!(
                        o,
                        "berth_dns_queries_total{{transport=\"{tname}\",rcode=\"{rname}\"}} {v}"
                    );
                }
            }
        }
        let _ = writeln!(o, "# HELP berth_dns_dropped_total Packets dropped without an answer (too short, or not a query).");
        let _ = writeln!(o, "# TYPE berth_dns_dropped_total counter");
        let _ = writeln!(
            o,
            "berth_dns_dropped_total {}",
            self.dropped.load(Ordering::Relaxed)
        );
        let _ = writeln!(o, "# HELP berth_routed_answers_total Routed-name answers by region (region=\"\" is NODATA).");
        let _ = writeln!(o, "# TYPE berth_routed_answers_total counter");
        for (n, name) in g.names.iter().enumerate().take(MAX_NAMES) {
            for (r, region) in g.regions.iter().enumerate().take(MAX_REGIONS) {
                let _ = writeln!(
                    o,
                    "berth_routed_answers_total{{name=\"{name}\",region=\"{}\"}} {}",
                    region.name,
                    self.answers[n][r].load(Ordering::Relaxed)
                );
            }
            let _ = writeln!(
                o,
                "berth_routed_answers_total{{name=\"{name}\",region=\"\"}} {}",
                self.answers[n][MAX_REGIONS].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(o, "# HELP berth_fail_open_answers_total Routed answers given while no enabled region was healthy.");
        let _ = writeln!(o, "# TYPE berth_fail_open_answers_total counter");
        for (n, name) in g.names.iter().enumerate().take(MAX_NAMES) {
            let _ = writeln!(
                o,
                "berth_fail_open_answers_total{{name=\"{name}\"}} {}",
                self.fail_open_answers[n].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            o,
            "# HELP berth_fail_open 1 while a routed name has no healthy enabled region."
        );
        let _ = writeln!(o, "# TYPE berth_fail_open gauge");
        for (name, fo) in g.names.iter().zip(&g.fail_open) {
            let _ = writeln!(o, "berth_fail_open{{name=\"{name}\"}} {}", u8::from(*fo));
        }
        let _ = writeln!(
            o,
            "# HELP berth_fail_open_events_total Times failing open started."
        );
        let _ = writeln!(o, "# TYPE berth_fail_open_events_total counter");
        let _ = writeln!(
            o,
            "berth_fail_open_events_total {}",
            self.fail_open_events.load(Ordering::Relaxed)
        );
        let _ = writeln!(o, "# HELP berth_region_healthy 1 if the region's probes say it is healthy (or it is not probed yet).");
        let _ = writeln!(o, "# TYPE berth_region_healthy gauge");
        for r in &g.regions {
            let _ = writeln!(
                o,
                "berth_region_healthy{{region=\"{}\"}} {}",
                r.name,
                u8::from(r.healthy)
            );
        }
        let _ = writeln!(
            o,
            "# HELP berth_region_enabled The operator's endpoint_enabled flag."
        );
        let _ = writeln!(o, "# TYPE berth_region_enabled gauge");
        for r in &g.regions {
            let _ = writeln!(
                o,
                "berth_region_enabled{{region=\"{}\"}} {}",
                r.name,
                u8::from(r.enabled)
            );
        }
        let _ = writeln!(o, "# HELP berth_region_down_events_total Health transitions to down (failovers of the region's clients).");
        let _ = writeln!(o, "# TYPE berth_region_down_events_total counter");
        for (i, r) in g.regions.iter().enumerate().take(MAX_REGIONS) {
            let _ = writeln!(
                o,
                "berth_region_down_events_total{{region=\"{}\"}} {}",
                r.name,
                self.region_down_events[i].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(o, "# HELP berth_probe_latency_ms Smoothed probe latency.");
        let _ = writeln!(o, "# TYPE berth_probe_latency_ms gauge");
        for r in &g.regions {
            if let Some(ms) = r.probe_latency_ms {
                let _ = writeln!(o, "berth_probe_latency_ms{{region=\"{}\"}} {ms:.3}", r.name);
            }
        }
        let _ = writeln!(
            o,
            "# HELP berth_sticky_entries Clients remembered in the sticky table."
        );
        let _ = writeln!(o, "# TYPE berth_sticky_entries gauge");
        let _ = writeln!(o, "berth_sticky_entries {}", g.sticky_entries);
        let _ = writeln!(
            o,
            "# HELP berth_config_generation Generation of the snapshot serving now."
        );
        let _ = writeln!(o, "# TYPE berth_config_generation gauge");
        let _ = writeln!(o, "berth_config_generation {}", g.generation);
        let _ = writeln!(o, "# HELP berth_reloads_total Config reloads by result.");
        let _ = writeln!(o, "# TYPE berth_reloads_total counter");
        let _ = writeln!(
            o,
            "berth_reloads_total{{result=\"ok\"}} {}",
            self.reloads_ok.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "berth_reloads_total{{result=\"rejected\"}} {}",
            self.reloads_failed.load(Ordering::Relaxed)
        );
        let _ = writeln!(o, "# HELP berth_last_reload_ok 0 if the last reload was rejected (the previous config keeps serving).");
        let _ = writeln!(o, "# TYPE berth_last_reload_ok gauge");
        let _ = writeln!(o, "berth_last_reload_ok {}", u8::from(g.last_reload_ok));
        self.proxy.render(&mut o, &g.regions);
        let _ = writeln!(o, "# HELP berth_dns_rate_limited_total UDP answers held back by response rate limiting: dropped, or sent truncated (slip).");
        let _ = writeln!(o, "# TYPE berth_dns_rate_limited_total counter");
        for (action, c) in [("drop", &self.rrl_dropped), ("slip", &self.rrl_slipped)] {
            let _ = writeln!(
                o,
                "berth_dns_rate_limited_total{{action=\"{action}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        o
    }
}
