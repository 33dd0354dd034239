//! igw-bench: the discrete-event cluster benchmark behind `igw bench sim`.
//!
//! * [`workload`]: request generators (the LPG-fit ShareGPT distribution, the real ShareGPT
//!   lengths via [`sharegpt`] with token counts from [`tokenizer`], shared-prefix groups,
//!   multi-LoRA with Zipf popularity) and arrival processes (Poisson, constant).
//! * [`scenario`]: scenarios as data (strict YAML) and the built-in ones.
//! * [`policy`]: routing policies by name: igw's real schedulers (optionally behind the real flow
//!   controller) and models of peer routers.
//! * [`cluster`]: N simulated vLLM engines in virtual time, modelled metric scrapes, the router.
//! * [`report`]: per (policy, QPS) rows, the table and the JSON line.
//! * [`flow_bench`]: flow-controller enqueue+dispatch throughput with a deep queue.

pub mod chart;
pub mod cluster;
pub mod error;
pub mod flow_bench;
pub mod policy;
pub mod report;
pub mod scenario;
pub mod sharegpt;
pub mod stats;
pub mod tokenizer;
pub mod workload;

pub use error::BenchError;
