//! The threshold state machine: raw probe outcomes in, a region's health out.
//!
//! Owns: the `fall`/`rise` rules, the last error and the smoothed probe latency of one region.
//! Pure: no IO, no clock, no tokio. Time enters only as the latency a probe measured, and
//! "how long" is counted in probes. Does not own: running probes ([`mod@super::probe`]) or
//! scheduling them and telling anyone ([`super::monitor`]).

use std::fmt;
use std::time::Duration;

/// Weight of the newest sample in the smoothed latency: high enough to follow a replica that
/// really got slower within a few probes, low enough that one slow probe does not swing it.
const LATENCY_ALPHA: f64 = 0.3;

/// The raw result of one probe, before any threshold is applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeOutcome {
    /// Whether this one probe counts as a success (connected, and for HTTP a healthy status).
    pub ok: bool,
    /// Time from the start of the probe to its verdict (for a timeout: the timeout).
    pub latency: Duration,
    /// Why the probe failed, worded for an operator; None when it succeeded.
    pub error: Option<String>,
    /// The HTTP status, when an HTTP probe got as far as a status line.
    pub status: Option<u16>,
}

impl ProbeOutcome {
    pub fn success(latency: Duration, status: Option<u16>) -> ProbeOutcome {
        ProbeOutcome {
            ok: true,
            latency,
            error: None,
            status,
        }
    }

    pub fn failure(
        latency: Duration,
        error: impl Into<String>,
        status: Option<u16>,
    ) -> ProbeOutcome {
        ProbeOutcome {
            ok: false,
            latency,
            error: Some(error.into()),
            status,
        }
    }
}

/// A region's health as the thresholds see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Not decided yet (fewer than `fall` failures and no success since start). Counts as
    /// healthy: if a fresh start treated every region as down, Berth would fail open (answer
    /// with unhealthy regions) until the first probes came back.
    Unknown,
    Up,
    Down,
}

impl Health {
    /// What routing uses: only `Down` takes a region out.
    pub fn is_healthy(self) -> bool {
        self != Health::Down
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Up => "up",
            Health::Down => "down",
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change of [`Health`], returned by [`HealthState::observe`] on the probe that caused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: Health,
    pub to: Health,
}

impl Transition {
    /// False for `Unknown -> Up`: the region was already counted healthy, so routing does not
    /// change (a snapshot rebuilt for it would answer the same).
    pub fn changes_healthy(&self) -> bool {
        self.from.is_healthy() != self.to.is_healthy()
    }
}

/// One region's thresholds and what the probes have said so far.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthState {
    health: Health,
    /// Consecutive failures that take a region down; at least 1.
    fall: u32,
    /// Consecutive successes that bring a down region back; at least 1.
    rise: u32,
    /// Length of the current run of successes (0 after a failure).
    successes_in_row: u32,
    /// Length of the current run of failures (0 after a success).
    failures_in_row: u32,
    /// See [`HealthState::last_error`].
    last_error: Option<String>,
    /// Exponentially weighted mean of successful probes' latency, in ms; None before the first
    /// success. Failures are left out: a refused connect is fast and would flatter a dead region.
    latency_ms: Option<f64>,
    probes: u64,
    failures: u64,
    transitions: u64,
    /// Value of `probes` at the last transition; stands in for a timestamp so this stays pure.
    since_probe: u64,
}

impl HealthState {
    /// A region not probed yet. `fall` and `rise` of 0 are treated as 1 (the config rejects
    /// them; the state machine does not fail on them either).
    pub fn new(fall: u32, rise: u32) -> HealthState {
        HealthState {
            health: Health::Unknown,
            fall: fall.max(1),
            rise: rise.max(1),
            successes_in_row: 0,
            failures_in_row: 0,
            last_error: None,
            latency_ms: None,
            probes: 0,
            failures: 0,
            transitions: 0,
            since_probe: 0,
        }
    }

