//! [`Live`]: what every front end shares at run time, and the one place that changes it.
//!
//! Readers (DNS threads, admin reads) load the current [`Snapshot`] without locks. Writers
//! (operator flags, health verdicts, reloads) take the `control` lock, update the operator
//! state or health table, compute the region states, and publish a fresh snapshot. This is
//! also the IO edge of routing: it reads the clock for the sticky table, then calls the pure
//! [`Snapshot::route_with`]. Not here: parsing packets (dns), HTTP (admin), probing (health).

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::config::Config;
use crate::flags::{Flags, FlagsError};
use crate::metrics::{Gauges, Metrics, RegionGauge};
use crate::routing::{ClientKey, RegionState};
use crate::snapshot::{FastRouted, LoadError, Snapshot};
use crate::sticky::{Millis, StickyTable};

/// A probe verdict for one region, as the health monitor reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthInfo {
    /// "unknown" (not probed yet: counts as healthy), "up" or "down".
    pub state: &'static str,
    pub healthy: bool,
    pub last_error: Option<String>,
    pub probe_latency_ms: Option<f64>,
}

impl Default for HealthInfo {
    fn default() -> Self {
        HealthInfo {
            state: "unknown",
            healthy: true,
            last_error: None,
            probe_latency_ms: None,
        }
    }
}

/// Something an operator will want to see in the dashboard's event list.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub seq: u64,
    /// Unix time, ms.
    pub at_ms: u64,
    pub kind: &'static str,
    pub region: Option<String>,
    pub detail: String,
}

/// The result of the last reload, for the API and the dashboard.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadStatus {
    pub ok: bool,
    pub generation: u64,
    pub error: Option<String>,
    pub at_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no region is named {0:?}")]
    UnknownRegion(String),
    #[error(transparent)]
    Flags(#[from] FlagsError),
}

struct Control {
    flags: Flags,
    /// By region name, so verdicts survive a reload that reorders regions.
    health: BTreeMap<String, HealthInfo>,
    last_reload: Option<ReloadStatus>,
    events: VecDeque<Event>,
    next_seq: u64,
}

pub struct Live {
    pub snapshot: ArcSwap<Snapshot>,
    pub sticky: StickyTable,
    pub metrics: Metrics,
    control: Mutex<Control>,
    config_path: PathBuf,
    /// Zero of the sticky table's clock.
    epoch: Instant,
    /// When not `u64::MAX`, the sticky clock is frozen here ([`Live::set_clock`]).
    frozen: AtomicU64,
    /// The generation of every published config (not of flag or health changes): whoever
    /// follows the config (the health monitor's region list) waits on it, whichever way the
    /// reload came (SIGHUP, the admin API).
    config_generation: tokio::sync::watch::Sender<u64>,
}

