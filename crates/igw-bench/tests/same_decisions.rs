//! One decision path: the same request sequence (bodies, headers, arrival times) over the same
//! simulated engines, driven once by the simulator's own front ([`CoreFront`]) and once through the
//! Envoy ext_proc driver (igw-extproc's `StreamState`, fed the messages Envoy sends, on a virtual
//! clock), routes every request to the same endpoint with the same admission outcome.
//!
//! The ext_proc front reads the request from ext_proc messages (headers, then the body), takes the
//! destination from the header mutation the stream answers with, reports the served endpoint in
//! `envoy.lb` metadata with the response headers at the first token, and ends the request with a
//! response body carrying the usage, which the stream's response tracker parses. Admission goes
//! through the pool's core as the live gate does (enqueue, then a dispatch cycle), in the order the
//! cycle releases requests.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue, Metadata};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse, processing_request, processing_response,
};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use igw_bench::cluster::{
    ArrivalOutcome, Arrived, CoreFront, Front, PointResult, capacity_qps, generator, run_point_through,
};
use igw_bench::policy::Policy;
use igw_bench::scenario::Scenario;
use igw_core::Instant;
use igw_core::time::ManualClock;
use igw_extproc::{PendingPick, Step, StreamConfig, StreamState};
use igw_proxy::gateway::{Gateway, GatewayConfig, ProxyBody};
use igw_proxy::routes::Routes;
use igw_proxy::upstream::{Transport, UpstreamError};
use igw_request::{Admission, Hooks, Pool, PoolCore, QueueId, Usage};
use proptest::prelude::*;
use tokio::sync::oneshot;

fn header_map(headers: &[(&str, &str)]) -> HeaderMap {
    HeaderMap {
        headers: headers
            .iter()
            .map(|(k, v)| HeaderValue { key: k.to_string(), value: String::new(), raw_value: v.as_bytes().to_vec() })
            .collect(),
    }
}

fn msg(r: processing_request::Request) -> ProcessingRequest {
    ProcessingRequest { request: Some(r), ..Default::default() }
}

/// The `envoy.lb` metadata naming the endpoint that served the request.
fn served(addr: SocketAddr) -> Metadata {
    let s = |v: String| Value { kind: Some(Kind::StringValue(v)) };
    let inner = Struct { fields: [("x-gateway-destination-endpoint-served".to_string(), s(addr.to_string()))].into() };
    Metadata { filter_metadata: [("envoy.lb".to_string(), inner)].into(), ..Default::default() }
}

/// The destination the stream's answer names (`x-gateway-destination-endpoint`).
fn destination(out: &[ProcessingResponse]) -> Option<SocketAddr> {
    let first = out.first()?;
    let Some(processing_response::Response::RequestHeaders(h)) = &first.response else { return None };
    let m = h.response.as_ref()?.header_mutation.as_ref()?;
    m.set_headers
        .iter()
        .filter_map(|o| o.header.as_ref())
        .find(|h| h.key == "x-gateway-destination-endpoint")
        .map(|h| String::from_utf8_lossy(&h.raw_value).split(',').next().unwrap().trim().parse().unwrap())
}

/// The gateway side played by the ext_proc driver.
struct ExtProcFront {
    pool: Arc<Pool>,
    clock: Arc<ManualClock>,
    config: Arc<StreamConfig>,
    index: HashMap<SocketAddr, usize>,
    addrs: Vec<SocketAddr>,
    /// Streams whose request waits in flow control.
    waiting: HashMap<QueueId, (u32, StreamState, PendingPick)>,
    queue_of: HashMap<u32, QueueId>,
    /// Streams whose request was answered with a destination, and that endpoint.
    streams: HashMap<u32, (StreamState, usize)>,
}

impl ExtProcFront {
    fn new(core: PoolCore) -> Self {
        let core = Arc::new(core);
        let clock = Arc::new(ManualClock::default());
        let addrs: Vec<SocketAddr> = core.datastore().snapshot().endpoints.iter().map(|e| e.address()).collect();
        let index = addrs.iter().enumerate().map(|(i, a)| (*a, i)).collect();
        let pool = Pool::new(core, clock.clone());
        ExtProcFront {
            pool,
            clock,
            config: Arc::new(StreamConfig::default()),
            index,
            addrs,
            waiting: HashMap::new(),
            queue_of: HashMap::new(),
            streams: HashMap::new(),
        }
    }

