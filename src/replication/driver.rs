//! The replicator's tasks: events into jobs, due jobs through the copy engine (with retries
//! and backoff), presence into the status table and the webhooks, and the reconcile timer.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::Receiver;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::copy::Task;
use super::queue::{should_run, Job};
use super::{backoff, reconcile, rules, unix_ms, Event, Pushed, Replication, SnapshotSource};
use crate::config::ReplicationConfig;
use crate::snapshot::Snapshot;
use crate::supervise::{supervise_task, Kind, Unit};

/// The four loops (events, dispatch, reconcile, writing the deletes), each supervised: a
/// panic is logged, counted (`berth_worker_panics_total{worker="replication"}`) and the loop
/// started again; the queue, the status table and the event channel outlive it.
pub(super) fn spawn(
    live: &SnapshotSource,
    r: &Arc<Replication>,
    events: Receiver<Event>,
    stop: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let workers = r.workers.clone();
    let unit = |name: &str| Unit::unlisted(Kind::Replication, name);
    // The receiver outlives a panicked event loop: the next one takes it from here.
    let events = Arc::new(tokio::sync::Mutex::new(events));
    let (l, rr, st) = (live.clone(), r.clone(), stop.clone());
    let event = supervise_task(workers.clone(), unit("replication-events"), move || {
        event_loop(l.clone(), rr.clone(), events.clone(), st.clone())
    });
    let (l, rr, st) = (live.clone(), r.clone(), stop.clone());
    let dispatch = supervise_task(workers.clone(), unit("replication-dispatch"), move || {
        dispatch_loop(l.clone(), rr.clone(), st.clone())
    });
    let (l, rr, st) = (live.clone(), r.clone(), stop.clone());
    let reconcile = supervise_task(workers.clone(), unit("replication-reconcile"), move || {
        reconcile::run_loop(l.clone(), rr.clone(), st.clone())
    });
    let (l, rr) = (live.clone(), r.clone());
    let deletes = supervise_task(workers, unit("replication-deletes"), move || {
        deletes_loop(l.clone(), rr.clone(), stop.clone())
    });
    vec![
        tokio::spawn(event),
        tokio::spawn(dispatch),
        tokio::spawn(reconcile),
        tokio::spawn(deletes),
    ]
}

/// How often changed deletes are written ([`super::deletes`]).
const DELETES_EVERY: Duration = Duration::from_secs(1);

/// Write the remembered deletes when they changed, at most once per [`DELETES_EVERY`] and
/// once more at shutdown: a burst of deletes (a retention job) is one write, not one rewrite
/// of the whole file per delete.
async fn deletes_loop(live: SnapshotSource, r: Arc<Replication>, mut stop: watch::Receiver<bool>) {
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(DELETES_EVERY) => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        if let Some(path) = live().and_then(|s| config(&s).map(|c| c.queue_file.clone())) {
            let r = r.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || r.save_deletes(&path)).await {
                // A panic in the write is this loop's: its supervisor counts it and restarts it.
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        }
        if stopping {
            return;
        }
    }
}

fn config(snap: &Snapshot) -> Option<&ReplicationConfig> {
    snap.config.replication.as_ref()
}

async fn event_loop(
    live: SnapshotSource,
    r: Arc<Replication>,
    events: Arc<tokio::sync::Mutex<Receiver<Event>>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut events = events.lock().await;
    loop {
        let ev = tokio::select! {
            ev = events.recv() => ev,
            _ = stop.changed() => None,
        };
        let (Some(ev), Some(snap)) = (ev, live()) else {
            return;
        };
        match ev {
            Event::Pushed(ev) => on_event(&snap, &r, ev).await,
            Event::Deleted(ev) => on_delete(&snap, &r, ev),
        }
    }
}

