//! Exponential backoff with jitter. Pure: the jitter's randomness is a parameter.

use std::time::Duration;

/// The wait before attempt `attempt + 1` after `attempt` failures (1 = the first failure):
/// `initial * 2^(attempt-1)` capped at `max`, then "equal jitter": half of it fixed, half
/// scaled by `jitter` in [0, 1), so instances and jobs that failed together do not retry in
/// step.
pub fn delay(attempt: u32, initial: Duration, max: Duration, jitter: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let base = initial.saturating_mul(1u32 << exp).min(max);
    let j = jitter.clamp(0.0, 1.0);
    base / 2 + base.mul_f64(j / 2.0)
}

/// A jitter in [0, 1) from a seed (splitmix64), so the driver needs no random-number crate.
pub fn jitter_of(seed: u64) -> f64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_jitter_inside_half() {
        let s = Duration::from_secs;
        assert_eq!(delay(1, s(1), s(300), 0.0), Duration::from_millis(500));
        assert_eq!(delay(1, s(1), s(300), 1.0), s(1));
        assert_eq!(delay(4, s(1), s(300), 1.0), s(8));
        assert_eq!(delay(40, s(1), s(300), 1.0), s(300));
        assert!(delay(40, s(1), s(300), 0.3) >= s(150));
        let j: Vec<f64> = (0..1000).map(jitter_of).collect();
        assert!(j.iter().all(|x| (0.0..1.0).contains(x)));
        assert!(j.iter().sum::<f64>() / 1000.0 > 0.4);
    }
}
