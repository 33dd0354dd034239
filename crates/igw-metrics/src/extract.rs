//! Turning a parsed page into [`EndpointMetrics`] with an [`EngineMapping`].
//!
//! Semantics follow upstream's `core-metrics-extractor` (`../shared/spec/scheduler.md` §1.2-1.3):
//! the result starts as a copy of the previous metrics; every field that parses overwrites its
//! part; every field that fails adds a [`FieldError`] and keeps its previous value. If at least
//! one field parsed, `update_time` becomes `now`; otherwise it stays as it was, so the endpoint
//! goes stale.

use std::collections::BTreeSet;
use std::fmt;

use igw_core::{EndpointMetrics, Instant};

use crate::engine::EngineMapping;
use crate::spec::MetricSpec;
use crate::text::{Exposition, Sample, parse_filtered};

/// An endpoint-metrics field an engine mapping can fill.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    /// Waiting-queue length.
    Queued,
    /// Running-batch size.
    Running,
    /// KV-cache utilisation.
    KvUsage,
    /// LoRA adapters.
    Lora,
    /// KV-cache block size.
    CacheBlockSize,
    /// Number of KV-cache blocks.
    CacheNumBlocks,
}

impl Field {
    /// Every field, in extraction order.
    pub const ALL: [Field; 6] =
        [Field::Queued, Field::Running, Field::KvUsage, Field::Lora, Field::CacheBlockSize, Field::CacheNumBlocks];

    /// The field's name as in upstream config keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Field::Queued => "queuedRequests",
            Field::Running => "runningRequests",
            Field::KvUsage => "kvUsage",
            Field::Lora => "lora",
            Field::CacheBlockSize => "cacheBlockSize",
            Field::CacheNumBlocks => "cacheNumBlocks",
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why one field could not be read from a page.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    /// No sample matched any of the field's specs.
    #[error("{field}: no sample matches {spec}")]
    Missing {
        /// The field.
        field: Field,
        /// The spec(s) tried.
        spec: String,
    },
    /// The selected series lacks a needed label.
    #[error("{field}: {spec} has no label {label:?}")]
    MissingLabel {
        /// The field.
        field: Field,
        /// The spec that selected the series.
        spec: String,
        /// The missing label.
        label: String,
    },
    /// A label that should hold an integer does not.
    #[error("{field}: label {label}={value:?} is not an integer")]
    NotAnInteger {
        /// The field.
        field: Field,
        /// The label.
        label: String,
        /// Its value.
        value: String,
    },
}

impl FieldError {
    /// The field this error is about.
    pub fn field(&self) -> Field {
        match self {
            FieldError::Missing { field, .. }
            | FieldError::MissingLabel { field, .. }
            | FieldError::NotAnInteger { field, .. } => *field,
        }
    }
}

/// The outcome of applying a mapping to one page.
#[derive(Clone, Debug, PartialEq)]
pub struct Extraction {
    /// The new metrics (previous values where a field failed).
    pub metrics: EndpointMetrics,
    /// Fields that parsed.
    pub parsed: Vec<Field>,
    /// Per-field errors.
    pub errors: Vec<FieldError>,
}

impl Extraction {
    /// True if at least one field parsed (the metrics are fresh and should be published).
    pub fn is_fresh(&self) -> bool {
        !self.parsed.is_empty()
    }
}

/// Parses `body` with the fast filtered parser and extracts `mapping`'s fields.
pub fn extract_from_bytes(
    body: &[u8],
    mapping: &EngineMapping,
    previous: &EndpointMetrics,
    now: Instant,
) -> Extraction {
    let names = mapping.family_names();
    let expo = parse_filtered(body, &names);
    extract(&expo, mapping, previous, now)
}

