//! Sticky memory: (routed name, client key) -> the region last answered, per instance.
//!
//! While a remembered region stays eligible it keeps being answered, even if latency estimates
//! move, so a push that resolves the name many times over minutes sees one region. Entries
//! expire after `idle` without queries and at `max_age` in any case (so a region that comes
//! back regains its clients within the hour).
//!
//! The table is bounded and compact ([`table`]): 16 bytes per slot plus 8 bytes of admission
//! sketch beside it, instead of a map entry holding the key and two timestamps (120 bytes).
//! At capacity, expired entries go first; past that, TinyLFU admission ([`admission`]) keeps
//! clients that query repeatedly over a flood of one-off client subnets.
//!
//! Keys and regions are stable hashes of *names* ([`crate::routing::stable_key`]), not config
//! indices: a reload that adds, removes or reorders regions or routed names needs no remap, and
//! a DNS thread still answering from the previous snapshot writes entries that mean the same
//! thing under the new one. A remembered region that is gone resolves to nothing.
//!
//! Time is a parameter ([`Millis`], from a monotonic clock the caller owns), never read here,
//! so tests drive it directly. Not here: whether a region is eligible (the routing core says).

mod admission;
mod table;

use std::time::Duration;

pub use crate::expiring::Millis;
use crate::routing::ClientKey;
pub use table::StickyStats;

/// Identifies one remembered client: which routed name (stable key of its name) and who.
pub type StickyKey = (u64, ClientKey);

/// Where a key lives in a [`StickyTable`] (its hash, taken apart); only that table's.
#[derive(Clone, Copy)]
pub struct Place(table::Place);

pub struct StickyTable {
    /// Values: the stable key of the region's name.
    table: table::Table,
}

impl StickyTable {
    /// Room for `capacity` clients (rounded up to a multiple of 8), each forgotten `idle`
    /// after its last query and `max_age` after it got its region.
    pub fn new(capacity: usize, idle: Duration, max_age: Duration) -> StickyTable {
        let ms = |d: Duration| Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX);
        StickyTable {
            table: table::Table::new(capacity, ms(idle), ms(max_age)),
        }
    }

    /// Where `key` lives: hash it once for a [`Self::prefetch`] and [`Self::remember_at`].
    pub fn place(&self, key: &StickyKey) -> Place {
        Place(self.table.place(key))
    }

    /// The remembered region (stable key of its name) for `key`, if the memory is still fresh.
    pub fn get(&self, key: &StickyKey, now: Millis) -> Option<u64> {
        self.table.get(&self.place(key).0, now)
    }

    /// Start loading the memory of the place into the CPU cache: call it early, and do other
    /// work before [`Self::remember_at`] (see [`crate::memory::prefetch`]).
    pub fn prefetch(&self, place: &Place) {
        self.table.prefetch(&place.0)
    }

    /// Record that `key` was answered with `region` (or with nothing: forget it) at `now`.
    pub fn record(&self, key: StickyKey, region: Option<u64>, now: Millis) {
        let place = self.place(&key);
        match region {
            Some(r) => self.table.record(&place.0, r, now),
            None => self.table.remove(&place.0),
        }
    }

    /// [`Self::get`] then [`Self::record`] in one pass (one lock, one look at the bucket):
    /// `decide` gets the remembered region and returns its result and the region answered
    /// (None: forget the client). It runs under the lock of one of 64 shards: keep it short.
    pub fn remember_at<R>(
        &self,
        place: &Place,
        now: Millis,
        decide: impl FnOnce(Option<u64>) -> (R, Option<u64>),
    ) -> R {
        self.table.update(&place.0, now, decide)
    }

    pub fn len(&self) -> usize {
        self.table.stats().entries
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries, evictions and admission rejections so far.
    pub fn stats(&self) -> StickyStats {
        self.table.stats()
    }

    /// The most entries the table holds: `capacity` rounded up to a multiple of 8.
    pub fn slots(&self) -> usize {
        self.table.slots()
    }

    /// The slots' memory and how much of it the kernel put on huge pages (see
    /// [`crate::memory::Backing`]).
    pub fn backing(&self) -> crate::memory::Backing {
        self.table.backing()
    }

    /// Bytes the table holds (slots, sketch, shard headers), for the bytes-per-entry figure.
    pub fn allocated_bytes(&self) -> usize {
        self.table.allocated_bytes()
    }
}

