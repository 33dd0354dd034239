//! Controller tests in virtual time.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use igw_core::{InferenceRequest, Instant, Priority};
use proptest::prelude::*;

use super::*;

fn ms(t: u64) -> Instant {
    Instant::from_millis(t)
}

fn req(id: u64, priority: Priority, fid: &str, bytes: u64, t: u64) -> QueuedRequest {
    QueuedRequest {
        id,
        priority,
        fairness_id: Arc::from(fid),
        bytes,
        enqueue_time: ms(t),
        ttl: None,
        slo_deadline: None,
        est_tokens: 100,
    }
}

fn with_band(fairness: FairnessPolicy, ordering: OrderingPolicy) -> FlowConfig {
    let mut c = FlowConfig::igw();
    c.default_band.fairness = fairness;
    c.default_band.ordering = ordering;
    c
}

fn ctl(cfg: FlowConfig) -> FlowController {
    FlowController::new(cfg).unwrap()
}

fn drain_ids(c: &mut FlowController, sat: f64) -> Vec<u64> {
    c.dispatch_while(ms(0), |_| sat).into_iter().map(|d| d.id).collect()
}

#[test]
fn strict_priority_between_bands() {
    let mut c = ctl(FlowConfig::igw());
    c.enqueue(req(1, 0, "a", 1, 0)).unwrap();
    c.enqueue(req(2, -1, "a", 1, 1)).unwrap();
    c.enqueue(req(3, 5, "a", 1, 2)).unwrap();
    c.enqueue(req(4, 0, "b", 1, 3)).unwrap();
    let order = drain_ids(&mut c, 0.0);
    assert_eq!(order[0], 3);
    assert_eq!(order[3], 2);
    assert!(c.is_empty());
    assert_eq!(c.ceilings().iter().map(|(p, _)| *p).collect::<Vec<_>>(), vec![5, 0, -1]);
}

#[test]
fn saturation_gate_blocks_at_ceiling() {
    let mut c = ctl(FlowConfig::igw());
    c.enqueue(req(1, 0, "a", 1, 0)).unwrap();
    c.enqueue(req(2, 0, "a", 1, 0)).unwrap();
    assert!(c.dispatch(ms(1), 1.0).is_none(), "static ceiling 1.0: gated at s = 1.0");
    assert!(c.dispatch(ms(1), 3.5).is_none());
    assert!(c.dispatch(ms(1), f64::NAN).is_none(), "NaN counts as saturated");
    assert_eq!(c.dispatch(ms(1), 0.999).unwrap().id, 1);
    // dispatch_while re-reads saturation after each release.
    c.enqueue(req(3, 0, "a", 1, 2)).unwrap();
    c.enqueue(req(4, 0, "a", 1, 2)).unwrap();
    let mut s = 0.5;
    let got = c.dispatch_while(ms(3), |prev| {
        if prev.is_some() {
            s += 0.25;
        }
        s
    });
    assert_eq!(got.iter().map(|d| d.id).collect::<Vec<_>>(), vec![2, 3]);
    assert_eq!(got[0].queued_for, Duration::from_millis(3));
}

