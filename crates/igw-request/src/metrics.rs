//! The request path's Prometheus metrics, under upstream's names, labels and buckets
//! (`inference_objective_*`, `inference_extension_*`), rendered in the text format Prometheus
//! scrapes (0.0.4).
//!
//! The families live in one [`prometheus::Registry`] per pool (lock-free counters, gauges and
//! histograms). The request path never looks a label set up: a request resolves its [`Series`]
//! once, at admission (a lock-free map read; the first request of a label set builds it), and every
//! later update is an atomic operation on a handle the series holds. A handle is created the
//! first time it records, so a family shows only the label sets that have been recorded.

use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use hashbrown::{Equivalent, HashMap};
use igw_core::{Endpoint, Priority};
use igw_sched::flow::Outcome;
use parking_lot::Mutex;
use prometheus::{Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

use crate::error::ErrorCode;

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
/// Buckets of the prediction error histogram (relative error).
pub const PREDICTION_ERROR_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0];
/// Buckets of the prefix hit ratio histogram.
pub const HIT_RATIO_BUCKETS: &[f64] = &[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];
/// Buckets of the prefix hit length histogram (bytes).
pub const HIT_BYTES_BUCKETS: &[f64] =
    &[0.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0, 65536.0];

const VALID: &str = "a constant, valid metric family";

/// A family's handle for one label set, created the first time it records.
#[derive(Debug)]
struct Slot<M>(OnceLock<M>);

impl<M> Default for Slot<M> {
    fn default() -> Self {
        Slot(OnceLock::new())
    }
}

impl<M> Slot<M> {
    fn get(&self, make: impl FnOnce() -> M) -> &M {
        self.0.get_or_init(make)
    }
}

/// A counter family `name` with label names `labels`, registered in `reg`; `help` gains
/// upstream's `[ALPHA] ` prefix. Panics on an invalid or duplicate name (a programming error).
pub fn counters(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let v = IntCounterVec::new(Opts::new(name, format!("[ALPHA] {help}")), labels).expect(VALID);
    reg.register(Box::new(v.clone())).expect(VALID);
    v
}

/// A gauge family, as [`counters`].
pub fn gauges(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let v = GaugeVec::new(Opts::new(name, format!("[ALPHA] {help}")), labels).expect(VALID);
    reg.register(Box::new(v.clone())).expect(VALID);
    v
}

/// A histogram family with `buckets`, as [`counters`].
pub fn histograms(reg: &Registry, name: &str, help: &str, buckets: &[f64], labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, format!("[ALPHA] {help}")).buckets(buckets.to_vec());
    let v = HistogramVec::new(opts, labels).expect(VALID);
    reg.register(Box::new(v.clone())).expect(VALID);
    v
}

/// Records `value` unless it is NaN or infinite (a histogram's sum would be lost).
pub fn observe(h: &Histogram, value: f64) {
    if value.is_finite() {
        h.observe(value);
    }
}

/// Appends `registry`'s families in the text format 0.0.4 (families without a sample are left out).
pub fn render_registry(registry: &Registry, out: &mut String) {
    // Writing into a String cannot fail, and every family is well-formed by construction.
    let _ = prometheus::TextEncoder::new().encode_utf8(&registry.gather(), out);
}

const MODEL: &[&str] = &["model_name", "target_model_name"];
const QUEUE: &[&str] = &["fairness_id", "inference_pool", "model_name", "priority", "target_model_name"];

