//! Flow-control configuration: the `flowControl` section of the EndpointPickerConfig as written in YAML
//! ([`FlowControlConfig`], [`PriorityBandConfig`]) and the resolved form the controller runs on ([`FlowConfig`]).
//!
//! See `../shared/spec/epp-protocol.md` §4.2 and `../shared/spec/scheduler.md` §4.3.

use std::collections::BTreeMap;
use std::time::Duration;

use igw_core::Priority;
use serde::Deserialize;
use thiserror::Error;

use super::quantity::{GoDuration, Quantity};

/// Upstream fairness policy: among the band's flows, serve the one whose head is best by the ordering policy.
pub const GLOBAL_STRICT_FAIRNESS: &str = "global-strict-fairness-policy";
/// Upstream fairness policy: a per-band cursor over the sorted fairness ids, skipping empty flows.
pub const ROUND_ROBIN_FAIRNESS: &str = "round-robin-fairness-policy";
/// igw fairness policy: token-weighted fair share with a virtual token counter per flow (VTC).
pub const VTC_FAIRNESS: &str = "vtc-fairness-policy";
/// Upstream ordering policy: first come, first served.
pub const FCFS_ORDERING: &str = "fcfs-ordering-policy";
/// Upstream ordering policy: earliest deadline first, deadline = enqueue time + effective TTL.
pub const EDF_ORDERING: &str = "edf-ordering-policy";
/// Upstream ordering policy: deadline = arrival + `x-slo-ttft-ms`.
pub const SLO_DEADLINE_ORDERING: &str = "slo-deadline-ordering-policy";
/// Upstream usage limit policy: one ceiling (default 1.0) for every band.
pub const STATIC_USAGE_LIMIT: &str = "static-usage-limit-policy";
/// Usage limit policy (from llm-d): ceilings falling linearly with the band's rank.
pub const PRIORITY_HOLDBACK_USAGE_LIMIT: &str = "priority-holdback-policy";
/// Upstream's default per-band byte cap (1 GB of request bodies).
pub const DEFAULT_BAND_MAX_BYTES: u64 = 1_000_000_000;

/// A configuration that cannot be used.
#[derive(Clone, Debug, PartialEq, Error)]
pub enum FlowConfigError {
    /// `fairnessPolicyRef` names no known fairness policy.
    #[error("unknown fairness policy {0:?}")]
    UnknownFairnessPolicy(String),
    /// `orderingPolicyRef` names no known ordering policy.
    #[error("unknown ordering policy {0:?}")]
    UnknownOrderingPolicy(String),
    /// `usageLimitPolicyPluginRef` names no known usage limit policy.
    #[error("unknown usage limit policy {0:?}")]
    UnknownUsageLimitPolicy(String),
    /// An entry of `priorityBands` has no `priority`.
    #[error("priorityBands[{0}] has no priority")]
    MissingBandPriority(usize),
    /// Two `priorityBands` entries have the same priority.
    #[error("priority band {0} is listed twice")]
    DuplicateBand(Priority),
    /// A usage limit ceiling is not a finite non-negative number, or the holdback range is inverted.
    #[error("invalid usage limit: {0}")]
    InvalidUsageLimit(String),
    /// The output-token weight is not a finite non-negative number.
    #[error("invalid output token weight {0}")]
    InvalidTokenWeight(f64),
}