    /// Take one probe outcome into account; `Some` when it changed the health.
    pub fn observe(&mut self, outcome: &ProbeOutcome) -> Option<Transition> {
        self.probes += 1;
        let next = if outcome.ok {
            self.successes_in_row = self.successes_in_row.saturating_add(1);
            self.failures_in_row = 0;
            let ms = outcome.latency.as_secs_f64() * 1000.0;
            self.latency_ms = Some(match self.latency_ms {
                Some(old) => old + LATENCY_ALPHA * (ms - old),
                None => ms,
            });
            // A down region keeps showing why it went down until it is back up.
            if self.health != Health::Down {
                self.last_error = None;
            }
            match self.health {
                // One success is enough to leave Unknown: the region was counted healthy
                // already, so there is nothing to guard against.
                Health::Unknown => Health::Up,
                Health::Down if self.successes_in_row >= self.rise => Health::Up,
                h => h,
            }
        } else {
            self.failures += 1;
            self.failures_in_row = self.failures_in_row.saturating_add(1);
            self.successes_in_row = 0;
            self.last_error = Some(
                outcome
                    .error
                    .clone()
                    .unwrap_or_else(|| "probe failed".to_string()),
            );
            match self.health {
                Health::Unknown | Health::Up if self.failures_in_row >= self.fall => Health::Down,
                h => h,
            }
        };
        if next == self.health {
            return None;
        }
        let t = Transition {
            from: self.health,
            to: next,
        };
        self.health = next;
        self.transitions += 1;
        self.since_probe = self.probes;
        if next == Health::Up {
            self.last_error = None;
        }
        Some(t)
    }

    pub fn health(&self) -> Health {
        self.health
    }

    /// What routing uses: everything but `Down` is healthy.
    pub fn is_healthy(&self) -> bool {
        self.health.is_healthy()
    }

    /// The error of the latest failed probe while the region is up (so a failure below the
    /// threshold shows), or the latest error that kept it down; None once it is back up.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Smoothed latency of successful probes in milliseconds; None before the first success.
    pub fn latency_ms(&self) -> Option<f64> {
        self.latency_ms
    }

    /// Probes observed so far.
    pub fn probes(&self) -> u64 {
        self.probes
    }

    /// Failed probes observed so far.
    pub fn failures(&self) -> u64 {
        self.failures
    }

    /// Changes of health so far (`Unknown -> Up` included).
    pub fn transitions(&self) -> u64 {
        self.transitions
    }

    /// The probe count at the last change of health, 0 if it never changed: the health has
    /// held for `probes() - since_probe()` probes.
    pub fn since_probe(&self) -> u64 {
        self.since_probe
    }

    pub fn fall(&self) -> u32 {
        self.fall
    }

