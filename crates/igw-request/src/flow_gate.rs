//! The flow-control gate on the live request path: requests wait here, in priority bands and
//! fairness flows ([`igw_sched::flow::FlowController`]), until the pool has room for them.
//!
//! [`FlowGate::admit`] enqueues a request and resolves when a dispatch cycle releases it (a
//! [`Ticket`]), when its TTL runs out (503), or at once when a cap refuses it (429). Dropping the
//! admit future (the client went away) removes the request from its queue at once.
//!
//! Dispatch cycles run on every enqueue, on every finished request ([`FlowGate::served`]) and on a
//! timer ([`FlowGate::run`], for TTLs and for saturation that falls as fresh metrics arrive). The
//! pool saturation that gates the bands is the utilization detector's over the datastore's
//! endpoints, where igw counts its own in-flight requests that the last scrape has not yet seen
//! (as the scheduler does) and the requests released earlier in the same cycle: a stale scrape
//! cannot release a whole burst at once. With `lowerBandMaxConcurrency` set, every band below the
//! highest also waits while the pool's in-flight requests per endpoint (igw's own counters plus the
//! requests released earlier in the cycle) are at that limit.
//!
//! Time comes from the [`Clock`] passed in, so tests drive cycles by hand with a manual clock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use igw_core::time::Clock;
use igw_core::{Datastore, Priority};
use igw_sched::detector::UtilizationDetector;
use igw_sched::flow::{
    self, Dispatched, FlowConfig, FlowConfigError, FlowController, Outcome, PoolLoad, QueuedRequest, Rejected,
};
use igw_sched::scoring::unseen_in_flight;
use parking_lot::Mutex;
use tokio::sync::{Notify, oneshot};

use crate::error::RequestError;
use crate::metrics::{HistogramFamily, ValueFamily};
use crate::request::PreparedRequest;
use crate::usage::Usage;

/// Buckets of the queue duration histogram (seconds).
pub const QUEUE_DURATION_BUCKETS: &[f64] =
    &[0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// Buckets of the enqueue and dispatch-cycle latency histograms (seconds).
pub const CYCLE_BUCKETS: &[f64] = &[0.000_001, 0.000_005, 0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01];

/// Message of a request refused because its queue is full (429).
pub const MSG_QUEUE_FULL: &str = "flow control queue full";
/// Message of a request whose queue TTL ran out (503).
pub const MSG_QUEUE_TTL: &str = "request timed out in the flow control queue";
/// Message of a request evicted at shutdown (503).
pub const MSG_QUEUE_SHUTDOWN: &str = "flow control is shutting down";

/// A request released by flow control; hand it back to [`FlowGate::served`] when it ends.
#[derive(Clone, Debug, PartialEq)]
pub struct Ticket {
    /// The request's flow.
    pub fairness_id: Arc<str>,
    /// Its band.
    pub priority: Priority,
    /// Weighted tokens charged to the flow at dispatch (corrected by [`FlowGate::served`]).
    pub charged: u64,
    /// Time spent queued.
    pub queued_for: Duration,
}

/// Flow control's metrics under upstream's names (`inference_extension_flow_control_*`).
#[derive(Debug)]
pub struct FlowMetrics {
    /// `..._queue_size` {fairness_id, priority, inference_pool, model_name, target_model_name}.
    pub queue_size: ValueFamily,
    /// `..._queue_bytes`, same labels.
    pub queue_bytes: ValueFamily,
    /// `..._request_queue_duration_seconds` {fairness_id, priority, outcome, inference_pool, model_name, target_model_name}.
    pub queue_duration: HistogramFamily,
    /// `..._request_enqueue_duration_seconds` {fairness_id, priority, outcome}.
    pub enqueue_duration: HistogramFamily,
    /// `..._dispatch_cycle_duration_seconds`.
    pub dispatch_cycle: HistogramFamily,
    /// `..._pool_saturation` {inference_pool}.
    pub pool_saturation: ValueFamily,
}

impl Default for FlowMetrics {
    fn default() -> Self {
        FlowMetrics {
            queue_size: ValueFamily::gauge(flow::METRIC_QUEUE_SIZE, "Number of requests held in flow control queues."),
            queue_bytes: ValueFamily::gauge(flow::METRIC_QUEUE_BYTES, "Bytes of requests held in flow control queues."),
            queue_duration: HistogramFamily::new(
                flow::METRIC_REQUEST_QUEUE_DURATION,
                "Time requests spent in flow control, from enqueue to their final outcome.",
                QUEUE_DURATION_BUCKETS,
            ),
            enqueue_duration: HistogramFamily::new(
                flow::METRIC_REQUEST_ENQUEUE_DURATION,
                "Latency of enqueueing a request into flow control.",
                CYCLE_BUCKETS,
            ),
            dispatch_cycle: HistogramFamily::new(
                flow::METRIC_DISPATCH_CYCLE_DURATION,
                "Latency of one flow control dispatch cycle.",
                CYCLE_BUCKETS,
            ),
            pool_saturation: ValueFamily::gauge(
                flow::METRIC_POOL_SATURATION,
                "Pool saturation as the flow control saturation detector sees it.",
            ),
        }
    }
}

impl FlowMetrics {
    /// Appends every family in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        self.queue_size.render(out);
        self.queue_bytes.render(out);
        self.queue_duration.render(out);
        self.enqueue_duration.render(out);
        self.dispatch_cycle.render(out);
        self.pool_saturation.render(out);
    }
}