    /// Hands each request a dispatch cycle settled to its stream, in order.
    fn settle(
        &mut self,
        cycle: Vec<(QueueId, Result<igw_request::Request, igw_request::RequestError>)>,
    ) -> Vec<(u32, Option<usize>)> {
        let mut out = Vec::with_capacity(cycle.len());
        for (q, result) in cycle {
            let Some((id, state, pending)) = self.waiting.remove(&q) else { continue };
            self.queue_of.remove(&id);
            let routed = self.picked(id, state, pending, result);
            out.push((id, routed));
        }
        out
    }

    /// Feeds the admission result to the stream; the endpoint it answered with.
    fn picked(
        &mut self,
        id: u32,
        mut state: StreamState,
        pending: PendingPick,
        r: Result<igw_request::Request, igw_request::RequestError>,
    ) -> Option<usize> {
        let Step::Reply(out) = state.on_picked(pending, r) else { return None };
        let e = destination(&out).and_then(|a| self.index.get(&a).copied())?;
        self.streams.insert(id, (state, e));
        Some(e)
    }
}

impl Front for ExtProcFront {
    fn arrive(&mut self, id: u32, headers: &[(&str, &str)], body: Bytes, now: Instant) -> ArrivalOutcome {
        self.clock.set(now);
        let mut state = StreamState::new(self.pool.clone(), self.config.clone());
        let mut h = vec![(":method", "POST"), (":path", "/v1/completions"), ("content-type", "application/json")];
        h.extend_from_slice(headers);
        let head = HttpHeaders { headers: Some(header_map(&h)), end_of_stream: false, ..Default::default() };
        let Step::Reply(_) = state.on_message(msg(processing_request::Request::RequestHeaders(head))) else {
            return Arrived::Rejected.into();
        };
        let b = HttpBody { body: body.to_vec(), end_of_stream: true, ..Default::default() };
        let Step::Pick(pending) = state.on_message(msg(processing_request::Request::RequestBody(b))) else {
            return Arrived::Rejected.into();
        };
        // As the live gate: enqueue, then one dispatch cycle at once; the arriving request goes
        // first if it is released.
        match self.pool.core().admit(pending.prepared(), now) {
            Ok(Admission::Admitted(r)) => {
                self.picked(id, state, pending, Ok(r)).map_or(Arrived::Rejected, Arrived::Routed).into()
            }
            Ok(Admission::Queued(q)) => {
                let mut cycle = self.pool.core().dispatch_cycle(now);
                let own = match cycle.iter().position(|(x, _)| *x == q).map(|i| cycle.remove(i).1) {
                    Some(r) => self.picked(id, state, pending, r).map_or(Arrived::Rejected, Arrived::Routed),
                    None => {
                        self.waiting.insert(q, (id, state, pending));
                        self.queue_of.insert(id, q);
                        Arrived::Queued
                    }
                };
                ArrivalOutcome { own, settled: self.settle(cycle) }
            }
            Err(_) => Arrived::Rejected.into(),
        }
    }

    fn cycle(&mut self, now: Instant) -> Vec<(u32, Option<usize>)> {
        self.clock.set(now);
        let cycle = self.pool.core().dispatch_cycle(now);
        self.settle(cycle)
    }

    fn queued(&self) -> usize {
        self.pool.core().queued()
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.pool.core().next_deadline()
    }

    fn first_token(&mut self, id: u32, now: Instant) {
        self.clock.set(now);
        let Some((s, e)) = self.streams.get_mut(&id) else { return };
        let head = HttpHeaders {
            headers: Some(header_map(&[(":status", "200"), ("content-type", "application/json")])),
            end_of_stream: false,
            ..Default::default()
        };
        let mut m = msg(processing_request::Request::ResponseHeaders(head));
        m.metadata_context = Some(served(self.addrs[*e]));
        s.on_message(m);
    }

