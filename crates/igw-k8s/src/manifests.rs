//! `igw manifests`: a complete install built from typed objects (k8s-openapi and this crate's
//! API types), so every field is checked by the compiler and the tests parse it back.
//!
//! The install: the CRDs, the InferencePool, the EPP's ServiceAccount, Role and RoleBinding,
//! the EndpointPickerConfig ConfigMap, the EPP Deployment and Service (9002 ext_proc with
//! `appProtocol: http2`, 9090 metrics), a ServiceMonitor, and optionally simulated model
//! servers (`igw sim`).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource, GRPCAction, ObjectFieldSelector,
    PodSpec, PodTemplateSpec, Probe, Service, ServiceAccount, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector as MetaSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

use crate::api::{EndpointPickerRef, InferencePool, InferencePoolSpec, LabelSelector};
use crate::shared::Port;

/// The EndpointPickerConfig the install mounts (upstream's default scorers and weights).
pub const DEFAULT_EPP_CONFIG: &str = "apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
    weight: 2
  - pluginRef: kv-cache-utilization-scorer
    weight: 2
  - pluginRef: prefix-cache-scorer
    weight: 3
";

/// Where the ConfigMap is mounted in the EPP container.
pub const CONFIG_DIR: &str = "/config";
/// The config file name inside the ConfigMap.
pub const CONFIG_FILE: &str = "epp-config.yaml";

/// What to install.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstallOptions {
    /// InferencePool name; the EPP objects are named `<pool>-epp`.
    pub pool_name: String,
    /// Namespace of everything.
    pub namespace: String,
    /// Pod selector of the model servers.
    pub selector: BTreeMap<String, String>,
    /// Model-server ports (1-8).
    pub target_ports: Vec<u16>,
    /// EPP replicas.
    pub replicas: i32,
    /// Container image with the `igw` binary.
    pub image: String,
    /// Also deploy simulated model servers (`igw sim`) matching the selector.
    pub with_sim: bool,
    /// How many simulated model-server pods.
    pub sim_replicas: i32,
}

impl Default for InstallOptions {
    fn default() -> Self {
        InstallOptions {
            pool_name: "vllm-llama2-7b".into(),
            namespace: "default".into(),
            selector: [("app".to_string(), "vllm-llama2-7b".to_string())].into(),
            target_ports: vec![8000],
            replicas: 1,
            image: "igw:latest".into(),
            with_sim: false,
            sim_replicas: 3,
        }
    }
}

impl InstallOptions {
    fn epp_name(&self) -> String {
        format!("{}-epp", self.pool_name)
    }

    fn meta(&self, name: &str, labels: &BTreeMap<String, String>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some(self.namespace.clone()),
            labels: (!labels.is_empty()).then(|| labels.clone()),
            ..ObjectMeta::default()
        }
    }

    fn epp_labels(&self) -> BTreeMap<String, String> {
        [("app".to_string(), self.epp_name())].into()
    }
}

/// A Prometheus Operator ServiceMonitor (not in k8s-openapi, so declared here).
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMonitor {
    /// `monitoring.coreos.com/v1`.
    pub api_version: String,
    /// `ServiceMonitor`.
    pub kind: String,
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Spec.
    pub spec: ServiceMonitorSpec,
}

/// Spec of a ServiceMonitor.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ServiceMonitorSpec {
    /// Which Services to scrape.
    pub selector: MetaSelector,
    /// Which of their ports, how often.
    pub endpoints: Vec<MonitorEndpoint>,
}

/// One scraped port of a ServiceMonitor.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct MonitorEndpoint {
    /// Service port name.
    pub port: String,
    /// Path.
    pub path: String,
    /// Scrape interval.
    pub interval: String,
}

fn port(name: &str, n: u16) -> ContainerPort {
    ContainerPort { name: Some(name.into()), container_port: i32::from(n), ..ContainerPort::default() }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: path.into(), ..ObjectFieldSelector::default() }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn grpc_probe(service: &str, period: i32) -> Probe {
    Probe {
        grpc: Some(GRPCAction { port: 9003, service: Some(service.into()), ..GRPCAction::default() }),
        period_seconds: Some(period),
        initial_delay_seconds: Some(1),
        ..Probe::default()
    }
}