/// The request path's metrics of one pool.
#[derive(Debug)]
pub struct RequestMetrics {
    registry: Registry,
    /// `inference_objective_request_total` {model_name, priority, target_model_name}.
    pub request_total: IntCounterVec,
    /// `inference_objective_request_error_total` {error_code, model_name, target_model_name}.
    pub request_error_total: IntCounterVec,
    /// `inference_objective_request_duration_seconds` {model_name, target_model_name}.
    pub request_duration: HistogramVec,
    /// `inference_objective_normalized_time_per_output_token_seconds`.
    pub ntpot: HistogramVec,
    /// `inference_objective_input_tokens`.
    pub input_tokens: HistogramVec,
    /// `inference_objective_output_tokens`.
    pub output_tokens: HistogramVec,
    /// `inference_objective_running_requests` {model_name}.
    pub running_requests: GaugeVec,
    /// `inference_extension_scheduler_e2e_duration_seconds`.
    pub scheduler_e2e: HistogramVec,
    /// `inference_extension_scheduler_attempts_total` {status, target_model_name, pod_name, namespace, port}.
    pub scheduler_attempts: IntCounterVec,
    /// `inference_objective_request_sizes` {model_name, target_model_name}: bytes forwarded.
    pub request_sizes: HistogramVec,
    /// `inference_objective_response_sizes` {model_name, target_model_name}: response body bytes.
    pub response_sizes: HistogramVec,
    /// `inference_objective_prompt_cached_tokens` {model_name, target_model_name}.
    pub prompt_cached_tokens: HistogramVec,
    /// `inference_extension_info` {commit, build_ref} = 1.
    pub info: GaugeVec,
    /// `inference_extension_prefix_indexer_size`: entries in the prefix index.
    pub prefix_indexer_size: GaugeVec,
    /// `inference_extension_prefix_indexer_hit_ratio`: matched / looked-up blocks of the pick.
    pub prefix_hit_ratio: HistogramVec,
    /// `inference_extension_prefix_indexer_hit_bytes`: matched prefix length of the pick.
    pub prefix_hit_bytes: HistogramVec,
    /// `inference_extension_model_rewrite_decisions_total` {model_rewrite_name, model_name, target_model}.
    pub model_rewrite_decisions: IntCounterVec,
    /// `inference_objective_request_ttft_seconds` {model_name, target_model_name}: time from
    /// forwarding to the first streamed token, as the gateway saw it.
    pub ttft: HistogramVec,
    /// `inference_objective_request_tpot_seconds` {model_name, target_model_name}: time per
    /// output token after the first, of streamed responses.
    pub tpot: HistogramVec,
    /// `inference_objective_request_predicted_ttft_seconds`: the pick's predicted TTFT.
    pub predicted_ttft: HistogramVec,
    /// `inference_objective_request_predicted_tpot_seconds`: the pick's predicted TPOT.
    pub predicted_tpot: HistogramVec,
    /// `inference_objective_request_slo_violation_total` {model_name, target_model_name, type}:
    /// requests whose TTFT or TPOT exceeded the objective their headers stated.
    pub slo_violation: IntCounterVec,
    /// `igw_latency_prediction_error_ratio` {signal}: |predicted − observed| / observed.
    pub prediction_error: HistogramVec,
    predicted_ttft_one: Slot<Histogram>,
    predicted_tpot_one: Slot<Histogram>,
    error_ttft_one: Slot<Histogram>,
    error_tpot_one: Slot<Histogram>,
    scheduler_e2e_one: Slot<Histogram>,
    prefix_size_one: Slot<Gauge>,
    hit_ratio_one: Slot<Histogram>,
    hit_bytes_one: Slot<Histogram>,
}