const MAX_EVENTS: usize = 200;

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Live {
    /// Load the config at `path`, everything it names, and the operators' flags.
    pub fn load(path: &Path) -> Result<Arc<Live>, anyhow::Error> {
        let config = Config::load(path)?;
        let flags = Flags::load(&config.admin.state_file)?;
        let snapshot = Snapshot::load(config, 1)?;
        Ok(Live::new(snapshot, flags, path))
    }

    /// A Live around a ready snapshot (tests build it directly).
    pub fn new(snapshot: Snapshot, flags: Flags, config_path: &Path) -> Arc<Live> {
        let metrics = Metrics::default();
        let counters = metrics.counters(&snapshot.config);
        let snapshot = snapshot.with_counters(counters);
        let first = snapshot.generation;
        let s = &snapshot.config.sticky;
        let sticky = StickyTable::new(s.capacity, s.idle, s.max_age);
        let control = Control {
            flags,
            health: BTreeMap::new(),
            last_reload: None,
            events: VecDeque::new(),
            next_seq: 1,
        };
        let states = compute_states(&snapshot.config, &control);
        let live = Live {
            snapshot: ArcSwap::from_pointee(snapshot.with_states(states)),
            sticky,
            metrics,
            control: Mutex::new(control),
            config_path: config_path.to_path_buf(),
            epoch: Instant::now(),
            frozen: AtomicU64::new(u64::MAX),
            config_generation: tokio::sync::watch::Sender::new(first),
        };
        Arc::new(live)
    }

    fn control(&self) -> MutexGuard<'_, Control> {
        // A panic while holding the lock cannot leave Control half-updated in a way that
        // matters more than stopping control entirely would.
        self.control.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn now(&self) -> Millis {
        match self.frozen.load(Ordering::Relaxed) {
            u64::MAX => self.epoch.elapsed().as_millis() as Millis,
            t => t,
        }
    }

    /// Freeze the sticky clock at `at` ms: tests replay minutes of queries through the real
    /// DNS path this way, deterministically.
    pub fn set_clock(&self, at: Millis) {
        self.frozen.store(at, Ordering::Relaxed);
    }

    /// Route `addr` for routed name number `index` of `snap`, remembering the answer.
    pub fn route(&self, snap: &Snapshot, index: usize, addr: IpAddr) -> FastRouted {
        self.route_at(snap, index, addr, self.now())
    }

    /// As [`Live::route`] at an explicit time (tests replay minutes of queries this way).
    pub fn route_at(&self, snap: &Snapshot, index: usize, addr: IpAddr, now: Millis) -> FastRouted {
        let rn = &snap.config.routed_names[index];
        // Keyed by names, not ids: entries written from an older snapshot mean the same.
        let key = (
            snap.keys.names[index],
            ClientKey::new(addr, rn.client_prefix(&addr)),
        );
        let remembered = self
            .sticky
            .get(&key, now)
            .and_then(|r| snap.keys.region_id(r));
        let routed = snap.route_fast(index, addr, remembered);
        let region = routed.region.map(|r| snap.keys.regions[r]);
        self.sticky.record(key, region, now);
        snap.counters.answer(index, routed.region, routed.fail_open);
        routed
    }

    /// Set a region's `endpoint_enabled` flag: persisted first, then published.
    pub fn set_enabled(&self, region: &str, enabled: bool) -> Result<(), ControlError> {
        let mut c = self.control();
        let snap = self.snapshot.load_full();
        if snap.config.region_id(region).is_none() {
            return Err(ControlError::UnknownRegion(region.to_string()));
        }
        if c.flags.is_enabled(region) == enabled {
            return Ok(());
        }
        c.flags.set(region, enabled)?;
        let kind = if enabled {
            "region-enabled"
        } else {
            "region-disabled"
        };
        push_event(
            &mut c,
            kind,
            Some(region),
            format!("endpoint_enabled set to {enabled}"),
        );
        self.republish(&mut c, &snap);
        Ok(())
    }

    pub fn is_enabled(&self, region: &str) -> bool {
        self.control().flags.is_enabled(region)
    }

    /// A new probe verdict for a region (by name).
    pub fn set_health(&self, region: &str, info: HealthInfo) {
        let mut c = self.control();
        let prev = c.health.get(region).cloned().unwrap_or_default();
        let flipped = prev.healthy != info.healthy;
        if flipped {
            let (kind, detail) = if info.healthy {
                ("region-up", "probes succeed again".to_string())
            } else {
                (
                    "region-down",
                    info.last_error
                        .clone()
                        .unwrap_or_else(|| "probes fail".into()),
                )
            };
            push_event(&mut c, kind, Some(region), detail);
        }
        c.health.insert(region.to_string(), info);
        if flipped {
            let snap = self.snapshot.load_full();
            if let Some(r) = snap
                .config
                .region_id(region)
                .and_then(|id| snap.counters.region(id))
            {
                if !c.health[region].healthy {
                    r.down_events.fetch_add(1, Ordering::Relaxed);
                }
            }
            self.republish(&mut c, &snap);
        }
    }

    pub fn health(&self, region: &str) -> HealthInfo {
        self.control()
            .health
            .get(region)
            .cloned()
            .unwrap_or_default()
    }

    /// Load the config again; publish it whole or keep serving the old one and say why.
    /// Listener addresses are not changed by a reload (that needs a restart).
    pub fn reload(&self) -> Result<u64, LoadError> {
        let mut c = self.control();
        let prev = self.snapshot.load_full();
        let generation = prev.generation + 1;
        // A panic while loading is a bug, but must not take the server down with it (a
        // SIGHUP reload runs on the main thread): it rejects this reload like a bad config.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Config::load(&self.config_path)
                .map_err(LoadError::from)
                .and_then(|config| Snapshot::load(config, generation))
        }))
        .unwrap_or_else(|panic| {
            Err(LoadError::Internal(format!(
                "loading {} panicked: {}; the previous config keeps serving (please report this)",
                self.config_path.display(),
                crate::panic_message(panic.as_ref())
            )))
        });
        match result {
            Ok(next) => {
                let pending = restart_only_changes(&prev.config, &next.config);
                if !pending.is_empty() {
                    tracing::warn!(
                        "changed settings that are read at start only, taking effect at the \
                         next restart: {}",
                        pending.join(", ")
                    );
                }
                // Counters and sticky memory are keyed by names: nothing to remap, so
                // publishing the snapshot is the whole of the switch.
                let counters = self.metrics.counters(&next.config);
                let next = next.with_counters(counters);
                self.metrics.reloads_ok.fetch_add(1, Ordering::Relaxed);
                c.last_reload = Some(ReloadStatus {
                    ok: true,
                    generation,
                    error: None,
                    at_ms: unix_ms(),
                });
                push_event(
                    &mut c,
                    "reload",
                    None,
                    format!("generation {generation} serving"),
                );
                self.republish(&mut c, &next);
                self.config_generation.send_replace(generation);
                Ok(generation)
            }
            Err(e) => {
                let text = crate::report(&e);
                self.metrics.reloads_failed.fetch_add(1, Ordering::Relaxed);
                c.last_reload = Some(ReloadStatus {
                    ok: false,
                    generation: prev.generation,
                    error: Some(text.clone()),
                    at_ms: unix_ms(),
                });
                push_event(&mut c, "reload-rejected", None, text);
                Err(e)
            }
        }
    }

    /// Changes with every config a reload publishes.
    pub fn watch_config(&self) -> tokio::sync::watch::Receiver<u64> {
        self.config_generation.subscribe()
    }

    pub fn last_reload(&self) -> Option<ReloadStatus> {
        self.control().last_reload.clone()
    }

    /// Events after `after` (by sequence number), oldest first.
    pub fn events(&self, after: u64) -> Vec<Event> {
        self.control()
            .events
            .iter()
            .filter(|e| e.seq > after)
            .cloned()
            .collect()
    }

    /// Compute region states from flags and health and publish `base` with them; count the
    /// start of failing open.
    fn republish(&self, c: &mut Control, base: &Snapshot) {
        let states = compute_states(&base.config, c);
        let before = self.snapshot.load();
        let was: Vec<bool> = before
            .config
            .routed_names
            .iter()
            .map(|n| before.fail_open(n))
            .collect();
        let next = base.with_states(states);
        for (i, n) in next.config.routed_names.iter().enumerate() {
            let now = next.fail_open(n);
            if now != was.get(i).copied().unwrap_or(false) {
                if now {
                    self.metrics
                        .fail_open_events
                        .fetch_add(1, Ordering::Relaxed);
                }
                let kind = if now {
                    "fail-open-start"
                } else {
                    "fail-open-end"
                };
                let detail = if now {
                    format!(
                        "{}: no enabled region is healthy, answering as if all were",
                        n.name
                    )
                } else {
                    format!("{}: a healthy enabled region is back", n.name)
                };
                push_event(c, kind, None, detail);
            }
        }
        self.snapshot.store(Arc::new(next));
    }

    /// Everything `/metrics` shows.
    pub fn render_metrics(&self) -> String {
        let snap = self.snapshot.load_full();
        let c = self.control();
        let health: Vec<HealthInfo> = snap
            .config
            .regions
            .iter()
            .map(|r| c.health.get(&r.name).cloned().unwrap_or_default())
            .collect();
        let g = Gauges {
            names: snap
                .config
                .routed_names
                .iter()
                .map(|n| n.name.as_str())
                .collect(),
            regions: snap
                .config
                .regions
                .iter()
                .zip(&health)
                .map(|(r, h)| RegionGauge {
                    name: &r.name,
                    enabled: c.flags.is_enabled(&r.name),
                    healthy: h.healthy,
                    probe_latency_ms: h.probe_latency_ms,
                })
                .collect(),
            fail_open: snap
                .config
                .routed_names
                .iter()
                .map(|n| snap.fail_open(n))
                .collect(),
            sticky_entries: self.sticky.len(),
            generation: snap.generation,
            last_reload_ok: c.last_reload.as_ref().is_none_or(|r| r.ok),
            counters: &snap.counters,
        };
        self.metrics.render(&g)
    }
}

