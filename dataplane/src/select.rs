//! Per-query selection among a plan's precomputed candidates: the worker's
//! random generator and the weighted draw.
//!
//! Hot path: nothing here allocates, locks or panics. Picks live in a
//! fixed-size array on the stack, which is why one answer carries at most
//! [`MAX_PICKS`] candidates of a weighted or failover plan (a larger
//! `max_answers` is capped; round-robin plans are not limited by it).
//!
//! The weighted draw works on the cumulative weights the snapshot computed
//! once per update (`cumulative[i]` = sum of the weights of candidates
//! `0..=i`), so one pick is a binary search. Further picks of the same
//! answer are drawn without replacement: each is a draw over the weights left
//! once the earlier picks are taken out, so `k` picks are `k` distinct
//! candidates, and a candidate of weight 0 is never picked.

// === constants ===

/// Most candidates one answer picks (weighted and failover plans).
pub const MAX_PICKS: usize = 16;

// === types ===

/// A small, fast, non-cryptographic generator (wyrand): one per worker, never
/// shared. Answers need an even spread, not secrecy.
#[derive(Clone, Debug)]
pub struct Rng(u64);

/// Up to [`MAX_PICKS`] candidate indices, in the order picked.
#[derive(Clone, Copy, Debug)]
pub struct Picks {
    idx: [u32; MAX_PICKS],
    len: usize,
}

// === impl Rng ===

impl Rng {
    /// A generator seeded with `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    }

    /// A number in `0..n` (0 when `n` is 0), by multiply-shift: the bias is
    /// below n / 2^64, far under anything a weight table can show.
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

// === impl Picks ===

impl Picks {
    /// No picks.
    pub const fn new() -> Self {
        Self {
            idx: [0; MAX_PICKS],
            len: 0,
        }
    }

    /// The picked indices, in pick order.
    #[inline]
    pub fn as_slice(&self) -> &[u32] {
        self.idx.get(..self.len).unwrap_or(&[])
    }

    /// Number of picks.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was picked.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn contains(&self, i: u32) -> bool {
        self.as_slice().contains(&i)
    }

    fn push(&mut self, i: u32) {
        if let Some(slot) = self.idx.get_mut(self.len) {
            *slot = i;
            self.len += 1;
        }
    }
}

impl Default for Picks {
    fn default() -> Self {
        Self::new()
    }
}

// === functions ===

/// Draws `min(k, MAX_PICKS, candidates of positive weight)` distinct
/// candidates by weight, without replacement. `cumulative` holds running
/// sums of the weights (non-decreasing; a step of 0 is a weight of 0).
pub fn weighted(cumulative: &[u64], k: usize, rng: &mut Rng) -> Picks {
    let mut picks = Picks::new();
    let Some(&total) = cumulative.last() else {
        return picks;
    };
    if total == 0 || k == 0 {
        return picks;
    }
    // First pick: a binary search for the first running sum above the draw.
    let r = rng.below(total);
    let first = cumulative.partition_point(|&c| c <= r);
    let Ok(first) = u32::try_from(first) else {
        return picks;
    };
    picks.push(first);
    let mut left = total - weight(cumulative, first as usize);
    // Later picks: a linear walk over the weights not taken yet.
    while picks.len() < k.min(MAX_PICKS) && left > 0 {
        let mut r = rng.below(left);
        let mut taken = None;
        for i in 0..cumulative.len() {
            let Ok(ix) = u32::try_from(i) else { break };
            let w = weight(cumulative, i);
            if w == 0 || picks.contains(ix) {
                continue;
            }
            if r < w {
                taken = Some((ix, w));
                break;
            }
            r -= w;
        }
        let Some((i, w)) = taken else { break };
        picks.push(i);
        left -= w;
    }
    picks
}

/// The first `min(k, MAX_PICKS, n)` of `n` candidates, in order (failover).
pub fn first(n: usize, k: usize) -> Picks {
    let mut picks = Picks::new();
    for i in 0..n.min(k).min(MAX_PICKS) {
        if let Ok(i) = u32::try_from(i) {
            picks.push(i);
        }
    }
    picks
}

