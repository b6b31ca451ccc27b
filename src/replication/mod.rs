//! Replication: every region gets every push. Berth copies what is pushed to one region's
//! registry into the others the `[replication]` rules name, so plain registry replicas
//! behind Berth behave like one geo-replicated registry.
//!
//! Three roads lead into one queue ([`queue`]): the proxy's event when a manifest PUT
//! succeeded through it ([`Replication::pushed`], the one hook in `proxy::manifest`; nothing
//! else of replication runs in the request path), registry notifications on the admin API
//! (pushes that bypassed Berth), and the periodic reconcile ([`reconcile`]) that compares
//! every region's tags. The driver ([`driver`]) runs due jobs through the copy engine
//! ([`copy`]) with the regions' registry clients ([`registry`]), retries with backoff
//! ([`backoff`]), and records presence and lag in the status table ([`status`]), which the
//! admin API, the CLI, the metrics and the proxy's chooser read.
//!
//! Pure parts: [`rules`] (globs), [`status`], [`backoff`], [`bandwidth`]'s bucket, the queue's bookkeeping and
//! [`reconcile::plan`]. IO: [`registry`], [`copy`], [`driver`], the queue file.
//!
//! Owns: the queue and its file, the status table, the registry clients. Does not own: which
//! regions exist (the config in the live snapshot) or how clients are routed.

pub mod backoff;
pub mod bandwidth;
pub mod copy;
pub mod deletes;
mod driver;
pub mod metrics;
pub mod queue;
pub mod reconcile;
pub mod registry;
pub mod rules;
pub mod status;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::config::{Region, ReplicationConfig};
use crate::snapshot::Snapshot;
use copy::Engine;
use metrics::ReplicationMetrics;
use queue::{Job, Queue};
use registry::Registry;
use status::StatusTable;

/// Where the replicator reads the current config: the live snapshot, or None once Berth is
/// stopping. A function, so this module does not depend on `live` (which holds it).
pub type SnapshotSource = Arc<dyn Fn() -> Option<Arc<Snapshot>> + Send + Sync>;

/// The cluster's shared state (members), or None in single-instance mode: which jobs this
/// instance runs ([`queue::should_run`]).
pub type ClusterSource = Arc<dyn Fn() -> Option<crate::shared::SharedState> + Send + Sync>;

/// A manifest stored in a region: what the proxy's hook and registry notifications report.
#[derive(Debug, Clone, PartialEq)]
pub struct Pushed {
    pub repo: String,
    /// The tag or digest it was pushed under.
    pub reference: String,
    /// The manifest's digest, when the registry said (else it is asked).
    pub digest: Option<String>,
    pub region: String,
    /// When the push completed (Unix ms).
    pub at_ms: u64,
}

/// What the event loop is told: a manifest stored, or deleted, in a region.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Pushed(Pushed),
    /// `reference` was deleted in `region` (a successful manifest DELETE); propagated to the
    /// regions of the rules with `delete = true`.
    Deleted(Pushed),
}

/// Events waiting for the driver; past this they are dropped and counted (reconcile catches
/// up), so a flood of pushes cannot grow memory without bound.
const EVENT_BACKLOG: usize = 10_000;

