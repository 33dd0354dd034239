//! igw-sim: a vLLM-faithful model-server simulator.
//!
//! * [`engine`]: a sans-IO, deterministic step-by-step model of the vLLM V1 scheduler (continuous
//!   batching, chunked prefill, 16-token KV blocks, recompute preemption, prefix caching, LoRA slots)
//!   whose step durations come from [`step_time`] and a [`profile`].
//! * [`des`]: a small virtual-time driver for one replica (calibration, capacity checks).
//! * [`server`]: the HTTP simulator (OpenAI API, vLLM/SGLang `/metrics`) that drives engines in real
//!   time; [`server::Fleet`] starts N replicas in-process.
//!
//! All modelled durations are in model time (what the GPU would take); the server multiplies them by
//! a `time_scale` on the wall clock.

pub mod des;
pub mod engine;
pub mod error;
pub mod kv;
pub mod metrics_text;
pub mod openai;
pub mod profile;
pub mod prompt;
pub mod server;
pub mod stats;
pub mod step_time;
pub mod workload;

pub use engine::{
    Engine, EngineConfig, FinishReason, Finished, MetricsSnapshot, RequestId, SimRequest, StepOutcome, TokenEvent,
};
pub use error::SimError;
pub use profile::{Profile, ProfileOverrides};
pub use server::{EngineKind, Fleet, FleetConfig};
