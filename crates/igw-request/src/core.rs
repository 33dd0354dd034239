//! The request core: the whole life of one request in one pool, synchronous and I/O-free.
//!
//! Every driver — the Envoy ext_proc server, the standalone HTTP proxy and the discrete-event
//! simulator — runs a request through the same calls on a [`PoolCore`]:
//!
//! 1. **admit** ([`PoolCore::admit`]): the [`Hooks::before_admit`] hook, then flow control
//!    (the request is queued: [`Admission::Queued`]) or, without flow control, straight through
//!    ([`Admission::Admitted`]). Queued requests leave through [`PoolCore::dispatch_cycle`] (released,
//!    or evicted by their TTL), [`PoolCore::cancel`] (the client went away) or [`PoolCore::drain`].
//! 2. **decide** ([`Request::decide`]): one datastore snapshot, legacy shedding when flow control
//!    is off, the scheduler; the primary endpoint and ordered fallbacks.
//! 3. **attempt** ([`Request::attempt`]) on one endpoint: in-flight load and the prefix index are
//!    charged to it; [`Request::attempt_failed`] takes that back when the endpoint never served the
//!    request, and [`Request::served_by`] moves it when the gateway reports another endpoint.
//! 4. **first byte** ([`Request::first_byte`]) and **end** ([`Request::end`], with the
//!    [`ResponseSummary`] and its usage): in-flight load released, the flow's fairness counter
//!    corrected, metrics recorded, [`Hooks::after_end`] told.
//!
//! The release is exactly once: dropping a [`Request`] ends it without a summary. Time is passed
//! into every call and randomness comes from the core's seeded source, so the same sequence of
//! calls makes the same decisions on the wall clock and in virtual time.
//!
//! Saturation is computed in one place, [`UtilizationDetector::pool_view`](igw_sched::detector::UtilizationDetector::pool_view), over the scheduler's
//! detector: flow control's gate, legacy shedding and the simulator all use it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use igw_core::time::Clock;
use igw_core::{Datastore, Endpoint, Instant, Priority, Snapshot};
use igw_sched::flow::{Dispatched, FlowConfig, FlowConfigError, FlowController, Outcome, QueuedRequest, Rejected};
use igw_sched::{Decision as SchedDecision, ScheduleError, Scheduler};
use parking_lot::Mutex;
use rand::SeedableRng;
use rand::rngs::SmallRng;

use crate::error::{
    ErrorCode, MSG_NO_CANDIDATES, MSG_QUEUE_FULL, MSG_QUEUE_SHUTDOWN, MSG_QUEUE_TTL, MSG_SATURATED,
    MSG_SCHEDULE_FAILED, MSG_SLO_UNATTAINABLE, RequestError,
};
use crate::metrics::{FlowMetrics, PoolMetrics, RequestMetrics, Series, SeriesKey};
use crate::parse::ParsedBody;
use crate::request::{Prepared, PreparedRequest, RequestHead, candidates, pick_random_endpoint};
use crate::subset::EndpointSubset;
use crate::usage::ResponseSummary;

/// Identifies a request waiting in flow control.
pub type QueueId = u64;

/// Extension points of the lifecycle, for what sits around routing without changing it:
/// authentication and tenant budgets before admission, settling them after the end, a latency
/// model learning from outcomes, routing state shared with other picker replicas. Every method
/// has a no-op default.
pub trait Hooks: Send + Sync + 'static {
    /// Before admission: an error refuses the request with that error (e.g. 401, 429 for a tenant
    /// over its budget) before it is queued or scheduled.
    fn before_admit(&self, _prepared: &PreparedRequest) -> Result<(), RequestError> {
        Ok(())
    }

    /// The request waits in flow control under `id` (it leaves through a dispatch cycle, a
    /// cancellation or the drain).
    fn queued(&self, _prepared: &PreparedRequest, _id: QueueId) {}

    /// The request waiting under `id` left its queue in a dispatch cycle: released (`true`) or
    /// refused (`false`, its TTL ran out). Called in the order the cycle settles them.
    fn dequeued(&self, _id: QueueId, _released: bool) {}

    /// The request was sent to `endpoint`, whose cache now holds the prompt's blocks
    /// `prefix_hashes` (the routing state a shared index would publish).
    fn routed(&self, _endpoint: &Arc<Endpoint>, _prefix_hashes: &[u64]) {}

    /// An attempt on `endpoint` failed before it served the request: the blocks it was credited
    /// with in [`Hooks::routed`] (those it did not hold before) are not cached there.
    fn unrouted(&self, _endpoint: &Arc<Endpoint>, _prefix_hashes: &[u64]) {}

    /// The request ended (exactly once for every admitted request, also when dropped).
    fn after_end(&self, _end: &Ended<'_>) {}
}

/// What [`Hooks::after_end`] learns of a request: the outcome feedback for latency models and
/// the settling of budgets.
#[derive(Debug)]
pub struct Ended<'a> {
    /// The client's model name.
    pub model: &'a str,
    /// The model the request was sent for (after rewrites).
    pub target_model: &'a str,
    /// Its priority.
    pub priority: Priority,
    /// Its fairness flow.
    pub fairness_id: &'a str,
    /// The leg that served it (none when it was never sent anywhere).
    pub leg: Option<&'a Leg>,
    /// The response summary, when a response arrived (usage, errors).
    pub summary: Option<&'a ResponseSummary>,
    /// When the request was admitted.
    pub admitted: Instant,
    /// When it ended.
    pub now: Instant,
}

/// One endpoint's part of a request: where it went, when, and when its first byte came back.
/// A disaggregated request has one leg per role; today every request has one.
#[derive(Debug, Clone)]
pub struct Leg {
    /// The endpoint.
    pub endpoint: Arc<Endpoint>,
    /// When the attempt started.
    pub sent: Instant,
    /// When the first response byte arrived.
    pub first_byte: Option<Instant>,
    /// When the first output arrived (the first content event of a stream; the first body bytes
    /// of a non-streamed response): the time to first token.
    pub first_token: Option<Instant>,
}

impl Leg {
    /// Time to first byte, when it arrived.
    pub fn ttfb(&self) -> Option<Duration> {
        self.first_byte.map(|t| t.saturating_duration_since(self.sent))
    }

    /// Time to first token (first output), when it arrived.
    pub fn ttft(&self) -> Option<Duration> {
        self.first_token.map(|t| t.saturating_duration_since(self.sent))
    }
}

