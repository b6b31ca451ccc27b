//! [`Expiring`]: a bounded concurrent map whose entries expire after an idle time and a
//! maximum age: the proxy's affinity and upload-session tables (sticky memory, which must
//! hold a million clients in little memory, has its own compact table in `crate::sticky`).
//!
//! Keys are never config ids (callers key by names or stable hashes of names), so a table
//! outlives any number of reloads unchanged. At capacity, expired entries go first, then the
//! least recently seen, in batches down to 90% so eviction runs on few inserts. Time is a
//! parameter ([`Millis`], from a monotonic clock the caller owns), never read here.

use std::hash::Hash;
use std::time::Duration;

use dashmap::DashMap;

/// Milliseconds on the caller's monotonic clock.
pub type Millis = u64;

/// foldhash: several times cheaper than SipHash on small keys, and still seeded at random per
/// process, so clients (who choose their ECS subnets) cannot aim their keys at one shard.
type Hasher = foldhash::fast::RandomState;

#[derive(Debug, Clone)]
struct Entry<V> {
    value: V,
    /// When this key was first given this value: bounds the entry's age.
    since: Millis,
    /// The last use: bounds idleness, orders eviction.
    seen: Millis,
}

pub struct Expiring<K, V> {
    map: DashMap<K, Entry<V>, Hasher>,
    capacity: usize,
    idle: Millis,
    max_age: Millis,
}

impl<K: Hash + Eq, V: Clone + PartialEq> Expiring<K, V> {
    /// At most `capacity` entries (at least 1), each forgotten `idle` after its last use and
    /// `max_age` after it got its value (`Duration::MAX`: never).
    pub fn new(capacity: usize, idle: Duration, max_age: Duration) -> Self {
        let ms = |d: Duration| Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX);
        Expiring {
            map: DashMap::with_hasher(Hasher::default()),
            capacity: capacity.max(1),
            idle: ms(idle),
            max_age: ms(max_age),
        }
    }

    fn live(&self, e: &Entry<V>, now: Millis) -> bool {
        now.saturating_sub(e.seen) < self.idle && now.saturating_sub(e.since) < self.max_age
    }

    /// The value for `key` if it is still fresh, and since when the key has had it.
    pub fn get(&self, key: &K, now: Millis) -> Option<(V, Millis)> {
        let e = self.map.get(key)?;
        self.live(&e, now).then(|| (e.value.clone(), e.since))
    }

    /// `key` used `value` at `now`: refreshes the entry, or starts a new one (and a new age)
    /// if the value changed or the old one had expired.
    pub fn record(&self, key: K, value: V, now: Millis) {
        self.record_with(key, |v| *v == value, || value.clone(), now);
    }

    /// As [`Expiring::record`] for a value that costs something to build (an `Arc<str>` from
    /// a name): `is_same` compares, `make` builds it only when the entry needs a new one.
    pub fn record_with(
        &self,
        key: K,
        is_same: impl Fn(&V) -> bool,
        make: impl FnOnce() -> V,
        now: Millis,
    ) {
        if let Some(mut e) = self.map.get_mut(&key) {
            if !is_same(&e.value) || !self.live(&e, now) {
                e.value = make();
                e.since = now;
            }
            e.seen = now;
            return;
        }
        if self.map.len() >= self.capacity {
            self.evict(now);
        }
        self.map.insert(
            key,
            Entry {
                value: make(),
                since: now,
                seen: now,
            },
        );
    }

    pub fn remove<Q>(&self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.remove(key);
    }

    /// Drop every expired entry.
    pub fn purge(&self, now: Millis) {
        self.map.retain(|_, e| self.live(e, now));
    }

    /// The fresh values, one per entry (for counts by value).
    pub fn fresh_values(&self, now: Millis) -> Vec<V> {
        self.map
            .iter()
            .filter(|e| self.live(e.value(), now))
            .map(|e| e.value().value.clone())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Make room: drop expired entries; if that leaves more than 90% of capacity, drop the
    /// least recently seen down to it.
    fn evict(&self, now: Millis) {
        self.purge(now);
        let target = self.capacity - self.capacity / 10 - 1;
        if self.map.len() <= target {
            return;
        }
        // Sized from this snapshot of times, not from `map.len()` read again: other threads
        // insert and evict concurrently, so the length may have moved either way since (0 to
        // drop, or more than were collected: both panicked here once and killed DNS workers).
        let mut times: Vec<Millis> = self.map.iter().map(|e| e.value().seen).collect();
        let Some(drop) = times.len().checked_sub(target).filter(|d| *d > 0) else {
            return;
        };
        let (_, cutoff, _) = times.select_nth_unstable(drop - 1);
        let cutoff = *cutoff;
        let mut dropped = 0;
        self.map.retain(|_, e| {
            if dropped < drop && e.seen <= cutoff {
                dropped += 1;
                false
            } else {
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(cap: usize) -> Expiring<u32, u8> {
        Expiring::new(cap, Duration::from_secs(900), Duration::from_secs(3600))
    }

    #[test]
    fn idle_and_age_limits() {
        let t = table(10);
        t.record(1, 2, 0);
        assert_eq!(t.get(&1, 899_999), Some((2, 0)));
        assert_eq!(t.get(&1, 900_000), None, "idle");
        let mut now = 0;
        while now < 3_590_000 {
            t.record(1, 2, now);
            now += 600_000;
        }
        assert_eq!(t.get(&1, 3_599_999), Some((2, 0)));
        assert_eq!(t.get(&1, 3_600_000), None, "max age");
    }

    #[test]
    fn a_new_value_restarts_the_age() {
        let t = table(10);
        t.record(1, 2, 0);
        t.record(1, 3, 3_000_000);
        assert_eq!(t.get(&1, 3_500_000), Some((3, 3_000_000)));
    }

    #[test]
    fn bounded_and_evicts_expired_then_least_recent() {
        let t = table(10);
        for i in 0..10 {
            t.record(i, 1, u64::from(i));
        }
        t.record(100, 1, 20);
        assert!(t.len() <= 10);
        assert_eq!(t.get(&0, 21), None, "oldest evicted");
        assert_eq!(t.get(&9, 21), Some((1, 9)), "newest kept");
        let t = table(3);
        t.record(1, 1, 0);
        t.record(2, 1, 1_000_000);
        t.record(3, 1, 1_000_001);
        t.record(4, 1, 1_000_002);
        for k in [2, 3, 4] {
            assert!(
                t.get(&k, 1_000_003).is_some(),
                "{k} kept: the expired one went"
            );
        }
    }

    /// Four threads inserting distinct keys into a small table evict concurrently: the length
    /// one thread reads may already be below the target (another just evicted) or above what
    /// it collected. This panicked ("index out of bounds") and killed DNS worker threads
    /// before eviction sized itself from its own snapshot.
    #[test]
    fn concurrent_eviction_never_panics_and_stays_bounded() {
        let t = std::sync::Arc::new(table(100));
        let threads: Vec<_> = (0..4u32)
            .map(|n| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for i in 0..50_000u32 {
                        t.record(n * 50_000 + i, (i % 3) as u8, u64::from(i));
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
