//! The reconciler over synthetic watch event sequences.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use igw_core::Datastore;
use igw_k8s::api::{
    InferenceModelRewrite, InferenceModelRewriteSpec, InferenceObjective, InferenceObjectiveSpec, InferencePool,
    InferencePoolSpec, LabelSelector, Match, ModelMatch, PoolObjectReference, RewriteRule, TargetModel,
};
use igw_k8s::legacy::{self, Criticality, InferenceModel, InferenceModelSpec, LegacyPoolRef, LegacyTargetModel};
use igw_k8s::reconcile::{Event, Reconciler, Target};
use igw_k8s::shared::Port;
use k8s_openapi::api::core::v1::{Pod, PodCondition, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

const NS: &str = "ns";

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta { name: Some(name.into()), namespace: Some(NS.into()), ..ObjectMeta::default() }
}

fn pool(name: &str, app: &str, ports: &[i32]) -> InferencePool {
    InferencePool {
        metadata: meta(name),
        spec: InferencePoolSpec {
            selector: LabelSelector { match_labels: [("app".to_string(), app.to_string())].into() },
            target_ports: ports.iter().map(|n| Port { number: *n }).collect(),
            ..InferencePoolSpec::default()
        },
        status: None,
    }
}

fn pod(name: &str, ip: &str, ready: bool, labels: &[(&str, &str)]) -> Pod {
    Pod {
        metadata: ObjectMeta {
            labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>()),
            ..meta(name)
        },
        spec: None,
        status: Some(PodStatus {
            pod_ip: Some(ip.into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        }),
    }
}

fn with_annotation(mut p: Pod, k: &str, v: &str) -> Pod {
    p.metadata.annotations = Some([(k.to_string(), v.to_string())].into());
    p
}

fn setup() -> (Arc<Datastore>, Reconciler) {
    let ds = Arc::new(Datastore::new());
    let r = Reconciler::new(ds.clone(), Target::Pool { name: "p".into(), namespace: NS.into() });
    (ds, r)
}

fn addrs(ds: &Datastore) -> Vec<String> {
    let mut v: Vec<String> = ds.snapshot().endpoints.iter().map(|e| e.address().to_string()).collect();
    v.sort();
    v
}

#[test]
fn ready_pods_only_and_one_endpoint_per_target_port() {
    let (ds, mut r) = setup();
    r.pool(Event::Restarted(vec![pool("p", "vllm", &[8000, 8001])]));
    assert!(!r.is_synced(), "pods not listed yet");
    r.pod(Event::Restarted(vec![
        pod("a", "10.0.0.1", true, &[("app", "vllm")]),
        pod("b", "10.0.0.2", false, &[("app", "vllm")]),
        pod("c", "10.0.0.3", true, &[("app", "other")]),
    ]));
    assert!(r.is_synced());
    assert_eq!(addrs(&ds), ["10.0.0.1:8000", "10.0.0.1:8001"]);
    let snap = ds.snapshot();
    let names: Vec<String> = snap.endpoints.iter().map(|e| e.meta().name()).collect();
    assert_eq!(names, ["a-rank-0", "a-rank-1"]);

    // b becomes ready; a stops being ready; a is deleted.
    r.pod(Event::Applied(pod("b", "10.0.0.2", true, &[("app", "vllm")])));
    assert_eq!(addrs(&ds), ["10.0.0.1:8000", "10.0.0.1:8001", "10.0.0.2:8000", "10.0.0.2:8001"]);
    r.pod(Event::Applied(pod("a", "10.0.0.1", false, &[("app", "vllm")])));
    assert_eq!(addrs(&ds), ["10.0.0.2:8000", "10.0.0.2:8001"]);
    r.pod(Event::Deleted(pod("b", "10.0.0.2", true, &[("app", "vllm")])));
    assert!(addrs(&ds).is_empty());
}

#[test]
fn terminating_pods_are_not_endpoints() {
    let (ds, mut r) = setup();
    r.pool(Event::Applied(pool("p", "vllm", &[8000])));
    let mut p = pod("a", "10.0.0.1", true, &[("app", "vllm")]);
    r.pod(Event::Restarted(vec![p.clone()]));
    assert_eq!(addrs(&ds).len(), 1);
    p.metadata.deletion_timestamp = Some(Time(Default::default()));
    r.pod(Event::Applied(p));
    assert!(addrs(&ds).is_empty());
}