/// A delete: the region no longer holds it (status), and a delete job for each region of
/// the rules with `delete = true` that take it. With no such rule nothing else happens: the
/// other regions keep it, and reconcile does not copy it back where it was deleted.
fn on_delete(snap: &Snapshot, r: &Replication, ev: Pushed) {
    let Some(cfg) = config(snap) else { return };
    let digest = ev
        .digest
        .clone()
        .or_else(|| r.status().resolve(&ev.repo, &ev.reference));
    let tags = match &digest {
        Some(d) if ev.reference.contains(':') => r.status().tags_of(&ev.repo, d),
        _ => vec![ev.reference.clone()],
    };
    let mut dests = rules::delete_destinations(&cfg.rules, &ev.repo, &tags);
    dests.remove(&ev.region);
    // A deleted tag leaves the manifest in place (under its digest and other tags).
    if ev.reference.contains(':') {
        if let Some(d) = &digest {
            r.status().deleted(&ev.repo, d, &ev.region);
        }
    }
    tracing::info!(repo = %ev.repo, reference = %ev.reference, region = %ev.region, to = ?dests, "replication: manifest deleted");
    let jobs = dests
        .into_iter()
        .map(|dest| Job {
            pushed_at_ms: Some(ev.at_ms),
            delete: true,
            ..Job::new(&ev.repo, &ev.reference, &ev.region, dest)
        })
        .collect();
    r.enqueue(jobs, &cfg.queue_file);
}

/// A push: its destinations by the rules, the status entry, and one job per destination.
async fn on_event(snap: &Snapshot, r: &Replication, ev: Pushed) {
    let Some(cfg) = config(snap) else { return };
    let is_digest = ev.reference.contains(':');
    let tag = (!is_digest).then_some(ev.reference.as_str());
    let mut dests = rules::destinations(&cfg.rules, &ev.repo, tag);
    dests.remove(&ev.region);
    if dests.is_empty() {
        return;
    }
    let digest = match (&ev.digest, is_digest) {
        (Some(d), _) => d.clone(),
        (None, true) => ev.reference.clone(),
        (None, false) => {
            let reg = snap
                .config
                .regions
                .iter()
                .find(|g| g.name == ev.region)
                .and_then(|g| r.registry(g));
            let found = match reg {
                Some(reg) => reg.manifest_digest(&ev.repo, &ev.reference).await,
                None => return,
            };
            match found {
                Ok(Some(d)) => d,
                Ok(None) => {
                    tracing::info!(repo = %ev.repo, tag = %ev.reference, region = %ev.region, "push event not replicated: the tag is gone from its region (the next reconcile compares again)");
                    return;
                }
                Err(e) => {
                    tracing::warn!(repo = %ev.repo, tag = %ev.reference, region = %ev.region, error = %e, "push event not replicated: its digest could not be read (the next reconcile compares again)");
                    return;
                }
            }
        }
    };
    r.status()
        .pushed(&ev.repo, &digest, tag, &ev.region, Some(ev.at_ms), &dests);
    let jobs = dests
        .into_iter()
        .map(|dest| Job {
            tags: tag.map(String::from).into_iter().collect(),
            pushed_at_ms: Some(ev.at_ms),
            ..Job::new(&ev.repo, &digest, &ev.region, dest)
        })
        .collect();
    r.enqueue(jobs, &cfg.queue_file);
}

