//! Counters and histograms an engine accumulates for `/metrics`.

/// vLLM's TTFT buckets, seconds.
pub const VLLM_TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
    160.0, 640.0, 2560.0,
];
/// vLLM's time-per-output-token / inter-token-latency buckets, seconds.
pub const VLLM_TPOT_BUCKETS: &[f64] =
    &[0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0];
/// vLLM's request-latency buckets (e2e, queue, prefill, decode, inference), seconds.
pub const VLLM_LATENCY_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0,
    1920.0, 7680.0,
];
/// vLLM's tokens-per-iteration buckets.
pub const VLLM_ITERATION_TOKEN_BUCKETS: &[f64] =
    &[1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0];
/// SGLang's TTFT buckets, seconds.
pub const SGLANG_TTFT_BUCKETS: &[f64] =
    &[0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0, 200.0, 400.0];
/// SGLang's inter-token-latency buckets, seconds.
pub const SGLANG_ITL_BUCKETS: &[f64] = &[
    0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.06, 0.08, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0,
    2.0, 4.0, 6.0, 8.0,
];
/// SGLang's e2e-latency buckets, seconds.
pub const SGLANG_E2E_BUCKETS: &[f64] = &[
    0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0, 200.0, 400.0, 800.0, 1200.0,
    1600.0, 2000.0, 2400.0,
];

/// vLLM's 1-2-5 bucket series up to `max` (used for token-count histograms).
pub fn buckets_1_2_5(max: u32) -> Vec<f64> {
    let mut out = Vec::new();
    let mut mag = 1u64;
    'outer: loop {
        for m in [1u64, 2, 5] {
            let v = m * mag;
            if v > u64::from(max) {
                break 'outer;
            }
            out.push(v as f64);
        }
        mag *= 10;
    }
    out
}

/// A Prometheus histogram with fixed upper bounds (non-cumulative counts; rendering accumulates).
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Upper bounds, ascending (the `+Inf` bucket is implicit).
    pub bounds: Vec<f64>,
    /// Observations per bucket; one more entry than `bounds` for `+Inf`.
    pub counts: Vec<u64>,
    /// Sum of observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    /// An empty histogram with these upper bounds.
    pub fn new(bounds: &[f64]) -> Self {
        Histogram { bounds: bounds.to_vec(), counts: vec![0; bounds.len() + 1], sum: 0.0, count: 0 }
    }

    /// Records one value.
    pub fn observe(&mut self, v: f64) {
        let i = self.bounds.partition_point(|b| *b < v);
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }
}

/// Everything an engine counts, cumulatively.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineStats {
    /// Requests accepted by `submit`.
    pub requests_received: u64,
    /// Prompt tokens of requests whose prefill completed.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub generation_tokens: u64,
    /// Preemptions (recompute).
    pub preemptions: u64,
    /// Prefix-cache queries, in tokens.
    pub prefix_queries: u64,
    /// Prefix-cache hits, in tokens.
    pub prefix_hits: u64,
    /// Cached prompt tokens of requests whose prefill completed (vLLM `prompt_tokens_cached`).
    pub prompt_tokens_cached: u64,
    /// Requests finished by reaching their natural end.
    pub finished_stop: u64,
    /// Requests finished by reaching `max_tokens`.
    pub finished_length: u64,
    /// Requests aborted.
    pub finished_abort: u64,
    /// Engine steps run.
    pub steps: u64,
    /// vLLM `time_to_first_token_seconds`.
    pub ttft: Histogram,
    /// vLLM `time_per_output_token_seconds` / `inter_token_latency_seconds`.
    pub itl: Histogram,
    /// vLLM `e2e_request_latency_seconds`.
    pub e2e: Histogram,
    /// vLLM `request_queue_time_seconds`.
    pub queue: Histogram,
    /// vLLM `request_prefill_time_seconds`.
    pub prefill: Histogram,
    /// vLLM `request_decode_time_seconds`.
    pub decode: Histogram,
    /// vLLM `request_inference_time_seconds`.
    pub inference: Histogram,
    /// vLLM `request_prompt_tokens`.
    pub req_prompt_tokens: Histogram,
    /// vLLM `request_generation_tokens`.
    pub req_generation_tokens: Histogram,
    /// vLLM `request_params_max_tokens`.
    pub req_max_tokens: Histogram,
    /// vLLM `iteration_tokens_total`.
    pub iteration_tokens: Histogram,
    /// vLLM 0.32 `request_max_num_generation_tokens`.
    pub req_max_generation_tokens: Histogram,
    /// vLLM 0.32 `request_params_n` (the simulator serves n = 1).
    pub req_params_n: Histogram,
    /// vLLM 0.32 `request_num_preemptions`.
    pub req_preemptions: Histogram,
    /// vLLM 0.32 `request_prefill_kv_computed_tokens` (prompt tokens not served from the cache).
    pub req_prefill_computed_tokens: Histogram,
    /// vLLM 0.32 `request_time_per_output_token_seconds` (per request: decode time / (tokens − 1)).
    pub req_tpot: Histogram,
    /// SGLang `time_to_first_token_seconds`.
    pub sglang_ttft: Histogram,
    /// SGLang `inter_token_latency_seconds`.
    pub sglang_itl: Histogram,
    /// SGLang `e2e_request_latency_seconds`.
    pub sglang_e2e: Histogram,
}

impl EngineStats {
    /// Empty statistics for an engine with this `max_model_len`.
    pub fn new(max_model_len: u32) -> Self {
        let tokens = buckets_1_2_5(max_model_len);
        EngineStats {
            requests_received: 0,
            prompt_tokens: 0,
            generation_tokens: 0,
            preemptions: 0,
            prefix_queries: 0,
            prefix_hits: 0,
            prompt_tokens_cached: 0,
            finished_stop: 0,
            finished_length: 0,
            finished_abort: 0,
            steps: 0,
            ttft: Histogram::new(VLLM_TTFT_BUCKETS),
            itl: Histogram::new(VLLM_TPOT_BUCKETS),
            e2e: Histogram::new(VLLM_LATENCY_BUCKETS),
            queue: Histogram::new(VLLM_LATENCY_BUCKETS),
            prefill: Histogram::new(VLLM_LATENCY_BUCKETS),
            decode: Histogram::new(VLLM_LATENCY_BUCKETS),
            inference: Histogram::new(VLLM_LATENCY_BUCKETS),
            req_prompt_tokens: Histogram::new(&tokens),
            req_generation_tokens: Histogram::new(&tokens),
            req_max_tokens: Histogram::new(&tokens),
            iteration_tokens: Histogram::new(VLLM_ITERATION_TOKEN_BUCKETS),
            req_max_generation_tokens: Histogram::new(&tokens),
            req_params_n: Histogram::new(&[1.0, 2.0, 5.0, 10.0, 20.0]),
            req_preemptions: Histogram::new(&[1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0]),
            req_prefill_computed_tokens: Histogram::new(&tokens),
            req_tpot: Histogram::new(VLLM_TPOT_BUCKETS),
            sglang_ttft: Histogram::new(SGLANG_TTFT_BUCKETS),
            sglang_itl: Histogram::new(SGLANG_ITL_BUCKETS),
            sglang_e2e: Histogram::new(SGLANG_E2E_BUCKETS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_and_1_2_5() {
        assert_eq!(buckets_1_2_5(4096), vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0]);
        let mut h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.0, 1.5, 3.0] {
            h.observe(v);
        }
        assert_eq!(h.counts, vec![2, 1, 1]);
        assert_eq!((h.count, h.sum), (4, 6.0));
    }
}