/// The `flowControl` section as written (upstream schema; unknown fields are an error).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FlowControlConfig {
    /// Global cap on queued request-body bytes; omitted or 0 = unlimited.
    #[serde(default)]
    pub max_bytes: Option<Quantity>,
    /// Global cap on queued requests; omitted or 0 = unlimited.
    #[serde(default)]
    pub max_requests: Option<Quantity>,
    /// TTL for requests that carry none; omitted or 0 = none (rely on client cancellation).
    #[serde(default, rename = "defaultRequestTTL")]
    pub default_request_ttl: Option<GoDuration>,
    /// Template for bands that are not listed (created on demand for an unseen priority).
    #[serde(default)]
    pub default_priority_band: Option<PriorityBandConfig>,
    /// Explicitly configured bands.
    #[serde(default)]
    pub priority_bands: Vec<PriorityBandConfig>,
    /// Name of the usage limit policy plugin; default the static policy with ceiling 1.0.
    #[serde(default)]
    pub usage_limit_policy_plugin_ref: Option<String>,
    /// igw extension, not in upstream's schema: [`FlowConfig::batch_holdback`], in-flight requests per
    /// endpoint at which every band below the highest stops being dispatched; omitted = no such limit.
    #[serde(default)]
    pub lower_band_max_concurrency: Option<f64>,
}

/// One priority band as written (`defaultPriorityBand` or an entry of `priorityBands`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PriorityBandConfig {
    /// The band's priority (higher is more important); required in `priorityBands`.
    #[serde(default)]
    pub priority: Option<Priority>,
    /// Byte cap for the band; default 1 GB; 0 = unlimited.
    #[serde(default)]
    pub max_bytes: Option<Quantity>,
    /// Request cap for the band; default unlimited (0).
    #[serde(default)]
    pub max_requests: Option<Quantity>,
    /// Fairness policy between the band's flows.
    #[serde(default)]
    pub fairness_policy_ref: Option<String>,
    /// Ordering policy within each flow.
    #[serde(default)]
    pub ordering_policy_ref: Option<String>,
}

/// Parameters of a usage limit policy plugin (its `parameters:` block), for the config loader to decode.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UsageLimitParams {
    /// Static policy: the ceiling for every band (default 1.0).
    #[serde(default)]
    pub threshold: Option<f64>,
    /// Holdback policy: the highest band's ceiling (default 1.0).
    #[serde(default)]
    pub max_ceiling: Option<f64>,
    /// Holdback policy: the lowest band's ceiling (required).
    #[serde(default)]
    pub min_ceiling: Option<f64>,
}

/// How the band's flows share dispatch turns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FairnessPolicy {
    /// `global-strict-fairness-policy`: the best head by the ordering policy wins; no tenant fairness.
    GlobalStrict,
    /// `round-robin-fairness-policy`: one dispatch per non-empty flow in turn, by sorted fairness id.
    RoundRobin,
    /// `vtc-fairness-policy` (igw default): the backlogged flow that has been served the fewest weighted
    /// tokens goes next. A flow that becomes backlogged is lifted to the smallest counter of the backlogged
    /// flows, so idle time banks no credit.
    #[default]
    Vtc,
}

impl FairnessPolicy {
    /// The policy for a plugin type name.
    pub fn from_type(name: &str) -> Option<Self> {
        match name {
            GLOBAL_STRICT_FAIRNESS => Some(Self::GlobalStrict),
            ROUND_ROBIN_FAIRNESS => Some(Self::RoundRobin),
            VTC_FAIRNESS => Some(Self::Vtc),
            _ => None,
        }
    }

    /// The plugin type name.
    pub fn type_name(self) -> &'static str {
        match self {
            Self::GlobalStrict => GLOBAL_STRICT_FAIRNESS,
            Self::RoundRobin => ROUND_ROBIN_FAIRNESS,
            Self::Vtc => VTC_FAIRNESS,
        }
    }
}

/// The order of requests within one flow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OrderingPolicy {
    /// `fcfs-ordering-policy`: arrival order.
    #[default]
    Fcfs,
    /// `edf-ordering-policy`: earliest `enqueue + effective TTL` first; no TTL = far future; ties FCFS.
    Edf,
    /// `slo-deadline-ordering-policy`: earliest `arrival + x-slo-ttft-ms` first; none = far future; ties FCFS.
    SloDeadline,
}

impl OrderingPolicy {
    /// The policy for a plugin type name.
    pub fn from_type(name: &str) -> Option<Self> {
        match name {
            FCFS_ORDERING => Some(Self::Fcfs),
            EDF_ORDERING => Some(Self::Edf),
            SLO_DEADLINE_ORDERING => Some(Self::SloDeadline),
            _ => None,
        }
    }

