//! The async shell around the request core ([`crate::core::PoolCore`]) for the live drivers.
//!
//! [`Pool`] is what the ext_proc server and the proxy hold per pool: the core, the clock, and,
//! when flow control is on, a [`FlowGate`]. [`Pool::admit`] resolves to an admitted
//! [`Request`]: at once without flow control, or when a dispatch cycle releases it, when its TTL
//! runs out (503), or at once when a cap refuses it (429). Dropping the admit future (the client
//! went away) takes the request out of its queue at once.
//!
//! The gate owns no policy: it maps queued requests to their waiters and runs
//! [`PoolCore::dispatch_cycle`] on every enqueue, whenever a released request ends (the core's
//! release notifier), and on a timer ([`FlowGate::run`], for TTLs and for saturation that falls
//! as fresh metrics arrive). The simulator calls the same core functions from its event loop.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use igw_core::Instant;
use igw_core::time::Clock;
use parking_lot::Mutex;
use tokio::sync::{Notify, oneshot};

use crate::core::{Admission, PoolCore, QueueId, Request};
use crate::error::{MSG_QUEUE_SHUTDOWN, RequestError};
use crate::request::PreparedRequest;

pub use crate::core::Ticket;
pub use crate::error::{MSG_QUEUE_FULL, MSG_QUEUE_TTL};
pub use crate::metrics::{CYCLE_BUCKETS, FlowMetrics, QUEUE_DURATION_BUCKETS};

type Waiter = oneshot::Sender<Result<Request, RequestError>>;

/// Flow control's waiting room in front of one pool's core. Share it as `Arc<FlowGate>`.
pub struct FlowGate {
    core: Arc<PoolCore>,
    waiters: Mutex<HashMap<QueueId, Waiter>>,
    wake: Notify,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for FlowGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowGate").field("pool", &self.core.pool()).field("queued", &self.len()).finish_non_exhaustive()
    }
}

impl FlowGate {
    /// A gate over `core` (which must have flow control on), timed by `clock`. The core's release
    /// notifier is set to wake the gate's dispatcher.
    pub fn new(core: Arc<PoolCore>, clock: Arc<dyn Clock>) -> Arc<Self> {
        let gate = Arc::new(FlowGate { core, waiters: Mutex::new(HashMap::new()), wake: Notify::new(), clock });
        let weak: Weak<FlowGate> = Arc::downgrade(&gate);
        gate.core.set_release_notifier(Box::new(move || {
            if let Some(g) = weak.upgrade() {
                g.wake.notify_one();
            }
        }));
        gate
    }

    /// The core behind the gate.
    pub fn core(&self) -> &Arc<PoolCore> {
        &self.core
    }

    /// Flow control's metrics.
    pub fn metrics(&self) -> &Arc<FlowMetrics> {
        self.core.flow_metrics()
    }

    /// Requests waiting now.
    pub fn len(&self) -> usize {
        self.core.queued()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The VTC counter of a flow, if it exists.
    pub fn flow_counter(&self, fairness_id: &str, priority: igw_core::Priority) -> Option<f64> {
        self.core.flow_counter(fairness_id, priority)
    }

    /// Waits until flow control releases `prepared` (or refuses it). Dropping the future before
    /// it resolves removes the request from its queue.
    pub async fn admit(self: &Arc<Self>, prepared: &PreparedRequest) -> Result<Request, RequestError> {
        let (id, rx) = {
            let mut waiters = self.waiters.lock();
            match self.core.admit(prepared, self.clock.now())? {
                Admission::Admitted(r) => return Ok(r),
                Admission::Queued(id) => {
                    let (tx, rx) = oneshot::channel();
                    waiters.insert(id, tx);
                    (id, rx)
                }
            }
        };
        let mut guard = CancelOnDrop { gate: self, id, armed: true };
        // Fast path: an idle pool releases the request in this very call.
        self.cycle();
        let result = rx.await.unwrap_or_else(|_| Err(RequestError::service_unavailable(MSG_QUEUE_SHUTDOWN)));
        guard.armed = false;
        result
    }

    fn cancel(&self, id: QueueId) {
        let mut waiters = self.waiters.lock();
        waiters.remove(&id);
        self.core.cancel(id, self.clock.now());
    }

    /// One dispatch cycle at the clock's now; returns how many requests were released.
    pub fn cycle(&self) -> usize {
        self.cycle_settled().iter().filter(|(_, released)| *released).count()
    }

    /// One dispatch cycle at the clock's now: every request that left its queue, in the order the
    /// cycle settled them, and whether it was released (`false`: refused, e.g. its TTL ran out).
    /// Each waiter has been answered when this returns.
    pub fn cycle_settled(&self) -> Vec<(QueueId, bool)> {
        let now: Instant = self.clock.now();
        let mut waiters = self.waiters.lock();
        let out = self.core.dispatch_cycle(now);
        let mut settled = Vec::with_capacity(out.len());
        for (id, result) in out {
            settled.push((id, result.is_ok()));
            if let Some(tx) = waiters.remove(&id) {
                // A waiter that went away drops the request, which releases it.
                let _ = tx.send(result);
            }
        }
        settled
    }

    /// Runs dispatch cycles every `tick` and whenever a released request ends, until `shutdown`
    /// completes; then evicts everything still queued (503).
    pub async fn run(self: Arc<Self>, tick: Duration, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(tick) => {}
            }
            self.cycle();
        }
        let mut waiters = self.waiters.lock();
        for (id, e) in self.core.drain(self.clock.now()) {
            if let Some(tx) = waiters.remove(&id) {
                let _ = tx.send(Err(e));
            }
        }
    }
}

