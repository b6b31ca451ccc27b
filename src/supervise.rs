//! No worker dies silently. The process panic hook logs every panic through `tracing`;
//! [`supervise_thread`] and [`supervise_task`] run a long-lived worker (a DNS UDP thread, a
//! DNS TCP accept loop, a health probe loop, the admin listener) and, when it panics, count the
//! panic by kind of worker (`berth_worker_panics_total{worker=...}`), log it with the worker's
//! name and run the worker again on the same socket. [`Workers`] is that state: start-up
//! (listeners bound, first probe round) and which workers readiness depends on and whether
//! they run (`GET /readyz`), and the panic counts
//! (`GET /api/v1/regions`, the dashboard's warning).
//!
//! Not here: what a worker does, or why it panicked. A replaced worker starts from its socket
//! and the shared state in [`crate::live::Live`]; that state is kept valid across a panic by its
//! own locks (a poisoned lock is taken over, the data being plain counters and tables).

use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::json;

/// Kinds of supervised workers: the `worker` label of the panic metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A DNS UDP socket's thread.
    DnsUdp,
    /// A DNS TCP listener's accept loop, or one of its connections.
    DnsTcp,
    /// A region's probe loop, or the loop that brings health reports into the snapshot.
    Health,
    /// The admin API's listener.
    Admin,
    /// Replication's event, dispatch and reconcile loops, or one replication job.
    Replication,
}

const KINDS: [Kind; 5] = [
    Kind::DnsUdp,
    Kind::DnsTcp,
    Kind::Health,
    Kind::Admin,
    Kind::Replication,
];

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::DnsUdp => "dns-udp",
            Kind::DnsTcp => "dns-tcp",
            Kind::Health => "health",
            Kind::Admin => "admin",
            Kind::Replication => "replication",
        }
    }
}

/// Panics the process hook saw, in any thread or task (supervised or not, e.g. an admin or
/// proxy request). Process-wide because the hook is.
static PANICS_SEEN: AtomicU64 = AtomicU64::new(0);

/// Log every panic through `tracing` (with the thread's name, where, and a backtrace when
/// `RUST_BACKTRACE` asks for one) instead of the default hook's bare stderr line, so panics
/// land where the rest of the log goes. Called once by `berth serve`.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        PANICS_SEEN.fetch_add(1, Ordering::Relaxed);
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        let location = info.location().map(|l| l.to_string()).unwrap_or_default();
        let message = crate::panic_message(info.payload());
        let backtrace = std::backtrace::Backtrace::capture();
        if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
            tracing::error!(thread = name, %location, %backtrace, "panic: {message}");
        } else {
            tracing::error!(thread = name, %location, "panic: {message}");
        }
    }));
}

/// One supervised worker.
pub struct Unit {
    /// What the log and `/readyz` call it, e.g. `dns-udp-0 on 0.0.0.0:53`.
    pub name: String,
    kind: Kind,
    /// Between start (or restart) and its end; false while it is being replaced.
    running: AtomicBool,
    /// Set by [`Workers::inject_panic`]: the worker panics at its next look.
    inject: AtomicBool,
}

impl Unit {
    /// A worker readiness does not depend on (health probes, the admin listener).
    pub fn unlisted(kind: Kind, name: impl Into<String>) -> Arc<Unit> {
        Arc::new(Unit {
            name: name.into(),
            kind,
            running: AtomicBool::new(false),
            inject: AtomicBool::new(false),
        })
    }

    /// Panic if a test asked this worker to ([`Workers::inject_panic`]). Workers call this
    /// where a panic of their own would hit: once per wake-up, not per query.
    pub fn injected_panic_point(&self) {
        if self.inject.load(Ordering::Relaxed) && self.inject.swap(false, Ordering::Relaxed) {
            panic!("panic injected into {} by Workers::inject_panic", self.name);
        }
    }
}

/// The supervised workers of one running Berth, and their panics.
#[derive(Default)]
pub struct Workers {
    /// By [`Kind`], in `KINDS` order.
    panics: [AtomicU64; 5],
    /// What the last panic said, and in which worker; shown by the API and the dashboard.
    last_panic: Mutex<Option<String>>,
    /// The workers readiness depends on: every DNS UDP thread and TCP accept loop.
    units: Mutex<Vec<Arc<Unit>>>,
    /// Set when the process starts shutting down: not ready any more, whatever runs.
    stopping: AtomicBool,
    /// What start-up still waits for (`/readyz` says it); nothing once it is over.
    startup: Mutex<Startup>,
}

