//! Response rate limiting for UDP, as BIND and Knot DNS do it: every client prefix (/24 IPv4,
//! /56 IPv6 by default) gets `responses_per_second`, with a burst of a `window`'s worth; past
//! that its answers are dropped, except every `slip`-th, which goes out as an empty truncated
//! answer (TC=1) so a real client retries over TCP, which is never limited. A spoofed victim
//! thus receives little; a real resolver loses nothing but a round trip.
//!
//! The table is fixed in size (4-way set-associative, buckets found by a keyed hash of the
//! prefix, so a flood of distinct sources replaces the idlest entries and never grows memory,
//! and no one can aim many prefixes at one set). Each entry is one `AtomicU64`: a 24-bit tag
//! of the prefix and a 40-bit "theoretical arrival time" in microseconds (GCRA, the
//! token bucket as one timestamp). Pure: time is a parameter, no clock inside.

use std::hash::Hasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use siphasher::sip::SipHasher13;

use crate::config::RateLimitConfig;

/// What to do with one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Send,
    /// Send an empty truncated answer instead (the client retries over TCP).
    Slip,
    Drop,
}

const WAYS: usize = 4;
const TIME_BITS: u32 = 40;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;

pub struct Limiter {
    slots: Box<[AtomicU64]>,
    /// Number of sets - 1 (a power of two).
    mask: u64,
    key: [u8; 16],
    /// Microseconds one response costs: 1 s / responses_per_second.
    interval: u64,
    /// Microseconds of credit a prefix may run ahead: the burst.
    tolerance: u64,
    slip: u64,
    ipv4_prefix: u8,
    ipv6_prefix: u8,
    /// Limited responses so far, for picking every `slip`-th.
    limited: AtomicU64,
}

impl Limiter {
    /// A limiter for `cfg`; `key` seeds the bucket hash (random per process).
    pub fn new(cfg: &RateLimitConfig, key: [u8; 16]) -> Limiter {
        let sets = (cfg.table_size / WAYS).max(1).next_power_of_two();
        let interval = (1_000_000 / u64::from(cfg.responses_per_second.max(1))).max(1);
        Limiter {
            slots: (0..sets * WAYS).map(|_| AtomicU64::new(0)).collect(),
            mask: sets as u64 - 1,
            key,
            interval,
            tolerance: (cfg.window.as_micros() as u64).min(TIME_MASK / 4),
            slip: u64::from(cfg.slip),
            ipv4_prefix: cfg.ipv4_prefix,
            ipv6_prefix: cfg.ipv6_prefix,
            limited: AtomicU64::new(0),
        }
    }