#[test]
fn batch_holdback_bounds_the_in_flight_requests_lower_bands_may_fill() {
    let mut cfg = FlowConfig::igw();
    cfg.batch_holdback = Some(8.0);
    let mut c = ctl(cfg);
    for (id, p) in [(1, 10), (2, 10), (3, 0), (4, -1), (5, 0)] {
        c.enqueue(req(id, p, "a", 1, 0)).unwrap();
    }
    let load = |s: f64, f: f64| PoolLoad { saturation: s, in_flight_per_endpoint: f };
    // At 8 in flight per endpoint only the highest band goes, up to the saturation detector's limit.
    assert_eq!(c.dispatch(ms(1), load(0.5, 8.0)).unwrap().id, 1);
    assert!(c.dispatch(ms(1), load(1.0, 0.0)).is_none(), "the highest band is still gated by saturation");
    assert_eq!(c.dispatch(ms(1), load(0.9, 50.0)).unwrap().id, 2, "in flight does not gate the highest band");
    assert!(c.dispatch(ms(1), load(0.5, 8.0)).is_none(), "band 0 waits for the batch to shrink");
    assert!(c.dispatch(ms(1), load(0.5, f64::NAN)).is_none(), "an unknown in-flight count gates");
    // A bare saturation carries no in-flight count: the batch holdback then never gates.
    assert_eq!(c.dispatch(ms(1), 0.5).unwrap().id, 3);
    // Below the limit, strict priority again: band 0 before band -1; and the saturation ceiling still holds.
    assert!(c.dispatch(ms(1), load(1.0, 7.9)).is_none());
    let mut in_flight = 6.0;
    let got = c.dispatch_while(ms(2), |prev| {
        if prev.is_some() {
            in_flight += 1.0;
        }
        load(0.5, in_flight)
    });
    assert_eq!(got.iter().map(|d| d.id).collect::<Vec<_>>(), vec![5, 4], "stops once 8 are in flight");
    assert!(c.is_empty());
}