/// Applies `mapping` to a parsed page. See the module docs for the merge rules.
pub fn extract(expo: &Exposition, mapping: &EngineMapping, previous: &EndpointMetrics, now: Instant) -> Extraction {
    let mut out = Extraction { metrics: previous.clone(), parsed: Vec::new(), errors: Vec::new() };
    let record = |out: &mut Extraction, field: Field, r: Result<(), FieldError>| match r {
        Ok(()) => out.parsed.push(field),
        Err(e) => out.errors.push(e),
    };

    if !mapping.queued.is_empty() {
        let r = select(expo, Field::Queued, &mapping.queued).map(|s| out.metrics.waiting = to_u32(s.value));
        record(&mut out, Field::Queued, r);
    }
    if !mapping.running.is_empty() {
        let r = select(expo, Field::Running, &mapping.running).map(|s| out.metrics.running = to_u32(s.value));
        record(&mut out, Field::Running, r);
    }
    if !mapping.kv_usage.is_empty() {
        let r = select(expo, Field::KvUsage, &mapping.kv_usage).map(|s| out.metrics.kv_usage = s.value);
        record(&mut out, Field::KvUsage, r);
    }
    if !mapping.lora.is_empty() {
        let r = lora(expo, &mapping.lora, &mut out.metrics, &mut out.errors);
        record(&mut out, Field::Lora, r);
    }
    let info = (!mapping.cache_info.is_empty()).then(|| select(expo, Field::CacheBlockSize, &mapping.cache_info));
    for (field, label, gauge) in [
        (Field::CacheBlockSize, &mapping.cache_block_size_label, &mapping.cache_block_size),
        (Field::CacheNumBlocks, &mapping.cache_num_blocks_label, &mapping.cache_num_blocks),
    ] {
        let r = if let (Some(info), false) = (&info, label.is_empty()) {
            info.clone()
                .map_err(|e| match e {
                    FieldError::Missing { spec, .. } => FieldError::Missing { field, spec },
                    e => e,
                })
                .and_then(|s| int_label(s, field, label, &mapping.cache_info))
        } else if !gauge.is_empty() {
            select(expo, field, gauge).map(|s| to_u64(s.value))
        } else {
            continue;
        };
        let r = r.map(|v| match field {
            Field::CacheBlockSize => out.metrics.cache_block_size = Some(u32::try_from(v).unwrap_or(u32::MAX)),
            _ => out.metrics.cache_num_blocks = Some(v),
        });
        record(&mut out, field, r);
    }

    if out.is_fresh() {
        out.metrics.update_time = Some(now);
    }
    out
}

/// Counts are truncated toward zero and saturate (NaN and negatives become 0).
fn to_u32(v: f64) -> u32 {
    v as u32
}

fn to_u64(v: f64) -> u64 {
    v as u64
}

fn spec_text(specs: &[MetricSpec]) -> String {
    crate::spec::format_spec_list(specs)
}

fn select<'a>(expo: &'a Exposition, field: Field, specs: &[MetricSpec]) -> Result<&'a Sample, FieldError> {
    specs.iter().find_map(|s| s.select(expo)).ok_or_else(|| FieldError::Missing { field, spec: spec_text(specs) })
}

fn int_label(s: &Sample, field: Field, label: &str, specs: &[MetricSpec]) -> Result<u64, FieldError> {
    let v = s.label(label).ok_or_else(|| FieldError::MissingLabel {
        field,
        spec: spec_text(specs),
        label: label.to_owned(),
    })?;
    v.trim().parse::<u64>().map_err(|_| FieldError::NotAnInteger {
        field,
        label: label.to_owned(),
        value: v.to_owned(),
    })
}

