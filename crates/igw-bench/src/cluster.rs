//! The cluster discrete-event simulation: N igw-sim engines in virtual time, an event queue
//! (arrivals, step ends, metric scrapes, client timeouts, queue TTLs), and igw's production
//! request core ([`igw_request::PoolCore`]) making every decision.
//!
//! The simulator is the third driver of the core, beside the ext_proc server and the proxy: each
//! arrival is a real OpenAI request body ([`crate::workload::completion_body`]) with the headers a
//! benchmark client sends (the class's objective and fairness id), read by the same
//! [`PoolCore::head`] / [`PoolCore::prepare`] (parse, model rewrite, objective and priority), then
//! admitted (flow control or shedding), decided, attempted, and ended with the response's usage,
//! all at virtual time. Each replica's metrics are its vLLM `/metrics` page as igw-sim renders it,
//! parsed by igw-metrics as a live scrape is, every `scrape_interval_ms` (replicas' scrape phases
//! spread over the period, so metrics are up to one period stale). Not modelled: network delay,
//! the decision's own CPU time, connection failures (so no fallbacks are tried).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use igw_core::{Datastore, Endpoint, EndpointMeta, InferenceObjective, Instant, ObjectRef};
use igw_metrics::EngineMapping;
use igw_request::{Admission, PoolCore, Prepared, PreparedRequest, QueueId, Request, ResponseSummary, Usage};
use igw_sched::detector::UtilizationDetector;
use igw_sim::{Engine, EngineConfig, RequestId, SimRequest};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::error::BenchError;
use crate::policy::Policy;
use crate::report::{ClassRow, Row};
use crate::scenario::{ClassSpec, ClientMode, Scenario};
use crate::stats::{LogHistogram, percentile};
use crate::workload::{Generator, RequestSpec, arrival_times, completion_body, prompt_text};

/// The path every simulated request is sent to.
const COMPLETIONS: &str = "/v1/completions";

/// What became of an arriving request at the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrived {
    /// Routed to the endpoint with this index (its datastore id).
    Routed(usize),
    /// Waiting in flow control: it comes out of a later [`Front::cycle`].
    Queued,
    /// Refused (shed, queue full, no endpoint).
    Rejected,
}

/// What became of an arrival: its own outcome, and the requests the arrival's dispatch cycle
/// settled besides it (flow control's fast path runs one cycle per enqueue, as the live gate
/// does), in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArrivalOutcome {
    /// The arriving request.
    pub own: Arrived,
    /// Other requests released (with their endpoint) or refused (`None`) in the same cycle.
    pub settled: Vec<(u32, Option<usize>)>,
}

impl From<Arrived> for ArrivalOutcome {
    fn from(own: Arrived) -> Self {
        ArrivalOutcome { own, settled: Vec::new() }
    }
}

/// The gateway side of the simulation: how a request reaches igw's request core, where it is
/// routed, and how it ends. [`CoreFront`] calls the core directly; a test can put a live driver
/// here (the ext_proc stream state machine) and check that it routes every request the same way.
/// All calls happen at virtual time `now`, in event order.
pub trait Front {
    /// Request `id` arrives with `headers` and an OpenAI `/v1/completions` `body`. With flow
    /// control the request is enqueued and one dispatch cycle runs at once (the live gate's fast
    /// path): the arriving request is decided first if it is released, then the others the cycle
    /// released, in order.
    fn arrive(&mut self, id: u32, headers: &[(&str, &str)], body: Bytes, now: Instant) -> ArrivalOutcome;
    /// One flow control dispatch cycle: each released request with the endpoint it was routed to,
    /// each refused one (its TTL ran out, or it could not be routed) with `None`, in order.
    fn cycle(&mut self, now: Instant) -> Vec<(u32, Option<usize>)>;
    /// Requests waiting in flow control.
    fn queued(&self) -> usize;
    /// The earliest queue deadline (run a cycle then).
    fn next_deadline(&self) -> Option<Instant>;
    /// The first token of request `id` reached the client.
    fn first_token(&mut self, id: u32, now: Instant);
    /// Request `id` completed with `usage` (as the server reports it).
    fn finished(&mut self, id: u32, usage: Usage, streaming: bool, now: Instant);
    /// The client gave up on request `id` (queued or running), or the engine refused it.
    fn abandon(&mut self, id: u32, now: Instant);
    /// What the latency model predicted for request `id` on the endpoint it was routed to:
    /// (TTFT, TPOT) seconds, when the policy predicts.
    fn prediction(&self, _id: u32) -> Option<(f64, f64)> {
        None
    }
}

/// The simulator's own front: the request core's calls, in the order the live drivers make them
/// (`head`, `prepare`, `admit`, `dispatch_cycle`, `decide`, `attempt`, `first_byte`, `end`).
#[derive(Debug)]
pub struct CoreFront {
    core: Arc<PoolCore>,
    prepared: HashMap<u32, PreparedRequest>,
    queued: HashMap<QueueId, u32>,
    queue_of: HashMap<u32, QueueId>,
    running: HashMap<u32, Request>,
    predictions: HashMap<u32, (f64, f64)>,
}

