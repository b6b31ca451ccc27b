//! Fixed-bucket histograms of durations: plain atomics, no locks, no allocation when observing,
//! rendered in the Prometheus text format (`_bucket` with `le`, `_sum`, `_count`).
//!
//! Counts are kept per bucket (not cumulative) so one observation is two `fetch_add`s; the
//! renderer accumulates. The DNS UDP threads each own one ([`Histogram`] per thread, merged at
//! render time), so their hot path touches only its own cache lines.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of DNS answer-time buckets, in seconds (50 µs .. 1 s).
pub const DNS_BOUNDS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Upper bounds of proxy request-duration buckets, in seconds (1 ms .. 5 min: blob uploads).
pub const PROXY_BOUNDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// A histogram of durations with fixed bucket bounds.
pub struct Histogram {
    /// Upper bounds in nanoseconds, ascending (the same as `bounds` in seconds).
    bounds_ns: Vec<u64>,
    bounds: &'static [f64],
    /// Observations per bucket, not cumulative; the last is above every bound (+Inf).
    counts: Vec<AtomicU64>,
    /// Sum of the observed durations in nanoseconds (wraps after 584 years of total time).
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds_ns: bounds.iter().map(|b| (b * 1e9) as u64).collect(),
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    /// `n` observations that each took `ns` nanoseconds (a batch answered together).
    pub fn observe_n(&self, ns: u64, n: u64) {
        let i = self.bounds_ns.partition_point(|b| *b < ns);
        self.counts[i].fetch_add(n, Ordering::Relaxed);
        self.sum_ns
            .fetch_add(ns.saturating_mul(n), Ordering::Relaxed);
    }

    pub fn observe(&self, d: std::time::Duration) {
        self.observe_n(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), 1);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Adds this histogram's counts into `into` (bucket counts, then the sum in nanoseconds).
    pub fn add_to(&self, into: &mut Totals) {
        if into.counts.len() != self.counts.len() {
            into.counts = vec![0; self.counts.len()];
            into.bounds = self.bounds;
        }
        for (t, c) in into.counts.iter_mut().zip(&self.counts) {
            *t += c.load(Ordering::Relaxed);
        }
        into.sum_ns = into
            .sum_ns
            .wrapping_add(self.sum_ns.load(Ordering::Relaxed));
    }

    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        self.add_to(&mut t);
        t
    }
}

/// Times one receive batch in `every` into a thread's own histogram: the DNS UDP loop's hot
/// path pays one increment and one comparison per batch, and two clock reads (vDSO, no
/// system call) per timed batch.
pub struct BatchTimer {
    histogram: std::sync::Arc<Histogram>,
    every: u32,
    batches: u32,
}

impl BatchTimer {
    pub fn new(histogram: std::sync::Arc<Histogram>, every: u32) -> BatchTimer {
        BatchTimer {
            histogram,
            every: every.max(1),
            batches: 0,
        }
    }

    /// A batch arrived: its start time if it is one of those timed.
    pub fn start(&mut self) -> Option<std::time::Instant> {
        self.batches = self.batches.wrapping_add(1);
        (self.batches % self.every == 0).then(std::time::Instant::now)
    }

    /// The batch whose `start` this was is answered: `answers` observations of its time.
    pub fn done(&self, start: Option<std::time::Instant>, answers: usize) {
        if let Some(t0) = start.filter(|_| answers > 0) {
            let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.histogram.observe_n(ns, answers as u64);
        }
    }
}

/// A histogram's values, possibly merged from several.
#[derive(Default)]
pub struct Totals {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum_ns: u64,
}

impl Totals {
    /// Nothing merged in yet.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// One labelled series of family `name`: buckets, sum and count. `labels` is
    /// `k="v",k2="v2"` without braces (may be empty).
    pub fn render(&self, o: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c;
            match self.bounds.get(i) {
                Some(b) => {
                    let _ = writeln!(o, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(o, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let sum = self.sum_ns as f64 / 1e9;
        let braces = |l: &str| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{{{l}}}")
            }
        };
        let _ = writeln!(o, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(o, "{name}_count{} {cumulative}", braces(labels));
    }
}

/// The HELP and TYPE lines of a histogram family.
pub fn header(o: &mut String, name: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} histogram");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_le_is_inclusive() {
        let h = Histogram::new(&[0.001, 0.01]);
        h.observe_n(1_000_000, 2); // exactly 1 ms: in le="0.001"
        h.observe_n(5_000_000, 1);
        h.observe_n(2_000_000_000, 1);
        let mut o = String::new();
        h.totals().render(&mut o, "x_seconds", "a=\"b\"");
        assert_eq!(
            o,
            "x_seconds_bucket{a=\"b\",le=\"0.001\"} 2\n\
             x_seconds_bucket{a=\"b\",le=\"0.01\"} 3\n\
             x_seconds_bucket{a=\"b\",le=\"+Inf\"} 4\n\
             x_seconds_sum{a=\"b\"} 2.007\n\
             x_seconds_count{a=\"b\"} 4\n"
        );
    }
}