impl Default for RequestMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestMetrics {
    /// The families, empty but for `inference_extension_info`.
    pub fn new() -> Self {
        let r = Registry::new();
        let m = RequestMetrics {
            request_total: counters(
                &r,
                "inference_objective_request_total",
                "Counter of inference objective requests broken out for each model and target model.",
                &["model_name", "priority", "target_model_name"],
            ),
            request_error_total: counters(
                &r,
                "inference_objective_request_error_total",
                "Counter of inference objective requests errors broken out for each model and target model.",
                &["error_code", "model_name", "target_model_name"],
            ),
            request_duration: histograms(
                &r,
                "inference_objective_request_duration_seconds",
                "Inference objective response latency distribution in seconds for each model and target model.",
                GENERAL_BUCKETS,
                MODEL,
            ),
            ntpot: histograms(
                &r,
                "inference_objective_normalized_time_per_output_token_seconds",
                "Inference objective latency divided by number of output tokens in seconds for each model and target model.",
                NTPOT_BUCKETS,
                MODEL,
            ),
            input_tokens: histograms(
                &r,
                "inference_objective_input_tokens",
                "Inference objective input token count distribution for requests in each model.",
                TOKEN_BUCKETS,
                MODEL,
            ),
            output_tokens: histograms(
                &r,
                "inference_objective_output_tokens",
                "Inference objective output token count distribution for requests in each model.",
                &TOKEN_BUCKETS[..12],
                MODEL,
            ),
            running_requests: gauges(
                &r,
                "inference_objective_running_requests",
                "Inference objective number of running requests in each model.",
                &["model_name"],
            ),
            scheduler_e2e: histograms(
                &r,
                "inference_extension_scheduler_e2e_duration_seconds",
                "End-to-end scheduling latency distribution in seconds.",
                SCHEDULER_BUCKETS,
                &[],
            ),
            scheduler_attempts: counters(
                &r,
                "inference_extension_scheduler_attempts_total",
                "Total number of scheduling attempts.",
                &["namespace", "pod_name", "port", "status", "target_model_name"],
            ),
            request_sizes: histograms(
                &r,
                "inference_objective_request_sizes",
                "Inference objective requests size distribution in bytes for each model and target model.",
                REQUEST_SIZE_BUCKETS,
                MODEL,
            ),
            response_sizes: histograms(
                &r,
                "inference_objective_response_sizes",
                "Inference objective responses size distribution in bytes for each model and target model.",
                RESPONSE_SIZE_BUCKETS,
                MODEL,
            ),
            prompt_cached_tokens: histograms(
                &r,
                "inference_objective_prompt_cached_tokens",
                "Inference objective prompt cached token count distribution for requests in each model.",
                TOKEN_BUCKETS,
                MODEL,
            ),
            info: gauges(
                &r,
                "inference_extension_info",
                "General information of the current build.",
                &["build_ref", "commit"],
            ),
            prefix_indexer_size: gauges(
                &r,
                "inference_extension_prefix_indexer_size",
                "Size of the prefix indexer (entries).",
                &[],
            ),
            prefix_hit_ratio: histograms(
                &r,
                "inference_extension_prefix_indexer_hit_ratio",
                "Ratio of the prompt's prefix found cached on the chosen endpoint.",
                HIT_RATIO_BUCKETS,
                &[],
            ),
            prefix_hit_bytes: histograms(
                &r,
                "inference_extension_prefix_indexer_hit_bytes",
                "Length of the prompt's prefix found cached on the chosen endpoint, in bytes.",
                HIT_BYTES_BUCKETS,
                &[],
            ),
            model_rewrite_decisions: counters(
                &r,
                "inference_extension_model_rewrite_decisions_total",
                "Total number of model rewrite decisions.",
                &["model_name", "model_rewrite_name", "target_model"],
            ),
            ttft: histograms(
                &r,
                "inference_objective_request_ttft_seconds",
                "Time from forwarding a request to its first streamed token, in seconds.",
                GENERAL_BUCKETS,
                MODEL,
            ),
            tpot: histograms(
                &r,
                "inference_objective_request_tpot_seconds",
                "Time per output token after the first of streamed responses, in seconds.",
                NTPOT_BUCKETS,
                MODEL,
            ),
            predicted_ttft: histograms(
                &r,
                "inference_objective_request_predicted_ttft_seconds",
                "Time to first token the latency model predicted on the chosen endpoint, in seconds.",
                GENERAL_BUCKETS,
                &[],
            ),
            predicted_tpot: histograms(
                &r,
                "inference_objective_request_predicted_tpot_seconds",
                "Time per output token the latency model predicted on the chosen endpoint, in seconds.",
                NTPOT_BUCKETS,
                &[],
            ),
            slo_violation: counters(
                &r,
                "inference_objective_request_slo_violation_total",
                "Requests whose time to first token or time per output token exceeded their SLO.",
                &["model_name", "target_model_name", "type"],
            ),
            prediction_error: histograms(
                &r,
                "igw_latency_prediction_error_ratio",
                "Absolute error of the latency model's prediction relative to the observed value.",
                PREDICTION_ERROR_BUCKETS,
                &["signal"],
            ),
            predicted_ttft_one: Slot::default(),
            predicted_tpot_one: Slot::default(),
            error_ttft_one: Slot::default(),
            error_tpot_one: Slot::default(),
            registry: r,
            scheduler_e2e_one: Slot::default(),
            prefix_size_one: Slot::default(),
            hit_ratio_one: Slot::default(),
            hit_bytes_one: Slot::default(),
        };
        let commit = option_env!("IGW_GIT_COMMIT").unwrap_or("unknown");
        m.info.with_label_values(&[env!("CARGO_PKG_VERSION"), commit]).set(1.0);
        m
    }

    /// Appends every family in the text format 0.0.4.
    pub fn render(&self, out: &mut String) {
        render_registry(&self.registry, out);
    }

    /// One scheduling decision took `secs`.
    pub fn scheduler_latency(&self, secs: f64) {
        observe(self.scheduler_e2e_one.get(|| self.scheduler_e2e.with_label_values(&[] as &[&str])), secs);
    }

    /// The chosen endpoint was predicted to answer with `ttft` seconds to the first token and
    /// `tpot` seconds per output token.
    pub fn predicted(&self, ttft: f64, tpot: f64) {
        observe(self.predicted_ttft_one.get(|| self.predicted_ttft.with_label_values(&[] as &[&str])), ttft);
        observe(self.predicted_tpot_one.get(|| self.predicted_tpot.with_label_values(&[] as &[&str])), tpot);
    }

