//! Sticky memory: (routed name, client key) -> the region last answered, per instance.
//!
//! While a remembered region stays eligible it keeps being answered, even if latency estimates
//! move, so a push that resolves the name many times over minutes sees one region. Entries
//! expire after `idle` without queries and at `max_age` in any case (so a region that comes
//! back regains its clients within the hour). The table is bounded: at capacity, expired
//! entries go first, then the least recently used.
//!
//! Keys and regions are stable hashes of *names* ([`crate::routing::stable_key`]), not config
//! indices: a reload that adds, removes or reorders regions or routed names needs no remap, and
//! a DNS thread still answering from the previous snapshot writes entries that mean the same
//! thing under the new one. A remembered region that is gone resolves to nothing.
//!
//! Time is a parameter ([`Millis`], from a monotonic clock the caller owns), never read here,
//! so tests drive it directly. Not here: whether a region is eligible (the routing core says).

use std::time::Duration;

use dashmap::DashMap;

use crate::routing::ClientKey;

/// Milliseconds on the caller's monotonic clock.
pub type Millis = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    /// Stable key of the region's name.
    region: u64,
    /// When this client was first given this region: bounds the entry's age.
    since: Millis,
    /// The last query: bounds idleness, orders eviction.
    seen: Millis,
}

/// Identifies one remembered client: which routed name (stable key of its name) and who.
pub type StickyKey = (u64, ClientKey);

/// foldhash: several times cheaper than SipHash on these small keys, and still seeded at
/// random per process, so clients cannot aim their keys at one shard.
type Hasher = foldhash::fast::RandomState;

pub struct StickyTable {
    map: DashMap<StickyKey, Entry, Hasher>,
    capacity: usize,
    idle: Millis,
    max_age: Millis,
}

impl StickyTable {
    pub fn new(capacity: usize, idle: Duration, max_age: Duration) -> StickyTable {
        StickyTable {
            map: DashMap::with_hasher(Hasher::default()),
            capacity: capacity.max(1),
            idle: idle.as_millis() as Millis,
            max_age: max_age.as_millis() as Millis,
        }
    }

    fn live(&self, e: &Entry, now: Millis) -> bool {
        now.saturating_sub(e.seen) < self.idle && now.saturating_sub(e.since) < self.max_age
    }

    /// The remembered region (stable key of its name) for `key`, if the memory is still fresh.
    pub fn get(&self, key: &StickyKey, now: Millis) -> Option<u64> {
        let e = *self.map.get(key)?;
        self.live(&e, now).then_some(e.region)
    }

    /// Record that `key` was answered with `region` (or with nothing) at `now`.
    pub fn record(&self, key: StickyKey, region: Option<u64>, now: Millis) {
        let Some(region) = region else {
            self.map.remove(&key);
            return;
        };
        if let Some(mut e) = self.map.get_mut(&key) {
            if e.region == region && self.live(&e, now) {
                e.seen = now;
            } else {
                *e = Entry {
                    region,
                    since: now,
                    seen: now,
                };
            }
            return;
        }
        if self.map.len() >= self.capacity {
            self.evict(now);
        }
        self.map.insert(
            key,
            Entry {
                region,
                since: now,
                seen: now,
            },
        );
    }

