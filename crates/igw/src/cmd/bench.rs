//! `igw bench ...`: benchmarks.

use clap::{Args, Subcommand};

/// Benchmark subcommands.
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Time one scheduling decision in-process, on one thread.
    Scheduler(SchedulerArgs),
    /// Drive a real `igw epp` over gRPC as Envoy does: requests/s, pick round trip, memory.
    Extproc(Box<super::bench_extproc::ExtprocArgs>),
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
    /// Policy (igw, upstream-default, legacy-filter-tree, random, round-robin, least-queue).
    #[arg(long, default_value = "igw")]
    pub policy: String,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print one JSON object as the last stdout line.
    #[arg(long)]
    pub json: bool,
}

/// Runs a benchmark subcommand.
pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Extproc(a) => super::bench_extproc::run(*a),
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
