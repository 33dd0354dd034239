//! `igw bench workload`: flags → [`igw_bench::workload_report::report`] → Markdown and JSON.

use clap::Args;

/// Flags of `igw bench workload`.
#[derive(Args, Debug)]
pub struct WorkloadArgs {
    /// A built-in scenario whose workload is described.
    #[arg(long, default_value = "blog")]
    pub scenario: String,
    /// Draws for the statistics of synthetic workloads (ShareGPT uses every kept pair).
    #[arg(long, default_value_t = 100_000)]
    pub samples: usize,
    /// Print one JSON object as the last stdout line.
    #[arg(long)]
    pub json: bool,
}

/// Runs `igw bench workload`.
pub fn run(args: WorkloadArgs) -> anyhow::Result<()> {
    let r = igw_bench::workload_report::report(&args.scenario, args.samples)?;
    print!("{}", igw_bench::workload_report::markdown(&r));
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    }
    Ok(())
}
