//! The probing loop: one tokio task per region probes on its interval, feeds the state
//! machine, and publishes a [`HealthReport`] the moment any region's health changes.
//!
//! Owns: scheduling (first probe at start, then every `interval`), the shared table the admin
//! API reads at any time ([`MonitorHandle::report`]), and carrying state across a config
//! reload ([`MonitorHandle::restart`]). Does not own: thresholds ([`super::state`]), the
//! network ([`mod@super::probe`]), or what a report becomes: the `publish` callback (the app)
//! builds and swaps the snapshot.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::probe::{NetworkProber, Prober};
use super::state::{Health, HealthState};
use crate::config::Region;
use crate::supervise::{supervise_task, Kind, Unit, Workers};

/// Every region's health at one moment, in the order of the regions the monitor was started
/// with (for Berth: `Config::regions`, so index = `RegionId`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HealthReport {
    pub regions: Vec<RegionHealth>,
}

impl HealthReport {
    pub fn region(&self, name: &str) -> Option<&RegionHealth> {
        self.regions.iter().find(|r| r.name == name)
    }

    /// Whether routing may use the region `name`. A name the report does not know (e.g. a
    /// region added by a reload the monitor has not caught up with) has not been probed, so
    /// it counts as healthy like any region not probed yet.
    pub fn is_healthy(&self, name: &str) -> bool {
        self.region(name).is_none_or(|r| r.healthy)
    }
}

/// One region's line in a [`HealthReport`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RegionHealth {
    pub name: String,
    pub health: Health,
    /// What routing uses: `health` is not `Down`.
    pub healthy: bool,
    /// See [`HealthState::last_error`].
    pub last_error: Option<String>,
    /// Smoothed latency of successful probes; None before the first success.
    pub latency_ms: Option<f64>,
    pub probes: u64,
    pub failures: u64,
    /// Changes of health so far; a metric of flapping and failovers.
    pub transitions: u64,
    /// `probes` at the last change of health (0: never changed). The monitor keeps no wall
    /// clock; `(probes - since_probe) * interval` says how long the health has held.
    pub since_probe: u64,
}

impl RegionHealth {
    fn new(name: &str, s: &HealthState) -> RegionHealth {
        RegionHealth {
            name: name.to_string(),
            health: s.health(),
            healthy: s.is_healthy(),
            last_error: s.last_error().map(str::to_string),
            latency_ms: s.latency_ms(),
            probes: s.probes(),
            failures: s.failures(),
            transitions: s.transitions(),
            since_probe: s.since_probe(),
        }
    }
}

/// Starts monitors. The running monitor is a [`MonitorHandle`].
pub struct Monitor;

type Publish = dyn Fn(HealthReport) + Send + Sync;

impl Monitor {
    /// Probe `regions` over the network; call `publish` with the whole report on every change
    /// of health. Must be called inside a tokio runtime. Regions without an `upstream` are not
    /// probed and stay `Unknown` (healthy).
    ///
    /// `publish` runs on a runtime worker, one call at a time, and should return quickly
    /// (build and swap a snapshot); it must not stop or restart this monitor itself.
    pub fn start(
        regions: Vec<Region>,
        publish: impl Fn(HealthReport) + Send + Sync + 'static,
    ) -> MonitorHandle {
        Monitor::start_with(regions, NetworkProber, publish)
    }

    /// [`Monitor::start`], counting the panics of probe loops in `workers` (each loop is run
    /// again after a panic, supervised or not; this is where the count goes).
    pub fn start_supervised(
        regions: Vec<Region>,
        workers: Arc<Workers>,
        publish: impl Fn(HealthReport) + Send + Sync + 'static,
    ) -> MonitorHandle {
        Monitor::spawn_new(regions, Arc::new(NetworkProber), Arc::new(publish), workers)
    }

    /// [`Monitor::start`] with another prober (tests script outcomes with one).
    pub fn start_with(
        regions: Vec<Region>,
        prober: impl Prober,
        publish: impl Fn(HealthReport) + Send + Sync + 'static,
    ) -> MonitorHandle {
        Monitor::spawn_new(regions, Arc::new(prober), Arc::new(publish), Arc::default())
    }

    /// Every region starts `Unknown`.
    fn spawn_new(
        regions: Vec<Region>,
        prober: Arc<dyn Prober>,
        publish: Arc<Publish>,
        workers: Arc<Workers>,
    ) -> MonitorHandle {
        let states = regions
            .iter()
            .map(|r| HealthState::new(r.probe.fall, r.probe.rise))
            .collect();
        spawn(regions, states, prober, publish, workers)
    }
}