/// Start-up as readiness sees it. The default is "over": a `Workers` that no start-up
/// drives (a test's) is ready as soon as its workers run.
#[derive(Default)]
struct Startup {
    /// Between loading the config and binding the last listener.
    binding: bool,
    /// Regions with an upstream not probed once yet (each probe ended, up or down).
    unprobed: Vec<String>,
    /// The first probe round ended: later regions (a reload's) do not make the process unready.
    probed: bool,
    /// `[cluster]`: the shared state was not read from etcd once yet.
    cluster_unsynced: bool,
}

impl Workers {
    /// A worker readiness depends on; it counts as running once its supervisor starts it.
    pub fn register(&self, kind: Kind, name: impl Into<String>) -> Arc<Unit> {
        let unit = Unit::unlisted(kind, name);
        self.units
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(unit.clone());
        unit
    }

    /// Count and log a panic of the worker `who` (of kind `kind`).
    pub fn panicked(&self, kind: Kind, who: &str, payload: &(dyn Any + Send)) {
        let i = KINDS.iter().position(|k| *k == kind).unwrap_or(0);
        self.panics[i].fetch_add(1, Ordering::Relaxed);
        let text = crate::panic_message(payload);
        tracing::error!(worker = who, panic = %text, "worker panicked; replacing it");
        *self.last_panic.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{who}: {text}"));
    }

    /// Panics of supervised workers since start, all kinds.
    pub fn panics(&self) -> u64 {
        self.panics.iter().map(|p| p.load(Ordering::Relaxed)).sum()
    }

    /// Mark the process as shutting down: `/readyz` says so from now on.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Start-up began (`true`: config loaded, listeners being bound) or every listener is
    /// bound (`false`).
    pub fn binding(&self, on: bool) {
        self.startup
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .binding = on;
    }

    /// The regions the first probe round still waits for; an empty list ends that round for
    /// good (see [`Startup::probed`]).
    pub fn unprobed(&self, regions: Vec<String>) {
        let mut s = self.startup.lock().unwrap_or_else(|p| p.into_inner());
        if s.probed {
            return;
        }
        s.probed = regions.is_empty();
        s.unprobed = regions;
    }

    /// `[cluster]`: whether the first full read of the shared state from etcd is done; until
    /// it is, the instance would answer without the cluster's flags, so it is not ready.
    pub fn cluster_synced(&self, done: bool) {
        self.startup
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .cluster_unsynced = !done;
    }

    /// Whether the first probe round is still going on (so reports are worth looking at).
    pub fn probing_first_round(&self) -> bool {
        !self
            .startup
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .probed
    }