/// Running sums of `weights`, saturating.
pub fn cumulative(weights: impl IntoIterator<Item = u32>) -> Box<[u64]> {
    let mut sum = 0u64;
    weights
        .into_iter()
        .map(|w| {
            sum = sum.saturating_add(u64::from(w));
            sum
        })
        .collect()
}

/// Weight of candidate `i` from the running sums.
#[inline]
fn weight(cumulative: &[u64], i: usize) -> u64 {
    let hi = cumulative.get(i).copied().unwrap_or(0);
    let lo = match i.checked_sub(1) {
        Some(p) => cumulative.get(p).copied().unwrap_or(0),
        None => 0,
    };
    hi.saturating_sub(lo)
}

// === tests ===

#[cfg(test)]
mod tests {
    use proptest::prelude::{any, prop_assert, prop_assert_eq, prop_oneof, proptest, Just};

    use super::*;

    fn counts(weights: &[u32], k: usize, n: usize, seed: u64) -> Vec<u64> {
        let cum = cumulative(weights.iter().copied());
        let mut rng = Rng::new(seed);
        let mut c = vec![0u64; weights.len()];
        for _ in 0..n {
            for &i in weighted(&cum, k, &mut rng).as_slice() {
                c[i as usize] += 1;
            }
        }
        c
    }

    #[test]
    fn single_pick_follows_weights() {
        let weights = [70, 20, 10, 0];
        let n = 100_000;
        let c = counts(&weights, 1, n, 1);
        for (w, got) in weights.iter().zip(&c) {
            let share = *got as f64 / n as f64 * 100.0;
            assert!(
                (share - f64::from(*w)).abs() < 2.0,
                "weight {w}: {share:.2} %"
            );
        }
        assert_eq!(c[3], 0, "weight 0 never picked");
    }

    #[test]
    fn rng_is_uniform_enough() {
        let mut rng = Rng::new(0);
        let mut buckets = [0u32; 10];
        for _ in 0..100_000 {
            buckets[rng.below(10) as usize] += 1;
        }
        for b in buckets {
            assert!((9_700..10_300).contains(&b), "{buckets:?}");
        }
    }

    #[test]
    fn empty_and_zero_weights_pick_nothing() {
        let mut rng = Rng::new(3);
        assert!(weighted(&[], 1, &mut rng).is_empty());
        assert!(weighted(&cumulative([0, 0]), 2, &mut rng).is_empty());
        assert!(weighted(&cumulative([5]), 0, &mut rng).is_empty());
        assert_eq!(first(3, 2).as_slice(), [0, 1]);
        assert_eq!(first(1, 5).as_slice(), [0]);
        assert_eq!(first(40, 40).len(), MAX_PICKS);
    }

    proptest! {
        #[test]
        fn picks_are_distinct_positive_candidates(
            weights in proptest::collection::vec(prop_oneof![Just(0u32), 0u32..=1000], 0..40),
            k in 0usize..24,
            seed in any::<u64>(),
        ) {
            let cum = cumulative(weights.iter().copied());
            let mut rng = Rng::new(seed);
            let picks = weighted(&cum, k, &mut rng);
            let positive = weights.iter().filter(|&&w| w > 0).count();
            prop_assert_eq!(picks.len(), k.min(positive).min(MAX_PICKS));
            let mut seen = std::collections::HashSet::new();
            for &i in picks.as_slice() {
                prop_assert!((i as usize) < weights.len(), "index in range");
                prop_assert!(weights[i as usize] > 0, "weight 0 picked");
                prop_assert!(seen.insert(i), "picked twice");
            }
        }

        #[test]
        fn first_is_a_prefix(n in 0usize..40, k in 0usize..40) {
            let p = first(n, k);
            prop_assert_eq!(p.len(), n.min(k).min(MAX_PICKS));
            for (j, &i) in p.as_slice().iter().enumerate() {
                prop_assert_eq!(i as usize, j);
            }
        }
    }
}
