//! Seeded shuffles, for tests that deliver the same events in many orders.

use rand::SeedableRng;
use rand::seq::SliceRandom;

/// A deterministic shuffle, so that a test that fails for one delivery order can be reproduced
/// from its seed: `rand`'s Fisher-Yates driven by Xoshiro256++, an algorithm with a fixed
/// output for a given seed (unlike `StdRng`, which may change between `rand` versions).
pub fn shuffled<T: Clone>(items: &[T], seed: u64) -> Vec<T> {
    let mut out = items.to_vec();
    out.shuffle(&mut rand::rngs::Xoshiro256PlusPlus::seed_from_u64(seed));
    out
}

#[cfg(test)]
mod tests {
    use super::shuffled;

    #[test]
    fn a_seed_gives_one_permutation() {
        let items: Vec<u32> = (0..50).collect();
        let once = shuffled(&items, 7);
        assert_eq!(once, shuffled(&items, 7), "same seed, same order");
        assert_ne!(once, shuffled(&items, 8), "another seed, another order");
        assert_ne!(once, items, "shuffled at all");
        let mut sorted = once;
        sorted.sort_unstable();
        assert_eq!(sorted, items, "a permutation");
    }
}
