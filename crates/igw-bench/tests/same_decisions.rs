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
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue, Metadata};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse, processing_request, processing_response,
};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use igw_bench::cluster::{Arrived, CoreFront, Front, PointResult, capacity_qps, generator, run_point_through};
use igw_bench::policy::Policy;
use igw_bench::scenario::Scenario;
use igw_core::Instant;
use igw_core::time::ManualClock;
use igw_extproc::{PendingPick, Step, StreamConfig, StreamState};
use igw_request::{Admission, Pool, PoolCore, QueueId, Usage};
use proptest::prelude::*;

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
    fn new(core: Arc<PoolCore>) -> Self {
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
    fn arrive(&mut self, id: u32, headers: &[(&str, &str)], body: Bytes, now: Instant) -> Arrived {
        self.clock.set(now);
        let mut state = StreamState::new(self.pool.clone(), self.config.clone());
        let mut h = vec![(":method", "POST"), (":path", "/v1/completions"), ("content-type", "application/json")];
        h.extend_from_slice(headers);
        let head = HttpHeaders { headers: Some(header_map(&h)), end_of_stream: false, ..Default::default() };
        let Step::Reply(_) = state.on_message(msg(processing_request::Request::RequestHeaders(head))) else {
            return Arrived::Rejected;
        };
        let b = HttpBody { body: body.to_vec(), end_of_stream: true, ..Default::default() };
        let Step::Pick(pending) = state.on_message(msg(processing_request::Request::RequestBody(b))) else {
            return Arrived::Rejected;
        };
        // As the live gate: enqueue, and the caller runs a dispatch cycle.
        match self.pool.core().admit(pending.prepared(), now) {
            Ok(Admission::Admitted(r)) => {
                self.picked(id, state, pending, Ok(r)).map_or(Arrived::Rejected, Arrived::Routed)
            }
            Ok(Admission::Queued(q)) => {
                self.waiting.insert(q, (id, state, pending));
                self.queue_of.insert(id, q);
                Arrived::Queued
            }
            Err(_) => Arrived::Rejected,
        }
    }

    fn cycle(&mut self, now: Instant) -> Vec<(u32, Option<usize>)> {
        self.clock.set(now);
        let mut out = Vec::new();
        for (q, result) in self.pool.core().dispatch_cycle(now) {
            let Some((id, state, pending)) = self.waiting.remove(&q) else { continue };
            self.queue_of.remove(&id);
            let routed = self.picked(id, state, pending, result);
            out.push((id, routed));
        }
        out
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

/// A small scenario: one of the built-ins, shrunk.
fn scenario(name: &str, replicas: usize, duration_s: f64, seed: u64) -> Scenario {
    let mut sc = Scenario::builtin(name).unwrap();
    sc.fleet.replicas = replicas;
    sc.arrivals.duration_s = duration_s;
    sc.arrivals.seed = seed;
    sc
}

/// The point run by the simulator's own front and through the ext_proc driver.
fn both(sc: &Scenario, policy: &str, load: f64) -> (PointResult, PointResult) {
    let g = generator(sc).unwrap();
    let cap = capacity_qps(sc, &g).unwrap();
    let qps = (load * cap * 10.0).round() / 10.0;
    let build = || Policy::build(policy, &sc.flow).unwrap();
    let des = run_point_through(sc, &g, build(), qps, cap, CoreFront::new).unwrap();
    let ext = run_point_through(sc, &g, build(), qps, cap, ExtProcFront::new).unwrap();
    (des, ext)
}

fn assert_same(sc: &Scenario, policy: &str, load: f64) -> (usize, usize) {
    let (des, ext) = both(sc, policy, load);
    assert_eq!(des.decisions.len(), ext.decisions.len());
    for (i, (a, b)) in des.decisions.iter().zip(&ext.decisions).enumerate() {
        assert_eq!(a, b, "{} {policy} at {load}x: request {i} decided differently", sc.name);
    }
    assert_eq!(des.row, ext.row, "{} {policy} at {load}x: the same decisions give the same report", sc.name);
    let routed = des.decisions.iter().filter(|d| d.0.is_some()).count();
    let distinct = des.decisions.iter().filter_map(|d| d.0).collect::<std::collections::BTreeSet<_>>().len();
    (routed, distinct)
}

/// Flow control under overload (queueing, priority bands, TTL expiry, sheddable refusals), igw's
/// default policy, and round robin: every request decided the same on both paths.
#[test]
fn same_decisions_through_ext_proc_as_in_the_simulator() {
    let mut sc = scenario("priority-overload", 2, 6.0, 1);
    // A short queue TTL, so that at 3x requests also expire in their queue.
    sc.flow.ttl_s = Some(0.5);
    for (policy, load) in [("igw+flow", 3.0), ("igw", 1.0), ("round-robin", 0.7), ("upstream-default+flow", 3.0)] {
        let (routed, distinct) = assert_same(&sc, policy, load);
        assert!(routed > 20 && distinct == 2, "{policy}: {routed} routed over {distinct} endpoints");
    }
    // With flow control at 2x some requests wait and some are refused: the paths agree on both.
    let (des, _) = both(&sc, "igw+flow", 3.0);
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