    fn finished(&mut self, id: u32, usage: Usage, _streaming: bool, now: Instant) {
        self.clock.set(now);
        let Some((mut s, _)) = self.streams.remove(&id) else { return };
        let body = format!(
            r#"{{"id":"cmpl-{id}","object":"text_completion","model":"m","choices":[],"usage":{{"prompt_tokens":{},"completion_tokens":{},"total_tokens":{},"prompt_tokens_details":{{"cached_tokens":{}}}}}}}"#,
            usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, usage.cached_tokens
        );
        let b = HttpBody { body: body.into_bytes(), end_of_stream: true, ..Default::default() };
        s.on_message(msg(processing_request::Request::ResponseBody(b)));
        assert!(s.is_done(), "the response ended the stream");
    }

    fn abandon(&mut self, id: u32, now: Instant) {
        self.clock.set(now);
        if let Some(q) = self.queue_of.remove(&id) {
            self.pool.core().cancel(q, now);
            // The gateway reset the stream: dropping it drops the pending pick.
            self.waiting.remove(&q);
        }
        self.streams.remove(&id);
    }
}

// ---------- the proxy driver ----------

/// A response body the test feeds chunk by chunk.
struct SimBody(tokio::sync::mpsc::UnboundedReceiver<Bytes>);

impl http_body::Body for SimBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// One request the gateway sent to a replica, waiting for its response head.
struct Sent {
    id: u32,
    addr: SocketAddr,
    head: oneshot::Sender<http::Response<SimBody>>,
}

/// The gateway's transport to the simulated engines: records what is sent, answers when told.
#[derive(Clone, Default)]
struct SimTransport {
    sent: Arc<Mutex<Vec<Sent>>>,
}

impl Transport for SimTransport {
    type Body = SimBody;

    fn send(
        &self,
        addr: SocketAddr,
        parts: http::request::Parts,
        _body: Bytes,
        _head_timeout: Duration,
    ) -> impl Future<Output = Result<http::Response<SimBody>, UpstreamError>> + Send {
        let id = parts.headers.get("x-request-id").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap();
        let (head, rx) = oneshot::channel();
        self.sent.lock().unwrap().push(Sent { id, addr, head });
        async move { rx.await.map_err(|_| UpstreamError::Refused { addr, reason: "abandoned".into() }) }
    }
}

/// Which request waits under which queue id, and the order dispatch cycles settle them.
#[derive(Default)]
struct QueueLog {
    ids: Mutex<HashMap<QueueId, u32>>,
    settled: Mutex<Vec<QueueId>>,
}

impl Hooks for QueueLog {
    fn queued(&self, prepared: &igw_request::PreparedRequest, id: QueueId) {
        self.ids.lock().unwrap().insert(id, prepared.request.request_id.parse().unwrap());
    }
    fn dequeued(&self, id: QueueId, _released: bool) {
        self.settled.lock().unwrap().push(id);
    }
}

type Handling = Pin<Box<dyn Future<Output = Result<http::Response<ProxyBody<SimBody>>, std::convert::Infallible>>>>;

/// Polls once; nothing here waits on I/O, so a pending future is waiting for the test's next move.
fn poll_once<F: Future + ?Sized>(f: Pin<&mut F>) -> Poll<F::Output> {
    f.poll(&mut Context::from_waker(Waker::noop()))
}

/// The gateway side played by the standalone proxy (`igw_proxy::Gateway::handle`).
struct ProxyFront {
    gateway: Arc<Gateway<SimTransport>>,
    core: Arc<PoolCore>,
    clock: Arc<ManualClock>,
    transport: SimTransport,
    log: Arc<QueueLog>,
    index: HashMap<SocketAddr, usize>,
    /// Requests being handled (queued, or waiting for their response head).
    handling: HashMap<u32, Handling>,
    /// Responses streaming back, with the sender of their body.
    responses: HashMap<u32, (http::Response<ProxyBody<SimBody>>, tokio::sync::mpsc::UnboundedSender<Bytes>)>,
    heads: HashMap<u32, oneshot::Sender<http::Response<SimBody>>>,
}

impl ProxyFront {
    /// The point's core with a queue log as its hooks.
    fn new(core: PoolCore) -> Self {
        let log = Arc::new(QueueLog::default());
        let core = Arc::new(core.with_hooks(log.clone()));
        let clock = Arc::new(ManualClock::default());
        let pool = Pool::new(core.clone(), clock.clone());
        let transport = SimTransport::default();
        let gateway =
            Arc::new(Gateway::with_transport(Routes::single("sim", pool), GatewayConfig::default(), transport.clone()));
        let index = core.datastore().snapshot().endpoints.iter().enumerate().map(|(i, e)| (e.address(), i)).collect();
        ProxyFront {
            gateway,
            core,
            clock,
            transport,
            log,
            index,
            handling: HashMap::new(),
            responses: HashMap::new(),
            heads: HashMap::new(),
        }
    }

