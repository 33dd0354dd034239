//! The gateway configuration file (`igw serve --config gateway.yaml`): several pools, model → pool
//! routing, objectives and rewrites.
//!
//! [`parse`] decodes the text strictly (an unknown field is an error naming its line), then
//! validates it: every pool reference, address, engine and scheduler configuration is checked,
//! and every scheduler is built, before anything is started or swapped in. The result is a
//! [`GatewayPlan`], ready for [`crate::pools::PoolSet::build`]. A file with any error yields one
//! [`ConfigError`] whose message names the line and the field; [`load`] reads the file first and
//! prefixes the message with its path ([`LoadError`]). See `docs/gateway-config.md`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use igw_core::endpoint::{COST_PER_HOUR_LABEL, ENGINE_TYPE_LABEL, parse_cost_per_hour};
use igw_core::{
    CoreError, EndpointMeta, InferenceObjective, ModelRewrite, ObjectRef, ObjectiveGoals, Placement, Priority,
    RewriteRule, TargetModel,
};
use igw_metrics::EngineRegistry;
use igw_sched::Scheduler;
use igw_sched::UnknownPolicy;
use igw_sched::config::EndpointPickerConfig;
use igw_sched::flow::{FlowConfig, FlowConfigError};
use serde::Deserialize;
use serde_saphyr::Spanned;

/// Namespace the file's objectives and rewrites are given (they have no Kubernetes identity).
pub const NAMESPACE: &str = "default";

/// The largest weight a rewrite target may have.
pub const MAX_TARGET_WEIGHT: u32 = 1_000_000;

