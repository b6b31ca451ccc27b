//! TinyLFU's frequency estimate for one bucket of the sticky table: a doorkeeper (a Bloom
//! filter that absorbs first sightings) in front of a count-min sketch of 4-bit counters,
//! both aged together every [`PERIOD`] sightings (counters halved, doorkeeper cleared).
//!
//! Why: a flood of one-off client subnets (ECS is chosen by the client) only ever sets
//! doorkeeper bits, so it barely moves the sketch, and a one-off key's estimate stays at 1
//! while a client that keeps querying counts 2 and up. The table evicts the least frequent
//! entry of a full bucket and admits a newcomer only if it is strictly more frequent.
//!
//! Items are what the table stores of a key (its fingerprint in the bucket), mixed here, so a
//! resident entry's frequency can be read without its key. Pure: no clock,
//! no randomness (the caller's hash is seeded per process).

/// Four rows: the usual depth of a count-min sketch for cache admission (Caffeine's choice).
const ROWS: usize = 4;
/// Counters per row: 32 4-bit counters per bucket, 4 per slot as before.
const PER_ROW: usize = 8;
/// Counters saturate here (4 bits).
const MAX_COUNT: u64 = 15;
/// Nibbles of a word, each halved by one shift and this mask.
const HALVE_MASK: u64 = 0x7777_7777_7777_7777;
/// Sightings between two ageings of a bucket: 8 per slot of its 8 (10 per slot would be
/// TinyLFU's textbook window; 8 keeps the doorkeeper at 4 bits per sighting).
pub(super) const PERIOD: u64 = 64;

/// One bucket's frequency memory: the count-min sketch (4 rows of 8 counters, 4 bits each),
/// the doorkeeper's 256 bits and the sightings since the last ageing. It is stored beside
/// the bucket's slots (one cache line) and copied in and out under the shard's lock: a
/// newcomer's admission reads the line its bucket already brought, not two lines elsewhere
/// (a cache and address-translation miss each, on a flood of one-off clients).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Counts {
    pub(super) counters: [u64; 2],
    pub(super) door: [u64; 4],
    pub(super) samples: u64,
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

impl Counts {
    /// The nibble index (0..32) of `item`'s counter in `row`, from 3 bits per row of a
    /// second hash.
    fn counter_index(item: u64, row: usize) -> usize {
        let h2 = mix(item);
        row * PER_ROW + ((h2 >> (row * 3)) & 7) as usize
    }

    fn counter(&self, i: usize) -> u64 {
        (self.counters[i / 16] >> ((i % 16) * 4)) & 0xf
    }

    /// The doorkeeper word of `item` and its two bits there.
    fn door_bits(item: u64) -> (usize, u64) {
        let h2 = mix(item);
        let bits = (1 << ((h2 >> 40) & 63)) | (1 << ((h2 >> 46) & 63));
        (((h2 >> 20) & 3) as usize, bits)
    }

    fn door_has(&self, item: u64) -> bool {
        let (w, bits) = Self::door_bits(item);
        self.door[w] & bits == bits
    }

    /// How often `item` was seen lately: the sketch's count, plus one if the doorkeeper
    /// remembers it.
    pub(super) fn estimate(&self, item: u64) -> u64 {
        self.sketch(item) + u64::from(self.door_has(item))
    }

    fn sketch(&self, item: u64) -> u64 {
        (0..ROWS)
            .map(|r| self.counter(Self::counter_index(item, r)))
            .min()
            .unwrap_or(0)
    }

    /// [`Self::estimate`], if it is below `bound`; the doorkeeper is read first and the
    /// sketch only if that does not already decide.
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
            self.count(item);
        } else {
            let (w, bits) = Self::door_bits(item);
            self.door[w] |= bits;
        }
        self.sighted();
    }

    /// One sighting of an `item` known to have been seen before (a resident of the table):
    /// straight into the sketch. The estimate is the same as through [`Self::increment`],
    /// where the doorkeeper takes one sighting and adds one to the estimate.
    pub(super) fn increment_known(&mut self, item: u64) {
        self.count(item);
        self.sighted();
    }

    fn count(&mut self, item: u64) {
        for r in 0..ROWS {
            let i = Self::counter_index(item, r);
            if self.counter(i) < MAX_COUNT {
                self.counters[i / 16] += 1 << ((i % 16) * 4);
            }
        }
    }

    fn sighted(&mut self) {
        self.samples += 1;
        if self.samples >= PERIOD {
            self.age();
        }
    }

    /// Halve every count and forget first sightings: old popularity fades, so a client that
    /// stopped querying does not hold its place forever.
    fn age(&mut self) {
        for w in &mut self.counters {
            *w = (*w >> 1) & HALVE_MASK;
        }
        self.door = [0; 4];
        self.samples = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_repeats_above_one_offs_and_ages() {
        let mut f = Counts::default();
        for i in 0..20u64 {
            f.increment(mix(i));
        }
        for _ in 0..6 {
            f.increment(mix(1_000_000));
        }
        assert_eq!(f.estimate(mix(1_000_000)), 6);
        let ones = (0..20u64).filter(|i| f.estimate(mix(*i)) <= 1).count();
        assert!(ones >= 18, "one-offs estimate 1: {ones}");
        // Never seen: 0, but for doorkeeper false positives (40 of 256 bits are set).
        let zeros = (100..200u64).filter(|i| f.estimate(mix(*i)) == 0).count();
        assert!(zeros >= 90, "never seen: {zeros} of 100 at 0");
        // A period of other traffic ages the counts.
        for i in 10_000..10_000 + PERIOD {
            f.increment(mix(i));
        }
        assert!(
            f.estimate(mix(1_000_000)) <= 3,
            "halved, doorkeeper cleared"
        );
    }

    #[test]
    fn estimate_below_is_the_estimate_under_the_bound() {
        let mut f = Counts::default();
        for i in 0..12u64 {
            for _ in 0..i % 5 {
                f.increment(mix(i));
            }
        }
        let mut seen = [0usize; 2];
        for i in 0..40u64 {
            for bound in 0..8 {
                let e = f.estimate(mix(i));
                let below = f.estimate_below(mix(i), bound);
                assert_eq!(below, (e < bound).then_some(e), "item {i}, bound {bound}");
                seen[usize::from(below.is_some())] += 1;
            }
        }
        assert!(seen[0] > 50 && seen[1] > 50, "both outcomes: {seen:?}");
    }

    #[test]
    fn counters_saturate_without_overflowing_into_neighbours() {
        let mut f = Counts::default();
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