    /// Polls request `id`'s handling once: the endpoint it was sent to, `Some(None)` when the
    /// gateway answered it itself (an error), `None` when it still waits in its queue.
    fn advance(&mut self, id: u32) -> Option<Option<usize>> {
        let fut = self.handling.get_mut(&id)?;
        if let Poll::Ready(r) = poll_once(fut.as_mut()) {
            self.handling.remove(&id);
            let resp = r.unwrap();
            assert_ne!(resp.status(), 200, "answered without reaching a replica");
            return Some(None);
        }
        let mut sent = self.transport.sent.lock().unwrap();
        let i = sent.iter().position(|s| s.id == id)?;
        let s = sent.remove(i);
        self.heads.insert(id, s.head);
        Some(Some(self.index[&s.addr]))
    }

    /// The requests the last dispatch cycles settled (besides `own`), polled in that order.
    fn drain_settled(&mut self, own: Option<u32>) -> Vec<(u32, Option<usize>)> {
        let settled: Vec<QueueId> = std::mem::take(&mut *self.log.settled.lock().unwrap());
        let mut out = Vec::new();
        for q in settled {
            let Some(id) = self.log.ids.lock().unwrap().remove(&q) else { continue };
            if Some(id) == own {
                continue;
            }
            match self.advance(id) {
                Some(routed) => out.push((id, routed)),
                None => panic!("request {id} left its queue but is still waiting"),
            }
        }
        out
    }
}

impl Front for ProxyFront {
    fn arrive(&mut self, id: u32, headers: &[(&str, &str)], body: Bytes, now: Instant) -> ArrivalOutcome {
        self.clock.set(now);
        let mut b = http::Request::post("/v1/completions")
            .header("content-type", "application/json")
            .header("x-request-id", id.to_string());
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(http_body_util::Full::new(body)).unwrap();
        self.handling.insert(id, Box::pin(self.gateway.clone().handle(req)));
        let own = match self.advance(id) {
            Some(Some(e)) => Arrived::Routed(e),
            Some(None) => Arrived::Rejected,
            None => Arrived::Queued,
        };
        ArrivalOutcome { own, settled: self.drain_settled(Some(id)) }
    }

    fn cycle(&mut self, now: Instant) -> Vec<(u32, Option<usize>)> {
        self.clock.set(now);
        self.gateway.pool().gate().unwrap().cycle();
        self.drain_settled(None)
    }

    fn queued(&self) -> usize {
        self.core.queued()
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.core.next_deadline()
    }

    fn first_token(&mut self, id: u32, now: Instant) {
        self.clock.set(now);
        let Some(head) = self.heads.remove(&id) else { return };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let resp = http::Response::builder().status(200).header("content-type", "application/json");
        assert!(head.send(resp.body(SimBody(rx)).unwrap()).is_ok());
        let mut fut = self.handling.remove(&id).unwrap();
        let Poll::Ready(Ok(resp)) = poll_once(fut.as_mut()) else { panic!("no response for request {id}") };
        assert_eq!(resp.status(), 200);
        self.responses.insert(id, (resp, tx));
    }

    fn finished(&mut self, id: u32, usage: Usage, _streaming: bool, now: Instant) {
        self.clock.set(now);
        let Some((mut resp, tx)) = self.responses.remove(&id) else { return };
        let body = format!(
            r#"{{"id":"cmpl-{id}","object":"text_completion","model":"m","choices":[],"usage":{{"prompt_tokens":{},"completion_tokens":{},"total_tokens":{},"prompt_tokens_details":{{"cached_tokens":{}}}}}}}"#,
            usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, usage.cached_tokens
        );
        tx.send(Bytes::from(body)).unwrap();
        drop(tx);
        // The client reads the body to its end; the gateway ends the request there.
        let body = resp.body_mut();
        let mut cx = Context::from_waker(Waker::noop());
        while let Poll::Ready(Some(frame)) = http_body::Body::poll_frame(Pin::new(&mut *body), &mut cx) {
            frame.unwrap();
        }
    }

