//! The compact sticky table: sharded, set-associative, 16 bytes per slot and 64 bytes of
//! frequency memory per bucket of 8 (24 bytes per slot in all).
//!
//! A key is hashed once (seeded per process). The hash picks a bucket of [`WAYS`] slots and
//! a 32-bit fingerprint; only the fingerprint is stored, never the key. Bucket `b` lives in
//! shard `b % shards`, each shard behind its own lock, so DNS threads meet only when they hit
//! the same shard. Each bucket carries its own frequency memory ([`Counts`]) in the cache
//! line after its slots: admission reads no memory the bucket did not bring. A slot holds:
//! the fingerprint (0: empty), the region as an index into the shard's list of region keys,
//! the last use in ms (48 bits), and the age at that use in ms (32 bits, see `max_age`).
//!
//! Inserting into a full bucket: an expired slot is reused first; otherwise the slot with the
//! lowest estimated frequency (ties: least recently used) is the victim, and the newcomer
//! takes it only if it is strictly more frequent (TinyLFU admission). A full table of live
//! entries thus turns away one-off keys and keeps clients that query again and again.
//!
//! Fingerprint collisions: two keys that share a bucket and a fingerprint are one entry. A
//! new key then reads another client's remembered region (still subject to the eligibility
//! check of routing, so only a valid, possibly less near, region) until that memory expires.
//! A lookup compares at most [`WAYS`] fingerprints, so the chance that a given new key hits
//! one is at most 8 / 2^32 = 1.9e-9: about one key in 540 million, whatever the table size
//! (0.002 expected collisions while a million distinct clients arrive).

use std::hash::BuildHasher;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU32, AtomicU64};

use parking_lot::Mutex;

use super::admission::{mix, reduce, Counts};
use super::{Millis, StickyKey};

/// Slots per bucket: 8 x 16 bytes, two cache lines, compared in one pass.
pub(super) const WAYS: usize = 8;
/// Shards (locks) at most: enough for many DNS threads on few cores.
const MAX_SHARDS: usize = 64;
/// Times are kept in 48 bits of ms (8,900 years of uptime).
const TIME_MAX: u64 = (1 << 48) - 1;
/// A remembered client's queries count in the frequency sketch at most once per this many
/// ms. Frequency is what tells a client that comes back from a one-off subnet; a resolver
/// that asks 100 times a second is not 100 times more worth keeping than one that asks once a
/// second, and counting every query would also dirty the bucket's third line per answer. A
/// client in a push still counts once per second it queries.
const COUNT_EVERY: Millis = 1_000;

/// One slot as four words:
/// `[fingerprint, region index | last use >> 32 << 16, last use (low 32 bits), age]`.
type Slot = [u32; 4];

fn seen(s: &Slot) -> u64 {
    (u64::from(s[1] >> 16) << 32) | u64::from(s[2])
}

fn region_of(s: &Slot) -> u16 {
    s[1] as u16
}

/// When the slot got its region (the age saturates at 49.7 days: see `Limits::new`).
fn since(s: &Slot) -> u64 {
    seen(s).saturating_sub(u64::from(s[3]))
}

fn fill(s: &mut Slot, fp: u32, region: u16, since: u64, now: u64) {
    let now = now.min(TIME_MAX);
    let age = u32::try_from(now.saturating_sub(since)).unwrap_or(u32::MAX);
    *s = [
        fp,
        u32::from(region) | (((now >> 32) as u32) << 16),
        now as u32,
        age,
    ];
}

/// The idle and age limits, in ms.
#[derive(Clone, Copy)]
struct Limits {
    idle: u64,
    max_age: u64,
}

impl Limits {
    /// Ages are stored in 32 bits of ms: a `max_age` past 49.7 days counts as 49.7 days, so
    /// a saturated age always reads as expired, never as younger than it is.
    fn new(idle: Millis, max_age: Millis) -> Limits {
        Limits {
            idle,
            max_age: max_age.min(u64::from(u32::MAX)),
        }
    }