/// Why a configuration file's text is not a valid configuration. The message names the line (of
/// the file, or of the scheduler configuration file it names) and the field; [`ConfigError::line`]
/// gives the file's line alone.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The YAML does not decode into the file's schema (syntax, unknown field, wrong type); the
    /// decoder's message, which starts with the line and column.
    #[error("{0}")]
    Decode(String),
    /// The file has no pool.
    #[error("pools: at least one pool is needed")]
    NoPools,
    /// A pool's name is empty.
    #[error("line {line}: pools[{index}].name: must not be empty")]
    EmptyPoolName {
        /// Line of the pool.
        line: u64,
        /// Position of the pool in `pools`.
        index: usize,
    },
    /// Two pools have the same name.
    #[error("line {line}: pools[{index}].name: duplicate pool name {pool:?}")]
    DuplicatePool {
        /// Line of the second pool.
        line: u64,
        /// Position of the second pool in `pools`.
        index: usize,
        /// The name.
        pool: String,
    },
    /// A pool lists no endpoint.
    #[error("line {line}: pool {pool:?}: endpoints: at least one ip:port is needed")]
    NoEndpoints {
        /// Line of the pool.
        line: u64,
        /// Pool name.
        pool: String,
    },
    /// A pool names an engine igw has no metric mapping for.
    #[error("line {line}: pool {pool:?}: engine: unknown engine {engine:?}; known: {}", .known.join(", "))]
    UnknownEngine {
        /// Line of `engine`.
        line: u64,
        /// Pool name.
        pool: String,
        /// The engine named.
        engine: String,
        /// The engines igw knows.
        known: Vec<String>,
    },
    /// An endpoint is not an `ip:port` address.
    #[error("line {line}: pool {pool:?}: endpoints: {endpoint:?} is not an ip:port address")]
    BadEndpoint {
        /// Line of the endpoint.
        line: u64,
        /// Pool name.
        pool: String,
        /// The endpoint as written.
        endpoint: String,
    },
    /// An endpoint's `igw.dev/cost-per-hour` label is not a positive number.
    #[error("line {line}: pool {pool:?}: endpoints: {endpoint}: label {label}: {value:?} is not a positive number")]
    BadCostLabel {
        /// Line of the endpoint.
        line: u64,
        /// Pool name.
        pool: String,
        /// The endpoint as written.
        endpoint: String,
        /// The label.
        label: &'static str,
        /// Its value.
        value: String,
    },
    /// An endpoint is listed twice in one pool.
    #[error("line {line}: pool {pool:?}: endpoints: {endpoint} is listed twice")]
    DuplicateEndpoint {
        /// Line of the second listing.
        line: u64,
        /// Pool name.
        pool: String,
        /// The endpoint as written.
        endpoint: String,
    },
    /// A pool declares an empty model name.
    #[error("line {line}: pool {pool:?}: models: empty model name")]
    EmptyModel {
        /// Line of the model.
        line: u64,
        /// Pool name.
        pool: String,
    },
    /// Two pools declare the same model.
    #[error(
        "line {line}: pool {pool:?}: models: {model:?} is already served by pool {other_pool:?} (line {other_line})"
    )]
    DuplicateModel {
        /// Line of the second declaration.
        line: u64,
        /// The pool that declares it again.
        pool: String,
        /// The model.
        model: String,
        /// The pool that declared it first.
        other_pool: String,
        /// Line of the first declaration.
        other_line: u64,
    },
    /// A pool sets more than one of `policy`, `schedulerConfigFile`, `schedulerConfig`.
    #[error("line {line}: pool {pool:?}: set at most one of policy, schedulerConfigFile, schedulerConfig")]
    SchedulerConflict {
        /// Line of the pool.
        line: u64,
        /// Pool name.
        pool: String,
    },
    /// A pool's own `flowControl` section next to an EndpointPickerConfig (which has its own).
    #[error(
        "line {line}: pool {pool:?}: flowControl goes with policy; with an EndpointPickerConfig, use its flowControl \
         section and featureGates: [flowControl]"
    )]
    FlowControlWithConfig {
        /// Line of `flowControl`.
        line: u64,
        /// Pool name.
        pool: String,
    },
    /// A pool's `flowControl` section does not resolve.
    #[error("line {line}: pool {pool:?}: flowControl: {error}")]
    FlowControl {
        /// Line of `flowControl`.
        line: u64,
        /// Pool name.
        pool: String,
        /// What is wrong.
        error: FlowConfigError,
    },
    /// A pool names an unknown policy.
    #[error("line {line}: pool {pool:?}: policy: {error}")]
    Policy {
        /// Line of `policy`.
        line: u64,
        /// Pool name.
        pool: String,
        /// The unknown policy.
        error: UnknownPolicy,
    },
    /// A pool's `schedulerConfigFile` cannot be read.
    #[error("line {line}: pool {pool:?}: schedulerConfigFile {}: {error}", .path.display())]
    SchedulerConfigFileRead {
        /// Line of `schedulerConfigFile`.
        line: u64,
        /// Pool name.
        pool: String,
        /// The file, relative to the configuration file's directory.
        path: PathBuf,
        /// Why it cannot be read.
        error: std::io::Error,
    },
    /// A pool's `schedulerConfigFile` is not a valid EndpointPickerConfig (the error names that
    /// file's line).
    #[error("line {line}: pool {pool:?}: schedulerConfigFile {}: {error}", .path.display())]
    SchedulerConfigFile {
        /// Line of `schedulerConfigFile`.
        line: u64,
        /// Pool name.
        pool: String,
        /// The file, relative to the configuration file's directory.
        path: PathBuf,
        /// What is wrong in it.
        error: Box<igw_sched::config::ConfigError>,
    },
    /// A pool's inline `schedulerConfig` has a `kind` other than EndpointPickerConfig.
    #[error("line {line}: pool {pool:?}: schedulerConfig: kind must be EndpointPickerConfig, not {kind:?}")]
    SchedulerConfigKind {
        /// Line of `schedulerConfig`.
        line: u64,
        /// Pool name.
        pool: String,
        /// The kind given.
        kind: String,
    },
    /// A pool's inline `schedulerConfig` is invalid (plugin errors carry the plugin's line).
    #[error("pool {pool:?}: schedulerConfig (line {line}): {error}")]
    SchedulerConfig {
        /// Line of `schedulerConfig`.
        line: u64,
        /// Pool name.
        pool: String,
        /// What is wrong.
        error: Box<igw_sched::config::ConfigError>,
    },
    /// The default policy (`--policy`), applied to a pool that names no scheduler, is unknown.
    #[error("--policy: {0}")]
    DefaultPolicy(UnknownPolicy),
    /// `defaultPool` names no pool.
    #[error("line {line}: defaultPool: no pool is named {pool:?}")]
    UnknownDefaultPool {
        /// Line of `defaultPool`.
        line: u64,
        /// The name given.
        pool: String,
    },
    /// An objective's name is empty.
    #[error("line {line}: objectives: name must not be empty")]
    EmptyObjectiveName {
        /// Line of the objective.
        line: u64,
    },
    /// Two objectives have the same name.
    #[error("line {line}: objectives: duplicate objective {objective:?}")]
    DuplicateObjective {
        /// Line of the second objective.
        line: u64,
        /// The name.
        objective: String,
    },
    /// An objective's SLO is out of range.
    #[error("line {line}: objectives: {objective:?}: slo.{field}: {value} is not from 1 to 3600000 ms")]
    BadSlo {
        /// Line of the objective.
        line: u64,
        /// The objective.
        objective: String,
        /// `ttftMs` or `tpotMs`.
        field: &'static str,
        /// The value given.
        value: u64,
    },
    /// An objective names an unknown placement.
    #[error("line {line}: objectives: {objective:?}: placement: {value:?} is neither fastest nor cheapest")]
    BadPlacement {
        /// Line of the objective.
        line: u64,
        /// The objective.
        objective: String,
        /// The value given.
        value: String,
    },
    /// `placement: cheapest` without an SLO to be cheap within.
    #[error(
        "line {line}: objectives: {objective:?}: placement: cheapest needs an slo (ttftMs or tpotMs) to stay within"
    )]
    CheapestWithoutSlo {
        /// Line of the objective.
        line: u64,
        /// The objective.
        objective: String,
    },
    /// A rewrite's name is empty.
    #[error("line {line}: rewrites[{index}].name: must not be empty")]
    EmptyRewriteName {
        /// Line of the rewrite.
        line: u64,
        /// Position of the rewrite in `rewrites`.
        index: usize,
    },
    /// A rewrite has no rule.
    #[error("line {line}: rewrite {rewrite:?}: rules: at least one rule is needed")]
    NoRules {
        /// Line of the rewrite.
        line: u64,
        /// Rewrite name.
        rewrite: String,
    },
    /// A rule has no target.
    #[error("line {line}: rewrite {rewrite:?}: targets: at least one target is needed")]
    NoTargets {
        /// Line of the rule.
        line: u64,
        /// Rewrite name.
        rewrite: String,
    },
    /// A match's `model.type` is not `Exact`.
    #[error("line {line}: rewrite {rewrite:?}: matches: model.type must be Exact, not {kind:?}")]
    MatchType {
        /// Line of the rule.
        line: u64,
        /// Rewrite name.
        rewrite: String,
        /// The type given.
        kind: String,
    },
    /// A match's `model.value` is empty.
    #[error("line {line}: rewrite {rewrite:?}: matches: model.value must not be empty")]
    EmptyMatch {
        /// Line of the rule.
        line: u64,
        /// Rewrite name.
        rewrite: String,
    },
    /// A target's `modelRewrite` is empty.
    #[error("line {line}: rewrite {rewrite:?}: targets: modelRewrite must not be empty")]
    EmptyTarget {
        /// Line of the rule.
        line: u64,
        /// Rewrite name.
        rewrite: String,
    },
    /// A target's weight is above [`MAX_TARGET_WEIGHT`].
    #[error("line {line}: rewrite {rewrite:?}: targets: weight must be at most {MAX_TARGET_WEIGHT}")]
    WeightTooLarge {
        /// Line of the rule.
        line: u64,
        /// Rewrite name.
        rewrite: String,
    },
    /// A rewrite's `pool` names no pool.
    #[error("line {line}: rewrite {rewrite:?}: pool: no pool is named {pool:?}")]
    UnknownRewritePool {
        /// Line of `pool`.
        line: u64,
        /// Rewrite name.
        rewrite: String,
        /// The name given.
        pool: String,
    },
    /// A rewrite without `pool` has a target that no pool serves.
    #[error(
        "line {line}: rewrite {rewrite:?}: target {model:?} is not a model of any pool; add it to a pool's models or \
         set the rewrite's pool"
    )]
    UnservedTarget {
        /// Line of the rewrite.
        line: u64,
        /// Rewrite name.
        rewrite: String,
        /// The target model.
        model: String,
    },
    /// A rewrite without `pool` has targets served by two pools.
    #[error(
        "line {line}: rewrite {rewrite:?}: targets are served by pools {first:?} and {second:?}; a rewrite routes to \
         one pool"
    )]
    TargetsInTwoPools {
        /// Line of the rewrite.
        line: u64,
        /// Rewrite name.
        rewrite: String,
        /// The pool of the earlier target.
        first: String,
        /// The pool of the later target.
        second: String,
    },
    /// A rewrite matches a model that another pool serves.
    #[error(
        "line {line}: rewrite {rewrite:?}: model {model:?} is served by pool {served_by:?}, but the rewrite's pool is \
         {pool:?}"
    )]
    MatchInOtherPool {
        /// Line of the rewrite.
        line: u64,
        /// Rewrite name.
        rewrite: String,
        /// The matched model.
        model: String,
        /// The pool that serves it.
        served_by: String,
        /// The rewrite's pool.
        pool: String,
    },
    /// A rewrite fails the datastore's validation.
    #[error("line {line}: {error}")]
    InvalidRewrite {
        /// Line of the rewrite.
        line: u64,
        /// What is wrong.
        error: CoreError,
    },
    /// Two rewrites of one pool have the same name.
    #[error("line {line}: rewrite {rewrite:?}: duplicate rewrite name")]
    DuplicateRewrite {
        /// Line of the second rewrite.
        line: u64,
        /// Rewrite name.
        rewrite: String,
    },
}