    /// The plugin type name.
    pub fn type_name(self) -> &'static str {
        match self {
            Self::Fcfs => FCFS_ORDERING,
            Self::Edf => EDF_ORDERING,
            Self::SloDeadline => SLO_DEADLINE_ORDERING,
        }
    }
}

/// The saturation ceiling per band: a band is gated while `saturation >= ceiling`.
#[derive(Clone, Debug, PartialEq)]
pub enum UsageLimitPolicy {
    /// `static-usage-limit-policy`: the same ceiling for every band (upstream default 1.0).
    Static {
        /// The ceiling.
        threshold: f64,
    },
    /// `priority-holdback-policy`: by rank among the existing bands (0 = highest priority, N bands),
    /// `ceiling = max - rank * (max - min) / (N - 1)`; a single band gets `max`. Lower bands stop earlier,
    /// which keeps headroom for higher ones.
    PriorityHoldback {
        /// Ceiling of the highest band.
        max_ceiling: f64,
        /// Ceiling of the lowest band.
        min_ceiling: f64,
    },
    /// igw extension: an explicit ceiling per priority, `default` for the rest.
    PerBand {
        /// Ceiling per priority.
        ceilings: BTreeMap<Priority, f64>,
        /// Ceiling of unlisted priorities.
        default: f64,
    },
}

impl Default for UsageLimitPolicy {
    fn default() -> Self {
        Self::Static { threshold: 1.0 }
    }
}

impl UsageLimitPolicy {
    /// Builds a policy from a plugin type name and its parameters.
    pub fn from_plugin(type_name: &str, params: &UsageLimitParams) -> Result<Self, FlowConfigError> {
        let policy = match type_name {
            STATIC_USAGE_LIMIT => Self::Static { threshold: params.threshold.unwrap_or(1.0) },
            PRIORITY_HOLDBACK_USAGE_LIMIT => Self::PriorityHoldback {
                max_ceiling: params.max_ceiling.unwrap_or(1.0),
                min_ceiling: params.min_ceiling.ok_or_else(|| {
                    FlowConfigError::InvalidUsageLimit(format!("{PRIORITY_HOLDBACK_USAGE_LIMIT} needs minCeiling"))
                })?,
            },
            other => return Err(FlowConfigError::UnknownUsageLimitPolicy(other.to_string())),
        };
        policy.validate()?;
        Ok(policy)
    }

    /// Checks that every ceiling is finite and non-negative and that `min <= max`.
    pub fn validate(&self) -> Result<(), FlowConfigError> {
        let ok = |c: f64| c.is_finite() && c >= 0.0;
        let good = match self {
            Self::Static { threshold } => ok(*threshold),
            Self::PriorityHoldback { max_ceiling, min_ceiling } => {
                ok(*max_ceiling) && ok(*min_ceiling) && min_ceiling <= max_ceiling
            }
            Self::PerBand { ceilings, default } => ok(*default) && ceilings.values().all(|c| ok(*c)),
        };
        if good { Ok(()) } else { Err(FlowConfigError::InvalidUsageLimit(format!("{self:?}"))) }
    }

    /// The ceiling of the band with `priority`, ranked `rank` (0 = highest) among `bands` bands.
    pub fn ceiling(&self, priority: Priority, rank: usize, bands: usize) -> f64 {
        match self {
            Self::Static { threshold } => *threshold,
            Self::PriorityHoldback { max_ceiling, min_ceiling } => {
                if bands <= 1 {
                    *max_ceiling
                } else {
                    max_ceiling - rank as f64 * (max_ceiling - min_ceiling) / (bands - 1) as f64
                }
            }
            Self::PerBand { ceilings, default } => ceilings.get(&priority).copied().unwrap_or(*default),
        }
    }
}

