//! The request path's Prometheus metrics, under upstream's names, labels and buckets
//! (`inference_objective_*`, `inference_extension_*`), rendered in the text format.
//!
//! Recording takes one short mutex per metric family; rendering copies nothing but the text.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use parking_lot::Mutex;

/// Buckets of the request duration and TTFT histograms (seconds).
pub const GENERAL_BUCKETS: &[f64] = &[
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0,
    45.0, 60.0, 120.0, 180.0, 240.0, 300.0, 360.0, 480.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0,
];
/// Buckets of the normalized time per output token histogram (seconds).
pub const NTPOT_BUCKETS: &[f64] = &[0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0];
/// Buckets of the scheduler latency histogram (seconds).
pub const SCHEDULER_BUCKETS: &[f64] = &[0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1];
/// Buckets of the token count histograms.
pub const TOKEN_BUCKETS: &[f64] = &[
    1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32778.0, 65536.0,
    131072.0, 262144.0, 524288.0, 1048576.0,
];

/// Buckets of the request size histogram (bytes): 64 B to 1 GiB in powers of two.
pub const REQUEST_SIZE_BUCKETS: &[f64] = &[
    64.0,
    128.0,
    256.0,
    512.0,
    1024.0,
    2048.0,
    4096.0,
    8192.0,
    16384.0,
    32768.0,
    65536.0,
    131072.0,
    262144.0,
    524288.0,
    1048576.0,
    2097152.0,
    4194304.0,
    8388608.0,
    16777216.0,
    33554432.0,
    67108864.0,
    134217728.0,
    268435456.0,
    536870912.0,
    1073741824.0,
];
/// Buckets of the response size histogram (bytes), upstream's list as it is (32778 included).
pub const RESPONSE_SIZE_BUCKETS: &[f64] =
    &[1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32778.0, 65536.0];
/// Buckets of the prefix hit ratio histogram.
pub const HIT_RATIO_BUCKETS: &[f64] = &[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];
/// Buckets of the prefix hit length histogram (bytes).
pub const HIT_BYTES_BUCKETS: &[f64] =
    &[0.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0, 65536.0];