impl ConfigError {
    /// The line of the configuration file the error is about, when there is one (a decode error
    /// carries its line in its message).
    pub fn line(&self) -> Option<u64> {
        use ConfigError as E;
        match self {
            E::Decode(_) | E::NoPools | E::DefaultPolicy(_) => None,
            E::EmptyPoolName { line, .. }
            | E::DuplicatePool { line, .. }
            | E::NoEndpoints { line, .. }
            | E::UnknownEngine { line, .. }
            | E::BadEndpoint { line, .. }
            | E::DuplicateEndpoint { line, .. }
            | E::EmptyModel { line, .. }
            | E::DuplicateModel { line, .. }
            | E::SchedulerConflict { line, .. }
            | E::FlowControlWithConfig { line, .. }
            | E::FlowControl { line, .. }
            | E::Policy { line, .. }
            | E::SchedulerConfigFileRead { line, .. }
            | E::SchedulerConfigFile { line, .. }
            | E::SchedulerConfigKind { line, .. }
            | E::SchedulerConfig { line, .. }
            | E::UnknownDefaultPool { line, .. }
            | E::EmptyObjectiveName { line }
            | E::DuplicateObjective { line, .. }
            | E::BadSlo { line, .. }
            | E::BadPlacement { line, .. }
            | E::CheapestWithoutSlo { line, .. }
            | E::BadCostLabel { line, .. }
            | E::EmptyRewriteName { line, .. }
            | E::NoRules { line, .. }
            | E::NoTargets { line, .. }
            | E::MatchType { line, .. }
            | E::EmptyMatch { line, .. }
            | E::EmptyTarget { line, .. }
            | E::WeightTooLarge { line, .. }
            | E::UnknownRewritePool { line, .. }
            | E::UnservedTarget { line, .. }
            | E::TargetsInTwoPools { line, .. }
            | E::MatchInOtherPool { line, .. }
            | E::InvalidRewrite { line, .. }
            | E::DuplicateRewrite { line, .. } => Some(*line),
        }
    }
}