#[test]
fn active_ports_annotation_narrows_ranks_and_keeps_rank_numbers() {
    let (ds, mut r) = setup();
    r.pool(Event::Applied(pool("p", "vllm", &[3000, 3001, 3002])));
    let p = with_annotation(
        pod("a", "10.0.0.1", true, &[("app", "vllm")]),
        "inference.networking.k8s.io/active-ports",
        "3000,3002",
    );
    r.pod(Event::Restarted(vec![p]));
    let snap = ds.snapshot();
    let got: Vec<(String, u16)> = snap.endpoints.iter().map(|e| (e.address().to_string(), e.meta().rank)).collect();
    assert_eq!(got, [("10.0.0.1:3000".to_string(), 0), ("10.0.0.1:3002".to_string(), 2)]);
    // A malformed annotation is skipped (logged); the pod's last good state stays.
    let bad = with_annotation(
        pod("a", "10.0.0.1", true, &[("app", "vllm")]),
        "inference.networking.k8s.io/active-ports",
        "x",
    );
    r.pod(Event::Applied(bad));
    assert_eq!(r.skipped(), 1);
    assert_eq!(ds.snapshot().endpoints.len(), 2);
}

#[test]
fn engine_type_label_reaches_the_endpoint_and_label_changes_keep_the_id() {
    let (ds, mut r) = setup();
    r.pool(Event::Applied(pool("p", "m", &[8000])));
    r.pod(Event::Restarted(vec![pod("a", "10.0.0.1", true, &[("app", "m")])]));
    let id = ds.snapshot().endpoints[0].id();
    r.pod(Event::Applied(pod(
        "a",
        "10.0.0.1",
        true,
        &[("app", "m"), ("inference.networking.k8s.io/engine-type", "sglang")],
    )));
    let snap = ds.snapshot();
    assert_eq!(snap.endpoints[0].meta().engine_label(), Some("sglang"));
    assert_eq!(snap.endpoints[0].id(), id);
}

#[test]
fn selector_and_port_changes_resync_every_endpoint() {
    let (ds, mut r) = setup();
    r.pool(Event::Applied(pool("p", "blue", &[8000])));
    r.pod(Event::Restarted(vec![
        pod("a", "10.0.0.1", true, &[("app", "blue")]),
        pod("b", "10.0.0.2", true, &[("app", "green")]),
    ]));
    assert_eq!(addrs(&ds), ["10.0.0.1:8000"]);
    r.pool(Event::Applied(pool("p", "green", &[8000])));
    assert_eq!(addrs(&ds), ["10.0.0.2:8000"]);
    r.pool(Event::Applied(pool("p", "green", &[9000, 9001])));
    assert_eq!(addrs(&ds), ["10.0.0.2:9000", "10.0.0.2:9001"]);
    // Pods that arrive before the pool are remembered.
    r.pool(Event::Deleted(pool("p", "green", &[9000])));
    assert!(addrs(&ds).is_empty());
    assert!(ds.snapshot().pool.is_none());
    r.pool(Event::Applied(pool("p", "blue", &[8000])));
    assert_eq!(addrs(&ds), ["10.0.0.1:8000"]);
}

#[test]
fn other_pools_and_malformed_pools_are_ignored() {
    let (ds, mut r) = setup();
    r.pool(Event::Applied(pool("other", "x", &[8000])));
    assert!(ds.snapshot().pool.is_none());
    r.pool(Event::Applied(pool("p", "x", &[8000, 8000])));
    assert!(ds.snapshot().pool.is_none());
    assert_eq!(r.skipped(), 1);
    r.pool(Event::Applied(pool("p", "x", &[8000])));
    assert_eq!(ds.snapshot().pool.as_ref().map(|p| p.target_ports.clone()), Some(vec![8000]));
    // A later malformed version does not wedge anything: the last good pool stays.
    r.pool(Event::Applied(pool("p", "x", &[0])));
    assert_eq!(ds.snapshot().pool.as_ref().map(|p| p.target_ports.clone()), Some(vec![8000]));
}

fn objective(name: &str, pool: &str, group: Option<&str>, priority: Option<i64>) -> InferenceObjective {
    InferenceObjective {
        metadata: meta(name),
        spec: InferenceObjectiveSpec {
            pool_ref: PoolObjectReference { group: group.map(Into::into), kind: None, name: pool.into() },
            priority,
        },
        status: None,
    }
}