#[test]
fn batch_holdback_comes_from_the_flow_control_section() {
    let section: FlowControlConfig = serde_json::from_str(r#"{"lowerBandMaxConcurrency":48}"#).unwrap();
    let cfg = section.resolve(&FlowConfig::igw(), None).unwrap();
    assert_eq!(cfg.batch_holdback, Some(48.0));
    assert_eq!(FlowConfig::igw().batch_holdback, None, "off by default, as upstream");
    assert_eq!(FlowConfig::upstream().batch_holdback, None);
    let yaml = "featureGates: [flowControl]\nflowControl:\n  lowerBandMaxConcurrency: 65\n";
    let epc = crate::config::EndpointPickerConfig::parse(yaml).unwrap();
    assert_eq!(epc.flow_config().unwrap().unwrap().batch_holdback, Some(65.0), "through an EndpointPickerConfig");
    let zero: FlowControlConfig = serde_json::from_str(r#"{"lowerBandMaxConcurrency":0}"#).unwrap();
    assert!(matches!(zero.resolve(&FlowConfig::igw(), None), Err(FlowConfigError::InvalidUsageLimit(_))));
}

#[test]
fn priority_holdback_gates_lower_bands_first() {
    let mut cfg = FlowConfig::igw();
    cfg.usage_limit = UsageLimitPolicy::PriorityHoldback { max_ceiling: 1.0, min_ceiling: 0.4 };
    let mut c = ctl(cfg);
    for (id, p) in [(1, 10), (2, 0), (3, -10), (4, -10)] {
        c.enqueue(req(id, p, "a", 1, 0)).unwrap();
    }
    let ceilings = c.ceilings();
    assert_eq!(ceilings.iter().map(|c| c.0).collect::<Vec<_>>(), vec![10, 0, -10]);
    for (got, want) in ceilings.iter().zip([1.0, 0.7, 0.4]) {
        assert!((got.1 - want).abs() < 1e-9, "{ceilings:?}");
    }
    assert_eq!(drain_ids(&mut c, 0.6), vec![1, 2], "the lowest band is held back at s = 0.6");
    assert_eq!(drain_ids(&mut c, 0.39), vec![3, 4]);
}

#[test]
fn head_of_line_stop_vs_work_conserving() {
    let mut cfg = FlowConfig::igw();
    cfg.usage_limit = UsageLimitPolicy::PerBand { ceilings: BTreeMap::from([(10, 0.5)]), default: 0.9 };
    cfg.bands.push(BandConfig { priority: 10, ..cfg.default_band.clone() });
    let mut c = ctl(cfg.clone());
    c.enqueue(req(1, 0, "a", 1, 0)).unwrap();
    // An empty gated band does not block.
    assert_eq!(c.dispatch(ms(0), 0.7).unwrap().id, 1);
    c.enqueue(req(2, 10, "a", 1, 0)).unwrap();
    c.enqueue(req(3, 0, "a", 1, 0)).unwrap();
    assert!(c.dispatch(ms(0), 0.7).is_none(), "head-of-line stop: band 10 is gated, band 0 must wait");
    cfg.head_of_line_blocking = false;
    let mut c = ctl(cfg);
    c.enqueue(req(2, 10, "a", 1, 0)).unwrap();
    c.enqueue(req(3, 0, "a", 1, 0)).unwrap();
    assert_eq!(drain_ids(&mut c, 0.7), vec![3], "work-conserving: band 0 goes past gated band 10");
    assert_eq!(drain_ids(&mut c, 0.4), vec![2]);
}

#[test]
fn round_robin_cycles_sorted_flows_skipping_empty() {
    let mut c = ctl(with_band(FairnessPolicy::RoundRobin, OrderingPolicy::Fcfs));
    let mut id = 0;
    for (fid, n) in [("c", 2), ("a", 3), ("b", 1)] {
        for _ in 0..n {
            id += 1;
            c.enqueue(req(id, 0, fid, 1, id)).unwrap();
        }
    }
    let order: Vec<String> = c.dispatch_while(ms(10), |_| 0.0).iter().map(|d| d.fairness_id.to_string()).collect();
    assert_eq!(order, ["a", "b", "c", "a", "c", "a"]);
    // The cursor persists: after "a", a new "b" goes before "a" again.
    c.enqueue(req(10, 0, "a", 1, 20)).unwrap();
    c.enqueue(req(11, 0, "b", 1, 21)).unwrap();
    assert_eq!(drain_ids(&mut c, 0.0), vec![11, 10]);
}

#[test]
fn global_strict_is_one_fifo_across_flows() {
    let mut c = ctl(FlowConfig::upstream());
    for (id, fid) in [(1, "b"), (2, "a"), (3, "b"), (4, "c"), (5, "a")] {
        c.enqueue(req(id, 0, fid, 1, id)).unwrap();
    }
    assert_eq!(drain_ids(&mut c, 0.0), vec![1, 2, 3, 4, 5]);
}

#[test]
fn fcfs_edf_and_slo_deadline_orders() {
    // FCFS within a flow.
    let mut c = ctl(FlowConfig::igw());
    for id in [5, 3, 9] {
        c.enqueue(req(id, 0, "a", 1, 0)).unwrap();
    }
    assert_eq!(drain_ids(&mut c, 0.0), vec![5, 3, 9]);

    // EDF: deadline = enqueue + TTL (own, else default 10 s); ties FCFS.
    let mut cfg = with_band(FairnessPolicy::Vtc, OrderingPolicy::Edf);
    cfg.default_ttl = Some(Duration::from_secs(10));
    let mut c = ctl(cfg);
    for (id, t, ttl) in
        [(1, 0, None), (2, 100, Some(1_000)), (3, 50, Some(1_050)), (4, 0, Some(9_000)), (5, 0, Some(0))]
    {
        let mut r = req(id, 0, "a", 1, t);
        r.ttl = ttl.map(Duration::from_millis);
        c.enqueue(r).unwrap();
    }
    assert_eq!(drain_ids(&mut c, 0.0), vec![2, 3, 4, 1, 5]);

    // SLO deadline: own deadline first; none = far future (FCFS among them).
    let mut c = ctl(with_band(FairnessPolicy::GlobalStrict, OrderingPolicy::SloDeadline));
    for (id, fid, slo) in
        [(1, "a", None), (2, "b", Some(900)), (3, "a", Some(300)), (4, "b", None), (5, "c", Some(500))]
    {
        let mut r = req(id, 0, fid, 1, id);
        r.slo_deadline = slo.map(ms);
        c.enqueue(r).unwrap();
    }
    assert_eq!(drain_ids(&mut c, 0.0), vec![3, 5, 2, 1, 4]);
}

#[test]
fn vtc_token_shares_converge_while_both_backlogged() {
    // Heavy sends 5x the requests; each request is 100 tokens.
    let run = |fairness: FairnessPolicy| {
        let mut c = ctl(with_band(fairness, OrderingPolicy::Fcfs));
        let mut id = 0;
        for step in 0..200u64 {
            for fid in ["heavy", "heavy", "heavy", "heavy", "heavy", "light"] {
                id += 1;
                c.enqueue(req(id, 0, fid, 1, step)).unwrap();
            }
        }
        let mut served: HashMap<String, u64> = HashMap::new();
        for _ in 0..300 {
            let d = c.dispatch(ms(1_000), 0.0).unwrap();
            c.on_served(&d.fairness_id, d.priority, 40, 30, d.charged);
            *served.entry(d.fairness_id.to_string()).or_default() += 40 + 2 * 30;
        }
        served["light"] as f64 / (served["light"] + served["heavy"]) as f64
    };
    let vtc = run(FairnessPolicy::Vtc);
    assert!((0.48..=0.52).contains(&vtc), "VTC share {vtc}");
    let strict = run(FairnessPolicy::GlobalStrict);
    assert!(strict < 0.2, "global strict follows arrivals: {strict}");
}

#[test]
fn vtc_shares_are_by_tokens_not_requests() {
    let mut c = ctl(FlowConfig::igw());
    for i in 0..400 {
        let mut big = req(2 * i, 0, "big", 1, i);
        big.est_tokens = 500;
        c.enqueue(big).unwrap();
        let mut small = req(2 * i + 1, 0, "small", 1, i);
        small.est_tokens = 100;
        c.enqueue(small).unwrap();
    }
    let mut tokens: HashMap<String, u64> = HashMap::new();
    for _ in 0..240 {
        let d = c.dispatch(ms(0), 0.0).unwrap();
        *tokens.entry(d.fairness_id.to_string()).or_default() += d.charged;
    }
    let share = tokens["small"] as f64 / (tokens["small"] + tokens["big"]) as f64;
    assert!((0.45..=0.55).contains(&share), "token share {share}");
    // Under-estimates are corrected by actual usage: charge "small" heavily and it yields.
    assert!(c.on_served("small", 0, 100_000, 0, 0));
    let next: Vec<String> = (0..20).map(|_| c.dispatch(ms(0), 0.0).unwrap().fairness_id.to_string()).collect();
    assert!(next.iter().all(|f| f == "big"));
    assert!(!c.on_served("nobody", 0, 1, 1, 0));
}

#[test]
fn vtc_newly_active_flow_gets_no_banked_credit() {
    let mut c = ctl(FlowConfig::igw());
    // "old" is served alone for a long time; "new" was idle (counter 0).
    for i in 0..100 {
        c.enqueue(req(i, 0, "old", 1, 0)).unwrap();
    }
    for _ in 0..50 {
        c.dispatch(ms(1), 0.0).unwrap();
    }
    let old_counter = c.flow_counter("old", 0).unwrap();
    assert_eq!(old_counter, 50.0 * 100.0);
    for i in 1000..1050 {
        c.enqueue(req(i, 0, "new", 1, 2)).unwrap();
    }
    assert_eq!(c.flow_counter("new", 0), Some(old_counter), "lifted to the backlogged minimum");
    let first: Vec<String> = (0..20).map(|_| c.dispatch(ms(3), 0.0).unwrap().fairness_id.to_string()).collect();
    let new_count = first.iter().filter(|f| *f == "new").count();
    assert!((9..=11).contains(&new_count), "alternates, no burst: {first:?}");

    // When the band empties, the floor is remembered: a later newcomer starts at it, not at zero.
    let mut c = ctl(FlowConfig::igw());
    for i in 0..10 {
        c.enqueue(req(i, 0, "x", 1, 0)).unwrap();
    }
    drain_ids(&mut c, 0.0);
    c.enqueue(req(100, 0, "y", 1, 5)).unwrap();
    assert!(c.flow_counter("y", 0).unwrap() >= 900.0);
}

#[test]
fn capacity_limits_reject_with_429() {
    let mut cfg = FlowConfig::igw();
    cfg.bands.push(BandConfig { priority: 1, max_requests: 2, ..cfg.default_band.clone() });
    cfg.bands.push(BandConfig { priority: 2, max_bytes: 100, ..cfg.default_band.clone() });
    let mut c = ctl(cfg.clone());
    c.enqueue(req(1, 1, "a", 10, 0)).unwrap();
    c.enqueue(req(2, 1, "b", 10, 0)).unwrap();
    let e = c.enqueue(req(3, 1, "a", 10, 0)).unwrap_err();
    assert_eq!(e, Rejected::BandCapacity { priority: 1, kind: LimitKind::Requests, limit: 2 });
    assert_eq!(e.outcome(), Outcome::RejectedCapacity);
    assert_eq!(e.outcome().http_status(), Some(429));
    c.enqueue(req(4, 2, "a", 60, 0)).unwrap();
    assert!(matches!(c.enqueue(req(5, 2, "a", 41, 0)), Err(Rejected::BandCapacity { kind: LimitKind::Bytes, .. })));
    c.enqueue(req(6, 2, "a", 40, 0)).unwrap();
    assert_eq!((c.len(), c.queued_bytes()), (4, 120), "rejections leave no trace");

    // Default band: 1 GB.
    let mut c = ctl(FlowConfig::igw());
    c.enqueue(req(1, 0, "a", 600_000_000, 0)).unwrap();
    assert!(c.enqueue(req(2, 7, "a", 600_000_000, 0)).is_ok(), "a different band has its own cap");
    assert!(c.enqueue(req(3, 0, "a", 600_000_000, 0)).is_err());

    // Global caps span bands.
    cfg.max_requests = 3;
    cfg.max_bytes = 1000;
    let mut c = ctl(cfg);
    c.enqueue(req(1, 5, "a", 500, 0)).unwrap();
    let e = c.enqueue(req(2, 6, "a", 501, 0)).unwrap_err();
    assert_eq!(e, Rejected::GlobalCapacity { kind: LimitKind::Bytes, limit: 1000 });
    c.enqueue(req(2, 6, "a", 1, 0)).unwrap();
    c.enqueue(req(3, 7, "a", 1, 0)).unwrap();
    let e = c.enqueue(req(4, 8, "a", 1, 0)).unwrap_err();
    assert_eq!(e, Rejected::GlobalCapacity { kind: LimitKind::Requests, limit: 3 });
    assert_eq!(c.enqueue(req(3, 7, "a", 1, 0)).unwrap_err().outcome(), Outcome::RejectedOther, "duplicate id");
    assert!(c.cancel(1));
    c.enqueue(req(4, 8, "a", 1, 0)).unwrap();
}

#[test]
fn ttl_expiry_evicts_at_the_deadline() {
    let mut cfg = FlowConfig::igw();
    cfg.default_ttl = Some(Duration::from_secs(30));
    let mut c = ctl(cfg);
    let mut r = req(1, 0, "a", 10, 1_000);
    r.ttl = Some(Duration::from_secs(1));
    c.enqueue(r).unwrap();
    c.enqueue(req(2, 0, "a", 10, 1_500)).unwrap();
    assert_eq!(c.next_deadline(), Some(ms(2_000)));
    assert!(c.expire(Instant::from_nanos(ms(2_000).as_nanos() - 1)).is_empty());
    assert_eq!(c.expire(ms(2_000)), vec![(1, Outcome::EvictedTTL)]);
    assert_eq!(Outcome::EvictedTTL.http_status(), Some(503));
    assert_eq!(Outcome::EvictedTTL.message(), "request timed out in queue");
    assert_eq!((c.len(), c.queued_bytes()), (1, 10));
    assert_eq!(c.next_deadline(), Some(ms(31_500)), "default TTL");
    assert_eq!(c.expire(ms(40_000)), vec![(2, Outcome::EvictedTTL)]);
    assert_eq!(c.next_deadline(), None);
    assert!(c.dispatch(ms(40_000), 0.0).is_none());
}

#[test]
fn cancel_removes_at_once_and_stats_drop() {
    let mut c = ctl(FlowConfig::igw());
    for id in 1..=4 {
        c.enqueue(req(id, 0, "a", 10 * id, 0)).unwrap();
    }
    c.enqueue(req(9, 3, "b", 5, 0)).unwrap();
    assert!(c.cancel(2));
    assert!(!c.cancel(2));
    assert!(!c.contains(2));
    let s = c.stats();
    assert_eq!((s.requests, s.bytes), (4, 10 + 30 + 40 + 5));
    let a = s.flows.iter().find(|f| &*f.fairness_id == "a").unwrap();
    assert_eq!((a.requests, a.bytes), (3, 80));
    assert_eq!(s.bands.iter().map(|b| (b.priority, b.requests)).collect::<Vec<_>>(), vec![(3, 1), (0, 3)]);
    assert_eq!(drain_ids(&mut c, 0.0), vec![9, 1, 3, 4]);
    assert_eq!(c.stats().flows.iter().map(|f| f.requests).sum::<u64>(), 0, "idle flows report zero");
}

#[test]
fn drain_and_idle_flow_collection() {
    let mut cfg = FlowConfig::igw();
    cfg.flow_idle_gc = Some(Duration::from_secs(300));
    let mut c = ctl(cfg);
    c.enqueue(req(1, 0, "a", 1, 0)).unwrap();
    c.enqueue(req(2, 0, "b", 1, 0)).unwrap();
    c.dispatch(ms(10), 0.0).unwrap();
    c.expire(ms(200_000));
    assert_eq!(c.stats().bands[0].flows, 2);
    c.expire(ms(400_000));
    assert_eq!(c.stats().bands[0].flows, 1, "idle flow a collected, backlogged b kept");
    assert_eq!(c.drain(), vec![(2, Outcome::EvictedOther)]);
    assert!(c.is_empty());
}

#[test]
fn outcome_names_and_request_conversion() {
    assert_eq!(Outcome::EvictedContextCancelled.to_string(), "EvictedContextCancelled");
    assert_eq!(Outcome::EvictedContextCancelled.http_status(), Some(503));
    assert_eq!(Outcome::RejectedOther.http_status(), Some(500));
    assert_eq!(Outcome::Dispatched.http_status(), None);
    let mut r = InferenceRequest::text("m", &"x".repeat(400));
    r.max_tokens = Some(50);
    r.priority = -2;
    r.fairness_id = String::new();
    r.headers.push(("x-slo-ttft-ms".into(), "250".into()));
    let q = QueuedRequest::from_request(7, &r, ms(1_000), 2.0);
    assert_eq!(&*q.fairness_id, "default-flow");
    assert_eq!((q.priority, q.bytes, q.est_tokens), (-2, 400, 100 + 100));
    assert_eq!(q.slo_deadline, Some(ms(1_250)));
}

#[derive(Clone, Debug)]
enum Op {
    Enqueue { prio: Priority, flow: u8, bytes: u64, ttl_ms: Option<u64>, slo_ms: Option<u64> },
    Cancel(u64),
    Expire,
    Dispatch(f64),
    Served(u8, Priority, u64),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (-1i32..=1, 0u8..4, 0u64..50, proptest::option::of(1u64..200), proptest::option::of(0u64..500))
            .prop_map(|(prio, flow, bytes, ttl_ms, slo_ms)| Op::Enqueue { prio, flow, bytes, ttl_ms, slo_ms }),
        1 => (0u64..60).prop_map(Op::Cancel),
        1 => Just(Op::Expire),
        3 => prop_oneof![Just(0.0), Just(0.5), Just(0.95), Just(1.0)].prop_map(Op::Dispatch),
        1 => (0u8..4, -1i32..=1, 0u64..300).prop_map(|(f, p, t)| Op::Served(f, p, t)),
        2 => (0u64..100).prop_map(Op::Advance),
    ]
}

fn config_strategy() -> impl Strategy<Value = FlowConfig> {
    (0usize..3, 0usize..3, any::<bool>(), 0u64..3, 0u64..3, any::<bool>()).prop_map(|(f, o, hol, mr, mb, hb)| {
        let fair = [FairnessPolicy::GlobalStrict, FairnessPolicy::RoundRobin, FairnessPolicy::Vtc][f];
        let ord = [OrderingPolicy::Fcfs, OrderingPolicy::Edf, OrderingPolicy::SloDeadline][o];
        let mut c = with_band(fair, ord);
        c.head_of_line_blocking = hol;
        c.max_requests = [0, 20, 40][mr as usize];
        c.max_bytes = [0, 300, 1000][mb as usize];
        c.default_band.max_requests = [0, 8, 15][mr as usize];
        c.default_ttl = Some(Duration::from_millis(150));
        if hb {
            c.usage_limit = UsageLimitPolicy::PriorityHoldback { max_ceiling: 1.0, min_ceiling: 0.5 };
        }
        c.flow_idle_gc = Some(Duration::from_millis(120));
        c
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn stats_are_exact_and_ids_finalize_once(cfg in config_strategy(), ops in proptest::collection::vec(op(), 1..300)) {
        let mut c = FlowController::new(cfg).unwrap();
        let flows = ["a", "b", "c", "d"];
        let mut model: HashMap<u64, (Priority, &str, u64)> = HashMap::new();
        let mut finalized: HashSet<u64> = HashSet::new();
        let mut now = 0u64;
        let mut next_id = 0u64;
        for op in ops {
            match op {
                Op::Enqueue { prio, flow, bytes, ttl_ms, slo_ms } => {
                    let mut r = req(next_id, prio, flows[flow as usize], bytes, now);
                    r.ttl = ttl_ms.map(Duration::from_millis);
                    r.slo_deadline = slo_ms.map(|s| ms(now + s));
                    r.est_tokens = bytes;
                    if c.enqueue(r).is_ok() {
                        model.insert(next_id, (prio, flows[flow as usize], bytes));
                    }
                    next_id += 1;
                }
                Op::Cancel(id) => {
                    let was = model.remove(&id).is_some();
                    prop_assert_eq!(c.cancel(id), was);
                    if was {
                        prop_assert!(finalized.insert(id));
                    }
                }
                Op::Expire => {
                    for (id, outcome) in c.expire(ms(now)) {
                        prop_assert_eq!(outcome, Outcome::EvictedTTL);
                        prop_assert!(model.remove(&id).is_some());
                        prop_assert!(finalized.insert(id));
                    }
                    if let Some(d) = c.next_deadline() {
                        prop_assert!(d > ms(now));
                    }
                }
                Op::Dispatch(s) => {
                    let before = model.len();
                    let out = c.dispatch(ms(now), s);
                    if s >= 1.0 {
                        prop_assert!(out.is_none());
                    }
                    if s == 0.0 && before > 0 {
                        prop_assert!(out.is_some(), "work is never withheld from an open pool");
                    }
                    if let Some(d) = out {
                        let (p, f, b) = model.remove(&d.id).unwrap();
                        prop_assert_eq!((p, f, b), (d.priority, &*d.fairness_id, d.bytes));
                        prop_assert!(model.values().all(|(q, _, _)| *q <= p), "strict priority");
                        prop_assert!(finalized.insert(d.id));
                    }
                }
                Op::Served(f, p, t) => {
                    c.on_served(flows[f as usize], p, t, t / 2, t);
                }
                Op::Advance(dt) => now += dt,
            }
            let s = c.stats();
            prop_assert_eq!(s.requests, model.len() as u64);
            prop_assert_eq!(s.bytes, model.values().map(|v| v.2).sum::<u64>());
            prop_assert_eq!(c.len(), model.len());
            for fs in &s.flows {
                let (n, b) = model
                    .values()
                    .filter(|(p, f, _)| *p == fs.priority && *f == &*fs.fairness_id)
                    .fold((0, 0), |(n, b), v| (n + 1, b + v.2));
                prop_assert_eq!((fs.requests, fs.bytes), (n, b));
            }
            for bs in &s.bands {
                let n = model.values().filter(|(p, _, _)| *p == bs.priority).count() as u64;
                prop_assert_eq!(bs.requests, n);
            }
        }
        for (id, _) in c.drain() {
            prop_assert!(model.remove(&id).is_some());
            prop_assert!(finalized.insert(id));
        }
        prop_assert!(model.is_empty());
    }
}
