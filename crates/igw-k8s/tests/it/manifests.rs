//! `igw manifests`: the install parses back into typed objects with the important fields set,
//! and deploy/k8s/base/install.yaml is the current default output.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use igw_k8s::api::InferencePool;
use igw_k8s::manifests::{self, InstallOptions};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use serde_json::Value;

fn parse(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple(yaml).unwrap()
}

fn one<T: serde::de::DeserializeOwned>(docs: &[Value], kind: &str, name: &str) -> T {
    let v = docs
        .iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind} {name}"));
    serde_json::from_value(v.clone()).unwrap()
}

#[test]
fn default_install_has_every_piece_wired_together() {
    let o = InstallOptions::default();
    let docs = parse(&manifests::to_yaml(&o).unwrap());
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "ConfigMap",
            "Deployment",
            "Service",
            "ServiceMonitor",
            "InferencePool",
        ]
    );
    let svc: Service = one(&docs, "Service", "vllm-llama2-7b-epp");
    let ports = svc.spec.unwrap().ports.unwrap();
    assert_eq!(ports[0].port, 9002);
    assert_eq!(ports[0].app_protocol.as_deref(), Some("http2"));
    assert_eq!(ports[1].port, 9090);

    let dep: Deployment = one(&docs, "Deployment", "vllm-llama2-7b-epp");
    assert_eq!(dep.spec.replicas, Some(1));
    let pod = dep.spec.template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("vllm-llama2-7b-epp"));
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("igw:latest"));
    let args = c.args.clone().unwrap().join(" ");
    assert!(
        args.starts_with(
            "epp --pool-name vllm-llama2-7b --pool-namespace default --config-file /config/epp-config.yaml"
        ),
        "{args}"
    );
    let readiness = c.readiness_probe.as_ref().unwrap().grpc.as_ref().unwrap();
    assert_eq!((readiness.port, readiness.service.as_deref()), (9003, Some("inference-extension")));
    assert_eq!(pod.volumes.unwrap()[0].config_map.as_ref().unwrap().name, "vllm-llama2-7b-epp");
    // The Service selects the EPP pods.
    assert_eq!(svc.metadata.labels, dep.spec.template.metadata.unwrap().labels);

    let pool: InferencePool = one(&docs, "InferencePool", "vllm-llama2-7b");
    let epp = pool.spec.endpoint_picker_ref.as_ref().unwrap();
    assert_eq!((epp.name.as_str(), epp.port.as_ref().unwrap().number), ("vllm-llama2-7b-epp", 9002));
    assert_eq!(igw_k8s::convert::pool_spec(&pool).unwrap().target_ports, [8000]);

    let cm: ConfigMap = one(&docs, "ConfigMap", "vllm-llama2-7b-epp");
    let text = &cm.data.unwrap()["epp-config.yaml"];
    igw_sched::config::EndpointPickerConfig::parse(text).expect("igw epp accepts the mounted config");

    let role: Role = one(&docs, "Role", "vllm-llama2-7b-epp");
    let rules = role.rules.unwrap();
    let can_watch = |group: &str, res: &str| {
        rules.iter().any(|r| {
            r.api_groups.as_ref().is_some_and(|g| g.iter().any(|x| x == group))
                && r.resources.as_ref().is_some_and(|rs| rs.iter().any(|x| x == res))
                && r.verbs.iter().any(|v| v == "watch")
        })
    };
    assert!(can_watch("", "pods"));
    assert!(can_watch("inference.networking.k8s.io", "inferencepools"));
    assert!(can_watch("inference.networking.x-k8s.io", "inferenceobjectives"));
    assert!(can_watch("inference.networking.x-k8s.io", "inferencemodelrewrites"));
    let rb: RoleBinding = one(&docs, "RoleBinding", "vllm-llama2-7b-epp");
    assert_eq!(rb.subjects.unwrap()[0].name, "vllm-llama2-7b-epp");

    let sm = docs.iter().find(|d| d["kind"] == "ServiceMonitor").unwrap();
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "http-metrics");
    assert_eq!(sm["spec"]["selector"]["matchLabels"]["app"], "vllm-llama2-7b-epp");
}

