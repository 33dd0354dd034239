//! Request-length distributions.

use rand::Rng;
use rand_distr::{Distribution, LogNormal};

/// The LPG-fit ShareGPT lengths of spec/simulator.md §4: input = 75% LogNormal(median 75, σ 1.0) +
/// 25% U(300, 1024); output = LogNormal(median 164, σ 1.3); both truncated to [4, 1024] by rejection.
#[derive(Debug, Clone, Copy)]
pub struct ShareGptLengths {
    input: LogNormal<f64>,
    output: LogNormal<f64>,
}

/// Shortest sampled length.
pub const MIN_LEN: u32 = 4;
/// Longest sampled length.
pub const MAX_LEN: u32 = 1024;

impl Default for ShareGptLengths {
    fn default() -> Self {
        Self::new()
    }
}

fn lognormal(median: f64, sigma: f64) -> LogNormal<f64> {
    // Parameters are constants that are always valid; fall back to a degenerate distribution anyway.
    LogNormal::new(median.ln(), sigma).unwrap_or_else(|_| LogNormal::new(0.0, 0.0).unwrap_or_else(|_| unreachable!()))
}

fn truncated(d: &LogNormal<f64>, rng: &mut impl Rng) -> u32 {
    loop {
        let x = d.sample(rng).round();
        if (f64::from(MIN_LEN)..=f64::from(MAX_LEN)).contains(&x) {
            return x as u32;
        }
    }
}

impl ShareGptLengths {
    /// The distribution of §4.
    pub fn new() -> Self {
        ShareGptLengths { input: lognormal(75.0, 1.0), output: lognormal(164.0, 1.3) }
    }

    /// A prompt length in tokens.
    pub fn input(&self, rng: &mut impl Rng) -> u32 {
        if rng.random_bool(0.75) { truncated(&self.input, rng) } else { rng.random_range(300..=1024) }
    }

    /// An output length in tokens.
    pub fn output(&self, rng: &mut impl Rng) -> u32 {
        truncated(&self.output, rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    /// Means and medians land near the spec's (253/225 mean, 114/145 median), within 10%.
    #[test]
    fn sharegpt_fit_moments() {
        let d = ShareGptLengths::new();
        let mut rng = SmallRng::seed_from_u64(7);
        let n = 40_000;
        let mut ins: Vec<u32> = (0..n).map(|_| d.input(&mut rng)).collect();
        let mut outs: Vec<u32> = (0..n).map(|_| d.output(&mut rng)).collect();
        let mean = |v: &[u32]| v.iter().map(|x| f64::from(*x)).sum::<f64>() / v.len() as f64;
        ins.sort_unstable();
        outs.sort_unstable();
        let (mi, mo) = (mean(&ins), mean(&outs));
        assert!((mi - 253.0).abs() < 25.0, "input mean {mi}");
        assert!((mo - 225.0).abs() < 22.0, "output mean {mo}");
        assert!((f64::from(ins[n / 2]) - 114.0).abs() < 12.0, "input median {}", ins[n / 2]);
        assert!((f64::from(outs[n / 2]) - 145.0).abs() < 15.0, "output median {}", outs[n / 2]);
        assert!(ins.iter().chain(&outs).all(|x| (MIN_LEN..=MAX_LEN).contains(x)));
    }
}