/// The InferencePool of the install.
pub fn pool(o: &InstallOptions) -> InferencePool {
    let mut p = InferencePool::new(
        &o.pool_name,
        InferencePoolSpec {
            app_protocol: None,
            endpoint_picker_ref: Some(EndpointPickerRef {
                name: o.epp_name(),
                port: Some(Port { number: 9002 }),
                ..EndpointPickerRef::default()
            }),
            selector: LabelSelector { match_labels: o.selector.clone() },
            target_ports: o.target_ports.iter().map(|p| Port { number: i32::from(*p) }).collect(),
        },
    );
    p.metadata.namespace = Some(o.namespace.clone());
    p
}

/// The EPP's RBAC: read pods and the GIE objects in its namespace.
pub fn rbac(o: &InstallOptions) -> (ServiceAccount, Role, RoleBinding) {
    let name = o.epp_name();
    let labels = o.epp_labels();
    let read = |group: &str, resources: &[&str]| PolicyRule {
        api_groups: Some(vec![group.into()]),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        verbs: vec!["get".into(), "list".into(), "watch".into()],
        ..PolicyRule::default()
    };
    let sa = ServiceAccount { metadata: o.meta(&name, &labels), ..ServiceAccount::default() };
    let mut rules = vec![
        read("", &["pods"]),
        read("inference.networking.k8s.io", &["inferencepools"]),
        read("inference.networking.x-k8s.io", &["inferenceobjectives", "inferencemodelrewrites"]),
    ];
    if o.replicas > 1 {
        // Leader election (`--ha-enable-leader-election`) holds a Lease.
        rules.push(PolicyRule {
            api_groups: Some(vec!["coordination.k8s.io".into()]),
            resources: Some(vec!["leases".into()]),
            verbs: vec!["get".into(), "create".into(), "update".into()],
            ..PolicyRule::default()
        });
    }
    let role = Role { metadata: o.meta(&name, &labels), rules: Some(rules) };
    let binding = RoleBinding {
        metadata: o.meta(&name, &labels),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name,
            namespace: Some(o.namespace.clone()),
            ..Subject::default()
        }]),
    };
    (sa, role, binding)
}

/// The EndpointPickerConfig ConfigMap.
pub fn config_map(o: &InstallOptions) -> ConfigMap {
    ConfigMap {
        metadata: o.meta(&o.epp_name(), &o.epp_labels()),
        data: Some([(CONFIG_FILE.to_string(), DEFAULT_EPP_CONFIG.to_string())].into()),
        ..ConfigMap::default()
    }
}