impl CoreFront {
    /// A front over `core`.
    pub fn new(core: Arc<PoolCore>) -> Self {
        CoreFront {
            core,
            prepared: HashMap::new(),
            queued: HashMap::new(),
            queue_of: HashMap::new(),
            running: HashMap::new(),
            predictions: HashMap::new(),
        }
    }

    /// Routes what a dispatch cycle released (in order) and reports what it refused.
    fn settle(
        &mut self,
        cycle: Vec<(QueueId, Result<Request, igw_request::RequestError>)>,
        now: Instant,
    ) -> Vec<(u32, Option<usize>)> {
        let mut out = Vec::with_capacity(cycle.len());
        for (q, result) in cycle {
            let Some(id) = self.queued.remove(&q) else { continue };
            self.queue_of.remove(&id);
            let prepared = self.prepared.remove(&id);
            let routed = match (result, prepared) {
                (Ok(r), Some(p)) => self.route(id, r, &p, now),
                _ => None,
            };
            out.push((id, routed));
        }
        out
    }

    fn route(&mut self, id: u32, mut request: Request, prepared: &PreparedRequest, now: Instant) -> Option<usize> {
        let endpoint = request.decide(prepared, None, now).ok()?[0].clone();
        request.attempt(&endpoint, now);
        if let Some(p) = request.decision().and_then(|d| d.predictions.first()) {
            self.predictions.insert(id, (p.ttft_s, p.tpot_s));
        }
        self.running.insert(id, request);
        Some(endpoint.id().0 as usize)
    }
}

impl Front for CoreFront {
    fn arrive(&mut self, id: u32, headers: &[(&str, &str)], body: Bytes, now: Instant) -> ArrivalOutcome {
        let head = self.core.head(Some(COMPLETIONS), headers.iter().copied());
        let Ok(Prepared::Inference(prepared)) = self.core.prepare(head, Some(body), None) else {
            return Arrived::Rejected.into();
        };
        match self.core.admit(&prepared, now) {
            Ok(Admission::Admitted(r)) => {
                self.route(id, r, &prepared, now).map_or(Arrived::Rejected, Arrived::Routed).into()
            }
            Ok(Admission::Queued(q)) => {
                // The fast path: one cycle now; the arriving request, if released, goes first.
                let mut cycle = self.core.dispatch_cycle(now);
                let own = match cycle.iter().position(|(x, _)| *x == q).map(|i| cycle.remove(i).1) {
                    Some(Ok(r)) => self.route(id, r, &prepared, now).map_or(Arrived::Rejected, Arrived::Routed),
                    Some(Err(_)) => Arrived::Rejected,
                    None => {
                        self.prepared.insert(id, *prepared);
                        self.queued.insert(q, id);
                        self.queue_of.insert(id, q);
                        Arrived::Queued
                    }
                };
                ArrivalOutcome { own, settled: self.settle(cycle, now) }
            }
            Err(_) => Arrived::Rejected.into(),
        }
    }

    fn cycle(&mut self, now: Instant) -> Vec<(u32, Option<usize>)> {
        let cycle = self.core.dispatch_cycle(now);
        self.settle(cycle, now)
    }

    fn queued(&self) -> usize {
        self.core.queued()
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.core.next_deadline()
    }

    fn first_token(&mut self, id: u32, now: Instant) {
        if let Some(r) = self.running.get_mut(&id) {
            r.first_byte(now);
            r.first_token(now);
        }
    }

    fn finished(&mut self, id: u32, usage: Usage, streaming: bool, now: Instant) {
        if let Some(r) = self.running.remove(&id) {
            let summary = ResponseSummary { status: Some(200), streaming, usage: Some(usage), ..Default::default() };
            r.end(Some(&summary), now);
        }
    }

    fn abandon(&mut self, id: u32, now: Instant) {
        if let Some(q) = self.queue_of.remove(&id) {
            self.core.cancel(q, now);
            self.queued.remove(&q);
            self.prepared.remove(&id);
        }
        // Dropping the request ends it without a response.
        self.running.remove(&id);
    }

    fn prediction(&self, id: u32) -> Option<(f64, f64)> {
        self.predictions.get(&id).copied()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    StepEnd(u32),
    Scrape(u32),
    Arrival(u32),
    Timeout(u32),
    Expire,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pending,
    Queued,
    Running,
    Completed,
    Rejected,
    TimedOut,
}

#[derive(Debug)]
struct Req {
    spec: RequestSpec,
    class: usize,
    arrival: f64,
    state: State,
    endpoint: usize,
    /// The endpoint the core routed it to, once routed.
    routed: Option<usize>,
    first: f64,
    last: f64,
    done: f64,
    tokens: u32,
    cached: u32,
    /// Output tokens generated while every class was backlogged at the gate.
    backlogged_tokens: u32,
    /// When it reached its engine.
    sent: f64,
}

/// What one simulation produced.
#[derive(Debug, Clone)]
pub struct PointResult {
    /// The report row.
    pub row: Row,
    /// Virtual seconds simulated (arrivals + drain).
    pub virtual_s: f64,
    /// Engine steps simulated.
    pub steps: u64,
    /// Per request (arrival order): the endpoint index the gateway routed it to (`None`: never
    /// routed) and how it ended.
    pub decisions: Vec<(Option<usize>, Ending)>,
}

/// How a simulated request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Completed.
    Completed,
    /// Refused by the gateway (shed, queue full, TTL) or the engine.
    Rejected,
    /// The client timed out.
    TimedOut,
}

