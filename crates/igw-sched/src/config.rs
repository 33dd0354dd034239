//! The upstream `EndpointPickerConfig` file (`inference.networking.x-k8s.io/v1alpha1`), decoded
//! strictly, defaulted as upstream does, and turned into a [`Scheduler`].
//!
//! Plugin types igw schedules with are built from their parameters; types upstream configs list
//! for other purposes (parsers, data sources, flow-control policies, producers) are accepted.
//! Any other type — including upstream's Go test plugins (`test-*`, `mock-*`) — is an error
//! naming the plugin and its line.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::detector::UtilizationDetector;
use crate::prefix::PrefixConfig;
use crate::scheduler::{Picker, Scheduler};
use crate::scoring::Scorer;

/// Feature gates upstream registers.
pub const FEATURE_GATES: &[&str] = &["flowControl", "enableLegacyMetrics", "dataLayer"];

/// Plugin types accepted but not used for scheduling.
pub const ACCEPTED_TYPES: &[&str] = &[
    "openai-parser",
    "vllmgrpc-parser",
    "passthrough-parser",
    "metrics-data-source",
    "core-metrics-extractor",
    "k8s-notification-source",
    "endpoint-notification-source",
    "inflight-load-producer",
    "approx-prefix-cache-producer",
    "fcfs-ordering-policy",
    "edf-ordering-policy",
    "slo-deadline-ordering-policy",
    "global-strict-fairness-policy",
    "round-robin-fairness-policy",
    "static-usage-limit-policy",
    "single-profile-handler",
    "request-attribute-reporter",
    // The predicted-latency picker admits by SLO itself (a sheddable request no endpoint can serve
    // within its SLO gets 429): the admitter is accepted as the statement of that intent.
    "latency-slo-admitter",
    // Conformance test plugins: they configure the ext_proc adapter (steering header, served
    // endpoint verifier), not the scheduler; see [`EndpointPickerConfig::has_plugin_type`].
    "header-based-testing-filter",
    "destination-endpoint-served-verifier",
];

/// A decode or validation error, with the line it refers to when known.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The YAML does not decode into an EndpointPickerConfig (unknown field, wrong type, ...).
    #[error("invalid EndpointPickerConfig: {0}")]
    Decode(String),
    /// A plugin has a type igw does not know.
    #[error("line {line}: plugin {name:?} has unknown type {kind:?}")]
    UnknownPlugin {
        /// Plugin name.
        name: String,
        /// Its type.
        kind: String,
        /// Line of the plugin entry.
        line: u64,
    },
    /// A plugin's parameters are invalid.
    #[error("line {line}: plugin {name:?} ({kind}): invalid parameters: {reason}")]
    Parameters {
        /// Plugin name.
        name: String,
        /// Its type.
        kind: String,
        /// Line of the plugin entry.
        line: u64,
        /// What is wrong.
        reason: String,
    },
    /// Anything else (unknown feature gate, bad reference, duplicate names, ...).
    #[error("{0}")]
    Invalid(String),
}

/// One `plugins[]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSpec {
    /// Name (defaults to the type).
    pub name: Option<String>,
    /// Registered plugin type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Parameters, passed to the plugin.
    pub parameters: Option<serde_json::Value>,
}

/// A reference to a plugin in a profile, with its weight.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PluginRef {
    /// The plugin's name.
    pub plugin_ref: String,
    /// Scorer weight (default 1).
    pub weight: Option<f64>,
}

/// One `schedulingProfiles[]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileSpec {
    /// Profile name.
    pub name: String,
    /// Plugins in order.
    #[serde(default)]
    pub plugins: Vec<PluginRef>,
}

/// `saturationDetector`: a plugin reference, or (older files) the thresholds inline.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SaturationDetectorSpec {
    /// The detector plugin.
    pub plugin_ref: Option<String>,
    /// Inline queue threshold.
    pub queue_depth_threshold: Option<f64>,
    /// Inline KV threshold.
    pub kv_cache_util_threshold: Option<f64>,
    /// Inline staleness threshold (Go duration).
    pub metrics_staleness_threshold: Option<String>,
}

/// `dataLayer.sources[]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataSourceSpec {
    /// The source plugin.
    pub plugin_ref: String,
    /// Its extractors.
    #[serde(default)]
    pub extractors: Vec<RefOnly>,
}

