//! The port every adapter routes through: admission, scheduling and the lifecycle hooks.
//!
//! The ext_proc server, the standalone proxy and the simulator call a [`Picker`]; igw's real
//! implementation wraps the scheduler (admission, flow control, filters, scorers, the prefix index
//! and in-flight accounting), and [`RandomPicker`] is a dependency-free stand-in for tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use igw_core::{Datastore, Endpoint, Instant, Snapshot};

use crate::error::RequestError;
use crate::request::PreparedRequest;
use crate::usage::ResponseSummary;

/// Where a request goes.
#[derive(Debug)]
pub struct Decision<S> {
    /// Ordered candidates, primary first (at most the `max` the caller asked for).
    pub endpoints: Vec<Arc<Endpoint>>,
    /// What the picker needs back in [`Picker::dispatched`] and [`Picker::finished`] (for igw's
    /// scheduler: the prompt's prefix hashes and the token estimate).
    pub state: S,
}

/// Admission, scheduling and per-request accounting behind one interface.
pub trait Picker: Send + Sync + 'static {
    /// Per-request state carried from [`decide`](Self::decide) to the hooks: whatever the picker
    /// needs of the request afterwards (token estimate, prefix hashes, model names for metrics).
    type State: Send + Sync + 'static;

    /// The datastore snapshot requests are prepared and scheduled against.
    fn snapshot(&self) -> Arc<Snapshot>;

    /// A uniformly random number (request ids, weighted rewrites, body-less routing).
    fn draw(&self) -> u64;

    /// Admits and schedules `prepared` on `candidates`, returning up to `max` ordered endpoints.
    /// Errors carry upstream's codes: 429 when shed or nothing fits, 503 when nothing is there.
    fn decide(
        &self,
        prepared: &PreparedRequest,
        candidates: &[Arc<Endpoint>],
        max: usize,
        now: Instant,
    ) -> Result<Decision<Self::State>, RequestError>;

    /// The request is being sent to `endpoint` (the primary, or a fallback after a retry).
    fn dispatched(&self, state: &Self::State, endpoint: &Arc<Endpoint>, now: Instant);

    /// The request sent to `endpoint` ended; `summary` is `None` when no response arrived.
    /// Called exactly once per [`dispatched`](Self::dispatched).
    fn finished(&self, state: &Self::State, endpoint: &Arc<Endpoint>, summary: Option<&ResponseSummary>, now: Instant);

    /// Headers to add to the response the client receives from `endpoint` (e.g. the session
    /// token of `session-affinity-scorer`). None by default.
    fn response_headers(&self, _endpoint: &Arc<Endpoint>) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// Uniformly random routing with in-flight accounting and no admission control: what a
/// Kubernetes Service does. Deterministic for a seed.
#[derive(Debug)]
pub struct RandomPicker {
    datastore: Arc<Datastore>,
    state: AtomicU64,
}

impl RandomPicker {
    /// A picker over `datastore`, seeded.
    pub fn new(datastore: Arc<Datastore>, seed: u64) -> Self {
        RandomPicker { datastore, state: AtomicU64::new(seed) }
    }
}

/// splitmix64: a small, well-mixed generator that is easy to share lock-free.
fn splitmix(state: &AtomicU64) -> u64 {
    let mut z = state.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Picker for RandomPicker {
    type State = u64;

    fn snapshot(&self) -> Arc<Snapshot> {
        self.datastore.snapshot()
    }

    fn draw(&self) -> u64 {
        splitmix(&self.state)
    }

    fn decide(
        &self,
        prepared: &PreparedRequest,
        candidates: &[Arc<Endpoint>],
        max: usize,
        _now: Instant,
    ) -> Result<Decision<u64>, RequestError> {
        if candidates.is_empty() {
            return Err(RequestError::service_unavailable(crate::error::MSG_NO_CANDIDATES));
        }
        let n = candidates.len();
        let start = (self.draw() % n as u64) as usize;
        let endpoints = (0..max.clamp(1, n)).map(|i| candidates[(start + i) % n].clone()).collect();
        Ok(Decision { endpoints, state: prepared.request.estimated_tokens() })
    }

    fn dispatched(&self, tokens: &u64, endpoint: &Arc<Endpoint>, _: Instant) {
        endpoint.in_flight().add(*tokens);
    }

    fn finished(&self, tokens: &u64, endpoint: &Arc<Endpoint>, _: Option<&ResponseSummary>, _: Instant) {
        endpoint.in_flight().release(*tokens);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::request::{Draws, Prepared, build_request};
    use bytes::Bytes;
    use igw_core::EndpointMeta;

    #[test]
    fn random_picker_spreads_and_accounts() {
        let ds = Arc::new(Datastore::with_endpoints(
            ["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"].map(|a| EndpointMeta::parse_addr(a).unwrap()),
        ));
        let picker = RandomPicker::new(ds.clone(), 7);
        let snap = picker.snapshot();
        let body = Bytes::from_static(br#"{"model":"m","prompt":"hello"}"#);
        let Prepared::Inference(p) =
            build_request(Some("/v1/completions"), [("a", "b")], Some(body), &snap, Draws { request_id: 1, pick: 2 })
                .unwrap()
        else {
            panic!("expected an inference request")
        };
        let mut counts = [0usize; 3];
        for _ in 0..300 {
            let d = picker.decide(&p, &snap.endpoints, 3, Instant::ZERO).unwrap();
            assert_eq!(d.endpoints.len(), 3, "three distinct fallbacks");
            let first = d.endpoints[0].id().0 as usize;
            counts[first] += 1;
            picker.dispatched(&d.state, &d.endpoints[0], Instant::ZERO);
        }
        assert!(counts.iter().all(|&c| c > 60), "uniform-ish: {counts:?}");
        let total: u64 = snap.endpoints.iter().map(|e| e.in_flight().requests()).sum();
        assert_eq!(total, 300);
        assert!(picker.decide(&p, &[], 1, Instant::ZERO).is_err());
    }
}