struct Sim<'a, F: Front> {
    sc: &'a Scenario,
    classes: Vec<ClassSpec>,
    front: F,
    engines: Vec<Engine>,
    busy: Vec<bool>,
    endpoints: Vec<Arc<Endpoint>>,
    heap: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    seq: u64,
    reqs: Vec<Req>,
    expire_at: Option<u64>,
    unresolved: usize,
    itl: LogHistogram,
    steps: u64,
    model: String,
    block_size: u32,
    prefix_hashes: bool,
    mapping: EngineMapping,
    /// Requests queued at the gate, per class.
    queued_by_class: Vec<u32>,
    /// Whether every class has requests queued at the gate, since when, and the time so far.
    all_backlogged: bool,
    backlog_since: f64,
    backlogged_s: f64,
    flow_control: bool,
}

fn ns(t: f64) -> u64 {
    (t.max(0.0) * 1e9).round() as u64
}

impl<F: Front> Sim<'_, F> {
    fn push(&mut self, at: f64, ev: Ev) {
        self.seq += 1;
        self.heap.push(Reverse((ns(at), self.seq, ev)));
    }

    /// Scrapes replica `i` as a live scrape does: its vLLM metrics page (without the latency
    /// histograms, which the picker does not read), parsed by igw-metrics.
    fn scrape(&mut self, i: usize, now: f64) {
        let page =
            igw_sim::metrics_text::render_vllm_without_histograms(&self.engines[i].snapshot(), &self.model, |t| t);
        let previous = self.endpoints[i].metrics();
        let x = igw_metrics::extract_from_bytes(page.as_bytes(), &self.mapping, &previous, Instant::from_secs_f64(now));
        if x.is_fresh() {
            self.endpoints[i].set_metrics(x.metrics);
        }
    }

    /// Moves request `id` to `state`, keeping the per-class gate queue counts.
    fn set_state(&mut self, id: u32, state: State) {
        let r = &mut self.reqs[id as usize];
        if r.state == State::Queued {
            self.queued_by_class[r.class] -= 1;
        }
        if state == State::Queued {
            self.queued_by_class[r.class] += 1;
        }
        r.state = state;
    }

    /// Updates the every-class-backlogged window after an event at `now`.
    fn track_backlog(&mut self, now: f64) {
        let all = self.flow_control && self.queued_by_class.iter().all(|&q| q > 0);
        if all != self.all_backlogged {
            if self.all_backlogged {
                self.backlogged_s += now - self.backlog_since;
            } else {
                self.backlog_since = now;
            }
            self.all_backlogged = all;
        }
    }

    fn reject(&mut self, id: u32, now: f64) {
        if matches!(self.reqs[id as usize].state, State::Pending | State::Queued) {
            self.set_state(id, State::Rejected);
            self.reqs[id as usize].done = now;
            self.unresolved -= 1;
        }
    }

    /// Request `id` as a benchmark client sends it: the body, and the class's objective and
    /// fairness headers when the scenario has classes.
    fn arrival(&mut self, id: u32, now: f64) {
        self.push(now + self.sc.client.timeout_s, Ev::Timeout(id));
        let r = &self.reqs[id as usize];
        let text = prompt_text(&r.spec, u64::from(id));
        let body = completion_body(&r.spec, &self.model, &text, self.sc.client.streaming);
        let class = &self.classes[r.class];
        let headers: Vec<(&str, &str)> = if self.sc.classes.is_empty() {
            Vec::new()
        } else {
            vec![
                ("x-gateway-inference-objective", class.name.as_str()),
                ("x-gateway-inference-fairness-id", class.fairness_id.as_deref().unwrap_or(&class.name)),
            ]
        };
        let arrival = self.front.arrive(id, &headers, Bytes::from(body), Instant::from_secs_f64(now));
        match arrival.own {
            Arrived::Routed(e) => self.route(id, e, &text, now),
            Arrived::Queued => {
                self.set_state(id, State::Queued);
                self.arm_expiry();
            }
            Arrived::Rejected => self.reject(id, now),
        }
        self.settled(arrival.settled, now);
    }

    fn arm_expiry(&mut self) {
        let Some(next) = self.front.next_deadline() else { return };
        let at = next.as_nanos();
        if self.expire_at.is_none_or(|e| at < e) {
            self.expire_at = Some(at);
            self.seq += 1;
            self.heap.push(Reverse((at, self.seq, Ev::Expire)));
        }
    }

    /// One dispatch cycle at `now`, as the live gate runs one: each released request goes to
    /// its endpoint, each expired one is refused.
    fn dispatch(&mut self, now: f64) {
        self.dispatch_at(Instant::from_secs_f64(now), now);
    }

    fn dispatch_at(&mut self, t: Instant, now: f64) {
        if self.front.queued() == 0 {
            return;
        }
        let settled = self.front.cycle(t);
        self.settled(settled, now);
    }

    /// Requests a dispatch cycle settled: each released one goes to its endpoint, each refused
    /// one is rejected.
    fn settled(&mut self, settled: Vec<(u32, Option<usize>)>, now: f64) {
        for (id, routed) in settled {
            if self.reqs[id as usize].state != State::Queued {
                continue;
            }
            self.set_state(id, State::Pending);
            match routed {
                Some(e) => {
                    let text = prompt_text(&self.reqs[id as usize].spec, u64::from(id));
                    self.route(id, e, &text, now);
                }
                None => self.reject(id, now),
            }
        }
    }

    /// Request `id`, routed to endpoint `e`, reaches its engine.
    fn route(&mut self, id: u32, e: usize, text: &str, now: f64) {
        let t = Instant::from_secs_f64(now);
        let r = &mut self.reqs[id as usize];
        r.endpoint = e;
        r.routed = Some(e);
        r.state = State::Running;
        r.sent = now;
        let hashes = if self.prefix_hashes {
            igw_sim::prompt::block_hashes(text, self.block_size, r.spec.adapter.as_deref().unwrap_or(""))
        } else {
            Vec::new()
        };
        let sim = SimRequest {
            id: RequestId(u64::from(id)),
            prompt_tokens: r.spec.input,
            block_hashes: hashes,
            output_tokens: r.spec.output,
            max_tokens: r.spec.output,
            adapter: r.spec.adapter.clone(),
        };
        if self.engines[e].submit(sim, t).is_err() {
            // The engine refused it (too long for its KV cache): released at once, as an error.
            self.front.abandon(id, t);
            let r = &mut self.reqs[id as usize];
            r.state = State::Rejected;
            r.done = now;
            self.unresolved -= 1;
            return;
        }
        self.kick(e, now);
    }

    fn kick(&mut self, e: usize, now: f64) {
        if !self.busy[e]
            && let Some(d) = self.engines[e].start_step(Instant::from_secs_f64(now))
        {
            self.busy[e] = true;
            self.steps += 1;
            self.push(now + d.as_secs_f64(), Ev::StepEnd(e as u32));
        }
    }

    fn step_end(&mut self, e: usize, now: f64) {
        self.busy[e] = false;
        let t = Instant::from_secs_f64(now);
        let out = self.engines[e].finish_step(t);
        let streaming = self.sc.client.streaming;
        for ev in out.events {
            let id = ev.id.0 as u32;
            let r = &mut self.reqs[id as usize];
            if r.state != State::Running {
                continue;
            }
            let first = r.tokens == 0;
            if first {
                r.first = now;
            } else {
                self.itl.record(now - r.last);
            }
            r.last = now;
            r.tokens += 1;
            r.backlogged_tokens += u32::from(self.all_backlogged);
            let done = ev.finished.map(|f| {
                r.cached = f.cached_tokens;
                r.state = State::Completed;
                r.done = now;
                let (prompt, completion) = (u64::from(r.spec.input), u64::from(r.tokens));
                Usage {
                    prompt_tokens: prompt,
                    completion_tokens: completion,
                    total_tokens: prompt + completion,
                    cached_tokens: u64::from(f.cached_tokens),
                }
            });
            if first {
                self.front.first_token(id, t);
            }
            if let Some(usage) = done {
                self.unresolved -= 1;
                self.front.finished(id, usage, streaming, t);
            }
        }
        self.kick(e, now);
        self.dispatch(now);
    }

    fn timeout(&mut self, id: u32, now: f64) {
        let t = Instant::from_secs_f64(now);
        match self.reqs[id as usize].state {
            State::Queued => self.front.abandon(id, t),
            State::Running => {
                let e = self.reqs[id as usize].endpoint;
                self.engines[e].abort(RequestId(u64::from(id)), t);
                self.front.abandon(id, t);
            }
            _ => return,
        }
        self.set_state(id, State::TimedOut);
        self.reqs[id as usize].done = now;
        self.unresolved -= 1;
        self.dispatch(now);
    }

    /// TTL expiry at the event's exact time in nanoseconds: going through `f64` seconds could
    /// round it down below the deadline, expire nothing, and re-arm the same event for ever.
    fn expire(&mut self, at_nanos: u64) {
        self.expire_at = None;
        self.dispatch_at(Instant::from_nanos(at_nanos), at_nanos as f64 / 1e9);
        self.arm_expiry();
    }
}

