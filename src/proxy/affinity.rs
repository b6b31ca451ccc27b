//! Affinity: (client key, repository) -> region, per instance, so that every request of one
//! push (blob checks, uploads, mounts, the manifest) reaches one region. And the upload
//! sessions this instance has seen lately, for the "active upload sessions" gauge.
//!
//! An affinity lives `ttl` after the last request that used it; a push refreshes it with
//! every request. Regions are remembered by name, so a reload that reorders regions keeps
//! every affinity pointing at the same replica. Both tables are bounded: at capacity, expired
//! entries go first, then the least recently used. Time is a parameter ([`Millis`]), never
//! read here. Not here: whether a remembered region is still eligible (the caller checks
//! the snapshot) or which region a new client gets (the routing core).

use std::sync::Arc;
use std::time::Duration;

use crate::expiring::{Expiring, Millis};
use crate::routing::ClientKey;

/// (client key, repository) -> region name.
pub struct AffinityTable {
    inner: Expiring<(ClientKey, Box<str>), Arc<str>>,
}

impl AffinityTable {
    pub fn new(capacity: usize, ttl: Duration) -> AffinityTable {
        AffinityTable {
            inner: Expiring::new(capacity, ttl, Duration::MAX),
        }
    }

    /// The region `client` used for `repo` within the last `ttl`, and since when it has.
    pub fn get(&self, client: ClientKey, repo: &str, now: Millis) -> Option<(Arc<str>, Millis)> {
        self.inner.get(&(client, Box::from(repo)), now)
    }

    /// `client` uses `region` for `repo` at `now` (refreshes or moves the affinity).
    pub fn record(&self, client: ClientKey, repo: &str, region: &str, now: Millis) {
        let key = (client, Box::from(repo));
        self.inner
            .record_with(key, |r| **r == *region, || Arc::from(region), now);
    }

    pub fn purge(&self, now: Millis) {
        self.inner.purge(now);
    }

    pub fn len(&self) -> usize {
        self.inner.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

/// Upload sessions (by uuid) seen through this instance and not finished yet, with their
/// region. Stateless routing does not need it; operators want the count per region (how much
/// a drain still waits for).
pub struct SessionTable {
    inner: Expiring<Box<str>, Arc<str>>,
}

impl SessionTable {
    pub fn new(capacity: usize, ttl: Duration) -> SessionTable {
        SessionTable {
            inner: Expiring::new(capacity, ttl, Duration::MAX),
        }
    }

    pub fn touch(&self, uuid: &str, region: &str, now: Millis) {
        self.inner.record_with(
            Box::from(uuid),
            |r| **r == *region,
            || Arc::from(region),
            now,
        );
    }

    /// The session completed or was cancelled.
    pub fn finish(&self, uuid: &str) {
        self.inner.remove(uuid);
    }

    /// Live sessions per region name.
    pub fn count_by_region(&self, now: Millis) -> Vec<(Arc<str>, usize)> {
        let mut out: Vec<(Arc<str>, usize)> = Vec::new();
        for region in self.inner.fresh_values(now) {
            match out.iter_mut().find(|(r, _)| *r == region) {
                Some((_, n)) => *n += 1,
                None => out.push((region, 1)),
            }
        }
        out
    }

    pub fn purge(&self, now: Millis) {
        self.inner.purge(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(i: u8) -> ClientKey {
        ClientKey::new(std::net::IpAddr::from([10, 0, i, 1]), 24)
    }

    const MIN15: Duration = Duration::from_secs(900);

    fn at(t: &AffinityTable, c: ClientKey, repo: &str, now: Millis) -> Option<String> {
        t.get(c, repo, now).map(|(r, _)| r.to_string())
    }

    #[test]
    fn since_is_kept_while_the_region_stays() {
        let t = AffinityTable::new(10, MIN15);
        t.record(client(1), "a", "westus", 100);
        t.record(client(1), "a", "westus", 200);
        assert_eq!(t.get(client(1), "a", 300).map(|e| e.1), Some(100));
        t.record(client(1), "a", "eastus", 400);
        assert_eq!(t.get(client(1), "a", 500).map(|e| e.1), Some(400));
    }

    #[test]
    fn pins_per_client_and_repository_until_idle() {
        let t = AffinityTable::new(100, MIN15);
        t.record(client(1), "team/app", "westus", 0);
        t.record(client(1), "team/tool", "eastus", 0);
        assert_eq!(at(&t, client(1), "team/app", 10).as_deref(), Some("westus"));
        assert_eq!(
            at(&t, client(1), "team/tool", 10).as_deref(),
            Some("eastus")
        );
        assert_eq!(at(&t, client(2), "team/app", 10), None, "another client");
        // Each request refreshes: a push of an hour stays on one region.
        for m in 1..=6 {
            t.record(client(1), "team/app", "westus", m * 600_000);
        }
        assert_eq!(
            at(&t, client(1), "team/app", 6 * 600_000 + 899_999).as_deref(),
            Some("westus")
        );
        assert_eq!(at(&t, client(1), "team/app", 6 * 600_000 + 900_000), None);
        assert_eq!(at(&t, client(1), "team/tool", 900_000), None);
        t.purge(6 * 600_000 + 900_000);
        assert!(t.is_empty());
    }

    #[test]
    fn record_moves_an_affinity() {
        let t = AffinityTable::new(100, MIN15);
        t.record(client(1), "a", "westus", 0);
        t.record(client(1), "a", "eastus", 5);
        assert_eq!(at(&t, client(1), "a", 6).as_deref(), Some("eastus"));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn bounded_evicting_expired_then_least_recent() {
        let t = AffinityTable::new(10, MIN15);
        for i in 0..10 {
            t.record(client(i), "r", "westus", u64::from(i));
        }
        t.record(client(100), "r", "westus", 20);
        assert!(t.len() <= 10);
        assert_eq!(at(&t, client(0), "r", 21), None, "least recent evicted");
        assert_eq!(at(&t, client(9), "r", 21).as_deref(), Some("westus"));
        assert_eq!(at(&t, client(100), "r", 21).as_deref(), Some("westus"));

        let t = AffinityTable::new(3, MIN15);
        t.record(client(1), "r", "westus", 0);
        t.record(client(2), "r", "westus", 1_000_000);
        t.record(client(3), "r", "westus", 1_000_001);
        t.record(client(4), "r", "westus", 1_000_002);
        for i in 2..=4 {
            assert!(at(&t, client(i), "r", 1_000_003).is_some(), "{i} kept");
        }
    }

    #[test]
    fn sessions_counted_per_region_until_finished_or_idle() {
        let s = SessionTable::new(100, MIN15);
        let counts = |now| {
            let mut c: Vec<(String, usize)> = s
                .count_by_region(now)
                .into_iter()
                .map(|(r, n)| (r.to_string(), n))
                .collect();
            c.sort();
            c
        };
        s.touch("u1", "westus", 0);
        s.touch("u2", "westus", 0);
        s.touch("u3", "eastus", 100);
        assert_eq!(
            counts(200),
            vec![("eastus".into(), 1), ("westus".into(), 2)]
        );
        s.finish("u1");
        assert_eq!(
            counts(200),
            vec![("eastus".into(), 1), ("westus".into(), 1)]
        );
        assert_eq!(counts(900_100), vec![]);
    }
}
