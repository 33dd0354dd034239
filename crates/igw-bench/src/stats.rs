//! Percentiles: exact over stored samples ([`percentile`], igw's one definition,
//! [`igw_core::stats`]: nearest rank), or from a log-bucketed histogram for the many inter-token
//! gaps (1% relative resolution, the same rank).

pub use igw_core::stats::quantile as percentile;

/// A histogram of positive values in buckets 1% wide (relative), from 1 µs up.
#[derive(Debug, Clone, Default)]
pub struct LogHistogram {
    counts: Vec<u64>,
    total: u64,
}

const BASE: f64 = 1.01;
const MIN: f64 = 1e-6;

impl LogHistogram {
    /// Records `x` seconds (values below 1 µs land in the first bucket).
    pub fn record(&mut self, x: f64) {
        let i = if x <= MIN { 0 } else { ((x / MIN).ln() / BASE.ln()) as usize + 1 };
        if i >= self.counts.len() {
            self.counts.resize(i + 1, 0);
        }
        self.counts[i] += 1;
        self.total += 1;
    }

    /// Samples recorded.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The `p` quantile (the upper edge of its bucket); 0 when empty.
    pub fn quantile(&self, p: f64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let rank = igw_core::stats::nearest_rank(usize::try_from(self.total).unwrap_or(usize::MAX), p) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return if i == 0 { MIN } else { MIN * BASE.powi(i as i32) };
            }
        }
        MIN * BASE.powi(self.counts.len() as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_bucketed_agree_within_a_percent() {
        let mut v: Vec<f64> = (1..=1000).map(|i| f64::from(i) * 1e-3).collect();
        let mut h = LogHistogram::default();
        for x in &v {
            h.record(*x);
        }
        let exact = percentile(&mut v, 0.9);
        assert!((exact - 0.9).abs() < 1e-9);
        let approx = h.quantile(0.9);
        assert!((approx / exact - 1.0).abs() < 0.011, "{approx} vs {exact}");
        assert_eq!(h.len(), 1000);
        assert_eq!(percentile(&mut [], 0.5), 0.0);
        assert_eq!(LogHistogram::default().quantile(0.5), 0.0);
    }
}
