//! Engine metric mappings: which series of which engine feed which endpoint-metrics field.
//!
//! Built-ins follow upstream's `core-metrics-extractor` (`../shared/spec/scheduler.md` §1.1,
//! `../shared/spec/epp-protocol.md` §4.4): `vllm`, `sglang`, `trtllm-serve` and
//! `triton-tensorrt-llm`. User [`EngineConfig`]s replace a built-in of the same name entirely.
//! An endpoint's mapping is picked by its pod label (default key
//! [`igw_core::endpoint::ENGINE_TYPE_LABEL`]); a missing or empty label means the default engine.

use std::collections::BTreeMap;
use std::sync::Arc;

use igw_core::endpoint::{ENGINE_TYPE_LABEL, EndpointMeta};
use serde::{Deserialize, Serialize};

use crate::spec::{MetricSpec, SpecError, format_spec_list, parse_spec_list};

/// The engine name that may not be used by a config: it means "whatever the default is".
pub const RESERVED_ENGINE_NAME: &str = "default";

/// The engine used when an endpoint has no engine label and none is configured.
pub const DEFAULT_ENGINE: &str = "vllm";

/// How one engine exposes the metrics the picker needs. Each spec field is a list of
/// alternatives (first match wins); an empty list disables the field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineMapping {
    /// Engine name, matched against the engine-type pod label.
    pub name: String,
    /// Waiting-queue length gauge.
    pub queued: Vec<MetricSpec>,
    /// Running-batch size gauge.
    pub running: Vec<MetricSpec>,
    /// KV-cache utilisation gauge (fraction 0..1).
    pub kv_usage: Vec<MetricSpec>,
    /// LoRA info gauge (labels `max_lora`, `running_lora_adapters`, `waiting_lora_adapters`).
    pub lora: Vec<MetricSpec>,
    /// Cache-config info series whose labels carry block size and block count.
    pub cache_info: Vec<MetricSpec>,
    /// Label of `cache_info` holding the block size in tokens.
    pub cache_block_size_label: String,
    /// Label of `cache_info` holding the number of GPU blocks.
    pub cache_num_blocks_label: String,
    /// Gauge holding the block size (used when `cache_info` does not provide it).
    pub cache_block_size: Vec<MetricSpec>,
    /// Gauge holding the number of blocks (used when `cache_info` does not provide it).
    pub cache_num_blocks: Vec<MetricSpec>,
}

fn specs(list: &[&str]) -> Vec<MetricSpec> {
    list.iter().map(|s| MetricSpec::named(*s)).collect()
}

fn labelled(name: &str, label: &str, value: &str) -> Vec<MetricSpec> {
    vec![MetricSpec { name: name.to_owned(), labels: vec![(label.to_owned(), value.to_owned())] }]
}

impl EngineMapping {
    /// A mapping named `name` that reads nothing.
    pub fn empty(name: impl Into<String>) -> Self {
        EngineMapping {
            name: name.into(),
            queued: Vec::new(),
            running: Vec::new(),
            kv_usage: Vec::new(),
            lora: Vec::new(),
            cache_info: Vec::new(),
            cache_block_size_label: String::new(),
            cache_num_blocks_label: String::new(),
            cache_block_size: Vec::new(),
            cache_num_blocks: Vec::new(),
        }
    }

    /// vLLM (V1 names; KV usage falls back to the pre-0.11 `vllm:gpu_cache_usage_perc`).
    pub fn vllm() -> Self {
        EngineMapping {
            queued: specs(&["vllm:num_requests_waiting"]),
            running: specs(&["vllm:num_requests_running"]),
            kv_usage: specs(&["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"]),
            lora: specs(&["vllm:lora_requests_info"]),
            cache_info: specs(&["vllm:cache_config_info"]),
            cache_block_size_label: "block_size".into(),
            cache_num_blocks_label: "num_gpu_blocks".into(),
            ..Self::empty("vllm")
        }
    }

    /// SGLang.
    pub fn sglang() -> Self {
        EngineMapping {
            queued: specs(&["sglang:num_queue_reqs"]),
            running: specs(&["sglang:num_running_reqs"]),
            kv_usage: specs(&["sglang:token_usage"]),
            cache_info: specs(&["sglang:cache_config_info"]),
            cache_block_size_label: "page_size".into(),
            cache_num_blocks_label: "num_pages".into(),
            ..Self::empty("sglang")
        }
    }