/// A resolved band.
#[derive(Clone, Debug, PartialEq)]
pub struct BandConfig {
    /// The priority (ignored in [`FlowConfig::default_band`], which is a template).
    pub priority: Priority,
    /// Byte cap; 0 = unlimited.
    pub max_bytes: u64,
    /// Request cap; 0 = unlimited.
    pub max_requests: u64,
    /// Fairness between flows.
    pub fairness: FairnessPolicy,
    /// Ordering within a flow.
    pub ordering: OrderingPolicy,
}

/// The configuration the [`FlowController`](super::FlowController) runs on.
#[derive(Clone, Debug, PartialEq)]
pub struct FlowConfig {
    /// Global byte cap; 0 = unlimited.
    pub max_bytes: u64,
    /// Global request cap; 0 = unlimited.
    pub max_requests: u64,
    /// TTL for requests that carry none; `None` = no TTL.
    pub default_ttl: Option<Duration>,
    /// Template for bands created on demand.
    pub default_band: BandConfig,
    /// Explicit bands (any order).
    pub bands: Vec<BandConfig>,
    /// Ceiling per band.
    pub usage_limit: UsageLimitPolicy,
    /// Upstream's head-of-line stop: walking bands from the highest, a non-empty band whose ceiling is
    /// reached ends the dispatch cycle, so no lower band overtakes it. When false the walk skips gated bands
    /// and may serve a lower band whose ceiling is higher (work-conserving). The two differ only when some
    /// lower band has a higher ceiling (e.g. [`UsageLimitPolicy::PerBand`]); upstream stops even at an
    /// empty gated band, which is the same thing whenever ceilings do not rise towards lower priorities.
    pub head_of_line_blocking: bool,
    /// VTC cost of one output token relative to one input token (igw default 2.0, as VTC and llm-d use).
    pub output_token_weight: f64,
    /// igw extension (`lowerBandMaxConcurrency`): every band below the highest is dispatched only while the
    /// pool's in-flight requests per endpoint (dispatched by this gateway, not finished) are below this;
    /// the highest band still fills up to the saturation detector's limit. Engines are FCFS and a decode
    /// step slows with its batch, so bounding the batch the lower bands may fill keeps the highest band's
    /// latency near its unloaded value, at the cost of the lower bands' throughput. `None` (default, as
    /// upstream) = no such limit.
    pub batch_holdback: Option<f64>,
    /// Forget an empty flow (and its VTC counter) after this long idle; `None` = keep forever.
    /// Upstream collects idle flows after 5 minutes.
    pub flow_idle_gc: Option<Duration>,
}

impl FlowConfig {
    /// Upstream's defaults: global-strict fairness, FCFS, static ceiling 1.0, head-of-line stop, band cap
    /// 1 GB, no global caps, no default TTL.
    pub fn upstream() -> Self {
        FlowConfig {
            max_bytes: 0,
            max_requests: 0,
            default_ttl: None,
            default_band: BandConfig {
                priority: 0,
                max_bytes: DEFAULT_BAND_MAX_BYTES,
                max_requests: 0,
                fairness: FairnessPolicy::GlobalStrict,
                ordering: OrderingPolicy::Fcfs,
            },
            bands: Vec::new(),
            usage_limit: UsageLimitPolicy::default(),
            head_of_line_blocking: true,
            output_token_weight: 2.0,
            batch_holdback: None,
            flow_idle_gc: Some(Duration::from_secs(300)),
        }
    }

    /// igw's defaults: as [`FlowConfig::upstream`] but with VTC fairness between flows.
    pub fn igw() -> Self {
        let mut c = Self::upstream();
        c.default_band.fairness = FairnessPolicy::Vtc;
        c
    }

    /// The band for `priority`: the explicit one, or the default band with that priority.
    pub fn band_for(&self, priority: Priority) -> BandConfig {
        self.bands
            .iter()
            .find(|b| b.priority == priority)
            .cloned()
            .unwrap_or_else(|| BandConfig { priority, ..self.default_band.clone() })
    }

