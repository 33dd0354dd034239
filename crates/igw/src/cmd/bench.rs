//! `igw bench ...`: benchmarks.

use clap::Subcommand;

/// Benchmark subcommands.
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Time the `igw` scheduling policy in-process (being built).
    Scheduler(super::NotBuilt),
}

/// Runs a benchmark subcommand.
pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Scheduler(_) => super::not_built("bench scheduler", "the scheduler benchmark"),
    }
}