    /// TensorRT-LLM's `trtllm-serve`.
    pub fn trtllm_serve() -> Self {
        EngineMapping {
            queued: specs(&["trtllm_num_requests_waiting"]),
            running: specs(&["trtllm_num_requests_running"]),
            kv_usage: specs(&["trtllm_kv_cache_utilization"]),
            cache_block_size: specs(&["trtllm_kv_cache_tokens_per_block"]),
            cache_num_blocks: specs(&["trtllm_kv_cache_max_blocks"]),
            ..Self::empty("trtllm-serve")
        }
    }

    /// Triton Inference Server with the TensorRT-LLM backend.
    pub fn triton_tensorrt_llm() -> Self {
        const REQ: &str = "nv_trt_llm_request_metrics";
        const KV: &str = "nv_trt_llm_kv_cache_block_metrics";
        EngineMapping {
            queued: labelled(REQ, "request_type", "waiting"),
            running: labelled(REQ, "request_type", "scheduled"),
            kv_usage: labelled(KV, "kv_cache_block_type", "fraction"),
            cache_block_size: labelled(KV, "kv_cache_block_type", "tokens_per"),
            cache_num_blocks: labelled(KV, "kv_cache_block_type", "max"),
            ..Self::empty("triton-tensorrt-llm")
        }
    }

    /// All built-in mappings.
    pub fn builtins() -> Vec<EngineMapping> {
        vec![Self::vllm(), Self::sglang(), Self::trtllm_serve(), Self::triton_tensorrt_llm()]
    }

    /// The distinct sample names this mapping reads (what [`crate::text::parse_filtered`] keeps).
    pub fn family_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::with_capacity(8);
        let all = [
            &self.queued,
            &self.running,
            &self.kv_usage,
            &self.lora,
            &self.cache_info,
            &self.cache_block_size,
            &self.cache_num_blocks,
        ];
        for spec in all.into_iter().flatten() {
            if !names.contains(&spec.name.as_str()) {
                names.push(&spec.name);
            }
        }
        names
    }

    /// Builds a mapping from a user config, parsing its spec strings.
    pub fn from_config(c: &EngineConfig) -> Result<Self, ConfigError> {
        if c.name.trim().is_empty() {
            return Err(ConfigError::EmptyName);
        }
        if c.name == RESERVED_ENGINE_NAME {
            return Err(ConfigError::ReservedName);
        }
        let p = |field: &'static str, s: &str| {
            parse_spec_list(s).map_err(|source| ConfigError::Spec { engine: c.name.clone(), field, source })
        };
        Ok(EngineMapping {
            name: c.name.clone(),
            queued: p("queuedRequestsSpec", &c.queued_requests_spec)?,
            running: p("runningRequestsSpec", &c.running_requests_spec)?,
            kv_usage: p("kvUsageSpec", &c.kv_usage_spec)?,
            lora: p("loraSpec", &c.lora_spec)?,
            cache_info: p("cacheInfoSpec", &c.cache_info_spec)?,
            cache_block_size_label: c.cache_block_size_label_name.clone(),
            cache_num_blocks_label: c.cache_num_blocks_label_name.clone(),
            cache_block_size: p("cacheBlockSizeSpec", &c.cache_block_size_spec)?,
            cache_num_blocks: p("cacheNumBlocksSpec", &c.cache_num_blocks_spec)?,
        })
    }

    /// This mapping as a config entry (spec lists rendered back to strings).
    pub fn to_config(&self) -> EngineConfig {
        EngineConfig {
            name: self.name.clone(),
            queued_requests_spec: format_spec_list(&self.queued),
            running_requests_spec: format_spec_list(&self.running),
            kv_usage_spec: format_spec_list(&self.kv_usage),
            lora_spec: format_spec_list(&self.lora),
            cache_info_spec: format_spec_list(&self.cache_info),
            cache_block_size_label_name: self.cache_block_size_label.clone(),
            cache_num_blocks_label_name: self.cache_num_blocks_label.clone(),
            cache_block_size_spec: format_spec_list(&self.cache_block_size),
            cache_num_blocks_spec: format_spec_list(&self.cache_num_blocks),
        }
    }
}

/// One `engineConfigs` entry of the `core-metrics-extractor` plugin (camelCase as upstream).
/// Spec fields are strings in [`crate::spec`] syntax; empty or absent disables the field.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Engine name (the engine-type label value). `default` is reserved.
    pub name: String,
    /// Waiting-queue spec.
    pub queued_requests_spec: String,
    /// Running-batch spec.
    pub running_requests_spec: String,
    /// KV-usage spec.
    pub kv_usage_spec: String,
    /// LoRA info spec.
    pub lora_spec: String,
    /// Cache-config info spec.
    pub cache_info_spec: String,
    /// Label of the cache info series holding the block size.
    pub cache_block_size_label_name: String,
    /// Label of the cache info series holding the block count.
    pub cache_num_blocks_label_name: String,
    /// Block-size gauge spec.
    pub cache_block_size_spec: String,
    /// Block-count gauge spec.
    pub cache_num_blocks_spec: String,
}