/// The table's own counters, in Prometheus text (its size is `berth_sticky_entries`).
pub fn render_metrics(o: &mut String, s: &StickyStats) {
    use std::fmt::Write;
    let _ = write!(
        o,
        "# HELP berth_sticky_evictions_total Remembered clients dropped from a full sticky \
         table to admit a more frequent one.\n\
         # TYPE berth_sticky_evictions_total counter\n\
         berth_sticky_evictions_total {}\n\
         # HELP berth_sticky_admission_rejections_total Clients not remembered because the \
         sticky table was full of clients at least as frequent (one-off subnets, mostly).\n\
         # TYPE berth_sticky_admission_rejections_total counter\n\
         berth_sticky_admission_rejections_total {}\n",
        s.evictions, s.rejections
    );
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

    fn client(n: u32) -> StickyKey {
        let b = n.to_be_bytes();
        (
            7,
            ClientKey::new(std::net::IpAddr::from([b[1], b[2], b[3], 0]), 24),
        )
    }

    /// What the DNS path does per query: read the memory, answer, record the answer.
    fn query(t: &StickyTable, key: StickyKey, fresh: u64, now: Millis) -> u64 {
        let region = t.get(&key, now).unwrap_or(fresh);
        t.record(key, Some(region), now);
        region
    }

    #[test]
    fn expired_entries_make_room_first() {
        let t = table(8);
        for n in 0..8 {
            t.record(client(n), Some(1), 0);
        }
        assert_eq!(t.len(), 8);
        t.record(client(100), Some(2), 1_000_000);
        assert_eq!(
            t.get(&client(100), 1_000_001),
            Some(2),
            "took an expired slot"
        );
        assert!(t.len() <= t.slots());
    }

    #[test]
    fn a_full_table_turns_away_one_offs_but_admits_a_repeating_client() {
        let t = table(8);
        for n in 0..8 {
            t.record(client(n), Some(1), 0);
        }
        t.record(client(100), Some(2), 1);
        assert_eq!(
            t.get(&client(100), 2),
            None,
            "a one-off does not evict a peer"
        );
        assert_eq!(t.stats().rejections, 1);
        for now in 3..6 {
            t.record(client(100), Some(2), now);
        }
        assert_eq!(t.get(&client(100), 7), Some(2), "asked again: admitted");
        assert_eq!(t.stats().evictions, 1);
        assert_eq!(t.len(), 8);
    }

    /// The case: while a few clients are in the middle of a push (a query per round),
    /// a flood of one-off client subnets, each round twice the table's size, goes by. The
    /// pushing clients keep their region throughout. Plain LRU (evict the least recent,
    /// always admit) loses them within a round: 16 newcomers land in each bucket of 8.
    #[test]
    fn a_flood_of_one_off_subnets_does_not_move_clients_in_a_push() {
        let t = table(1024);
        let pushing: Vec<StickyKey> = (0..32u32).map(|n| client(0x00ff_0000 + n)).collect();
        // In the middle of a push: each has resolved the name a few times already, seconds
        // apart (queries less than a second apart count once).
        for (n, key) in pushing.iter().enumerate() {
            for now in 0..3 {
                let now = now * 1_000;
                assert_eq!(query(&t, *key, n as u64 % 3 + 1, now), n as u64 % 3 + 1);
            }
        }
        let mut one_off = 0u32;
        for round in 1..40u64 {
            let now = 2_000 + round * 1_000;
            for _ in 0..2_048 {
                one_off += 1;
                query(&t, client(one_off), 9, now);
            }
            for (n, key) in pushing.iter().enumerate() {
                let first = n as u64 % 3 + 1;
                // The memoryless answer alternates, as jittering estimates would.
                let got = query(&t, *key, if round % 2 == 0 { first } else { 8 }, now);
                assert_eq!(got, first, "round {round}: client {n} moved");
            }
        }
        let s = t.stats();
        assert!(s.rejections > 50_000, "the flood was turned away: {s:?}");
        assert!(s.entries <= t.slots(), "bounded: {s:?}");
    }

    /// A burst of queries from one client (retries, A and AAAA together, a resolver without a
    /// cache) counts as one sighting; queries a second or more apart count each.
    #[test]
    fn queries_less_than_a_second_apart_count_once() {
        let t = table(8);
        // Five queries a second apart (the least recent last use), five in 4 ms, six once.
        for now in 0..5 {
            t.record(client(1), Some(1), now * 1_000);
        }
        for now in 4_000..4_005 {
            t.record(client(0), Some(1), now);
        }
        for n in 2..8 {
            t.record(client(n), Some(1), 5_000);
        }
        // A newcomer seen twice is more frequent than the burst, not than the steady client.
        t.record(client(100), Some(2), 6_000);
        t.record(client(100), Some(2), 6_001);
        assert_eq!(t.get(&client(100), 6_002), Some(2), "admitted");
        assert_eq!(t.get(&client(0), 6_002), None, "the burst counted once");
        assert_eq!(
            t.get(&client(1), 6_002),
            Some(1),
            "five seconds counted five"
        );
    }

    #[test]
    fn concurrent_use_stays_bounded_and_never_panics() {
        let t = std::sync::Arc::new(table(100));
        let threads: Vec<_> = (0..4u32)
            .map(|n| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for i in 0..50_000u32 {
                        let key = client(n * 1_000_000 + i % 20_000);
                        query(&t, key, u64::from(i % 3), u64::from(i));
                        if i % 7 == 0 {
                            t.record(key, None, u64::from(i));
                        }
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().expect("no panics");
        }
        let s = t.stats();
        assert!(s.entries <= t.slots() && t.slots() == 104, "bounded: {s:?}");
    }

    #[test]
    fn metrics_are_counters_with_help() {
        let mut o = String::new();
        let s = StickyStats {
            entries: 1,
            evictions: 2,
            rejections: 3,
        };
        render_metrics(&mut o, &s);
        let rows: Vec<&str> = o.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            rows,
            [
                "berth_sticky_evictions_total 2",
                "berth_sticky_admission_rejections_total 3"
            ]
        );
        assert!(o.contains("# TYPE berth_sticky_evictions_total counter\n"));
        assert!(o.contains("# TYPE berth_sticky_admission_rejections_total counter\n"));
        assert!(o.contains("# HELP berth_sticky_admission_rejections_total Clients not remembered because the sticky table was full"));
    }
}
