//! Fixture pages: upstream's metrics testdata (read as-is, quirks included), a vLLM page and an
//! SGLang page.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use igw_core::{EndpointMetrics, Instant};
use igw_metrics::{EngineMapping, Exposition, MetricType, extract, extract_from_bytes, parse, parse_filtered};

const UPSTREAM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/upstream/metrics-testdata");
const VLLM: &[u8] = include_bytes!("fixtures/vllm.txt");
const SGLANG: &[u8] = include_bytes!("fixtures/sglang.txt");

fn upstream(name: &str) -> Exposition {
    let bytes = std::fs::read(Path::new(UPSTREAM).join(name)).unwrap();
    let e = parse(&bytes);
    assert!(e.errors.is_empty(), "{name}: {:?}", e.errors);
    e
}

fn value(e: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
    e.samples_named(name).find(|s| labels.iter().all(|(k, v)| s.label(k) == Some(v))).unwrap().value
}

#[test]
fn every_upstream_file_parses_and_round_trips() {
    let mut files: Vec<_> = std::fs::read_dir(UPSTREAM).unwrap().map(|d| d.unwrap().path()).collect();
    files.sort();
    assert_eq!(files.len(), 25);
    for path in files {
        let bytes = std::fs::read(&path).unwrap();
        let e = parse(&bytes);
        assert!(e.errors.is_empty(), "{}: {:?}", path.display(), e.errors);
        assert!(e.sample_count() > 0, "{}", path.display());
        let again = parse(e.to_string().as_bytes());
        assert_eq!(again, e, "{}", path.display());
    }
}

#[test]
fn upstream_values() {
    let e = upstream("kv_cache_avg_metrics");
    let f = e.family("inference_pool_average_kv_cache_utilization").unwrap();
    assert_eq!(f.kind, MetricType::Gauge);
    assert!(f.help.as_deref().unwrap().starts_with("[ALPHA] The average kv cache"));
    assert_eq!(value(&e, "inference_pool_average_kv_cache_utilization", &[("name", "p1")]), 0.3);

    // `{}` label sets.
    let e = upstream("prefix_indexer_size_metric");
    let s = &e.family("inference_extension_prefix_indexer_size").unwrap().samples[0];
    assert!(s.labels.is_empty());
    assert_eq!(s.value, 4096.0);
    let e = upstream("scheduler_e2e_duration_seconds_metric");
    let f = e.family("inference_extension_scheduler_e2e_duration_seconds").unwrap();
    assert_eq!((f.kind, f.samples.len()), (MetricType::Histogram, 13));
    assert_eq!(value(&e, "inference_extension_scheduler_e2e_duration_seconds_sum", &[]), 0.2835);
    assert_eq!(value(&e, "inference_extension_scheduler_e2e_duration_seconds_bucket", &[("le", "+Inf")]), 9.0);

    // Spaces after commas in label sets.
    let e = upstream("request_error_total_metric");
    let name = "inference_objective_request_error_total";
    assert_eq!(e.family(name).unwrap().kind, MetricType::Counter);
    assert_eq!(
        value(&e, name, &[("error_code", "Internal"), ("model_name", "m10"), ("target_model_name", "t10")]),
        2.0
    );
    assert_eq!(value(&e, name, &[("error_code", "ResourceExhausted"), ("model_name", "m20")]), 1.0);

    // Older `inference_model_*` names; spaces after commas; `le="Inf"`; a typo'd sample name.
    let e = upstream("request_tpot_seconds_metric");
    let h = e.family("inference_model_request_tpot_seconds").unwrap();
    assert_eq!((h.kind, h.samples.len()), (MetricType::Histogram, 75));
    assert_eq!(value(&e, "inference_model_request_tpot_seconds_sum", &[("model_name", "m20")]), 0.161);
    assert_eq!(value(&e, "inference_model_request_tpot_seconds_bucket", &[("le", "Inf")]), 2.0);
    let typo = e.family("iinference_model_request_tpot_seconds_bucket").unwrap();
    assert_eq!((typo.kind, typo.samples.len()), (MetricType::Untyped, 1));
    assert_eq!(typo.samples[0].label("le"), Some("0.0005"));
    assert_eq!(typo.samples[0].value, 0.0);
    let e = upstream("request_ttft_seconds_metric");
    assert_eq!(
        value(&e, "inference_model_request_ttft_seconds_sum", &[("model_name", "m10"), ("target_model_name", "t11")]),
        0.06
    );

    let e = upstream("scheduler_attempts_total_metrics");
    assert_eq!(value(&e, "inference_extension_scheduler_attempts_total", &[("status", "failure")]), 5.0);
    assert_eq!(
        value(&e, "inference_extension_scheduler_attempts_total", &[("namespace", ""), ("status", "success")]),
        10.0
    );

    let e = upstream("flow_control_dispatch_cycle_duration_seconds_metric");
    assert_eq!(value(&e, "inference_extension_flow_control_dispatch_cycle_duration_seconds_count", &[]), 11.0);
}