/// One waiting request.
struct Waiter {
    tx: oneshot::Sender<Result<Ticket, RequestError>>,
    fairness_id: Arc<str>,
    priority: Priority,
    model: String,
    target_model: String,
    bytes: u64,
    enqueued: igw_core::Instant,
}

struct State {
    fc: FlowController,
    waiters: HashMap<u64, Waiter>,
    next_id: u64,
}

/// Flow control in front of one pool's scheduler. Share it as `Arc<FlowGate>`.
pub struct FlowGate {
    state: Mutex<State>,
    wake: Notify,
    datastore: Arc<Datastore>,
    detector: UtilizationDetector,
    clock: Arc<dyn Clock>,
    pool: String,
    metrics: Arc<FlowMetrics>,
}

impl std::fmt::Debug for FlowGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowGate").field("pool", &self.pool).field("queued", &self.len()).finish_non_exhaustive()
    }
}

impl FlowGate {
    /// A gate with `config` over `datastore`'s endpoints, gated by `detector`, timed by `clock`;
    /// `pool` labels its metrics.
    pub fn new(
        config: FlowConfig,
        datastore: Arc<Datastore>,
        detector: UtilizationDetector,
        clock: Arc<dyn Clock>,
        pool: impl Into<String>,
    ) -> Result<Self, FlowConfigError> {
        Ok(FlowGate {
            state: Mutex::new(State { fc: FlowController::new(config)?, waiters: HashMap::new(), next_id: 0 }),
            wake: Notify::new(),
            datastore,
            detector,
            clock,
            pool: pool.into(),
            metrics: Arc::new(FlowMetrics::default()),
        })
    }

    /// The gate's metrics.
    pub fn metrics(&self) -> &Arc<FlowMetrics> {
        &self.metrics
    }

