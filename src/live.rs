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
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::flags::{FlagRecord, Flags, FlagsError};
use crate::metrics::{Gauges, Metrics, RegionGauge};
use crate::routing::{ClientKey, RegionState};
use crate::shared::{Change, SharedState};
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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    /// Order in the list: a local counter, or with `[cluster]` the etcd revision that
    /// wrote the event to the shared list.
    pub seq: u64,
    /// Unix time, ms.
    pub at_ms: u64,
    pub kind: String,
    pub region: Option<String>,
    pub detail: String,
    /// With `[cluster]`: the instance that saw the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

/// With `[cluster]`, which instance writes an event to the shared list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Share {
    /// This instance's own observation (a reload, its etcd connection, its probes).
    Mine,
    /// Something every instance sees alike (a member joining, the shared health, fail-open):
    /// only the first live member by name writes it, so the list has it once.
    First,
    /// Kept out of the shared list (a flag change seen through the watch: the instance it
    /// was made through writes it).
    Local,
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

/// Where operator flags go when they are shared (`[cluster]`): `cluster::Handle` writes
/// them to etcd for every instance, or refuses (the message says why) when it cannot.
#[async_trait::async_trait]
pub trait SharedWriter: Send + Sync {
    async fn set_flag(&self, region: &str, record: FlagRecord) -> Result<(), String>;
}

/// A change to the shared state, as the cluster task hands it to [`Live::apply_shared`].
pub enum SharedUpdate {
    /// Connected to etcd, with a full read of the prefix: replace everything.
    Resync {
        revision: i64,
        kvs: Vec<(String, Vec<u8>)>,
    },
    /// Watched changes: a put (`Some`) or a delete (`None`) of each key.
    Changes {
        revision: i64,
        changes: Vec<(String, Option<Vec<u8>>)>,
    },
    /// The shared events list: entries put (key, mod revision, value) and keys deleted;
    /// `replace` after a full read.
    Events {
        replace: bool,
        puts: Vec<(String, i64, Vec<u8>)>,
        deletes: Vec<String>,
    },
    /// etcd is unreachable: keep the last state, say so.
    Disconnected(String),
}

struct Control {
    flags: Flags,
    /// `[cluster]`: flags and verdicts from etcd replace the state file's flags and this
    /// instance's verdicts alone. `None`: a single instance.
    shared: Option<SharedState>,
    /// By region name, so verdicts survive a reload that reorders regions.
    health: BTreeMap<String, HealthInfo>,
    last_reload: Option<ReloadStatus>,
    events: VecDeque<Event>,
    next_seq: u64,
    /// `[cluster]`: events this instance still has to write to etcd.
    outbox: Vec<Event>,
    /// `[cluster]`: the shared events list as read from etcd, by revision (with its key).
    shared_events: BTreeMap<u64, (String, Event)>,
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
    /// Signalled when this instance's own probe verdicts change: the cluster task publishes
    /// them.
    pub local_health_changed: tokio::sync::Notify,
    /// The cluster's etcd writer, set when `[cluster]` runs ([`crate::cluster`]).
    pub cluster: std::sync::OnceLock<Arc<dyn SharedWriter>>,
    /// The replicator, when `[replication]` was configured at start (set once by `app`): the
    /// proxy's push hook, the chooser's holders and the admin API reach it here.
    pub replication: std::sync::OnceLock<Arc<crate::replication::Replication>>,
}

const MAX_EVENTS: usize = 200;