/// One request of a point's load: when it arrives, what it asks for, its class.
#[derive(Debug, Clone, PartialEq)]
pub struct Arrival {
    /// Arrival time, seconds (model time) from the start of the step.
    pub at: f64,
    /// Lengths, prefix group, adapter.
    pub spec: RequestSpec,
    /// Index into [`Scenario::classes`].
    pub class: usize,
}

/// The requests of one (scenario, offered QPS) point: the same for every policy (seeded by the
/// scenario and the QPS, not the policy), and what the real-time runner sends when it replays a
/// point (`igw bench compare`), so the DES and the wall-clock run see one request sequence.
pub fn point_arrivals(sc: &Scenario, generator: &Generator, qps: f64) -> Vec<Arrival> {
    let classes = sc.classes();
    let mut arng = SmallRng::seed_from_u64(sc.arrivals.seed ^ (qps.to_bits()));
    let times = arrival_times(sc.arrivals.process, qps, sc.arrivals.duration_s, &mut arng);
    let mut wrng = SmallRng::seed_from_u64(sc.workload.seed() ^ (qps.to_bits().rotate_left(17)));
    let cum: Vec<f64> = classes
        .iter()
        .scan(0.0, |acc, c| {
            *acc += c.fraction;
            Some(*acc)
        })
        .collect();
    times
        .iter()
        .map(|&t| {
            let u: f64 = arng.random();
            let class = cum.iter().position(|c| u < *c).unwrap_or(classes.len() - 1);
            Arrival { at: t, spec: generator.next(&mut wrng), class }
        })
        .collect()
}

