//! The current APIs: InferencePool (`inference.networking.k8s.io/v1`), InferenceObjective and
//! InferenceModelRewrite (`inference.networking.x-k8s.io/v1alpha2`), InferencePoolImport
//! (`inference.networking.x-k8s.io/v1alpha1`).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::shared::{
    CONTROLLER_NAME_PATTERN, Condition, FailureMode, GROUP_PATTERN, KIND_PATTERN, LABEL_VALUE_PATTERN, ParentStatus,
    Port,
};

/// Which pods and ports make up a pool of model servers, and which Endpoint Picker serves it.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "inference.networking.k8s.io",
    version = "v1",
    kind = "InferencePool",
    namespaced,
    shortname = "infpool",
    status = "InferencePoolStatus",
    annotation(
        "api-approved.kubernetes.io",
        "https://github.com/kubernetes-sigs/gateway-api-inference-extension/pull/1173"
    ),
    annotation("inference.networking.k8s.io/bundle-version", "main-dev")
)]
#[serde(rename_all = "camelCase")]
pub struct InferencePoolSpec {
    /// Application protocol of every target port: `http` (default) or `kubernetes.io/h2c`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "http"))]
    pub app_protocol: Option<AppProtocol>,
    /// The Endpoint Picker serving this pool (optional since v1.6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_picker_ref: Option<EndpointPickerRef>,
    /// Pods (same namespace) whose labels match are members of the pool.
    pub selector: LabelSelector,
    /// Ports of each pod; every port is a separate endpoint (`podIP:port`).
    #[schemars(
        length(min = 1, max = 8),
        extend(
            "x-kubernetes-list-type" = "atomic",
            "x-kubernetes-validations" = [{"message": "port number must be unique", "rule": "self.all(p1, self.exists_one(p2, p1.number==p2.number))"}]
        )
    )]
    pub target_ports: Vec<Port>,
}

/// Application protocol of a pool's target ports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AppProtocol {
    /// HTTP/1.1.
    #[default]
    #[serde(rename = "http")]
    Http,
    /// HTTP/2 over cleartext.
    #[serde(rename = "kubernetes.io/h2c")]
    H2c,
}

/// A plain label selector (like a Service's): every label must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// Required labels.
    #[schemars(extend(
        "minProperties" = 1,
        "maxProperties" = 64,
        "additionalProperties" = {"maxLength": 63, "minLength": 0, "pattern": LABEL_VALUE_PATTERN, "type": "string"}
    ))]
    pub match_labels: BTreeMap<String, String>,
}

/// A reference to the Endpoint Picker (usually a Service).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{"message": "port is required when kind is 'Service' or unspecified (defaults to 'Service')", "rule": "self.kind != 'Service' || has(self.port)"}]))]
pub struct EndpointPickerRef {
    /// FailOpen or FailClose (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "FailClose"))]
    pub failure_mode: Option<FailureMode>,
    /// API group of the referent ("" = core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 0, max = 253), pattern(GROUP_PATTERN), extend("default" = ""))]
    pub group: Option<String>,
    /// Kind of the referent (default Service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), pattern(KIND_PATTERN), extend("default" = "Service"))]
    pub kind: Option<String>,
    /// Name of the referent.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The service port of the picker (required for a Service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Port>,
}

/// Status of an InferencePool.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct InferencePoolStatus {
    /// One entry per parent (Gateway) that uses the pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), extend("x-kubernetes-list-type" = "atomic"))]
    pub parents: Vec<ParentStatus>,
}

/// A reference from an objective or rewrite to its pool (same namespace).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PoolObjectReference {
    /// API group of the pool (default `inference.networking.k8s.io`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253), pattern(GROUP_PATTERN), extend("default" = "inference.networking.k8s.io"))]
    pub group: Option<String>,
    /// Kind of the pool (default InferencePool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), pattern(KIND_PATTERN), extend("default" = "InferencePool"))]
    pub kind: Option<String>,
    /// Name of the pool.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A named priority for requests to a pool; requests select it with the
/// `x-gateway-inference-objective` header.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "inference.networking.x-k8s.io",
    version = "v1alpha2",
    kind = "InferenceObjective",
    namespaced,
    status = "ObjectiveStatus",
    annotation("inference.networking.k8s.io/bundle-version", "main-dev"),
    printcolumn = r#"{"jsonPath": ".spec.poolRef.name", "name": "Inference Pool", "type": "string"}"#,
    printcolumn = r#"{"jsonPath": ".spec.priority", "name": "Priority", "type": "string"}"#,
    printcolumn = r#"{"jsonPath": ".metadata.creationTimestamp", "name": "Age", "type": "date"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct InferenceObjectiveSpec {
    /// The pool this objective applies to.
    pub pool_ref: PoolObjectReference,
    /// Higher is more important; below zero is sheddable; unset means 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
}