/// Why [`load`] could not produce a plan: the file cannot be read, or its text is invalid. The
/// message starts with the path (`reading gw.yaml: ...`, `gw.yaml: line 4: ...`).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file cannot be read.
    #[error("reading {}: {error}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The file's text is not a valid configuration.
    #[error("{}: {error}", .path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its line.
        error: Box<ConfigError>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileSpec {
    listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
    default_pool: Option<Spanned<String>>,
    pools: Vec<Spanned<PoolFileSpec>>,
    #[serde(default)]
    objectives: Vec<Spanned<ObjectiveSpec>>,
    #[serde(default)]
    rewrites: Vec<Spanned<RewriteSpec>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PoolFileSpec {
    name: String,
    endpoints: Vec<Spanned<EndpointSpec>>,
    engine: Option<Spanned<String>>,
    #[serde(default)]
    models: Vec<Spanned<String>>,
    policy: Option<Spanned<String>>,
    scheduler_config_file: Option<Spanned<String>>,
    scheduler_config: Option<Spanned<EndpointPickerConfig>>,
    flow_control: Option<Spanned<igw_sched::flow::FlowControlConfig>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ObjectiveSpec {
    name: String,
    priority: Option<Priority>,
    slo: Option<SloSpec>,
    placement: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SloSpec {
    ttft_ms: Option<u64>,
    tpot_ms: Option<u64>,
}

/// An endpoint: `ip:port`, or `{address: ip:port, labels: {...}}` to give it the labels a pod
/// would carry (accelerator, cost per hour).
#[derive(Debug)]
enum EndpointSpec {
    Address(String),
    Labelled(LabelledEndpoint),
}

impl<'de> Deserialize<'de> for EndpointSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = EndpointSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an ip:port address or a map with address and labels")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<EndpointSpec, E> {
                Ok(EndpointSpec::Address(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<EndpointSpec, A::Error> {
                LabelledEndpoint::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(EndpointSpec::Labelled)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelledEndpoint {
    address: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

impl EndpointSpec {
    fn address(&self) -> &str {
        match self {
            EndpointSpec::Address(a) => a,
            EndpointSpec::Labelled(l) => &l.address,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RewriteSpec {
    name: String,
    pool: Option<Spanned<String>>,
    rules: Vec<Spanned<RuleSpec>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RuleSpec {
    #[serde(default)]
    matches: Vec<MatchSpec>,
    targets: Vec<TargetSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MatchSpec {
    model: ModelMatchSpec,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ModelMatchSpec {
    #[serde(rename = "type")]
    kind: Option<String>,
    value: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TargetSpec {
    model_rewrite: String,
    weight: Option<u32>,
}

/// One pool, validated, with its scheduler built.
#[derive(Debug)]
pub struct PoolPlan {
    /// Pool name.
    pub name: String,
    /// Its endpoints (engine label set when the pool names an engine).
    pub endpoints: Vec<EndpointMeta>,
    /// Models requests may name to reach this pool (declared models and rewrite match names).
    pub models: Vec<String>,
    /// The scheduler it decides with.
    pub scheduler: Scheduler,
    /// Where the scheduler came from (for logs and `/debug/config`).
    pub scheduler_source: String,
    /// What the scheduler was built from (policy name, file text, inline config): a reload keeps
    /// a pool running, with its state, when this and the rest of its definition are unchanged.
    pub scheduler_key: String,
    /// Rewrites applied in this pool's datastore.
    pub rewrites: Vec<ModelRewrite>,
    /// Flow control, when the pool's EndpointPickerConfig turns on the `flowControl` feature gate
    /// or the pool's `flowControl` section goes with its policy.
    pub flow: Option<FlowConfig>,
}

/// A gateway configuration, validated and ready to start.
#[derive(Debug)]
pub struct GatewayPlan {
    /// Gateway listener from the file, if set.
    pub listen: Option<SocketAddr>,
    /// Admin listener from the file, if set.
    pub admin_listen: Option<SocketAddr>,
    /// Pools in file order.
    pub pools: Vec<PoolPlan>,
    /// Index of the pool that takes passthrough paths (and, without declared models, everything).
    pub default_pool: usize,
    /// Objectives, applied to every pool.
    pub objectives: Vec<InferenceObjective>,
    /// Every file the configuration was read from (the file and scheduler config files).
    pub files: Vec<PathBuf>,
}

fn at<T>(s: &Spanned<T>) -> u64 {
    s.defined.line()
}

/// A pool's scheduler, where it came from, what it was built from, and its flow control.
type BuiltScheduler = (Scheduler, String, String, Option<FlowConfig>);

fn scheduler_for(
    pool: &PoolFileSpec,
    line: u64,
    base_dir: &Path,
    default_policy: &str,
    files: &mut Vec<PathBuf>,
) -> Result<BuiltScheduler, ConfigError> {
    let name = &pool.name;
    let given = [pool.policy.is_some(), pool.scheduler_config_file.is_some(), pool.scheduler_config.is_some()];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err(ConfigError::SchedulerConflict { line, pool: name.clone() });
    }
    // A pool's own `flowControl` section goes with a named policy; an EndpointPickerConfig carries
    // its own section behind its feature gate.
    if let Some(f) = &pool.flow_control
        && (pool.scheduler_config_file.is_some() || pool.scheduler_config.is_some())
    {
        return Err(ConfigError::FlowControlWithConfig { line: at(f), pool: name.clone() });
    }
    let named_flow = |policy: &str| -> Result<(Option<FlowConfig>, String), ConfigError> {
        let Some(f) = &pool.flow_control else { return Ok((None, String::new())) };
        let cfg = f.value.resolve(&FlowConfig::igw(), None).map_err(|error| ConfigError::FlowControl {
            line: at(f),
            pool: name.clone(),
            error,
        })?;
        Ok((Some(cfg), format!(" with flowControl {:?} on {policy}", f.value)))
    };
    if let Some(p) = &pool.policy {
        let s = Scheduler::from_policy(&p.value).map_err(|error| ConfigError::Policy {
            line: at(p),
            pool: name.clone(),
            error,
        })?;
        let (flow, key) = named_flow(&p.value)?;
        let source = format!("policy {}{}", p.value, if flow.is_some() { " with flowControl" } else { "" });
        return Ok((s, source, format!("policy {}{key}", p.value), flow));
    }
    if let Some(f) = &pool.scheduler_config_file {
        let path = base_dir.join(&f.value);
        let text = std::fs::read_to_string(&path).map_err(|error| ConfigError::SchedulerConfigFileRead {
            line: at(f),
            pool: name.clone(),
            path: path.clone(),
            error,
        })?;
        files.push(path.clone());
        let err = |error| ConfigError::SchedulerConfigFile {
            line: at(f),
            pool: name.clone(),
            path: path.clone(),
            error: Box::new(error),
        };
        let cfg = EndpointPickerConfig::parse(&text).map_err(err)?;
        let s = cfg.build("config").map_err(err)?;
        let flow = cfg.flow_config().map_err(err)?;
        return Ok((s, format!("schedulerConfigFile {}", path.display()), text, flow));
    }
    if let Some(c) = &pool.scheduler_config {
        if let Some(kind) = &c.value.kind
            && kind != "EndpointPickerConfig"
        {
            return Err(ConfigError::SchedulerConfigKind { line: at(c), pool: name.clone(), kind: kind.clone() });
        }
        // Plugin errors carry the plugin's line in this file.
        let err = |error| ConfigError::SchedulerConfig { line: at(c), pool: name.clone(), error: Box::new(error) };
        let s = c.value.build(name).map_err(err)?;
        let flow = c.value.flow_config().map_err(err)?;
        return Ok((s, "schedulerConfig (inline)".to_string(), format!("{:?}", c.value), flow));
    }
    let s = Scheduler::from_policy(default_policy).map_err(ConfigError::DefaultPolicy)?;
    let (flow, key) = named_flow(default_policy)?;
    let source = format!("policy {default_policy}{}", if flow.is_some() { " with flowControl" } else { "" });
    Ok((s, source, format!("policy {default_policy}{key}"), flow))
}

/// Parses and validates a configuration file's `text`; `path` locates relative scheduler config
/// files; `default_policy` applies to pools that name no scheduler.
pub fn parse(text: &str, path: &Path, default_policy: &str) -> Result<GatewayPlan, ConfigError> {
    use ConfigError as E;
    // The decoder's message starts with the line and column; a source excerpt follows.
    let spec: FileSpec = serde_saphyr::from_str(text).map_err(|e| {
        E::Decode(e.to_string().lines().next().unwrap_or("invalid YAML").trim_start_matches("error: ").to_string())
    })?;
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut files = vec![path.to_path_buf()];
    if spec.pools.is_empty() {
        return Err(E::NoPools);
    }
    let engines = EngineRegistry::builtin();
    let mut pool_index: BTreeMap<String, usize> = BTreeMap::new();
    let mut model_pool: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    let mut pools = Vec::new();
    for (i, sp) in spec.pools.iter().enumerate() {
        let line = at(sp);
        let p = &sp.value;
        let name = &p.name;
        if name.is_empty() {
            return Err(E::EmptyPoolName { line, index: i });
        }
        if pool_index.insert(name.clone(), i).is_some() {
            return Err(E::DuplicatePool { line, index: i, pool: name.clone() });
        }
        if p.endpoints.is_empty() {
            return Err(E::NoEndpoints { line, pool: name.clone() });
        }
        let engine = match &p.engine {
            Some(e) => {
                if engines.get(&e.value).is_none() {
                    return Err(E::UnknownEngine {
                        line: at(e),
                        pool: name.clone(),
                        engine: e.value.clone(),
                        known: engines.names().map(str::to_string).collect(),
                    });
                }
                Some(e.value.clone())
            }
            None => None,
        };
        let mut endpoints = Vec::new();
        for e in &p.endpoints {
            let addr = e.value.address();
            let mut meta = EndpointMeta::parse_addr(addr).map_err(|_| E::BadEndpoint {
                line: at(e),
                pool: name.clone(),
                endpoint: addr.to_string(),
            })?;
            if endpoints.iter().any(|m: &EndpointMeta| m.address == meta.address) {
                return Err(E::DuplicateEndpoint { line: at(e), pool: name.clone(), endpoint: addr.to_string() });
            }
            if let EndpointSpec::Labelled(l) = &e.value {
                if let Some(v) = l.labels.get(COST_PER_HOUR_LABEL)
                    && parse_cost_per_hour(v).is_none()
                {
                    return Err(E::BadCostLabel {
                        line: at(e),
                        pool: name.clone(),
                        endpoint: addr.to_string(),
                        label: COST_PER_HOUR_LABEL,
                        value: v.clone(),
                    });
                }
                meta.labels.extend(l.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            if let Some(engine) = &engine {
                meta.labels.insert(ENGINE_TYPE_LABEL.to_string(), engine.clone());
            }
            endpoints.push(meta);
        }
        let mut models = Vec::new();
        for m in &p.models {
            if m.value.is_empty() {
                return Err(E::EmptyModel { line: at(m), pool: name.clone() });
            }
            if let Some((other, other_line)) = model_pool.insert(m.value.clone(), (i, at(m))) {
                return Err(E::DuplicateModel {
                    line: at(m),
                    pool: name.clone(),
                    model: m.value.clone(),
                    other_pool: spec.pools[other].value.name.clone(),
                    other_line,
                });
            }
            models.push(m.value.clone());
        }
        let (scheduler, scheduler_source, scheduler_key, flow) =
            scheduler_for(p, line, &base_dir, default_policy, &mut files)?;
        pools.push(PoolPlan {
            name: name.clone(),
            endpoints,
            models,
            scheduler,
            scheduler_source,
            scheduler_key,
            rewrites: vec![],
            flow,
        });
    }
    let default_pool = match &spec.default_pool {
        Some(d) => {
            *pool_index.get(&d.value).ok_or_else(|| E::UnknownDefaultPool { line: at(d), pool: d.value.clone() })?
        }
        None => 0,
    };

    let mut objectives = Vec::new();
    let mut seen_objectives = BTreeMap::new();
    for o in &spec.objectives {
        if o.value.name.is_empty() {
            return Err(E::EmptyObjectiveName { line: at(o) });
        }
        if seen_objectives.insert(o.value.name.clone(), ()).is_some() {
            return Err(E::DuplicateObjective { line: at(o), objective: o.value.name.clone() });
        }
        let objective = &o.value.name;
        let ms = |field: &'static str, v: Option<u64>| match v {
            None => Ok(None),
            Some(x) if (1..=3_600_000).contains(&x) => Ok(u32::try_from(x).ok()),
            Some(value) => Err(E::BadSlo { line: at(o), objective: objective.clone(), field, value }),
        };
        let slo = o.value.slo.as_ref();
        let placement = match &o.value.placement {
            None => Placement::Fastest,
            Some(v) => Placement::parse(v).ok_or_else(|| E::BadPlacement {
                line: at(o),
                objective: objective.clone(),
                value: v.clone(),
            })?,
        };
        let goals = ObjectiveGoals {
            ttft_ms: ms("ttftMs", slo.and_then(|s| s.ttft_ms))?,
            tpot_ms: ms("tpotMs", slo.and_then(|s| s.tpot_ms))?,
            placement,
        };
        if placement == Placement::Cheapest && !goals.has_slo() {
            return Err(E::CheapestWithoutSlo { line: at(o), objective: objective.clone() });
        }
        objectives.push(InferenceObjective {
            id: ObjectRef::new(NAMESPACE, objective),
            priority: o.value.priority.unwrap_or(0),
            legacy_model_name: None,
            goals,
        });
    }

    for (order, r) in spec.rewrites.iter().enumerate() {
        let line = at(r);
        let rw = &r.value;
        let name = &rw.name;
        if name.is_empty() {
            return Err(E::EmptyRewriteName { line, index: order });
        }
        if rw.rules.is_empty() {
            return Err(E::NoRules { line, rewrite: name.clone() });
        }
        let mut rules = Vec::new();
        for rule in &rw.rules {
            let rl = at(rule);
            if rule.value.targets.is_empty() {
                return Err(E::NoTargets { line: rl, rewrite: name.clone() });
            }
            let mut matches = Vec::new();
            for m in &rule.value.matches {
                if let Some(k) = m.model.kind.as_deref()
                    && k != "Exact"
                {
                    return Err(E::MatchType { line: rl, rewrite: name.clone(), kind: k.to_string() });
                }
                if m.model.value.is_empty() {
                    return Err(E::EmptyMatch { line: rl, rewrite: name.clone() });
                }
                matches.push(m.model.value.clone());
            }
            let mut targets = Vec::new();
            for t in &rule.value.targets {
                if t.model_rewrite.is_empty() {
                    return Err(E::EmptyTarget { line: rl, rewrite: name.clone() });
                }
                let weight = t.weight.unwrap_or(0);
                if weight > MAX_TARGET_WEIGHT {
                    return Err(E::WeightTooLarge { line: rl, rewrite: name.clone() });
                }
                targets.push(TargetModel { model: t.model_rewrite.clone(), weight });
            }
            rules.push(RewriteRule { matches, targets });
        }
        // The pool: named, or the one pool that serves every target (every rule has a target, so
        // there is at least one).
        let pool = match &rw.pool {
            Some(p) => *pool_index.get(&p.value).ok_or_else(|| E::UnknownRewritePool {
                line: at(p),
                rewrite: name.clone(),
                pool: p.value.clone(),
            })?,
            None => {
                let mut found: Option<usize> = None;
                for t in rules.iter().flat_map(|r| &r.targets) {
                    let Some((i, _)) = model_pool.get(&t.model) else {
                        return Err(E::UnservedTarget { line, rewrite: name.clone(), model: t.model.clone() });
                    };
                    match found {
                        Some(f) if f != *i => {
                            return Err(E::TargetsInTwoPools {
                                line,
                                rewrite: name.clone(),
                                first: pools[f].name.clone(),
                                second: pools[*i].name.clone(),
                            });
                        }
                        _ => found = Some(*i),
                    }
                }
                found.ok_or_else(|| E::NoTargets { line, rewrite: name.clone() })?
            }
        };
        for m in rules.iter().flat_map(|r| &r.matches) {
            match model_pool.get(m) {
                Some((i, _)) if *i != pool => {
                    return Err(E::MatchInOtherPool {
                        line,
                        rewrite: name.clone(),
                        model: m.clone(),
                        served_by: pools[*i].name.clone(),
                        pool: pools[pool].name.clone(),
                    });
                }
                Some(_) => {}
                None => {
                    model_pool.insert(m.clone(), (pool, line));
                    pools[pool].models.push(m.clone());
                }
            }
        }
        let rewrite = ModelRewrite {
            id: ObjectRef::new(NAMESPACE, name),
            created_unix: i64::try_from(order).unwrap_or(0),
            rules,
        };
        rewrite.validate().map_err(|error| E::InvalidRewrite { line, error })?;
        if pools[pool].rewrites.iter().any(|r| r.id.name == *name) {
            return Err(E::DuplicateRewrite { line, rewrite: name.clone() });
        }
        pools[pool].rewrites.push(rewrite);
    }
    Ok(GatewayPlan { listen: spec.listen, admin_listen: spec.admin_listen, pools, default_pool, objectives, files })
}

/// Reads and validates the configuration file at `path`.
pub fn load(path: &Path, default_policy: &str) -> Result<GatewayPlan, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|error| LoadError::Read { path: path.to_path_buf(), error })?;
    parse(&text, path, default_policy)
        .map_err(|error| LoadError::Invalid { path: path.to_path_buf(), error: Box::new(error) })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        format!("{:#}", parse(text, Path::new("gw.yaml"), "igw").unwrap_err())
    }

    const GOOD: &str = "\
listen: 127.0.0.1:8080
pools:
- name: chat
  endpoints: [10.0.0.1:8000, 10.0.0.2:8000]
  engine: vllm
  models: [llama, llama-v2]
  policy: least-queue
- name: embed
  endpoints: [10.0.0.3:8000]
  engine: sglang
  models: [bge]
  schedulerConfig:
    plugins:
    - type: queue-scorer
objectives:
- name: premium
  priority: 10
- name: batch
  priority: -1
rewrites:
- name: canary
  rules:
  - matches:
    - model: {type: Exact, value: chat-latest}
    targets:
    - modelRewrite: llama
      weight: 90
    - modelRewrite: llama-v2
      weight: 10
";

    #[test]
    fn a_flow_control_section_goes_with_a_named_policy_only() {
        let named = "pools:\n- name: p\n  endpoints: [10.0.0.1:8000]\n  policy: igw\n  flowControl:\n    defaultRequestTTL: 5s\n    lowerBandMaxConcurrency: 65\n";
        let plan = parse(named, Path::new("gw.yaml"), "igw").unwrap();
        let flow = plan.pools[0].flow.clone().unwrap();
        assert_eq!((flow.default_ttl, flow.batch_holdback), (Some(std::time::Duration::from_secs(5)), Some(65.0)));
        // The default policy takes the section too; the key changes with it, so a reload rebuilds the pool.
        let default = named.replace("  policy: igw\n", "");
        let plan2 = parse(&default, Path::new("gw.yaml"), "igw").unwrap();
        assert!(plan2.pools[0].flow.is_some());
        let without =
            parse(&named.replace("    lowerBandMaxConcurrency: 65\n", ""), Path::new("gw.yaml"), "igw").unwrap();
        assert_ne!(plan.pools[0].scheduler_key, without.pools[0].scheduler_key);
        let e = err(&format!("{named}  schedulerConfig:\n    plugins:\n    - type: queue-scorer\n")
            .replace("  policy: igw\n", ""));
        assert!(e.contains("line 5") && e.contains("flowControl goes with policy"), "{e}");
        let e = err(&named.replace("5s", "soon"));
        assert!(e.contains("soon"), "{e}");
    }

    #[test]
    fn a_complete_file_loads() {
        let err = parse(GOOD, Path::new("gw.yaml"), "igw").err().map(|e| format!("{e:#}"));
        assert_eq!(err, None);
        let plan = parse(GOOD, Path::new("gw.yaml"), "igw").unwrap();
        assert_eq!(plan.listen, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(plan.pools.len(), 2);
        assert_eq!(plan.pools[0].models, ["llama", "llama-v2", "chat-latest"], "the rewrite's name routes to its pool");
        assert_eq!(plan.pools[0].rewrites.len(), 1);
        assert_eq!(plan.pools[1].endpoints[0].engine_label(), Some("sglang"));
        assert_eq!(plan.pools[0].scheduler_source, "policy least-queue");
        assert_eq!(plan.objectives[1].priority, -1);
    }

    #[test]
    fn objectives_state_slos_and_placement_and_endpoints_carry_labels() {
        let text = "\
pools:
- name: p
  endpoints:
  - 10.0.0.1:8000
  - address: 10.0.0.2:8000
    labels: {igw.dev/cost-per-hour: '1.01', inference.networking.k8s.io/accelerator: A10G}
  policy: igw-latency
objectives:
- name: batch
  slo: {ttftMs: 3000, tpotMs: 50}
  placement: cheapest
- name: chat
  slo: {ttftMs: 500}
";
        let plan = parse(text, Path::new("gw.yaml"), "igw").unwrap();
        let eps = &plan.pools[0].endpoints;
        assert_eq!((eps[0].cost_per_hour(), eps[1].cost_per_hour()), (None, Some(1.01)));
        assert_eq!(eps[1].accelerator(), Some("A10G"));
        let g = |i: usize| plan.objectives[i].goals;
        assert_eq!(g(0), ObjectiveGoals { ttft_ms: Some(3000), tpot_ms: Some(50), placement: Placement::Cheapest });
        assert_eq!(g(1), ObjectiveGoals { ttft_ms: Some(500), tpot_ms: None, placement: Placement::Fastest });
        let e = err(&text.replace("'1.01'", "cheap"));
        assert!(e.contains("line 5") && e.contains("igw.dev/cost-per-hour: \"cheap\" is not a positive number"), "{e}");
        let e = err(&text.replace("placement: cheapest", "placement: cheap"));
        assert!(e.contains("line 9") && e.contains("\"cheap\" is neither fastest nor cheapest"), "{e}");
        let e = err(&text.replace("  slo: {ttftMs: 3000, tpotMs: 50}\n", ""));
        assert!(e.contains("line 9") && e.contains("cheapest needs an slo"), "{e}");
        let e = err(&text.replace("ttftMs: 500", "ttftMs: 0"));
        assert!(e.contains("slo.ttftMs: 0 is not from 1 to 3600000 ms"), "{e}");
        let e = err(&text.replace("tpotMs: 50}", "tpotMs: 50, p99: 1}"));
        assert!(e.contains("p99"), "{e}");
        let e = err(&text.replace("    labels:", "    lables:"));
        assert!(e.contains("line 6"), "an endpoint that is neither form: {e}");
        assert!(e.contains("unknown field `lables`"), "{e}");
    }

    #[test]
    fn errors_name_the_line_and_field() {
        let e = err(&GOOD.replace("  engine: sglang\n", "  engine: sglang\n  colour: blue\n"));
        assert!(e.contains("colour") && e.contains("line 11"), "{e}");
        let e = err(&GOOD.replace("10.0.0.3:8000", "10.0.0.3"));
        assert!(e.contains("line 9") && e.contains("\"10.0.0.3\" is not an ip:port"), "{e}");
        let e = err(&GOOD.replace("engine: sglang", "engine: tgi"));
        assert!(e.contains("line 10") && e.contains("unknown engine \"tgi\""), "{e}");
        let e = err(&GOOD.replace("models: [bge]", "models: [llama]"));
        assert!(e.contains("line 11") && e.contains("already served by pool \"chat\" (line 6)"), "{e}");
        let e = err(&GOOD.replace("type: queue-scorer", "type: queue-scorerz"));
        assert!(e.contains("line 14") && e.contains("queue-scorerz"), "{e}");
        let e = err(&GOOD.replace("modelRewrite: llama\n", "modelRewrite: bge\n"));
        assert!(e.contains("served by pools \"embed\" and \"chat\""), "{e}");
        let e = err(&GOOD.replace("policy: least-queue", "policy: fastest"));
        assert!(e.contains("line 7") && e.contains("fastest"), "{e}");
        let e = err(&format!("{GOOD}defaultPool: gpu\n"));
        assert!(e.contains("defaultPool: no pool is named \"gpu\""), "{e}");
        let e = err(&GOOD.replace("  policy: least-queue\n", "  policy: igw\n  schedulerConfigFile: x.yaml\n"));
        assert!(e.contains("at most one of"), "{e}");
    }

    #[test]
    fn scheduler_config_files_are_read_relative_to_the_file() {
        let dir = std::env::temp_dir().join(format!("igw-gwcfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("epp.yaml"), igw_sched::config::DEFAULT_CONFIG).unwrap();
        let text = "pools:\n- name: p\n  endpoints: [10.0.0.1:80]\n  schedulerConfigFile: epp.yaml\n";
        let plan = parse(text, &dir.join("gw.yaml"), "igw").unwrap();
        assert_eq!(plan.files, [dir.join("gw.yaml"), dir.join("epp.yaml")]);
        std::fs::write(dir.join("epp.yaml"), "plugins:\n- type: nope\n").unwrap();
        let e = format!("{:#}", parse(text, &dir.join("gw.yaml"), "igw").unwrap_err());
        assert!(e.contains("line 4: pool \"p\": schedulerConfigFile") && e.contains("line 2"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
