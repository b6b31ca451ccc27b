//! Sticky memory: (routed name, client key) -> the region last answered, per instance.
//!
//! While a remembered region stays eligible it keeps being answered, even if latency estimates
//! move, so a push that resolves the name many times over minutes sees one region. Entries
//! expire after `idle` without queries and at `max_age` in any case (so a region that comes
//! back regains its clients within the hour). The table is an [`Expiring`] map, bounded:
//! at capacity, expired entries go first, then the least recently used.
//!
//! Keys and regions are stable hashes of *names* ([`crate::routing::stable_key`]), not config
//! indices: a reload that adds, removes or reorders regions or routed names needs no remap, and
//! a DNS thread still answering from the previous snapshot writes entries that mean the same
//! thing under the new one. A remembered region that is gone resolves to nothing.
//!
//! Time is a parameter ([`Millis`], from a monotonic clock the caller owns), never read here,
//! so tests drive it directly. Not here: whether a region is eligible (the routing core says).

use std::time::Duration;

use crate::expiring::Expiring;
pub use crate::expiring::Millis;
use crate::routing::ClientKey;

/// Identifies one remembered client: which routed name (stable key of its name) and who.
pub type StickyKey = (u64, ClientKey);

pub struct StickyTable {
    /// Values: the stable key of the region's name.
    table: Expiring<StickyKey, u64>,
}

impl StickyTable {
    pub fn new(capacity: usize, idle: Duration, max_age: Duration) -> StickyTable {
        StickyTable {
            table: Expiring::new(capacity, idle, max_age),
        }
    }

    /// The remembered region (stable key of its name) for `key`, if the memory is still fresh.
    pub fn get(&self, key: &StickyKey, now: Millis) -> Option<u64> {
        self.table.get(key, now).map(|(region, _)| region)
    }

    /// Record that `key` was answered with `region` (or with nothing: forget it) at `now`.
    pub fn record(&self, key: StickyKey, region: Option<u64>, now: Millis) {
        match region {
            Some(r) => self.table.record(key, r, now),
            None => self.table.remove(&key),
        }
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
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
}
