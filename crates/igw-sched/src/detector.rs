//! The utilization saturation detector and legacy shedding (`../shared/spec/scheduler.md` §4.2).

use std::sync::Arc;
use std::time::Duration;

use igw_core::{Endpoint, EndpointMetrics, Instant};

use crate::flow::PoolLoad;
use crate::scoring::unseen_in_flight;

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

    /// How full the pool of `endpoints` is at `now`: the one saturation model every admission
    /// decision uses (flow control's gate, legacy shedding, the discrete-event simulator).
    ///
    /// Each endpoint counts its scraped waiting requests plus igw's own in-flight requests that
    /// the last scrape cannot have seen yet ([`unseen_in_flight`]), so a burst between two scrapes
    /// does not look like an idle pool.
    pub fn pool_view(&self, endpoints: &[Arc<Endpoint>], now: Instant) -> PoolView {
        let mut in_flight = 0u64;
        let loads = endpoints
            .iter()
            .map(|e| {
                let m = e.metrics();
                let mine = e.in_flight().requests();
                in_flight += mine;
                let stale = m.is_stale(now, self.staleness);
                let waiting = f64::from(m.waiting) + f64::from(unseen_in_flight(mine, &m));
                EndpointLoad { waiting, kv_usage: m.kv_usage, stale }
            })
            .collect();
        PoolView { loads, in_flight, queue: self.queue_depth_threshold, kv: self.kv_cache_util_threshold }
    }
}

/// One endpoint as the saturation model sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct EndpointLoad {
    waiting: f64,
    kv_usage: f64,
    stale: bool,
}

/// The pool at one instant ([`UtilizationDetector::pool_view`]): saturation, and the load flow
/// control's dispatch cycle gates on while it releases requests one after the other.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolView {
    loads: Vec<EndpointLoad>,
    in_flight: u64,
    queue: f64,
    kv: f64,
}

impl PoolView {
    /// Saturation with `extra` requests released since the view was taken, spread evenly over the
    /// endpoints (they are not routed yet): the mean of `max((waiting + extra/n)/Q, kv/K)`, a stale
    /// endpoint counting 1. An empty pool is saturated (1.0). Can exceed 1.
    pub fn saturation(&self, extra: usize) -> f64 {
        if self.loads.is_empty() {
            return 1.0;
        }
        let n = self.loads.len() as f64;
        let per = extra as f64 / n;
        let sum: f64 = self
            .loads
            .iter()
            .map(|l| if l.stale { 1.0 } else { ((l.waiting + per) / self.queue).max(l.kv_usage / self.kv) })
            .sum();
        sum / n
    }

    /// The load flow control sees after releasing `extra` requests in this cycle.
    pub fn load(&self, extra: usize) -> PoolLoad {
        let n = self.loads.len().max(1) as f64;
        PoolLoad {
            saturation: self.saturation(extra),
            in_flight_per_endpoint: (self.in_flight + extra as u64) as f64 / n,
        }
    }

    /// Endpoints in the view.
    pub fn len(&self) -> usize {
        self.loads.len()
    }

    /// True when the pool has no endpoint.
    pub fn is_empty(&self) -> bool {
        self.loads.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
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

    #[test]
    fn the_pool_view_counts_unseen_in_flight_and_spreads_released_requests() {
        let d = UtilizationDetector::default();
        let now = Instant::from_millis(1_000);
        let ds = igw_core::Datastore::with_endpoints(
            ["10.0.0.1:8000", "10.0.0.2:8000"].map(|a| igw_core::EndpointMeta::parse_addr(a).unwrap()),
        );
        let eps = ds.snapshot().endpoints.clone();
        for e in &eps {
            e.set_metrics(EndpointMetrics { waiting: 1, running: 1, update_time: Some(now), ..Default::default() });
        }
        // Four requests sent to the first endpoint since its scrape saw two: two are unseen.
        (0..4).for_each(|_| eps[0].in_flight().add(10));
        let v = d.pool_view(&eps, now);
        assert_eq!(v.len(), 2);
        assert!((v.saturation(0) - ((3.0 / 5.0) + (1.0 / 5.0)) / 2.0).abs() < 1e-12);
        // Two more released this cycle: one per endpoint.
        assert!((v.saturation(2) - ((4.0 / 5.0) + (2.0 / 5.0)) / 2.0).abs() < 1e-12);
        assert_eq!(v.load(2).in_flight_per_endpoint, 3.0);
        assert_eq!(d.pool_view(&[], now).saturation(0), 1.0);
    }
}