/// Parameters of the `core-metrics-extractor` plugin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ExtractorConfig {
    /// Pod label that names the engine (default [`ENGINE_TYPE_LABEL`]).
    pub engine_label_key: String,
    /// Engine for endpoints without the label (default [`DEFAULT_ENGINE`]).
    pub default_engine: String,
    /// User mappings; each replaces the built-in of the same name or adds a new engine.
    pub engine_configs: Vec<EngineConfig>,
}

impl Default for ExtractorConfig {
    fn default() -> Self {
        ExtractorConfig {
            engine_label_key: ENGINE_TYPE_LABEL.to_owned(),
            default_engine: DEFAULT_ENGINE.to_owned(),
            engine_configs: Vec::new(),
        }
    }
}

/// A configuration error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// An engine config without a name.
    #[error("engine config without a name")]
    EmptyName,
    /// An engine config named `default`.
    #[error("engine name \"default\" is reserved")]
    ReservedName,
    /// Two user engine configs with the same name.
    #[error("engine {0:?} configured twice")]
    Duplicate(String),
    /// A spec string that does not parse.
    #[error("engine {engine:?} field {field}: {source}")]
    Spec {
        /// Engine name.
        engine: String,
        /// Config field name.
        field: &'static str,
        /// The parse error.
        #[source]
        source: SpecError,
    },
    /// The default engine names no known mapping.
    #[error("default engine {0:?} is not a known engine")]
    UnknownDefault(String),
}

/// An endpoint whose engine label names no mapping.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no metric mapping for engine {0:?}")]
pub struct UnknownEngine(pub String);

/// The set of engine mappings in force, and how endpoints pick one.
#[derive(Clone, Debug)]
pub struct EngineRegistry {
    label_key: String,
    default_engine: String,
    engines: BTreeMap<String, Arc<EngineMapping>>,
}

impl Default for EngineRegistry {
    /// The built-ins, default engine `vllm`, the standard label key.
    fn default() -> Self {
        Self::builtin()
    }
}

impl EngineRegistry {
    /// The built-in mappings with the default label key and default engine.
    pub fn builtin() -> Self {
        EngineRegistry {
            label_key: ENGINE_TYPE_LABEL.to_owned(),
            default_engine: DEFAULT_ENGINE.to_owned(),
            engines: EngineMapping::builtins().into_iter().map(|m| (m.name.clone(), Arc::new(m))).collect(),
        }
    }

    /// Built-ins overlaid with the user configuration.
    pub fn from_config(config: &ExtractorConfig) -> Result<Self, ConfigError> {
        let mut reg = Self::builtin();
        if !config.engine_label_key.is_empty() {
            reg.label_key.clone_from(&config.engine_label_key);
        }
        let mut seen = Vec::new();
        for c in &config.engine_configs {
            let m = EngineMapping::from_config(c)?;
            if seen.contains(&m.name) {
                return Err(ConfigError::Duplicate(m.name));
            }
            seen.push(m.name.clone());
            reg.engines.insert(m.name.clone(), Arc::new(m));
        }
        if !config.default_engine.is_empty() {
            if config.default_engine == RESERVED_ENGINE_NAME || !reg.engines.contains_key(&config.default_engine) {
                return Err(ConfigError::UnknownDefault(config.default_engine.clone()));
            }
            reg.default_engine.clone_from(&config.default_engine);
        }
        Ok(reg)
    }

    /// The mapping named `name` (`default` names the default engine).
    pub fn get(&self, name: &str) -> Option<&Arc<EngineMapping>> {
        let name = if name == RESERVED_ENGINE_NAME { self.default_engine.as_str() } else { name };
        self.engines.get(name)
    }

    /// The mapping for an endpoint: its engine label if set and non-empty, else the default.
    pub fn for_endpoint(&self, meta: &EndpointMeta) -> Result<Arc<EngineMapping>, UnknownEngine> {
        let engine = meta.labels.get(&self.label_key).map(String::as_str).filter(|s| !s.is_empty());
        let engine = engine.unwrap_or(&self.default_engine);
        self.get(engine).cloned().ok_or_else(|| UnknownEngine(engine.to_owned()))
    }