/// What a response showed the latency model: TTFT (streamed responses), the attempt's duration
/// and the usage. Nothing for an error, or a response without usage.
fn observed(s: &ResponseSummary, leg: &Leg, now: Instant) -> Option<igw_sched::latency::Observed> {
    let u = s.usage.as_ref().filter(|_| !s.model_server_error)?;
    Some(igw_sched::latency::Observed {
        ttft_s: leg.ttft().filter(|_| s.streaming).map(|d| d.as_secs_f64()),
        e2e_s: now.saturating_duration_since(leg.sent).as_secs_f64(),
        completion_tokens: u.completion_tokens,
        cached_tokens: (u.cached_tokens > 0).then_some(u.cached_tokens),
        prompt_tokens: u.prompt_tokens,
    })
}

/// A request released by flow control: its flow, band and what was charged to the flow.
#[derive(Clone, Debug, PartialEq)]
pub struct Ticket {
    /// The request's flow.
    pub fairness_id: Arc<str>,
    /// Its band.
    pub priority: Priority,
    /// Weighted tokens charged to the flow at dispatch (corrected at the end from the usage).
    pub charged: u64,
    /// Time spent queued.
    pub queued_for: Duration,
}

/// What admission did with a request.
#[derive(Debug)]
#[allow(clippy::large_enum_variant, reason = "moved once per request; boxing would allocate on every admission")]
pub enum Admission {
    /// Admitted now: decide and route it.
    Admitted(Request),
    /// Waiting in flow control; it comes out of [`PoolCore::dispatch_cycle`].
    Queued(QueueId),
}

/// The per-request context the core keeps from admission to the end.
#[derive(Debug, Clone)]
struct Ctx {
    /// Its labels (model, target, priority, flow, rewrite) and the metric handles they resolve to.
    series: Arc<Series>,
    body_bytes: usize,
    admitted: Instant,
    ticket: Option<Ticket>,
}

impl Ctx {
    fn of(prepared: &PreparedRequest, metrics: &PoolMetrics, now: Instant) -> Self {
        let r = &prepared.request;
        let series = metrics.series(SeriesKey {
            model: &r.model,
            target_model: &r.target_model,
            priority: r.priority,
            fairness_id: &r.fairness_id,
            rewrite_rule: prepared.rewrite.rule_name.as_deref(),
        });
        Ctx { series, body_bytes: prepared.body.len(), admitted: now, ticket: None }
    }
}

struct Queued {
    ctx: Ctx,
    bytes: u64,
}

struct FlowState {
    fc: FlowController,
    queued: HashMap<QueueId, Queued>,
    next_id: QueueId,
}

/// One pool's request core: the datastore, the scheduler, flow control (when on), the request
/// metrics and a seeded random source. Share it as `Arc<PoolCore>`.
pub struct PoolCore {
    pool: String,
    datastore: Arc<Datastore>,
    scheduler: Arc<Scheduler>,
    metrics: PoolMetrics,
    flow: Option<Mutex<FlowState>>,
    rng: AtomicU64,
    max_endpoints: usize,
    timer: Option<Arc<dyn Clock>>,
    hooks: Option<Arc<dyn Hooks>>,
    on_release: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for PoolCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolCore")
            .field("pool", &self.pool)
            .field("scheduler", &self.scheduler.name())
            .field("flow_control", &self.flow.is_some())
            .field("max_endpoints", &self.max_endpoints)
            .finish_non_exhaustive()
    }
}