    /// A finished request's prediction was off by `ttft` and `tpot` (relative errors, when
    /// observable).
    pub fn prediction_error(&self, ttft: Option<f64>, tpot: Option<f64>) {
        if let Some(e) = ttft {
            observe(self.error_ttft_one.get(|| self.prediction_error.with_label_values(&["ttft"])), e);
        }
        if let Some(e) = tpot {
            observe(self.error_tpot_one.get(|| self.prediction_error.with_label_values(&["tpot"])), e);
        }
    }

    /// The prefix index holds `entries`.
    pub fn prefix_index_size(&self, entries: usize) {
        self.prefix_size_one.get(|| self.prefix_indexer_size.with_label_values(&[] as &[&str])).set(entries as f64);
    }

    /// The pick found `ratio` of the prompt's blocks, `bytes` of it, cached on its endpoint.
    pub fn prefix_hit(&self, ratio: f64, bytes: f64) {
        observe(self.hit_ratio_one.get(|| self.prefix_hit_ratio.with_label_values(&[] as &[&str])), ratio);
        observe(self.hit_bytes_one.get(|| self.prefix_hit_bytes.with_label_values(&[] as &[&str])), bytes);
    }
}

/// Buckets of the queue duration histogram (seconds).
pub const QUEUE_DURATION_BUCKETS: &[f64] =
    &[0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// Buckets of the enqueue and dispatch-cycle latency histograms (seconds).
pub const CYCLE_BUCKETS: &[f64] = &[0.000_001, 0.000_005, 0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01];

/// Flow control's metrics of one pool under upstream's names (`inference_extension_flow_control_*`).
#[derive(Debug)]
pub struct FlowMetrics {
    registry: Registry,
    pool: String,
    /// `..._queue_size` {fairness_id, priority, inference_pool, model_name, target_model_name}.
    pub queue_size: GaugeVec,
    /// `..._queue_bytes`, same labels.
    pub queue_bytes: GaugeVec,
    /// `..._request_queue_duration_seconds` {fairness_id, priority, outcome, inference_pool, model_name, target_model_name}.
    pub queue_duration: HistogramVec,
    /// `..._request_enqueue_duration_seconds` {fairness_id, priority, outcome}.
    pub enqueue_duration: HistogramVec,
    /// `..._dispatch_cycle_duration_seconds`.
    pub dispatch_cycle: HistogramVec,
    /// `..._pool_saturation` {inference_pool}.
    pub pool_saturation: GaugeVec,
    dispatch_cycle_one: Slot<Histogram>,
    saturation_one: Slot<Gauge>,
}

impl Default for FlowMetrics {
    fn default() -> Self {
        Self::for_pool("")
    }
}

impl FlowMetrics {
    /// Empty families for the pool `pool` (its `inference_pool` label).
    pub fn for_pool(pool: &str) -> Self {
        use igw_sched::flow as f;
        let r = Registry::new();
        FlowMetrics {
            queue_size: gauges(&r, f::METRIC_QUEUE_SIZE, "Number of requests held in flow control queues.", QUEUE),
            queue_bytes: gauges(&r, f::METRIC_QUEUE_BYTES, "Bytes of requests held in flow control queues.", QUEUE),
            queue_duration: histograms(
                &r,
                f::METRIC_REQUEST_QUEUE_DURATION,
                "Time requests spent in flow control, from enqueue to their final outcome.",
                QUEUE_DURATION_BUCKETS,
                &["fairness_id", "inference_pool", "model_name", "outcome", "priority", "target_model_name"],
            ),
            enqueue_duration: histograms(
                &r,
                f::METRIC_REQUEST_ENQUEUE_DURATION,
                "Latency of enqueueing a request into flow control.",
                CYCLE_BUCKETS,
                &["fairness_id", "outcome", "priority"],
            ),
            dispatch_cycle: histograms(
                &r,
                f::METRIC_DISPATCH_CYCLE_DURATION,
                "Latency of one flow control dispatch cycle.",
                CYCLE_BUCKETS,
                &[],
            ),
            pool_saturation: gauges(
                &r,
                f::METRIC_POOL_SATURATION,
                "Pool saturation as the flow control saturation detector sees it.",
                &["inference_pool"],
            ),
            registry: r,
            pool: pool.to_string(),
            dispatch_cycle_one: Slot::default(),
            saturation_one: Slot::default(),
        }
    }

    /// Appends every family in the text format 0.0.4.
    pub fn render(&self, out: &mut String) {
        render_registry(&self.registry, out);
    }

    /// One dispatch cycle took `secs`.
    pub fn dispatch_cycle_latency(&self, secs: f64) {
        observe(self.dispatch_cycle_one.get(|| self.dispatch_cycle.with_label_values(&[] as &[&str])), secs);
    }

    /// The detector sees the pool at `saturation`.
    pub fn saturation(&self, saturation: f64) {
        self.saturation_one.get(|| self.pool_saturation.with_label_values(&[self.pool.as_str()])).set(saturation);
    }
}

/// What a request's metrics are labelled with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeriesKey<'a> {
    /// The client's model name.
    pub model: &'a str,
    /// The model the request is sent for (after rewrites).
    pub target_model: &'a str,
    /// Its priority.
    pub priority: Priority,
    /// Its fairness flow.
    pub fairness_id: &'a str,
    /// The model rewrite rule that chose its target, if one did.
    pub rewrite_rule: Option<&'a str>,
}