/// Runs one policy at one offered QPS; `capacity_qps` only scales the reported load factor.
pub fn run_point(
    sc: &Scenario,
    generator: &Generator,
    policy_name: &str,
    qps: f64,
    capacity_qps: f64,
) -> Result<PointResult, BenchError> {
    run_point_with(sc, generator, Policy::build(policy_name, &sc.flow)?, qps, capacity_qps)
}

/// [`run_point`] with an already built policy (e.g. a flow configuration adjusted by hand).
pub fn run_point_with(
    sc: &Scenario,
    generator: &Generator,
    policy: Policy,
    qps: f64,
    capacity_qps: f64,
) -> Result<PointResult, BenchError> {
    run_point_through(sc, generator, policy, qps, capacity_qps, |core| CoreFront::new(Arc::new(core)))
}

/// The pool's request core a point runs on: `policy`'s scheduler (and flow control) over a
/// datastore of the fleet's endpoints holding the scenario's classes as InferenceObjectives,
/// as the real-time runs configure the gateway; seeded from the scenario.
pub fn point_core(sc: &Scenario, policy: Policy, endpoints: usize) -> Result<PoolCore, BenchError> {
    let ds = Arc::new(Datastore::with_endpoints((0..endpoints).map(|i| {
        let mut m =
            EndpointMeta::from_addr(std::net::SocketAddr::from(([10, 0, (i >> 8) as u8, (i & 255) as u8], 8000)));
        if let Some(c) = sc.fleet.costs_per_hour.get(i) {
            m.labels.insert(igw_core::endpoint::COST_PER_HOUR_LABEL.to_string(), c.to_string());
        }
        m
    })));
    for c in &sc.classes {
        ds.apply_objective(InferenceObjective {
            id: ObjectRef::new("default", &c.name),
            priority: c.priority,
            legacy_model_name: None,
            goals: c.goals(),
        });
    }
    let mut core = PoolCore::new("sim", ds, Arc::new(policy.scheduler))
        .with_seed(sc.arrivals.seed.wrapping_mul(31).wrapping_add(7));
    if let Some(cfg) = policy.flow {
        core = core.with_flow_control(cfg).map_err(|e| BenchError::Policy(policy.name.clone(), e.to_string()))?;
    }
    Ok(core)
}