    fn live(&self, s: &Slot, now: Millis) -> bool {
        now.saturating_sub(seen(s)) < self.idle && now.saturating_sub(since(s)) < self.max_age
    }
}

/// Counts for metrics, summed over shards.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StickyStats {
    /// Occupied slots (expired ones included until reused, as before).
    pub entries: usize,
    /// Live entries dropped to admit a more frequent newcomer.
    pub evictions: u64,
    /// Newcomers turned away: the table was full of live, at least as frequent entries.
    pub rejections: u64,
}

struct Shard {
    /// Region keys (stable hashes of region names) the slots index: a handful, appended
    /// once per name ever answered.
    regions: Vec<u64>,
    stats: StickyStats,
}

/// A shard on its own cache lines, so threads on neighbouring shards do not share them.
#[repr(align(64))]
struct Padded(Mutex<Shard>);

/// One slot's words as stored (see [`Bucket`]).
type Cell = [AtomicU32; 4];

fn load(c: &Cell) -> Slot {
    c.each_ref().map(|w| w.load(Relaxed))
}

fn store(c: &Cell, s: Slot) {
    for (w, v) in c.iter().zip(s) {
        w.store(v, Relaxed);
    }
}

/// One bucket: its slots (two cache lines) and its frequency memory (a third line, see
/// [`Counts`]). Every bucket sits in one array so that the array can be on huge pages
/// ([`crate::memory`]). A bucket is read and written only under its shard's lock: the words
/// are atomics (relaxed: plain loads and stores) only so that safe code can keep the array
/// beside the locks rather than split into them.
#[repr(C, align(64))]
#[derive(Default)]
struct Bucket {
    cells: [Cell; WAYS],
    /// [`Counts`]: two words of counters, four of doorkeeper bits, the sightings, one spare.
    freq: [AtomicU64; 8],
}

impl Bucket {
    fn counts(&self) -> Counts {
        let w = |i: usize| self.freq[i].load(Relaxed);
        Counts {
            counters: [w(0), w(1)],
            door: [w(2), w(3), w(4), w(5)],
            samples: w(6),
        }
    }

    fn set_counts(&self, c: &Counts) {
        let words = c.counters.iter().chain(&c.door).chain([&c.samples]);
        for (w, v) in self.freq.iter().zip(words) {
            w.store(*v, Relaxed);
        }
    }
}

struct Slots {
    buckets: Vec<Bucket>,
    backing: crate::memory::Backing,
}

impl Slots {
    fn new(n: usize) -> Slots {
        let mut buckets = Vec::with_capacity(n + crate::memory::huge_page_slack::<Bucket>(n));
        crate::memory::advise_huge_pages(&buckets);
        buckets.extend((0..n).map(|_| Bucket::default()));
        // Written above, so the kernel has decided how to back them.
        let backing = crate::memory::backing(&buckets);
        Slots { buckets, backing }
    }

    fn bucket(&self, p: &Place) -> &Bucket {
        &self.buckets[p.bucket]
    }
}

/// Where a key lives: computed once per query, for the read and the write that follow.
#[derive(Clone, Copy)]
pub(super) struct Place {
    shard: usize,
    bucket: usize,
    fp: u32,
}

impl Place {
    /// The key as its bucket's frequency memory knows it: the fingerprint, the one thing a
    /// resident's slot keeps of it (the memory is the bucket's own, so the bucket need not
    /// be part of it).
    fn item(&self) -> u64 {
        u64::from(self.fp)
    }
}

pub(super) struct Table {
    shards: Box<[Padded]>,
    slots: Slots,
    buckets: usize,
    /// Seeded at random per process: clients choose their ECS subnets, and must not be able
    /// to aim them at one bucket or one fingerprint.
    hasher: foldhash::fast::RandomState,
    limits: Limits,
}