    /// Requests waiting now.
    pub fn len(&self) -> usize {
        self.state.lock().fc.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The VTC counter of a flow, if it exists (see [`FlowController::flow_counter`]).
    pub fn flow_counter(&self, fairness_id: &str, priority: Priority) -> Option<f64> {
        self.state.lock().fc.flow_counter(fairness_id, priority)
    }

    fn queue_labels(
        &self,
        fairness_id: &str,
        priority: Priority,
        model: &str,
        target: &str,
    ) -> Vec<(&'static str, String)> {
        vec![
            ("fairness_id", fairness_id.to_string()),
            ("inference_pool", self.pool.clone()),
            ("model_name", model.to_string()),
            ("priority", priority.to_string()),
            ("target_model_name", target.to_string()),
        ]
    }

    fn outcome_labels(
        &self,
        fairness_id: &str,
        priority: Priority,
        outcome: Outcome,
        model: &str,
        target: &str,
    ) -> Vec<(&'static str, String)> {
        vec![
            ("fairness_id", fairness_id.to_string()),
            ("inference_pool", self.pool.clone()),
            ("model_name", model.to_string()),
            ("outcome", outcome.as_str().to_string()),
            ("priority", priority.to_string()),
            ("target_model_name", target.to_string()),
        ]
    }

    /// Waits until flow control releases `prepared` (or refuses it). Dropping the future before it
    /// resolves removes the request from its queue.
    pub async fn admit(self: &Arc<Self>, prepared: &PreparedRequest) -> Result<Ticket, RequestError> {
        let req = &prepared.request;
        let now = self.clock.now();
        let t0 = std::time::Instant::now();
        let (id, rx) = {
            let mut st = self.state.lock();
            let id = st.next_id;
            st.next_id += 1;
            let q = QueuedRequest::from_request(id, req, now, st.fc.config().output_token_weight);
            let (fairness_id, priority, bytes) = (q.fairness_id.clone(), q.priority, q.bytes);
            let result = st.fc.enqueue(q);
            let outcome = match &result {
                Ok(()) => "NotYetFinalized",
                Err(r) => r.outcome().as_str(),
            };
            self.metrics.enqueue_duration.observe(
                vec![
                    ("fairness_id", fairness_id.to_string()),
                    ("outcome", outcome.to_string()),
                    ("priority", priority.to_string()),
                ],
                t0.elapsed().as_secs_f64(),
            );
            if let Err(rejected) = result {
                let l = self.outcome_labels(&fairness_id, priority, rejected.outcome(), &req.model, &req.target_model);
                self.metrics.queue_duration.observe(l, 0.0);
                return Err(match rejected {
                    Rejected::DuplicateId(_) => RequestError::internal(rejected.to_string()),
                    _ => RequestError::resource_exhausted(format!("{MSG_QUEUE_FULL}: {rejected}")),
                });
            }
            let l = self.queue_labels(&fairness_id, priority, &req.model, &req.target_model);
            self.metrics.queue_size.add(l.clone(), 1.0);
            self.metrics.queue_bytes.add(l, bytes as f64);
            let (tx, rx) = oneshot::channel();
            let waiter = Waiter {
                tx,
                fairness_id,
                priority,
                model: req.model.clone(),
                target_model: req.target_model.clone(),
                bytes,
                enqueued: now,
            };
            st.waiters.insert(id, waiter);
            (id, rx)
        };
        let mut guard = CancelOnDrop { gate: self, id, armed: true };
        // Fast path: an idle pool releases the request in this very call.
        self.cycle();
        let result = rx.await.unwrap_or_else(|_| Err(RequestError::service_unavailable(MSG_QUEUE_SHUTDOWN)));
        guard.armed = false;
        result
    }

    /// Removes a waiting request (its client went away).
    fn cancel(&self, id: u64) {
        let waiter = {
            let mut st = self.state.lock();
            if !st.fc.cancel(id) {
                return;
            }
            st.waiters.remove(&id)
        };
        if let Some(w) = waiter {
            self.settle(w, Outcome::EvictedContextCancelled, None, self.clock.now());
        }
    }

    /// One dispatch cycle at the clock's now: expires TTLs, then releases what the pool has room
    /// for. Returns how many requests were released.
    pub fn cycle(&self) -> usize {
        let t0 = std::time::Instant::now();
        let now = self.clock.now();
        let snapshot = self.datastore.snapshot();
        // Per endpoint: (waiting incl. unseen in-flight, kv, stale); and igw's in-flight total.
        let mut in_flight = 0u64;
        let loads: Vec<(f64, f64, bool)> = snapshot
            .endpoints
            .iter()
            .map(|e| {
                let m = e.metrics();
                let stale = m.is_stale(now, self.detector.staleness);
                let mine = e.in_flight().requests();
                in_flight += mine;
                let waiting = f64::from(m.waiting) + f64::from(unseen_in_flight(mine, &m));
                (waiting, m.kv_usage, stale)
            })
            .collect();
        let q = self.detector.queue_depth_threshold;
        let k = self.detector.kv_cache_util_threshold;
        let saturation = |extra: usize| -> f64 {
            if loads.is_empty() {
                return 1.0;
            }
            let per = extra as f64 / loads.len() as f64;
            let sum: f64 =
                loads.iter().map(|&(w, kv, stale)| if stale { 1.0 } else { ((w + per) / q).max(kv / k) }).sum();
            sum / loads.len() as f64
        };
        self.metrics.pool_saturation.set(vec![("inference_pool", self.pool.clone())], saturation(0));
        let mut st = self.state.lock();
        let mut settled = Vec::new();
        for (id, outcome) in st.fc.expire(now) {
            if let Some(w) = st.waiters.remove(&id) {
                settled.push((w, outcome, None));
            }
        }
        let mut released = 0usize;
        let endpoints = loads.len().max(1) as f64;
        let dispatched = st.fc.dispatch_while(now, |last| {
            released += usize::from(last.is_some());
            PoolLoad {
                saturation: saturation(released),
                in_flight_per_endpoint: (in_flight + released as u64) as f64 / endpoints,
            }
        });
        for d in dispatched {
            if let Some(w) = st.waiters.remove(&d.id) {
                settled.push((w, Outcome::Dispatched, Some(d)));
            }
        }
        drop(st);
        let n = settled.iter().filter(|(_, o, _)| *o == Outcome::Dispatched).count();
        for (w, outcome, d) in settled {
            self.settle(w, outcome, d, now);
        }
        self.metrics.dispatch_cycle.observe(Vec::new(), t0.elapsed().as_secs_f64());
        n
    }

    /// Settles a request that left its queue: gauges down, queue time recorded, the admit future
    /// answered (a cancelled one has no one left to answer).
    fn settle(&self, w: Waiter, outcome: Outcome, d: Option<Dispatched>, now: igw_core::Instant) {
        let l = self.queue_labels(&w.fairness_id, w.priority, &w.model, &w.target_model);
        self.metrics.queue_size.add(l.clone(), -1.0);
        self.metrics.queue_bytes.add(l, -(w.bytes as f64));
        let queued_for = d.as_ref().map_or_else(|| now.saturating_duration_since(w.enqueued), |d| d.queued_for);
        let l = self.outcome_labels(&w.fairness_id, w.priority, outcome, &w.model, &w.target_model);
        self.metrics.queue_duration.observe(l, queued_for.as_secs_f64());
        let answer = match (outcome, d) {
            (Outcome::Dispatched, Some(d)) => {
                Ok(Ticket { fairness_id: d.fairness_id, priority: d.priority, charged: d.charged, queued_for })
            }
            (Outcome::EvictedTTL, _) => Err(RequestError::service_unavailable(MSG_QUEUE_TTL)),
            (Outcome::EvictedContextCancelled, _) => return,
            _ => Err(RequestError::service_unavailable(MSG_QUEUE_SHUTDOWN)),
        };
        let _ = w.tx.send(answer);
    }

    /// Reports that a released request ended (its usage, when known, corrects the flow's VTC
    /// counter), and runs a dispatch cycle: its load left the pool.
    pub fn served(&self, ticket: &Ticket, usage: Option<Usage>) {
        if let Some(u) = usage {
            self.state.lock().fc.on_served(
                &ticket.fairness_id,
                ticket.priority,
                u.prompt_tokens,
                u.completion_tokens,
                ticket.charged,
            );
        }
        self.wake.notify_one();
    }

    /// Runs dispatch cycles every `tick` and whenever [`served`](Self::served) wakes it, until
    /// `shutdown` completes; then evicts everything still queued (503).
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
        let now = self.clock.now();
        let mut st = self.state.lock();
        let evicted = st.fc.drain();
        let waiters: Vec<Waiter> = evicted.iter().filter_map(|(id, _)| st.waiters.remove(id)).collect();
        drop(st);
        for w in waiters {
            self.settle(w, Outcome::EvictedOther, None, now);
        }
    }
}

