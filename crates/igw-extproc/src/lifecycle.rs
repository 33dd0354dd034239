//! Runs the shared request lifecycle ([`igw_request::Picker`]) behind the ext_proc [`Picker`]
//! port, so `igw epp` and `igw serve` make every decision with the same code.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use igw_core::time::{Clock, process_clock};
use igw_core::{Endpoint, Snapshot};
use igw_request::flow_gate::{FlowGate, Ticket};
use igw_request::{EndpointSubset, PreparedRequest, RequestError, ResponseSummary, candidates, pick_random_endpoint};

use crate::picker::{PickFuture, Picked, Picker};

/// Adapts any lifecycle picker (random, or igw's scheduler) to the ext_proc port.
#[derive(Debug)]
pub struct Lifecycle<P> {
    inner: Arc<P>,
    max_endpoints: usize,
    seq: AtomicU64,
    gate: Option<Arc<FlowGate>>,
}

impl<P: igw_request::Picker> Lifecycle<P> {
    /// Wraps `inner`; each pick returns up to `max_endpoints` ordered endpoints (at least 1).
    pub fn new(inner: Arc<P>, max_endpoints: usize) -> Self {
        Lifecycle { inner, max_endpoints: max_endpoints.max(1), seq: AtomicU64::new(0), gate: None }
    }

    /// Puts flow control in front of every pick: a request waits in `gate` until the pool has
    /// room for it (the wait ends early when the gateway resets the stream).
    pub fn with_flow_gate(mut self, gate: Arc<FlowGate>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Admission (already passed) and scheduling of one request.
    fn decide(
        &self,
        prepared: &PreparedRequest,
        subset: Option<&EndpointSubset>,
        ticket: Option<Ticket>,
    ) -> Result<Picked, RequestError> {
        let snapshot = self.inner.snapshot();
        let now = process_clock().now();
        let decision = match candidates(&snapshot, subset)
            .and_then(|cands| self.inner.decide(prepared, &cands, self.max_endpoints, now))
        {
            Ok(d) => d,
            Err(e) => {
                // Released but not routed: its place in the pool is free again.
                if let (Some(gate), Some(t)) = (&self.gate, &ticket) {
                    gate.served(t, None);
                }
                return Err(e);
            }
        };
        let primary = decision
            .endpoints
            .first()
            .cloned()
            .ok_or_else(|| RequestError::service_unavailable(igw_request::error::MSG_NO_CANDIDATES))?;
        self.inner.dispatched(&decision.state, &primary, now);
        let addrs = decision.endpoints.iter().map(|e| e.address()).collect();
        let mut picked = Picked::new(addrs, self.seq.fetch_add(1, Ordering::Relaxed));
        picked.response_headers = self.inner.response_headers(&primary);
        picked.state = Some(Box::new(Dispatched { state: decision.state, endpoint: primary, ticket }));
        Ok(picked)
    }

    /// The wrapped picker.
    pub fn inner(&self) -> &Arc<P> {
        &self.inner
    }
}

/// What a pick carries to `finished`: the lifecycle state and the endpoint the request went to.
struct Dispatched<S> {
    state: S,
    endpoint: Arc<Endpoint>,
    ticket: Option<Ticket>,
}

impl<P: igw_request::Picker> Picker for Lifecycle<P> {
    fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.snapshot()
    }