/// A bare `{pluginRef}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RefOnly {
    /// The plugin.
    pub plugin_ref: String,
}

/// `dataLayer`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataLayerSpec {
    /// Sources.
    #[serde(default)]
    pub sources: Vec<DataSourceSpec>,
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointPickerConfig {
    /// `inference.networking.x-k8s.io/v1alpha1`.
    pub api_version: Option<String>,
    /// `EndpointPickerConfig`.
    pub kind: Option<String>,
    /// Feature gates.
    #[serde(default)]
    pub feature_gates: Vec<String>,
    /// Plugins, with their source locations.
    #[serde(default)]
    pub plugins: Vec<Spanned<PluginSpec>>,
    /// Scheduling profiles.
    #[serde(default)]
    pub scheduling_profiles: Vec<ProfileSpec>,
    /// Saturation detector.
    pub saturation_detector: Option<SaturationDetectorSpec>,
    /// Data layer.
    pub data_layer: Option<DataLayerSpec>,
    /// Flow control (honoured only with the `flowControl` gate).
    pub flow_control: Option<crate::flow::FlowControlConfig>,
    /// Request parser.
    pub parser: Option<RefOnly>,
}

/// Upstream's built-in default configuration (no file given).
pub const DEFAULT_CONFIG: &str = "apiVersion: inference.networking.x-k8s.io/v1alpha1
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

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PrefixParams {
    auto_tune: Option<bool>,
    block_size_tokens: Option<usize>,
    max_prefix_blocks_to_match: Option<usize>,
    max_prefix_tokens_to_match: Option<usize>,
    lru_capacity_per_server: Option<usize>,
    /// Deprecated upstream parameter (characters); ignored as upstream does.
    block_size: Option<usize>,
    /// igw extension: `igw` (default) or `upstream` prefix matching.
    igw_match_mode: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TokenLoadParams {
    queue_threshold_tokens: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NoHitLruParams {
    lru_size: Option<usize>,
    // Which prefix plugin to read: igw has one prefix index per scheduler.
    #[allow(dead_code)]
    prefix_plugin_type: Option<String>,
    #[allow(dead_code)]
    prefix_plugin_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AffinityFilterParams {
    affinity_threshold: Option<f64>,
    exploration_probability: Option<f64>,
    #[serde(rename = "maxTTFTPenaltyMs")]
    max_ttft_penalty_ms: Option<f64>,
    ttft_source: Option<String>,
    peak_prefill_throughput: Option<f64>,
    #[allow(dead_code)]
    prefix_match_info_producer_name: Option<String>,
    #[allow(dead_code)]
    in_flight_load_producer_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LoadAwareParams {
    threshold: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PickerParams {
    #[allow(dead_code)] // validated only: the adapter decides how many endpoints it sends
    max_num_of_endpoints: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DetectorParams {
    queue_depth_threshold: Option<f64>,
    kv_cache_util_threshold: Option<f64>,
    metrics_staleness_threshold: Option<String>,
    headroom: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LatencyParams {
    /// Forgetting factor of each endpoint's model, (0.5, 1].
    forgetting: Option<f64>,
    /// Samples before an endpoint's own model is trusted fully.
    trust_samples: Option<u32>,
    /// Probability of an exploring pick, [0, 0.5].
    exploration_probability: Option<f64>,
    /// Cold-start TTFT of a tiny prompt on an idle engine, ms.
    prior_ttft_base_ms: Option<f64>,
    /// Cold-start prefill time per uncached prompt token, µs.
    prior_prefill_per_token_us: Option<f64>,
    /// Cold-start decode step of a batch of one, ms.
    prior_step_ms: Option<f64>,
    /// Cold-start extra TTFT per request queued ahead, ms.
    prior_wait_per_request_ms: Option<f64>,
}

enum Built {
    Scorer(Scorer, Option<PrefixConfig>),
    /// `no-hit-lru-scorer` with its `lruSize`.
    NoHitLru(usize),
    /// `prefix-cache-affinity-filter`.
    Affinity(crate::affinity::AffinityFilter),
    /// `latency-scorer` / `predicted-latency-producer`: the predicted-latency picker.
    Latency(Option<crate::latency::LatencyConfig>),
    Picker(Picker),
    Detector(UtilizationDetector),
    Other,
}

fn params<T: Default + for<'de> Deserialize<'de>>(p: &Spanned<PluginSpec>, name: &str) -> Result<T, ConfigError> {
    match &p.value.parameters {
        None | Some(serde_json::Value::Null) => Ok(T::default()),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| ConfigError::Parameters {
            name: name.to_string(),
            kind: p.value.kind.clone(),
            line: p.defined.line(),
            reason: e.to_string(),
        }),
    }
}

fn duration(s: &str, what: &str) -> Result<Duration, ConfigError> {
    crate::flow::quantity::parse_duration(s).map_err(|e| ConfigError::Invalid(format!("{what}: {e}")))
}

fn build(p: &Spanned<PluginSpec>, name: &str) -> Result<Built, ConfigError> {
    let kind = p.value.kind.as_str();
    let bad = |reason: String| ConfigError::Parameters {
        name: name.into(),
        kind: kind.into(),
        line: p.defined.line(),
        reason,
    };
    Ok(match kind {
        "queue-scorer" => Built::Scorer(Scorer::Queue, None),
        "kv-cache-utilization-scorer" => Built::Scorer(Scorer::KvCache, None),
        "running-requests-size-scorer" => Built::Scorer(Scorer::RunningRequests, None),
        "lora-affinity-scorer" => Built::Scorer(Scorer::LoraAffinity, None),
        "active-request-scorer" => Built::Scorer(Scorer::ActiveRequest, None),
        "token-load-scorer" => {
            let t: TokenLoadParams = params(p, name)?;
            Built::Scorer(Scorer::TokenLoad { threshold: t.queue_threshold_tokens.unwrap_or(4_194_304) }, None)
        }
        "prefix-cache-scorer" => {
            let q: PrefixParams = params(p, name)?;
            let _ = q.block_size;
            let mut cfg = match q.igw_match_mode.as_deref() {
                None | Some("igw") => PrefixConfig::default(),
                Some("upstream") => PrefixConfig::upstream(),
                Some(other) => {
                    return Err(ConfigError::Parameters {
                        name: name.into(),
                        kind: kind.into(),
                        line: p.defined.line(),
                        reason: format!("igwMatchMode must be igw or upstream, not {other:?}"),
                    });
                }
            };
            cfg.auto_tune = q.auto_tune.unwrap_or(cfg.auto_tune);
            cfg.block_size_tokens = q.block_size_tokens.unwrap_or(cfg.block_size_tokens);
            cfg.max_prefix_blocks = q.max_prefix_blocks_to_match.unwrap_or(cfg.max_prefix_blocks);
            cfg.max_prefix_tokens = q.max_prefix_tokens_to_match.unwrap_or(cfg.max_prefix_tokens);
            cfg.lru_capacity_per_server = q.lru_capacity_per_server.unwrap_or(cfg.lru_capacity_per_server);
            cfg.validate().map_err(|reason| ConfigError::Parameters {
                name: name.into(),
                kind: kind.into(),
                line: p.defined.line(),
                reason: reason.to_string(),
            })?;
            Built::Scorer(Scorer::Prefix, Some(cfg))
        }
        "session-affinity-scorer" => Built::Scorer(Scorer::SessionAffinity, None),
        "latency-scorer" => Built::Latency(None),
        "predicted-latency-producer" => {
            let q: LatencyParams = params(p, name)?;
            let mut c = crate::latency::LatencyConfig::default();
            if let Some(f) = q.forgetting {
                if !(f > 0.5 && f <= 1.0) {
                    return Err(bad(format!("forgetting must be in (0.5, 1], not {f}")));
                }
                c.forgetting = f;
            }
            c.trust_samples = q.trust_samples.unwrap_or(c.trust_samples);
            if let Some(e) = q.exploration_probability {
                if !(0.0..=0.5).contains(&e) {
                    return Err(bad(format!("explorationProbability must be in [0, 0.5], not {e}")));
                }
                c.exploration = e;
            }
            let positive = |v: Option<f64>, what: &str, scale: f64, slot: &mut f64| -> Result<(), ConfigError> {
                match v {
                    Some(x) if x.is_finite() && x > 0.0 => {
                        *slot = x * scale;
                        Ok(())
                    }
                    Some(x) => Err(bad(format!("{what} must be a positive number, not {x}"))),
                    None => Ok(()),
                }
            };
            positive(q.prior_ttft_base_ms, "priorTtftBaseMs", 1e-3, &mut c.prior.ttft_base_s)?;
            positive(q.prior_prefill_per_token_us, "priorPrefillPerTokenUs", 1e-6, &mut c.prior.prefill_per_token_s)?;
            positive(q.prior_step_ms, "priorStepMs", 1e-3, &mut c.prior.step_s)?;
            positive(q.prior_wait_per_request_ms, "priorWaitPerRequestMs", 1e-3, &mut c.prior.wait_per_request_s)?;
            Built::Latency(Some(c))
        }
        "no-hit-lru-scorer" => {
            let q: NoHitLruParams = params(p, name)?;
            Built::NoHitLru(q.lru_size.unwrap_or(crate::affinity::DEFAULT_LRU_SIZE).max(1))
        }
        "prefix-cache-affinity-filter" => {
            let q: AffinityFilterParams = params(p, name)?;
            match q.ttft_source.as_deref() {
                None | Some("prefillThroughput") => {}
                Some("latencyPredictor") => {
                    return Err(bad("ttftSource latencyPredictor is not supported: igw-latency predicts TTFT itself \
                                    (policy igw-latency); use prefillThroughput"
                        .into()));
                }
                Some(other) => return Err(bad(format!("ttftSource must be prefillThroughput, not {other:?}"))),
            }
            let d = crate::affinity::AffinityFilter::default();
            let f = crate::affinity::AffinityFilter {
                threshold: q.affinity_threshold.unwrap_or(d.threshold),
                exploration: q.exploration_probability.unwrap_or(d.exploration),
                max_ttft_penalty_ms: q.max_ttft_penalty_ms.unwrap_or(d.max_ttft_penalty_ms),
                peak_prefill_tps: q.peak_prefill_throughput.unwrap_or(d.peak_prefill_tps),
            };
            f.validate().map_err(bad)?;
            Built::Affinity(f)
        }
        "load-aware-scorer" => {
            let t: LoadAwareParams = params(p, name)?;
            Built::Scorer(Scorer::LoadAware { threshold: t.threshold.unwrap_or(128) }, None)
        }
        "max-score-picker" | "random-picker" | "weighted-random-picker" => {
            // maxNumOfEndpoints is the adapter's business (`igw epp --max-endpoints`); parsed so
            // that a wrong type is still an error.
            let PickerParams { max_num_of_endpoints: _ } = params(p, name)?;
            Built::Picker(match kind {
                "max-score-picker" => Picker::MaxScore,
                "random-picker" => Picker::Random,
                _ => Picker::WeightedRandom,
            })
        }
        "concurrency-detector" => {
            // Refused rather than silently replaced by another detector.
            return Err(ConfigError::Parameters {
                name: name.into(),
                kind: kind.into(),
                line: p.defined.line(),
                reason: "igw does not implement concurrency-detector; use utilization-detector (its in-flight \
                         counting is built in: requests igw sent since the last scrape count as waiting)"
                    .into(),
            });
        }
        "utilization-detector" => {
            let d: DetectorParams = params(p, name)?;
            let mut u = UtilizationDetector::default();
            let headroom = d.headroom.unwrap_or(0.0);
            u.queue_depth_threshold = d.queue_depth_threshold.unwrap_or(u.queue_depth_threshold) * (1.0 + headroom);
            u.kv_cache_util_threshold = d.kv_cache_util_threshold.unwrap_or(u.kv_cache_util_threshold);
            if !(u.kv_cache_util_threshold > 0.0 && u.kv_cache_util_threshold <= 1.0) {
                return Err(ConfigError::Parameters {
                    name: name.into(),
                    kind: kind.into(),
                    line: p.defined.line(),
                    reason: "kvCacheUtilThreshold must be in (0, 1]".into(),
                });
            }
            if let Some(s) = &d.metrics_staleness_threshold {
                u.staleness = duration(s, "metricsStalenessThreshold")?;
            }
            Built::Detector(u)
        }
        k if ACCEPTED_TYPES.contains(&k) => Built::Other,
        _ => {
            return Err(ConfigError::UnknownPlugin { name: name.into(), kind: kind.into(), line: p.defined.line() });
        }
    })
}

impl EndpointPickerConfig {
    /// The flow control configuration when the `flowControl` feature gate is on (upstream's
    /// defaults for everything the `flowControl` section leaves out), else `None`. A
    /// `usageLimitPolicyPluginRef` may name a declared plugin; its type is used.
    pub fn flow_config(&self) -> Result<Option<crate::flow::FlowConfig>, ConfigError> {
        if !self.feature_gates.iter().any(|g| g == "flowControl") {
            return Ok(None);
        }
        let mut section = self.flow_control.clone().unwrap_or_default();
        if let Some(r) = &section.usage_limit_policy_plugin_ref
            && let Some(p) = self.plugins.iter().find(|p| p.value.name.as_deref() == Some(r.as_str()))
        {
            section.usage_limit_policy_plugin_ref = Some(p.value.kind.clone());
        }
        section
            .resolve(&crate::flow::FlowConfig::upstream(), None)
            .map(Some)
            .map_err(|e| ConfigError::Invalid(format!("flowControl: {e}")))
    }

    /// True if a plugin of type `kind` is declared (e.g. `header-based-testing-filter`).
    pub fn has_plugin_type(&self, kind: &str) -> bool {
        self.plugins.iter().any(|p| p.value.kind == kind)
    }

    /// Decodes a file's text strictly (unknown fields are errors, with their location).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let cfg: EndpointPickerConfig = serde_saphyr::from_str(text).map_err(|e| ConfigError::Decode(e.to_string()))?;
        if let Some(kind) = &cfg.kind
            && kind != "EndpointPickerConfig"
        {
            return Err(ConfigError::Invalid(format!("kind must be EndpointPickerConfig, not {kind:?}")));
        }
        Ok(cfg)
    }

    /// Builds the scheduler, applying upstream's defaults: no profiles → one `default` profile
    /// with every scorer and picker; no picker → `max-score-picker`; weight default 1.
    pub fn build(&self, name: &str) -> Result<Scheduler, ConfigError> {
        for g in &self.feature_gates {
            if !FEATURE_GATES.contains(&g.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "unknown feature gate {g:?}; known: {}",
                    FEATURE_GATES.join(", ")
                )));
            }
        }
        let mut plugins: BTreeMap<String, (Built, u64)> = BTreeMap::new();
        let mut order = Vec::new();
        for p in &self.plugins {
            let pname = p.value.name.clone().unwrap_or_else(|| p.value.kind.clone());
            let built = build(p, &pname)?;
            if plugins.insert(pname.clone(), (built, p.defined.line())).is_some() {
                return Err(ConfigError::Invalid(format!(
                    "line {}: duplicate plugin name {pname:?}",
                    p.defined.line()
                )));
            }
            order.push(pname);
        }
        let refs: Vec<PluginRef> = match self.scheduling_profiles.as_slice() {
            [] => order.iter().map(|n| PluginRef { plugin_ref: n.clone(), weight: None }).collect(),
            [one] => {
                if one.name.is_empty() {
                    return Err(ConfigError::Invalid("a scheduling profile needs a name".into()));
                }
                one.plugins.clone()
            }
            _ => {
                return Err(ConfigError::Invalid(
                    "igw runs one scheduling profile (single-profile-handler); several were given".into(),
                ));
            }
        };
        let mut scorers = Vec::new();
        let mut picker = None;
        let mut prefix = None;
        let mut latency = false;
        let mut lru_size = None;
        let mut affinity = None;
        for r in &refs {
            let (built, _) = plugins
                .get(&r.plugin_ref)
                .ok_or_else(|| ConfigError::Invalid(format!("pluginRef {:?} names no plugin", r.plugin_ref)))?;
            match built {
                Built::Scorer(s, p) => {
                    if p.is_some() {
                        prefix.clone_from(p);
                    }
                    scorers.push((*s, r.weight.unwrap_or(1.0)));
                }
                Built::NoHitLru(size) => {
                    lru_size = Some(*size);
                    scorers.push((Scorer::NoHitLru, r.weight.unwrap_or(1.0)));
                }
                Built::Affinity(f) => affinity = Some(*f),
                Built::Picker(p) => picker = Some(*p),
                Built::Latency(_) => latency = true,
                Built::Detector(_) | Built::Other => {}
            }
        }
        // The predicted-latency picker decides alone: every signal is already in its seconds.
        let latency_config = plugins.values().find_map(|(b, _)| match b {
            Built::Latency(Some(c)) => Some(*c),
            _ => None,
        });
        if latency {
            if let Some((s, _)) = scorers.iter().find(|(s, _)| *s != Scorer::Prefix) {
                return Err(ConfigError::Invalid(format!(
                    "latency-scorer ranks endpoints by predicted latency alone; remove {} from its profile \
                     (queue, KV and LoRA load are inputs of the prediction)",
                    s.type_name()
                )));
            }
            let mut sched = Scheduler::new(
                name,
                vec![],
                Picker::PredictedLatency,
                prefix.or_else(|| Some(PrefixConfig::default())),
            )
            .with_in_flight_blending(true)
            .with_staleness_filter(Some(Duration::from_secs(1)));
            if let Some(c) = latency_config {
                sched = sched.with_latency_config(c);
            }
            return Ok(sched);
        }
        let picker = picker
            .or_else(|| plugins.values().find_map(|(b, _)| if let Built::Picker(p) = b { Some(*p) } else { None }));
        if affinity.is_some() && prefix.is_none() {
            return Err(ConfigError::Invalid(
                "prefix-cache-affinity-filter reads the prefix-cache-scorer's matches; add a prefix-cache-scorer"
                    .into(),
            ));
        }
        let mut sched = Scheduler::new(name, scorers, picker.unwrap_or(Picker::MaxScore), prefix)
            .with_affinity_filter(affinity)
            .with_no_hit_lru_size(lru_size.unwrap_or(crate::affinity::DEFAULT_LRU_SIZE));
        let detector_ref = self.saturation_detector.as_ref().and_then(|d| d.plugin_ref.clone());
        let detector = match &detector_ref {
            Some(r) => match plugins.get(r) {
                Some((Built::Detector(d), _)) => Some(*d),
                Some(_) => return Err(ConfigError::Invalid(format!("saturationDetector {r:?} is not a detector"))),
                None => {
                    return Err(ConfigError::Invalid(format!("saturationDetector pluginRef {r:?} names no plugin")));
                }
            },
            None => plugins.values().find_map(|(b, _)| if let Built::Detector(d) = b { Some(*d) } else { None }),
        };
        let mut detector = detector.unwrap_or_default();
        if let Some(inline) = &self.saturation_detector {
            if let Some(q) = inline.queue_depth_threshold {
                detector.queue_depth_threshold = q;
            }
            if let Some(k) = inline.kv_cache_util_threshold {
                detector.kv_cache_util_threshold = k;
            }
            if let Some(s) = &inline.metrics_staleness_threshold {
                detector.staleness = duration(s, "saturationDetector.metricsStalenessThreshold")?;
            }
        }
        sched = sched.with_detector(detector);
        Ok(sched)
    }
}

/// Loads a scheduler from EndpointPickerConfig text.
pub fn scheduler_from_yaml(text: &str) -> Result<Scheduler, ConfigError> {
    EndpointPickerConfig::parse(text)?.build("config")
}

/// Loads the EndpointPickerConfig embedded in the upstream Helm chart's values file: the first
/// `inferenceExtension.pluginsCustomConfig` entry when there is one, otherwise the built-in
/// config named by `pluginsConfigFile` (`default-plugins.yaml` = upstream's default).
pub fn scheduler_from_helm_values(text: &str) -> Result<Scheduler, ConfigError> {
    let v: serde_json::Value = serde_saphyr::from_str(text).map_err(|e| ConfigError::Decode(e.to_string()))?;
    let ext = &v["inferenceExtension"];
    if let Some(custom) = ext["pluginsCustomConfig"].as_object()
        && let Some((_, body)) = custom.iter().next()
    {
        let body =
            body.as_str().ok_or_else(|| ConfigError::Invalid("pluginsCustomConfig entries must be text".into()))?;
        return scheduler_from_yaml(body);
    }
    match ext["pluginsConfigFile"].as_str().unwrap_or("default-plugins.yaml") {
        "default-plugins.yaml" => scheduler_from_yaml(DEFAULT_CONFIG),
        other => Err(ConfigError::Invalid(format!("pluginsConfigFile {other:?} is not a built-in config"))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/upstream/epp-config/");
        std::fs::read_to_string(format!("{p}{name}")).unwrap()
    }

    #[test]
    fn latency_scorer_builds_the_predicted_latency_picker() {
        let text = "apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: predicted-latency-producer
  parameters: {forgetting: 0.98, explorationProbability: 0.0, priorStepMs: 20}
- type: latency-scorer
- type: prefix-cache-scorer
  parameters: {blockSizeTokens: 32}
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: latency-scorer
  - pluginRef: prefix-cache-scorer
";
        let s = scheduler_from_yaml(text).unwrap();
        assert_eq!(s.picker(), Picker::PredictedLatency);
        let c = s.latency_model().unwrap().config();
        assert_eq!((c.forgetting, c.exploration, c.prior.step_s), (0.98, 0.0, 0.02));
        assert_eq!(s.prefix_index().unwrap().config().block_size_tokens, 32);
        let mixed = text
            .replace("  - pluginRef: prefix-cache-scorer\n", "  - pluginRef: queue-scorer\n")
            .replace("- type: latency-scorer\n", "- type: latency-scorer\n- type: queue-scorer\n");
        let e = scheduler_from_yaml(&mixed).unwrap_err().to_string();
        assert!(e.contains("queue-scorer") && e.contains("latency-scorer"), "{e}");
        let bad = text.replace("forgetting: 0.98", "forgetting: 2");
        let e = scheduler_from_yaml(&bad).unwrap_err().to_string();
        assert!(e.contains("forgetting") && e.contains("line 4"), "{e}");
    }

    #[test]
    fn llm_ds_optimized_baseline_loads_as_the_llm_d_policy() {
        let text = "\
plugins:
- type: prefix-cache-affinity-filter
  parameters: {affinityThreshold: 0.9, maxTTFTPenaltyMs: 5000}
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
  parameters: {igwMatchMode: upstream}
- type: no-hit-lru-scorer
  parameters: {lruSize: 64}
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: prefix-cache-affinity-filter
  - pluginRef: queue-scorer
    weight: 2
  - pluginRef: kv-cache-utilization-scorer
    weight: 2
  - pluginRef: prefix-cache-scorer
    weight: 3
  - pluginRef: no-hit-lru-scorer
    weight: 2
";
        let s = scheduler_from_yaml(text).unwrap();
        let named = Scheduler::from_policy("llm-d").unwrap();
        assert_eq!(s.scorer_weights(), named.scorer_weights());
        let f = s.affinity_filter().unwrap();
        assert_eq!((f.threshold, f.max_ttft_penalty_ms, f.peak_prefill_tps), (0.9, 5000.0, 15_928.0));
        assert_eq!(named.affinity_filter(), Some(&crate::affinity::AffinityFilter::default()));
        let e = scheduler_from_yaml(&text.replace("affinityThreshold: 0.9", "affinityThreshold: 1.5")).unwrap_err();
        assert!(e.to_string().contains("line 2") && e.to_string().contains("affinityThreshold"), "{e}");
        let e =
            scheduler_from_yaml(&text.replace("maxTTFTPenaltyMs: 5000", "ttftSource: latencyPredictor")).unwrap_err();
        assert!(e.to_string().contains("latencyPredictor"), "{e}");
        let e = scheduler_from_yaml(&text.replace("lruSize: 64", "lruSizes: 64")).unwrap_err();
        assert!(e.to_string().contains("lruSizes"), "{e}");
        let no_prefix = text.replace("  - pluginRef: prefix-cache-scorer\n    weight: 3\n", "");
        let e = scheduler_from_yaml(&no_prefix).unwrap_err();
        assert!(e.to_string().contains("add a prefix-cache-scorer"), "{e}");
    }

    #[test]
    fn default_config_is_upstreams() {
        let s = scheduler_from_yaml(DEFAULT_CONFIG).unwrap();
        assert_eq!(
            s.scorer_weights(),
            vec![("queue-scorer", 2.0), ("kv-cache-utilization-scorer", 2.0), ("prefix-cache-scorer", 3.0)]
        );
        assert!(s.prefix_index().is_some());
    }

    #[test]
    fn upstream_files_load_or_name_the_unknown_plugin() {
        let s = scheduler_from_yaml(&fixture("test_integration_epp_testdata_default-config.yaml")).unwrap();
        assert_eq!(s.scorer_weights().len(), 4);
        let e = scheduler_from_yaml(&fixture("test_integration_epp_testdata_datalayer-config.yaml")).unwrap_err();
        assert!(e.to_string().contains("mock-metrics-source"), "{e}");
        let e = scheduler_from_yaml(&fixture("test_testdata_configloader_1_test.yaml")).unwrap_err();
        assert!(matches!(&e, ConfigError::UnknownPlugin { kind, line: 4, .. } if kind == "test-one"), "{e}");
        let s = scheduler_from_helm_values(&fixture("config_charts_inferencepool_values.yaml")).unwrap();
        assert_eq!(s.scorer_weights().len(), 3);
    }

    #[test]
    fn strict_decoding_and_validation() {
        let e = scheduler_from_yaml("plugins:\n- type: queue-scorer\n  nmae: x\n").unwrap_err();
        assert!(e.to_string().contains("nmae"), "{e}");
        let e = scheduler_from_yaml("featureGates: [warpDrive]\nplugins: []\n").unwrap_err();
        assert!(e.to_string().contains("warpDrive"));
        let e = scheduler_from_yaml(
            "plugins:\n- type: queue-scorer\nschedulingProfiles:\n- name: d\n  plugins:\n  - pluginRef: nope\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("nope"));
        let e = scheduler_from_yaml("plugins:\n- type: prefix-cache-scorer\n  parameters:\n    blockSizeTokens: 0\n")
            .unwrap_err();
        assert!(matches!(e, ConfigError::Parameters { line: 2, .. }), "{e}");
        let e =
            scheduler_from_yaml("plugins:\n- type: token-load-scorer\n  parameters: {queueThresholdTokens: many}\n")
                .unwrap_err();
        assert!(e.to_string().contains("token-load-scorer"), "{e}");
        // No profile: every scorer joins `default` with weight 1.
        let s = scheduler_from_yaml("plugins:\n- type: queue-scorer\n- type: lora-affinity-scorer\n").unwrap();
        assert_eq!(s.scorer_weights(), vec![("queue-scorer", 1.0), ("lora-affinity-scorer", 1.0)]);
    }

    #[test]
    fn conformance_plugins_are_visible_to_the_adapter() {
        let text = "plugins:\n- type: header-based-testing-filter\n- type: destination-endpoint-served-verifier\n- type: queue-scorer\n";
        let cfg = EndpointPickerConfig::parse(text).unwrap();
        assert!(cfg.has_plugin_type("header-based-testing-filter"));
        assert!(cfg.has_plugin_type("destination-endpoint-served-verifier"));
        assert!(!EndpointPickerConfig::parse(DEFAULT_CONFIG).unwrap().has_plugin_type("header-based-testing-filter"));
        assert_eq!(cfg.build("t").unwrap().scorer_weights(), vec![("queue-scorer", 1.0)]);
    }

    #[test]
    fn flow_control_follows_its_feature_gate() {
        let section = "flowControl:\n  maxRequests: 100\n  defaultRequestTTL: 30s\n  priorityBands:\n  - priority: 10\n    fairnessPolicyRef: vtc-fairness-policy\n";
        let off = EndpointPickerConfig::parse(&format!("plugins:\n- type: queue-scorer\n{section}")).unwrap();
        assert_eq!(off.flow_config().unwrap(), None, "no gate, no flow control");
        let on = EndpointPickerConfig::parse(&format!(
            "featureGates: [flowControl]\nplugins:\n- type: queue-scorer\n{section}"
        ))
        .unwrap();
        let fc = on.flow_config().unwrap().unwrap();
        assert_eq!(fc.max_requests, 100);
        assert_eq!(fc.default_ttl, Some(std::time::Duration::from_secs(30)));
        assert_eq!(fc.band_for(10).fairness, crate::flow::FairnessPolicy::Vtc);
        assert_eq!(fc.band_for(0).fairness, crate::flow::FairnessPolicy::GlobalStrict, "upstream's default band");
        let bad = EndpointPickerConfig::parse("featureGates: [flowControl]\nflowControl:\n  priorityBands:\n  - priority: 1\n    fairnessPolicyRef: nope\n")
            .unwrap();
        assert!(bad.flow_config().unwrap_err().to_string().contains("nope"));
    }

    #[test]
    fn weighted_random_load_aware_and_refused_detectors() {
        let s = scheduler_from_yaml(
            "plugins:\n- type: load-aware-scorer\n  parameters: {threshold: 64}\n- type: weighted-random-picker\n",
        )
        .unwrap();
        assert_eq!(s.scorer_weights(), vec![("load-aware-scorer", 1.0)]);
        assert_eq!(s.picker(), Picker::WeightedRandom);
        let e = scheduler_from_yaml("plugins:\n- type: queue-scorer\n- type: concurrency-detector\n").unwrap_err();
        assert!(
            matches!(&e, ConfigError::Parameters { line: 3, .. }) && e.to_string().contains("utilization-detector"),
            "{e}"
        );
    }
}