/// [`SeriesKey`], owned. Its derived `Hash` hashes the same values in the same order as the
/// borrowed key's, so the cache is looked up without building one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct OwnedKey {
    model: String,
    target_model: String,
    priority: Priority,
    fairness_id: Arc<str>,
    rewrite_rule: Option<String>,
}

impl Equivalent<OwnedKey> for SeriesKey<'_> {
    fn equivalent(&self, k: &OwnedKey) -> bool {
        self.model == k.model
            && self.target_model == k.target_model
            && self.priority == k.priority
            && self.fairness_id == &*k.fairness_id
            && self.rewrite_rule == k.rewrite_rule.as_deref()
    }
}

const ERROR_CODES: usize = 10;

fn error_index(c: ErrorCode) -> usize {
    match c {
        ErrorCode::BadRequest => 0,
        ErrorCode::Unauthorized => 1,
        ErrorCode::Forbidden => 2,
        ErrorCode::NotFound => 3,
        ErrorCode::PayloadTooLarge => 4,
        ErrorCode::ResourceExhausted => 5,
        ErrorCode::Internal => 6,
        ErrorCode::ServiceUnavailable => 7,
        ErrorCode::ModelServerError => 8,
        ErrorCode::Unknown => 9,
    }
}

const OUTCOMES: usize = 6;

fn outcome_index(o: Outcome) -> usize {
    match o {
        Outcome::Dispatched => 0,
        Outcome::RejectedCapacity => 1,
        Outcome::RejectedOther => 2,
        Outcome::EvictedTTL => 3,
        Outcome::EvictedContextCancelled => 4,
        Outcome::EvictedOther => 5,
    }
}

/// `scheduler_attempts_total{status="success"}` of one endpoint, with the endpoint's names it
/// was labelled with (an address reused by another pod gets a new counter).
#[derive(Debug)]
struct AttemptCounter {
    namespace: String,
    pod: String,
    counter: IntCounter,
}

/// The handles of one label set ([`SeriesKey`]) in one pool: every metric a request with that
/// key records, each an atomic update once created.
#[derive(Debug)]
pub struct Series {
    key: OwnedKey,
    priority_label: String,
    request: Arc<RequestMetrics>,
    flow: Arc<FlowMetrics>,
    total: Slot<IntCounter>,
    sizes: Slot<Histogram>,
    rewrites: Slot<IntCounter>,
    errors: [Slot<IntCounter>; ERROR_CODES],
    running: Slot<Gauge>,
    duration: Slot<Histogram>,
    response_sizes: Slot<Histogram>,
    cached_tokens: Slot<Histogram>,
    input_tokens: Slot<Histogram>,
    output_tokens: Slot<Histogram>,
    ntpot: Slot<Histogram>,
    ttft: Slot<Histogram>,
    tpot: Slot<Histogram>,
    attempts: ArcSwap<HashMap<SocketAddr, Arc<AttemptCounter>>>,
    attempt_failed: Slot<IntCounter>,
    queue_size: Slot<Gauge>,
    queue_bytes: Slot<Gauge>,
    queued: [Slot<Histogram>; OUTCOMES],
    /// Enqueue latency by outcome; the last slot is `NotYetFinalized` (accepted into a queue).
    enqueued: [Slot<Histogram>; OUTCOMES + 1],
}

impl Series {
    fn new(key: OwnedKey, request: Arc<RequestMetrics>, flow: Arc<FlowMetrics>) -> Self {
        Series {
            priority_label: key.priority.to_string(),
            key,
            request,
            flow,
            total: Slot::default(),
            sizes: Slot::default(),
            rewrites: Slot::default(),
            errors: Default::default(),
            running: Slot::default(),
            duration: Slot::default(),
            response_sizes: Slot::default(),
            cached_tokens: Slot::default(),
            input_tokens: Slot::default(),
            output_tokens: Slot::default(),
            ntpot: Slot::default(),
            ttft: Slot::default(),
            tpot: Slot::default(),
            attempts: ArcSwap::default(),
            attempt_failed: Slot::default(),
            queue_size: Slot::default(),
            queue_bytes: Slot::default(),
            queued: Default::default(),
            enqueued: Default::default(),
        }
    }

