//! igw-bench: the benchmarks behind `igw bench`: the discrete-event cluster benchmark (`igw
//! bench sim`) and the real-time drivers (`igw bench run`, `compare`, `extproc`, `workload`).
//!
//! * [`workload`]: request generators (the LPG-fit ShareGPT distribution, the real ShareGPT
//!   lengths via [`sharegpt`] with token counts from [`tokenizer`], shared-prefix groups,
//!   multi-LoRA with Zipf popularity) and arrival processes (Poisson, constant).
//! * [`scenario`]: scenarios as data (strict YAML) and the built-in ones.
//! * [`policy`]: routing policies by name: igw's scheduler policies (the peer models among them),
//!   optionally behind flow control.
//! * [`cluster`]: N simulated vLLM engines in virtual time driving igw's production request core
//!   (real request bodies, scraped vLLM pages parsed by igw-metrics), through a pluggable
//!   [`cluster::Front`].
//! * [`report`]: per (policy, QPS) rows, the table and the JSON line.
//! * [`flow_bench`]: flow-controller enqueue+dispatch throughput with a deep queue.
//! * [`load`]: real-time load generators: open-loop OpenAI HTTP with client-side SSE timing
//!   (`igw bench run`), and an Envoy-like ext_proc gRPC stream driver (`igw bench extproc`).
//! * [`compare`]: `igw bench compare`, every [`compare::Contender`] (Envoy, `igw serve`, Envoy +
//!   `igw epp`, sglang-router, vllm-router) over its own simulated fleet, the DES beside.
//! * [`workload_report`]: `igw bench workload`, a scenario's length statistics.
//! * [`chart`]: the three-panel charts of every report; [`stats`]: percentiles.

pub mod chart;
pub mod cluster;
pub mod compare;
pub mod error;
pub mod flow_bench;
pub mod load;
pub mod policy;
mod process;
pub mod report;
pub mod scenario;
pub mod sharegpt;
pub mod stats;
pub mod tokenizer;
pub mod workload;
pub mod workload_report;

pub use error::BenchError;