fn adapters(s: &Sample, label: &str) -> BTreeSet<String> {
    s.label(label)
        .map(|v| v.split(',').map(str::trim).filter(|a| !a.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default()
}

/// LoRA info: the matching series with the largest value wins. A bad `max_lora` adds an error
/// but the adapter sets still count as parsed.
fn lora(
    expo: &Exposition,
    specs: &[MetricSpec],
    m: &mut EndpointMetrics,
    errors: &mut Vec<FieldError>,
) -> Result<(), FieldError> {
    let s = specs
        .iter()
        .find_map(|spec| spec.select_max_value(expo))
        .ok_or_else(|| FieldError::Missing { field: Field::Lora, spec: spec_text(specs) })?;
    m.active_adapters = adapters(s, "running_lora_adapters");
    m.waiting_adapters = adapters(s, "waiting_lora_adapters");
    match s.label("max_lora").map(str::trim).filter(|v| !v.is_empty()) {
        None => {}
        Some(v) => match v.parse::<u32>() {
            Ok(n) => m.max_adapters = Some(n),
            Err(_) => errors.push(FieldError::NotAnInteger {
                field: Field::Lora,
                label: "max_lora".into(),
                value: v.to_owned(),
            }),
        },
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::text::parse;

    const VLLM: &[u8] = b"vllm:num_requests_running{model_name=\"m\"} 7.9\n\
vllm:num_requests_waiting{model_name=\"m\"} 3\n\
vllm:gpu_cache_usage_perc{model_name=\"m\"} 0.5\n\
vllm:lora_requests_info{max_lora=\"4\",running_lora_adapters=\"a\",waiting_lora_adapters=\"\"} 1.7438e+09\n\
vllm:lora_requests_info{max_lora=\"4\",running_lora_adapters=\" a, b ,,\",waiting_lora_adapters=\"c\"} 1.7438001e+09\n\
vllm:cache_config_info{block_size=\"16\",num_gpu_blocks=\"7300\"} 1.0\n";

    #[test]
    fn vllm_fields_with_kv_fallback() {
        let now = Instant::from_millis(5);
        let x = extract_from_bytes(VLLM, &EngineMapping::vllm(), &EndpointMetrics::default(), now);
        assert!(x.errors.is_empty(), "{:?}", x.errors);
        let m = &x.metrics;
        assert_eq!((m.running, m.waiting, m.kv_usage), (7, 3, 0.5));
        assert_eq!(m.active_adapters, ["a", "b"].iter().map(|s| s.to_string()).collect());
        assert_eq!(m.waiting_adapters, ["c".to_string()].into_iter().collect());
        assert_eq!((m.max_adapters, m.cache_block_size, m.cache_num_blocks), (Some(4), Some(16), Some(7300)));
        assert_eq!(m.update_time, Some(now));
        // Full parse gives the same result.
        assert_eq!(extract(&parse(VLLM), &EngineMapping::vllm(), &EndpointMetrics::default(), now), x);
    }

    #[test]
    fn new_kv_name_wins_over_old() {
        let page = b"vllm:gpu_cache_usage_perc 0.5\nvllm:kv_cache_usage_perc 0.25\n";
        let x = extract_from_bytes(page, &EngineMapping::vllm(), &EndpointMetrics::default(), Instant::ZERO);
        assert_eq!(x.metrics.kv_usage, 0.25);
        assert_eq!(x.parsed, vec![Field::KvUsage]);
        assert_eq!(x.errors.len(), 5); // queued, running, lora, block size, num blocks
    }

    #[test]
    fn nothing_parsed_keeps_previous() {
        let prev = EndpointMetrics { waiting: 9, update_time: Some(Instant::from_millis(1)), ..Default::default() };
        let x = extract_from_bytes(b"garbage\n{{{\n", &EngineMapping::vllm(), &prev, Instant::from_millis(2));
        assert!(!x.is_fresh());
        assert_eq!(x.metrics, prev);
        assert_eq!(x.errors.len(), 6);
    }

    #[test]
    fn bad_labels_are_field_errors() {
        let page = b"vllm:num_requests_waiting 2\nvllm:cache_config_info{block_size=\"x\"} 1\n\
vllm:lora_requests_info{max_lora=\"many\",running_lora_adapters=\"a\"} 1\n";
        let prev = EndpointMetrics { cache_block_size: Some(32), ..Default::default() };
        let x = extract_from_bytes(page, &EngineMapping::vllm(), &prev, Instant::ZERO);
        assert_eq!(x.parsed, vec![Field::Queued, Field::Lora]);
        assert_eq!(x.metrics.cache_block_size, Some(32));
        assert!(x.errors.iter().any(|e| matches!(e, FieldError::NotAnInteger { field: Field::CacheBlockSize, .. })));
        assert!(x.errors.iter().any(|e| matches!(e, FieldError::MissingLabel { field: Field::CacheNumBlocks, .. })));
        assert!(x.errors.iter().any(|e| matches!(e, FieldError::NotAnInteger { field: Field::Lora, .. })));
        assert_eq!(x.metrics.active_adapters.len(), 1);
    }

    #[test]
    fn triton_and_trtllm() {
        let page = b"nv_trt_llm_request_metrics{model=\"e\",request_type=\"waiting\"} 5\n\
nv_trt_llm_request_metrics{model=\"e\",request_type=\"scheduled\"} 2\n\
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=\"fraction\"} 0.75\n\
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=\"tokens_per\"} 64\n\
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=\"max\"} 1000\n";
        let x =
            extract_from_bytes(page, &EngineMapping::triton_tensorrt_llm(), &EndpointMetrics::default(), Instant::ZERO);
        assert!(x.errors.is_empty(), "{:?}", x.errors);
        let m = x.metrics;
        assert_eq!((m.waiting, m.running, m.kv_usage), (5, 2, 0.75));
        assert_eq!((m.cache_block_size, m.cache_num_blocks), (Some(64), Some(1000)));

        let page = b"trtllm_num_requests_waiting 1\ntrtllm_num_requests_running 2\ntrtllm_kv_cache_utilization 0.1\n\
trtllm_kv_cache_tokens_per_block 32\ntrtllm_kv_cache_max_blocks 4096\n";
        let x = extract_from_bytes(page, &EngineMapping::trtllm_serve(), &EndpointMetrics::default(), Instant::ZERO);
        assert!(x.errors.is_empty(), "{:?}", x.errors);
        assert_eq!((x.metrics.cache_block_size, x.metrics.cache_num_blocks), (Some(32), Some(4096)));
    }

    #[test]
    fn counts_saturate() {
        let page = b"trtllm_num_requests_waiting -3\ntrtllm_num_requests_running NaN\n";
        let x = extract_from_bytes(page, &EngineMapping::trtllm_serve(), &EndpointMetrics::default(), Instant::ZERO);
        assert_eq!((x.metrics.waiting, x.metrics.running), (0, 0));
    }
}