async fn dispatch_loop(live: SnapshotSource, r: Arc<Replication>, mut stop: watch::Receiver<bool>) {
    loop {
        let Some(snap) = live() else { return };
        let per_dest = config(&snap).map_or(1, |c| c.concurrency);
        let now = unix_ms();
        let cluster = (r.cluster)();
        let runs_here = |j: &Job| should_run(cluster.as_ref(), j);
        let ready = r.queue().take_ready(now, per_dest, runs_here);
        for job in ready {
            tokio::spawn(supervised_job(snap.clone(), r.clone(), job));
        }
        let wait = r
            .queue()
            .next_due(runs_here)
            .map_or(Duration::from_secs(1), |due| {
                Duration::from_millis(due.saturating_sub(now).clamp(10, 1000))
            });
        tokio::select! {
            _ = r.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

/// The region to copy from on this attempt: the job's source first, then (on retries) the
/// other regions the status table knows hold it, in turn.
fn source_for(r: &Replication, job: &Job) -> String {
    let mut holders: Vec<String> = r
        .manifest_holders(&job.repo, &job.digest)
        .into_iter()
        .filter(|h| h != &job.source && h != &job.dest)
        .collect();
    holders.insert(0, job.source.clone());
    holders[job.attempts as usize % holders.len()].clone()
}

/// One job in its own task: a panic in it is logged and counted like a worker's, and counts
/// as a failed attempt (retried with backoff), so the job is not left taken forever.
async fn supervised_job(snap: Arc<Snapshot>, r: Arc<Replication>, job: Job) {
    let result = tokio::spawn(run_job(snap.clone(), r.clone(), job.clone())).await;
    let Err(e) = result else { return };
    if !e.is_panic() {
        return;
    }
    let payload = e.into_panic();
    let who = format!(
        "replication-job {}@{} to {}",
        job.repo, job.digest, job.dest
    );
    r.workers.panicked(Kind::Replication, &who, &*payload);
    if let Some(cfg) = config(&snap) {
        let error = format!("panicked: {}", crate::panic_message(&*payload));
        failed(cfg, &r, &job, &error);
        save(cfg, &r);
    }
    r.wake.notify_one();
}

async fn run_job(snap: Arc<Snapshot>, r: Arc<Replication>, job: Job) {
    if r.panic_next_job
        .swap(false, std::sync::atomic::Ordering::Relaxed)
    {
        panic!("panic injected into a replication job by Replication::inject_job_panic");
    }
    let Some(cfg) = config(&snap) else { return };
    let find = |name: &str| snap.config.regions.iter().find(|g| g.name == name);
    let source = source_for(&r, &job);
    let (src, dst) = match (
        find(&source).and_then(|g| r.registry(g)),
        find(&job.dest).and_then(|g| r.registry(g)),
    ) {
        (Some(src), Some(dst)) => (src, dst),
        (src, _) => {
            let dest_gone = find(&job.dest).is_none();
            without_client(cfg, &r, &job, &source, src.is_none(), dest_gone);
            save(cfg, &r);
            r.wake.notify_one();
            return;
        }
    };
    if job.delete {
        run_delete(cfg, &r, &job, &dst).await;
        return;
    }
    let task = Task {
        src: &src,
        dst: &dst,
        repo: &job.repo,
        digest: &job.digest,
        tags: job.tags.iter().cloned().collect(),
        concurrency: cfg.concurrency,
        limit: r
            .engine
            .limiter(&job.dest, rules::bandwidth(&cfg.rules, &job.dest)),
    };
    let result = r.engine.copy(&task).await;
    let now = unix_ms();
    match result {
        Ok(copied) => {
            let lag = r
                .status()
                .present(&job.repo, &job.digest, &job.dest, now, &copied.blobs);
            r.metrics.job_done(&job.dest, lag);
            r.queue().finish(job.id);
            tracing::debug!(repo = %job.repo, digest = %job.digest, region = %job.dest, bytes = copied.bytes, "replicated");
            webhooks(cfg, &r, &job, lag);
        }
        Err(e) => failed(cfg, &r, &job, &e.to_string()),
    }
    save(cfg, &r);
    r.wake.notify_one();
}

/// A job one of whose regions has no registry client. The destination left the config (a
/// reload, or a restart with another config): nothing to copy there any more, the job ends
/// and the status says why. Otherwise (no upstream, or its CA file failed: logged when the
/// client was built) a failed attempt with that reason; a retry may take another source.
fn without_client(
    cfg: &ReplicationConfig,
    r: &Replication,
    job: &Job,
    source: &str,
    source_missing: bool,
    dest_gone: bool,
) {
    if dest_gone {
        let why = format!(
            "region {} is no longer in the config; job dropped",
            job.dest
        );
        tracing::info!(repo = %job.repo, digest = %job.digest, region = %job.dest, "replication job dropped: its region is no longer in the config");
        r.status()
            .attempt_failed(&job.repo, &job.digest, &job.dest, job.attempts, &why, true);
        r.queue().finish(job.id);
        return;
    }
    let (side, region) = if source_missing {
        ("source", source)
    } else {
        ("destination", job.dest.as_str())
    };
    let why = format!("{side} region {region} has no usable registry client (no upstream, or its CA file failed: see the error logged for it)");
    failed(cfg, r, job, &why);
}

/// A propagated delete: DELETE at the destination (absent already counts as done).
async fn run_delete(
    cfg: &ReplicationConfig,
    r: &Replication,
    job: &Job,
    dst: &super::registry::Registry,
) {
    match dst.delete_manifest(&job.repo, &job.digest).await {
        Ok(found) => {
            if job.digest.contains(':') {
                r.status().deleted(&job.repo, &job.digest, &job.dest);
            }
            r.metrics.job_done(&job.dest, None);
            r.queue().finish(job.id);
            tracing::debug!(repo = %job.repo, reference = %job.digest, region = %job.dest, found, "replicated a delete");
        }
        Err(e) => failed(cfg, r, job, &e.to_string()),
    }
    save(cfg, r);
    r.wake.notify_one();
}

fn failed(cfg: &ReplicationConfig, r: &Replication, job: &Job, error: &str) {
    let attempts = job.attempts + 1;
    let gave_up = attempts >= cfg.retry.max;
    r.status()
        .attempt_failed(&job.repo, &job.digest, &job.dest, attempts, error, gave_up);
    if gave_up {
        tracing::warn!(repo = %job.repo, digest = %job.digest, region = %job.dest, attempts, error, "replication gave up (the next reconcile tries again)");
        r.metrics.job_failed(&job.dest);
        r.queue().finish(job.id);
    } else {
        let jitter = backoff::jitter_of(job.id ^ (u64::from(attempts) << 48) ^ unix_ms());
        let delay = backoff::delay(attempts, cfg.retry.initial, cfg.retry.max_delay, jitter);
        tracing::info!(repo = %job.repo, region = %job.dest, attempts, error, retry_in_ms = delay.as_millis() as u64, "replication attempt failed");
        r.metrics.job_retried(&job.dest);
        r.queue()
            .retry_later(job.id, unix_ms() + delay.as_millis() as u64, error);
    }
}

fn save(cfg: &ReplicationConfig, r: &Replication) {
    if let Err(e) = r.queue().save(&cfg.queue_file) {
        tracing::error!(error = %format!("{e:#}"), "replication: the queue could not be persisted");
    }
}

/// POST the regional event to every webhook the rules name, with retries, off this task.
fn webhooks(cfg: &ReplicationConfig, r: &Replication, job: &Job, lag: Option<f64>) {
    let tag = job.tags.iter().next().map(String::as_str);
    let mut urls: BTreeSet<String> = cfg.webhooks.iter().cloned().collect();
    urls.extend(rules::webhooks(&cfg.rules, &job.repo, tag));
    if urls.is_empty() {
        return;
    }
    let body = serde_json::json!({
        "action": "present",
        "repository": job.repo,
        "tags": job.tags,
        "digest": job.digest,
        "region": job.dest,
        "source": job.source,
        "lag_seconds": lag,
    });
    for url in urls {
        let http = r.http.api().clone();
        let body = body.clone();
        tokio::spawn(async move {
            const ATTEMPTS: u32 = 5;
            for attempt in 1..=ATTEMPTS {
                match http.post(&url).json(&body).send().await {
                    Ok(resp) if resp.status().is_success() => return,
                    Ok(resp) => {
                        tracing::info!(url = %url, status = resp.status().as_u16(), attempt, "replication webhook refused")
                    }
                    Err(e) => {
                        tracing::info!(url = %url, error = %e.without_url(), attempt, "replication webhook failed")
                    }
                }
                if attempt == ATTEMPTS {
                    tracing::warn!(url = %url, attempts = ATTEMPTS, "replication webhook given up: this event is not delivered");
                    return;
                }
                let d = backoff::delay(
                    attempt,
                    Duration::from_millis(500),
                    Duration::from_secs(30),
                    backoff::jitter_of(u64::from(attempt)),
                );
                tokio::time::sleep(d).await;
            }
        });
    }
}