/// Settings a reload cannot apply (listeners, threads, table sizes, secrets) that differ
/// between `prev` and `next`, named as in the config file; README lists them too.
fn restart_only_changes(prev: &Config, next: &Config) -> Vec<&'static str> {
    let (p, n) = (&prev.proxy, &next.proxy);
    [
        // [dns.rate_limit] and [dns.cookie] live in the snapshot: a reload applies them.
        (
            "[dns] (but rate_limit and cookie)",
            crate::config::DnsConfig {
                rate_limit: next.dns.rate_limit.clone(),
                cookie: next.dns.cookie.clone(),
                ..prev.dns.clone()
            } != next.dns,
        ),
        ("[sticky]", prev.sticky != next.sticky),
        // The state file too: the flags were loaded from it at start and are written there.
        ("[admin]", prev.admin != next.admin),
        ("[proxy] listen", p.listen != n.listen),
        (
            "[proxy] tls_listen",
            p.tls.as_ref().map(|t| t.listen) != n.tls.as_ref().map(|t| t.listen),
        ),
        ("[proxy] threads", p.threads != n.threads),
        ("[proxy] secret_env/secret_file", p.secret != n.secret),
        ("[proxy] push_affinity", p.push_affinity != n.push_affinity),
        (
            "[proxy] affinity_capacity",
            p.affinity_capacity != n.affinity_capacity,
        ),
        (
            "[proxy] upstream_ca_file",
            p.upstream_ca_file != n.upstream_ca_file,
        ),
        (
            "[proxy] request_head_timeout",
            p.request_head_timeout != n.request_head_timeout,
        ),
        (
            "[proxy] shutdown_grace",
            p.shutdown_grace != n.shutdown_grace,
        ),
    ]
    .into_iter()
    .filter(|(_, changed)| *changed)
    .map(|(name, _)| name)
    .collect()
}