/// [`run_point_with`] with the gateway side built by `front` from the point's core
/// ([`point_core`]; the front may add hooks before sharing it): [`CoreFront`] for the
/// simulator's own, a live driver in tests.
pub fn run_point_through<F: Front>(
    sc: &Scenario,
    generator: &Generator,
    policy: Policy,
    qps: f64,
    capacity_qps: f64,
    front: impl FnOnce(PoolCore) -> F,
) -> Result<PointResult, BenchError> {
    let policy_name = policy.name.clone();
    let policy_name = policy_name.as_str();
    let profile = sc.profile()?;
    let speeds = sc.speed_factors();
    let mut engines = Vec::with_capacity(speeds.len());
    for (i, s) in speeds.iter().enumerate() {
        let mut cfg = EngineConfig::new(profile.clone());
        cfg.speed = *s;
        cfg.jitter_sigma = sc.fleet.jitter_sigma;
        cfg.seed = sc.fleet.seed.wrapping_add(i as u64);
        cfg.max_loras = sc.fleet.max_loras;
        engines.push(Engine::new(cfg)?);
    }
    let flow_control = policy.flow.is_some();
    let core = point_core(sc, policy, engines.len())?;
    let endpoints = core.datastore().snapshot().endpoints.clone();
    let classes = sc.classes();
    let reqs: Vec<Req> = point_arrivals(sc, generator, qps)
        .into_iter()
        .map(|a| Req {
            spec: a.spec,
            class: a.class,
            arrival: a.at,
            state: State::Pending,
            endpoint: 0,
            routed: None,
            first: 0.0,
            last: 0.0,
            done: 0.0,
            tokens: 0,
            cached: 0,
            backlogged_tokens: 0,
            sent: 0.0,
        })
        .collect();
    let n = engines.len();
    let mut sim = Sim {
        sc,
        classes: classes.clone(),
        front: front(core),
        busy: vec![false; n],
        engines,
        endpoints,
        heap: BinaryHeap::new(),
        seq: 0,
        unresolved: reqs.len(),
        reqs,
        expire_at: None,
        itl: LogHistogram::default(),
        steps: 0,
        model: profile.model.clone(),
        block_size: profile.block_size,
        prefix_hashes: sc.workload.shares_prefixes(),
        mapping: EngineMapping::vllm(),
        queued_by_class: vec![0; classes.len()],
        all_backlogged: false,
        backlog_since: 0.0,
        backlogged_s: 0.0,
        flow_control,
    };
    let times: Vec<f64> = sim.reqs.iter().map(|r| r.arrival).collect();
    for (i, t) in times.into_iter().enumerate() {
        sim.push(t, Ev::Arrival(i as u32));
    }
    let period = sc.scrape_interval_ms as f64 / 1000.0;
    for i in 0..n {
        sim.scrape(i, 0.0);
        sim.push(period * (i as f64 + 1.0) / n as f64, Ev::Scrape(i as u32));
    }
    let mut now = 0.0;
    while let Some(Reverse((at, _, ev))) = sim.heap.pop() {
        now = at as f64 / 1e9;
        match ev {
            Ev::Arrival(id) => sim.arrival(id, now),
            Ev::StepEnd(e) => sim.step_end(e as usize, now),
            Ev::Timeout(id) => sim.timeout(id, now),
            Ev::Expire => sim.expire(at),
            Ev::Scrape(e) => {
                sim.scrape(e as usize, now);
                if sim.unresolved > 0 {
                    sim.push(now + period, Ev::Scrape(e));
                }
                sim.dispatch(now);
            }
        }
        sim.track_backlog(now);
        if sim.unresolved == 0 && !sim.busy.iter().any(|b| *b) {
            break;
        }
    }
    if sim.all_backlogged {
        sim.backlogged_s += now - sim.backlog_since;
    }
    let row = summarize(&sim, policy_name, qps, capacity_qps, now);
    let decisions = sim
        .reqs
        .iter()
        .map(|r| {
            let ending = match r.state {
                State::Completed => Ending::Completed,
                State::TimedOut => Ending::TimedOut,
                _ => Ending::Rejected,
            };
            (r.routed, ending)
        })
        .collect();
    Ok(PointResult { row, virtual_s: now, steps: sim.steps, decisions })
}

/// Per class while summarizing: the row, e2e latencies of completed requests, completed output
/// tokens, those completed in the arrival window, those generated while every class was
/// backlogged, and e2e latencies of every request (drops infinite).
type ClassAcc = (ClassRow, Vec<f64>, u64, u64, u64, Vec<f64>);

