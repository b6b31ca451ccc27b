//! TinyLFU's frequency estimate for one shard of the sticky table: a doorkeeper (a Bloom
//! filter that absorbs first sightings) in front of a count-min sketch of 4-bit counters,
//! both aged together every `sample` increments (counters halved, doorkeeper cleared).
//!
//! Why: a flood of one-off client subnets (ECS is chosen by the client) only ever sets
//! doorkeeper bits, so it barely moves the sketch, and a one-off key's estimate stays at 1
//! while a client that keeps querying counts 2 and up. The table evicts the least frequent
//! entry of a full bucket and admits a newcomer only if it is strictly more frequent.
//!
//! Items are 64-bit hashes the caller derives from what the table stores (bucket and
//! fingerprint), so a resident entry's frequency can be read without its key. Pure: no clock,
//! no randomness (the caller's hash is seeded per process).

/// Four rows: the usual depth of a count-min sketch for cache admission (Caffeine's choice).
const ROWS: usize = 4;
/// Counters saturate here (4 bits).
const MAX_COUNT: u64 = 15;
/// Nibbles of a word, each halved by one shift and this mask.
const HALVE_MASK: u64 = 0x7777_7777_7777_7777;

pub(super) struct Frequency {
    /// 4-bit counters, 16 to a word, in blocks of 8 words (one cache line): an item's
    /// `ROWS` counters all sit in one block, one per pair of words, so a lookup or an
    /// increment costs one cache miss, not four (Caffeine's layout).
    counters: Vec<u64>,
    blocks: usize,
    /// The doorkeeper's bits, blocked too: a key seen once in this period sets two bits of
    /// one word.
    door: Vec<u64>,
    /// Increments since the last ageing, and how many age the counts (10x the shard's slots
    /// would be TinyLFU's textbook window; 8x keeps the doorkeeper at 4 bits per sample).
    samples: usize,
    period: usize,
}

/// `x` scaled into `0..n` (Lemire's multiply-shift: no division, no power-of-two sizes).
pub(super) fn reduce(x: u64, n: usize) -> usize {
    ((u128::from(x) * n as u128) >> 64) as usize
}

