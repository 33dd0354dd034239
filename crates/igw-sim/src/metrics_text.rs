//! Prometheus text exposition of an engine snapshot, with vLLM V1 or SGLang metric names.

use std::fmt::Write;

use crate::engine::MetricsSnapshot;
use crate::stats::Histogram;

/// Escapes a label value (backslash, double quote, newline).
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// Formats a sample value the way Python's prometheus_client does for common values (`3.0`, `0.25`).
fn num(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 { format!("{v:.1}") } else { format!("{v}") }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn scalar(out: &mut String, name: &str, kind: &str, help: &str, labels: &str, v: f64) {
    header(out, name, kind, help);
    let _ = writeln!(out, "{name}{{{labels}}} {}", num(v));
}

/// Writes a histogram; `before`/`after` are the label text sorted around `le` (may be empty).
fn histogram(out: &mut String, name: &str, help: &str, before: &str, after: &str, h: &Histogram) {
    header(out, name, "histogram", help);
    let (b, a) = (if before.is_empty() { String::new() } else { format!("{before},") }, after);
    let a_comma = if a.is_empty() { String::new() } else { format!(",{a}") };
    let mut cum = 0u64;
    for (i, bound) in h.bounds.iter().enumerate() {
        cum += h.counts[i];
        let _ = writeln!(out, "{name}_bucket{{{b}le=\"{}\"{a_comma}}} {}", num(*bound), num(cum as f64));
    }
    cum += h.counts[h.bounds.len()];
    let _ = writeln!(out, "{name}_bucket{{{b}le=\"+Inf\"{a_comma}}} {}", num(cum as f64));
    let plain = match (before.is_empty(), after.is_empty()) {
        (true, true) => String::new(),
        (false, true) => before.to_string(),
        (true, false) => after.to_string(),
        (false, false) => format!("{before},{after}"),
    };
    let _ = writeln!(out, "{name}_count{{{plain}}} {}", num(h.count as f64));
    let _ = writeln!(out, "{name}_sum{{{plain}}} {}", num(h.sum));
}

/// Renders the vLLM V1 exposition. `unix_time` maps a model time (seconds) to the Unix time reported
/// as the value of `vllm:lora_requests_info`.
pub fn render_vllm(s: &MetricsSnapshot, model: &str, unix_time: impl Fn(f64) -> f64) -> String {
    render_vllm_page(s, model, unix_time, true)
}

/// [`render_vllm`] without the twelve latency and token histograms: every gauge, counter and info
/// family of the page, which is all a picker's scrape reads (igw's vLLM mapping reads none of the
/// histograms). The simulator scrapes this page every 50 ms per replica; formatting the histograms'
/// buckets was most of its run time.
pub fn render_vllm_without_histograms(s: &MetricsSnapshot, model: &str, unix_time: impl Fn(f64) -> f64) -> String {
    render_vllm_page(s, model, unix_time, false)
}

fn render_vllm_page(s: &MetricsSnapshot, model: &str, unix_time: impl Fn(f64) -> f64, histograms: bool) -> String {
    let mut o = String::with_capacity(if histograms { 16 * 1024 } else { 4 * 1024 });
    let m = escape_label(model);
    let l = format!("engine=\"0\",model_name=\"{m}\"");
    let (before, after) = ("engine=\"0\"", format!("model_name=\"{m}\""));
    let st = &s.stats;
    scalar(
        &mut o,
        "vllm:num_requests_running",
        "gauge",
        "Number of requests in model execution batches.",
        &l,
        f64::from(s.running),
    );
    scalar(
        &mut o,
        "vllm:num_requests_waiting",
        "gauge",
        "Number of requests waiting to be processed.",
        &l,
        f64::from(s.waiting),
    );
    scalar(
        &mut o,
        "vllm:gpu_cache_usage_perc",
        "gauge",
        "GPU KV-cache usage. 1 means 100 percent usage.DEPRECATED: Use vllm:kv_cache_usage_perc instead.",
        &l,
        s.kv_usage,
    );
    scalar(&mut o, "vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.", &l, s.kv_usage);
    // vLLM 0.32's gauges. The simulator defers no waiting request for a transient reason (its LoRA
    // slot limit keeps such requests in `capacity`), and never sleeps.
    header(
        &mut o,
        "vllm:num_requests_waiting_by_reason",
        "gauge",
        "Number of waiting requests by reason. Reason labels: 'capacity' = waiting for scheduling capacity; \
'deferred' = deferred by transient constraints (LoRA budget, KV transfer, blocked status). Sum of all reasons equals \
vllm:num_requests_waiting.",
    );
    for (reason, v) in [("capacity", s.waiting), ("deferred", 0)] {
        let _ = writeln!(o, "vllm:num_requests_waiting_by_reason{{{l},reason=\"{reason}\"}} {}", num(f64::from(v)));
    }
    header(
        &mut o,
        "vllm:engine_sleep_state",
        "gauge",
        "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is awake; \
weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep level 2.",
    );
    for (state, v) in [("awake", 1.0), ("weights_offloaded", 0.0), ("discard_all", 0.0)] {
        let _ = writeln!(o, "vllm:engine_sleep_state{{{l},sleep_state=\"{state}\"}} {}", num(v));
    }
    header(
        &mut o,
        "vllm:admission_rejections_total",
        "counter",
        "Number of admission attempts rejected by a queue limit, by reason.",
    );
    for reason in ["max_num_queued_reqs", "max_num_queued_tokens"] {
        let _ = writeln!(o, "vllm:admission_rejections_total{{model_name=\"{m}\",reason=\"{reason}\"}} 0.0");
    }
    let q = st.prefix_queries as f64;
    let h = st.prefix_hits as f64;
    scalar(
        &mut o,
        "vllm:prefix_cache_queries_total",
        "counter",
        "Prefix cache queries, in terms of number of queried tokens.",
        &l,
        q,
    );
    scalar(
        &mut o,
        "vllm:prefix_cache_hits_total",
        "counter",
        "Prefix cache hits, in terms of number of cached tokens.",
        &l,
        h,
    );
    scalar(
        &mut o,
        "vllm:gpu_prefix_cache_queries_total",
        "counter",
        "GPU prefix cache queries, in terms of number of queried tokens.DEPRECATED: Use vllm:prefix_cache_queries instead.",
        &l,
        q,
    );
    scalar(
        &mut o,
        "vllm:gpu_prefix_cache_hits_total",
        "counter",
        "GPU prefix cache hits, in terms of number of cached tokens.DEPRECATED: Use vllm:prefix_cache_hits instead.",
        &l,
        h,
    );
    for (name, help) in [
        (
            "vllm:external_prefix_cache_queries_total",
            "External prefix cache queries from KV connector cross-instance cache sharing, in terms of number of \
queried tokens.",
        ),
        (
            "vllm:external_prefix_cache_hits_total",
            "External prefix cache hits from KV connector cross-instance cache sharing, in terms of number of cached \
tokens.",
        ),
        ("vllm:mm_cache_queries_total", "Multi-modal cache queries, in terms of number of queried items."),
        ("vllm:mm_cache_hits_total", "Multi-modal cache hits, in terms of number of cached items."),
        (
            "vllm:estimated_flops_per_gpu_total",
            "Estimated number of floating point operations per GPU (for Model Flops Utilization calculations).",
        ),
        (
            "vllm:estimated_read_bytes_per_gpu_total",
            "Estimated number of bytes read from memory per GPU (for Model Flops Utilization calculations).",
        ),
        (
            "vllm:estimated_write_bytes_per_gpu_total",
            "Estimated number of bytes written to memory per GPU (for Model Flops Utilization calculations).",
        ),
    ] {
        // No KV connector, no multimodal inputs, no FLOP model: zero, as on a server without them.
        scalar(&mut o, name, "counter", help, &l, 0.0);
    }
    let cached = st.prompt_tokens_cached as f64;
    scalar(
        &mut o,
        "vllm:prompt_tokens_cached_total",
        "counter",
        "Number of cached prompt tokens (local + external).",
        &l,
        cached,
    );
    header(&mut o, "vllm:prompt_tokens_by_source_total", "counter", "Number of prompt tokens by source.");
    for (source, v) in [
        ("local_compute", st.prompt_tokens as f64 - cached),
        ("local_cache_hit", cached),
        ("external_kv_transfer", 0.0),
    ] {
        let _ = writeln!(o, "vllm:prompt_tokens_by_source_total{{{l},source=\"{source}\"}} {}", num(v));
    }
    header(
        &mut o,
        "vllm:prompt_tokens_cached_by_source_total",
        "counter",
        "Prefix-cache hit tokens by the cache tier that supplied them: device (local HBM), host (offloaded to DRAM), \
disk, p2p (transferred from another vLLM instance) or external_unspecified. Counted at admission; sums to \
vllm:prefix_cache_hits + vllm:external_prefix_cache_hits.",
    );
    for (source, v) in [("device", cached), ("host", 0.0), ("p2p", 0.0), ("disk", 0.0), ("external_unspecified", 0.0)] {
        let _ = writeln!(o, "vllm:prompt_tokens_cached_by_source_total{{{l},source=\"{source}\"}} {}", num(v));
    }
    scalar(
        &mut o,
        "vllm:num_preemptions_total",
        "counter",
        "Cumulative number of preemption from the engine.",
        &l,
        st.preemptions as f64,
    );
    scalar(
        &mut o,
        "vllm:prompt_tokens_total",
        "counter",
        "Number of prefill tokens processed.",
        &l,
        st.prompt_tokens as f64,
    );
    scalar(
        &mut o,
        "vllm:generation_tokens_total",
        "counter",
        "Number of generation tokens processed.",
        &l,
        st.generation_tokens as f64,
    );
    header(&mut o, "vllm:request_success_total", "counter", "Count of successfully processed requests.");
    for (reason, v) in [("stop", st.finished_stop), ("length", st.finished_length), ("abort", st.finished_abort)] {
        let _ = writeln!(
            o,
            "vllm:request_success_total{{{before},finished_reason=\"{reason}\",{after}}} {}",
            num(v as f64)
        );
    }
    let hists: [(&str, &str, &Histogram); 17] = [
        ("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", &st.ttft),
        (
            "vllm:time_per_output_token_seconds",
            "Histogram of time per output token in seconds.DEPRECATED: Use vllm:inter_token_latency_seconds instead.",
            &st.itl,
        ),
        ("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", &st.itl),
        ("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", &st.e2e),
        ("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", &st.queue),
        ("vllm:request_inference_time_seconds", "Histogram of time spent in RUNNING phase for request.", &st.inference),
        ("vllm:request_prefill_time_seconds", "Histogram of time spent in PREFILL phase for request.", &st.prefill),
        ("vllm:request_decode_time_seconds", "Histogram of time spent in DECODE phase for request.", &st.decode),
        ("vllm:request_prompt_tokens", "Number of prefill tokens processed.", &st.req_prompt_tokens),
        ("vllm:request_generation_tokens", "Number of generation tokens processed.", &st.req_generation_tokens),
        ("vllm:request_params_max_tokens", "Histogram of the max_tokens request parameter.", &st.req_max_tokens),
        ("vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.", &st.iteration_tokens),
        (
            "vllm:request_max_num_generation_tokens",
            "Histogram of maximum number of requested generation tokens.",
            &st.req_max_generation_tokens,
        ),
        ("vllm:request_params_n", "Histogram of the n request parameter.", &st.req_params_n),
        (
            "vllm:request_num_preemptions",
            "Histogram of the number of times a request was preempted.",
            &st.req_preemptions,
        ),
        (
            "vllm:request_prefill_kv_computed_tokens",
            "Histogram of new KV tokens computed during prefill (excluding cached tokens).",
            &st.req_prefill_computed_tokens,
        ),
        (
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.",
            &st.req_tpot,
        ),
    ];
    for (name, help, hist) in hists.into_iter().filter(|_| histograms) {
        histogram(&mut o, name, help, before, &after, hist);
    }
    if s.max_loras > 0 {
        header(&mut o, "vllm:lora_requests_info", "gauge", "Running stats on lora requests.");
        for li in &s.lora_info {
            let _ = writeln!(
                o,
                "vllm:lora_requests_info{{max_lora=\"{}\",running_lora_adapters=\"{}\",waiting_lora_adapters=\"{}\"}} {}",
                s.max_loras,
                escape_label(&li.running),
                escape_label(&li.waiting),
                unix_time(li.at_secs)
            );
        }
    }
    // vLLM 0.32's label set (a CPU server's values where the simulator models nothing).
    header(&mut o, "vllm:cache_config_info", "gauge", "Information of the LLMEngine CacheConfig");
    let size_tokens = u64::from(s.num_gpu_blocks) * u64::from(s.block_size);
    let _ = writeln!(
        o,
        "vllm:cache_config_info{{_block_size_resolved=\"True\",block_size=\"{bs}\",cache_dtype=\"auto\",\
cache_hit_alignment_tokens=\"None\",effective_attention_block_size=\"{bs}\",\
enable_mamba_shared_prefix_checkpoint=\"False\",enable_prefix_caching=\"True\",engine=\"0\",\
gpu_memory_utilization=\"0.9\",hash_block_size=\"None\",is_attention_free=\"False\",kv_cache_dtype_skip_layers=\"[]\",\
kv_cache_layout=\"None\",kv_cache_max_concurrency=\"None\",kv_cache_memory_bytes=\"None\",\
kv_cache_size_tokens=\"{size_tokens}\",kv_offloading_backend=\"native\",kv_offloading_size=\"None\",\
kv_sharing_fast_prefill=\"False\",mamba_block_size=\"None\",mamba_cache_dtype=\"auto\",mamba_cache_mode=\"none\",\
mamba_page_size_padded=\"None\",mamba_ssm_cache_dtype=\"auto\",num_cpu_blocks=\"None\",num_gpu_blocks=\"{nb}\",\
num_gpu_blocks_override=\"None\",prefix_cache_retention_interval=\"0\",prefix_caching_hash_algo=\"builtin\",\
prefix_match_unit=\"None\",replayssm_buffer_len=\"16\",skip_page_size_padded=\"None\",sliding_window=\"None\",\
swa_bounded_replay=\"True\",use_kda_recoverssm=\"False\",use_replayssm=\"False\",user_specified_block_size=\"False\"}} 1.0",
        bs = s.block_size,
        nb = s.num_gpu_blocks
    );
    o
}

/// Renders the SGLang exposition (`sglang:*` names).
pub fn render_sglang(s: &MetricsSnapshot, model: &str) -> String {
    let mut o = String::with_capacity(8 * 1024);
    let m = escape_label(model);
    let l = format!("engine_type=\"unified\",model_name=\"{m}\",tp_rank=\"0\"");
    let (before, after) = ("engine_type=\"unified\"", format!("model_name=\"{m}\",tp_rank=\"0\""));
    let st = &s.stats;
    let total_tokens = f64::from(s.num_gpu_blocks) * f64::from(s.block_size);
    let used_tokens = f64::from(s.used_blocks) * f64::from(s.block_size);
    let hit_rate = if st.prefix_queries > 0 { st.prefix_hits as f64 / st.prefix_queries as f64 } else { 0.0 };
    scalar(&mut o, "sglang:num_running_reqs", "gauge", "The number of running requests.", &l, f64::from(s.running));
    scalar(
        &mut o,
        "sglang:num_queue_reqs",
        "gauge",
        "The number of requests in the waiting queue.",
        &l,
        f64::from(s.waiting),
    );
    scalar(&mut o, "sglang:token_usage", "gauge", "The token usage.", &l, s.kv_usage);
    scalar(&mut o, "sglang:num_used_tokens", "gauge", "The number of used tokens.", &l, used_tokens);
    scalar(
        &mut o,
        "sglang:max_total_num_tokens",
        "gauge",
        "Maximum total number of tokens in the KV cache pool.",
        &l,
        total_tokens,
    );
    scalar(&mut o, "sglang:cache_hit_rate", "gauge", "The prefix cache hit rate.", &l, hit_rate);
    scalar(&mut o, "sglang:num_retracted_reqs", "gauge", "The number of retracted requests.", &l, 0.0);
    scalar(
        &mut o,
        "sglang:prompt_tokens_total",
        "counter",
        "Number of prefill tokens processed.",
        &l,
        st.prompt_tokens as f64,
    );
    scalar(
        &mut o,
        "sglang:generation_tokens_total",
        "counter",
        "Number of generation tokens processed.",
        &l,
        st.generation_tokens as f64,
    );
    scalar(
        &mut o,
        "sglang:cached_tokens_total",
        "counter",
        "Number of cached prompt tokens.",
        &l,
        st.prefix_hits as f64,
    );
    scalar(
        &mut o,
        "sglang:num_requests_total",
        "counter",
        "Number of requests processed.",
        &l,
        st.requests_received as f64,
    );
    scalar(
        &mut o,
        "sglang:num_aborted_requests_total",
        "counter",
        "Number of requests aborted.",
        &l,
        st.finished_abort as f64,
    );
    histogram(
        &mut o,
        "sglang:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        before,
        &after,
        &st.sglang_ttft,
    );
    histogram(
        &mut o,
        "sglang:inter_token_latency_seconds",
        "Histogram of inter-token latency in seconds.",
        before,
        &after,
        &st.sglang_itl,
    );
    histogram(
        &mut o,
        "sglang:e2e_request_latency_seconds",
        "Histogram of End-to-end request latency in seconds",
        before,
        &after,
        &st.sglang_e2e,
    );
    header(&mut o, "sglang:cache_config_info", "gauge", "Information of the cache configuration.");
    let _ = writeln!(
        o,
        "sglang:cache_config_info{{{l},num_pages=\"{}\",page_size=\"{}\"}} 1.0",
        s.num_gpu_blocks, s.block_size
    );
    o
}