#[test]
fn objectives_whose_pool_ref_names_the_pool() {
    let (ds, mut r) = setup();
    r.objective(Event::Restarted(vec![
        objective("critical", "p", None, Some(10)),
        objective("batch", "p", Some("inference.networking.k8s.io"), Some(-1)),
        objective("elsewhere", "q", None, Some(5)),
        objective("wrong-group", "p", Some("inference.networking.x-k8s.io"), Some(5)),
        objective("unset", "p", None, None),
    ]));
    let snap = ds.snapshot();
    assert_eq!(snap.objectives.keys().collect::<Vec<_>>(), ["batch", "critical", "unset"]);
    assert_eq!(snap.priority_for(Some("critical"), "m"), 10);
    assert_eq!(snap.priority_for(Some("batch"), "m"), -1);
    assert_eq!(snap.priority_for(Some("unset"), "m"), 0);
    // Moving an objective to another pool removes it; deleting removes it.
    r.objective(Event::Applied(objective("critical", "q", None, Some(10))));
    r.objective(Event::Deleted(objective("batch", "p", None, Some(-1))));
    assert_eq!(ds.snapshot().objectives.keys().collect::<Vec<_>>(), ["unset"]);
}

#[test]
fn objective_annotations_give_slos_and_placement_and_bad_ones_are_left_unset() {
    let (ds, mut r) = setup();
    let annotated = |name: &str, pairs: &[(&str, &str)]| {
        let mut o = objective(name, "p", None, Some(1));
        o.metadata.annotations = Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        o
    };
    r.objective(Event::Restarted(vec![
        annotated(
            "batch",
            &[("igw.dev/slo-ttft-ms", "3000"), ("igw.dev/slo-tpot-ms", "50"), ("igw.dev/placement", "cheapest")],
        ),
        annotated("odd", &[("igw.dev/slo-ttft-ms", "soon"), ("igw.dev/placement", "cheap")]),
    ]));
    let snap = ds.snapshot();
    let goals = |n: &str| snap.objective_for(Some(n), "m").unwrap().goals;
    assert_eq!(
        goals("batch"),
        igw_core::ObjectiveGoals { ttft_ms: Some(3000), tpot_ms: Some(50), placement: igw_core::Placement::Cheapest }
    );
    assert_eq!(goals("odd"), igw_core::ObjectiveGoals::default(), "invalid annotations are ignored");
    assert_eq!(snap.priority_for(Some("odd"), "m"), 1, "and the objective still applies");
}

fn rewrite(name: &str, pool: &str, matches: &[&str], targets: &[(&str, Option<i32>)]) -> InferenceModelRewrite {
    InferenceModelRewrite {
        metadata: meta(name),
        spec: InferenceModelRewriteSpec {
            pool_ref: PoolObjectReference { name: pool.into(), ..PoolObjectReference::default() },
            rules: vec![RewriteRule {
                matches: matches
                    .iter()
                    .map(|m| Match { model: ModelMatch { type_: None, value: m.to_string() } })
                    .collect(),
                targets: targets
                    .iter()
                    .map(|(m, w)| TargetModel { model_rewrite: m.to_string(), weight: *w })
                    .collect(),
            }],
        },
        status: None,
    }
}

#[test]
fn rewrites_apply_and_invalid_ones_are_skipped() {
    let (ds, mut r) = setup();
    r.rewrite(Event::Restarted(vec![
        rewrite("split", "p", &["llama"], &[("llama-a", Some(1)), ("llama-b", Some(3))]),
        rewrite("empty", "p", &["x"], &[]),
        rewrite("other-pool", "q", &["y"], &[("z", None)]),
    ]));
    assert_eq!(r.skipped(), 1);
    let snap = ds.snapshot();
    assert_eq!(snap.rewrites.len(), 1);
    let rule = snap.rewrite_rule("llama").unwrap();
    assert_eq!(rule.pick(0).map(|t| t.model.as_str()), Some("llama-a"));
    assert_eq!(rule.pick(1).map(|t| t.model.as_str()), Some("llama-b"));
    assert!(snap.rewrite_rule("y").is_none());
    // An update that breaks the rewrite removes it rather than keeping a stale rule.
    r.rewrite(Event::Applied(rewrite("split", "p", &["llama"], &[("a", Some(0))])));
    assert!(ds.snapshot().rewrites.is_empty());
    r.rewrite(Event::Applied(rewrite("generic", "p", &[], &[("base", None)])));
    assert_eq!(ds.snapshot().rewrite_rule("anything").map(|r| r.targets[0].model.clone()), Some("base".into()));
    r.rewrite(Event::Deleted(rewrite("generic", "p", &[], &[])));
    assert!(ds.snapshot().rewrites.is_empty());
}

