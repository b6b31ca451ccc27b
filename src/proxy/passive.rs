//! Passive health: what the proxy's own requests say about a region, beside the probes. A
//! region whose requests time out or cannot connect `fall` times in a row is reported down
//! through the same road the probes take (`Live::set_health`), so DNS and the proxy both stop
//! sending clients there; the next probe verdict, or a request that gets an answer, brings it
//! back. A replica that answers its probe (`GET /v2/`) but hangs on everything else is only
//! ever seen this way.
//!
//! This file only counts (no clock, no IO); `request` reports the verdicts.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

/// The text a passive verdict's `last_error` starts with, so it can be told from a probe's.
pub const MARK: &str = "passive health: ";

/// Is this verdict the proxy's passive health marking the region down?
pub fn passively_down(h: &crate::live::HealthInfo) -> bool {
    !h.healthy && h.last_error.as_deref().is_some_and(|e| e.starts_with(MARK))
}

/// Consecutive failures per region name (names, not ids: they survive reloads).
#[derive(Default)]
pub struct Passive {
    state: Mutex<State>,
    /// Entries in `state`: a request that succeeds skips the lock when nothing is failing.
    failing: AtomicUsize,
}

#[derive(Default)]
struct State {
    counts: HashMap<String, u32>,
    /// Regions reported down here and not answered since.
    reported: HashSet<String>,
}

impl State {
    fn len(&self) -> usize {
        self.counts.len() + self.reported.len()
    }
}

impl Passive {
    /// A request to `region` timed out or could not connect. True when this failure is the
    /// `fall`-th in a row: report the region down now (the count starts again, so a region
    /// the probes bring back is reported again after `fall` more). `fall == 0`: never.
    pub fn failure(&self, region: &str, fall: u32) -> bool {
        if fall == 0 {
            return false;
        }
        let mut s = self.state.lock();
        let c = s.counts.entry(region.to_string()).or_insert(0);
        *c += 1;
        let reached = *c >= fall;
        if reached {
            s.counts.remove(region);
            s.reported.insert(region.to_string());
        }
        self.failing.store(s.len(), Ordering::Relaxed);
        reached
    }

    /// A request to `region` got an answer: its run of failures ends. True if it had been
    /// reported down here since its last answer (then it may be reported up again).
    pub fn success(&self, region: &str) -> bool {
        if self.failing.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let mut s = self.state.lock();
        s.counts.remove(region);
        let was_down = s.reported.remove(region);
        self.failing.store(s.len(), Ordering::Relaxed);
        was_down
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_of_failures_reaches_fall_and_starts_again() {
        let p = Passive::default();
        let seen: Vec<bool> = (0..7).map(|_| p.failure("westus", 3)).collect();
        assert_eq!(seen, [false, false, true, false, false, true, false]);
        // An answer in between ends the run (and says it had been reported down once);
        // another region counts on its own.
        assert!(p.success("westus"));
        assert!(!p.success("westus"));
        assert!(!p.failure("westus", 2));
        assert!(!p.failure("eastus", 2));
        assert!(!p.success("westus"));
        assert!(!p.failure("westus", 2));
        assert!(p.failure("westus", 2));
        assert!(p.failure("eastus", 2));
        // Off.
        assert!(!(0..10).any(|_| p.failure("westus", 0)));
    }
}
