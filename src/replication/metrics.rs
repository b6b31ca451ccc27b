//! Replication's Prometheus families, rendered from here (one call from `Live::render_metrics`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// Upper bounds of the lag histogram, in seconds.
pub const LAG_BUCKETS: [f64; 12] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; LAG_BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Counters per destination region (names, so a reload remaps nothing).
#[derive(Debug, Default)]
pub struct ReplicationMetrics {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    done: BTreeMap<String, u64>,
    failed: BTreeMap<String, u64>,
    retries: BTreeMap<String, u64>,
    lag: BTreeMap<String, Histogram>,
    events_dropped: u64,
}

impl ReplicationMetrics {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn job_done(&self, dest: &str, lag: Option<f64>) {
        let mut i = self.inner();
        *i.done.entry(dest.to_string()).or_default() += 1;
        if let Some(l) = lag {
            let h = i.lag.entry(dest.to_string()).or_default();
            for (n, b) in LAG_BUCKETS.iter().enumerate() {
                if l <= *b {
                    h.counts[n] += 1;
                }
            }
            h.count += 1;
            h.sum += l;
        }
    }

    pub fn job_failed(&self, dest: &str) {
        *self.inner().failed.entry(dest.to_string()).or_default() += 1;
    }

    pub fn job_retried(&self, dest: &str) {
        *self.inner().retries.entry(dest.to_string()).or_default() += 1;
    }

    pub fn event_dropped(&self) {
        self.inner().events_dropped += 1;
    }

    /// The families; `depth` is the queue per destination, `bytes` the total copied.
    pub fn render(&self, o: &mut String, depth: &BTreeMap<String, u64>, bytes: u64) {
        let i = self.inner();
        family(
            o,
            "berth_replication_queue_jobs",
            "gauge",
            "Replication jobs waiting or running, per destination region.",
        );
        for (r, n) in depth {
            let _ = writeln!(o, "berth_replication_queue_jobs{{region=\"{r}\"}} {n}");
        }
        family(
            o,
            "berth_replication_copied_bytes_total",
            "counter",
            "Blob bytes streamed from one region to another.",
        );
        let _ = writeln!(o, "berth_replication_copied_bytes_total {bytes}");
        for (name, help, map) in [
            (
                "berth_replication_jobs_done_total",
                "Replication jobs completed (the manifest is present), per destination region.",
                &i.done,
            ),
            (
                "berth_replication_jobs_failed_total",
                "Replication jobs given up after every retry, per destination region.",
                &i.failed,
            ),
            (
                "berth_replication_job_retries_total",
                "Failed replication attempts that will be retried, per destination region.",
                &i.retries,
            ),
        ] {
            family(o, name, "counter", help);
            for (r, n) in map {
                let _ = writeln!(o, "{name}{{region=\"{r}\"}} {n}");
            }
        }
        family(
            o,
            "berth_replication_events_dropped_total",
            "counter",
            "Push events dropped because the event channel was full (reconcile catches up).",
        );
        let _ = writeln!(
            o,
            "berth_replication_events_dropped_total {}",
            i.events_dropped
        );
        let name = "berth_replication_lag_seconds";
        family(
            o,
            name,
            "histogram",
            "Time from a push's completion to its presence in a destination region.",
        );
        for (r, h) in &i.lag {
            for (n, b) in LAG_BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "{name}_bucket{{region=\"{r}\",le=\"{b}\"}} {}",
                    h.counts[n]
                );
            }
            let _ = writeln!(o, "{name}_bucket{{region=\"{r}\",le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(o, "{name}_sum{{region=\"{r}\"}} {}", h.sum);
            let _ = writeln!(o, "{name}_count{{region=\"{r}\"}} {}", h.count);
        }
    }
}

fn family(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
}