/// The replicator's shared state; one per `berth serve`.
pub struct Replication {
    queue: Mutex<Queue>,
    status: Mutex<StatusTable>,
    events: tokio::sync::mpsc::Sender<Event>,
    /// Wakes the driver: a job was added, or one finished.
    wake: tokio::sync::Notify,
    /// Asks the reconcile loop for a pass now (`POST /api/v1/replication/sync`).
    sync_now: tokio::sync::Notify,
    engine: Arc<Engine>,
    pub metrics: ReplicationMetrics,
    /// Registry clients by region name, with the upstream and CA file they were built for.
    registries: Mutex<HashMap<String, (String, Arc<Registry>)>>,
    http: registry::Http,
    /// (region, username, password) read at start; never logged.
    credentials: Vec<(String, String, String)>,
    /// Where the replicator's panics are counted (its loops and jobs are supervised).
    workers: Arc<crate::supervise::Workers>,
    /// The cluster view, asked at each dispatch and reconcile.
    cluster: ClusterSource,
    /// Set by [`Replication::inject_job_panic`]: the next job panics (tests of supervision).
    panic_next_job: std::sync::atomic::AtomicBool,
    /// Set by [`Replication::inject_deletes_panic`]: the next write of the deletes panics.
    panic_next_deletes_write: std::sync::atomic::AtomicBool,
    /// Held while the remembered deletes are written, so a later list is never overwritten
    /// by an earlier one.
    deletes_write: Mutex<()>,
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Replication {
    /// Load the queue and start the driver, event and reconcile tasks on the current runtime.
    pub fn start(
        live: SnapshotSource,
        cfg: &ReplicationConfig,
        stop: tokio::sync::watch::Receiver<bool>,
        workers: Arc<crate::supervise::Workers>,
        cluster: ClusterSource,
    ) -> anyhow::Result<(Arc<Replication>, Vec<tokio::task::JoinHandle<()>>)> {
        let queue = Queue::load(&cfg.queue_file)?;
        if !queue.is_empty() {
            tracing::info!(jobs = queue.len(), file = %cfg.queue_file.display(), "replication: resuming the persisted queue");
        }
        let deletes_file = deletes::path_for(&cfg.queue_file);
        let removed = deletes::load(&deletes_file)?;
        if !removed.is_empty() {
            tracing::info!(manifests = removed.len(), file = %deletes_file.display(), "replication: remembering deletes that reconcile must not undo");
        }
        let mut status = StatusTable::default();
        status.restore_removed(removed);
        let mut credentials = vec![];
        for c in &cfg.credentials {
            let what = "replication credential password";
            let password = c
                .password
                .read(what, "Berth replicates to this region without credentials")?;
            if let Some(p) = password {
                credentials.push((c.region.clone(), c.username.clone(), p));
            }
        }
        let (tx, rx) = tokio::sync::mpsc::channel(EVENT_BACKLOG);
        let r = Arc::new(Replication {
            queue: Mutex::new(queue),
            status: Mutex::new(status),
            events: tx,
            wake: tokio::sync::Notify::new(),
            sync_now: tokio::sync::Notify::new(),
            engine: Arc::new(Engine::default()),
            metrics: ReplicationMetrics::default(),
            registries: Mutex::new(HashMap::new()),
            http: Registry::client(None)?,
            credentials,
            workers,
            cluster,
            panic_next_job: std::sync::atomic::AtomicBool::new(false),
            panic_next_deletes_write: std::sync::atomic::AtomicBool::new(false),
            deletes_write: Mutex::new(()),
        });
        {
            // Resumed jobs show as pending in the status table.
            let q = r.queue();
            let mut s = r.status();
            for j in q.jobs() {
                s.attempt_failed(
                    &j.repo,
                    &j.digest,
                    &j.dest,
                    j.attempts,
                    j.last_error.as_deref().unwrap_or("resumed after a restart"),
                    false,
                );
            }
        }
        let tasks = driver::spawn(&live, &r, rx, stop);
        Ok((r, tasks))
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn status(&self) -> MutexGuard<'_, StatusTable> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A manifest was stored in a region. Never blocks: the request path calls this.
    pub fn pushed(&self, event: Pushed) {
        if self.events.try_send(Event::Pushed(event)).is_err() {
            self.metrics.event_dropped();
        }
    }

    /// A manifest was deleted in a region (`event.reference`: the digest or tag deleted).
    /// Never blocks: the request path calls this.
    pub fn deleted(&self, event: Pushed) {
        if self.events.try_send(Event::Deleted(event)).is_err() {
            self.metrics.event_dropped();
        }
    }

    /// Make the next job panic (once), for tests that the panic is counted and the job
    /// retried.
    #[doc(hidden)]
    pub fn inject_job_panic(&self) {
        self.panic_next_job.store(true, Ordering::Relaxed);
    }

    /// Make the next write of changed deletes panic (once), for tests that the list it
    /// took is written by the restarted loop.
    #[doc(hidden)]
    pub fn inject_deletes_panic(&self) {
        self.panic_next_deletes_write.store(true, Ordering::Relaxed);
    }

    /// The username Berth sends to `region`'s registry, if it has a credential: a Harbor
    /// webhook names it as the operator of Berth's own copies.
    pub fn username_for(&self, region: &str) -> Option<&str> {
        self.credentials
            .iter()
            .find(|(r, _, _)| r == region)
            .map(|(_, u, _)| u.as_str())
    }

    /// Ask for a reconcile pass now.
    pub fn sync(&self) {
        self.sync_now.notify_one();
    }

    /// The registry client of `region`, built on first use (and again if its upstream moved).
    fn registry(&self, region: &Region) -> Option<Arc<Registry>> {
        let upstream = region.upstream.as_ref()?;
        let ca_file = region.probe.ca_file.as_deref();
        // The client is rebuilt when the upstream or its CA file changes.
        let key = format!(
            "{upstream} {}",
            ca_file.map(|p| p.display().to_string()).unwrap_or_default()
        );
        let mut m = self.registries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((k, r)) = m.get(&region.name) {
            if k == &key {
                return Some(r.clone());
            }
        }
        let http = match ca_file {
            None => self.http.clone(),
            Some(path) => match Registry::client(Some(path)) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(region = %region.name, error = %format!("{e:#}"), "replication: no registry client for this region (fix its probe.ca_file / proxy.upstream_ca_file); its jobs fail with this reason until then");
                    return None;
                }
            },
        };
        let cred = self
            .credentials
            .iter()
            .find(|(r, _, _)| r == &region.name)
            .map(|(_, u, p)| (u.clone(), p.clone()));
        let r = Arc::new(Registry::new(&region.name, upstream, cred, http));
        m.insert(region.name.clone(), (key, r.clone()));
        Some(r)
    }

