//! `bandwidth`: a token bucket per destination region, limiting the bytes of blobs streamed
//! to it. [`Bucket`] is the pure arithmetic (time is a parameter, in nanoseconds since any
//! fixed origin); [`Limiter`] wraps it with the clock and the sleep.
//!
//! A take may overdraw the bucket: the caller is told how long to wait before sending, and
//! the next take waits behind it. So concurrent copies to one region share its rate, each
//! chunk waits in the order it asked, and a chunk larger than the burst still goes through.

use std::sync::Mutex;
use std::time::{Duration, Instant};

const NANOS: i128 = 1_000_000_000;

/// The smallest burst: a few chunks of a blob stream, so a low rate still sends whole chunks
/// without waiting on every one.
pub const MIN_BURST: u64 = 256 << 10;

/// `rate` bytes per second, holding up to `burst` bytes. Tokens are kept in byte-nanoseconds
/// (bytes x 10^9) so the refill is exact integer arithmetic: no drift over a long copy.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    rate: u64,
    burst: u64,
    /// Available bytes x 10^9; negative while takes wait for tokens not yet refilled.
    tokens: i128,
    /// When `tokens` was last brought up to date (ns since the origin).
    at_ns: u64,
}

impl Bucket {
    /// A full bucket at time `now_ns`. The burst is one second at `rate`, at least
    /// [`MIN_BURST`].
    pub fn new(rate: u64, now_ns: u64) -> Bucket {
        let rate = rate.max(1);
        let burst = rate.max(MIN_BURST);
        Bucket {
            rate,
            burst,
            tokens: i128::from(burst) * NANOS,
            at_ns: now_ns,
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    fn refill(&mut self, now_ns: u64) {
        let elapsed = now_ns.saturating_sub(self.at_ns);
        self.at_ns = self.at_ns.max(now_ns);
        let full = i128::from(self.burst) * NANOS;
        self.tokens = (self.tokens + i128::from(elapsed) * i128::from(self.rate)).min(full);
    }

    /// Take `bytes` at `now_ns`: how long to wait before sending them (zero when the bucket
    /// held them).
    pub fn take(&mut self, bytes: u64, now_ns: u64) -> Duration {
        self.refill(now_ns);
        self.tokens -= i128::from(bytes) * NANOS;
        if self.tokens >= 0 {
            return Duration::ZERO;
        }
        // Nanoseconds until the refill brings the tokens back to zero, rounded up.
        let rate = i128::from(self.rate);
        let wait = (-self.tokens + rate - 1) / rate;
        Duration::from_nanos(u64::try_from(wait).unwrap_or(u64::MAX))
    }
}

/// One destination's bucket with the clock: what the copy engine shares between the copies
/// to that region.
#[derive(Debug)]
pub struct Limiter {
    origin: Instant,
    bucket: Mutex<Bucket>,
}

impl Limiter {
    pub fn new(rate: u64) -> Limiter {
        Limiter {
            origin: Instant::now(),
            bucket: Mutex::new(Bucket::new(rate, 0)),
        }
    }

    pub fn rate(&self) -> u64 {
        self.bucket.lock().unwrap_or_else(|p| p.into_inner()).rate()
    }

    /// Wait until `bytes` may be sent.
    pub async fn wait_for(&self, bytes: u64) {
        let now = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let wait = self
            .bucket
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(bytes, now);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_full_bucket_sends_its_burst_then_the_rate() {
        let mut b = Bucket::new(1 << 20, 0); // 1 MiB/s, burst 1 MiB
        assert_eq!(
            b.take(1 << 20, 0),
            Duration::ZERO,
            "the burst is there at once"
        );
        assert_eq!(b.take(512 << 10, 0), Duration::from_millis(500));
        // Half a second later the first overdraft is paid; this take waits its own share.
        assert_eq!(b.take(512 << 10, S / 2), Duration::from_millis(500));
        // Idle for a minute: the bucket holds one burst, not a minute of tokens.
        assert_eq!(b.take(1 << 20, 61 * S), Duration::ZERO);
        assert_eq!(b.take(1 << 20, 61 * S), Duration::from_secs(1));
    }

    #[test]
    fn the_waits_add_up_to_the_rate_exactly() {
        // 3 MB/s, 16 KiB chunks as a stream gives them, the clock advanced by each wait:
        // 100 MB take (100 MB - burst) / rate, to the nanosecond (no drift from rounding).
        let rate = 3_000_000u64;
        let mut b = Bucket::new(rate, 5);
        let mut now = 5u64;
        let mut sent = 0u64;
        while sent < 100_000_000 {
            let chunk = (16 << 10).min(100_000_000 - sent);
            now += b.take(chunk, now).as_nanos() as u64;
            sent += chunk;
        }
        let expected = (100_000_000 - rate) as u128 * u128::from(S) / u128::from(rate);
        let took = u128::from(now - 5);
        assert!(
            took >= expected && took <= expected + 1,
            "{took} vs {expected}"
        );
    }

    #[test]
    fn small_rates_get_a_minimum_burst_and_big_chunks_still_pass() {
        let mut b = Bucket::new(1024, 0);
        assert_eq!(b.take(MIN_BURST, 0), Duration::ZERO);
        // A chunk larger than the burst is not refused: it waits for its tokens.
        let mut b = Bucket::new(1 << 20, 0);
        assert_eq!(b.take(3 << 20, 0), Duration::from_secs(2));
        // A clock that goes back (two callers racing to the lock) takes nothing extra.
        assert_eq!(b.take(0, 0), Duration::from_secs(2));
    }
}