/// A running monitor. Dropping it stops the probes, like [`MonitorHandle::stop`].
pub struct MonitorHandle {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    /// Kept for [`MonitorHandle::restart`], which goes on with the same prober and callback.
    prober: Arc<dyn Prober>,
    publish: Arc<Publish>,
    /// Where the probe loops' panics are counted; kept for [`MonitorHandle::restart`] too.
    workers: Arc<Workers>,
}

/// What the region tasks and the handle share.
struct Shared {
    regions: Vec<Region>,
    /// Indexed like `regions`. A std mutex: held only to update or copy plain data, never
    /// across an await.
    states: Mutex<Vec<HealthState>>,
    /// Serializes publishing and tells the tasks the monitor was stopped. A report is read
    /// after taking it, so the last call to `publish` always carries every change before it,
    /// and nothing is published once `stop` has returned.
    publishing: Mutex<Publishing>,
    publish: Arc<Publish>,
}

struct Publishing {
    stopped: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data is plain counters and strings, valid after any panic; keep serving it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn report(&self) -> HealthReport {
        let states = lock(&self.states);
        HealthReport {
            regions: self
                .regions
                .iter()
                .zip(states.iter())
                .map(|(r, s)| RegionHealth::new(&r.name, s))
                .collect(),
        }
    }

    fn publish_current(&self) {
        let gate = lock(&self.publishing);
        if gate.stopped {
            return;
        }
        (self.publish)(self.report());
    }
}

fn spawn(
    regions: Vec<Region>,
    states: Vec<HealthState>,
    prober: Arc<dyn Prober>,
    publish: Arc<Publish>,
    workers: Arc<Workers>,
) -> MonitorHandle {
    let shared = Arc::new(Shared {
        regions,
        states: Mutex::new(states),
        publishing: Mutex::new(Publishing { stopped: false }),
        publish: publish.clone(),
    });
    let tasks = (0..shared.regions.len())
        .filter(|&i| shared.regions[i].upstream.is_some())
        .map(|i| {
            // A panicking probe loop would leave the region's health frozen: run it again.
            let unit = Unit::unlisted(
                Kind::Health,
                format!("health probe of {}", shared.regions[i].name),
            );
            let (shared, prober) = (shared.clone(), prober.clone());
            tokio::spawn(supervise_task(workers.clone(), unit, move || {
                run(shared.clone(), prober.clone(), i)
            }))
        })
        .collect();
    MonitorHandle {
        shared,
        tasks,
        prober,
        publish,
        workers,
    }
}

/// Probe region `i` forever.
async fn run(shared: Arc<Shared>, prober: Arc<dyn Prober>, i: usize) {
    let region = &shared.regions[i];
    let mut ticks = tokio::time::interval(region.probe.interval);
    // A probe that overran its slot is followed by a full interval, not a burst of catch-up
    // probes that would count one outage several times.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let outcome = prober.probe(region).await;
        let transition = lock(&shared.states)[i].observe(&outcome);
        let Some(t) = transition else { continue };
        let error = outcome.error.as_deref().unwrap_or("");
        if t.to == Health::Down {
            tracing::warn!(region = %region.name, from = %t.from, to = %t.to, error, "region health changed");
        } else {
            tracing::info!(region = %region.name, from = %t.from, to = %t.to, "region health changed");
        }
        shared.publish_current();
    }
}

impl MonitorHandle {
    /// Every region's health now.
    pub fn report(&self) -> HealthReport {
        self.shared.report()
    }

    /// Stop probing. No `publish` call starts after this returns.
    pub fn stop(self) {
        // Drop does the work.
    }

    /// Stop this monitor and start one for `regions` (a reloaded config) with the same prober
    /// and callback. A region keeps its state (health, counters, latency, last error) when its
    /// name, upstream and probe config are unchanged; any other region starts `Unknown`. The
    /// new monitor probes every region at once and publishes nothing until a health changes:
    /// the caller builds the new snapshot from [`MonitorHandle::report`].
    pub fn restart(mut self, regions: Vec<Region>) -> MonitorHandle {
        self.halt();
        let old = lock(&self.shared.states).clone();
        let states = regions
            .iter()
            .map(|r| {
                self.shared
                    .regions
                    .iter()
                    .position(|o| {
                        o.name == r.name && o.upstream == r.upstream && o.probe == r.probe
                    })
                    .map(|j| old[j].clone())
                    .unwrap_or_else(|| HealthState::new(r.probe.fall, r.probe.rise))
            })
            .collect();
        spawn(
            regions,
            states,
            self.prober.clone(),
            self.publish.clone(),
            self.workers.clone(),
        )
    }