    fn pick<'a>(&'a self, prepared: &'a PreparedRequest, subset: Option<&'a EndpointSubset>) -> PickFuture<'a> {
        match &self.gate {
            None => Box::pin(std::future::ready(self.decide(prepared, subset, None))),
            Some(gate) => Box::pin(async move {
                let ticket = gate.admit(prepared).await?;
                self.decide(prepared, subset, Some(ticket))
            }),
        }
    }

    fn pick_any(&self) -> Result<SocketAddr, RequestError> {
        pick_random_endpoint(&self.inner.snapshot(), self.inner.draw()).map(|e| e.address())
    }

    fn finished(&self, picked: &Picked, summary: Option<&ResponseSummary>, _served: Option<SocketAddr>) {
        if let Some(d) = picked.state.as_ref().and_then(|s| s.downcast_ref::<Dispatched<P::State>>()) {
            self.inner.finished(&d.state, &d.endpoint, summary, process_clock().now());
            if let (Some(gate), Some(t)) = (&self.gate, &d.ticket) {
                gate.served(t, summary.and_then(|s| s.usage));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use igw_core::{Datastore, EndpointMeta};
    use igw_request::{Draws, Prepared, RandomPicker, build_request};

    #[tokio::test]
    async fn accounts_in_flight_through_the_lifecycle() {
        let ds = Arc::new(Datastore::with_endpoints(
            ["10.0.0.1:8000", "10.0.0.2:8000"].map(|a| EndpointMeta::parse_addr(a).unwrap()),
        ));
        let lc = Lifecycle::new(Arc::new(RandomPicker::new(ds.clone(), 1)), 2);
        let body = Bytes::from_static(br#"{"model":"m","prompt":"hello"}"#);
        let Prepared::Inference(p) =
            build_request(Some("/v1/completions"), [("a", "b")], Some(body), &lc.snapshot(), Draws::default()).unwrap()
        else {
            panic!("inference request expected")
        };
        let picked = lc.pick(&p, None).await.unwrap();
        assert_eq!(picked.endpoints.len(), 2);
        let in_flight = || ds.snapshot().endpoints.iter().map(|e| e.in_flight().requests()).sum::<u64>();
        assert_eq!(in_flight(), 1);
        lc.finished(&picked, None, None);
        assert_eq!(in_flight(), 0);
        let only = EndpointSubset::from_list(["10.0.0.2"]);
        let picked = lc.pick(&p, Some(&only)).await.unwrap();
        assert_eq!(picked.endpoints, vec!["10.0.0.2:8000".parse::<SocketAddr>().unwrap()]);
        lc.finished(&picked, None, None);
        let none = EndpointSubset::from_list(["10.9.9.9"]);
        assert_eq!(lc.pick(&p, Some(&none)).await.unwrap_err().http_status(), 503);
    }

    #[tokio::test]
    async fn flow_control_holds_picks_until_the_pool_has_room() {
        use futures::FutureExt;
        use igw_core::EndpointMetrics;
        use igw_request::flow_gate::FlowGate;
        use igw_sched::detector::UtilizationDetector;
        use igw_sched::flow::FlowConfig;

        let ds = Arc::new(Datastore::with_endpoints([EndpointMeta::parse_addr("10.0.0.1:8000").unwrap()]));
        let set_waiting = |waiting| {
            let now = process_clock().now();
            ds.snapshot().endpoints[0].set_metrics(EndpointMetrics {
                waiting,
                update_time: Some(now),
                ..Default::default()
            });
        };
        set_waiting(50);
        let det = UtilizationDetector { staleness: std::time::Duration::from_secs(3600), ..Default::default() };
        let clock = Arc::new(*process_clock());
        let gate = Arc::new(FlowGate::new(FlowConfig::igw(), ds.clone(), det, clock, "p").unwrap());
        let lc = Lifecycle::new(Arc::new(RandomPicker::new(ds.clone(), 1)), 1).with_flow_gate(gate.clone());
        let body = Bytes::from_static(br#"{"model":"m","prompt":"hello"}"#);
        let Prepared::Inference(p) =
            build_request(Some("/v1/completions"), [("a", "b")], Some(body), &lc.snapshot(), Draws::default()).unwrap()
        else {
            panic!("inference request expected")
        };
        // Saturated: the pick waits; a reset stream (the future dropped) leaves the queue.
        let mut pick = lc.pick(&p, None);
        assert!((&mut pick).now_or_never().is_none());
        assert_eq!(gate.len(), 1);
        drop(pick);
        assert_eq!(gate.len(), 0);
        // Waiting again, then room appears: the next cycle releases it and it is routed.
        let mut pick = lc.pick(&p, None);
        assert!((&mut pick).now_or_never().is_none());
        set_waiting(0);
        gate.cycle();
        let picked = pick.await.unwrap();
        assert_eq!(picked.endpoints, vec!["10.0.0.1:8000".parse::<SocketAddr>().unwrap()]);
        assert_eq!(ds.snapshot().endpoints[0].in_flight().requests(), 1);
        lc.finished(&picked, None, None);
        assert_eq!(ds.snapshot().endpoints[0].in_flight().requests(), 0);
    }
}
