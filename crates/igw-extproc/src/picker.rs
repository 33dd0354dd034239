//! The port between the ext_proc adapter and whatever decides where a request goes.
//!
//! The adapter owns the wire protocol; a [`Picker`] owns the policy. The real implementation is
//! the Director (admission, flow control, scheduling); [`RandomPicker`] and [`FixedPicker`] are
//! small stand-ins over a [`Datastore`] so the adapter runs end to end without it.

use std::any::Any;
use std::fmt;
use std::future::{Future, ready};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use igw_core::{Datastore, Snapshot};
use igw_request::{EndpointSubset, PreparedRequest, RequestError, ResponseSummary, candidates, pick_random_endpoint};
use rand::Rng;

/// The future returned by [`Picker::pick`]. It may wait (flow control queues a request until it
/// is dispatched); the adapter drops it when the gateway cancels the stream.
pub type PickFuture<'a> = Pin<Box<dyn Future<Output = Result<Picked, RequestError>> + Send + 'a>>;

/// Decides where requests go. One instance serves every stream; implementations must be cheap to
/// call concurrently.
///
/// Call order per stream: [`snapshot`](Picker::snapshot) (to prepare the request: model rewrite,
/// priority), then either [`pick`](Picker::pick) (a request with a body) or
/// [`pick_any`](Picker::pick_any) (a body-less request), and, for every successful `pick`,
/// exactly one [`finished`](Picker::finished).
pub trait Picker: Send + Sync + 'static {
    /// The datastore snapshot requests are prepared against (rewrite rules, objectives).
    fn snapshot(&self) -> Arc<Snapshot>;

    /// Decides for a complete request: admission, then scheduling. `subset` is the gateway's
    /// subset hint, when it sent one (present but empty means no endpoint is eligible). The
    /// endpoints in the result are ordered, primary first; an empty list is answered with 503.
    fn pick<'a>(&'a self, prepared: &'a PreparedRequest, subset: Option<&'a EndpointSubset>) -> PickFuture<'a>;

    /// Picks any endpoint for a request without a body (e.g. `GET /v1/models`): no parsing,
    /// admission or scheduling. No endpoint is an `Internal` error (500).
    fn pick_any(&self) -> Result<SocketAddr, RequestError>;

    /// Called exactly once per successful [`pick`](Picker::pick): when the response ended
    /// (`summary` is `Some`), or when the stream died first (`summary` is `None`: client gone,
    /// gateway reset, error). `served` is the endpoint the gateway reported as having served
    /// the response (`envoy.lb` / `x-gateway-destination-endpoint-served`), if it did.
    fn finished(&self, picked: &Picked, summary: Option<&ResponseSummary>, served: Option<SocketAddr>);
}

/// The outcome of a successful pick.
pub struct Picked {
    /// Endpoints, primary first, then ordered fallbacks. The adapter sends at most the configured
    /// number of them.
    pub endpoints: Vec<SocketAddr>,
    /// An opaque number for the picker's own bookkeeping (e.g. a request sequence number).
    pub token: u64,
    /// Opaque per-request state the picker wants back in [`Picker::finished`] (in-flight
    /// accounting, prefix hashes, ...). Downcast it there.
    pub state: Option<Box<dyn Any + Send + Sync>>,
    /// Headers the adapter adds to the client's response (e.g. a session token).
    pub response_headers: Vec<(String, String)>,
}

impl Picked {
    /// A pick of `endpoints` with a token and no state.
    pub fn new(endpoints: Vec<SocketAddr>, token: u64) -> Self {
        Picked { endpoints, token, state: None, response_headers: Vec::new() }
    }
}

impl fmt::Debug for Picked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Picked")
            .field("endpoints", &self.endpoints)
            .field("token", &self.token)
            .field("state", &self.state.is_some())
            .finish()
    }
}

/// Counters shared by the built-in pickers.
#[derive(Debug, Default)]
struct Counters {
    picks: AtomicU64,
    finished: AtomicU64,
}

