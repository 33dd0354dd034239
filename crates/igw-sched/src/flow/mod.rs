//! Flow control (the `flowControl` feature gate): admission queueing in front of the scheduler, sans-IO.
//!
//! Requests are held in **priority bands** (one per priority; higher first, strictly), and within a band in
//! one **flow** per fairness id (`x-gateway-inference-fairness-id`). Each dispatch cycle walks the bands
//! from the highest priority, gates each by the pool saturation against the band's ceiling (usage limit
//! policy), lets the band's **fairness policy** pick a flow and releases the head of that flow by its
//! **ordering policy**. Enqueue enforces global and per-band caps on requests and bytes; queued requests leave
//! by dispatch, TTL expiry, cancellation or shutdown. Semantics follow upstream
//! (`../shared/spec/scheduler.md` §4.3); the differences are igw's defaults and documented options:
//!
//! | | upstream default | igw default |
//! |---|---|---|
//! | fairness | `global-strict-fairness-policy` | `vtc-fairness-policy` (token-weighted fair share) |
//! | ordering | `fcfs-ordering-policy` | same |
//! | usage limit | static, ceiling 1.0 | same (holdback and per-band ceilings optional) |
//! | head-of-line stop | always | on, can be turned off ([`FlowConfig::head_of_line_blocking`]) |
//! | batch holdback | none | none; `lowerBandMaxConcurrency` ([`FlowConfig::batch_holdback`]) |
//! | band caps | 1 GB, unlimited requests | same |
//!
//! Nothing here reads a clock or spawns a task: time and saturation are arguments, so the discrete-event
//! simulator drives the same code as production.

mod config;
mod controller;
mod fairness;
mod ordering;
pub mod quantity;
mod queue;
#[cfg(test)]
mod tests;

pub use config::{
    BandConfig, DEFAULT_BAND_MAX_BYTES, EDF_ORDERING, FCFS_ORDERING, FairnessPolicy, FlowConfig, FlowConfigError,
    FlowControlConfig, GLOBAL_STRICT_FAIRNESS, OrderingPolicy, PRIORITY_HOLDBACK_USAGE_LIMIT, PriorityBandConfig,
    ROUND_ROBIN_FAIRNESS, SLO_DEADLINE_ORDERING, STATIC_USAGE_LIMIT, UsageLimitParams, UsageLimitPolicy, VTC_FAIRNESS,
};
pub use controller::{
    BandStats, Dispatched, FlowController, FlowQueueStats, FlowStats, LimitKind, PoolLoad, QueuedRequest, Rejected,
    SLO_TTFT_HEADER,
};
pub use ordering::slo_deadline_from_header;
pub use quantity::{GoDuration, ParseError, Quantity, parse_duration, parse_quantity};

/// Gauge: requests held, labels `fairness_id`, `priority` (+ pool/model labels) — [`FlowStats::flows`].
pub const METRIC_QUEUE_SIZE: &str = "inference_extension_flow_control_queue_size";
/// Gauge: bytes held, same labels — [`FlowStats::flows`].
pub const METRIC_QUEUE_BYTES: &str = "inference_extension_flow_control_queue_bytes";
/// Histogram: enqueue to final outcome, labels `fairness_id`, `priority`, `outcome` — [`Dispatched::queued_for`].
pub const METRIC_REQUEST_QUEUE_DURATION: &str = "inference_extension_flow_control_request_queue_duration_seconds";
/// Histogram: latency of the enqueue call, labels `fairness_id`, `priority`, `outcome` (timed by the driver).
pub const METRIC_REQUEST_ENQUEUE_DURATION: &str = "inference_extension_flow_control_request_enqueue_duration_seconds";
/// Histogram: latency of one dispatch cycle (timed by the driver).
pub const METRIC_DISPATCH_CYCLE_DURATION: &str = "inference_extension_flow_control_dispatch_cycle_duration_seconds";
/// Gauge: the saturation detector's output as passed to [`FlowController::dispatch`].
pub const METRIC_POOL_SATURATION: &str = "inference_extension_flow_control_pool_saturation";

/// How a request left flow control (upstream's `QueueOutcome` names, used as the `outcome` metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Released to the scheduler.
    Dispatched,
    /// Refused at enqueue: a global or band cap was reached.
    RejectedCapacity,
    /// Refused at enqueue for another reason (duplicate id, shutdown).
    RejectedOther,
    /// Evicted: its TTL ran out while queued.
    EvictedTTL,
    /// Evicted: the client went away while queued.
    EvictedContextCancelled,
    /// Evicted for another reason (shutdown).
    EvictedOther,
}

impl Outcome {
    /// The upstream name (the metric label value).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Dispatched => "Dispatched",
            Outcome::RejectedCapacity => "RejectedCapacity",
            Outcome::RejectedOther => "RejectedOther",
            Outcome::EvictedTTL => "EvictedTTL",
            Outcome::EvictedContextCancelled => "EvictedContextCancelled",
            Outcome::EvictedOther => "EvictedOther",
        }
    }

    /// The HTTP status the request gets (`None` for `Dispatched`: it goes on to scheduling).
    /// RejectedCapacity → 429; EvictedTTL and EvictedContextCancelled → 503; the others → 500.
    pub fn http_status(self) -> Option<u16> {
        match self {
            Outcome::Dispatched => None,
            Outcome::RejectedCapacity => Some(429),
            Outcome::EvictedTTL | Outcome::EvictedContextCancelled => Some(503),
            Outcome::RejectedOther | Outcome::EvictedOther => Some(500),
        }
    }

    /// The start of the error message upstream sends with that status.
    pub fn message(self) -> &'static str {
        match self {
            Outcome::Dispatched => "dispatched",
            Outcome::RejectedCapacity => "request rejected by flow control: queue capacity reached",
            Outcome::RejectedOther => "request rejected by flow control",
            Outcome::EvictedTTL => "request timed out in queue",
            Outcome::EvictedContextCancelled => "client disconnected",
            Outcome::EvictedOther => "request evicted by flow control",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