    pub fn rise(&self) -> u32 {
        self.rise
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `input` ('o' success, 'x' failure) and render the health after each probe, with
    /// '!' marking the probes that returned a transition.
    fn run(fall: u32, rise: u32, input: &str) -> String {
        let mut s = HealthState::new(fall, rise);
        let mut out = Vec::new();
        for c in input.chars() {
            let outcome = match c {
                'o' => ProbeOutcome::success(Duration::from_millis(10), Some(200)),
                'x' => ProbeOutcome::failure(Duration::from_millis(1), "refused", None),
                other => panic!("unknown outcome {other:?}"),
            };
            let before = s.health();
            let t = s.observe(&outcome);
            match t {
                Some(t) => {
                    assert_eq!((t.from, t.to), (before, s.health()));
                    out.push(format!("{}!", s.health()));
                }
                None => {
                    assert_eq!(before, s.health());
                    out.push(s.health().to_string());
                }
            }
        }
        out.join(" ")
    }

    #[test]
    fn thresholds() {
        let cases: &[(u32, u32, &str, &str)] = &[
            // Fresh start: one success is enough to be up.
            (3, 2, "o", "up!"),
            (3, 2, "oo", "up! up"),
            // Unknown goes down only after `fall` failures, and is healthy until then.
            (3, 2, "xx", "unknown unknown"),
            (3, 2, "xxx", "unknown unknown down!"),
            (1, 1, "x", "down!"),
            // A success while unknown resets the failure run.
            (3, 2, "xxoxx", "unknown unknown up! up up"),
            // Up -> down after exactly `fall` consecutive failures.
            (3, 2, "oxxx", "up! up up down!"),
            (3, 2, "oxxoxxx", "up! up up up up up down!"),
            // Down -> up after exactly `rise` consecutive successes; a failure restarts the count.
            (3, 2, "xxxoo", "unknown unknown down! down up!"),
            (3, 2, "xxxoxoo", "unknown unknown down! down down down up!"),
            (2, 3, "oxxooo", "up! up down! down down up!"),
            // Staying down: more failures are not transitions.
            (2, 2, "xxxxx", "unknown down! down down down"),
            // Flapping below both thresholds changes nothing.
            (2, 2, "oxoxoxo", "up! up up up up up up"),
            // fall/rise of 0 behave as 1.
            (0, 0, "oxo", "up! down! up!"),
        ];
        for (fall, rise, input, want) in cases {
            assert_eq!(
                run(*fall, *rise, input),
                *want,
                "fall={fall} rise={rise} input={input}"
            );
        }
    }

    #[test]
    fn unknown_counts_as_healthy_down_does_not() {
        assert!(HealthState::new(3, 2).is_healthy());
        let mut s = HealthState::new(1, 1);
        s.observe(&ProbeOutcome::failure(Duration::ZERO, "refused", None));
        assert!(!s.is_healthy());
    }

    #[test]
    fn transitions_that_change_routing() {
        let t = |from, to| Transition { from, to }.changes_healthy();
        assert!(!t(Health::Unknown, Health::Up));
        assert!(t(Health::Unknown, Health::Down));
        assert!(t(Health::Up, Health::Down));
        assert!(t(Health::Down, Health::Up));
    }

    #[test]
    fn last_error_latency_and_counters() {
        let ok = |ms| ProbeOutcome::success(Duration::from_millis(ms), Some(200));
        let bad = |e: &str| ProbeOutcome::failure(Duration::from_millis(1), e, Some(503));
        let mut s = HealthState::new(2, 2);
        assert_eq!((s.latency_ms(), s.last_error()), (None, None));

        s.observe(&ok(10));
        assert_eq!(s.latency_ms(), Some(10.0));
        s.observe(&ok(20));
        // 10 + 0.3 * (20 - 10)
        assert!((s.latency_ms().expect("a success was seen") - 13.0).abs() < 1e-9);

        // A failure below the threshold shows, and a success while up clears it.
        s.observe(&bad("first"));
        assert_eq!(s.last_error(), Some("first"));
        s.observe(&ok(13));
        assert_eq!(s.last_error(), None);

        // Down: failures do not move the latency; the error stays through the rising successes.
        s.observe(&bad("a"));
        s.observe(&bad("b"));
        assert_eq!(s.health(), Health::Down);
        assert_eq!(s.last_error(), Some("b"));
        assert!((s.latency_ms().expect("kept") - 13.0).abs() < 1e-9);
        s.observe(&ok(13));
        assert_eq!(s.last_error(), Some("b"));
        s.observe(&ok(13));
        assert_eq!((s.health(), s.last_error()), (Health::Up, None));

        assert_eq!(s.probes(), 8);
        assert_eq!(s.failures(), 3);
        // unknown->up, up->down, down->up
        assert_eq!(s.transitions(), 3);
        assert_eq!(s.since_probe(), 8);
    }

    #[test]
    fn failure_without_text_still_has_an_error() {
        let mut s = HealthState::new(1, 1);
        let outcome = ProbeOutcome {
            ok: false,
            latency: Duration::ZERO,
            error: None,
            status: None,
        };
        s.observe(&outcome);
        assert_eq!(s.last_error(), Some("probe failed"));
    }
}