fn summarize<F: Front>(sim: &Sim<'_, F>, policy: &str, qps: f64, capacity: f64, end: f64) -> Row {
    let sc = sim.sc;
    let (mut tpot, mut ttft, mut e2e) = (Vec::new(), Vec::new(), Vec::new());
    // Per class: the row, e2e latencies, completed output tokens, and those completed while
    // arrivals were still coming (the window in which backlogged classes compete).
    // The last field: output tokens generated while every class was backlogged at the gate.
    let mut by_class: BTreeMap<String, ClassAcc> = BTreeMap::new();
    let mut backlogged_tokens = 0u64;
    let (mut completed, mut rejected, mut timeouts, mut out_tokens, mut window_tokens) = (0, 0, 0, 0u64, 0u64);
    let (mut prompt_tokens, mut cached_tokens) = (0u64, 0u64);
    // Every request, a dropped one (rejected, timed out) as an infinite latency.
    let (mut ttft_all, mut e2e_all) = (Vec::new(), Vec::new());
    let (mut ttft_err, mut tpot_err) = (Vec::new(), Vec::new());
    // Per class: requests that met its SLO. Per run: output tokens weighted by their replica's
    // price over its speed.
    let mut slo_met: BTreeMap<String, u64> = BTreeMap::new();
    let speeds = sc.speed_factors();
    let mut priced_tokens = 0.0f64;
    for (id, r) in sim.reqs.iter().enumerate() {
        let class = &sim.classes[r.class];
        let c = by_class.entry(class.name.clone()).or_default();
        c.0.attempted += 1;
        if let Some(slo) = class.slo {
            let tpot = (r.tokens > 1).then(|| (r.done - r.first) / f64::from(r.tokens - 1));
            let met = r.state == State::Completed
                && slo.ttft_ms.is_none_or(|ms| r.first - r.arrival <= f64::from(ms) / 1000.0)
                && slo.tpot_ms.is_none_or(|ms| tpot.is_none_or(|t| t <= f64::from(ms) / 1000.0));
            *slo_met.entry(class.name.clone()).or_default() += u64::from(met);
        }
        if r.state == State::Completed
            && let Some(price) = sc.fleet.costs_per_hour.get(r.endpoint)
        {
            priced_tokens += f64::from(r.tokens) * price / speeds[r.endpoint].max(1e-9);
        }
        if r.state == State::Completed {
            ttft_all.push(r.first - r.arrival);
            e2e_all.push(r.done - r.arrival);
            c.5.push(r.done - r.arrival);
            if let Some((pt, pd)) = sim.front.prediction(id as u32) {
                let seen = r.first - r.sent;
                if seen > 0.0 {
                    ttft_err.push((pt - seen).abs() / seen);
                }
                if r.tokens > 1 {
                    let seen = (r.done - r.first) / f64::from(r.tokens - 1);
                    if seen > 0.0 {
                        tpot_err.push((pd - seen).abs() / seen);
                    }
                }
            }
        } else {
            ttft_all.push(f64::INFINITY);
            e2e_all.push(f64::INFINITY);
            c.5.push(f64::INFINITY);
        }
        match r.state {
            State::Completed => {
                completed += 1;
                c.0.completed += 1;
                let lat = r.done - r.arrival;
                tpot.push(lat / f64::from(r.tokens.max(1)));
                ttft.push(r.first - r.arrival);
                e2e.push(lat);
                c.1.push(lat);
                c.2 += u64::from(r.tokens);
                c.4 += u64::from(r.backlogged_tokens);
                backlogged_tokens += u64::from(r.backlogged_tokens);
                out_tokens += u64::from(r.tokens);
                if r.done <= sc.arrivals.duration_s {
                    window_tokens += u64::from(r.tokens);
                    c.3 += u64::from(r.tokens);
                }
                prompt_tokens += u64::from(r.spec.input);
                cached_tokens += u64::from(r.cached);
            }
            State::Rejected => {
                rejected += 1;
                c.0.rejected += 1;
            }
            State::TimedOut => {
                timeouts += 1;
                c.0.timeouts += 1;
            }
            _ => {}
        }
    }
    let ms = |v: &mut Vec<f64>| percentile(v, 0.9) * 1000.0;
    let tokens_per_min = match sc.client.mode {
        ClientMode::Lpg => 60.0 * out_tokens as f64 / end.max(1e-9),
        ClientMode::Open => 60.0 * window_tokens as f64 / sc.arrivals.duration_s,
    };
    let by_class = by_class
        .into_iter()
        .map(|(k, (mut row, mut lat, toks, window, backlogged, mut all))| {
            row.backlogged_share = (backlogged_tokens > 0).then(|| backlogged as f64 / backlogged_tokens as f64);
            row.p90_e2e_ms = ms(&mut lat);
            row.p90_e2e_with_drops_ms = ms(&mut all);
            row.slo_attainment = slo_met.get(&k).map(|met| *met as f64 / row.attempted.max(1) as f64);
            // Open loop: shares of what completed while the load was on (after it stops, the
            // classes still queued drain alone and would inflate their share); the blog's client
            // sends in steps and drains, so there the whole run counts.
            row.share = match sc.client.mode {
                ClientMode::Open if window_tokens > 0 => window as f64 / window_tokens as f64,
                _ if out_tokens > 0 => toks as f64 / out_tokens as f64,
                _ => 0.0,
            };
            (k, row)
        })
        .collect();
    Row {
        policy: policy.to_string(),
        qps,
        sent_qps: sim.reqs.len() as f64 / sc.arrivals.duration_s,
        load_factor: if capacity > 0.0 { qps / capacity } else { 0.0 },
        attempted: sim.reqs.len() as u64,
        completed,
        rejected,
        timeouts,
        p90_tpot_ms: ms(&mut tpot),
        p90_itl_ms: sim.itl.quantile(0.9) * 1000.0,
        p90_ttft_ms: ms(&mut ttft),
        p90_e2e_ms: ms(&mut e2e),
        output_tokens_per_min: tokens_per_min,
        cache_hit_rate: if prompt_tokens > 0 { cached_tokens as f64 / prompt_tokens as f64 } else { 0.0 },
        p90_ttft_with_drops_ms: ms(&mut ttft_all),
        p90_e2e_with_drops_ms: ms(&mut e2e_all),
        ttft_error_p50: (!ttft_err.is_empty()).then(|| percentile(&mut ttft_err, 0.5)),
        tpot_error_p50: (!tpot_err.is_empty()).then(|| percentile(&mut tpot_err, 0.5)),
        cost_per_mtok: cost_per_mtok(sc, capacity, &speeds, completed, out_tokens, priced_tokens),
        by_class,
        backlogged_s: sim.backlogged_s,
    }
}

/// [`Row::cost_per_mtok`]: `priced_tokens` is Σ tokens × price / speed over the completed
/// requests. A replica of speed 1 serves `capacity / Σ speeds` requests/s of this workload's mean
/// output length at capacity.
pub(crate) fn cost_per_mtok(
    sc: &Scenario,
    capacity: f64,
    speeds: &[f64],
    completed: u64,
    out_tokens: u64,
    priced_tokens: f64,
) -> Option<f64> {
    if sc.fleet.costs_per_hour.is_empty() || completed == 0 || out_tokens == 0 || capacity <= 0.0 {
        return None;
    }
    let mean_out = out_tokens as f64 / completed as f64;
    let unit_tokens_per_hour = 3600.0 * capacity / speeds.iter().sum::<f64>().max(1e-9) * mean_out;
    Some(1e6 * priced_tokens / out_tokens as f64 / unit_tokens_per_hour)
}