    /// The default engine's name.
    pub fn default_engine(&self) -> &str {
        &self.default_engine
    }

    /// The label key engines are chosen by.
    pub fn label_key(&self) -> &str {
        &self.label_key
    }

    /// Names of all known engines.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.engines.keys().map(String::as_str)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn builtins_round_trip_through_config() {
        for m in EngineMapping::builtins() {
            assert_eq!(EngineMapping::from_config(&m.to_config()).unwrap(), m);
        }
        let v = EngineMapping::vllm();
        assert_eq!(
            v.family_names(),
            vec![
                "vllm:num_requests_waiting",
                "vllm:num_requests_running",
                "vllm:kv_cache_usage_perc",
                "vllm:gpu_cache_usage_perc",
                "vllm:lora_requests_info",
                "vllm:cache_config_info"
            ]
        );
        assert_eq!(EngineMapping::triton_tensorrt_llm().family_names().len(), 2);
    }

    #[test]
    fn registry_picks_by_label() {
        let reg = EngineRegistry::builtin();
        let mut meta = EndpointMeta::parse_addr("10.0.0.1:8000").unwrap();
        assert_eq!(reg.for_endpoint(&meta).unwrap().name, "vllm");
        meta.labels.insert(ENGINE_TYPE_LABEL.into(), String::new());
        assert_eq!(reg.for_endpoint(&meta).unwrap().name, "vllm");
        meta.labels.insert(ENGINE_TYPE_LABEL.into(), "sglang".into());
        assert_eq!(reg.for_endpoint(&meta).unwrap().name, "sglang");
        meta.labels.insert(ENGINE_TYPE_LABEL.into(), "tgi".into());
        assert_eq!(reg.for_endpoint(&meta), Err(UnknownEngine("tgi".into())));
        assert_eq!(reg.get("default").unwrap().name, "vllm");
    }

    #[test]
    fn user_configs_replace_builtins() {
        let json = r#"{
            "engineLabelKey": "engine",
            "defaultEngine": "sglang",
            "engineConfigs": [
                {"name": "vllm", "queuedRequestsSpec": "my_queue{pool=a}", "kvUsageSpec": "my_kv"},
                {"name": "tgi", "runningRequestsSpec": "tgi_batch_current_size"}
            ]
        }"#;
        let cfg: ExtractorConfig = serde_json::from_str(json).unwrap();
        let reg = EngineRegistry::from_config(&cfg).unwrap();
        let v = reg.get("vllm").unwrap();
        assert_eq!(v.queued[0].to_string(), "my_queue{pool=\"a\"}");
        assert!(v.running.is_empty() && v.lora.is_empty() && v.cache_info.is_empty());
        assert_eq!(reg.default_engine(), "sglang");
        assert_eq!(reg.label_key(), "engine");
        let mut meta = EndpointMeta::parse_addr("10.0.0.1:8000").unwrap();
        meta.labels.insert("engine".into(), "tgi".into());
        assert_eq!(reg.for_endpoint(&meta).unwrap().running[0].name, "tgi_batch_current_size");
        assert_eq!(reg.names().count(), 5);
        assert_eq!(ExtractorConfig::default(), serde_json::from_str("{}").unwrap());
    }

    #[test]
    fn config_errors() {
        let one = |c: EngineConfig| ExtractorConfig { engine_configs: vec![c], ..Default::default() };
        let named = |n: &str| EngineConfig { name: n.into(), ..Default::default() };
        assert_eq!(EngineRegistry::from_config(&one(named("default"))).err(), Some(ConfigError::ReservedName));
        assert_eq!(EngineRegistry::from_config(&one(named(""))).err(), Some(ConfigError::EmptyName));
        let bad = EngineConfig { kv_usage_spec: "m{a".into(), ..named("x") };
        assert!(matches!(EngineRegistry::from_config(&one(bad)), Err(ConfigError::Spec { field: "kvUsageSpec", .. })));
        let dup = ExtractorConfig { engine_configs: vec![named("x"), named("x")], ..Default::default() };
        assert_eq!(EngineRegistry::from_config(&dup).err(), Some(ConfigError::Duplicate("x".into())));
        let nodef = ExtractorConfig { default_engine: "nope".into(), ..Default::default() };
        assert_eq!(EngineRegistry::from_config(&nodef).err(), Some(ConfigError::UnknownDefault("nope".into())));
        assert!(serde_json::from_str::<EngineConfig>(r#"{"name":"x","bogus":1}"#).is_err());
    }
}
