//! Counters the front ends bump on the hot path (plain atomics, no locks, no allocation), and
//! their rendering as Prometheus text for `GET /metrics`.
//!
//! Counters with a routed-name or region label live in a registry keyed by *name*
//! ([`Metrics::counters`]); each snapshot holds [`Counters`], handles to them indexed by that
//! snapshot's own ids. A reload builds new handles to the same counters, so nothing is ever
//! remapped: a DNS thread or a proxy request still holding the previous snapshot counts under
//! the right label, and a region that is removed and added back keeps its counts. Gauges
//! (health, flags, sticky size) are read from live state at render time.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::Config;

pub mod hist;
pub mod process;
pub use hist::Histogram;

pub struct Metrics {
    /// [transport][rcode]: every query answered. Transport 0 = UDP, 1 = TCP.
    queries: [[AtomicU64; 16]; 2],
    pub fail_open_events: AtomicU64,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// Queries dropped without an answer (too short, or a response).
    pub dropped: AtomicU64,
    /// The HTTP proxy front end's counters and gauges that have no region.
    pub proxy: ProxyMetrics,
    /// Labelled counters by name, for every name any config has had.
    registry: Mutex<Registry>,
    /// DNS TCP connections closed at once: a per-listener or per-client cap was reached.
    pub dns_tcp_refused: AtomicU64,
    /// Pauses of a DNS TCP accept loop because the process ran out of file descriptors.
    pub dns_tcp_accept_pauses: AtomicU64,
    /// The supervised workers: which run, their panics (`/readyz`, the dashboard).
    pub workers: std::sync::Arc<crate::supervise::Workers>,
    /// Requests to a region that timed out (connect, read or write), all regions.
    pub proxy_upstream_timeouts: AtomicU64,
    /// Regions reported down by the proxy's passive health (a run of timeouts or failed
    /// connections), all regions.
    pub proxy_passive_downs: AtomicU64,
    /// UDP answers the response rate limiter dropped.
    pub rrl_dropped: AtomicU64,
    /// UDP answers the response rate limiter sent as empty truncated ones (slip).
    pub rrl_slipped: AtomicU64,
    /// DNS answer times: one histogram per UDP thread (each written by its thread only),
    /// merged when rendered.
    dns_udp_times: Mutex<Vec<Arc<Histogram>>>,
    /// DNS answer times over TCP, per query.
    pub dns_tcp_times: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            queries: Default::default(),
            fail_open_events: AtomicU64::new(0),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            proxy: ProxyMetrics::default(),
            rrl_dropped: AtomicU64::new(0),
            rrl_slipped: AtomicU64::new(0),
            proxy_upstream_timeouts: AtomicU64::new(0),
            proxy_passive_downs: AtomicU64::new(0),
            dns_tcp_refused: AtomicU64::new(0),
            dns_tcp_accept_pauses: AtomicU64::new(0),
            workers: Default::default(),
            registry: Mutex::new(Registry::default()),
            dns_udp_times: Mutex::new(Vec::new()),
            dns_tcp_times: Histogram::new(hist::DNS_BOUNDS),
        }
    }
}

#[derive(Default)]
struct Registry {
    names: HashMap<String, Arc<NameCounters>>,
    /// (routed name, region) -> answers.
    answers: HashMap<(String, String), Arc<AtomicU64>>,
    regions: HashMap<String, Arc<RegionCounters>>,
}

/// One routed name's counters.
#[derive(Default)]
pub struct NameCounters {
    /// Answers with no region (NODATA: nothing answerable).
    nodata: AtomicU64,
    /// Decisions made while failing open.
    fail_open_answers: AtomicU64,
}

/// One region's counters.
#[derive(Default)]
pub struct RegionCounters {
    /// Health transitions from up to down: each is a failover for its clients.
    pub down_events: AtomicU64,
    pub proxy: ProxyCounters,
}

/// The counters one snapshot's ids index: handles into the registry (or detached ones for a
/// snapshot no server publishes, such as `berth route`'s).
pub struct Counters {
    /// By routed-name id.
    names: Vec<Arc<NameCounters>>,
    /// [routed-name id][region id].
    answers: Vec<Vec<Arc<AtomicU64>>>,
    /// By region id.
    regions: Vec<Arc<RegionCounters>>,
}