    fn abandon(&mut self, id: u32, now: Instant) {
        self.clock.set(now);
        // The client went away: its request future or response body is dropped.
        self.handling.remove(&id);
        self.heads.remove(&id);
        self.responses.remove(&id);
        self.transport.sent.lock().unwrap().retain(|s| s.id != id);
    }
}

/// A small scenario: one of the built-ins, shrunk.
fn scenario(name: &str, replicas: usize, duration_s: f64, seed: u64) -> Scenario {
    let mut sc = Scenario::builtin(name).unwrap();
    sc.fleet.replicas = replicas;
    sc.arrivals.duration_s = duration_s;
    sc.arrivals.seed = seed;
    sc
}

/// The point run by the simulator's own front, through the ext_proc driver and through the proxy.
fn all_three(sc: &Scenario, policy: &str, load: f64) -> (PointResult, PointResult, PointResult) {
    let g = generator(sc).unwrap();
    let cap = capacity_qps(sc, &g).unwrap();
    let qps = (load * cap * 10.0).round() / 10.0;
    let build = || Policy::build(policy, &sc.flow).unwrap();
    let des = run_point_through(sc, &g, build(), qps, cap, |c| CoreFront::new(Arc::new(c))).unwrap();
    let ext = run_point_through(sc, &g, build(), qps, cap, ExtProcFront::new).unwrap();
    let proxy = run_point_through(sc, &g, build(), qps, cap, ProxyFront::new).unwrap();
    (des, ext, proxy)
}

fn assert_same(sc: &Scenario, policy: &str, load: f64) -> (usize, usize) {
    let (des, ext, proxy) = all_three(sc, policy, load);
    for (driver, other) in [("ext_proc", &ext), ("proxy", &proxy)] {
        assert_eq!(des.decisions.len(), other.decisions.len());
        for (i, (a, b)) in des.decisions.iter().zip(&other.decisions).enumerate() {
            assert_eq!(a, b, "{} {policy} at {load}x: request {i} decided differently by the {driver} driver", sc.name);
        }
        assert_eq!(des.row, other.row, "{} {policy} at {load}x: the {driver} driver's report differs", sc.name);
    }
    let routed = des.decisions.iter().filter(|d| d.0.is_some()).count();
    let distinct = des.decisions.iter().filter_map(|d| d.0).collect::<std::collections::BTreeSet<_>>().len();
    (routed, distinct)
}

/// Flow control under overload (queueing, priority bands, TTL expiry, sheddable refusals), igw's
/// default policy, and round robin: every request decided the same on both paths.
#[test]
fn same_decisions_through_ext_proc_and_the_proxy_as_in_the_simulator() {
    let mut sc = scenario("priority-overload", 2, 6.0, 1);
    // A short queue TTL, so that at 3x requests also expire in their queue.
    sc.flow.ttl_s = Some(0.5);
    for (policy, load) in [("igw+flow", 3.0), ("igw", 1.0), ("round-robin", 0.7), ("upstream-default+flow", 3.0)] {
        let (routed, distinct) = assert_same(&sc, policy, load);
        assert!(routed > 20 && distinct == 2, "{policy}: {routed} routed over {distinct} endpoints");
    }
    // With flow control at 2x some requests wait and some are refused: the paths agree on both.
    let (des, _, _) = all_three(&sc, "igw+flow", 3.0);
    eprintln!("{:?}", des.row);
    let queued_then_refused = des.decisions.iter().filter(|d| d.0.is_none()).count();
    assert!(queued_then_refused > 0 && des.row.completed > 0, "{:?}", des.row);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, ..ProptestConfig::default() })]

    /// Generated sequences: scenario (with and without classes, shared system prompts), fleet
    /// size, load, seeds and policy.
    #[test]
    fn same_decisions_for_generated_sequences(
        name in prop::sample::select(vec!["priority-overload", "shared-prefix", "blog"]),
        replicas in 2usize..=3,
        duration in 1.0f64..3.0,
        load in 0.3f64..2.5,
        seed in 0u64..1_000,
        policy in prop::sample::select(vec!["igw", "round-robin", "igw+flow", "upstream-default"]),
    ) {
        let sc = scenario(name, replicas, duration, seed);
        assert_same(&sc, policy, load);
    }
}
