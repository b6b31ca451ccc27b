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
        }
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
        o
    }
}