impl Counters {
    /// Fresh counters nobody else sees.
    pub fn detached(config: &Config) -> Counters {
        Registry::default().handles(config)
    }

    /// Count a routed answer for name `name`: `region` None is NODATA.
    pub fn answer(&self, name: usize, region: Option<usize>, fail_open: bool) {
        let Some(n) = self.names.get(name) else {
            return;
        };
        match region.and_then(|r| self.answers[name].get(r)) {
            Some(c) => c.fetch_add(1, Ordering::Relaxed),
            None => n.nodata.fetch_add(1, Ordering::Relaxed),
        };
        if fail_open {
            n.fail_open_answers.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Answers served with `region`, over all routed names.
    pub fn region_answers(&self, region: usize) -> u64 {
        self.answers
            .iter()
            .filter_map(|row| row.get(region))
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    pub fn region(&self, id: usize) -> Option<&RegionCounters> {
        self.regions.get(id).map(|r| &**r)
    }
}

impl Registry {
    fn handles(&mut self, config: &Config) -> Counters {
        let names = config
            .routed_names
            .iter()
            .map(|n| self.names.entry(n.name.clone()).or_default().clone())
            .collect();
        let answers = config
            .routed_names
            .iter()
            .map(|n| {
                config
                    .regions
                    .iter()
                    .map(|r| {
                        self.answers
                            .entry((n.name.clone(), r.name.clone()))
                            .or_default()
                            .clone()
                    })
                    .collect()
            })
            .collect();
        let regions = config
            .regions
            .iter()
            .map(|r| self.regions.entry(r.name.clone()).or_default().clone())
            .collect();
        Counters {
            names,
            answers,
            regions,
        }
    }
}

/// Request methods the proxy counts separately; the last is everything else.
pub const PROXY_METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OTHER"];

/// The proxy's counters that belong to no region.
#[derive(Default)]
pub struct ProxyMetrics {
    /// Set when a proxy listener starts: only then is the proxy rendered.
    pub running: std::sync::atomic::AtomicBool,
    /// Requests Berth answered itself (a refused token, no eligible region).
    pub unrouted: ProxyCounters,
    /// Upload requests refused: forged token, or the session's region gone.
    pub refused_sessions: AtomicU64,
    /// Gauge: (client key, repository) affinities remembered.
    pub affinity_entries: AtomicU64,
}

/// Status classes of proxy requests: "none" is a request that got no answer (it failed).
pub const STATUS_CLASSES: [&str; 6] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// Index in [`STATUS_CLASSES`] of an HTTP status (0: no answer).
pub fn status_class(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100),
        _ => 0,
    }
}

/// One region's proxy counters (or the unrouted row's).
pub struct ProxyCounters {
    /// [method][status class]: every attempt, also those retried in another region.
    requests: [[AtomicU64; STATUS_CLASSES.len()]; PROXY_METHODS.len()],
    /// [method][status class]: time from the request's arrival to its last log, per request
    /// (not per attempt).
    durations: Vec<Histogram>,
    /// Answers of 500 and above, and requests that failed without an answer.
    errors: [AtomicU64; PROXY_METHODS.len()],
    /// Request body bytes sent to the region.
    bytes_in: AtomicU64,
    /// Response body bytes received from the region.
    bytes_out: AtomicU64,
    /// Reads this region served after another region answered 404 (read fallback).
    pub fallbacks: AtomicU64,
    /// Manifests the safety net stored in this region after another refused them.
    pub safety_net: AtomicU64,
    /// Requests moved away from this region because it refused connections.
    pub failovers: AtomicU64,
    /// Gauge: upload sessions seen lately and not finished.
    pub upload_sessions: AtomicU64,
}

impl Default for ProxyCounters {
    fn default() -> Self {
        ProxyCounters {
            requests: Default::default(),
            durations: (0..PROXY_METHODS.len() * STATUS_CLASSES.len())
                .map(|_| Histogram::new(hist::PROXY_BOUNDS))
                .collect(),
            errors: Default::default(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            safety_net: AtomicU64::new(0),
            failovers: AtomicU64::new(0),
            upload_sessions: AtomicU64::new(0),
        }
    }
}

impl ProxyCounters {
    /// One attempt of a request at this region and what it got (`status` 0: no answer).
    /// A request retried elsewhere counts here for each region it tried.
    pub fn attempt(&self, method: usize, status: u16) {
        let m = method.min(PROXY_METHODS.len() - 1);
        self.requests[m][status_class(status)].fetch_add(1, Ordering::Relaxed);
        if status == 0 || status >= 500 {
            self.errors[m].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The last attempt of a request, its body bytes each way and how long the whole request
    /// took.
    pub fn finished(
        &self,
        method: usize,
        status: u16,
        bytes: (u64, u64),
        took: std::time::Duration,
    ) {
        self.attempt(method, status);
        let m = method.min(PROXY_METHODS.len() - 1);
        self.durations[m * STATUS_CLASSES.len() + status_class(status)].observe(took);
        self.bytes_in.fetch_add(bytes.0, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes.1, Ordering::Relaxed);
    }

    pub fn stats(&self) -> ProxyRegionStats {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ProxyRegionStats {
            requests: PROXY_METHODS
                .iter()
                .zip(self.requests.iter())
                .map(|(m, by_status)| (*m, by_status.iter().map(load).sum::<u64>()))
                .filter(|(_, n)| *n > 0)
                .collect(),
            errors: self.errors.iter().map(load).sum(),
            bytes_in: load(&self.bytes_in),
            bytes_out: load(&self.bytes_out),
            upload_sessions: load(&self.upload_sessions),
            fallbacks: load(&self.fallbacks),
            safety_net_retries: load(&self.safety_net),
            failovers: load(&self.failovers),
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
    /// Index of a method in [`PROXY_METHODS`].
    pub fn method_index(method: &str) -> usize {
        PROXY_METHODS[..PROXY_METHODS.len() - 1]
            .iter()
            .position(|m| *m == method)
            .unwrap_or(PROXY_METHODS.len() - 1)
    }

    /// The row for region `region` of the snapshot whose `counters` these are; None (or a
    /// request without a snapshot): Berth's own row.
    pub fn row<'a>(
        &'a self,
        counters: Option<&'a Counters>,
        region: Option<usize>,
    ) -> &'a ProxyCounters {
        counters
            .zip(region)
            .and_then(|(c, r)| c.region(r))
            .map_or(&self.unrouted, |r| &r.proxy)
    }

    fn render(&self, o: &mut String, regions: &[RegionGauge<'_>], counters: &Counters) {
        if !self.running.load(Ordering::Relaxed) {
            return;
        }
        // (label, counters, is a region): the regions of this config, then Berth's own row.
        let mut rows: Vec<(&str, &ProxyCounters, bool)> = regions
            .iter()
            .enumerate()
            .filter_map(|(i, r)| Some((r.name, &counters.region(i)?.proxy, true)))
            .collect();
        rows.push(("", &self.unrouted, false));
        render_by_method(o, &rows);
        type Pick = fn(&ProxyCounters) -> &AtomicU64;
        let scalars: [(&str, &str, Pick, bool); 6] = [
            (
                "berth_proxy_request_bytes_total",
                "Request body bytes sent to each region.",
                |r| &r.bytes_in,
                true,
            ),
            (
                "berth_proxy_response_bytes_total",
                "Response body bytes received from each region.",
                |r| &r.bytes_out,
                true,
            ),
            (
                "berth_proxy_read_fallbacks_total",
                "Reads a region served after another answered 404.",
                |r| &r.fallbacks,
                false,
            ),
            (
                "berth_proxy_safety_net_retries_total",
                "Manifests stored in a region by the safety net after another refused them.",
                |r| &r.safety_net,
                false,
            ),
            (
                "berth_proxy_failovers_total",
                "Requests moved away from a region that refused connections.",
                |r| &r.failovers,
                false,
            ),
            (
                "berth_proxy_upload_sessions",
                "Upload sessions seen lately and not finished, by region.",
                |r| &r.upload_sessions,
                false,
            ),
        ];
        for (metric, help, pick, with_none) in scalars {
            let kind = if metric.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            family(
                o,
                metric,
                kind,
                help,
                rows.iter()
                    .filter(|(_, _, is_region)| *is_region || with_none)
                    .map(|(name, row, _)| (format!("{{region=\"{name}\"}}"), load(pick(row)))),
            );
        }
        family(
            o,
            "berth_proxy_refused_sessions_total",
            "counter",
            "Upload requests refused: forged token or the session's region gone.",
            single(load(&self.refused_sessions)),
        );
        family(
            o,
            "berth_proxy_affinity_entries",
            "gauge",
            "(client, repository) affinities remembered.",
            single(load(&self.affinity_entries)),
        );
    }
}

impl Metrics {
    /// Handles to the counters of every name in `config`, created on first sight. Called
    /// off the hot path, when a snapshot is built.
    pub fn counters(&self, config: &Config) -> Counters {
        self.registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .handles(config)
    }

    pub fn query(&self, tcp: bool, rcode: u8) {
        self.queries[usize::from(tcp)][usize::from(rcode & 0x0f)].fetch_add(1, Ordering::Relaxed);
    }

    /// A histogram for one more DNS UDP thread, which alone writes it.
    pub fn dns_udp_times(&self) -> Arc<Histogram> {
        let h = Arc::new(Histogram::new(hist::DNS_BOUNDS));
        self.dns_udp_times
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(h.clone());
        h
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
}

/// Live values the renderer needs that are not counters.
pub struct Gauges<'a> {
    pub names: Vec<&'a str>,
    pub regions: Vec<RegionGauge<'a>>,
    pub fail_open: Vec<bool>,
    pub sticky_entries: usize,
    pub generation: u64,
    pub last_reload_ok: bool,
    /// The serving snapshot's counters.
    pub counters: &'a Counters,
    /// The sticky table's evictions and admission rejections (rendered by `crate::sticky`).
    pub sticky: crate::sticky::StickyStats,
    /// The DNS path's big tables by name (`sticky`, `geoip`) and how they sit in memory.
    pub tables: Vec<(&'static str, crate::memory::Backing)>,
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

/// The proxy's requests and errors by region and method.
fn render_by_method(o: &mut String, rows: &[(&str, &ProxyCounters, bool)]) {
    let by_status =
        rows.iter().flat_map(|(name, row, is_region)| {
            PROXY_METHODS
                .iter()
                .enumerate()
                .flat_map(move |(m, method)| {
                    STATUS_CLASSES
                        .iter()
                        .enumerate()
                        .filter_map(move |(c, class)| {
                            let v = load(&row.requests[m][c]);
                            // A region's GET 2xx row always shows, so rate() has a series from zero.
                            (v > 0 || (*is_region && m == 0 && c == 2)).then(|| {
                                (
                            format!("{{region=\"{name}\",method=\"{method}\",status=\"{class}\"}}"),
                            v,
                        )
                            })
                        })
                })
        });
    family(
        o,
        "berth_proxy_requests_total",
        "counter",
        "Attempts of proxied requests by region, method and status class (status=\"none\": no answer; region=\"\": answered by Berth). A request retried in another region counts once per region tried.",
        by_status,
    );
    let errors = rows.iter().flat_map(|(name, row, is_region)| {
        PROXY_METHODS
            .iter()
            .enumerate()
            .filter_map(move |(m, method)| {
                let v = load(&row.errors[m]);
                (v > 0 || (*is_region && m == 0))
                    .then(|| (format!("{{region=\"{name}\",method=\"{method}\"}}"), v))
            })
    });
    family(
        o,
        "berth_proxy_errors_total",
        "counter",
        "Attempts of proxied requests that failed or got a 5xx, by region and method.",
        errors,
    );
}

/// The big tables' sizes and their share on huge pages (a table whose share is unknown has
/// no huge-page row).
fn render_tables(o: &mut String, tables: &[(&'static str, crate::memory::Backing)]) {
    let label = |name: &str| format!("{{table=\"{name}\"}}");
    family(
        o,
        "berth_table_bytes",
        "gauge",
        "Bytes of the DNS path's big tables: the sticky table's buckets and the GeoIP search tree.",
        tables.iter().map(|(name, b)| (label(name), b.bytes)),
    );
    family(
        o,
        "berth_table_huge_page_bytes",
        "gauge",
        "Bytes of those tables on transparent huge pages, measured when each was built. Far \
         below berth_table_bytes means the kernel gave few huge pages (THP off or memory \
         fragmented) and every answer pays more address-translation misses.",
        tables
            .iter()
            .filter_map(|(name, b)| b.huge.map(|h| (label(name), h))),
    );
}

/// One metric family: its HELP and TYPE lines, then `name{labels} value` per row.
fn family<V: std::fmt::Display>(
    o: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    rows: impl IntoIterator<Item = (String, V)>,
) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
    for (labels, v) in rows {
        let _ = writeln!(o, "{name}{labels} {v}");
    }
}

/// The one row of a family without labels.
fn single<V>(v: V) -> [(String, V); 1] {
    [(String::new(), v)]
}

fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl Metrics {
    pub fn render(&self, g: &Gauges<'_>) -> String {
        let mut o = String::new();
        self.render_queries(&mut o);
        render_routing(&mut o, g);
        self.render_control(&mut o, g);
        self.proxy.render(&mut o, &g.regions, g.counters);
        self.render_protection(&mut o);
        self.render_times(&mut o, g);
        process::render_build_info(&mut o);
        process::render_process(&mut o);
        crate::sticky::render_metrics(&mut o, &g.sticky);
        render_tables(&mut o, &g.tables);
        o
    }

    /// The DNS answer-time and proxy request-duration histograms.
    fn render_times(&self, o: &mut String, g: &Gauges<'_>) {
        let name = "berth_dns_answer_duration_seconds";
        hist::header(
            o,
            name,
            "Time to answer DNS queries: over UDP one receive batch in 16, from its arrival in Berth to its answers sent, once per answer in it; over TCP every query.",
        );
        let mut udp = hist::Totals::default();
        for h in self
            .dns_udp_times
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            h.add_to(&mut udp);
        }
        if udp.is_empty() {
            udp = Histogram::new(hist::DNS_BOUNDS).totals();
        }
        udp.render(o, name, "transport=\"udp\"");
        self.dns_tcp_times
            .totals()
            .render(o, name, "transport=\"tcp\"");
        if !self.proxy.running.load(Ordering::Relaxed) {
            return;
        }
        let name = "berth_proxy_request_duration_seconds";
        hist::header(
            o,
            name,
            "Proxied request durations, from arrival to the last byte, by region, method and status class.",
        );
        let rows = g
            .regions
            .iter()
            .enumerate()
            .filter_map(|(i, r)| Some((r.name, &g.counters.region(i)?.proxy)))
            .chain([("", &self.proxy.unrouted)]);
        for (region, row) in rows {
            for (m, method) in PROXY_METHODS.iter().enumerate() {
                for (c, class) in STATUS_CLASSES.iter().enumerate() {
                    let h = &row.durations[m * STATUS_CLASSES.len() + c];
                    if h.count() > 0 {
                        h.totals().render(
                            o,
                            name,
                            &format!("region=\"{region}\",method=\"{method}\",status=\"{class}\""),
                        );
                    }
                }
            }
        }
    }

    fn render_queries(&self, o: &mut String) {
        let rows = ["udp", "tcp"].iter().enumerate().flat_map(|(t, tname)| {
            RCODES.iter().enumerate().filter_map(move |(rc, rname)| {
                let v = load(&self.queries[t][rc]);
                (v > 0 || rc == 0 || rc == 3 || rc == 5)
                    .then(|| (format!("{{transport=\"{tname}\",rcode=\"{rname}\"}}"), v))
            })
        });
        family(
            o,
            "berth_dns_queries_total",
            "counter",
            "DNS queries answered, by transport and response code.",
            rows,
        );
        family(
            o,
            "berth_dns_dropped_total",
            "counter",
            "Packets dropped without an answer (too short, or not a query).",
            single(load(&self.dropped)),
        );
    }

    fn render_control(&self, o: &mut String, g: &Gauges<'_>) {
        family(
            o,
            "berth_fail_open_events_total",
            "counter",
            "Times failing open started.",
            single(load(&self.fail_open_events)),
        );
        render_region_gauges(o, g);
        family(
            o,
            "berth_sticky_entries",
            "gauge",
            "Clients remembered in the sticky table.",
            single(g.sticky_entries),
        );
        family(
            o,
            "berth_config_generation",
            "gauge",
            "Generation of the snapshot serving now.",
            single(g.generation),
        );
        family(
            o,
            "berth_reloads_total",
            "counter",
            "Config reloads by result.",
            [
                ("{result=\"ok\"}".to_string(), load(&self.reloads_ok)),
                (
                    "{result=\"rejected\"}".to_string(),
                    load(&self.reloads_failed),
                ),
            ],
        );
        family(
            o,
            "berth_last_reload_ok",
            "gauge",
            "0 if the last reload was rejected (the previous config keeps serving).",
            single(u8::from(g.last_reload_ok)),
        );
    }

    /// What guards Berth against hostile or broken peers: caps, pauses, panics, timeouts, RRL.
    fn render_protection(&self, o: &mut String) {
        family(
            o,
            "berth_dns_tcp_refused_total",
            "counter",
            "DNS TCP connections closed at once: dns.tcp_max_connections or dns.tcp_max_connections_per_client reached.",
            single(load(&self.dns_tcp_refused)),
        );
        family(
            o,
            "berth_dns_tcp_accept_pauses_total",
            "counter",
            "Pauses in accepting DNS TCP connections for lack of file descriptors.",
            single(load(&self.dns_tcp_accept_pauses)),
        );
        self.workers.render(o);
        family(
            o,
            "berth_proxy_upstream_timeouts_total",
            "counter",
            "Requests to a region that timed out (connect, read or write).",
            single(load(&self.proxy_upstream_timeouts)),
        );
        family(
            o,
            "berth_proxy_passive_downs_total",
            "counter",
            "Regions reported down by the proxy after a run of timeouts or failed connections.",
            single(load(&self.proxy_passive_downs)),
        );
        family(
            o,
            "berth_dns_rate_limited_total",
            "counter",
            "UDP answers held back by response rate limiting: dropped, or sent truncated (slip).",
            [("drop", &self.rrl_dropped), ("slip", &self.rrl_slipped)]
                .map(|(action, c)| (format!("{{action=\"{action}\"}}"), load(c))),
        );
    }
}

/// Answers by routed name and region, and while failing open.
fn render_routing(o: &mut String, g: &Gauges<'_>) {
    let c = g.counters;
    let rows = g.names.iter().enumerate().flat_map(|(n, name)| {
        let by_region = g.regions.iter().enumerate().map(move |(r, region)| {
            let v = c.answers.get(n).and_then(|row| row.get(r));
            (
                format!("{{name=\"{name}\",region=\"{}\"}}", region.name),
                v.map_or(0, |v| load(v)),
            )
        });
        let nodata = c.names.get(n).map_or(0, |v| load(&v.nodata));
        by_region.chain([(format!("{{name=\"{name}\",region=\"\"}}"), nodata)])
    });
    family(
        o,
        "berth_routed_answers_total",
        "counter",
        "Routed-name answers by region (region=\"\" is NODATA).",
        rows,
    );
    family(
        o,
        "berth_fail_open_answers_total",
        "counter",
        "Routed answers given while no enabled region was healthy.",
        g.names.iter().enumerate().map(|(n, name)| {
            let v = c.names.get(n).map_or(0, |v| load(&v.fail_open_answers));
            (format!("{{name=\"{name}\"}}"), v)
        }),
    );
    family(
        o,
        "berth_fail_open",
        "gauge",
        "1 while a routed name has no healthy enabled region.",
        g.names
            .iter()
            .zip(&g.fail_open)
            .map(|(name, fo)| (format!("{{name=\"{name}\"}}"), u8::from(*fo))),
    );
}

/// Per-region gauges (health, flag, probe latency) and down events.
fn render_region_gauges(o: &mut String, g: &Gauges<'_>) {
    let label = |r: &RegionGauge<'_>| format!("{{region=\"{}\"}}", r.name);
    family(
        o,
        "berth_region_healthy",
        "gauge",
        "1 if the region's probes say it is healthy (or it is not probed yet).",
        g.regions.iter().map(|r| (label(r), u8::from(r.healthy))),
    );
    family(
        o,
        "berth_region_enabled",
        "gauge",
        "The operator's endpoint_enabled flag.",
        g.regions.iter().map(|r| (label(r), u8::from(r.enabled))),
    );
    family(
        o,
        "berth_region_down_events_total",
        "counter",
        "Health transitions to down (failovers of the region's clients).",
        g.regions.iter().enumerate().map(|(i, r)| {
            let v = g.counters.region(i).map_or(0, |v| load(&v.down_events));
            (label(r), v)
        }),
    );
    family(
        o,
        "berth_probe_latency_seconds",
        "gauge",
        "Smoothed probe latency.",
        g.regions
            .iter()
            .filter_map(|r| Some((label(r), format!("{:.6}", r.probe_latency_ms? / 1000.0)))),
    );
}
