//! Types shared by several CRDs: ports, references, conditions and parent statuses.
//!
//! Validation attributes mirror upstream's kubebuilder markers so the generated CRDs validate
//! the same way (see `crds` for the comparison against upstream's files).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Pattern of a Kubernetes API group (empty allowed).
pub const GROUP_PATTERN: &str = r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// Pattern of a Kubernetes kind.
pub const KIND_PATTERN: &str = r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$";
/// Pattern of a namespace (an RFC 1123 label).
pub const NAMESPACE_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// Pattern of a controller name (`DOMAIN/PATH`).
pub const CONTROLLER_NAME_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/[A-Za-z0-9\/\-._~%!$&'()*+,;=:]+$";
/// Pattern of a label value.
pub const LABEL_VALUE_PATTERN: &str = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$";
/// The group of the GA InferencePool.
pub const POOL_GROUP: &str = "inference.networking.k8s.io";
/// The group of the experimental and legacy APIs.
pub const X_GROUP: &str = "inference.networking.x-k8s.io";
/// Pod annotation listing which of the pool's target ports are active (comma-separated).
pub const ACTIVE_PORTS_ANNOTATION: &str = "inference.networking.k8s.io/active-ports";

/// A network port of the model servers (1-65535).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Port {
    /// The port number.
    #[schemars(range(min = 1, max = 65535))]
    pub number: i32,
}

/// How the parent gateway behaves when the Endpoint Picker does not answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum FailureMode {
    /// Forward to an endpoint of the gateway's own choosing.
    FailOpen,
    /// Drop the request (the default).
    #[default]
    FailClose,
}

/// Status of one condition (metav1.Condition).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// When the condition last changed (RFC 3339).
    #[schemars(extend("format" = "date-time"))]
    pub last_transition_time: String,
    /// Human-readable details.
    #[schemars(length(max = 32768))]
    pub message: String,
    /// The generation the condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub observed_generation: Option<i64>,
    /// Machine-readable reason, CamelCase.
    #[schemars(length(min = 1, max = 1024), pattern(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"))]
    pub reason: String,
    /// True, False or Unknown.
    pub status: ConditionStatus,
    /// Condition type, CamelCase.
    #[serde(rename = "type")]
    #[schemars(
        length(max = 316),
        pattern(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$")
    )]
    pub type_: String,
}

/// The status of a condition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// Not known yet.
    #[default]
    Unknown,
}

/// A reference to a parent (usually a Gateway) in a pool's status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ParentReference {
    /// API group of the parent (default `gateway.networking.k8s.io`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 0, max = 253), pattern(GROUP_PATTERN), extend("default" = "gateway.networking.k8s.io"))]
    pub group: Option<String>,
    /// Kind of the parent (default `Gateway`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), pattern(KIND_PATTERN), extend("default" = "Gateway"))]
    pub kind: Option<String>,
    /// Name of the parent.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the parent; the pool's namespace when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), pattern(NAMESPACE_PATTERN))]
    pub namespace: Option<String>,
}

/// A pool's status as seen by one parent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParentStatus {
    /// Conditions (Accepted, ResolvedRefs, Exported).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The controller that wrote this entry (`DOMAIN/PATH`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), pattern(CONTROLLER_NAME_PATTERN))]
    pub controller_name: Option<String>,
    /// The parent.
    pub parent_ref: ParentReference,
}