    /// The client's model name.
    pub fn model(&self) -> &str {
        &self.key.model
    }

    /// The target model.
    pub fn target_model(&self) -> &str {
        &self.key.target_model
    }

    /// The priority.
    pub fn priority(&self) -> Priority {
        self.key.priority
    }

    /// The fairness flow.
    pub fn fairness_id(&self) -> &Arc<str> {
        &self.key.fairness_id
    }

    /// The model rewrite rule that chose the target, if one did.
    pub fn rewrite_rule(&self) -> Option<&str> {
        self.key.rewrite_rule.as_deref()
    }

    fn model_labels(&self) -> [&str; 2] {
        [&self.key.model, &self.key.target_model]
    }

    /// A request was scheduled: `request_total`, its forwarded size, the rewrite decision.
    pub fn requested(&self, body_bytes: usize) {
        let m = &self.request;
        let k = &self.key;
        self.total.get(|| m.request_total.with_label_values(&[&k.model, &self.priority_label, &k.target_model])).inc();
        observe(self.sizes.get(|| m.request_sizes.with_label_values(&self.model_labels())), body_bytes as f64);
        if let Some(rule) = &k.rewrite_rule {
            self.rewrites.get(|| m.model_rewrite_decisions.with_label_values(&[&k.model, rule, &k.target_model])).inc();
        }
    }

    /// A request failed with `code` (`request_error_total`).
    pub fn error(&self, code: ErrorCode) {
        let k = &self.key;
        self.errors[error_index(code)]
            .get(|| self.request.request_error_total.with_label_values(&[code.as_str(), &k.model, &k.target_model]))
            .inc();
    }

    /// The scheduler picked `endpoint` (`scheduler_attempts_total{status="success"}`).
    pub fn scheduled(&self, endpoint: &Endpoint) {
        let meta = endpoint.meta();
        let addr = endpoint.address();
        if let Some(a) = self.attempts.load().get(&addr)
            && a.namespace == meta.namespace
            && a.pod == meta.pod
        {
            a.counter.inc();
            return;
        }
        let port = addr.port().to_string();
        let counter = self.request.scheduler_attempts.with_label_values(&[
            meta.namespace.as_str(),
            meta.pod.as_str(),
            &port,
            "success",
            &self.key.target_model,
        ]);
        counter.inc();
        let a = Arc::new(AttemptCounter { namespace: meta.namespace.clone(), pod: meta.pod.clone(), counter });
        self.attempts.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.insert(addr, a.clone());
            map
        });
    }

    /// The scheduler found no endpoint (`scheduler_attempts_total{status="failure"}`).
    pub fn schedule_failed(&self) {
        self.attempt_failed
            .get(|| self.request.scheduler_attempts.with_label_values(&["", "", "", "failure", &self.key.target_model]))
            .inc();
    }

    /// A request of this series started (`+1.0`) or stopped (`-1.0`) running.
    pub fn running(&self, delta: f64) {
        self.running.get(|| self.request.running_requests.with_label_values(&[&self.key.model])).add(delta);
    }

    /// A streamed response's first token came `ttft` seconds after forwarding, and later tokens
    /// `tpot` seconds apart on average (each when observable).
    pub fn latency(&self, ttft: Option<f64>, tpot: Option<f64>) {
        let m = &self.request;
        if let Some(t) = ttft {
            observe(self.ttft.get(|| m.ttft.with_label_values(&self.model_labels())), t);
        }
        if let Some(t) = tpot {
            observe(self.tpot.get(|| m.tpot.with_label_values(&self.model_labels())), t);
        }
    }

    /// A request that stated an SLO missed its TTFT (`ttft`) or TPOT (`tpot`) objective.
    pub fn slo_outcome(&self, ttft: bool, tpot: bool) {
        let k = &self.key;
        for (missed, kind) in [(ttft, "ttft"), (tpot, "tpot")] {
            if missed {
                self.request.slo_violation.with_label_values(&[&k.model, &k.target_model, kind]).inc();
            }
        }
    }

    /// A request was served in `secs` with a response of `response_bytes` and `usage`.
    pub fn served(&self, secs: f64, response_bytes: u64, usage: Option<&crate::usage::Usage>) {
        let m = &self.request;
        let l = self.model_labels();
        observe(self.duration.get(|| m.request_duration.with_label_values(&l)), secs);
        observe(self.response_sizes.get(|| m.response_sizes.with_label_values(&l)), response_bytes as f64);
        let Some(u) = usage else { return };
        if u.cached_tokens > 0 {
            observe(self.cached_tokens.get(|| m.prompt_cached_tokens.with_label_values(&l)), u.cached_tokens as f64);
        }
        if u.prompt_tokens > 0 {
            observe(self.input_tokens.get(|| m.input_tokens.with_label_values(&l)), u.prompt_tokens as f64);
        }
        if u.completion_tokens > 0 {
            observe(self.output_tokens.get(|| m.output_tokens.with_label_values(&l)), u.completion_tokens as f64);
            observe(self.ntpot.get(|| m.ntpot.with_label_values(&l)), secs / u.completion_tokens as f64);
        }
    }

    fn queue_labels(&self) -> [&str; 5] {
        let k = &self.key;
        [&*k.fairness_id, &self.flow.pool, &k.model, &self.priority_label, &k.target_model]
    }

    /// Enqueueing took `secs`; `outcome` is `None` when the request now waits (upstream's
    /// `NotYetFinalized`), else why it was refused.
    pub fn enqueued(&self, outcome: Option<Outcome>, secs: f64) {
        let (i, label) = outcome.map_or((OUTCOMES, "NotYetFinalized"), |o| (outcome_index(o), o.as_str()));
        let k = &self.key;
        let h = self.enqueued[i]
            .get(|| self.flow.enqueue_duration.with_label_values(&[&*k.fairness_id, label, &self.priority_label]));
        observe(h, secs);
    }

    /// A request of `bytes` joined (`sign` 1.0) or left (`-1.0`) a queue.
    pub fn queue_moved(&self, bytes: u64, sign: f64) {
        let l = self.queue_labels();
        self.queue_size.get(|| self.flow.queue_size.with_label_values(&l)).add(sign);
        self.queue_bytes.get(|| self.flow.queue_bytes.with_label_values(&l)).add(sign * bytes as f64);
    }

    /// A request left flow control with `outcome` after `secs` there.
    pub fn queue_settled(&self, outcome: Outcome, secs: f64) {
        let k = &self.key;
        let h = self.queued[outcome_index(outcome)].get(|| {
            self.flow.queue_duration.with_label_values(&[
                &*k.fairness_id,
                &self.flow.pool,
                &k.model,
                outcome.as_str(),
                &self.priority_label,
                &k.target_model,
            ])
        });
        observe(h, secs);
    }
}