/// Cancels the queued request if the admit future is dropped before it resolved.
struct CancelOnDrop<'a> {
    gate: &'a FlowGate,
    id: QueueId,
    armed: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.gate.cancel(self.id);
        }
    }
}

/// One pool as a live driver holds it: the request core, the clock the driver reads `now` from,
/// and flow control's gate when the core has flow control on.
pub struct Pool {
    core: Arc<PoolCore>,
    gate: Option<Arc<FlowGate>>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("core", &self.core).field("gate", &self.gate).finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool over `core`, reading time from `clock`; a gate is built when the core has flow
    /// control on (run its dispatcher with [`FlowGate::run`]).
    pub fn new(core: Arc<PoolCore>, clock: Arc<dyn Clock>) -> Arc<Self> {
        let gate = core.has_flow_control().then(|| FlowGate::new(core.clone(), clock.clone()));
        Arc::new(Pool { core, gate, clock })
    }

    /// A pool on the process clock.
    pub fn on_process_clock(core: PoolCore) -> Arc<Self> {
        Self::new(Arc::new(core), Arc::new(*igw_core::time::process_clock()))
    }

    /// The core.
    pub fn core(&self) -> &Arc<PoolCore> {
        &self.core
    }

    /// Flow control's gate, when on.
    pub fn gate(&self) -> Option<&Arc<FlowGate>> {
        self.gate.as_ref()
    }