    /// Entries in the table (its memory is this times 8 bytes, whatever the traffic).
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    fn bucket_hash(&self, src: IpAddr) -> u64 {
        let mut h = SipHasher13::new_with_key(&self.key);
        match src {
            IpAddr::V4(a) => {
                let bits = u32::from(a)
                    & u32::MAX
                        .checked_shl(32 - u32::from(self.ipv4_prefix))
                        .unwrap_or(0);
                h.write_u8(4);
                h.write(&bits.to_be_bytes());
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a)
                    & u128::MAX
                        .checked_shl(128 - u32::from(self.ipv6_prefix))
                        .unwrap_or(0);
                h.write_u8(6);
                h.write(&bits.to_be_bytes());
            }
        }
        h.finish()
    }

    /// Count one response to `src` at `now_us` (microseconds on any monotonic clock).
    pub fn check(&self, src: IpAddr, now_us: u64) -> Verdict {
        let h = self.bucket_hash(src);
        let tag = h >> TIME_BITS;
        let set = ((h & self.mask) as usize) * WAYS;
        let ways = &self.slots[set..set + WAYS];
        let now = now_us & TIME_MASK;
        // A few tries: another thread may update the same entry at the same moment. If they
        // all race, the response goes out (never limit on a technicality).
        for _ in 0..4 {
            let mut victim = 0;
            let mut victim_idle = i64::MIN;
            let mut found = None;
            for (w, slot) in ways.iter().enumerate() {
                let cur = slot.load(Ordering::Relaxed);
                if cur >> TIME_BITS == tag {
                    found = Some((w, cur));
                    break;
                }
                // How long ago this entry's credit was full again: evict the longest idle.
                let idle = self.behind(cur & TIME_MASK, now);
                if idle > victim_idle {
                    victim_idle = idle;
                    victim = w;
                }
            }
            let (w, cur, tat) = match found {
                Some((w, cur)) => {
                    let behind = self.behind(cur & TIME_MASK, now);
                    // Behind now (idle): full credit; ahead: that much credit used.
                    (w, cur, now + (-behind).max(0) as u64)
                }
                None => {
                    let cur = ways[victim].load(Ordering::Relaxed);
                    (victim, cur, now)
                }
            };
            if tat - now > self.tolerance {
                let n = self.limited.fetch_add(1, Ordering::Relaxed);
                return if self.slip > 0 && n % self.slip == 0 {
                    Verdict::Slip
                } else {
                    Verdict::Drop
                };
            }
            let next = (tag << TIME_BITS) | ((tat + self.interval) & TIME_MASK);
            if ways[w]
                .compare_exchange(cur, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                return Verdict::Send;
            }
        }
        Verdict::Send
    }

    /// How far `tat` (40-bit, wrapping) lies behind `now`: positive when in the past. A time
    /// further ahead than any live entry can be (credit beyond the burst) is a stale entry
    /// from a clock lap ago and counts as long idle.
    fn behind(&self, tat: u64, now: u64) -> i64 {
        let d = now.wrapping_sub(tat) & TIME_MASK;
        // Sign-extend the 40-bit difference.
        let d = ((d << (64 - TIME_BITS)) as i64) >> (64 - TIME_BITS);
        if -d > (self.tolerance + self.interval) as i64 {
            i64::MAX
        } else {
            d
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limiter(rps: u32, window_ms: u64, slip: u32, table: usize) -> Limiter {
        Limiter::new(
            &RateLimitConfig {
                enabled: true,
                responses_per_second: rps,
                window: Duration::from_millis(window_ms),
                slip,
                ipv4_prefix: 24,
                ipv6_prefix: 56,
                table_size: table,
            },
            [7; 16],
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn run(l: &Limiter, src: &str, n: usize, at: u64) -> Vec<Verdict> {
        (0..n).map(|_| l.check(ip(src), at)).collect()
    }

    #[test]
    fn a_burst_then_the_rate() {
        // 10/s, a 1 s window: 11 at once (the burst plus the one in hand), then 1 per 100 ms.
        let l = limiter(10, 1000, 0, 1024);
        let t = 5_000_000;
        let v = run(&l, "192.0.2.1", 20, t);
        assert_eq!(v.iter().filter(|v| **v == Verdict::Send).count(), 11);
        assert!(v[11..].iter().all(|v| *v == Verdict::Drop));
        assert_eq!(l.check(ip("192.0.2.1"), t + 99_000), Verdict::Drop);
        assert_eq!(l.check(ip("192.0.2.1"), t + 100_000), Verdict::Send);
        assert_eq!(l.check(ip("192.0.2.1"), t + 100_000), Verdict::Drop);
        // The same /24 shares the budget; the next /24 and IPv6 have their own.
        assert_eq!(l.check(ip("192.0.2.200"), t + 100_000), Verdict::Drop);
        assert_eq!(l.check(ip("192.0.3.1"), t + 100_000), Verdict::Send);
        assert_eq!(l.check(ip("2001:db8::1"), t + 100_000), Verdict::Send);
        // Idle for the window: the full burst again.
        let v = run(&l, "192.0.2.1", 12, t + 2_000_000);
        assert_eq!(v.iter().filter(|v| **v == Verdict::Send).count(), 11);
    }

    #[test]
    fn ipv6_prefix_is_56() {
        let l = limiter(1, 0, 0, 1024);
        assert_eq!(l.check(ip("2001:db8:0:ff::1"), 0), Verdict::Send);
        assert_eq!(l.check(ip("2001:db8:0:1::2"), 0), Verdict::Drop);
        assert_eq!(l.check(ip("2001:db8:0:100::1"), 0), Verdict::Send);
    }

    #[test]
    fn every_slip_th_limited_response_is_truncated() {
        let l = limiter(1, 0, 3, 1024);
        let v = run(&l, "192.0.2.1", 10, 0);
        use Verdict::*;
        assert_eq!(
            v,
            [Send, Slip, Drop, Drop, Slip, Drop, Drop, Slip, Drop, Drop]
        );
        let l = limiter(1, 0, 1, 1024);
        assert!(run(&l, "192.0.2.1", 5, 0)[1..].iter().all(|v| *v == Slip));
    }

    #[test]
    fn a_flood_of_sources_keeps_memory_fixed_and_spares_a_busy_victim() {
        let l = limiter(5, 1000, 0, 256);
        assert_eq!(l.capacity(), 256);
        let victim = "198.51.100.7";
        let mut t = 0u64;
        let mut sent = 0;
        for i in 0..200_000u32 {
            t += 10;
            // The victim's prefix asks 1 in 10; a million distinct /24s flood the rest.
            if i % 10 == 0 {
                sent += usize::from(l.check(ip(victim), t) == Verdict::Send);
            } else {
                let a = std::net::Ipv4Addr::from(i.wrapping_mul(2_654_435_761) << 8);
                l.check(IpAddr::V4(a), t);
            }
        }
        // 2 s of time: at most the burst (6) plus 5/s, however the flood churned the table.
        assert!(sent <= 6 + 10 + 1, "victim answered {sent} times");
        assert_eq!(l.capacity(), 256);
    }

    #[test]
    fn the_clock_may_wrap_and_stale_entries_do_not_limit() {
        let l = limiter(1, 0, 0, 1024);
        assert_eq!(l.check(ip("192.0.2.1"), TIME_MASK - 10), Verdict::Send);
        assert_eq!(l.check(ip("192.0.2.1"), TIME_MASK - 5), Verdict::Drop);
        // Past the 40-bit wrap, one second on: allowed again.
        assert_eq!(
            l.check(ip("192.0.2.1"), TIME_MASK + 1_000_000),
            Verdict::Send
        );
        // An entry last seen half a clock lap ago looks "ahead"; it must count as idle.
        let l = limiter(1, 0, 0, 1024);
        assert_eq!(l.check(ip("192.0.2.1"), 0), Verdict::Send);
        assert_eq!(
            l.check(ip("192.0.2.1"), TIME_MASK / 2 + 1_000_000 + 7),
            Verdict::Send
        );
    }
}