    /// Make room: drop expired entries; if that frees less than a tenth, drop the least
    /// recently seen down to 90% of capacity (batches keep eviction off most inserts).
    fn evict(&self, now: Millis) {
        self.map.retain(|_, e| self.live(e, now));
        evict_least_recent(&self.map, self.capacity, |e| e.seen);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Drop the least recently seen entries of `map` down to 90% of `capacity`, in one batch, so
/// eviction runs on few inserts. Shared by the sticky and the proxy's affinity tables.
pub(crate) fn evict_least_recent<K, V, S>(
    map: &DashMap<K, V, S>,
    capacity: usize,
    seen: impl Fn(&V) -> Millis,
) where
    K: std::hash::Hash + Eq,
    S: std::hash::BuildHasher + Clone,
{
    let target = capacity - capacity / 10 - 1;
    if map.len() <= target {
        return;
    }
    // Sized from the snapshot of times, not from `map.len()` again: other threads insert and
    // evict concurrently, so the length may have moved either way since (0 to drop, or more
    // than were collected, both panicked here once).
    let mut times: Vec<Millis> = map.iter().map(|e| seen(e.value())).collect();
    let Some(drop) = times.len().checked_sub(target).filter(|d| *d > 0) else {
        return;
    };
    let (_, cutoff, _) = times.select_nth_unstable(drop - 1);
    let cutoff = *cutoff;
    let mut dropped = 0;
    map.retain(|_, v| {
        if dropped < drop && seen(v) <= cutoff {
            dropped += 1;
            false
        } else {
            true
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u8) -> StickyKey {
        (7, ClientKey::new(std::net::IpAddr::from([10, 0, i, 1]), 24))
    }

    fn table(cap: usize) -> StickyTable {
        StickyTable::new(cap, Duration::from_secs(900), Duration::from_secs(3600))
    }

    #[test]
    fn remembers_until_idle_expiry() {
        let t = table(10);
        t.record(key(1), Some(2), 0);
        assert_eq!(t.get(&key(1), 899_999), Some(2));
        assert_eq!(t.get(&key(1), 900_000), None);
    }

    #[test]
    fn queries_keep_it_alive_but_max_age_ends_it() {
        let t = table(10);
        let mut now = 0;
        while now < 3_590_000 {
            t.record(key(1), Some(2), now);
            now += 600_000;
            assert_eq!(t.get(&key(1), now.min(3_599_999)), Some(2), "at {now}");
        }
        assert_eq!(t.get(&key(1), 3_600_000), None);
    }

    #[test]
    fn a_new_region_restarts_the_age() {
        let t = table(10);
        t.record(key(1), Some(2), 0);
        t.record(key(1), Some(3), 3_000_000);
        assert_eq!(t.get(&key(1), 3_500_000), Some(3));
        t.record(key(1), None, 3_500_001);
        assert_eq!(t.get(&key(1), 3_500_002), None);
    }

    #[test]
    fn bounded_and_evicts_idle_then_oldest() {
        let t = table(10);
        for i in 0..10 {
            t.record(key(i), Some(1), u64::from(i));
        }
        assert_eq!(t.len(), 10);
        // Nothing is expired: the least recently seen go.
        t.record(key(100), Some(1), 20);
        assert!(t.len() <= 10);
        assert_eq!(t.get(&key(0), 21), None, "oldest evicted");
        assert_eq!(t.get(&key(9), 21), Some(1), "newest kept");
        assert_eq!(t.get(&key(100), 21), Some(1));
        // Expired entries go before live ones.
        let t = table(3);
        t.record(key(1), Some(1), 0);
        t.record(key(2), Some(1), 1_000_000);
        t.record(key(3), Some(1), 1_000_001);
        t.record(key(4), Some(1), 1_000_002);
        assert_eq!(t.get(&key(2), 1_000_003), Some(1));
        assert_eq!(t.get(&key(3), 1_000_003), Some(1));
        assert_eq!(t.get(&key(4), 1_000_003), Some(1));
    }

    /// Four threads inserting distinct keys into a small table evict concurrently: the
    /// length one thread reads may already be below the target (another just evicted) or
    /// above what it collected. This panicked ("index out of bounds" in the eviction) and
    /// killed DNS worker threads before eviction sized itself from its own snapshot.
    #[test]
    fn concurrent_eviction_never_panics_and_stays_bounded() {
        let t = std::sync::Arc::new(table(100));
        let threads: Vec<_> = (0..4u32)
            .map(|n| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for i in 0..50_000u32 {
                        let b = (n * 50_000 + i).to_be_bytes();
                        let k = (
                            1,
                            ClientKey::new(std::net::IpAddr::from([b[0], b[1], b[2], b[3]]), 32),
                        );
                        t.record(k, Some(u64::from(i % 3)), u64::from(i));
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().expect("no eviction panics");
        }
        // Each racing insert can add one entry past the bound before the next eviction.
        assert!(t.len() <= 100 + 4, "bounded: {}", t.len());
    }
}