    /// The driver's current time.
    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    /// Admits `prepared`: through the gate when flow control is on (waiting for room), else at
    /// once. Dropping the future while it waits takes the request out of its queue.
    pub async fn admit(&self, prepared: &PreparedRequest) -> Result<Request, RequestError> {
        match &self.gate {
            Some(gate) => gate.admit(prepared).await,
            None => match self.core.admit(prepared, self.now())? {
                Admission::Admitted(r) => Ok(r),
                Admission::Queued(_) => Err(RequestError::internal("queued without flow control")),
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use bytes::Bytes;
    use futures::FutureExt;
    use igw_core::{Datastore, EndpointMeta, EndpointMetrics, InferenceObjective, Instant, ObjectRef};

    use super::*;
    use crate::error::{MSG_QUEUE_FULL, MSG_QUEUE_TTL};
    use crate::request::{Draws, Prepared, build_request};
    use igw_sched::detector::UtilizationDetector;
    use igw_sched::flow::FlowConfig;

    #[derive(Default)]
    struct ManualClock(AtomicU64);

    impl ManualClock {
        fn set_ms(&self, ms: u64) {
            self.0.store(ms, Ordering::SeqCst);
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> Instant {
            Instant::from_millis(self.0.load(Ordering::SeqCst))
        }
    }

    struct Fixture {
        ds: Arc<Datastore>,
        clock: Arc<ManualClock>,
        gate: Arc<FlowGate>,
    }

    fn fixture(cfg: FlowConfig) -> Fixture {
        let ds = Arc::new(Datastore::with_endpoints(
            ["10.0.0.1:8000", "10.0.0.2:8000"].map(|a| EndpointMeta::parse_addr(a).unwrap()),
        ));
        for (name, priority) in [("critical", 10), ("batch", -1)] {
            ds.apply_objective(InferenceObjective {
                id: ObjectRef::new("default", name),
                priority,
                legacy_model_name: None,
                goals: Default::default(),
            });
        }
        let clock = Arc::new(ManualClock::default());
        let det = UtilizationDetector { staleness: Duration::from_secs(3600), ..Default::default() };
        let sched = Arc::new(igw_sched::Scheduler::from_policy("round-robin").unwrap().with_detector(det));
        let core = Arc::new(PoolCore::new("pool", ds.clone(), sched).with_flow_control(cfg).unwrap());
        let gate = FlowGate::new(core, clock.clone());
        let f = Fixture { ds, clock, gate };
        f.set_waiting(0);
        f
    }

    impl Fixture {
        /// Every endpoint reports `waiting` queued requests, freshly scraped.
        fn set_waiting(&self, waiting: u32) {
            let now = self.clock.now();
            for e in &self.ds.snapshot().endpoints {
                e.set_metrics(EndpointMetrics { waiting, update_time: Some(now), ..Default::default() });
            }
        }

        fn request(&self, objective: Option<&str>, flow: &str) -> PreparedRequest {
            let mut headers = vec![("x-gateway-inference-fairness-id", flow)];
            if let Some(o) = objective {
                headers.push(("x-gateway-inference-objective", o));
            }
            let body = Bytes::from_static(br#"{"model":"m","prompt":"hello","max_tokens":10}"#);
            match build_request(Some("/v1/completions"), headers, Some(body), &self.ds.snapshot(), Draws::default())
                .unwrap()
            {
                Prepared::Inference(p) => *p,
                Prepared::NoBody(_) => panic!("inference expected"),
            }
        }
    }

    fn metrics_text(g: &FlowGate) -> String {
        let mut out = String::new();
        g.metrics().render(&mut out);
        out
    }

    #[test]
    fn an_idle_pool_releases_at_once() {
        let f = fixture(FlowConfig::igw());
        let p = f.request(None, "a");
        let r = f.gate.admit(&p).now_or_never().expect("released without waiting").unwrap();
        let t = r.ticket().unwrap();
        assert_eq!((&*t.fairness_id, t.priority, t.queued_for), ("a", 0, Duration::ZERO));
        assert!(f.gate.is_empty());
        let m = metrics_text(&f.gate);
        assert!(m.contains("outcome=\"Dispatched\""), "{m}");
        assert!(m.contains("inference_extension_flow_control_pool_saturation{inference_pool=\"pool\"} 0\n"), "{m}");
    }

    #[test]
    fn strict_priority_when_the_pool_has_room_for_two() {
        let f = fixture(FlowConfig::igw());
        f.set_waiting(10); // saturation 2.0: nothing goes
        let (low, high1, high2) =
            (f.request(Some("batch"), "a"), f.request(Some("critical"), "b"), f.request(Some("critical"), "c"));
        let mut fl = Box::pin(f.gate.admit(&low));
        let mut fh1 = Box::pin(f.gate.admit(&high1));
        let mut fh2 = Box::pin(f.gate.admit(&high2));
        assert!((&mut fl).now_or_never().is_none() && (&mut fh1).now_or_never().is_none());
        assert!((&mut fh2).now_or_never().is_none());
        assert_eq!(f.gate.len(), 3);
        // 4 waiting per endpoint: saturation 0.8, 0.9 after one release, 1.0 after two.
        f.set_waiting(4);
        assert_eq!(f.gate.cycle(), 2);
        assert_eq!((&mut fh1).now_or_never().unwrap().unwrap().ticket().unwrap().priority, 10);
        assert_eq!((&mut fh2).now_or_never().unwrap().unwrap().ticket().unwrap().priority, 10);
        assert!((&mut fl).now_or_never().is_none(), "the sheddable request still waits");
        let m = metrics_text(&f.gate);
        assert!(m.contains("inference_extension_flow_control_queue_size{fairness_id=\"a\",inference_pool=\"pool\",model_name=\"m\",priority=\"-1\",target_model_name=\"m\"} 1\n"), "{m}");
        f.set_waiting(0);
        f.gate.cycle();
        assert_eq!((&mut fl).now_or_never().unwrap().unwrap().ticket().unwrap().priority, -1);
    }

    #[test]
    fn ttl_expiry_is_a_503_and_caps_are_a_429() {
        let mut cfg = FlowConfig::igw();
        cfg.default_ttl = Some(Duration::from_secs(1));
        cfg.max_requests = 1;
        let f = fixture(cfg);
        f.set_waiting(10);
        let (a, b) = (f.request(None, "a"), f.request(None, "b"));
        let mut fa = Box::pin(f.gate.admit(&a));
        assert!((&mut fa).now_or_never().is_none());
        let e = f.gate.admit(&b).now_or_never().unwrap().unwrap_err();
        assert_eq!(e.http_status(), 429);
        assert!(e.message.starts_with(MSG_QUEUE_FULL), "{e}");
        f.clock.set_ms(1_500);
        f.gate.cycle();
        let e = (&mut fa).now_or_never().unwrap().unwrap_err();
        assert_eq!((e.http_status(), e.message.as_str()), (503, MSG_QUEUE_TTL));
        let m = metrics_text(&f.gate);
        assert!(m.contains("outcome=\"EvictedTTL\""), "{m}");
        assert!(m.contains("outcome=\"RejectedCapacity\""), "{m}");
    }

    #[test]
    fn a_dropped_request_leaves_its_queue_at_once() {
        let f = fixture(FlowConfig::igw());
        f.set_waiting(10);
        let p = f.request(None, "a");
        let mut fut = Box::pin(f.gate.admit(&p));
        assert!((&mut fut).now_or_never().is_none());
        assert_eq!(f.gate.len(), 1);
        drop(fut);
        assert_eq!(f.gate.len(), 0);
        let m = metrics_text(&f.gate);
        assert!(m.contains("outcome=\"EvictedContextCancelled\""), "{m}");
        assert!(m.contains("queue_size{fairness_id=\"a\",inference_pool=\"pool\",model_name=\"m\",priority=\"0\",target_model_name=\"m\"} 0\n"), "{m}");
    }

    #[test]
    fn in_flight_requests_the_scrape_has_not_seen_count_as_load() {
        let f = fixture(FlowConfig::igw());
        // Idle by the last scrape, but igw has 10 requests in flight on each endpoint: saturated.
        for e in &f.ds.snapshot().endpoints {
            for _ in 0..10 {
                e.in_flight().add(1);
            }
        }
        let p = f.request(None, "a");
        let mut fut = Box::pin(f.gate.admit(&p));
        assert!((&mut fut).now_or_never().is_none());
        for e in &f.ds.snapshot().endpoints {
            for _ in 0..10 {
                e.in_flight().release(1);
            }
        }
        f.gate.cycle();
        assert!((&mut fut).now_or_never().unwrap().is_ok());
    }

    #[test]
    fn lower_bands_wait_while_the_pool_runs_the_batch_holdback() {
        let mut cfg = FlowConfig::igw();
        cfg.batch_holdback = Some(2.0);
        let f = fixture(cfg);
        f.set_waiting(10);
        let (low, high) = (f.request(Some("batch"), "a"), f.request(Some("critical"), "b"));
        let mut fl = Box::pin(f.gate.admit(&low));
        let mut fh = Box::pin(f.gate.admit(&high));
        assert!((&mut fl).now_or_never().is_none() && (&mut fh).now_or_never().is_none());
        // Two requests in flight on each endpoint, seen by the scrape: far from saturated, but at the limit
        // once the critical request is counted.
        let now = f.clock.now();
        for e in &f.ds.snapshot().endpoints {
            e.set_metrics(EndpointMetrics { running: 2, update_time: Some(now), ..Default::default() });
            e.in_flight().add(1);
            e.in_flight().add(1);
        }
        assert_eq!(f.gate.cycle(), 1);
        assert_eq!((&mut fh).now_or_never().unwrap().unwrap().ticket().unwrap().priority, 10);
        assert!((&mut fl).now_or_never().is_none(), "2.5 in flight per endpoint: the lower band waits");
        for e in &f.ds.snapshot().endpoints {
            e.in_flight().release(1);
        }
        assert_eq!(f.gate.cycle(), 1);
        assert_eq!((&mut fl).now_or_never().unwrap().unwrap().ticket().unwrap().priority, -1);
    }

    #[tokio::test]
    async fn run_wakes_on_served_and_evicts_at_shutdown() {
        let f = fixture(FlowConfig::igw());
        let (tx, rx) = oneshot::channel::<()>();
        let runner = tokio::spawn(f.gate.clone().run(Duration::from_secs(3600), async move {
            let _ = rx.await;
        }));
        // One request released while the pool is idle, another queued behind a full pool.
        f.set_waiting(0);
        let first = f.gate.admit(&f.request(None, "a")).await.unwrap();
        f.set_waiting(10);
        let p = f.request(None, "a");
        let gate = f.gate.clone();
        let waiting = tokio::spawn(async move { gate.admit(&p).await });
        while f.gate.is_empty() {
            tokio::task::yield_now().await;
        }
        // Room appears; the first request ending wakes the dispatcher (no tick in an hour).
        f.set_waiting(0);
        drop(first);
        assert!(waiting.await.unwrap().is_ok());
        // A request still queued at shutdown is answered 503.
        f.set_waiting(10);
        let p = f.request(None, "b");
        let gate = f.gate.clone();
        let queued = tokio::spawn(async move { gate.admit(&p).await });
        while f.gate.is_empty() {
            tokio::task::yield_now().await;
        }
        tx.send(()).unwrap();
        runner.await.unwrap();
        let e = queued.await.unwrap().unwrap_err();
        assert_eq!((e.http_status(), e.message.as_str()), (503, MSG_QUEUE_SHUTDOWN));
    }
}
