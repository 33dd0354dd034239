//! `igw bench ...`: benchmarks.

use clap::{Args, Subcommand};

/// Benchmark subcommands.
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Time one scheduling decision in-process, on one thread.
    Scheduler(SchedulerArgs),
    /// Drive a real `igw epp` over gRPC as Envoy does: requests/s, pick round trip, memory.
    Extproc(Box<super::bench_extproc::ExtprocArgs>),
    /// Discrete-event cluster benchmark: simulated vLLM replicas in virtual time, every decision
    /// made by igw's real scheduler (and flow controller), scenarios as data.
    Sim(SimBenchArgs),
    /// Flow-controller throughput: enqueue + dispatch pairs per second with a deep queue (one thread).
    Flow(FlowBenchArgs),
    /// Real-time open-loop load against any OpenAI-compatible URL: TTFT, ITL, TPOT, e2e, every
    /// request accounted for.
    Run(Box<super::bench_run::RunArgs>),
    /// Every contender (Envoy, igw serve, Envoy + igw epp, sglang-router, vllm-router) over the same
    /// simulated fleet in real time, one after the other, set beside the discrete-event model.
    Compare(Box<super::bench_compare::CompareArgs>),
    /// A scenario's workload: prompt and output length statistics, and for ShareGPT the
    /// conversations parsed and kept and which token counter was used.
    Workload(super::bench_workload::WorkloadArgs),
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

/// Flags of `igw bench sim`.
#[derive(Args, Debug)]
pub struct SimBenchArgs {
    /// A built-in scenario: blog, blog-sheddable, heterogeneous, shared-prefix, multi-lora,
    /// priority-overload, fairness.
    #[arg(long, conflicts_with = "scenario_file", required_unless_present = "scenario_file")]
    pub scenario: Option<String>,
    /// A scenario file (YAML; docs/bench-scenarios.md).
    #[arg(long)]
    pub scenario_file: Option<std::path::PathBuf>,
    /// Policies to compare instead of the scenario's (names, NAME+flow, or EndpointPickerConfig files).
    #[arg(long, value_delimiter = ',')]
    pub policies: Vec<String>,
    /// Offered QPS ladder instead of the scenario's.
    #[arg(long, value_delimiter = ',')]
    pub qps: Vec<f64>,
    /// Override the fleet size.
    #[arg(long)]
    pub replicas: Option<usize>,
    /// Override each step's duration in virtual seconds.
    #[arg(long)]
    pub duration_s: Option<f64>,
    /// Print one JSON object as the last stdout line.
    #[arg(long)]
    pub json: bool,
    /// Write the blog's three-panel chart of the report to PREFIX.svg and PREFIX.png.
    #[arg(long, value_name = "PREFIX")]
    pub chart: Option<std::path::PathBuf>,
}

/// Writes `chart` to PREFIX.svg and PREFIX.png and names both files on stderr.
pub(crate) fn write_chart(chart: &igw_bench::chart::Chart, prefix: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let with_ext = |ext: &str| {
        let mut p = prefix.as_os_str().to_owned();
        p.push(ext);
        std::path::PathBuf::from(p)
    };
    let (svg, png) = (with_ext(".svg"), with_ext(".png"));
    std::fs::write(&svg, chart.svg()).with_context(|| format!("writing {}", svg.display()))?;
    std::fs::write(&png, chart.png()?).with_context(|| format!("writing {}", png.display()))?;
    eprintln!("chart: {}\nchart: {}", svg.display(), png.display());
    Ok(())
}

fn bench_sim(a: SimBenchArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let mut sc = match (&a.scenario, &a.scenario_file) {
        (Some(name), _) => igw_bench::scenario::Scenario::builtin(name)?,
        (None, Some(path)) => igw_bench::scenario::Scenario::from_yaml(
            &std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("--scenario-file {}", path.display()))?,
        (None, None) => anyhow::bail!("--scenario or --scenario-file is required"),
    };
    if let Some(n) = a.replicas {
        sc.fleet.replicas = n.max(1);
    }
    if let Some(d) = a.duration_s {
        sc.arrivals.duration_s = d;
    }
    let policies = (!a.policies.is_empty()).then_some(a.policies.as_slice());
    let qps = (!a.qps.is_empty()).then_some(a.qps.as_slice());
    let t0 = std::time::Instant::now();
    let report = igw_bench::cluster::run_scenario(&sc, policies, qps, |row| {
        eprintln!(
            "  {} @ {:.1} QPS: {} completed, {} rejected, {} timeouts ({:.1} s so far)",
            row.policy,
            row.qps,
            row.completed,
            row.rejected,
            row.timeouts,
            t0.elapsed().as_secs_f64()
        );
    })?;
    print!("{}", igw_bench::report::table(&report));
    if let Some(prefix) = &a.chart {
        write_chart(&igw_bench::chart::Chart::from_report(&report), prefix)?;
    }
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

/// Runs a benchmark subcommand.
pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Extproc(a) => super::bench_extproc::run(*a),
        BenchCommand::Sim(a) => bench_sim(a),
        BenchCommand::Run(a) => super::bench_run::run(*a),
        BenchCommand::Compare(a) => super::bench_compare::run(*a),
        BenchCommand::Workload(a) => super::bench_workload::run(a),
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