/// splitmix64: a small, well-mixed generator that is easy to share lock-free.
fn splitmix(state: &AtomicU64) -> u64 {
    let mut z = state.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl PoolCore {
    /// A core for the pool `pool` (labels its metrics) over `datastore`, deciding with
    /// `scheduler`; no flow control (sheddable requests are shed when the pool is saturated, as
    /// upstream without the flowControl feature), one endpoint per decision, seed 0.
    pub fn new(pool: impl Into<String>, datastore: Arc<Datastore>, scheduler: Arc<Scheduler>) -> Self {
        let pool = pool.into();
        PoolCore {
            metrics: PoolMetrics::new(&pool),
            pool,
            datastore,
            scheduler,
            flow: None,
            rng: AtomicU64::new(0),
            max_endpoints: 1,
            timer: None,
            hooks: None,
            on_release: OnceLock::new(),
        }
    }

    /// Puts flow control with `config` in front of the scheduler: requests wait until the pool
    /// has room, and legacy shedding is off (as upstream's flowControl feature).
    pub fn with_flow_control(mut self, config: FlowConfig) -> Result<Self, FlowConfigError> {
        let fc = FlowController::new(config)?;
        self.flow = Some(Mutex::new(FlowState { fc, queued: HashMap::new(), next_id: 0 }));
        Ok(self)
    }

    /// Each decision returns up to `n` (at least 1) ordered endpoints: the primary and fallbacks.
    pub fn with_max_endpoints(mut self, n: usize) -> Self {
        self.max_endpoints = n.max(1);
        self
    }

    /// Seeds the core's random source (request ids, weighted rewrites, tie breaks).
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.rng = AtomicU64::new(seed);
        self
    }

    /// Times the decision and the dispatch cycle with `clock` for their latency histograms.
    /// Without one they record nothing (a simulator's decisions take no virtual time).
    pub fn with_timer(mut self, clock: Arc<dyn Clock>) -> Self {
        self.timer = Some(clock);
        self
    }

    /// Installs the lifecycle's extension hooks.
    pub fn with_hooks(mut self, hooks: Arc<dyn Hooks>) -> Self {
        self.hooks = Some(hooks);
        self
    }

    /// Called whenever a request admitted by flow control ends (its place in the pool is free):
    /// a driver runs a dispatch cycle then. Set once; later calls are ignored.
    pub fn set_release_notifier(&self, f: Box<dyn Fn() + Send + Sync>) {
        let _ = self.on_release.set(f);
    }

    /// The pool's name.
    pub fn pool(&self) -> &str {
        &self.pool
    }

    /// The datastore.
    pub fn datastore(&self) -> &Arc<Datastore> {
        &self.datastore
    }

    /// The scheduler.
    pub fn scheduler(&self) -> &Arc<Scheduler> {
        &self.scheduler
    }

    /// The request metrics it records.
    pub fn metrics(&self) -> &Arc<RequestMetrics> {
        &self.metrics.request
    }

    /// Flow control's metrics (empty families without flow control).
    pub fn flow_metrics(&self) -> &Arc<FlowMetrics> {
        &self.metrics.flow
    }

    /// True when flow control is on.
    pub fn has_flow_control(&self) -> bool {
        self.flow.is_some()
    }

    /// Most endpoints a decision returns.
    pub fn max_endpoints(&self) -> usize {
        self.max_endpoints
    }

    /// The datastore snapshot requests are prepared against.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.datastore.snapshot()
    }

    /// A uniformly random number from the core's seeded source.
    pub fn draw(&self) -> u64 {
        splitmix(&self.rng)
    }

    /// Reads a request's headers as every driver does: the request id (when the client sent
    /// none) comes from the core's seeded source.
    pub fn head<K: AsRef<str>, V: AsRef<str>>(
        &self,
        path: Option<&str>,
        headers: impl IntoIterator<Item = (K, V)>,
    ) -> RequestHead {
        let id = u128::from(self.draw()) << 64 | u128::from(self.draw());
        RequestHead::new(path, headers, id)
    }

    /// Finishes reading a request at the end of its body against the pool's snapshot: parse
    /// (unless the driver parsed it already, e.g. to choose the pool), weighted model rewrite
    /// drawn from the core's source, objective and priority. `None` body: a body-less request.
    pub fn prepare(
        &self,
        head: RequestHead,
        body: Option<Bytes>,
        parsed: Option<ParsedBody>,
    ) -> Result<Prepared, RequestError> {
        let snapshot = self.datastore.snapshot();
        let draw = self.draw();
        match (body, parsed) {
            (Some(body), Some(parsed)) => {
                head.prepare_parsed(body, parsed, &snapshot, draw).map(|p| Prepared::Inference(Box::new(p)))
            }
            (body, _) => head.prepare(body, &snapshot, draw),
        }
    }

    /// A random endpoint for a request that is not scheduled (no body, or a path igw does not
    /// parse). No endpoint is an `Internal` error (500).
    pub fn pick_any(&self) -> Result<Arc<Endpoint>, RequestError> {
        pick_random_endpoint(&self.datastore.snapshot(), self.draw()).cloned()
    }

    fn elapsed_since(&self, t0: Option<Instant>) -> Option<f64> {
        let (t, t0) = (self.timer.as_ref()?, t0?);
        Some(t.now().saturating_duration_since(t0).as_secs_f64())
    }

    fn timer_now(&self) -> Option<Instant> {
        self.timer.as_ref().map(|t| t.now())
    }

    fn request(self: &Arc<Self>, ctx: Ctx, now: Instant) -> Request {
        Request { core: self.clone(), ctx, decision: None, attempt: None, running: false, last_time: now, ended: false }
    }

    /// Admits `prepared` at `now`: the [`Hooks::before_admit`] hook, then flow control. Refusals
    /// carry upstream's codes (429 when a queue is full).
    pub fn admit(self: &Arc<Self>, prepared: &PreparedRequest, now: Instant) -> Result<Admission, RequestError> {
        if let Some(h) = &self.hooks {
            h.before_admit(prepared)?;
        }
        let ctx = Ctx::of(prepared, &self.metrics, now);
        let Some(flow) = &self.flow else {
            return Ok(Admission::Admitted(self.request(ctx, now)));
        };
        let t0 = self.timer_now();
        let mut st = flow.lock();
        let id = st.next_id;
        st.next_id += 1;
        let q = QueuedRequest::from_request(id, &prepared.request, now, st.fc.config().output_token_weight);
        let bytes = q.bytes;
        let result = st.fc.enqueue(q);
        let outcome = result.as_ref().err().map(Rejected::outcome);
        if let Some(secs) = self.elapsed_since(t0) {
            ctx.series.enqueued(outcome, secs);
        }
        if let Err(rejected) = result {
            drop(st);
            ctx.series.queue_settled(rejected.outcome(), 0.0);
            return Err(match rejected {
                Rejected::DuplicateId(_) => RequestError::internal(rejected.to_string()),
                _ => RequestError::resource_exhausted(format!("{MSG_QUEUE_FULL}: {rejected}")),
            });
        }
        ctx.series.queue_moved(bytes, 1.0);
        st.queued.insert(id, Queued { ctx, bytes });
        drop(st);
        if let Some(h) = &self.hooks {
            h.queued(prepared, id);
        }
        Ok(Admission::Queued(id))
    }

    /// Requests waiting in flow control.
    pub fn queued(&self) -> usize {
        self.flow.as_ref().map_or(0, |f| f.lock().fc.len())
    }

    /// The earliest TTL deadline of a waiting request: run a dispatch cycle then.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.flow.as_ref().and_then(|f| f.lock().fc.next_deadline())
    }

    /// The VTC counter of a flow, if it exists (see [`FlowController::flow_counter`]).
    pub fn flow_counter(&self, fairness_id: &str, priority: Priority) -> Option<f64> {
        self.flow.as_ref().and_then(|f| f.lock().fc.flow_counter(fairness_id, priority))
    }

    /// One dispatch cycle at `now`: expires TTLs (503), then releases what the pool has room for,
    /// in flow control's order. Each released request comes back admitted, to be decided and
    /// routed by the caller; requests released in the same cycle count as load spread over the
    /// endpoints, so a stale scrape cannot release a whole burst at once.
    pub fn dispatch_cycle(self: &Arc<Self>, now: Instant) -> Vec<(QueueId, Result<Request, RequestError>)> {
        let Some(flow) = &self.flow else { return Vec::new() };
        let t0 = self.timer_now();
        let view = self.scheduler.detector().pool_view(&self.datastore.snapshot().endpoints, now);
        self.metrics.flow.saturation(view.saturation(0));
        let mut st = flow.lock();
        let mut settled: Vec<(QueueId, Queued, Outcome, Option<Dispatched>)> = Vec::new();
        for (id, outcome) in st.fc.expire(now) {
            if let Some(q) = st.queued.remove(&id) {
                settled.push((id, q, outcome, None));
            }
        }
        let mut released = 0usize;
        let dispatched = st.fc.dispatch_while(now, |last| {
            released += usize::from(last.is_some());
            view.load(released)
        });
        for d in dispatched {
            if let Some(q) = st.queued.remove(&d.id) {
                settled.push((d.id, q, Outcome::Dispatched, Some(d)));
            }
        }
        drop(st);
        let out: Vec<_> = settled
            .into_iter()
            .filter_map(|(id, q, outcome, d)| Some((id, self.settle(q, outcome, d, now)?)))
            .collect();
        if let Some(h) = &self.hooks {
            for (id, r) in &out {
                h.dequeued(*id, r.is_ok());
            }
        }
        if let Some(secs) = self.elapsed_since(t0) {
            self.metrics.flow.dispatch_cycle_latency(secs);
        }
        out
    }

    /// Takes a waiting request out of its queue (its client went away). False if it was not
    /// waiting (already released or evicted).
    pub fn cancel(&self, id: QueueId, now: Instant) -> bool {
        let Some(flow) = &self.flow else { return false };
        let q = {
            let mut st = flow.lock();
            if !st.fc.cancel(id) {
                return false;
            }
            st.queued.remove(&id)
        };
        if let Some(q) = q {
            self.settle_metrics(&q, Outcome::EvictedContextCancelled, None, now);
        }
        true
    }

    /// Evicts every waiting request (shutdown): each gets 503.
    pub fn drain(&self, now: Instant) -> Vec<(QueueId, RequestError)> {
        let Some(flow) = &self.flow else { return Vec::new() };
        let gone: Vec<(QueueId, Queued)> = {
            let mut st = flow.lock();
            let evicted = st.fc.drain();
            evicted.iter().filter_map(|(id, _)| st.queued.remove(id).map(|q| (*id, q))).collect()
        };
        gone.into_iter()
            .map(|(id, q)| {
                self.settle_metrics(&q, Outcome::EvictedOther, None, now);
                (id, RequestError::service_unavailable(MSG_QUEUE_SHUTDOWN))
            })
            .collect()
    }

    fn settle_metrics(&self, q: &Queued, outcome: Outcome, d: Option<&Dispatched>, now: Instant) -> Duration {
        q.ctx.series.queue_moved(q.bytes, -1.0);
        let queued_for = d.map_or_else(|| now.saturating_duration_since(q.ctx.admitted), |d| d.queued_for);
        q.ctx.series.queue_settled(outcome, queued_for.as_secs_f64());
        queued_for
    }

    /// A request that left its queue: gauges down, queue time recorded, and what its waiter gets.
    fn settle(
        self: &Arc<Self>,
        q: Queued,
        outcome: Outcome,
        d: Option<Dispatched>,
        now: Instant,
    ) -> Option<Result<Request, RequestError>> {
        let queued_for = self.settle_metrics(&q, outcome, d.as_ref(), now);
        match (outcome, d) {
            (Outcome::Dispatched, Some(d)) => {
                let mut ctx = q.ctx;
                ctx.ticket =
                    Some(Ticket { fairness_id: d.fairness_id, priority: d.priority, charged: d.charged, queued_for });
                Some(Ok(self.request(ctx, now)))
            }
            (Outcome::EvictedTTL, _) => Some(Err(RequestError::service_unavailable(MSG_QUEUE_TTL))),
            (Outcome::EvictedContextCancelled, _) => None,
            _ => Some(Err(RequestError::service_unavailable(MSG_QUEUE_SHUTDOWN))),
        }
    }
}