type Labels = Vec<(&'static str, String)>;

#[derive(Clone, Debug)]
struct Hist {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Hist {
    fn new(n: usize) -> Self {
        Hist { counts: vec![0; n], sum: 0.0, count: 0 }
    }
}

/// One histogram family: label set → buckets.
#[derive(Debug)]
pub struct HistogramFamily {
    name: &'static str,
    help: &'static str,
    buckets: &'static [f64],
    series: Mutex<BTreeMap<Labels, Hist>>,
}

impl HistogramFamily {
    /// A family with upstream's `[ALPHA] ` help prefix added on render.
    pub const fn new(name: &'static str, help: &'static str, buckets: &'static [f64]) -> Self {
        HistogramFamily { name, help, buckets, series: Mutex::new(BTreeMap::new()) }
    }

    /// Records `value` under `labels`.
    pub fn observe(&self, labels: Labels, value: f64) {
        if !value.is_finite() {
            return;
        }
        let mut s = self.series.lock();
        let h = s.entry(labels).or_insert_with(|| Hist::new(self.buckets.len()));
        if let Some(i) = self.buckets.iter().position(|b| value <= *b) {
            h.counts[i] += 1;
        }
        h.sum += value;
        h.count += 1;
    }

    /// Appends the family in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let s = self.series.lock();
        let _ = writeln!(out, "# HELP {} [ALPHA] {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} histogram", self.name);
        for (labels, h) in s.iter() {
            let base = label_text(labels);
            let mut cum = 0;
            for (b, c) in self.buckets.iter().zip(&h.counts) {
                cum += c;
                let _ = writeln!(out, "{}_bucket{{{}le=\"{}\"}} {}", self.name, with_comma(&base), b, cum);
            }
            let _ = writeln!(out, "{}_bucket{{{}le=\"+Inf\"}} {}", self.name, with_comma(&base), h.count);
            let _ = writeln!(out, "{}_sum{} {}", self.name, braces(&base), h.sum);
            let _ = writeln!(out, "{}_count{} {}", self.name, braces(&base), h.count);
        }
    }
}

/// One counter or gauge family: label set → value.
#[derive(Debug)]
pub struct ValueFamily {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    series: Mutex<BTreeMap<Labels, f64>>,
}

impl ValueFamily {
    /// A counter family.
    pub const fn counter(name: &'static str, help: &'static str) -> Self {
        ValueFamily { name, help, kind: "counter", series: Mutex::new(BTreeMap::new()) }
    }

    /// A gauge family.
    pub const fn gauge(name: &'static str, help: &'static str) -> Self {
        ValueFamily { name, help, kind: "gauge", series: Mutex::new(BTreeMap::new()) }
    }

    /// Adds `delta` under `labels`.
    pub fn add(&self, labels: Labels, delta: f64) {
        *self.series.lock().entry(labels).or_insert(0.0) += delta;
    }

    /// Sets the value under `labels` (gauges).
    pub fn set(&self, labels: Labels, value: f64) {
        self.series.lock().insert(labels, value);
    }

    /// The current value under `labels` (0 if never set).
    pub fn get(&self, labels: &Labels) -> f64 {
        self.series.lock().get(labels).copied().unwrap_or(0.0)
    }

    /// Appends the family in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let s = self.series.lock();
        let _ = writeln!(out, "# HELP {} [ALPHA] {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        for (labels, v) in s.iter() {
            let _ = writeln!(out, "{}{} {}", self.name, braces(&label_text(labels)), v);
        }
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn label_text(labels: &Labels) -> String {
    labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect::<Vec<_>>().join(",")
}

/// `{labels}`, or nothing for an empty label set.
fn braces(labels: &str) -> String {
    if labels.is_empty() { String::new() } else { format!("{{{labels}}}") }
}

fn with_comma(s: &str) -> String {
    if s.is_empty() { String::new() } else { format!("{s},") }
}

/// The request path's metrics.
#[derive(Debug)]
pub struct RequestMetrics {
    /// `inference_objective_request_total` {model_name, priority, target_model_name}.
    pub request_total: ValueFamily,
    /// `inference_objective_request_error_total` {error_code, model_name, target_model_name}.
    pub request_error_total: ValueFamily,
    /// `inference_objective_request_duration_seconds` {model_name, target_model_name}.
    pub request_duration: HistogramFamily,
    /// `inference_objective_normalized_time_per_output_token_seconds`.
    pub ntpot: HistogramFamily,
    /// `inference_objective_input_tokens`.
    pub input_tokens: HistogramFamily,
    /// `inference_objective_output_tokens`.
    pub output_tokens: HistogramFamily,
    /// `inference_objective_running_requests` {model_name}.
    pub running_requests: ValueFamily,
    /// `inference_extension_scheduler_e2e_duration_seconds`.
    pub scheduler_e2e: HistogramFamily,
    /// `inference_extension_scheduler_attempts_total` {status, target_model_name, pod_name, namespace, port}.
    pub scheduler_attempts: ValueFamily,
    /// `inference_objective_request_sizes` {model_name, target_model_name}: bytes forwarded.
    pub request_sizes: HistogramFamily,
    /// `inference_objective_response_sizes` {model_name, target_model_name}: response body bytes.
    pub response_sizes: HistogramFamily,
    /// `inference_objective_prompt_cached_tokens` {model_name, target_model_name}.
    pub prompt_cached_tokens: HistogramFamily,
    /// `inference_extension_info` {commit, build_ref} = 1.
    pub info: ValueFamily,
    /// `inference_extension_prefix_indexer_size`: entries in the prefix index.
    pub prefix_indexer_size: ValueFamily,
    /// `inference_extension_prefix_indexer_hit_ratio`: matched / looked-up blocks of the pick.
    pub prefix_hit_ratio: HistogramFamily,
    /// `inference_extension_prefix_indexer_hit_bytes`: matched prefix length of the pick.
    pub prefix_hit_bytes: HistogramFamily,
    /// `inference_extension_model_rewrite_decisions_total` {model_rewrite_name, model_name, target_model}.
    pub model_rewrite_decisions: ValueFamily,
}

impl Default for RequestMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestMetrics {
    /// Empty families.
    pub fn new() -> Self {
        RequestMetrics {
            request_total: ValueFamily::counter(
                "inference_objective_request_total",
                "Counter of inference objective requests broken out for each model and target model.",
            ),
            request_error_total: ValueFamily::counter(
                "inference_objective_request_error_total",
                "Counter of inference objective requests errors broken out for each model and target model.",
            ),
            request_duration: HistogramFamily::new(
                "inference_objective_request_duration_seconds",
                "Inference objective response latency distribution in seconds for each model and target model.",
                GENERAL_BUCKETS,
            ),
            ntpot: HistogramFamily::new(
                "inference_objective_normalized_time_per_output_token_seconds",
                "Inference objective latency divided by number of output tokens in seconds for each model and target model.",
                NTPOT_BUCKETS,
            ),
            input_tokens: HistogramFamily::new(
                "inference_objective_input_tokens",
                "Inference objective input token count distribution for requests in each model.",
                TOKEN_BUCKETS,
            ),
            output_tokens: HistogramFamily::new(
                "inference_objective_output_tokens",
                "Inference objective output token count distribution for requests in each model.",
                &TOKEN_BUCKETS[..12],
            ),
            running_requests: ValueFamily::gauge(
                "inference_objective_running_requests",
                "Inference objective number of running requests in each model.",
            ),
            scheduler_e2e: HistogramFamily::new(
                "inference_extension_scheduler_e2e_duration_seconds",
                "End-to-end scheduling latency distribution in seconds.",
                SCHEDULER_BUCKETS,
            ),
            scheduler_attempts: ValueFamily::counter(
                "inference_extension_scheduler_attempts_total",
                "Total number of scheduling attempts.",
            ),
            request_sizes: HistogramFamily::new(
                "inference_objective_request_sizes",
                "Inference objective requests size distribution in bytes for each model and target model.",
                REQUEST_SIZE_BUCKETS,
            ),
            response_sizes: HistogramFamily::new(
                "inference_objective_response_sizes",
                "Inference objective responses size distribution in bytes for each model and target model.",
                RESPONSE_SIZE_BUCKETS,
            ),
            prompt_cached_tokens: HistogramFamily::new(
                "inference_objective_prompt_cached_tokens",
                "Inference objective prompt cached token count distribution for requests in each model.",
                TOKEN_BUCKETS,
            ),
            info: {
                let info = ValueFamily::gauge("inference_extension_info", "General information of the current build.");
                let commit = option_env!("IGW_GIT_COMMIT").unwrap_or("unknown").to_string();
                info.set(vec![("build_ref", env!("CARGO_PKG_VERSION").to_string()), ("commit", commit)], 1.0);
                info
            },
            prefix_indexer_size: ValueFamily::gauge(
                "inference_extension_prefix_indexer_size",
                "Size of the prefix indexer (entries).",
            ),
            prefix_hit_ratio: HistogramFamily::new(
                "inference_extension_prefix_indexer_hit_ratio",
                "Ratio of the prompt's prefix found cached on the chosen endpoint.",
                HIT_RATIO_BUCKETS,
            ),
            prefix_hit_bytes: HistogramFamily::new(
                "inference_extension_prefix_indexer_hit_bytes",
                "Length of the prompt's prefix found cached on the chosen endpoint, in bytes.",
                HIT_BYTES_BUCKETS,
            ),
            model_rewrite_decisions: ValueFamily::counter(
                "inference_extension_model_rewrite_decisions_total",
                "Total number of model rewrite decisions.",
            ),
        }
    }

    /// Appends every family in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        self.request_total.render(out);
        self.request_error_total.render(out);
        self.request_duration.render(out);
        self.ntpot.render(out);
        self.input_tokens.render(out);
        self.output_tokens.render(out);
        self.running_requests.render(out);
        self.scheduler_e2e.render(out);
        self.scheduler_attempts.render(out);
        self.request_sizes.render(out);
        self.response_sizes.render(out);
        self.prompt_cached_tokens.render(out);
        self.info.render(out);
        self.prefix_indexer_size.render(out);
        self.prefix_hit_ratio.render(out);
        self.prefix_hit_bytes.render(out);
        self.model_rewrite_decisions.render(out);
    }
}

/// The `{model_name, target_model_name}` label set.
pub fn model_labels(model: &str, target: &str) -> Labels {
    vec![("model_name", model.to_string()), ("target_model_name", target.to_string())]
}

/// Buckets of the queue duration histogram (seconds).
pub const QUEUE_DURATION_BUCKETS: &[f64] =
    &[0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// Buckets of the enqueue and dispatch-cycle latency histograms (seconds).
pub const CYCLE_BUCKETS: &[f64] = &[0.000_001, 0.000_005, 0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01];

/// Flow control's metrics under upstream's names (`inference_extension_flow_control_*`).
#[derive(Debug)]
pub struct FlowMetrics {
    /// `..._queue_size` {fairness_id, priority, inference_pool, model_name, target_model_name}.
    pub queue_size: ValueFamily,
    /// `..._queue_bytes`, same labels.
    pub queue_bytes: ValueFamily,
    /// `..._request_queue_duration_seconds` {fairness_id, priority, outcome, inference_pool, model_name, target_model_name}.
    pub queue_duration: HistogramFamily,
    /// `..._request_enqueue_duration_seconds` {fairness_id, priority, outcome}.
    pub enqueue_duration: HistogramFamily,
    /// `..._dispatch_cycle_duration_seconds`.
    pub dispatch_cycle: HistogramFamily,
    /// `..._pool_saturation` {inference_pool}.
    pub pool_saturation: ValueFamily,
}

impl Default for FlowMetrics {
    fn default() -> Self {
        FlowMetrics {
            queue_size: ValueFamily::gauge(
                igw_sched::flow::METRIC_QUEUE_SIZE,
                "Number of requests held in flow control queues.",
            ),
            queue_bytes: ValueFamily::gauge(
                igw_sched::flow::METRIC_QUEUE_BYTES,
                "Bytes of requests held in flow control queues.",
            ),
            queue_duration: HistogramFamily::new(
                igw_sched::flow::METRIC_REQUEST_QUEUE_DURATION,
                "Time requests spent in flow control, from enqueue to their final outcome.",
                QUEUE_DURATION_BUCKETS,
            ),
            enqueue_duration: HistogramFamily::new(
                igw_sched::flow::METRIC_REQUEST_ENQUEUE_DURATION,
                "Latency of enqueueing a request into flow control.",
                CYCLE_BUCKETS,
            ),
            dispatch_cycle: HistogramFamily::new(
                igw_sched::flow::METRIC_DISPATCH_CYCLE_DURATION,
                "Latency of one flow control dispatch cycle.",
                CYCLE_BUCKETS,
            ),
            pool_saturation: ValueFamily::gauge(
                igw_sched::flow::METRIC_POOL_SATURATION,
                "Pool saturation as the flow control saturation detector sees it.",
            ),
        }
    }
}

impl FlowMetrics {
    /// Appends every family in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        self.queue_size.render(out);
        self.queue_bytes.render(out);
        self.queue_duration.render(out);
        self.enqueue_duration.render(out);
        self.dispatch_cycle.render(out);
        self.pool_saturation.render(out);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn renders_upstream_shape() {
        let m = RequestMetrics::new();
        let mut l = model_labels("m10", "t10");
        l.insert(1, ("priority", "0".into()));
        m.request_total.add(l.clone(), 1.0);
        m.request_total.add(l.clone(), 1.0);
        m.request_duration.observe(model_labels("m10", "t10"), 0.03);
        let mut out = String::new();
        m.render(&mut out);
        assert!(
            out.contains(
                "inference_objective_request_total{model_name=\"m10\",priority=\"0\",target_model_name=\"t10\"} 2\n"
            ),
            "{out}"
        );
        assert!(out.contains("inference_objective_request_duration_seconds_bucket{model_name=\"m10\",target_model_name=\"t10\",le=\"0.025\"} 0\n"));
        assert!(out.contains("inference_objective_request_duration_seconds_bucket{model_name=\"m10\",target_model_name=\"t10\",le=\"0.05\"} 1\n"));
        assert!(out.contains("# HELP inference_objective_request_total [ALPHA] "));
        assert_eq!(m.request_total.get(&l), 2.0);
    }
}
