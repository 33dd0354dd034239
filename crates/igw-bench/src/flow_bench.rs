//! Flow-controller throughput: enqueue + dispatch operations per second with a deep queue.

use std::sync::Arc;
use std::time::Instant as WallInstant;

use igw_core::Instant;
use igw_sched::flow::{FlowConfig, FlowController, QueuedRequest};

/// What [`run`] measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FlowBenchReport {
    /// Requests kept queued throughout.
    pub queued: usize,
    /// Flows (fairness ids) the queue is spread over.
    pub flows: usize,
    /// Priority bands used.
    pub bands: usize,
    /// Timed enqueue+dispatch pairs.
    pub pairs: usize,
    /// Pairs per second on one thread.
    pub pairs_per_s: f64,
    /// Single operations (enqueue or dispatch) per second.
    pub ops_per_s: f64,
}

/// Fills igw's flow controller (VTC fairness) with `queued` requests over `flows` flows and 3
/// bands, then times `pairs` rounds of one enqueue and one dispatch, so the depth stays `queued`.
pub fn run(queued: usize, flows: usize, pairs: usize) -> FlowBenchReport {
    let mut fc = match FlowController::new(FlowConfig::igw()) {
        Ok(fc) => fc,
        Err(e) => unreachable!("igw's default flow config is valid: {e}"),
    };
    let ids: Vec<Arc<str>> = (0..flows.max(1)).map(|i| Arc::from(format!("tenant-{i}"))).collect();
    let make = |id: u64| QueuedRequest {
        id,
        priority: [10, 0, -1][(id % 3) as usize],
        fairness_id: ids[(id as usize / 3) % ids.len()].clone(),
        bytes: 1000,
        enqueue_time: Instant::from_millis(id),
        ttl: None,
        slo_deadline: None,
        est_tokens: 500 + id % 300,
    };
    let mut next = 0u64;
    for _ in 0..queued {
        let _ = fc.enqueue(make(next));
        next += 1;
    }
    let now = Instant::from_secs_f64(1e6);
    let t0 = WallInstant::now();
    for _ in 0..pairs {
        let _ = fc.enqueue(make(next));
        next += 1;
        let _ = fc.dispatch(now, 0.0);
    }
    let secs = t0.elapsed().as_secs_f64().max(1e-9);
    FlowBenchReport {
        queued: fc.len(),
        flows: ids.len(),
        bands: 3,
        pairs,
        pairs_per_s: pairs as f64 / secs,
        ops_per_s: 2.0 * pairs as f64 / secs,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn depth_stays_constant() {
        let r = super::run(1000, 10, 500);
        assert_eq!(r.queued, 1000);
        assert!(r.ops_per_s > 0.0);
    }
}