#[test]
fn options_change_the_install() {
    let o = InstallOptions {
        pool_name: "qwen".into(),
        namespace: "llm".into(),
        selector: [("model".to_string(), "qwen".to_string())].into(),
        target_ports: vec![8000, 8001],
        replicas: 3,
        image: "registry.example/igw:1".into(),
        with_sim: true,
        sim_replicas: 2,
    };
    let docs = parse(&manifests::to_yaml(&o).unwrap());
    assert!(
        docs.iter().filter(|d| d["kind"] != "CustomResourceDefinition").all(|d| d["metadata"]["namespace"] == "llm")
    );
    let dep: Deployment = one(&docs, "Deployment", "qwen-epp");
    assert_eq!(dep.spec.replicas, Some(3));
    let sim: Deployment = one(&docs, "Deployment", "qwen-sim");
    assert_eq!(sim.spec.replicas, Some(2));
    let labels = sim.spec.template.metadata.unwrap().labels.unwrap();
    let pool: InferencePool = one(&docs, "InferencePool", "qwen");
    let spec = igw_k8s::convert::pool_spec(&pool).unwrap();
    assert!(spec.selects(&labels.into_iter().collect()), "the pool selects the simulated servers");
    assert_eq!(spec.target_ports, [8000, 8001]);
    let c = &sim.spec.template.spec.unwrap().containers[0];
    assert_eq!(c.args.clone().unwrap().join(" "), "sim --replicas 2 --port 8000 --bind-address 0.0.0.0");
    // Several EPP replicas elect a leader: the flag, the readiness service and Lease permissions.
    let epp = &dep.spec.template.spec.unwrap().containers[0];
    assert!(epp.args.clone().unwrap().contains(&"--ha-enable-leader-election".to_string()));
    assert_eq!(epp.readiness_probe.clone().unwrap().grpc.unwrap().service.as_deref(), Some("readiness"));
    let role: k8s_openapi::api::rbac::v1::Role = one(&docs, "Role", "qwen-epp");
    let lease_rule =
        role.rules.unwrap().into_iter().find(|r| r.resources.as_deref() == Some(&["leases".to_string()][..]));
    let verbs = lease_rule.expect("a rule for leases").verbs;
    assert!(["get", "create", "update"].iter().all(|v| verbs.iter().any(|x| x == v)), "{verbs:?}");
    assert_eq!(c.image.as_deref(), Some("registry.example/igw:1"));
}

#[test]
fn deploy_k8s_base_is_the_current_default_output() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/k8s/base/install.yaml");
    let want = manifests::to_yaml(&InstallOptions::default()).unwrap();
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    if std::env::var_os("IGW_UPDATE_MANIFESTS").is_some() {
        std::fs::write(&path, &want).unwrap();
        return;
    }
    assert!(
        have == want,
        "deploy/k8s/base/install.yaml is stale: run `igw manifests > deploy/k8s/base/install.yaml` \
         (or IGW_UPDATE_MANIFESTS=1 cargo test -p igw-k8s --test it manifests)"
    );
}

/// The gateway examples route to the default install's pool through a Gateway they declare.
#[test]
fn gateway_examples_route_to_the_default_pool() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/k8s/examples");
    let pool = manifests::pool(&InstallOptions::default());
    for name in ["envoy-gateway", "kgateway", "istio", "gke"] {
        let docs = parse(&std::fs::read_to_string(dir.join(format!("{name}.yaml"))).unwrap());
        let gw = docs.iter().find(|d| d["kind"] == "Gateway").unwrap_or_else(|| panic!("{name}: no Gateway"));
        let route = docs.iter().find(|d| d["kind"] == "HTTPRoute").unwrap_or_else(|| panic!("{name}: no HTTPRoute"));
        assert_eq!(route["spec"]["parentRefs"][0]["name"], gw["metadata"]["name"], "{name}");
        let backend = &route["spec"]["rules"][0]["backendRefs"][0];
        assert_eq!(backend["group"], "inference.networking.k8s.io", "{name}");
        assert_eq!(backend["kind"], "InferencePool", "{name}");
        assert_eq!(backend["name"].as_str(), pool.metadata.name.as_deref(), "{name}");
        assert_eq!(route["metadata"]["namespace"].as_str(), pool.metadata.namespace.as_deref(), "{name}");
    }
}

/// The Grafana dashboard is valid JSON and queries only metrics upstream's EPP defines (igw
/// exports them under the same names).
#[test]
fn grafana_dashboard_queries_known_metrics() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("../../deploy/k8s/grafana/igw-dashboard.json")).unwrap(),
    )
    .unwrap();
    let spec = std::fs::read_to_string(root.join("../../../shared/spec/epp-protocol.md")).unwrap();
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 6);
    for p in panels {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            let names: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("inference_"))
                .collect();
            assert!(!names.is_empty(), "{expr}");
            for n in names {
                let base = ["_bucket", "_count", "_sum"].iter().fold(n, |n, s| n.strip_suffix(s).unwrap_or(n));
                assert!(spec.contains(&format!("`{base}`")), "{base} is not an EPP metric");
            }
        }
    }
}