fn compute_states(config: &Config, c: &Control) -> Vec<RegionState> {
    config
        .regions
        .iter()
        .map(|r| RegionState {
            enabled: c.flags.is_enabled(&r.name),
            healthy: c.health.get(&r.name).is_none_or(|h| h.healthy),
        })
        .collect()
}

fn push_event(c: &mut Control, kind: &'static str, region: Option<&str>, detail: String) {
    let seq = c.next_seq;
    c.next_seq += 1;
    if matches!(kind, "region-down" | "reload-rejected" | "fail-open-start") {
        tracing::warn!(event = kind, region = region.unwrap_or("-"), "{detail}");
    } else {
        tracing::info!(event = kind, region = region.unwrap_or("-"), "{detail}");
    }
    c.events.push_back(Event {
        seq,
        at_ms: unix_ms(),
        kind,
        region: region.map(String::from),
        detail,
    });
    while c.events.len() > MAX_EVENTS {
        c.events.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(dns: &str, admin: &str, extra: &str) -> Config {
        let text = format!(
            "[dns]\nlisten = [\"{dns}\"]\n[admin]\nlisten = \"127.0.0.1:9180\"\n{admin}\n{extra}"
        );
        Config::parse(&text, Path::new("/etc/berth/berth.toml")).expect("config")
    }

    #[test]
    fn restart_only_settings_are_named_when_a_reload_changes_them() {
        let base = parse("127.0.0.1:1053", "", "");
        assert!(restart_only_changes(&base, &base).is_empty());
        let other = parse("127.0.0.1:1053", "", "[sticky]\ncapacity = 10\n");
        assert_eq!(restart_only_changes(&base, &other), ["[sticky]"]);
        let other = parse("127.0.0.1:53", "", "");
        assert_eq!(
            restart_only_changes(&base, &other),
            ["[dns] (but rate_limit and cookie)"]
        );
        let other = parse("127.0.0.1:1053", "", "[dns.rate_limit]\nslip = 1\n");
        assert!(restart_only_changes(&base, &other).is_empty());
        let other = parse("127.0.0.1:1053", "state_file = \"/tmp/other.json\"", "");
        assert_eq!(restart_only_changes(&base, &other), ["[admin]"]);
    }
}