#[test]
fn filtered_parse_agrees_with_full_parse() {
    let bytes = std::fs::read(Path::new(UPSTREAM).join("request_tpot_seconds_metric")).unwrap();
    let name = "inference_model_request_tpot_seconds_sum";
    let full = parse(&bytes);
    let filtered = parse_filtered(&bytes, &[name]);
    assert_eq!(filtered.families.len(), 1);
    assert_eq!(filtered.samples_named(name).collect::<Vec<_>>(), full.samples_named(name).collect::<Vec<_>>());
}

#[test]
fn vllm_page() {
    let e = parse(VLLM);
    assert!(e.errors.is_empty(), "{:?}", e.errors);
    assert_eq!(e.sample_count(), 303);
    let ttft = e.family("vllm:time_to_first_token_seconds").unwrap();
    assert_eq!((ttft.kind, ttft.samples.len()), (MetricType::Histogram, 25));
    assert_eq!(value(&e, "vllm:time_to_first_token_seconds_bucket", &[("le", "+Inf")]), 59999.0);
    assert_eq!(value(&e, "vllm:time_to_first_token_seconds_sum", &[]), 5686.67);
    assert_eq!(e.family("vllm:prefix_cache_queries_total").unwrap().samples[0].value, 1.5092072e7);

    let now = Instant::from_millis(42);
    let x = extract_from_bytes(VLLM, &EngineMapping::vllm(), &EndpointMetrics::default(), now);
    assert!(x.errors.is_empty(), "{:?}", x.errors);
    let m = &x.metrics;
    assert_eq!((m.running, m.waiting, m.kv_usage), (187, 12, 0.8123));
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    assert_eq!(m.active_adapters, set(&["sql-lora", "tweet-summary-1"]));
    assert_eq!(m.waiting_adapters, set(&["tweet-summary-0"]));
    assert_eq!((m.max_adapters, m.cache_block_size, m.cache_num_blocks), (Some(4), Some(16), Some(7300)));
    assert_eq!(m.update_time, Some(now));
    assert_eq!(extract(&e, &EngineMapping::vllm(), &EndpointMetrics::default(), now), x);
}

#[test]
fn sglang_page() {
    let e = parse(SGLANG);
    assert!(e.errors.is_empty(), "{:?}", e.errors);
    assert_eq!(e.family("sglang:time_to_first_token_seconds").unwrap().samples.len(), 7);
    let x = extract_from_bytes(SGLANG, &EngineMapping::sglang(), &EndpointMetrics::default(), Instant::ZERO);
    assert!(x.errors.is_empty(), "{:?}", x.errors);
    let m = &x.metrics;
    assert_eq!((m.running, m.waiting, m.kv_usage), (24, 5, 0.37));
    assert_eq!((m.cache_block_size, m.cache_num_blocks), (Some(16), Some(25887)));
    assert!(m.active_adapters.is_empty() && m.max_adapters.is_none());
    // The vLLM mapping finds nothing on an SGLang page.
    let x = extract_from_bytes(SGLANG, &EngineMapping::vllm(), &EndpointMetrics::default(), Instant::ZERO);
    assert!(!x.is_fresh());
}

#[test]
fn truncated_vllm_page_keeps_earlier_fields() {
    // Cut in the middle of the KV-usage line: queue and running parse, the rest is missing.
    let pat = b"vllm:kv_cache_usage_perc{";
    let cut = VLLM.windows(pat.len()).position(|w| w == pat).unwrap() + 30;
    let cut = &VLLM[..cut];
    let e = parse(cut);
    assert_eq!(e.errors.len(), 1);
    let x = extract_from_bytes(cut, &EngineMapping::vllm(), &EndpointMetrics::default(), Instant::ZERO);
    assert!(x.is_fresh());
    assert_eq!((x.metrics.running, x.metrics.waiting, x.metrics.kv_usage), (187, 12, 0.8123)); // via fallback
    assert_eq!(x.errors.len(), 3); // lora, block size, num blocks
}