    fn halt(&mut self) {
        lock(&self.shared.publishing).stopped = true;
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for MonitorHandle {
    fn drop(&mut self) {
        self.halt();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProbeConfig;
    use crate::health::ProbeOutcome;
    use std::collections::HashMap;
    use std::future::Future;
    use std::pin::Pin;
    use std::time::Duration;
    use tokio::sync::mpsc;
    use tokio::time::{sleep, Instant};

    const INTERVAL: Duration = Duration::from_secs(5);

    fn region(name: &str) -> Region {
        Region {
            name: name.to_string(),
            latitude: 0.0,
            longitude: 0.0,
            a: vec![],
            aaaa: vec![],
            cname: None,
            upstream: Some(format!("http://{name}.test:5000")),
            probe: ProbeConfig {
                interval: INTERVAL,
                fall: 3,
                rise: 2,
                ..ProbeConfig::default()
            },
        }
    }

    /// Answers every probe of a region with its current scripted verdict (default: ok), and
    /// counts the probes.
    #[derive(Clone, Default)]
    struct Script {
        up: Arc<Mutex<HashMap<String, bool>>>,
        calls: Arc<Mutex<HashMap<String, u64>>>,
    }

    impl Script {
        fn set(&self, name: &str, up: bool) {
            self.up.lock().unwrap().insert(name.to_string(), up);
        }
        fn calls(&self, name: &str) -> u64 {
            self.calls.lock().unwrap().get(name).copied().unwrap_or(0)
        }
    }

    impl Prober for Script {
        fn probe<'a>(
            &'a self,
            region: &'a Region,
        ) -> Pin<Box<dyn Future<Output = ProbeOutcome> + Send + 'a>> {
            *self
                .calls
                .lock()
                .unwrap()
                .entry(region.name.clone())
                .or_default() += 1;
            let up = self
                .up
                .lock()
                .unwrap()
                .get(&region.name)
                .copied()
                .unwrap_or(true);
            Box::pin(async move {
                if up {
                    ProbeOutcome::success(Duration::from_millis(12), Some(200))
                } else {
                    ProbeOutcome::failure(
                        Duration::from_millis(1),
                        format!("connect to {}: refused", region.name),
                        None,
                    )
                }
            })
        }
    }

    /// A monitor over `regions` whose publishes arrive on the returned channel.
    fn start(
        regions: Vec<Region>,
        script: &Script,
    ) -> (MonitorHandle, mpsc::UnboundedReceiver<HealthReport>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = Monitor::start_with(regions, script.clone(), move |r| {
            let _ = tx.send(r);
        });
        (handle, rx)
    }

    fn health(r: &HealthReport) -> Vec<(&str, Health)> {
        r.regions
            .iter()
            .map(|r| (r.name.as_str(), r.health))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn first_probe_at_start_then_every_interval() {
        let script = Script::default();
        let t0 = Instant::now();
        let (handle, mut rx) = start(vec![region("westus"), region("eastus")], &script);

        // Unknown -> Up on the first probe, at once, one publish per region.
        for _ in 0..2 {
            rx.recv().await.unwrap();
            assert_eq!(t0.elapsed(), Duration::ZERO);
        }
        assert_eq!(
            health(&handle.report()),
            [("westus", Health::Up), ("eastus", Health::Up)]
        );

        sleep(INTERVAL * 4 + Duration::from_millis(1)).await;
        assert_eq!(script.calls("westus"), 5);
        assert_eq!(script.calls("eastus"), 5);
        let r = handle.report();
        assert_eq!((r.regions[0].probes, r.regions[0].failures), (5, 0));
        assert_eq!(r.regions[0].latency_ms, Some(12.0));
        // Steady health publishes nothing.
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn down_after_fall_intervals_up_after_rise_intervals() {
        let script = Script::default();
        let (handle, mut rx) = start(vec![region("westus"), region("eastus")], &script);
        rx.recv().await.unwrap();
        rx.recv().await.unwrap();

        // Just after the first probe, westus dies.
        sleep(Duration::from_millis(1)).await;
        script.set("westus", false);
        let died = Instant::now();

        let report = rx.recv().await.unwrap();
        // Probes at 1, 2, 3 intervals after the first fail: down at exactly fall x interval.
        assert_eq!(died.elapsed(), INTERVAL * 3 - Duration::from_millis(1));
        assert_eq!(
            health(&report),
            [("westus", Health::Down), ("eastus", Health::Up)]
        );
        assert!(!report.is_healthy("westus"));
        let w = &report.regions[0];
        assert_eq!(w.last_error.as_deref(), Some("connect to westus: refused"));
        assert_eq!(
            (w.probes, w.failures, w.since_probe, w.transitions),
            (4, 3, 4, 2)
        );

        // Back: up after `rise` successes, published once.
        script.set("westus", true);
        let back = Instant::now();
        let report = rx.recv().await.unwrap();
        assert_eq!(back.elapsed(), INTERVAL * 2);
        assert_eq!(
            health(&report),
            [("westus", Health::Up), ("eastus", Health::Up)]
        );
        assert_eq!(report.regions[0].last_error, None);

        sleep(INTERVAL * 10).await;
        assert!(rx.try_recv().is_err(), "one publish per transition");
        drop(handle);
    }

    #[tokio::test(start_paused = true)]
    async fn never_up_goes_down_after_fall() {
        let script = Script::default();
        script.set("westus", false);
        let t0 = Instant::now();
        let (handle, mut rx) = start(vec![region("westus")], &script);
        // Healthy while unknown.
        sleep(Duration::from_millis(1)).await;
        assert!(handle.report().is_healthy("westus"));
        assert_eq!(handle.report().regions[0].health, Health::Unknown);
        let report = rx.recv().await.unwrap();
        assert_eq!(t0.elapsed(), INTERVAL * 2);
        assert_eq!(health(&report), [("westus", Health::Down)]);
    }

    #[tokio::test(start_paused = true)]
    async fn no_upstream_is_not_probed() {
        let script = Script::default();
        let mut r = region("westus");
        r.upstream = None;
        let (handle, mut rx) = start(vec![r], &script);
        sleep(INTERVAL * 3).await;
        assert_eq!(script.calls("westus"), 0);
        assert_eq!(health(&handle.report()), [("westus", Health::Unknown)]);
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn stop_ends_probes_and_publishes() {
        let script = Script::default();
        let (handle, mut rx) = start(vec![region("westus")], &script);
        rx.recv().await.unwrap();
        script.set("westus", false);
        handle.stop();
        sleep(INTERVAL * 10).await;
        assert_eq!(script.calls("westus"), 1);
        // The sender went away with the stopped monitor.
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn restart_carries_unchanged_regions_over() {
        let script = Script::default();
        script.set("westus", false);
        script.set("eastus", false);
        let (handle, mut rx) = start(vec![region("westus"), region("eastus")], &script);
        rx.recv().await.unwrap();
        rx.recv().await.unwrap();
        let before = handle.report();
        assert_eq!(
            health(&before),
            [("westus", Health::Down), ("eastus", Health::Down)]
        );

        // Reload: westus unchanged, eastus gets a new probe config, westeurope is new.
        let mut eastus = region("eastus");
        eastus.probe.fall = 5;
        let handle = handle.restart(vec![eastus, region("westus"), region("westeurope")]);
        let r = handle.report();
        assert_eq!(
            health(&r),
            [
                ("eastus", Health::Unknown),
                ("westus", Health::Down),
                ("westeurope", Health::Unknown)
            ]
        );
        assert_eq!(r.regions[1], before.regions[0]);

        // The new monitor probes at once; westeurope's Unknown -> Up is published through the
        // same callback. westus needs `rise` successes, not just one.
        script.set("westus", true);
        let report = rx.recv().await.unwrap();
        assert_eq!(report.region("westeurope").unwrap().health, Health::Up);
        assert_eq!(report.region("westus").unwrap().health, Health::Down);
        assert_eq!(report.region("eastus").unwrap().health, Health::Unknown);
        let report = rx.recv().await.unwrap();
        assert_eq!(report.region("westus").unwrap().health, Health::Up);
        // Three probes before the reload, two after.
        assert_eq!(report.region("westus").unwrap().probes, 5);
    }

    #[test]
    fn unknown_names_count_as_healthy() {
        let report = HealthReport { regions: vec![] };
        assert!(report.is_healthy("westus"));
    }
}