/// A strong 64-bit mixer (splitmix64's finaliser): spreads a bucket/fingerprint pair.
pub(super) fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Frequency {
    /// Sized for a shard of `slots` entries: 4 counters (2 bytes) and 32 doorkeeper bits
    /// (4 bytes) per slot.
    pub(super) fn new(slots: usize) -> Frequency {
        let blocks = (ROWS * slots).div_ceil(128).max(1);
        Frequency {
            counters: vec![0; blocks * 8],
            blocks,
            door: vec![0; (slots / 2).max(16)],
            samples: 0,
            period: (slots * 8).max(64),
        }
    }

    /// Heap bytes held (for the bytes-per-entry figure).
    pub(super) fn heap_bytes(&self) -> usize {
        (self.counters.capacity() + self.door.capacity()) * 8
    }

    /// The nibble index of `item`'s counter in `row`: its block from the item's high bits,
    /// word and nibble within the block from 5 more bits per row of a second hash.
    fn counter_index(&self, item: u64, row: usize) -> usize {
        let h2 = mix(item) >> (row * 8);
        let word = reduce(item, self.blocks) * 8 + row * 2 + (h2 & 1) as usize;
        word * 16 + ((h2 >> 1) & 0xf) as usize
    }

    fn counter(&self, i: usize) -> u64 {
        (self.counters[i / 16] >> ((i % 16) * 4)) & 0xf
    }

    /// The doorkeeper word of `item` and its two bits there.
    fn door_bits(&self, item: u64) -> (usize, u64) {
        let h2 = mix(item);
        let bits = (1 << ((h2 >> 40) & 63)) | (1 << ((h2 >> 46) & 63));
        (reduce(item.rotate_left(32), self.door.len()), bits)
    }

    fn door_has(&self, item: u64) -> bool {
        let (w, bits) = self.door_bits(item);
        self.door[w] & bits == bits
    }

    /// How often `item` was seen lately: the sketch's count, plus one if the doorkeeper
    /// remembers it.
    pub(super) fn estimate(&self, item: u64) -> u64 {
        self.sketch(item) + u64::from(self.door_has(item))
    }

    fn sketch(&self, item: u64) -> u64 {
        (0..ROWS)
            .map(|r| self.counter(self.counter_index(item, r)))
            .min()
            .unwrap_or(0)
    }

    /// [`Self::estimate`], if it is below `bound`. The doorkeeper is read first and the
    /// sketch only if that does not already decide: against a flood's one-off newcomer
    /// (bound 1), a resident seen since the last ageing costs one cache line, not two.
    pub(super) fn estimate_below(&self, item: u64, bound: u64) -> Option<u64> {
        let door = u64::from(self.door_has(item));
        if door >= bound {
            return None;
        }
        let f = self.sketch(item) + door;
        (f < bound).then_some(f)
    }

    /// One sighting of `item`: the doorkeeper takes the first, the sketch the later ones.
    pub(super) fn increment(&mut self, item: u64) {
        if self.door_has(item) {
            for r in 0..ROWS {
                let i = self.counter_index(item, r);
                if self.counter(i) < MAX_COUNT {
                    self.counters[i / 16] += 1 << ((i % 16) * 4);
                }
            }
        } else {
            let (w, bits) = self.door_bits(item);
            self.door[w] |= bits;
        }
        self.samples += 1;
        if self.samples >= self.period {
            self.age();
        }
    }

    /// One sighting of an `item` known to have been seen before (a resident of the table):
    /// straight into the sketch. The estimate is the same as through [`Self::increment`],
    /// where the doorkeeper takes one sighting and adds one to the estimate; this skips a
    /// cache miss on the doorkeeper's word.
    pub(super) fn increment_known(&mut self, item: u64) {
        for r in 0..ROWS {
            let i = self.counter_index(item, r);
            if self.counter(i) < MAX_COUNT {
                self.counters[i / 16] += 1 << ((i % 16) * 4);
            }
        }
        self.samples += 1;
        if self.samples >= self.period {
            self.age();
        }
    }

    /// Halve every count and forget first sightings: old popularity fades, so a client that
    /// stopped querying does not hold its place forever.
    fn age(&mut self) {
        for w in &mut self.counters {
            *w = (*w >> 1) & HALVE_MASK;
        }
        self.door.fill(0);
        self.samples = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_repeats_above_one_offs_and_ages() {
        let mut f = Frequency::new(1024);
        for i in 0..2_000u64 {
            f.increment(mix(i));
        }
        for _ in 0..6 {
            f.increment(mix(1_000_000));
        }
        assert_eq!(f.estimate(mix(1_000_000)), 6);
        let ones = (0..2_000u64).filter(|i| f.estimate(mix(*i)) <= 1).count();
        assert!(ones > 1_900, "one-offs estimate 1: {ones}");
        assert_eq!(f.estimate(mix(5_000_000)), 0, "never seen");
        // A period of other traffic ages the counts.
        for i in 10_000..10_000 + 8 * 1024u64 {
            f.increment(mix(i));
        }
        assert!(
            f.estimate(mix(1_000_000)) <= 3,
            "halved, doorkeeper cleared"
        );
    }

    #[test]
    fn estimate_below_is_the_estimate_under_the_bound() {
        let mut f = Frequency::new(64);
        for i in 0..300u64 {
            for _ in 0..i % 5 {
                f.increment(mix(i));
            }
        }
        let mut seen = [0usize; 2];
        for i in 0..400u64 {
            for bound in 0..8 {
                let e = f.estimate(mix(i));
                let below = f.estimate_below(mix(i), bound);
                assert_eq!(below, (e < bound).then_some(e), "item {i}, bound {bound}");
                seen[usize::from(below.is_some())] += 1;
            }
        }
        assert!(seen[0] > 100 && seen[1] > 100, "both outcomes: {seen:?}");
    }

    #[test]
    fn counters_saturate_without_overflowing_into_neighbours() {
        let mut f = Frequency::new(16);
        for _ in 0..40 {
            f.increment(7);
        }
        assert_eq!(f.estimate(7), MAX_COUNT + 1);
        // Four counters at 15 and nothing else: no increment carried into a neighbour.
        let total: u64 = f
            .counters
            .iter()
            .map(|w| (0..16).map(|n| (w >> (n * 4)) & 0xf).sum::<u64>())
            .sum();
        assert_eq!(total, ROWS as u64 * MAX_COUNT);
    }
}
