//! The async layer over synthetic watcher streams: Init/InitApply/InitDone become one restart,
//! malformed CRD objects are skipped without stopping the watch, and `synced` follows.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use futures::StreamExt;
use igw_core::Datastore;
use igw_k8s::reconcile::{Reconciler, Target};
use igw_k8s::watch::{Msg, drive};
use k8s_openapi::api::core::v1::Pod;
use kube::core::DeserializeGuard;
use kube::runtime::watcher::Event;
use serde_json::json;

fn pool(ports: serde_json::Value) -> DeserializeGuard<igw_k8s::api::InferencePool> {
    serde_json::from_value(json!({
        "apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
        "metadata": {"name": "p", "namespace": "ns"},
        "spec": {"selector": {"matchLabels": {"app": "m"}}, "targetPorts": ports}
    }))
    .unwrap()
}

fn pod(name: &str, ip: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "ns", "labels": {"app": "m"}},
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}
    }))
    .unwrap()
}

#[tokio::test]
async fn watch_events_reach_the_datastore_and_malformed_objects_are_skipped() {
    let ds = Arc::new(Datastore::new());
    let r = Reconciler::new(ds.clone(), Target::Pool { name: "p".into(), namespace: "ns".into() });
    let malformed = pool(json!([{"number": "not a number"}]));
    assert!(malformed.0.is_err());
    let msgs = vec![
        Msg::Pool(Ok(Event::Init)),
        Msg::Pool(Ok(Event::InitApply(malformed))),
        Msg::Pool(Ok(Event::InitApply(pool(json!([{"number": 8000}]))))),
        Msg::Pool(Ok(Event::InitDone)),
        Msg::Pod(Box::new(Ok(Event::Init))),
        Msg::Pod(Box::new(Ok(Event::InitApply(pod("a", "10.0.0.1"))))),
        Msg::Pod(Box::new(Ok(Event::InitDone))),
        Msg::Pool(Ok(Event::Apply(pool(json!("wrong type"))))),
        Msg::Pod(Box::new(Ok(Event::Apply(pod("b", "10.0.0.2"))))),
    ];
    let (tx, mut rx) = tokio::sync::watch::channel(false);
    drive(r, futures::stream::iter(msgs).boxed(), tx).await;
    assert!(*rx.borrow_and_update(), "synced after pool and pods were listed");
    let addrs: Vec<String> = ds.snapshot().endpoints.iter().map(|e| e.address().to_string()).collect();
    assert_eq!(addrs, ["10.0.0.1:8000", "10.0.0.2:8000"]);
}

#[tokio::test]
async fn not_synced_until_the_pool_exists() {
    let ds = Arc::new(Datastore::new());
    let r = Reconciler::new(ds.clone(), Target::Pool { name: "p".into(), namespace: "ns".into() });
    let msgs = vec![
        Msg::Pool(Ok(Event::Init)),
        Msg::Pool(Ok(Event::InitDone)),
        Msg::Pod(Box::new(Ok(Event::Init))),
        Msg::Pod(Box::new(Ok(Event::InitApply(pod("a", "10.0.0.1"))))),
        Msg::Pod(Box::new(Ok(Event::InitDone))),
    ];
    let (tx, rx) = tokio::sync::watch::channel(false);
    drive(r, futures::stream::iter(msgs).boxed(), tx).await;
    assert!(!*rx.borrow());
    assert!(ds.snapshot().endpoints.is_empty());
}

#[test]
fn flags_choose_the_target() {
    use igw_k8s::watch::DiscoveryConfig;
    let c = DiscoveryConfig { pool_name: "p".into(), pool_namespace: "ns".into(), ..DiscoveryConfig::default() };
    assert_eq!(c.target().unwrap(), Target::Pool { name: "p".into(), namespace: "ns".into() });
    let c = DiscoveryConfig { pool_group: "inference.networking.x-k8s.io".into(), ..c };
    assert!(matches!(c.target().unwrap(), Target::LegacyPool { .. }));
    let c = DiscoveryConfig { pool_group: "example.com".into(), ..c };
    assert!(c.target().is_err());
    let c = DiscoveryConfig {
        endpoint_selector: "app=vllm".into(),
        endpoint_target_ports: vec![8000],
        pool_namespace: "ns".into(),
        ..DiscoveryConfig::default()
    };
    assert!(matches!(c.target().unwrap(), Target::Selector(_)));
}

/// `start_with` against a tower-test mock API server: the CRD probes, the list calls (the pool
/// by field selector) and the watches it makes, ending synced with the listed pod as endpoint.
#[tokio::test]
async fn start_with_lists_and_watches_through_a_kube_client() {
    use http::{Request, Response};
    use kube::client::Body;
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "ns");
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = seen.clone();
    let server = tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let uri = req.uri().to_string();
            log.lock().unwrap().push(uri.clone());
            let ok =
                |v: serde_json::Value| Response::builder().body(Body::from(serde_json::to_vec(&v).unwrap())).unwrap();
            let reply = if uri.contains("watch=true") {
                // An empty watch: the stream ends and the watcher would reconnect later.
                Response::builder().body(Body::empty()).unwrap()
            } else if uri.contains("inferenceobjectives") || uri.contains("inferencemodelrewrites") {
                Response::builder()
                    .status(404)
                    .body(Body::from(
                        serde_json::to_vec(&json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "NotFound", "code": 404})).unwrap(),
                    ))
                    .unwrap()
            } else if uri.contains("/inferencepools") {
                ok(
                    json!({"apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePoolList", "metadata": {"resourceVersion": "5"},
                    "items": [{"apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool", "metadata": {"name": "p", "namespace": "ns"},
                        "spec": {"selector": {"matchLabels": {"app": "m"}}, "targetPorts": [{"number": 8000}]}}]}),
                )
            } else if uri.contains("/pods") {
                ok(json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "5"},
                    "items": [serde_json::to_value(pod("a", "10.0.0.1")).unwrap()]}))
            } else {
                Response::builder().status(500).body(Body::empty()).unwrap()
            };
            send.send_response(reply);
        }
    });
    let ds = Arc::new(Datastore::new());
    let mut d =
        igw_k8s::watch::start_with(client, ds.clone(), Target::Pool { name: "p".into(), namespace: "ns".into() })
            .await
            .unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), d.synced.wait_for(|s| *s)).await.unwrap().unwrap();
    let addrs: Vec<String> = ds.snapshot().endpoints.iter().map(|e| e.address().to_string()).collect();
    assert_eq!(addrs, ["10.0.0.1:8000"]);
    d.task.abort();
    server.abort();
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter().any(|u| u.starts_with("/apis/inference.networking.k8s.io/v1/namespaces/ns/inferencepools?")
            && u.contains("fieldSelector=metadata.name%3Dp")),
        "{seen:?}"
    );
    assert!(seen.iter().any(|u| u.starts_with("/api/v1/namespaces/ns/pods?")), "{seen:?}");
    assert!(seen.iter().any(|u| u.contains("inferenceobjectives") && u.contains("limit=1")), "{seen:?}");
}
