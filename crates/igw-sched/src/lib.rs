//! igw's scheduler, sans-IO: time and randomness are passed in, so the same code decides in
//! production and in the discrete-event simulator.
//!
//! - [`scheduler`]: candidates → staleness filter → weighted scorers → picker; policies by name;
//!   the lifecycle hooks (`on_routed`, `on_finished`).
//! - [`scoring`]: upstream's scorers and igw's in-flight blending.
//! - [`config`]: the upstream `EndpointPickerConfig` file.
//! - [`legacy`]: the v0.3 filter tree (`legacy-filter-tree`).
//! - [`affinity`]: llm-d's prefix-cache affinity filter and no-hit LRU scorer (`llm-d`).
//! - [`latency`]: the predicted-latency model (TTFT and TPOT per endpoint, learned online).
//! - [`slo`]: a request's latency objective from its headers.
//! - [`wait`]: expected wait per endpoint (in-flight work ÷ learned service rate).
//! - [`detector`]: the utilization saturation detector used for shedding.
//! - [`prefix`]: the approximate prefix-cache index.
//! - [`flow`]: flow control (priority bands, fairness, ordering, capacity, TTL).
//! - [`bench`]: the in-process decision benchmark behind `igw bench scheduler`.

pub mod affinity;
pub mod bench;
pub mod config;
pub mod detector;
pub mod flow;
pub mod latency;
pub mod legacy;
pub mod peers;
pub mod prefix;
pub mod scheduler;
pub mod scoring;
pub mod session;
pub mod slo;
pub mod wait;

pub use scheduler::{Decision, POLICY_NAMES, Picker, ScheduleError, Scheduler, UnknownPolicy};