    /// Checks the ceilings, the token weight, the batch holdback and that no band is listed twice.
    pub fn validate(&self) -> Result<(), FlowConfigError> {
        self.usage_limit.validate()?;
        if let Some(c) = self.batch_holdback
            && !(c.is_finite() && c > 0.0)
        {
            return Err(FlowConfigError::InvalidUsageLimit(format!("lowerBandMaxConcurrency {c} must be positive")));
        }
        if !(self.output_token_weight.is_finite() && self.output_token_weight >= 0.0) {
            return Err(FlowConfigError::InvalidTokenWeight(self.output_token_weight));
        }
        let mut seen = std::collections::BTreeSet::new();
        for b in &self.bands {
            if !seen.insert(b.priority) {
                return Err(FlowConfigError::DuplicateBand(b.priority));
            }
        }
        Ok(())
    }
}

impl Default for FlowConfig {
    fn default() -> Self {
        Self::igw()
    }
}

impl FlowControlConfig {
    /// Resolves the section on top of `base` (normally [`FlowConfig::igw`] or [`FlowConfig::upstream`]),
    /// whose values stand for everything the section leaves out.
    ///
    /// Policy refs are read as plugin *type* names (a plugin's name defaults to its type); a loader that
    /// allows renamed plugins maps names to types first. `usage_limit` is the policy the loader built from
    /// the plugin named by `usageLimitPolicyPluginRef` (see [`UsageLimitPolicy::from_plugin`]); when it is
    /// `None` and a ref is given, the ref is read as a type name with default parameters. Fields left out of
    /// a `priorityBands` entry come from the resolved default band.
    pub fn resolve(
        &self,
        base: &FlowConfig,
        usage_limit: Option<UsageLimitPolicy>,
    ) -> Result<FlowConfig, FlowConfigError> {
        let mut out = base.clone();
        if let Some(q) = self.max_bytes {
            out.max_bytes = q.0;
        }
        if let Some(q) = self.max_requests {
            out.max_requests = q.0;
        }
        if let Some(d) = self.default_request_ttl {
            out.default_ttl = (!d.0.is_zero()).then_some(d.0);
        }
        if let Some(t) = &self.default_priority_band {
            out.default_band = t.apply(&base.default_band)?;
        }
        out.bands.clear();
        for (i, b) in self.priority_bands.iter().enumerate() {
            let priority = b.priority.ok_or(FlowConfigError::MissingBandPriority(i))?;
            let mut band = b.apply(&out.default_band)?;
            band.priority = priority;
            out.bands.push(band);
        }
        if let Some(c) = self.lower_band_max_concurrency {
            out.batch_holdback = Some(c);
        }
        out.usage_limit = match (usage_limit, &self.usage_limit_policy_plugin_ref) {
            (Some(p), _) => p,
            (None, Some(name)) => UsageLimitPolicy::from_plugin(name, &UsageLimitParams::default())?,
            (None, None) => base.usage_limit.clone(),
        };
        out.validate()?;
        Ok(out)
    }
}

