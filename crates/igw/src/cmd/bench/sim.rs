//! `igw bench sim`: flags → a scenario with overrides → [`igw_bench::cluster::run_scenario`] →
//! table, chart, JSON.

use anyhow::Context as _;
use clap::Args;

/// Flags of `igw bench sim`.
#[derive(Args, Debug)]
pub struct SimBenchArgs {
    /// A built-in scenario: blog, blog-sheddable, heterogeneous, heterogeneous-speeds,
    /// shared-prefix, hot-prefix-1, hot-prefix-2, hot-prefix-5, multi-lora, priority-overload,
    /// fairness, tiny-shared-prefix.
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
    /// Reseed the scenario (arrivals, workload and fleet seeds) to repeat it with other draws.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print one JSON object as the last stdout line.
    #[arg(long)]
    pub json: bool,
    /// Write the blog's three-panel chart of the report to PREFIX.svg and PREFIX.png.
    #[arg(long, value_name = "PREFIX")]
    pub chart: Option<std::path::PathBuf>,
}

/// Runs the scenario's ladder in virtual time and prints the table (and chart, and JSON).
pub fn run(a: SimBenchArgs) -> anyhow::Result<()> {
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
    if let Some(seed) = a.seed {
        sc.reseed(seed);
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
        super::output::write_chart(&igw_bench::chart::Chart::from_report(&report), prefix)?;
    }
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}
