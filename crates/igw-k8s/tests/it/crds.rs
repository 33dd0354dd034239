//! The generated CRDs against upstream's files in `../shared/upstream/crds/`, field by field.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use serde_json::Value;

fn shared(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared").join(rel)
}

fn upstream(rel: &str) -> Value {
    let p = shared("upstream/crds").join(rel);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
    serde_saphyr::from_str(&text).expect("upstream CRD parses")
}

fn ours(name: &str) -> Value {
    let all: Vec<_> = igw_k8s::crds::current().into_iter().chain(igw_k8s::crds::legacy()).collect();
    let crd = all.into_iter().find(|c| c.metadata.name.as_deref() == Some(name)).expect("generated");
    serde_json::to_value(crd).unwrap()
}

const PAIRS: [(&str, &str); 6] = [
    ("inferencepools.inference.networking.k8s.io", "inference.networking.k8s.io_inferencepools.yaml"),
    ("inferenceobjectives.inference.networking.x-k8s.io", "inference.networking.x-k8s.io_inferenceobjectives.yaml"),
    (
        "inferencemodelrewrites.inference.networking.x-k8s.io",
        "inference.networking.x-k8s.io_inferencemodelrewrites.yaml",
    ),
    ("inferencepoolimports.inference.networking.x-k8s.io", "inference.networking.x-k8s.io_inferencepoolimports.yaml"),
    ("inferencepools.inference.networking.x-k8s.io", "legacy/inference.networking.x-k8s.io_inferencepools.yaml"),
    ("inferencemodels.inference.networking.x-k8s.io", "legacy/inference.networking.x-k8s.io_inferencemodels.yaml"),
];

/// The differences that remain, exactly; docs/kubernetes.md lists the same lines.
const KNOWN: &[&str] = &[
    "inferencepools.inference.networking.x-k8s.io: v1alpha2.status.parent[items].parentRef.group: minLength: ours 0 upstream null",
];

#[test]
fn generated_crds_match_upstream_field_by_field() {
    let mut found = Vec::new();
    for (name, file) in PAIRS {
        found.extend(igw_k8s::crds::compare(&ours(name), &upstream(file)).into_iter().map(|d| format!("{name}: {d}")));
    }
    assert_eq!(found, KNOWN, "a new difference from upstream's CRDs (or a fixed one: update KNOWN and the docs)");
    let docs = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/kubernetes.md"))
        .expect("docs/kubernetes.md");
    for k in KNOWN {
        assert!(docs.contains(k), "docs/kubernetes.md does not list: {k}");
    }
}

#[test]
fn the_comparison_notices_a_change() {
    let (name, file) = PAIRS[0];
    let mut o = ours(name);
    o["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["targetPorts"]["maxItems"] =
        1.into();
    o["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["selector"]["required"] =
        Value::Null;
    let d = igw_k8s::crds::compare(&o, &upstream(file));
    assert_eq!(d.len(), 2, "{d:?}");
    assert!(d[0].contains("selector: required: ours null"), "{d:?}");
    assert!(d[1].contains("maxItems: ours 1 upstream 8"), "{d:?}");
}

#[test]
fn yaml_output_round_trips() {
    let crds = igw_k8s::crds::current();
    let yaml = igw_k8s::crds::to_yaml(&crds).unwrap();
    let back: Vec<Value> = serde_saphyr::from_multiple(&yaml).unwrap();
    assert_eq!(back.len(), 4);
    for (crd, b) in crds.iter().zip(&back) {
        assert_eq!(&serde_json::to_value(crd).unwrap(), b);
    }
}