impl PriorityBandConfig {
    fn apply(&self, template: &BandConfig) -> Result<BandConfig, FlowConfigError> {
        let fairness = match &self.fairness_policy_ref {
            Some(n) => FairnessPolicy::from_type(n).ok_or_else(|| FlowConfigError::UnknownFairnessPolicy(n.clone()))?,
            None => template.fairness,
        };
        let ordering = match &self.ordering_policy_ref {
            Some(n) => OrderingPolicy::from_type(n).ok_or_else(|| FlowConfigError::UnknownOrderingPolicy(n.clone()))?,
            None => template.ordering,
        };
        Ok(BandConfig {
            priority: self.priority.unwrap_or(template.priority),
            max_bytes: self.max_bytes.map_or(template.max_bytes, |q| q.0),
            max_requests: self.max_requests.map_or(template.max_requests, |q| q.0),
            fairness,
            ordering,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<FlowControlConfig, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn parses_the_upstream_shape() {
        let c = parse(
            r#"{"maxBytes":"2Gi","maxRequests":5000,"defaultRequestTTL":"30s",
                "defaultPriorityBand":{"maxBytes":"500M","orderingPolicyRef":"edf-ordering-policy"},
                "priorityBands":[{"priority":10,"maxRequests":"1k","fairnessPolicyRef":"round-robin-fairness-policy"}],
                "usageLimitPolicyPluginRef":"static-usage-limit-policy"}"#,
        )
        .unwrap();
        let f = c.resolve(&FlowConfig::igw(), None).unwrap();
        assert_eq!(f.max_bytes, 2 << 30);
        assert_eq!(f.max_requests, 5000);
        assert_eq!(f.default_ttl, Some(Duration::from_secs(30)));
        assert_eq!(f.default_band.max_bytes, 500_000_000);
        assert_eq!(f.default_band.ordering, OrderingPolicy::Edf);
        assert_eq!(f.default_band.fairness, FairnessPolicy::Vtc);
        let b = f.band_for(10);
        assert_eq!((b.max_requests, b.max_bytes), (1000, 500_000_000));
        assert_eq!((b.fairness, b.ordering), (FairnessPolicy::RoundRobin, OrderingPolicy::Edf));
        assert_eq!(f.band_for(-3).priority, -3);
        assert_eq!(f.usage_limit, UsageLimitPolicy::Static { threshold: 1.0 });
    }

    #[test]
    fn empty_section_keeps_the_defaults() {
        let up = parse("{}").unwrap().resolve(&FlowConfig::upstream(), None).unwrap();
        assert_eq!(up, FlowConfig::upstream());
        assert_eq!(up.default_band.max_bytes, DEFAULT_BAND_MAX_BYTES);
        assert_eq!(up.default_band.fairness, FairnessPolicy::GlobalStrict);
        assert_eq!(FlowConfig::default().default_band.fairness, FairnessPolicy::Vtc);
    }

    #[test]
    fn rejects_bad_sections() {
        assert!(parse(r#"{"maxbytes":"1Gi"}"#).is_err(), "unknown field");
        assert!(parse(r#"{"maxBytes":"-1"}"#).is_err());
        assert!(parse(r#"{"defaultRequestTTL":"30"}"#).is_err());
        assert!(parse(r#"{"priorityBands":[{"priority":1,"weight":2}]}"#).is_err());
        let base = FlowConfig::igw();
        let r = |j: &str| parse(j).unwrap().resolve(&base, None);
        assert_eq!(r(r#"{"priorityBands":[{}]}"#), Err(FlowConfigError::MissingBandPriority(0)));
        assert_eq!(r(r#"{"priorityBands":[{"priority":1},{"priority":1}]}"#), Err(FlowConfigError::DuplicateBand(1)));
        assert!(matches!(
            r(r#"{"defaultPriorityBand":{"fairnessPolicyRef":"nope"}}"#),
            Err(FlowConfigError::UnknownFairnessPolicy(_))
        ));
        assert!(matches!(
            r(r#"{"usageLimitPolicyPluginRef":"priority-holdback-policy"}"#),
            Err(FlowConfigError::InvalidUsageLimit(_))
        ));
    }

    #[test]
    fn holdback_ceilings_are_linear_by_rank() {
        let params: UsageLimitParams = serde_json::from_str(r#"{"minCeiling":0.5}"#).unwrap();
        let p = UsageLimitPolicy::from_plugin(PRIORITY_HOLDBACK_USAGE_LIMIT, &params).unwrap();
        let c: Vec<f64> = (0..3).map(|rank| p.ceiling(0, rank, 3)).collect();
        assert_eq!(c, vec![1.0, 0.75, 0.5]);
        assert_eq!(p.ceiling(0, 0, 1), 1.0);
        let bad = UsageLimitParams { max_ceiling: Some(0.2), min_ceiling: Some(0.5), threshold: None };
        assert!(UsageLimitPolicy::from_plugin(PRIORITY_HOLDBACK_USAGE_LIMIT, &bad).is_err());
    }
}