impl Table {
    /// Room for `capacity` entries, rounded up to whole buckets.
    pub(super) fn new(capacity: usize, idle: Millis, max_age: Millis) -> Table {
        let buckets = capacity.max(1).div_ceil(WAYS);
        let n = buckets.min(MAX_SHARDS);
        // Bucket b belongs to shard b % n: every shard gets its fair share.
        let shards = (0..n)
            .map(|_| {
                Padded(Mutex::new(Shard {
                    regions: Vec::new(),
                    stats: StickyStats::default(),
                }))
            })
            .collect();
        Table {
            shards,
            slots: Slots::new(buckets),
            buckets,
            hasher: foldhash::fast::RandomState::default(),
            limits: Limits::new(idle, max_age),
        }
    }

    pub(super) fn place(&self, key: &StickyKey) -> Place {
        let h = mix(self.hasher.hash_one(key));
        let bucket = reduce(h, self.buckets);
        let n = self.shards.len();
        // The low half: independent of the high bits that chose the bucket. 0 means empty.
        let fp = (h as u32).max(1);
        Place {
            shard: bucket % n,
            bucket,
            fp,
        }
    }

    fn shard(&self, p: &Place) -> parking_lot::MutexGuard<'_, Shard> {
        self.shards[p.shard].0.lock()
    }

    /// Start loading the bucket of `p` into the cache, without taking its lock: a hint
    /// that lets a [`Table::get`] soon after find it there.
    pub(super) fn prefetch(&self, p: &Place) {
        // All three lines: a newcomer's admission reads the third (its counts). For a known
        // client it is one prefetch more, which cost nothing measurable on warm sets.
        let at = self.slots.bucket(p) as *const Bucket as usize;
        for line in (0..size_of::<Bucket>()).step_by(64) {
            crate::memory::prefetch(at + line);
        }
    }

    pub(super) fn get(&self, p: &Place, now: Millis) -> Option<u64> {
        let s = self.shard(p);
        let slot = self
            .slots
            .bucket(p)
            .cells
            .iter()
            .filter(|c| c[0].load(Relaxed) == p.fp)
            .map(load)
            .find(|x| self.limits.live(x, now))?;
        s.regions.get(usize::from(region_of(&slot))).copied()
    }

    pub(super) fn record(&self, p: &Place, region: u64, now: Millis) {
        self.update(p, now, |_| ((), Some(region)));
    }

    /// Read and write `p`'s memory in one pass under one lock: `decide` gets the remembered
    /// region (if fresh) and returns its result and the region to remember (None: forget).
    pub(super) fn update<R>(
        &self,
        p: &Place,
        now: Millis,
        decide: impl FnOnce(Option<u64>) -> (R, Option<u64>),
    ) -> R {
        let mut shard = self.shard(p);
        let b = self.slots.bucket(p);
        let cells = &b.cells;
        // At most one slot holds a fingerprint: an insert only happens when none does.
        let mine = cells.iter().position(|c| c[0].load(Relaxed) == p.fp);
        let slot = mine.map(|i| load(&cells[i]));
        let remembered = slot
            .filter(|s| self.limits.live(s, now))
            .and_then(|s| shard.regions.get(usize::from(region_of(&s))).copied());
        let (out, region) = decide(remembered);
        match (mine, slot, region) {
            (Some(i), Some(mut s), Some(r)) => {
                if shard.refresh(&mut s, r, now, self.limits) {
                    // Counted: a resident's sighting, at most once per COUNT_EVERY.
                    let mut counts = b.counts();
                    counts.increment_known(p.item());
                    b.set_counts(&counts);
                }
                store(&cells[i], s);
            }
            (Some(i), _, None) => {
                store(&cells[i], [0; 4]);
                shard.stats.entries -= 1;
            }
            (None, _, Some(r)) => {
                let mut bucket: [Slot; WAYS] = std::array::from_fn(|i| load(&cells[i]));
                let mut counts = b.counts();
                let changed = shard.insert(p, &mut bucket, &mut counts, r, now, self.limits);
                b.set_counts(&counts);
                if let Some(i) = changed {
                    store(&cells[i], bucket[i]);
                }
            }
            _ => {}
        }
        out
    }

    pub(super) fn remove(&self, p: &Place) {
        self.update(p, 0, |_| ((), None));
    }

    /// The slots' memory: its size and how much sits on huge pages (measured at start).
    pub(super) fn backing(&self) -> crate::memory::Backing {
        self.slots.backing
    }

    pub(super) fn stats(&self) -> StickyStats {
        let mut t = StickyStats::default();
        for s in self.shards.iter() {
            let s = s.0.lock().stats;
            t.entries += s.entries;
            t.evictions += s.evictions;
            t.rejections += s.rejections;
        }
        t
    }

    /// Bytes the table holds, heap and inline (for the bytes-per-entry figure).
    pub(super) fn allocated_bytes(&self) -> usize {
        let inline = size_of::<Table>() + size_of_val(&*self.shards);
        let heap: usize = self
            .shards
            .iter()
            .map(|s| s.0.lock().regions.capacity() * 8)
            .sum();
        inline + heap + self.slots.buckets.capacity() * size_of::<Bucket>()
    }

    /// Total slots: the bound on entries.
    pub(super) fn slots(&self) -> usize {
        self.buckets * WAYS
    }
}

