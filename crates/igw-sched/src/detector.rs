//! The utilization saturation detector and legacy shedding (`../shared/spec/scheduler.md` §4.2).

use std::time::Duration;

use igw_core::{EndpointMetrics, Instant};

/// `utilization-detector` parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UtilizationDetector {
    /// `queueDepthThreshold` (5).
    pub queue_depth_threshold: f64,
    /// `kvCacheUtilThreshold` (0.8).
    pub kv_cache_util_threshold: f64,
    /// `metricsStalenessThreshold` (200 ms): stale endpoints count as saturated.
    pub staleness: Duration,
}

impl Default for UtilizationDetector {
    fn default() -> Self {
        UtilizationDetector {
            queue_depth_threshold: 5.0,
            kv_cache_util_threshold: 0.8,
            staleness: Duration::from_millis(200),
        }
    }
}

impl UtilizationDetector {
    /// One endpoint's saturation: `max(waiting/Q, kv/K)`; 1.0 when stale or never scraped.
    pub fn endpoint_score(&self, m: &EndpointMetrics, now: Instant) -> f64 {
        if m.is_stale(now, self.staleness) {
            return 1.0;
        }
        (f64::from(m.waiting) / self.queue_depth_threshold).max(m.kv_usage / self.kv_cache_util_threshold)
    }

    /// Pool saturation: the mean endpoint score; 1.0 with no endpoints. Can exceed 1.
    pub fn saturation<'a>(&self, metrics: impl IntoIterator<Item = &'a EndpointMetrics>, now: Instant) -> f64 {
        let (mut sum, mut n) = (0.0, 0usize);
        for m in metrics {
            sum += self.endpoint_score(m, now);
            n += 1;
        }
        if n == 0 { 1.0 } else { sum / n as f64 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roofline_mean_and_staleness() {
        let d = UtilizationDetector::default();
        let now = Instant::from_millis(1_000);
        let fresh =
            |waiting, kv| EndpointMetrics { waiting, kv_usage: kv, update_time: Some(now), ..Default::default() };
        assert_eq!(d.endpoint_score(&fresh(5, 0.4), now), 1.0);
        assert_eq!(d.endpoint_score(&fresh(0, 0.4), now), 0.5);
        let stale = EndpointMetrics { update_time: Some(Instant::from_millis(500)), ..Default::default() };
        assert_eq!(d.endpoint_score(&stale, now), 1.0);
        assert_eq!(d.saturation([&fresh(0, 0.0), &fresh(10, 0.0)], now), 1.0);
        assert_eq!(d.saturation(std::iter::empty(), now), 1.0);
    }
}