/// Cancels the queued request if the admit future is dropped before it resolved.
struct CancelOnDrop<'a> {
    gate: &'a FlowGate,
    id: u64,
    armed: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.gate.cancel(self.id);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use bytes::Bytes;
    use futures::FutureExt;
    use igw_core::{EndpointMeta, EndpointMetrics, InferenceObjective, Instant, ObjectRef};

    use super::*;
    use crate::request::{Draws, Prepared, build_request};

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
            });
        }
        let clock = Arc::new(ManualClock::default());
        let det = UtilizationDetector { staleness: Duration::from_secs(3600), ..Default::default() };
        let gate = Arc::new(FlowGate::new(cfg, ds.clone(), det, clock.clone(), "pool").unwrap());
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
        let t = f.gate.admit(&p).now_or_never().expect("released without waiting").unwrap();
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
        assert_eq!((&mut fh1).now_or_never().unwrap().unwrap().priority, 10);
        assert_eq!((&mut fh2).now_or_never().unwrap().unwrap().priority, 10);
        assert!((&mut fl).now_or_never().is_none(), "the sheddable request still waits");
        let m = metrics_text(&f.gate);
        assert!(m.contains("inference_extension_flow_control_queue_size{fairness_id=\"a\",inference_pool=\"pool\",model_name=\"m\",priority=\"-1\",target_model_name=\"m\"} 1\n"), "{m}");
        f.set_waiting(0);
        f.gate.cycle();
        assert_eq!((&mut fl).now_or_never().unwrap().unwrap().priority, -1);
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
        assert_eq!((&mut fh).now_or_never().unwrap().unwrap().priority, 10);
        assert!((&mut fl).now_or_never().is_none(), "2.5 in flight per endpoint: the lower band waits");
        for e in &f.ds.snapshot().endpoints {
            e.in_flight().release(1);
        }
        assert_eq!(f.gate.cycle(), 1);
        assert_eq!((&mut fl).now_or_never().unwrap().unwrap().priority, -1);
    }

    #[tokio::test]
    async fn run_wakes_on_served_and_evicts_at_shutdown() {
        let f = fixture(FlowConfig::igw());
        f.set_waiting(10);
        let (tx, rx) = oneshot::channel::<()>();
        let runner = tokio::spawn(f.gate.clone().run(Duration::from_secs(3600), async move {
            let _ = rx.await;
        }));
        let p = f.request(None, "a");
        let gate = f.gate.clone();
        let waiting = tokio::spawn(async move { gate.admit(&p).await });
        while f.gate.is_empty() {
            tokio::task::yield_now().await;
        }
        // Room appears; a finished request wakes the dispatcher (no tick in an hour).
        f.set_waiting(0);
        let ticket = Ticket { fairness_id: Arc::from("x"), priority: 0, charged: 0, queued_for: Duration::ZERO };
        f.gate.served(&ticket, None);
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