/// Status of an InferenceObjective.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ObjectiveStatus {
    /// Conditions (Accepted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 8),
        extend(
            "x-kubernetes-list-type" = "map",
            "x-kubernetes-list-map-keys" = ["type"],
            "default" = [{"lastTransitionTime": "1970-01-01T00:00:00Z", "message": "Waiting for controller", "reason": "Pending", "status": "Unknown", "type": "Ready"}]
        )
    )]
    pub conditions: Vec<Condition>,
}

/// Rewrites (and splits) the model name of requests to a pool.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "inference.networking.x-k8s.io",
    version = "v1alpha2",
    kind = "InferenceModelRewrite",
    namespaced,
    status = "ModelRewriteStatus",
    annotation("inference.networking.k8s.io/bundle-version", "main-dev"),
    printcolumn = r#"{"jsonPath": ".spec.poolRef.name", "name": "Inference Pool", "type": "string"}"#,
    printcolumn = r#"{"jsonPath": ".metadata.creationTimestamp", "name": "Age", "type": "date"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct InferenceModelRewriteSpec {
    /// The pool this rewrite applies to.
    pub pool_ref: PoolObjectReference,
    /// Rules in order.
    pub rules: Vec<RewriteRule>,
}

/// One rule: which models it matches and where it sends them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RewriteRule {
    /// Matches (OR); empty matches every model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<Match>,
    /// Weighted targets (at least one; checked when converting).
    #[serde(default)]
    #[schemars(length(min = 1), transform = no_default)]
    pub targets: Vec<TargetModel>,
}

/// Removes the `default` that `#[serde(default)]` makes schemars write (upstream has none).
fn no_default(schema: &mut schemars::Schema) {
    schema.remove("default");
}

/// A match on the request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Match {
    /// The model-name match.
    pub model: ModelMatch,
}

/// A match on the model name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ModelMatch {
    /// Match type (only Exact).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "Exact"))]
    pub type_: Option<MatchType>,
    /// The model name.
    #[schemars(length(min = 1))]
    pub value: String,
}

/// How a model name is matched.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum MatchType {
    /// Exact string equality.
    #[default]
    Exact,
}

/// A weighted rewrite target.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetModel {
    /// The model name sent to the model server.
    pub model_rewrite: String,
    /// Relative weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub weight: Option<i32>,
}

/// Status of an InferenceModelRewrite.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ModelRewriteStatus {
    /// Conditions (Accepted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 8),
        extend(
            "x-kubernetes-list-type" = "map",
            "x-kubernetes-list-map-keys" = ["type"],
            "default" = [{"lastTransitionTime": "1970-01-01T00:00:00Z", "message": "Waiting for controller", "reason": "Pending", "status": "Unknown", "type": "Accepted"}]
        )
    )]
    pub conditions: Vec<Condition>,
}

/// An InferencePool imported from other clusters (status only; written by multi-cluster
/// controllers). It has no spec, so it is declared by hand rather than with `CustomResource`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InferencePoolImport {
    /// Object metadata.
    #[schemars(skip)]
    pub metadata: ObjectMeta,
    /// Which controllers import the pool and from where.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<InferencePoolImportStatus>,
}

impl k8s_openapi::Resource for InferencePoolImport {
    const API_VERSION: &'static str = "inference.networking.x-k8s.io/v1alpha1";
    const GROUP: &'static str = "inference.networking.x-k8s.io";
    const KIND: &'static str = "InferencePoolImport";
    const VERSION: &'static str = "v1alpha1";
    const URL_PATH_SEGMENT: &'static str = "inferencepoolimports";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for InferencePoolImport {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Status of an InferencePoolImport.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct InferencePoolImportStatus {
    /// One entry per importing controller.
    #[schemars(length(max = 8), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub controllers: Vec<ImportController>,
}

/// One controller importing a pool.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImportController {
    /// Conditions (Accepted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Clusters exporting the pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exporting_clusters: Vec<ExportingCluster>,
    /// The controller (`DOMAIN/PATH`).
    #[schemars(length(min = 1, max = 253), pattern(CONTROLLER_NAME_PATTERN))]
    pub name: String,
    /// Parents of the imported pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub parents: Vec<ParentStatus>,
}

/// A cluster exporting a pool.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ExportingCluster {
    /// Cluster name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}