    /// Ready: start-up is over (config loaded, listeners bound, every region probed once),
    /// every registered worker runs and the process is not stopping. Otherwise why not.
    pub fn readiness(&self) -> Result<(), String> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err("shutting down".to_string());
        }
        {
            let s = self.startup.lock().unwrap_or_else(|p| p.into_inner());
            if s.binding {
                return Err("starting: listeners not bound yet".to_string());
            }
            if s.cluster_unsynced {
                return Err("cluster: etcd not reached yet".to_string());
            }
            if !s.probed && !s.unprobed.is_empty() {
                return Err(format!(
                    "first probe round not done: {}",
                    s.unprobed.join(", ")
                ));
            }
        }
        let units = self.units.lock().unwrap_or_else(|p| p.into_inner());
        let down: Vec<&str> = units
            .iter()
            .filter(|u| !u.running.load(Ordering::Relaxed))
            .map(|u| u.name.as_str())
            .collect();
        if down.is_empty() {
            Ok(())
        } else {
            Err(format!("not running: {}", down.join(", ")))
        }
    }

    /// For the API: readiness, panics by kind and in all, the last panic.
    pub fn view(&self) -> serde_json::Value {
        let by_kind: serde_json::Map<String, serde_json::Value> = KINDS
            .iter()
            .zip(&self.panics)
            .map(|(k, n)| (k.label().to_string(), json!(n.load(Ordering::Relaxed))))
            .collect();
        let readiness = self.readiness();
        json!({
            "ready": readiness.is_ok(),
            "not_ready": readiness.err(),
            "panics": self.panics(),
            "panics_by_worker": by_kind,
            "panics_anywhere": PANICS_SEEN.load(Ordering::Relaxed),
            "last_panic": self.last_panic.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        })
    }

    /// Prometheus lines for `/metrics`.
    pub fn render(&self, o: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(o, "# HELP berth_worker_panics_total Panics of supervised workers (each was logged and the worker replaced).");
        let _ = writeln!(o, "# TYPE berth_worker_panics_total counter");
        for (k, n) in KINDS.iter().zip(&self.panics) {
            let _ = writeln!(
                o,
                "berth_worker_panics_total{{worker=\"{}\"}} {}",
                k.label(),
                n.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            o,
            "# HELP berth_panics_total Panics in any thread or task of the process, as logged."
        );
        let _ = writeln!(o, "# TYPE berth_panics_total counter");
        let _ = writeln!(
            o,
            "berth_panics_total {}",
            PANICS_SEEN.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP berth_ready 1 once started (listeners bound, regions probed once) while every DNS worker runs (what GET /readyz says)."
        );
        let _ = writeln!(o, "# TYPE berth_ready gauge");
        let _ = writeln!(o, "berth_ready {}", u8::from(self.readiness().is_ok()));
    }

    /// Make the registered worker named `name` panic the next time it looks (a UDP thread
    /// within its receive timeout, a TCP accept loop at its next connection). For tests of
    /// the supervision; false if no worker has that name.
    #[doc(hidden)]
    pub fn inject_panic(&self, name: &str) -> bool {
        let units = self.units.lock().unwrap_or_else(|p| p.into_inner());
        match units.iter().find(|u| u.name == name) {
            Some(u) => {
                u.inject.store(true, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// The registered workers' names, in start order.
    pub fn names(&self) -> Vec<String> {
        let units = self.units.lock().unwrap_or_else(|p| p.into_inner());
        units.iter().map(|u| u.name.clone()).collect()
    }
}

/// Run `body` on this thread until it returns; each time it panics, count and log the panic
/// and run it again (its socket and state outlive it: `body` borrows them).
pub fn supervise_thread(workers: &Workers, unit: &Unit, mut body: impl FnMut()) {
    loop {
        unit.running.store(true, Ordering::Relaxed);
        let result = catch_unwind(AssertUnwindSafe(&mut body));
        unit.running.store(false, Ordering::Relaxed);
        match result {
            Ok(()) => return,
            Err(payload) => workers.panicked(unit.kind, &unit.name, &*payload),
        }
    }
}

/// Run the task `make` builds until it returns; each time it panics, count and log the panic
/// and run a fresh one. Aborting the supervising task aborts the worker too.
pub async fn supervise_task<F, Fut>(workers: Arc<Workers>, unit: Arc<Unit>, mut make: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        unit.running.store(true, Ordering::Relaxed);
        // A set, not a bare spawn: dropping it (this task aborted) aborts the worker.
        let mut set = tokio::task::JoinSet::new();
        set.spawn(make());
        let result = set.join_next().await;
        unit.running.store(false, Ordering::Relaxed);
        match result {
            Some(Err(e)) if e.is_panic() => {
                workers.panicked(unit.kind, &unit.name, &*e.into_panic())
            }
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_then_first_probe_round_then_ready_for_good() {
        let w = Workers::default();
        assert_eq!(w.readiness(), Ok(()));
        w.binding(true);
        w.unprobed(vec!["westus".into(), "eastus".into()]);
        assert_eq!(
            w.readiness(),
            Err("starting: listeners not bound yet".into())
        );
        w.binding(false);
        assert_eq!(
            w.readiness(),
            Err("first probe round not done: westus, eastus".into())
        );
        w.unprobed(vec!["eastus".into()]);
        assert!(w.probing_first_round());
        w.unprobed(vec![]);
        assert_eq!(w.readiness(), Ok(()));
        // A reload's new, unprobed region does not take readiness away.
        w.unprobed(vec!["newregion".into()]);
        assert!(!w.probing_first_round());
        assert_eq!(w.readiness(), Ok(()));
        w.stopping();
        assert_eq!(w.readiness(), Err("shutting down".into()));
    }
}
