//! The legacy v1alpha2 APIs (`inference.networking.x-k8s.io`): InferencePool and InferenceModel,
//! read so that old manifests keep working.
//!
//! A legacy InferenceModel's `criticality` maps to a priority: `Critical` → [`CRITICAL_PRIORITY`],
//! `Standard` or unset → 0, `Sheddable` → [`SHEDDABLE_PRIORITY`] (below zero, so shed first).

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::shared::{Condition, FailureMode, GROUP_PATTERN, KIND_PATTERN, LABEL_VALUE_PATTERN, ParentReference};

/// Priority of a `Critical` InferenceModel.
pub const CRITICAL_PRIORITY: i32 = 100;
/// Priority of a `Sheddable` InferenceModel.
pub const SHEDDABLE_PRIORITY: i32 = -1;

/// The v1alpha2 InferencePool: one target port and an inline extension reference.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "inference.networking.x-k8s.io",
    version = "v1alpha2",
    kind = "InferencePool",
    namespaced,
    status = "LegacyPoolStatus",
    annotation("controller-gen.kubebuilder.io/version", "v0.16.1")
)]
#[serde(rename_all = "camelCase")]
pub struct InferencePoolSpec {
    /// The Endpoint Picker.
    pub extension_ref: ExtensionRef,
    /// Pod labels that must all match.
    #[schemars(extend("additionalProperties" = {"maxLength": 63, "minLength": 0, "pattern": LABEL_VALUE_PATTERN, "type": "string"}))]
    pub selector: BTreeMap<String, String>,
    /// The model servers' port.
    #[schemars(range(min = 1, max = 65535))]
    pub target_port_number: i32,
}

/// The legacy inline reference to the Endpoint Picker.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionRef {
    /// FailOpen or FailClose (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "FailClose"))]
    pub failure_mode: Option<FailureMode>,
    /// API group of the referent ("" = core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253), pattern(GROUP_PATTERN), extend("default" = ""))]
    pub group: Option<String>,
    /// Kind of the referent (default Service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), pattern(KIND_PATTERN), extend("default" = "Service"))]
    pub kind: Option<String>,
    /// Name of the referent.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Port of the picker (9002 when unset and the kind is Service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port_number: Option<i32>,
}

/// Status of a legacy pool.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("default" = {"parent": [{"conditions": [{"lastTransitionTime": "1970-01-01T00:00:00Z", "message": "Waiting for controller", "reason": "Pending", "status": "Unknown", "type": "Accepted"}], "parentRef": {"kind": "Status", "name": "default"}}]}))]
pub struct LegacyPoolStatus {
    /// One entry per parent (JSON key `parent`, singular, as upstream).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub parent: Vec<LegacyParentStatus>,
}

/// A legacy pool's status as seen by one parent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LegacyParentStatus {
    /// Conditions.
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
    /// The parent.
    pub parent_ref: ParentReference,
}

/// The legacy model API: a model name served by a pool, its criticality and traffic split.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "inference.networking.x-k8s.io",
    version = "v1alpha2",
    kind = "InferenceModel",
    namespaced,
    status = "InferenceModelStatus",
    annotation("controller-gen.kubebuilder.io/version", "v0.16.1"),
    printcolumn = r#"{"jsonPath": ".spec.modelName", "name": "Model Name", "type": "string"}"#,
    printcolumn = r#"{"jsonPath": ".spec.poolRef.name", "name": "Inference Pool", "type": "string"}"#,
    printcolumn = r#"{"jsonPath": ".spec.criticality", "name": "Criticality", "type": "string"}"#,
    printcolumn = r#"{"jsonPath": ".metadata.creationTimestamp", "name": "Age", "type": "date"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct InferenceModelSpec {
    /// Critical, Standard or Sheddable (unset = Standard).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub criticality: Option<Criticality>,
    /// The model name clients send (immutable).
    #[schemars(
        length(max = 256),
        extend("x-kubernetes-validations" = [{"message": "modelName is immutable", "rule": "self == oldSelf"}])
    )]
    pub model_name: String,
    /// The pool serving the model.
    pub pool_ref: LegacyPoolRef,
    /// Weighted targets; unset means the model name itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 10),
        extend("x-kubernetes-validations" = [{"message": "Weights should be set for all models, or none of the models.", "rule": "self.all(model, has(model.weight)) || self.all(model, !has(model.weight))"}])
    )]
    pub target_models: Vec<LegacyTargetModel>,
}

/// How important a legacy model's requests are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Criticality {
    /// Shed last.
    Critical,
    /// The default.
    Standard,
    /// Shed first.
    Sheddable,
}

impl Criticality {
    /// The priority this criticality maps to (see the module documentation).
    pub fn priority(self) -> i32 {
        match self {
            Criticality::Critical => CRITICAL_PRIORITY,
            Criticality::Standard => 0,
            Criticality::Sheddable => SHEDDABLE_PRIORITY,
        }
    }
}

/// A legacy reference to a pool (default group `inference.networking.x-k8s.io`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LegacyPoolRef {
    /// API group (default `inference.networking.x-k8s.io`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253), pattern(GROUP_PATTERN), extend("default" = "inference.networking.x-k8s.io"))]
    pub group: Option<String>,
    /// Kind (default InferencePool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), pattern(KIND_PATTERN), extend("default" = "InferencePool"))]
    pub kind: Option<String>,
    /// Pool name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A weighted target model of a legacy InferenceModel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LegacyTargetModel {
    /// Model name sent to the server.
    #[schemars(length(max = 253))]
    pub name: String,
    /// Relative weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub weight: Option<i32>,
}

/// Status of a legacy InferenceModel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct InferenceModelStatus {
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
