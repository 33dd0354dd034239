//! `igw bench ...`: benchmarks. Each subcommand's flags and wiring are in its own file; the
//! benchmarks themselves are in igw-bench (and `igw bench scheduler` in igw-sched).

mod compare;
mod extproc;
mod output;
mod run;
mod sim;
mod workload;

use clap::{Args, Subcommand};

/// Benchmark subcommands.
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Time one scheduling decision in-process, on one thread.
    Scheduler(SchedulerArgs),
    /// Drive a real `igw epp` over gRPC as Envoy does: requests/s, pick round trip, memory.
    Extproc(Box<extproc::ExtprocArgs>),
    /// Discrete-event cluster benchmark: simulated vLLM replicas in virtual time, every decision
    /// made by igw's real scheduler (and flow controller), scenarios as data.
    Sim(sim::SimBenchArgs),
    /// Flow-controller throughput: enqueue + dispatch pairs per second with a deep queue (one thread).
    Flow(FlowBenchArgs),
    /// Real-time open-loop load against any OpenAI-compatible URL: TTFT, ITL, TPOT, e2e, every
    /// request accounted for.
    Run(Box<run::RunArgs>),
    /// Every contender (Envoy, igw serve, Envoy + igw epp, sglang-router, vllm-router) over the same
    /// simulated fleet in real time, one after the other, set beside the discrete-event model.
    Compare(Box<compare::CompareArgs>),
    /// A scenario's workload: prompt and output length statistics, and for ShareGPT the
    /// conversations parsed and kept and which token counter was used.
    Workload(workload::WorkloadArgs),
}

/// Flags of `igw bench scheduler`.
#[derive(Args, Debug)]
pub struct SchedulerArgs {
    /// Number of endpoints.
    #[arg(long, default_value_t = 100)]
    pub endpoints: usize,
    /// Prompt size in bytes.
    #[arg(long, default_value_t = 4096)]
    pub prompt_bytes: usize,
    /// Timed decisions.
    #[arg(long, default_value_t = 20_000)]
    pub decisions: usize,
    /// Policy (igw, igw-wait, upstream-default, legacy-filter-tree, random, round-robin, least-queue).
    #[arg(long, default_value = "igw")]
    pub policy: String,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print one JSON object as the last stdout line.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `igw bench flow`.
#[derive(Args, Debug)]
pub struct FlowBenchArgs {
    /// Requests kept queued (over 3 priority bands).
    #[arg(long, default_value_t = 10_000)]
    pub queued: usize,
    /// Fairness flows the queue is spread over.
    #[arg(long, default_value_t = 100)]
    pub flows: usize,
    /// Timed enqueue + dispatch pairs.
    #[arg(long, default_value_t = 500_000)]
    pub pairs: usize,
    /// Print one JSON object as the last stdout line.
    #[arg(long)]
    pub json: bool,
}

/// Runs a benchmark subcommand.
pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Extproc(a) => extproc::run(*a),
        BenchCommand::Sim(a) => sim::run(a),
        BenchCommand::Run(a) => run::run(*a),
        BenchCommand::Compare(a) => compare::run(*a),
        BenchCommand::Workload(a) => workload::run(a),
        BenchCommand::Flow(a) => {
            let r = igw_bench::flow_bench::run(a.queued, a.flows, a.pairs.max(1));
            println!(
                "flow controller (VTC, {} bands, {} flows) with {} queued: {:.0} enqueue+dispatch pairs/s, {:.0} ops/s on one thread",
                r.bands, r.flows, r.queued, r.pairs_per_s, r.ops_per_s
            );
            if a.json {
                println!("{}", serde_json::to_string(&r)?);
            }
            Ok(())
        }
        BenchCommand::Scheduler(a) => {
            let opts = igw_sched::bench::BenchOptions {
                policy: a.policy,
                endpoints: a.endpoints.max(1),
                prompt_bytes: a.prompt_bytes,
                decisions: a.decisions.max(1),
                seed: a.seed,
                ..Default::default()
            };
            let r = igw_sched::bench::run(&opts)?;
            println!(
                "policy {} · {} endpoints · {}-byte prompts · {} decisions (prefix index warmed with {} requests)",
                r.policy, r.endpoints, r.prompt_bytes, r.decisions, opts.warmup_requests
            );
            println!(
                "decision latency: p50 {:.2} µs, p99 {:.2} µs, mean {:.2} µs → {:.0} decisions/s on one core",
                r.p50_us, r.p99_us, r.mean_us, r.decisions_per_s
            );
            println!("on_routed (prefix insert + in-flight add): p50 {:.2} µs", r.on_routed_p50_us);
            println!(
                "prefix index: {} entries, {:.1} MiB ({:.0} bytes/entry)",
                r.index_entries,
                r.index_bytes as f64 / (1024.0 * 1024.0),
                r.index_bytes_per_entry
            );
            if a.json {
                println!("{}", serde_json::to_string(&r)?);
            }
            Ok(())
        }
    }
}