/// Unix time in ms (flags' provenance and maintenance windows are wall-clock times).
pub fn unix_ms() -> u64 {
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
        let shared = snapshot
            .config
            .cluster
            .as_ref()
            .map(|c| SharedState::new(&c.instance, c.health_quorum));
        let control = Control {
            flags,
            shared,
            health: BTreeMap::new(),
            last_reload: None,
            events: VecDeque::new(),
            next_seq: 1,
            outbox: Vec::new(),
            shared_events: BTreeMap::new(),
        };
        let states = compute_states(&snapshot.config, &control, unix_ms());
        let live = Live {
            snapshot: ArcSwap::from_pointee(snapshot.with_states(states)),
            sticky,
            metrics,
            control: Mutex::new(control),
            config_path: config_path.to_path_buf(),
            epoch: Instant::now(),
            frozen: AtomicU64::new(u64::MAX),
            config_generation: tokio::sync::watch::Sender::new(first),
            local_health_changed: tokio::sync::Notify::new(),
            cluster: std::sync::OnceLock::new(),
            replication: std::sync::OnceLock::new(),
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
        let client = ClientKey::new(addr, rn.client_prefix(&addr));
        let key = (snap.keys.names[index], client);
        let place = self.sticky.place(&key);
        // The client's bucket loads while the GeoIP tree is walked.
        self.sticky.prefetch(&place);
        let spot = snap.locate(addr);
        let routed = self.sticky.remember_at(&place, now, |remembered| {
            let remembered = remembered.and_then(|r| snap.keys.region_id(r));
            let routed = snap.route_fast_located(index, spot, client, remembered);
            (routed, routed.region.map(|r| snap.keys.regions[r]))
        });
        snap.counters.answer(index, routed.region, routed.fail_open);
        routed
    }

    /// Set a region's `endpoint_enabled` flag: persisted first, then published.
    pub fn set_enabled(&self, region: &str, enabled: bool) -> Result<(), ControlError> {
        let c = self.control();
        let snap = self.snapshot.load_full();
        if snap.config.region_id(region).is_none() {
            return Err(ControlError::UnknownRegion(region.to_string()));
        }
        if c.flags.is_enabled(region) == enabled {
            return Ok(());
        }
        drop(c);
        self.set_flag(region, FlagRecord::plain(enabled))
    }

    /// Set a region's flag with its provenance (reason, by, at, expiry) in the state file:
    /// persisted first, then published. With `[cluster]` the flag lives in etcd instead:
    /// callers go through [`Live::cluster`] ([`SharedWriter`]).
    pub fn set_flag(&self, region: &str, record: FlagRecord) -> Result<(), ControlError> {
        let mut c = self.control();
        let snap = self.snapshot.load_full();
        if snap.config.region_id(region).is_none() {
            return Err(ControlError::UnknownRegion(region.to_string()));
        }
        if c.flags.record(region) == Some(&record) {
            return Ok(());
        }
        c.flags.set_record(region, record.clone())?;
        push_event(
            &mut c,
            flag_kind(&record),
            Some(region),
            flag_detail(&record),
        );
        self.republish(&mut c, &snap);
        Ok(())
    }

    /// The region's effective flag now (a lapsed maintenance window counts as enabled).
    pub fn is_enabled(&self, region: &str) -> bool {
        crate::flags::enabled_at(self.flag(region).as_ref(), unix_ms())
    }

    /// The region's flag record: from etcd with `[cluster]`, else from the state file.
    pub fn flag(&self, region: &str) -> Option<FlagRecord> {
        let c = self.control();
        match &c.shared {
            Some(s) => s.flags.get(region).cloned(),
            None => c.flags.record(region).cloned(),
        }
    }

    /// A copy of the shared state (`None` without `[cluster]`).
    pub fn shared(&self) -> Option<SharedState> {
        self.control().shared.clone()
    }

    /// This instance's own probe verdicts, by region name.
    pub fn local_health(&self) -> BTreeMap<String, HealthInfo> {
        self.control().health.clone()
    }

    /// Apply what the cluster task read from etcd: recompute and publish, with events for
    /// flag changes, members and the connection.
    pub fn apply_shared(&self, update: SharedUpdate) {
        if let SharedUpdate::Events {
            replace,
            puts,
            deletes,
        } = update
        {
            let max = (self.snapshot.load().config.cluster.as_ref()).map_or(1000, |c| c.events_max);
            return apply_events(&mut self.control(), replace, puts, &deletes, max);
        }
        let mut c = self.control();
        let prefix = {
            let snap = self.snapshot.load();
            match &snap.config.cluster {
                Some(cl) => cl.prefix.clone(),
                None => return,
            }
        };
        let Some(shared) = c.shared.as_mut() else {
            return;
        };
        let mut events: Vec<(Share, &'static str, Option<String>, String)> = Vec::new();
        let changes = match update {
            SharedUpdate::Events { .. } => return,
            SharedUpdate::Resync { revision, kvs } => {
                let old_flags = shared.flags.clone();
                shared.reset();
                shared.revision = revision;
                for (k, v) in &kvs {
                    shared.apply(&prefix, k, Some(v));
                }
                if !shared.connected {
                    events.push((
                        Share::Mine,
                        "cluster-connected",
                        None,
                        format!("etcd reachable; shared state at revision {revision}"),
                    ));
                }
                shared.connected = true;
                shared.last_error = None;
                flag_diff(&old_flags, &shared.flags)
            }
            SharedUpdate::Changes { revision, changes } => {
                shared.revision = shared.revision.max(revision);
                let mut out = Vec::new();
                for (k, v) in &changes {
                    match shared.apply(&prefix, k, v.as_deref()) {
                        Change::Flag { region, record } => out.push((region, record)),
                        Change::MemberJoined(m) => events.push((
                            Share::First,
                            "member-joined",
                            None,
                            format!("instance {m} joined"),
                        )),
                        Change::MemberLeft(m) => events.push((
                            Share::First,
                            "member-left",
                            None,
                            format!("instance {m} left"),
                        )),
                        Change::Verdict | Change::Ignored => {}
                    }
                }
                out
            }
            SharedUpdate::Disconnected(why) => {
                if shared.connected {
                    events.push((
                        Share::Mine,
                        "cluster-disconnected",
                        None,
                        format!(
                            "etcd unreachable ({why}): serving the last shared state; operator changes are \
                             refused until it returns"
                        ),
                    ));
                }
                shared.connected = false;
                shared.last_error = Some(why);
                Vec::new()
            }
        };
        for (region, record) in changes {
            let rec = record.unwrap_or_else(|| FlagRecord::plain(true));
            events.push((
                Share::Local,
                flag_kind(&rec),
                Some(region),
                flag_detail(&rec),
            ));
        }
        for (share, kind, region, detail) in events {
            push_shared(&mut c, share, kind, region.as_deref(), detail);
        }
        mirror_shared_flags(&mut c);
        let snap = self.snapshot.load_full();
        self.republish(&mut c, &snap);
    }

    /// With `[cluster]`, at start when etcd did not answer in time: serve the copy of the
    /// shared flags this instance last wrote (its state file), and say so; without a copy,
    /// every region stays enabled. Returns the revision served, if any.
    pub fn serve_shared_copy(&self) -> Option<i64> {
        let mut c = self.control();
        let (revision, flags) = c.flags.shared_copy().map(|(r, f)| (r, f.clone()))?;
        let path = c.flags.path().display().to_string();
        let shared = c.shared.as_mut()?;
        if shared.connected || shared.revision != 0 {
            return None;
        }
        shared.flags = flags;
        shared.revision = revision;
        push_shared(
            &mut c,
            Share::Mine,
            "cluster-copy",
            None,
            format!(
                "etcd not reached at start: serving the shared flags as this instance last saw \
                 them (revision {revision}, kept in {path}) until it answers"
            ),
        );
        let snap = self.snapshot.load_full();
        self.republish(&mut c, &snap);
        Some(revision)
    }

    /// Publish again if time changed a region's state (a maintenance window ended); called
    /// every few hundred ms.
    pub fn tick(&self) {
        let mut c = self.control();
        let snap = self.snapshot.load_full();
        let states = compute_states(&snap.config, &c, unix_ms());
        if states != snap.states {
            for (r, (now, was)) in snap
                .config
                .regions
                .iter()
                .zip(states.iter().zip(&snap.states))
            {
                if now.enabled && !was.enabled {
                    push_shared(
                        &mut c,
                        Share::First,
                        "region-enabled",
                        Some(&r.name),
                        "the disable's maintenance window is over".to_string(),
                    );
                }
            }
            self.republish(&mut c, &snap);
        }
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
            self.local_health_changed.notify_one();
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
                crate::logs::apply_config(next.config.log.access, next.config.log.queries);
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

    /// Events after `after` (by sequence number), oldest first. With `[cluster]`: the shared
    /// list from etcd, then this instance's events not written there yet (etcd unreachable).
    pub fn events(&self, after: u64) -> Vec<Event> {
        let c = self.control();
        if c.shared.is_none() {
            return c.events.iter().filter(|e| e.seq > after).cloned().collect();
        }
        let last = c.shared_events.keys().next_back().copied().unwrap_or(0);
        let pending = c.outbox.iter().enumerate().map(|(i, e)| Event {
            seq: last + 1 + i as u64,
            ..e.clone()
        });
        c.shared_events
            .values()
            .map(|(_, e)| e.clone())
            .chain(pending)
            .filter(|e| e.seq > after)
            .collect()
    }

    /// `[cluster]`: the events this instance has still to write to etcd (oldest first).
    pub fn events_to_share(&self) -> Vec<Event> {
        self.control().outbox.clone()
    }

    /// `[cluster]`: these events (by their local `seq`) are in etcd now.
    pub fn events_shared(&self, written: &[u64]) {
        self.control().outbox.retain(|e| !written.contains(&e.seq));
    }

    /// `[cluster]`: a flag change made through this instance goes to the shared list.
    pub fn share_flag_event(&self, region: &str, record: &FlagRecord) {
        let mut c = self.control();
        let e = new_event(&mut c, flag_kind(record), Some(region), flag_detail(record));
        c.outbox.push(e);
    }

    /// Compute region states from flags and health and publish `base` with them; count the
    /// start of failing open.
    fn republish(&self, c: &mut Control, base: &Snapshot) {
        let states = compute_states(&base.config, c, unix_ms());
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
                push_shared(c, Share::First, kind, None, detail);
            }
        }
        if c.shared.is_some() {
            shared_health_events(c, before.as_ref(), &next);
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
                .enumerate()
                .map(|(i, (r, h))| RegionGauge {
                    name: &r.name,
                    enabled: snap.states.get(i).is_none_or(|s| s.enabled),
                    healthy: snap.states.get(i).is_none_or(|s| s.healthy),
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
            sticky: self.sticky.stats(),
            tables: std::iter::once(("sticky", self.sticky.backing()))
                .chain(snap.geo.as_ref().map(|g| ("geoip", g.backing())))
                .collect(),
        };
        let mut text = self.metrics.render(&g);
        if let Some(shared) = &c.shared {
            text.push_str(&crate::shared::render_metrics(shared));
        }
        if let Some(r) = self.replication.get() {
            r.render_metrics(&mut text);
        }
        text
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
        ("[cluster]", prev.cluster != next.cluster),
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

/// Region states at `now_ms` from flags and health: the state file's flags and this
/// instance's verdicts alone, or with `[cluster]` etcd's flags and the health quorum.
/// Keep the state file a copy of the shared flags (what [`Live::serve_shared_copy`] serves
/// after a restart without etcd). A write error is reported and retried at the next change.
fn mirror_shared_flags(c: &mut Control) {
    let Some(shared) = c.shared.as_ref().filter(|s| s.connected) else {
        return;
    };
    let (flags, revision) = (shared.flags.clone(), shared.revision);
    if let Err(e) = c.flags.mirror_shared(&flags, revision) {
        tracing::warn!(error = %e, "cannot keep the local copy of the shared flags");
    }
}

fn compute_states(config: &Config, c: &Control, now_ms: u64) -> Vec<RegionState> {
    config
        .regions
        .iter()
        .map(|r| {
            let mine = c.health.get(&r.name).map(|h| h.healthy);
            match &c.shared {
                Some(s) => RegionState {
                    enabled: crate::flags::enabled_at(s.flags.get(&r.name), now_ms),
                    healthy: s.region_healthy(&r.name, mine),
                },
                None => RegionState {
                    enabled: crate::flags::enabled_at(c.flags.record(&r.name), now_ms),
                    healthy: mine.unwrap_or(true),
                },
            }
        })
        .collect()
}

/// Regions whose flag record differs between `old` and `new`.
fn flag_diff(
    old: &BTreeMap<String, FlagRecord>,
    new: &BTreeMap<String, FlagRecord>,
) -> Vec<(String, Option<FlagRecord>)> {
    let mut out = Vec::new();
    for (r, rec) in new {
        if old.get(r) != Some(rec) {
            out.push((r.clone(), Some(rec.clone())));
        }
    }
    for r in old.keys() {
        if !new.contains_key(r) {
            out.push((r.clone(), None));
        }
    }
    out
}

fn flag_kind(rec: &FlagRecord) -> &'static str {
    if rec.endpoint_enabled {
        "region-enabled"
    } else {
        "region-disabled"
    }
}

/// "endpoint_enabled set to false by ana: maintenance (until 1700000000000)".
fn flag_detail(rec: &FlagRecord) -> String {
    let mut d = format!("endpoint_enabled set to {}", rec.endpoint_enabled);
    if let Some(by) = &rec.by {
        d.push_str(&format!(" by {by}"));
    }
    if let Some(reason) = &rec.reason {
        d.push_str(&format!(": {reason}"));
    }
    if let Some(u) = rec.until_ms {
        d.push_str(&format!(" (until unix ms {u})"));
    }
    d
}

fn push_event(c: &mut Control, kind: &'static str, region: Option<&str>, detail: String) {
    push_shared(c, Share::Mine, kind, region, detail)
}

/// An event for the local list, logged; with `[cluster]` also queued for etcd as `share` says.
fn push_shared(
    c: &mut Control,
    share: Share,
    kind: &'static str,
    region: Option<&str>,
    detail: String,
) {
    if matches!(
        kind,
        "region-down" | "reload-rejected" | "fail-open-start" | "cluster-disconnected"
    ) {
        tracing::warn!(event = kind, region = region.unwrap_or("-"), "{detail}");
    } else {
        tracing::info!(event = kind, region = region.unwrap_or("-"), "{detail}");
    }
    let e = new_event(c, kind, region, detail);
    let writes = c.shared.as_ref().is_some_and(|s| match share {
        Share::Mine => true,
        Share::Local => false,
        Share::First => s.members.keys().next().is_none_or(|m| *m == s.instance),
    });
    if writes {
        c.outbox.push(e.clone());
        // etcd unreachable for long: keep the newest, as the list itself does.
        if c.outbox.len() > MAX_EVENTS {
            c.outbox.remove(0);
        }
    }
    c.events.push_back(e);
    while c.events.len() > MAX_EVENTS {
        c.events.pop_front();
    }
}

fn new_event(c: &mut Control, kind: &'static str, region: Option<&str>, detail: String) -> Event {
    let seq = c.next_seq;
    c.next_seq += 1;
    Event {
        seq,
        at_ms: unix_ms(),
        kind: kind.to_string(),
        region: region.map(String::from),
        detail,
        instance: c.shared.as_ref().map(|s| s.instance.clone()),
    }
}

/// `[cluster]`: the shared verdict of a region changed (the quorum of instances' probes).
fn shared_health_events(c: &mut Control, before: &Snapshot, next: &Snapshot) {
    let was: BTreeMap<&str, bool> = before
        .config
        .regions
        .iter()
        .zip(&before.states)
        .map(|(r, s)| (r.name.as_str(), s.healthy))
        .collect();
    for (r, s) in next.config.regions.iter().zip(&next.states) {
        match was.get(r.name.as_str()) {
            Some(&h) if h != s.healthy => {
                let (kind, detail) = if s.healthy {
                    ("shared-region-up", "the instances' probes agree it is up")
                } else {
                    (
                        "shared-region-down",
                        "the instances' probes agree it is down",
                    )
                };
                push_shared(c, Share::First, kind, Some(&r.name), detail.to_string());
            }
            _ => {}
        }
    }
}

/// `[cluster]`: apply puts and deletes of the shared events list, keeping the newest `max`.
fn apply_events(
    c: &mut Control,
    replace: bool,
    puts: Vec<(String, i64, Vec<u8>)>,
    deletes: &[String],
    max: usize,
) {
    if replace {
        c.shared_events.clear();
    }
    if !deletes.is_empty() {
        c.shared_events.retain(|_, (k, _)| !deletes.contains(k));
    }
    for (key, rev, value) in puts {
        if let Ok(mut e) = serde_json::from_slice::<Event>(&value) {
            e.seq = rev.max(0) as u64;
            c.shared_events.insert(e.seq, (key, e));
        }
    }
    while c.shared_events.len() > max {
        c.shared_events.pop_first();
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