/// Caps the series cache: label sets beyond it (a client inventing model names) still record,
/// through a series built for the request, but are not kept. A new series copies the cache's
/// map (reads stay lock-free), so the cap also bounds that copy.
pub const MAX_CACHED_SERIES: usize = 4_096;

/// One pool's metrics: the request and flow control families, and the series cache every
/// request resolves its handles from.
#[derive(Debug)]
pub struct PoolMetrics {
    /// The request families.
    pub request: Arc<RequestMetrics>,
    /// Flow control's families.
    pub flow: Arc<FlowMetrics>,
    series: ArcSwap<HashMap<OwnedKey, Arc<Series>>>,
    /// Serialises the building of new series (never taken on a cache hit).
    building: Mutex<()>,
    cap: usize,
}

impl PoolMetrics {
    /// Empty families for the pool `pool`.
    pub fn new(pool: &str) -> Self {
        PoolMetrics {
            request: Arc::new(RequestMetrics::new()),
            flow: Arc::new(FlowMetrics::for_pool(pool)),
            series: ArcSwap::default(),
            building: Mutex::new(()),
            cap: MAX_CACHED_SERIES,
        }
    }

    /// The series of `key`: a lock-free read when it exists; built (its labels copied once) when
    /// it does not.
    pub fn series(&self, key: SeriesKey<'_>) -> Arc<Series> {
        if let Some(s) = self.series.load().get(&key) {
            return s.clone();
        }
        let _building = self.building.lock();
        let current = self.series.load_full();
        if let Some(s) = current.get(&key) {
            return s.clone();
        }
        let owned = OwnedKey {
            model: key.model.to_string(),
            target_model: key.target_model.to_string(),
            priority: key.priority,
            fairness_id: Arc::from(key.fairness_id),
            rewrite_rule: key.rewrite_rule.map(str::to_string),
        };
        let s = Arc::new(Series::new(owned.clone(), self.request.clone(), self.flow.clone()));
        if current.len() < self.cap {
            let mut map = HashMap::clone(&current);
            map.insert(owned, s.clone());
            self.series.store(Arc::new(map));
        }
        s
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key<'a>(model: &'a str, target: &'a str) -> SeriesKey<'a> {
        SeriesKey { model, target_model: target, priority: 0, fairness_id: "f", rewrite_rule: None }
    }

    #[test]
    fn renders_upstream_shape() {
        let m = PoolMetrics::new("p");
        let s = m.series(key("m10", "t10"));
        s.requested(10);
        s.requested(10);
        s.served(0.03, 5, None);
        let mut out = String::new();
        m.request.render(&mut out);
        assert!(
            out.contains(
                "inference_objective_request_total{model_name=\"m10\",priority=\"0\",target_model_name=\"t10\"} 2\n"
            ),
            "{out}"
        );
        assert!(out.contains("inference_objective_request_duration_seconds_bucket{model_name=\"m10\",target_model_name=\"t10\",le=\"0.025\"} 0\n"), "{out}");
        assert!(out.contains("inference_objective_request_duration_seconds_bucket{model_name=\"m10\",target_model_name=\"t10\",le=\"0.05\"} 1\n"));
        assert!(out.contains("# HELP inference_objective_request_total [ALPHA] "));
        assert!(out.contains("# TYPE inference_objective_request_total counter\n"));
        assert!(!out.contains("inference_objective_request_error_total"), "a family shows once it records: {out}");
        assert_eq!(m.request.request_total.with_label_values(&["m10", "0", "t10"]).get(), 2);
    }

    #[test]
    fn a_key_resolves_to_one_series_and_each_key_to_its_own() {
        let m = PoolMetrics::new("p");
        let a = m.series(key("m", "t"));
        assert!(Arc::ptr_eq(&a, &m.series(key("m", "t"))));
        let b = m.series(SeriesKey { rewrite_rule: Some("canary"), ..key("m", "t") });
        let c = m.series(SeriesKey { priority: -1, ..key("m", "t") });
        let d = m.series(SeriesKey { fairness_id: "g", ..key("m", "t") });
        for other in [&b, &c, &d, &m.series(key("m", "u")), &m.series(key("n", "t"))] {
            assert!(!Arc::ptr_eq(&a, other));
        }
        assert_eq!(b.rewrite_rule(), Some("canary"));
        assert_eq!((c.model(), c.target_model(), c.priority(), &**d.fairness_id()), ("m", "t", -1, "g"));
    }

    #[test]
    fn series_sharing_labels_share_the_sample() {
        let m = PoolMetrics::new("p");
        // Two fairness flows of one model: one running_requests{model_name} sample.
        m.series(key("m", "t")).running(1.0);
        m.series(SeriesKey { fairness_id: "g", ..key("m", "t") }).running(1.0);
        assert_eq!(m.request.running_requests.with_label_values(&["m"]).get(), 2.0);
    }

    #[test]
    fn an_address_reused_by_another_pod_counts_apart() {
        let m = PoolMetrics::new("p");
        let s = m.series(key("m", "t"));
        let a = Endpoint::new(igw_core::EndpointId(0), igw_core::EndpointMeta::parse_addr("10.0.0.1:8000").unwrap());
        let mut meta = igw_core::EndpointMeta::parse_addr("10.0.0.1:8000").unwrap();
        meta.pod = "other".into();
        let b = Endpoint::new(igw_core::EndpointId(1), meta);
        s.scheduled(&a);
        s.scheduled(&a);
        s.scheduled(&b);
        let ns = a.meta().namespace.clone();
        let c = |pod: &str| {
            m.request.scheduler_attempts.with_label_values(&[ns.as_str(), pod, "8000", "success", "t"]).get()
        };
        assert_eq!((c(&a.meta().pod), c("other")), (2, 1));
    }

    #[test]
    fn the_cache_stops_growing_at_its_cap_and_still_records() {
        let m = PoolMetrics { cap: 8, ..PoolMetrics::new("p") };
        let names: Vec<String> = (0..13).map(|i| format!("m{i}")).collect();
        for n in &names {
            m.series(key(n, "t")).requested(1);
        }
        assert_eq!(m.series.load().len(), 8);
        let last = names.last().unwrap();
        m.series(key(last, "t")).requested(1);
        assert_eq!(m.request.request_total.with_label_values(&[last.as_str(), "0", "t"]).get(), 2);
    }

    #[test]
    fn non_finite_values_are_not_recorded() {
        let m = PoolMetrics::new("p");
        m.request.scheduler_latency(f64::NAN);
        m.request.scheduler_latency(0.001);
        assert_eq!(m.request.scheduler_e2e.with_label_values(&[] as &[&str]).get_sample_count(), 1);
    }
}