    /// Regions known to hold the manifest `repo:reference` whole (for the proxy's chooser).
    pub fn manifest_holders(&self, repo: &str, reference: &str) -> Vec<String> {
        self.status().manifest_holders(repo, reference)
    }

    /// Regions known to hold the blob in `repo`.
    pub fn blob_holders(&self, repo: &str, digest: &str) -> Vec<String> {
        self.status().blob_holders(repo, digest)
    }

    /// `GET /api/v1/replication`: backlog per destination, failures, lag percentiles.
    pub fn overview(&self) -> Value {
        let depth = self.queue().depth();
        let s = self.status();
        let mut regions: BTreeMap<String, Value> = BTreeMap::new();
        for (r, sum) in s.summary() {
            regions.insert(
                r.clone(),
                json!({
                    "queued_jobs": depth.get(&r).copied().unwrap_or(0),
                    "present": sum.present,
                    "pending": sum.pending,
                    "failed": sum.failed,
                    "lag_p50_seconds": sum.lag_p50_seconds,
                    "lag_p99_seconds": sum.lag_p99_seconds,
                }),
            );
        }
        for (r, n) in &depth {
            regions
                .entry(r.clone())
                .or_insert_with(|| json!({"queued_jobs": n}));
        }
        let failures: Vec<Value> = s
            .failures()
            .into_iter()
            .map(|(repo, digest, region, error)| json!({"repository": repo, "digest": digest, "region": region, "error": error}))
            .collect();
        json!({
            "queued_jobs": depth.values().sum::<u64>(),
            "copied_bytes": self.engine.bytes_copied.load(Ordering::Relaxed),
            "regions": regions,
            "failures": failures,
        })
    }

    /// `GET /api/v1/replication/{repository}?reference=`: per-region presence of one image;
    /// None when Berth has not seen it.
    pub fn image(&self, repo: &str, reference: &str) -> Option<Value> {
        let s = self.status();
        let digest = s.resolve(repo, reference)?;
        let e = s.get(repo, &digest)?;
        Some(json!({
            "repository": repo,
            "reference": reference,
            "digest": digest,
            "tags": e.tags,
            "source": e.source,
            "pushed_at_ms": e.pushed_at_ms,
            "regions": e.regions,
        }))
    }

    /// The Prometheus families.
    pub fn render_metrics(&self, o: &mut String) {
        let depth = self.queue().depth();
        self.metrics
            .render(o, &depth, self.engine.bytes_copied.load(Ordering::Relaxed));
    }

    /// Write the remembered deletes beside the queue file, if they changed.
    pub(super) fn save_deletes(&self, queue_file: &std::path::Path) {
        let _writing = self.deletes_write.lock().unwrap_or_else(|p| p.into_inner());
        let Some(list) = self.status().removed_if_changed() else {
            return;
        };
        // Until the list is on disk it is still to be written, also if this write panics:
        // the supervisor restarts the loop, which must not find the change already taken.
        struct Unsaved<'a>(&'a Replication);
        impl Drop for Unsaved<'_> {
            fn drop(&mut self) {
                self.0.status().removed_not_saved();
            }
        }
        let unsaved = Unsaved(self);
        if self.panic_next_deletes_write.swap(false, Ordering::Relaxed) {
            panic!("panic injected into the deletes write by Replication::inject_deletes_panic");
        }
        match deletes::save(&deletes::path_for(queue_file), list) {
            Ok(()) => std::mem::forget(unsaved),
            Err(e) => {
                tracing::error!(error = %crate::report(&e), "replication: the remembered deletes could not be persisted; after a restart a reconcile may copy deleted manifests back")
            }
        }
    }

    /// Add jobs (persisting the queue) and wake the driver.
    fn enqueue(&self, jobs: Vec<Job>, path: &std::path::Path) {
        if jobs.is_empty() {
            return;
        }
        {
            let mut q = self.queue();
            for j in jobs {
                q.add(j);
            }
            if let Err(e) = q.save(path) {
                tracing::error!(error = %format!("{e:#}"), "replication: the queue could not be persisted; jobs added since the last write would be lost by a restart");
            }
        }
        self.wake.notify_one();
    }
}
