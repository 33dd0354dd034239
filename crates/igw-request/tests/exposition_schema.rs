//! The shape of igw's own metrics as Prometheus scrapes them today (text format 0.0.4): every
//! family's name, type, label names and histogram buckets, after a request sequence that touches
//! every family of the request core and of flow control. Compared parsed, not as bytes, with the
//! committed `fixtures/exposition_schema.txt`, so a change of the metrics' implementation (as the
//! move onto the `prometheus` crate was) keeps what dashboards and alerts rely on. A deliberate
//! change of a metric updates the fixture in the same commit: `IGW_UPDATE_FIXTURES=1 cargo test
//! -p igw-request --test exposition_schema` rewrites it.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use igw_core::{Datastore, EndpointMeta, EndpointMetrics, InferenceObjective, Instant, ObjectRef};
use igw_request::{Admission, PoolCore, Prepared, ResponseSummary, Usage};
use igw_sched::Scheduler;
use igw_sched::flow::FlowConfig;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/exposition_schema.txt");

/// Renders the request core's and flow control's metrics after a varied request sequence: one
/// page per pool (a pool with flow control, one shedding without it).
fn exposition() -> Vec<String> {
    let ds = Arc::new(Datastore::with_endpoints(
        ["10.0.0.1:8000", "10.0.0.2:8000"].map(|a| EndpointMeta::parse_addr(a).unwrap()),
    ));
    ds.apply_objective(InferenceObjective {
        id: ObjectRef::new("default", "batch"),
        priority: -1,
        legacy_model_name: None,
        goals: Default::default(),
    });
    ds.apply_rewrite(igw_core::ModelRewrite {
        id: ObjectRef::new("default", "canary"),
        created_unix: 1,
        rules: vec![igw_core::RewriteRule {
            matches: vec!["m".into()],
            targets: vec![igw_core::TargetModel { model: "m-v2".into(), weight: 1 }],
        }],
    })
    .unwrap();
    let now = Instant::from_millis(10);
    for e in &ds.snapshot().endpoints {
        e.set_metrics(EndpointMetrics { update_time: Some(now), ..Default::default() });
    }
    let clock = Arc::new(igw_core::time::ManualClock::at(now));
    let flow = PoolCore::new("p", ds.clone(), Arc::new(Scheduler::from_policy("igw").unwrap()))
        .with_timer(clock.clone())
        .with_flow_control(FlowConfig::igw())
        .unwrap();
    let shed = PoolCore::new("p", ds.clone(), Arc::new(Scheduler::from_policy("igw").unwrap())).with_timer(clock);
    let (flow, shed) = (Arc::new(flow), Arc::new(shed));
    let body = format!(r#"{{"model":"m","prompt":"{}","max_tokens":4}}"#, "a shared system prompt. ".repeat(20));
    let prepare = |core: &PoolCore, objective: Option<&str>| {
        let headers: Vec<(&str, &str)> =
            objective.map(|o| vec![("x-gateway-inference-objective", o)]).unwrap_or_default();
        let head = core.head(Some("/v1/completions"), headers);
        match core.prepare(head, Some(Bytes::from(body.clone())), None).unwrap() {
            Prepared::Inference(p) => *p,
            Prepared::NoBody(_) => panic!("inference expected"),
        }
    };
    let usage = Usage { prompt_tokens: 120, completion_tokens: 4, total_tokens: 124, cached_tokens: 64 };
    // Flow control: two requests served with usage, one model-server error.
    for error in [false, false, true] {
        let p = prepare(&flow, None);
        let Admission::Queued(_) = flow.admit(&p, now).unwrap() else { panic!("flow control queues") };
        let (_, r) = flow.dispatch_cycle(now).pop().unwrap();
        let mut r = r.unwrap();
        let e = r.decide(&p, None, now).unwrap()[0].clone();
        r.attempt(&e, now);
        r.first_byte(now);
        let summary = ResponseSummary {
            status: Some(if error { 500 } else { 200 }),
            model_server_error: error,
            usage: (!error).then_some(usage),
            response_bytes: 300,
            ..Default::default()
        };
        r.end(Some(&summary), Instant::from_millis(40));
    }
    // Legacy shedding: a saturated pool refuses a sheddable request.
    for e in &ds.snapshot().endpoints {
        e.set_metrics(EndpointMetrics { waiting: 50, update_time: Some(now), ..Default::default() });
    }
    let p = prepare(&shed, Some("batch"));
    let Admission::Admitted(mut r) = shed.admit(&p, now).unwrap() else { panic!("admitted") };
    assert_eq!(r.decide(&p, None, now).unwrap_err().http_status(), 429);
    let mut a = String::new();
    flow.metrics().render(&mut a);
    flow.flow_metrics().render(&mut a);
    let mut b = String::new();
    shed.metrics().render(&mut b);
    vec![a, b]
}

/// A family's type, its label-name sets and its bucket bounds.
type FamilyShape = (String, BTreeSet<Vec<String>>, BTreeSet<String>);

/// name type [label names] {buckets}, one line per family, sorted; label sets of a family merged
/// over the pages.
fn schema(pages: &[String]) -> String {
    let mut families: BTreeMap<String, FamilyShape> = BTreeMap::new();
    for text in pages {
        let expo = igw_metrics::text::parse(text.as_bytes());
        assert!(expo.errors.is_empty(), "the exposition does not parse: {:?}", expo.errors);
        for f in &expo.families {
            let entry = families
                .entry(f.name.clone())
                .or_insert_with(|| (f.kind.as_str().to_string(), BTreeSet::new(), BTreeSet::new()));
            for s in &f.samples {
                let mut names: Vec<String> =
                    s.labels.iter().map(|(k, _)| k.to_string()).filter(|k| k != "le").collect();
                names.sort();
                entry.1.insert(names);
                if let Some(le) = s.label("le") {
                    entry.2.insert(le.to_string());
                }
            }
        }
    }
    let mut out = String::new();
    for (name, (kind, labels, buckets)) in families {
        let labels: Vec<String> = labels.into_iter().map(|l| format!("[{}]", l.join(","))).collect();
        let mut b: Vec<&String> = buckets.iter().collect();
        b.sort_by(|x, y| {
            let v = |s: &str| if s == "+Inf" { f64::INFINITY } else { s.parse().unwrap_or(f64::NAN) };
            v(x).total_cmp(&v(y))
        });
        let buckets = if b.is_empty() {
            String::new()
        } else {
            format!(" {{{}}}", b.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(","))
        };
        out.push_str(&format!("{name} {kind} {}{buckets}\n", labels.join(" ")));
    }
    out
}

#[test]
fn the_exposition_keeps_its_names_types_labels_and_buckets() {
    let got = schema(&exposition());
    if std::env::var_os("IGW_UPDATE_FIXTURES").is_some() {
        std::fs::write(FIXTURE, &got).unwrap();
    }
    let want = std::fs::read_to_string(FIXTURE).unwrap();
    assert_eq!(got, want, "igw's metrics changed shape; if deliberate, rewrite the fixture (see the module docs)");
    for family in [
        "inference_objective_request_total",
        "inference_objective_request_error_total",
        "inference_objective_request_duration_seconds",
        "inference_extension_scheduler_e2e_duration_seconds",
        "inference_extension_flow_control_request_queue_duration_seconds",
        "inference_extension_flow_control_pool_saturation",
        "inference_extension_model_rewrite_decisions_total",
        "inference_extension_prefix_indexer_hit_ratio",
    ] {
        assert!(want.lines().any(|l| l.starts_with(&format!("{family} "))), "{family} is covered");
    }
}