impl Counters {
    fn next(&self) -> u64 {
        self.picks.fetch_add(1, Ordering::Relaxed)
    }

    fn in_flight(&self) -> u64 {
        self.picks.load(Ordering::Relaxed).saturating_sub(self.finished.load(Ordering::Relaxed))
    }
}

/// A stand-in picker: a uniformly random candidate first, the other candidates after it (in
/// datastore order, rotated), up to `max_endpoints`. Honours the subset hint. No admission,
/// no scoring.
#[derive(Debug)]
pub struct RandomPicker {
    datastore: Arc<Datastore>,
    max_endpoints: usize,
    counters: Counters,
}

impl RandomPicker {
    /// A picker over `datastore` returning up to `max_endpoints` (at least 1) endpoints.
    pub fn new(datastore: Arc<Datastore>, max_endpoints: usize) -> Self {
        RandomPicker { datastore, max_endpoints: max_endpoints.max(1), counters: Counters::default() }
    }

    /// Successful picks not yet finished.
    pub fn in_flight(&self) -> u64 {
        self.counters.in_flight()
    }
}

impl Picker for RandomPicker {
    fn snapshot(&self) -> Arc<Snapshot> {
        self.datastore.snapshot()
    }

    fn pick<'a>(&'a self, _prepared: &'a PreparedRequest, subset: Option<&'a EndpointSubset>) -> PickFuture<'a> {
        let snapshot = self.datastore.snapshot();
        let result = candidates(&snapshot, subset).map(|eps| {
            let start = rand::rng().random_range(0..eps.len());
            let endpoints =
                eps.iter().cycle().skip(start).take(eps.len().min(self.max_endpoints)).map(|e| e.address()).collect();
            Picked::new(endpoints, self.counters.next())
        });
        Box::pin(ready(result))
    }

    fn pick_any(&self) -> Result<SocketAddr, RequestError> {
        let snapshot = self.datastore.snapshot();
        pick_random_endpoint(&snapshot, rand::rng().random()).map(|e| e.address())
    }

    fn finished(&self, _picked: &Picked, _summary: Option<&ResponseSummary>, _served: Option<SocketAddr>) {
        self.counters.finished.fetch_add(1, Ordering::Relaxed);
    }
}

/// A deterministic stand-in picker: the candidates in datastore order, up to `max_endpoints`.
/// Body-less requests go to the first endpoint. Useful in tests.
#[derive(Debug)]
pub struct FixedPicker {
    datastore: Arc<Datastore>,
    max_endpoints: usize,
    counters: Counters,
}

impl FixedPicker {
    /// A picker over `datastore` returning up to `max_endpoints` (at least 1) endpoints.
    pub fn new(datastore: Arc<Datastore>, max_endpoints: usize) -> Self {
        FixedPicker { datastore, max_endpoints: max_endpoints.max(1), counters: Counters::default() }
    }

    /// Successful picks not yet finished.
    pub fn in_flight(&self) -> u64 {
        self.counters.in_flight()
    }
}

impl Picker for FixedPicker {
    fn snapshot(&self) -> Arc<Snapshot> {
        self.datastore.snapshot()
    }

    fn pick<'a>(&'a self, _prepared: &'a PreparedRequest, subset: Option<&'a EndpointSubset>) -> PickFuture<'a> {
        let snapshot = self.datastore.snapshot();
        let result = candidates(&snapshot, subset).map(|eps| {
            let endpoints = eps.iter().take(self.max_endpoints).map(|e| e.address()).collect();
            Picked::new(endpoints, self.counters.next())
        });
        Box::pin(ready(result))
    }

    fn pick_any(&self) -> Result<SocketAddr, RequestError> {
        pick_random_endpoint(&self.datastore.snapshot(), 0).map(|e| e.address())
    }

    fn finished(&self, _picked: &Picked, _summary: Option<&ResponseSummary>, _served: Option<SocketAddr>) {
        self.counters.finished.fetch_add(1, Ordering::Relaxed);
    }
}