impl Shard {
    /// The region's index in this shard's list, added if new (None past 65,536 names ever).
    fn region_index(&mut self, key: u64) -> Option<u16> {
        if let Some(i) = self.regions.iter().position(|r| *r == key) {
            return u16::try_from(i).ok();
        }
        let i = u16::try_from(self.regions.len()).ok()?;
        self.regions.push(key);
        Some(i)
    }

    /// A resident's own slot `s`, answered `region_key` again at `now`. True when this
    /// sighting counts in the bucket's frequency memory: at most once per [`COUNT_EVERY`]
    /// (see there), straight into the sketch (it is known: the doorkeeper has nothing to
    /// absorb).
    fn refresh(&mut self, s: &mut Slot, region_key: u64, now: Millis, limits: Limits) -> bool {
        let Some(region) = self.region_index(region_key) else {
            // Cannot happen with real configs (65,536 region names); forgetting is safe.
            *s = [0; 4];
            self.stats.entries -= 1;
            return false;
        };
        let live = limits.live(s, now);
        let counts = !live || now.saturating_sub(seen(s)) >= COUNT_EVERY;
        let keep = region_of(s) == region && live;
        let start = if keep { since(s) } else { now };
        let fp = s[0];
        fill(s, fp, region, start, now);
        counts
    }

    /// A newcomer `p` (no slot holds its fingerprint) answered `region_key`: into `bucket`
    /// (the bucket's slots, copied out under the shard's lock) if it is admitted; the slot
    /// changed, if any, for the caller to store.
    fn insert(
        &mut self,
        p: &Place,
        bucket: &mut [Slot; WAYS],
        freq: &mut Counts,
        region_key: u64,
        now: Millis,
        limits: Limits,
    ) -> Option<usize> {
        let region = self.region_index(region_key)?;
        freq.increment(p.item());
        if let Some(i) = bucket.iter().position(|s| s[0] == 0) {
            fill(&mut bucket[i], p.fp, region, now, now);
            self.stats.entries += 1;
            return Some(i);
        }
        if let Some(i) = bucket.iter().position(|s| !limits.live(s, now)) {
            fill(&mut bucket[i], p.fp, region, now, now);
            return Some(i);
        }
        // Full of live entries: the least frequent (then least recent) makes way if the
        // newcomer is strictly more frequent. Only residents below the newcomer can lose, so
        // only they are estimated in full (see `estimate_below`).
        let newcomer = freq.estimate(p.item());
        let victim = bucket
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                Some((freq.estimate_below(u64::from(s[0]), newcomer)?, seen(s), i))
            })
            .min();
        match victim {
            Some((_, _, i)) => {
                fill(&mut bucket[i], p.fp, region, now, now);
                self.stats.evictions += 1;
                Some(i)
            }
            _ => {
                self.stats.rejections += 1;
                None
            }
        }
    }
}