/// The EPP Deployment.
pub fn epp_deployment(o: &InstallOptions) -> Deployment {
    let name = o.epp_name();
    let labels = o.epp_labels();
    let config_path = format!("{CONFIG_DIR}/{CONFIG_FILE}");
    let mut args = vec![
        "epp",
        "--pool-name",
        &o.pool_name,
        "--pool-namespace",
        &o.namespace,
        "--config-file",
        &config_path,
        "--grpc-port",
        "9002",
        "--grpc-health-port",
        "9003",
        "--metrics-port",
        "9090",
    ];
    // Several replicas elect a leader; readiness then follows leadership (upstream's chart probes
    // `readiness` in that case, `inference-extension` for a single replica).
    let ha = o.replicas > 1;
    if ha {
        args.push("--ha-enable-leader-election");
    }
    let container = Container {
        name: "epp".into(),
        image: Some(o.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(args.iter().map(|a| a.to_string()).collect()),
        ports: Some(vec![port("grpc", 9002), port("grpc-health", 9003), port("metrics", 9090)]),
        env: Some(vec![field_env("NAMESPACE", "metadata.namespace"), field_env("POD_NAME", "metadata.name")]),
        liveness_probe: Some(grpc_probe("liveness", 10)),
        readiness_probe: Some(grpc_probe(if ha { "readiness" } else { "inference-extension" }, 2)),
        volume_mounts: Some(vec![VolumeMount {
            name: "config".into(),
            mount_path: CONFIG_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };
    Deployment {
        metadata: o.meta(&name, &labels),
        spec: DeploymentSpec {
            replicas: Some(o.replicas),
            selector: MetaSelector { match_labels: Some(labels.clone()), ..MetaSelector::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels), ..ObjectMeta::default() }),
                spec: Some(PodSpec {
                    service_account_name: Some(name.clone()),
                    termination_grace_period_seconds: Some(130),
                    containers: vec![container],
                    volumes: Some(vec![Volume {
                        name: "config".into(),
                        config_map: Some(ConfigMapVolumeSource {
                            name: name.clone(),
                            ..ConfigMapVolumeSource::default()
                        }),
                        ..Volume::default()
                    }]),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        status: None,
    }
}

/// The EPP Service: 9002 ext_proc (`appProtocol: http2`) and 9090 metrics.
pub fn epp_service(o: &InstallOptions) -> Service {
    let labels = o.epp_labels();
    let sp = |name: &str, n: i32, proto: Option<&str>| ServicePort {
        name: Some(name.into()),
        port: n,
        target_port: Some(IntOrString::Int(n)),
        protocol: Some("TCP".into()),
        app_protocol: proto.map(Into::into),
        ..ServicePort::default()
    };
    Service {
        metadata: o.meta(&o.epp_name(), &labels),
        spec: Some(ServiceSpec {
            selector: Some(labels),
            ports: Some(vec![sp("grpc-ext-proc", 9002, Some("http2")), sp("http-metrics", 9090, None)]),
            type_: Some("ClusterIP".into()),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The ServiceMonitor scraping the EPP's metrics port.
pub fn service_monitor(o: &InstallOptions) -> ServiceMonitor {
    let labels = o.epp_labels();
    ServiceMonitor {
        api_version: "monitoring.coreos.com/v1".into(),
        kind: "ServiceMonitor".into(),
        metadata: o.meta(&o.epp_name(), &labels),
        spec: ServiceMonitorSpec {
            selector: MetaSelector { match_labels: Some(labels), ..MetaSelector::default() },
            endpoints: vec![MonitorEndpoint {
                port: "http-metrics".into(),
                path: "/metrics".into(),
                interval: "15s".into(),
            }],
        },
    }
}

/// Simulated model servers: `igw sim` pods carrying the pool's selector labels, one replica per
/// target port.
pub fn sim_deployment(o: &InstallOptions) -> Deployment {
    let name = format!("{}-sim", o.pool_name);
    let first = o.target_ports.first().copied().unwrap_or(8000);
    let args = [
        "sim",
        "--replicas",
        &o.target_ports.len().to_string(),
        "--port",
        &first.to_string(),
        "--bind-address",
        "0.0.0.0",
    ];
    let container = Container {
        name: "sim".into(),
        image: Some(o.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(args.iter().map(|a| a.to_string()).collect()),
        ports: Some(o.target_ports.iter().enumerate().map(|(i, p)| port(&format!("http-{i}"), *p)).collect::<Vec<_>>()),
        ..Container::default()
    };
    Deployment {
        metadata: o.meta(&name, &o.selector),
        spec: DeploymentSpec {
            replicas: Some(o.sim_replicas),
            selector: MetaSelector { match_labels: Some(o.selector.clone()), ..MetaSelector::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(o.selector.clone()), ..ObjectMeta::default() }),
                spec: Some(PodSpec { containers: vec![container], ..PodSpec::default() }),
            },
            ..DeploymentSpec::default()
        },
        status: None,
    }
}

/// Every object of the install, in apply order, as JSON.
pub fn objects(o: &InstallOptions) -> Result<Vec<serde_json::Value>, serde_json::Error> {
    let mut out = Vec::new();
    for crd in crate::crds::current() {
        out.push(serde_json::to_value(crd)?);
    }
    let (sa, role, binding) = rbac(o);
    out.push(serde_json::to_value(sa)?);
    out.push(serde_json::to_value(role)?);
    out.push(serde_json::to_value(binding)?);
    out.push(serde_json::to_value(config_map(o))?);
    out.push(serde_json::to_value(epp_deployment(o))?);
    out.push(serde_json::to_value(epp_service(o))?);
    out.push(serde_json::to_value(service_monitor(o))?);
    out.push(serde_json::to_value(pool(o))?);
    if o.with_sim {
        out.push(serde_json::to_value(sim_deployment(o))?);
    }
    Ok(out)
}

/// Errors rendering the install.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// An object did not serialize to JSON.
    #[error("serializing an object: {0}")]
    Json(#[from] serde_json::Error),
    /// The YAML writer failed.
    #[error("writing YAML: {0}")]
    Yaml(#[from] serde_saphyr::ser_error::Error),
}

/// The install as multi-document YAML.
pub fn to_yaml(o: &InstallOptions) -> Result<String, RenderError> {
    let mut out = String::from("# Generated by `igw manifests`; do not edit (a test keeps deploy/k8s/ current).\n");
    for obj in objects(o)? {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&obj)?);
    }
    Ok(out)
}
