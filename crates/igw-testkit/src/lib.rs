//! Test fixtures shared by igw's crates (dev-only: never a dependency of shipped code).
//!
//! - [`datastore`] / [`datastore_of`]: a datastore over endpoint addresses;
//! - [`TestPool`]: a live [`Pool`] over the request core with a policy (round robin by default,
//!   so the first pick of a fresh pool is the first endpoint) and a [`Recorder`];
//! - [`Recorder`]: lifecycle hooks that record every end and can refuse requests;
//! - [`prepared`]: a [`PreparedRequest`] from a path and a JSON body, as a driver would build it.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use igw_core::{Datastore, EndpointMeta, Snapshot};
use igw_request::{
    Ended, Hooks, Pool, PoolCore, Prepared, PreparedRequest, RequestError, ResponseSummary, build_request,
};
use igw_sched::Scheduler;
use parking_lot::Mutex;

/// A datastore over `addrs`, comma-separated `ip:port` (empty: no endpoint).
///
/// # Panics
/// On an address that does not parse.
pub fn datastore(addrs: &str) -> Arc<Datastore> {
    let metas = if addrs.is_empty() {
        Vec::new()
    } else {
        EndpointMeta::parse_list(addrs).unwrap_or_else(|e| panic!("bad test addresses {addrs:?}: {e}"))
    };
    Arc::new(Datastore::with_endpoints(metas))
}

/// A datastore over socket addresses.
pub fn datastore_of(addrs: &[SocketAddr]) -> Arc<Datastore> {
    Arc::new(Datastore::with_endpoints(addrs.iter().map(|a| EndpointMeta::from_addr(*a))))
}

/// One end the core reported: the summary and the endpoint charged with the request.
pub type End = (Option<ResponseSummary>, Option<SocketAddr>);

/// Lifecycle hooks for tests: records every end; refuses every request (`fail`) or those for
/// one model (`refuse_model`) before admission.
#[derive(Default)]
pub struct Recorder {
    /// Refuse every request with this error.
    pub fail: Option<RequestError>,
    /// Refuse requests for this model with this error.
    pub refuse_model: Option<(String, RequestError)>,
    ends: Mutex<Vec<End>>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").field("ends", &self.ends.lock().len()).finish_non_exhaustive()
    }
}

impl Recorder {
    /// Refuses every request with `e` before admission.
    pub fn failing(e: RequestError) -> Self {
        Recorder { fail: Some(e), ..Default::default() }
    }

    /// Refuses requests for `model` with `e` before admission.
    pub fn refusing_model(model: &str, e: RequestError) -> Self {
        Recorder { refuse_model: Some((model.to_string(), e)), ..Default::default() }
    }

    /// The ends seen so far.
    pub fn ends(&self) -> Vec<End> {
        self.ends.lock().clone()
    }
}

impl Hooks for Recorder {
    fn before_admit(&self, prepared: &PreparedRequest) -> Result<(), RequestError> {
        if let Some(e) = &self.fail {
            return Err(e.clone());
        }
        match &self.refuse_model {
            Some((m, e)) if *m == prepared.request.model => Err(e.clone()),
            _ => Ok(()),
        }
    }

    fn after_end(&self, end: &Ended<'_>) {
        self.ends.lock().push((end.summary.copied(), end.leg.map(|l| l.endpoint.address())));
    }
}

/// A live pool over the request core, its datastore and its recorder.
#[derive(Debug)]
pub struct TestPool {
    /// The pool drivers run requests through.
    pub pool: Arc<Pool>,
    /// Its datastore.
    pub datastore: Arc<Datastore>,
    /// Its hooks.
    pub recorder: Arc<Recorder>,
}

impl TestPool {
    /// Round robin over `datastore`, one endpoint per decision.
    pub fn round_robin(datastore: Arc<Datastore>) -> Arc<Self> {
        Self::build(datastore, "round-robin", 1, Recorder::default())
    }

    /// `policy` over `datastore`, up to `max` endpoints per decision, with `recorder`.
    ///
    /// # Panics
    /// On an unknown policy.
    pub fn build(datastore: Arc<Datastore>, policy: &str, max: usize, recorder: Recorder) -> Arc<Self> {
        let sched = Scheduler::from_policy(policy).unwrap_or_else(|e| panic!("{e}"));
        Self::with_scheduler(datastore, sched, max, recorder)
    }

    /// A pool deciding with `scheduler`.
    pub fn with_scheduler(
        datastore: Arc<Datastore>,
        scheduler: Scheduler,
        max: usize,
        recorder: Recorder,
    ) -> Arc<Self> {
        let recorder = Arc::new(recorder);
        let core = PoolCore::new("test", datastore.clone(), Arc::new(scheduler))
            .with_max_endpoints(max)
            .with_seed(1)
            .with_hooks(recorder.clone());
        Arc::new(TestPool { pool: Pool::on_process_clock(core), datastore, recorder })
    }

    /// Requests igw has in flight on the pool's endpoints.
    pub fn in_flight(&self) -> u64 {
        self.datastore.snapshot().endpoints.iter().map(|e| e.in_flight().requests()).sum()
    }
}

/// `body` at `path` prepared against `snapshot`, with fixed draws.
///
/// # Panics
/// When the body does not prepare into an inference request.
pub fn prepared(path: &str, body: &str, snapshot: &Snapshot) -> PreparedRequest {
    match build_request(
        Some(path),
        Vec::<(&str, &str)>::new(),
        Some(Bytes::copy_from_slice(body.as_bytes())),
        snapshot,
        igw_request::Draws::default(),
    ) {
        Ok(Prepared::Inference(p)) => *p,
        other => panic!("not an inference request: {other:?}"),
    }
}