/// The routing attempt in progress: its leg (the endpoint charged with the request), and the
/// prefix entries the attempt added there.
#[derive(Debug)]
struct Attempt {
    added: Vec<u64>,
    leg: Leg,
}

/// One admitted request, from admission to its end. Dropping it ends it (without a summary):
/// its in-flight load and its place in flow control are released exactly once, whatever path
/// the driver took.
pub struct Request {
    core: Arc<PoolCore>,
    ctx: Ctx,
    decision: Option<SchedDecision>,
    attempt: Option<Attempt>,
    /// Counted in `running_requests` (from the first attempt to the end).
    running: bool,
    last_time: Instant,
    ended: bool,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("model", &self.ctx.series.model())
            .field("target_model", &self.ctx.series.target_model())
            .field("endpoints", &self.endpoints().iter().map(|e| e.address()).collect::<Vec<_>>())
            .field("attempt", &self.attempt.as_ref().map(|a| a.leg.endpoint.address()))
            .finish_non_exhaustive()
    }
}

impl Request {
    /// The flow control ticket, when flow control released the request.
    pub fn ticket(&self) -> Option<&Ticket> {
        self.ctx.ticket.as_ref()
    }

    /// The decided endpoints, primary first (empty before [`Request::decide`]).
    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        self.decision.as_ref().map_or(&[], |d| &d.endpoints)
    }

    /// The endpoint the request is charged to (the attempt in progress).
    pub fn current(&self) -> Option<&Arc<Endpoint>> {
        self.attempt.as_ref().map(|a| &a.leg.endpoint)
    }

    /// The scheduler's decision, once made.
    pub fn decision(&self) -> Option<&SchedDecision> {
        self.decision.as_ref()
    }

    /// Decides where `prepared` goes among the snapshot's endpoints (those `subset` admits):
    /// legacy shedding when flow control is off, then the scheduler. Returns the primary and
    /// ordered fallbacks. Errors: 503 with no candidate, 429 when shed.
    pub fn decide(
        &mut self,
        prepared: &PreparedRequest,
        subset: Option<&EndpointSubset>,
        now: Instant,
    ) -> Result<&[Arc<Endpoint>], RequestError> {
        self.last_time = now;
        let core = &*self.core;
        let snapshot = core.datastore.snapshot();
        let req = &prepared.request;
        let cands = candidates(&snapshot, subset)?;
        if core.flow.is_none()
            && let Err(ScheduleError::Saturated) = core.scheduler.admit(req, &cands, now)
        {
            let e = RequestError::resource_exhausted(MSG_SATURATED);
            self.ctx.series.error(e.code);
            return Err(e);
        }
        let t0 = core.timer_now();
        let mut rng = SmallRng::seed_from_u64(core.draw());
        let result = core.scheduler.schedule(req, &cands, core.max_endpoints, now, &mut rng);
        let m = &core.metrics.request;
        if let Some(secs) = core.elapsed_since(t0) {
            m.scheduler_latency(secs);
        }
        let series = &self.ctx.series;
        match result {
            Ok(decision) => {
                series.scheduled(&decision.endpoints[0]);
                if let Some(p) = decision.predictions.first() {
                    m.predicted(p.ttft_s, p.tpot_s);
                }
                series.requested(self.ctx.body_bytes);
                if let (Some(ratio), Some(index)) = (decision.prefix_hit_ratio(), core.scheduler.prefix_index()) {
                    let bytes = f64::from(decision.prefix_matched_blocks) * index.config().chars_per_block() as f64;
                    m.prefix_hit(ratio, bytes);
                }
                self.decision = Some(decision);
                Ok(self.endpoints())
            }
            Err(e) => {
                series.schedule_failed();
                let err = match e {
                    ScheduleError::NoCandidates => RequestError::new(
                        ErrorCode::ServiceUnavailable,
                        format!("{MSG_SCHEDULE_FAILED}: {MSG_NO_CANDIDATES}"),
                    ),
                    ScheduleError::Saturated => RequestError::resource_exhausted(MSG_SATURATED),
                    ScheduleError::SloUnattainable => RequestError::resource_exhausted(MSG_SLO_UNATTAINABLE),
                };
                series.error(err.code);
                Err(err)
            }
        }
    }

    /// The request is being sent to `endpoint` (the primary, or a fallback after a failed
    /// attempt): its in-flight load and the prompt's prefix blocks are charged there. An attempt
    /// still in progress is taken back first.
    pub fn attempt(&mut self, endpoint: &Arc<Endpoint>, now: Instant) {
        self.last_time = now;
        if self.decision.is_none() {
            return;
        }
        if self.attempt.is_some() {
            self.attempt_failed(now);
        }
        let (Some(decision), core) = (&self.decision, &self.core) else { return };
        let mut added = Vec::new();
        core.scheduler.on_attempt(decision, endpoint, Some(&mut added));
        if let Some(h) = &core.hooks {
            h.routed(endpoint, &decision.prefix_hashes);
        }
        if let Some(index) = core.scheduler.prefix_index() {
            core.metrics.request.prefix_index_size(index.len());
        }
        if !self.running {
            self.running = true;
            self.ctx.series.running(1.0);
        }
        let leg = Leg { endpoint: endpoint.clone(), sent: now, first_byte: None, first_token: None };
        self.attempt = Some(Attempt { added, leg });
    }

    /// The attempt in progress failed before its endpoint served the request (refused or reset
    /// connection, a 503 before any byte reached the client): its load is released and the
    /// prefix entries it added are forgotten, so the index does not credit the endpoint with a
    /// prompt it never saw.
    pub fn attempt_failed(&mut self, now: Instant) {
        self.last_time = now;
        let (Some(decision), Some(a)) = (&self.decision, self.attempt.take()) else { return };
        self.core.scheduler.on_attempt_failed(decision, &a.leg.endpoint, &a.added);
        if let Some(h) = &self.core.hooks {
            h.unrouted(&a.leg.endpoint, &a.added);
        }
    }

    /// The gateway reports that `addr` served the request (Envoy's `envoy.lb` metadata). When it
    /// is not the endpoint the request is charged to (Envoy used a fallback), the charge moves to
    /// it: load, prefix entries, and the end's accounting.
    pub fn served_by(&mut self, addr: SocketAddr, now: Instant) {
        if self.current().is_none_or(|e| e.address() == addr) {
            return;
        }
        let Some(target) = self.endpoints().iter().find(|e| e.address() == addr).cloned() else { return };
        self.attempt(&target, now);
    }

    /// The first response byte arrived at `now`.
    pub fn first_byte(&mut self, now: Instant) {
        self.last_time = now;
        if let Some(a) = &mut self.attempt
            && a.leg.first_byte.is_none()
        {
            a.leg.first_byte = Some(now);
        }
    }

    /// The first output arrived at `now` (the driver's response tracker saw the first content
    /// event of a stream, or the first body bytes): the prefill is done. Response headers come
    /// before it (an engine answers 200 at once and then prefills), so this, not
    /// [`Request::first_byte`], is what the latency model learns TTFT from.
    pub fn first_token(&mut self, now: Instant) {
        self.last_time = now;
        if let Some(a) = &mut self.attempt
            && a.leg.first_token.is_none()
        {
            a.leg.first_byte.get_or_insert(now);
            a.leg.first_token = Some(now);
            if let Some(d) = &self.decision {
                self.core.scheduler.on_first_token(d, &a.leg.endpoint);
            }
        }
    }

    /// Headers to add to the client's response (the session token of `session-affinity-scorer`).
    pub fn response_headers(&self) -> Vec<(String, String)> {
        match self.current() {
            Some(e) if self.core.scheduler.session_affinity() => {
                let m = e.meta();
                vec![(
                    igw_sched::session::SESSION_TOKEN_HEADER.to_string(),
                    igw_sched::session::encode_token(&m.namespace, &m.pod),
                )]
            }
            _ => Vec::new(),
        }
    }

    /// Ends the request at `now` with the response's summary (`None`: no response arrived).
    pub fn end(mut self, summary: Option<&ResponseSummary>, now: Instant) {
        self.finish(summary, now);
    }

    fn finish(&mut self, summary: Option<&ResponseSummary>, now: Instant) {
        if self.ended {
            return;
        }
        self.ended = true;
        let core = &*self.core;
        let series = &self.ctx.series;
        if let (Some(decision), Some(a)) = (&self.decision, &self.attempt) {
            let seen = summary.and_then(|s| observed(s, &a.leg, now));
            core.scheduler.on_finished_observed(decision, &a.leg.endpoint, seen.as_ref(), a.leg.first_token.is_some());
            if let Some(seen) = &seen {
                let tpot = (seen.completion_tokens > 1 && seen.ttft_s.is_some())
                    .then(|| (seen.e2e_s - seen.ttft_s.unwrap_or(0.0)) / (seen.completion_tokens - 1) as f64);
                series.latency(seen.ttft_s, tpot);
                let (ttft_miss, tpot_miss) = decision.slo.missed(seen.ttft_s, tpot);
                series.slo_outcome(ttft_miss, tpot_miss);
                if let Some(p) = decision.prediction_for(&a.leg.endpoint) {
                    let rel = |pred: f64, x: f64| (x > 0.0).then(|| (pred - x).abs() / x);
                    core.metrics.request.prediction_error(
                        seen.ttft_s.and_then(|x| rel(p.ttft_s, x)),
                        tpot.and_then(|x| rel(p.tpot_s, x)),
                    );
                }
            }
        }
        if self.running {
            series.running(-1.0);
        }
        let secs = now.saturating_duration_since(self.ctx.admitted).as_secs_f64();
        match summary {
            Some(s) if !s.model_server_error => series.served(secs, s.response_bytes, s.usage.as_ref()),
            Some(_) => series.error(ErrorCode::ModelServerError),
            None => {}
        }
        if let (Some(flow), Some(t)) = (&core.flow, &self.ctx.ticket) {
            if let Some(u) = summary.and_then(|s| s.usage) {
                flow.lock().fc.on_served(&t.fairness_id, t.priority, u.prompt_tokens, u.completion_tokens, t.charged);
            }
            if let Some(wake) = core.on_release.get() {
                wake();
            }
        }
        if let Some(h) = &core.hooks {
            h.after_end(&Ended {
                model: series.model(),
                target_model: series.target_model(),
                priority: series.priority(),
                fairness_id: series.fairness_id(),
                leg: self.attempt.as_ref().map(|a| &a.leg),
                summary,
                admitted: self.ctx.admitted,
                now,
            });
        }
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        let now = self.last_time;
        self.finish(None, now);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::request::{Draws, Prepared, build_request};
    use bytes::Bytes;
    use igw_core::{EndpointMeta, EndpointMetrics};
    use std::sync::atomic::AtomicUsize;

    fn core(ds: &Arc<Datastore>, policy: &str) -> PoolCore {
        PoolCore::new("p", ds.clone(), Arc::new(Scheduler::from_policy(policy).unwrap())).with_seed(1)
    }

    fn admitted(core: &Arc<PoolCore>, p: &PreparedRequest, now: Instant) -> Request {
        match core.admit(p, now).unwrap() {
            Admission::Admitted(r) => r,
            Admission::Queued(_) => panic!("admitted expected"),
        }
    }

    fn prepared(ds: &Datastore, priority_header: Option<&str>) -> PreparedRequest {
        let body = Bytes::from_static(br#"{"model":"m","prompt":"hello there"}"#);
        let headers: Vec<(&str, &str)> =
            priority_header.map(|o| vec![("x-gateway-inference-objective", o)]).unwrap_or_default();
        match build_request(Some("/v1/completions"), headers, Some(body), &ds.snapshot(), Draws::default()).unwrap() {
            Prepared::Inference(p) => *p,
            Prepared::NoBody(_) => panic!("inference expected"),
        }
    }

    #[test]
    fn decides_accounts_and_records_metrics() {
        let ds = Arc::new(Datastore::with_endpoints(
            ["10.0.0.1:8000", "10.0.0.2:8000"].map(|a| EndpointMeta::parse_addr(a).unwrap()),
        ));
        let now = Instant::from_millis(5);
        let s = ds.snapshot();
        s.endpoints[0].set_metrics(EndpointMetrics { waiting: 9, update_time: Some(now), ..Default::default() });
        s.endpoints[1].set_metrics(EndpointMetrics { waiting: 0, update_time: Some(now), ..Default::default() });
        let d = core(&ds, "igw").with_max_endpoints(2);
        let d = Arc::new(d);
        let p = prepared(&ds, None);
        let mut r = admitted(&d, &p, now);
        let primary = r.decide(&p, None, now).unwrap()[0].clone();
        assert_eq!(primary.id(), s.endpoints[1].id());
        assert_eq!(r.endpoints().len(), 2);
        r.attempt(&primary, now);
        assert_eq!(primary.in_flight().requests(), 1);
        r.end(Some(&ResponseSummary::default()), Instant::from_millis(40));
        assert_eq!(primary.in_flight().requests(), 0);
        let mut out = String::new();
        d.metrics().render(&mut out);
        assert!(
            out.contains(
                "inference_objective_request_total{model_name=\"m\",priority=\"0\",target_model_name=\"m\"} 1"
            ),
            "{out}"
        );
        assert!(out.contains("inference_extension_scheduler_attempts_total{namespace=\"default\""));
    }

    #[test]
    fn records_sizes_prefix_hits_and_rewrite_decisions() {
        let ds = Arc::new(Datastore::with_endpoints([EndpointMeta::parse_addr("10.0.0.1:8000").unwrap()]));
        ds.apply_rewrite(igw_core::ModelRewrite {
            id: igw_core::ObjectRef::new("default", "canary"),
            created_unix: 1,
            rules: vec![igw_core::RewriteRule {
                matches: vec!["m".into()],
                targets: vec![igw_core::TargetModel { model: "m-v2".into(), weight: 1 }],
            }],
        })
        .unwrap();
        let d = Arc::new(core(&ds, "igw"));
        let now = Instant::from_millis(5);
        let p = prepared(&ds, None);
        assert_eq!(p.request.target_model, "m-v2");
        for _ in 0..2 {
            let mut r = admitted(&d, &p, now);
            let e = r.decide(&p, None, now).unwrap()[0].clone();
            r.attempt(&e, now);
            let summary = ResponseSummary {
                response_bytes: 300,
                usage: Some(crate::usage::Usage {
                    prompt_tokens: 4,
                    completion_tokens: 2,
                    total_tokens: 6,
                    cached_tokens: 3,
                }),
                ..Default::default()
            };
            r.end(Some(&summary), now);
        }
        let mut out = String::new();
        d.metrics().render(&mut out);
        let has = |line: &str| assert!(out.contains(line), "missing {line:?} in\n{out}");
        let m = "model_name=\"m\",target_model_name=\"m-v2\"";
        has(&format!("inference_objective_request_sizes_bucket{{{m},le=\"64\"}} 2"));
        has(&format!("inference_objective_response_sizes_bucket{{{m},le=\"512\"}} 2"));
        has(&format!("inference_objective_response_sizes_bucket{{{m},le=\"256\"}} 0"));
        has(&format!("inference_objective_prompt_cached_tokens_count{{{m}}} 2"));
        has(
            "inference_extension_model_rewrite_decisions_total{model_name=\"m\",model_rewrite_name=\"canary\",target_model=\"m-v2\"} 2",
        );
        has("inference_extension_info{build_ref=\"");
        // The prompt is shorter than a block: nothing to hash, so no hit is recorded.
        assert!(!out.contains("inference_extension_prefix_indexer_hit_ratio_count"), "{out}");
    }

    #[test]
    fn prefix_hits_are_recorded_for_the_pick() {
        let ds = Arc::new(Datastore::with_endpoints([EndpointMeta::parse_addr("10.0.0.1:8000").unwrap()]));
        let d = Arc::new(core(&ds, "igw"));
        let now = Instant::from_millis(5);
        let s = ds.snapshot();
        let body = format!(r#"{{"model":"m","prompt":"{}"}}"#, "a long shared system prompt. ".repeat(20));
        let Prepared::Inference(p) = build_request(
            Some("/v1/completions"),
            Vec::<(&str, &str)>::new(),
            Some(Bytes::from(body)),
            &s,
            Draws::default(),
        )
        .unwrap() else {
            panic!("inference expected")
        };
        for _ in 0..2 {
            let mut r = admitted(&d, &p, now);
            let e = r.decide(&p, None, now).unwrap()[0].clone();
            r.attempt(&e, now);
            r.end(None, now);
        }
        let mut out = String::new();
        d.metrics().render(&mut out);
        // First request: a miss (ratio 0); second: the whole prompt (ratio 1, 10 blocks of 64 bytes).
        assert!(out.contains("inference_extension_prefix_indexer_hit_ratio_bucket{le=\"0\"} 1\n"), "{out}");
        assert!(out.contains("inference_extension_prefix_indexer_hit_ratio_count 2\n"), "{out}");
        assert!(out.contains("inference_extension_prefix_indexer_hit_bytes_sum 640\n"), "{out}");
        assert!(out.contains("inference_extension_prefix_indexer_size 10\n"), "{out}");
    }

    #[test]
    fn sheds_sheddable_requests_when_saturated() {
        let ds = Arc::new(Datastore::with_endpoints([EndpointMeta::parse_addr("10.0.0.1:8000").unwrap()]));
        ds.apply_objective(igw_core::InferenceObjective {
            id: igw_core::ObjectRef::new("default", "batch"),
            priority: -1,
            legacy_model_name: None,
            goals: Default::default(),
        });
        let now = Instant::from_millis(5);
        let s = ds.snapshot();
        s.endpoints[0].set_metrics(EndpointMetrics { waiting: 50, update_time: Some(now), ..Default::default() });
        let d = Arc::new(core(&ds, "igw"));
        let batch = prepared(&ds, Some("batch"));
        let err = admitted(&d, &batch, now).decide(&batch, None, now).unwrap_err();
        assert_eq!(err.http_status(), 429);
        let normal = prepared(&ds, None);
        assert!(admitted(&d, &normal, now).decide(&normal, None, now).is_ok(), "priority 0 is never shed");
        let mut out = String::new();
        d.metrics().render(&mut out);
        assert!(out.contains("error_code=\"ResourceExhausted\""));
    }

    #[test]
    fn the_latency_model_learns_from_outcomes_and_reports_predictions_and_slo_misses() {
        let ds = pool2();
        let now = Instant::from_millis(5);
        for e in &ds.snapshot().endpoints {
            e.set_metrics(EndpointMetrics { update_time: Some(now), ..Default::default() });
        }
        let d = Arc::new(core(&ds, "igw-latency"));
        let body = Bytes::from_static(br#"{"model":"m","prompt":"hello there","max_tokens":11,"stream":true}"#);
        let head = [("x-llm-d-slo-ttft-ms", "20")];
        for i in 0..4u64 {
            let p = match build_request(
                Some("/v1/completions"),
                head,
                Some(body.clone()),
                &ds.snapshot(),
                Draws::default(),
            )
            .unwrap()
            {
                Prepared::Inference(p) => *p,
                Prepared::NoBody(_) => panic!("inference expected"),
            };
            let mut r = admitted(&d, &p, now);
            let e = r.decide(&p, None, now).unwrap()[0].clone();
            assert_eq!(r.decision().unwrap().predictions.len(), 1);
            r.attempt(&e, now);
            // Headers at once, TTFT 50 ms (past the 20 ms objective), then 10 tokens at 10 ms.
            r.first_byte(Instant::from_millis(6));
            r.first_token(Instant::from_millis(55));
            let usage =
                crate::usage::Usage { prompt_tokens: 3, completion_tokens: 11, total_tokens: 14, cached_tokens: 0 };
            let summary =
                ResponseSummary { status: Some(200), streaming: true, usage: Some(usage), ..Default::default() };
            r.end(Some(&summary), Instant::from_millis(155 + i));
        }
        let model = d.scheduler().latency_model().unwrap();
        let learned: u64 =
            ds.snapshot().endpoints.iter().filter_map(|e| model.view(e.id())).map(|v| v.tpot_samples).sum();
        assert_eq!(learned, 4, "every outcome trains the model");
        assert_eq!(model.load(&[ds.snapshot().endpoints[0].id()]), vec![(0.0, 0.0)], "all load released");
        let mut out = String::new();
        d.metrics().render(&mut out);
        assert!(out.contains("inference_objective_request_predicted_ttft_seconds_count 4"), "{out}");
        assert!(out.contains("inference_objective_request_predicted_tpot_seconds_count 4"), "{out}");
        assert!(out.contains("igw_latency_prediction_error_ratio_count{signal=\"ttft\"} 4"), "{out}");
        assert!(
            out.contains("inference_objective_request_slo_violation_total{model_name=\"m\",target_model_name=\"m\",type=\"ttft\"} 4"),
            "{out}"
        );
        assert!(!out.contains("type=\"tpot\""), "no TPOT objective was stated: {out}");
        // What was seen, whatever the policy: TTFT 50 ms from forwarding, TPOT about 10 ms.
        let l = "{model_name=\"m\",target_model_name=\"m\"";
        assert!(out.contains(&format!("inference_objective_request_ttft_seconds_bucket{l},le=\"0.025\"}} 0")), "{out}");
        assert!(out.contains(&format!("inference_objective_request_ttft_seconds_bucket{l},le=\"0.05\"}} 4")), "{out}");
        assert!(out.contains(&format!("inference_objective_request_tpot_seconds_count{l}}} 4")), "{out}");
    }

    fn long_prompt(ds: &Datastore) -> PreparedRequest {
        let body = format!(r#"{{"model":"m","prompt":"{}"}}"#, "a long shared system prompt. ".repeat(20));
        match build_request(
            Some("/v1/completions"),
            Vec::<(&str, &str)>::new(),
            Some(Bytes::from(body)),
            &ds.snapshot(),
            Draws::default(),
        )
        .unwrap()
        {
            Prepared::Inference(p) => *p,
            Prepared::NoBody(_) => panic!("inference expected"),
        }
    }

    fn pool2() -> Arc<Datastore> {
        Arc::new(Datastore::with_endpoints(
            ["10.0.0.1:8000", "10.0.0.2:8000"].map(|a| EndpointMeta::parse_addr(a).unwrap()),
        ))
    }

    #[test]
    fn a_failed_attempt_releases_its_load_and_its_prefix_entries() {
        let ds = pool2();
        let d = Arc::new(core(&ds, "igw").with_max_endpoints(2));
        let now = Instant::from_millis(5);
        let p = long_prompt(&ds);
        let mut r = admitted(&d, &p, now);
        let eps = r.decide(&p, None, now).unwrap().to_vec();
        r.attempt(&eps[0], now);
        let index = d.scheduler().prefix_index().unwrap();
        assert_eq!(index.len(), 10);
        // The primary refused the connection: nothing of the request stays charged to it.
        r.attempt_failed(now);
        assert_eq!((eps[0].in_flight().requests(), index.len()), (0, 0));
        r.attempt(&eps[1], now);
        assert_eq!(eps[1].in_flight().requests(), 1);
        r.end(Some(&ResponseSummary::default()), now);
        assert_eq!(eps[1].in_flight().requests(), 0);
        // The fallback that served it holds the prompt; the primary does not.
        let m = index.match_prefix(&r_hashes(&d, &p));
        assert_eq!((m.matched(eps[0].id()), m.matched(eps[1].id())), (0, 10));
        let mut out = String::new();
        d.metrics().render(&mut out);
        assert!(out.contains("inference_objective_running_requests{model_name=\"m\"} 0\n"), "{out}");
    }

    fn r_hashes(d: &Arc<PoolCore>, p: &PreparedRequest) -> Vec<u64> {
        let mut r = admitted(d, p, Instant::ZERO);
        r.decide(p, None, Instant::ZERO).unwrap();
        r.decision().unwrap().prefix_hashes.clone()
    }

    #[test]
    fn the_endpoint_the_gateway_reports_gets_the_accounting() {
        let ds = pool2();
        let d = Arc::new(core(&ds, "igw").with_max_endpoints(2));
        let now = Instant::from_millis(5);
        let p = long_prompt(&ds);
        let mut r = admitted(&d, &p, now);
        let eps = r.decide(&p, None, now).unwrap().to_vec();
        r.attempt(&eps[0], now);
        // Envoy used the fallback.
        r.served_by(eps[1].address(), now);
        assert_eq!((eps[0].in_flight().requests(), eps[1].in_flight().requests()), (0, 1));
        assert_eq!(r.current().unwrap().id(), eps[1].id());
        // Reporting the endpoint already charged, or one outside the decision, changes nothing.
        r.served_by(eps[1].address(), now);
        r.served_by("10.9.9.9:1".parse().unwrap(), now);
        assert_eq!(eps[1].in_flight().requests(), 1);
        drop(r);
        assert_eq!(eps[1].in_flight().requests(), 0);
    }

    #[derive(Default)]
    struct Recorder {
        ended: AtomicUsize,
        routed: AtomicUsize,
    }

    impl Hooks for Recorder {
        fn before_admit(&self, p: &PreparedRequest) -> Result<(), RequestError> {
            if p.request.model == "blocked" {
                return Err(RequestError::new(ErrorCode::ResourceExhausted, "tenant over budget"));
            }
            Ok(())
        }
        fn routed(&self, _: &Arc<Endpoint>, _: &[u64]) {
            self.routed.fetch_add(1, Ordering::SeqCst);
        }
        fn after_end(&self, end: &Ended<'_>) {
            assert!(end.now >= end.admitted);
            self.ended.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn hooks_see_admission_routing_and_exactly_one_end() {
        let ds = pool2();
        let rec = Arc::new(Recorder::default());
        let d = Arc::new(core(&ds, "round-robin").with_hooks(rec.clone()));
        let now = Instant::from_millis(5);
        let p = prepared(&ds, None);
        let mut r = admitted(&d, &p, now);
        let e = r.decide(&p, None, now).unwrap()[0].clone();
        r.attempt(&e, now);
        r.first_byte(Instant::from_millis(7));
        r.end(None, Instant::from_millis(9));
        // Dropped without ever being decided: still one end.
        drop(admitted(&d, &p, now));
        assert_eq!((rec.routed.load(Ordering::SeqCst), rec.ended.load(Ordering::SeqCst)), (1, 2));
        let mut blocked = prepared(&ds, None);
        blocked.request.model = "blocked".into();
        assert_eq!(d.admit(&blocked, now).unwrap_err().http_status(), 429);
        assert_eq!(rec.ended.load(Ordering::SeqCst), 2, "a refused request was never admitted");
    }

    #[test]
    fn flow_control_queues_releases_and_settles_the_fairness_counter() {
        let ds = pool2();
        let d = Arc::new(core(&ds, "round-robin").with_flow_control(igw_sched::flow::FlowConfig::igw()).unwrap());
        let now = Instant::from_millis(5);
        for e in &ds.snapshot().endpoints {
            e.set_metrics(EndpointMetrics { waiting: 10, update_time: Some(now), ..Default::default() });
        }
        let p = prepared(&ds, None);
        let Admission::Queued(id) = d.admit(&p, now).unwrap() else { panic!("queued expected") };
        assert!(d.dispatch_cycle(now).is_empty(), "saturated: nothing released");
        assert_eq!(d.queued(), 1);
        for e in &ds.snapshot().endpoints {
            e.set_metrics(EndpointMetrics { waiting: 0, update_time: Some(now), ..Default::default() });
        }
        let mut out = d.dispatch_cycle(now);
        assert_eq!(out.len(), 1);
        let (got, r) = out.pop().unwrap();
        assert_eq!(got, id);
        let mut r = r.unwrap();
        assert!(r.ticket().is_some());
        let e = r.decide(&p, None, now).unwrap()[0].clone();
        r.attempt(&e, now);
        let usage = crate::usage::Usage { prompt_tokens: 5, completion_tokens: 7, total_tokens: 12, cached_tokens: 0 };
        r.end(Some(&ResponseSummary { usage: Some(usage), ..Default::default() }), now);
        assert!(d.flow_counter(igw_core::request::DEFAULT_FAIRNESS_ID, 0).is_some());
        assert!(!d.cancel(id, now), "no longer queued");
    }
}