/// The fleet's capacity for the scenario's workload, requests/s, measured the way the gateway runs
/// the fleet: one replica of the profile is sent a new request whenever the saturation detector
/// (default thresholds) would let one through — fewer than `queueDepthThreshold` (5) waiting and
/// KV-cache usage below `kvCacheUtilThreshold` (0.8) — for 150 virtual seconds; its completion rate
/// over the last 120 s, times the sum of the replicas' speed factors. So a load factor is a
/// multiple of what the gated fleet serves. Keeping the engine fuller (a deeper queue, or ignoring
/// KV) would measure less: vLLM admits up to `max_num_seqs` and then preempts by recompute when KV
/// blocks run out, wasting prefill work.
pub fn capacity_qps(sc: &Scenario, generator: &Generator) -> Result<f64, BenchError> {
    if let Some(c) = sc.capacity_qps {
        return Ok(c);
    }
    let detector = UtilizationDetector::default();
    let profile = sc.profile()?;
    let mut cfg = EngineConfig::new(profile.clone());
    cfg.max_loras = sc.fleet.max_loras;
    let mut engine = Engine::new(cfg)?;
    let mut rng = SmallRng::seed_from_u64(sc.workload.seed() ^ 0xca9a);
    let prefix = sc.workload.shares_prefixes();
    let (mut t, mut id, mut done) = (0.0f64, 0u64, 0u64);
    let (warm, end) = (30.0, 150.0);
    while t < end {
        while (engine.waiting_len() as f64) < detector.queue_depth_threshold
            && engine.kv_usage() < detector.kv_cache_util_threshold
        {
            id += 1;
            let spec = generator.next(&mut rng);
            let hashes = if prefix {
                igw_sim::prompt::block_hashes(&prompt_text(&spec, id), profile.block_size, "")
            } else {
                Vec::new()
            };
            engine.submit(
                SimRequest {
                    id: RequestId(id),
                    prompt_tokens: spec.input,
                    block_hashes: hashes,
                    output_tokens: spec.output,
                    max_tokens: spec.output,
                    adapter: spec.adapter.clone(),
                },
                Instant::from_secs_f64(t),
            )?;
        }
        let Some((d, out)) = engine.step(Instant::from_secs_f64(t)) else { break };
        t += d.as_secs_f64();
        if t >= warm {
            done += out.events.iter().filter(|e| e.finished.is_some()).count() as u64;
        }
    }
    let per_replica = done as f64 / (end - warm);
    Ok(per_replica * sc.speed_factors().iter().sum::<f64>())
}

/// The workload generator of a scenario, loading ShareGPT when the scenario asks for it and the
/// data is present (otherwise the generator falls back to the LPG-fit lengths and says so). Its
/// description names the token counter used (`sharegpt::load_default`, cached).
pub fn generator(sc: &Scenario) -> Result<Generator, BenchError> {
    let lengths = match &sc.workload {
        crate::workload::WorkloadSpec::Sharegpt { path, .. } => {
            crate::sharegpt::load_default(path.as_deref().map(std::path::Path::new))?
        }
        _ => None,
    };
    let Some(l) = lengths else { return Generator::new(&sc.workload, None) };
    let n = l.pairs.len();
    let mut g = Generator::new(&sc.workload, Some(Arc::new(l.pairs)))?;
    g.description = format!("sharegpt ({n} conversations, {} tokens)", l.counter);
    Ok(g)
}

/// Runs every (policy, QPS) point of a scenario; `policies` and `qps` override the scenario's.
/// `progress` is told each finished row.
pub fn run_scenario(
    sc: &Scenario,
    policies: Option<&[String]>,
    qps: Option<&[f64]>,
    mut progress: impl FnMut(&Row),
) -> Result<crate::report::Report, BenchError> {
    let generator = generator(sc)?;
    let capacity = capacity_qps(sc, &generator)?;
    let ladder: Vec<f64> = match qps {
        Some(q) => q.to_vec(),
        None if !sc.arrivals.qps.is_empty() => sc.arrivals.qps.clone(),
        None => sc.arrivals.load_factors.iter().map(|f| (f * capacity * 10.0).round() / 10.0).collect(),
    };
    let policies = policies.map(<[String]>::to_vec).unwrap_or_else(|| sc.policies.clone());
    let mut rows = Vec::new();
    for p in &policies {
        for q in &ladder {
            let r = run_point(sc, &generator, p, *q, capacity)?;
            progress(&r.row);
            rows.push(r.row);
        }
    }
    Ok(crate::report::Report {
        scenario: sc.name.clone(),
        capacity_qps: capacity,
        workload: generator.description.clone(),
        rows,
    })
}