fn legacy_pool(name: &str, port: i32) -> legacy::InferencePool {
    legacy::InferencePool {
        metadata: meta(name),
        spec: legacy::InferencePoolSpec {
            selector: [("app".to_string(), "vllm".to_string())].into(),
            target_port_number: port,
            extension_ref: legacy::ExtensionRef { name: "epp".into(), ..legacy::ExtensionRef::default() },
        },
        status: None,
    }
}

fn model(name: &str, model: &str, criticality: Option<Criticality>, targets: &[(&str, Option<i32>)]) -> InferenceModel {
    InferenceModel {
        metadata: meta(name),
        spec: InferenceModelSpec {
            criticality,
            model_name: model.into(),
            pool_ref: LegacyPoolRef { name: "p".into(), ..LegacyPoolRef::default() },
            target_models: targets.iter().map(|(n, w)| LegacyTargetModel { name: n.to_string(), weight: *w }).collect(),
        },
        status: None,
    }
}

#[test]
fn legacy_pool_and_models_map_criticality_to_priority() {
    let ds = Arc::new(Datastore::new());
    let mut r = Reconciler::new(ds.clone(), Target::LegacyPool { name: "p".into(), namespace: NS.into() });
    r.pool(Event::Applied(pool("p", "vllm", &[1])));
    assert!(ds.snapshot().pool.is_none(), "a v1 pool does not feed a legacy target");
    r.legacy_pool(Event::Restarted(vec![legacy_pool("p", 8000)]));
    r.pod(Event::Restarted(vec![pod("a", "10.0.0.1", true, &[("app", "vllm")])]));
    assert_eq!(addrs(&ds), ["10.0.0.1:8000"]);
    r.legacy_model(Event::Restarted(vec![
        model("chat", "chat", Some(Criticality::Critical), &[]),
        model("batch", "batch", Some(Criticality::Sheddable), &[("batch-v1", Some(1)), ("batch-v2", Some(1))]),
        model("plain", "plain", None, &[]),
        model("mixed", "mixed", None, &[("a", Some(1)), ("b", None)]),
    ]));
    assert_eq!(r.skipped(), 1, "weights on some targets only");
    let snap = ds.snapshot();
    assert_eq!(snap.priority_for(None, "chat"), igw_k8s::legacy::CRITICAL_PRIORITY);
    assert_eq!(snap.priority_for(None, "batch"), -1);
    assert_eq!(snap.priority_for(None, "plain"), 0);
    assert_eq!(snap.rewrite_rule("batch").map(|r| r.targets.len()), Some(2));
    r.legacy_model(Event::Deleted(model("batch", "batch", None, &[])));
    let snap = ds.snapshot();
    assert_eq!(snap.priority_for(None, "batch"), 0);
    assert!(snap.rewrite_rule("batch").is_none());
}

#[test]
fn standalone_selector_mode_needs_no_pool_object() {
    let ds = Arc::new(Datastore::new());
    let target = Target::from_selector(NS, "app=vllm, tier=gpu", &[8000, 8000, 8001]).unwrap();
    let mut r = Reconciler::new(ds.clone(), target);
    r.pod(Event::Restarted(vec![
        pod("a", "10.0.0.1", true, &[("app", "vllm"), ("tier", "gpu")]),
        pod("b", "10.0.0.2", true, &[("app", "vllm")]),
    ]));
    assert!(r.is_synced());
    assert_eq!(addrs(&ds), ["10.0.0.1:8000", "10.0.0.1:8001"]);
    assert!(Target::from_selector(NS, "app", &[8000]).is_err());
    assert!(Target::from_selector(NS, "app=x", &[]).is_err());
    assert!(Target::from_selector(NS, "app=x", &[1, 2, 3, 4, 5, 6, 7, 8, 9]).is_err());
}

#[test]
fn restarted_pod_list_replaces_the_endpoints_and_keeps_ids() {
    let (ds, mut r) = setup();
    r.pool(Event::Applied(pool("p", "m", &[8000])));
    r.pod(Event::Restarted(vec![
        pod("a", "10.0.0.1", true, &[("app", "m")]),
        pod("b", "10.0.0.2", true, &[("app", "m")]),
    ]));
    let id_b = ds.snapshot().endpoints[1].id();
    // The watch restarted; a vanished while we were disconnected.
    r.pod(Event::Restarted(vec![pod("b", "10.0.0.2", true, &[("app", "m")])]));
    let snap = ds.snapshot();
    assert_eq!(snap.endpoints.len(), 1);
    assert_eq!(snap.endpoints[0].id(), id_b);
}
