//! Every relevant object in upstream's conformance manifests (`../shared/upstream/conformance/`)
//! deserializes into igw's types, converts into the datastore's, and selects the model-server
//! pods the same manifests deploy.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;

use igw_core::Datastore;
use igw_k8s::api::InferencePool;
use igw_k8s::reconcile::{Event, Reconciler, Target};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, PodCondition, PodStatus};
use serde_json::Value;

fn docs() -> Vec<(String, Value)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/upstream/conformance");
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let values: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        out.extend(values.into_iter().filter(|v| v.is_object()).map(|v| (name.clone(), v)));
    }
    out
}

fn of_kind(kind: &str) -> Vec<(String, Value)> {
    docs().into_iter().filter(|(_, v)| v["kind"] == kind).collect()
}

#[test]
fn every_conformance_inferencepool_deserializes_and_converts() {
    let pools = of_kind("InferencePool");
    assert!(pools.len() >= 7, "found {}", pools.len());
    for (file, v) in pools {
        assert_eq!(v["apiVersion"], "inference.networking.k8s.io/v1", "{file}");
        let pool: InferencePool = serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{file}: {e}"));
        let spec = igw_k8s::convert::pool_spec(&pool).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(spec.name, v["metadata"]["name"], "{file}");
        assert!(!spec.target_ports.is_empty(), "{file}");
        // Round trip: what we serialize reads back the same.
        let json = serde_json::to_value(&pool).unwrap();
        let back: InferencePool = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), json, "{file}");
        assert_eq!(back.spec, pool.spec, "{file}");
    }
}

#[test]
fn conformance_failure_modes_and_epp_refs_are_read() {
    let pools: Vec<InferencePool> =
        of_kind("InferencePool").into_iter().map(|(_, v)| serde_json::from_value(v).unwrap()).collect();
    let secondary = pools.iter().find(|p| p.metadata.name.as_deref() == Some("secondary-inference-pool")).unwrap();
    let epp = secondary.spec.endpoint_picker_ref.as_ref().unwrap();
    assert_eq!(epp.failure_mode, Some(igw_k8s::shared::FailureMode::FailOpen));
    assert_eq!(epp.port.as_ref().map(|p| p.number), Some(9002));
    let primary = pools.iter().find(|p| p.metadata.name.as_deref() == Some("primary-inference-pool")).unwrap();
    assert_eq!(primary.spec.endpoint_picker_ref.as_ref().unwrap().failure_mode, None);
}

/// The primary pool from base.yaml selects the pods of the primary model-server Deployment:
/// three ready replicas become three endpoints on port 3000.
#[test]
fn base_pool_selects_the_conformance_model_servers() {
    let base: Vec<Value> = docs().into_iter().filter(|(f, _)| f == "base.yaml").map(|(_, v)| v).collect();
    let pool: InferencePool = serde_json::from_value(
        base.iter()
            .find(|v| v["kind"] == "InferencePool" && v["metadata"]["name"] == "primary-inference-pool")
            .unwrap()
            .clone(),
    )
    .unwrap();
    let deployments: Vec<Deployment> =
        base.iter().filter(|v| v["kind"] == "Deployment").map(|v| serde_json::from_value(v.clone()).unwrap()).collect();
    let ns = pool.metadata.namespace.clone().unwrap();
    let ds = Arc::new(Datastore::new());
    let mut r =
        Reconciler::new(ds.clone(), Target::Pool { name: "primary-inference-pool".into(), namespace: ns.clone() });
    r.pool(Event::Restarted(vec![pool]));
    let mut pods = Vec::new();
    for (d, dep) in deployments.iter().enumerate() {
        let template = dep.spec.template.clone();
        for i in 0..dep.spec.replicas.unwrap_or(1) {
            let mut meta = template.metadata.clone().unwrap_or_default();
            meta.name = Some(format!("{}-{i}", dep.metadata.name.clone().unwrap()));
            meta.namespace = dep.metadata.namespace.clone();
            pods.push(Pod {
                metadata: meta,
                spec: template.spec.clone(),
                status: Some(PodStatus {
                    pod_ip: Some(format!("10.0.{d}.{}", i + 1)),
                    conditions: Some(vec![PodCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        ..PodCondition::default()
                    }]),
                    ..PodStatus::default()
                }),
            });
        }
    }
    r.pod(Event::Restarted(pods));
    assert!(r.is_synced());
    let snap = ds.snapshot();
    let addrs: Vec<String> = snap.endpoints.iter().map(|e| e.address().to_string()).collect();
    assert_eq!(addrs, ["10.0.0.1:3000", "10.0.0.2:3000", "10.0.0.3:3000"]);
    assert!(
        snap.endpoints
            .iter()
            .all(|e| e.meta().labels.get("app").map(String::as_str) == Some("primary-inference-model-server"))
    );
}
