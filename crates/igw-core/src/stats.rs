//! The one definition of a percentile that every igw report uses: the simulator's rows, the
//! real-time runner (`igw bench run` / `compare`), `igw bench extproc` and `igw bench scheduler`,
//! so figures side by side in one table mean the same thing.
//!
//! Nearest rank: the `p` quantile of `n` samples is the smallest sample such that at least
//! `p × n` samples are less than or equal to it, i.e. the sample of rank `⌈p·n⌉` (1-based) in
//! ascending order; `p = 0` gives the minimum. No interpolation: the answer is always an observed
//! value. An empty set has no quantile; these functions answer 0 for it.

/// The `p` quantile (`0..=1`, clamped) of ascending `sorted` samples, by nearest rank; 0 when
/// empty.
pub fn quantile_sorted(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        n => sorted[nearest_rank(n, p) - 1],
    }
}

/// The `p` quantile of `samples` by nearest rank (sorts them in place); 0 when empty.
pub fn quantile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_unstable_by(f64::total_cmp);
    quantile_sorted(samples, p)
}

/// The 1-based nearest rank of the `p` quantile among `n ≥ 1` samples: `⌈p·n⌉`, at least 1.
pub fn nearest_rank(n: usize, p: f64) -> usize {
    let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
    ((p * n as f64).ceil() as usize).clamp(1, n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nearest_rank_by_example() {
        let mut v: Vec<f64> = (1..=10).rev().map(f64::from).collect();
        assert_eq!(quantile(&mut v, 0.5), 5.0);
        assert_eq!(quantile_sorted(&v, 0.9), 9.0);
        assert_eq!(quantile_sorted(&v, 0.91), 10.0);
        assert_eq!(quantile_sorted(&v, 0.0), 1.0);
        assert_eq!(quantile_sorted(&v, 1.0), 10.0);
        assert_eq!(quantile_sorted(&[], 0.5), 0.0);
        assert_eq!(quantile_sorted(&[3.0], f64::NAN), 3.0);
    }

    proptest! {
        /// At least p·n samples are ≤ the quantile, and fewer than p·n are < it.
        #[test]
        fn the_quantile_splits_the_samples_at_p(v in proptest::collection::vec(-1e6f64..1e6, 1..200), p in 0.0f64..=1.0) {
            let mut v = v;
            let q = quantile(&mut v, p);
            let n = v.len() as f64;
            let le = v.iter().filter(|x| **x <= q).count() as f64;
            let lt = v.iter().filter(|x| **x < q).count() as f64;
            prop_assert!(le >= p * n - 1e-9);
            prop_assert!(lt < (p * n).max(1.0));
        }
    }
}
