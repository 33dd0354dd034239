//! The `igw` command line: one binary for the Endpoint Picker, the standalone gateway, the
//! model-server simulator and the benchmarks.

mod cmd;

use clap::{Parser, Subcommand};

/// igw: an inference gateway for self-hosted LLMs.
#[derive(Parser, Debug)]
#[command(name = "igw", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Standalone OpenAI-compatible gateway (built-in reverse proxy around the picker).
    Serve(cmd::serve::ServeArgs),
    /// Endpoint Picker for Envoy-based gateways (ext_proc gRPC).
    Epp(Box<cmd::epp::EppArgs>),
    /// Body-Based Router ext_proc (sets X-Gateway-Model-Name from the body).
    Bbr(Box<cmd::bbr::BbrArgs>),
    /// Simulated vLLM model servers on loopback.
    Sim(cmd::sim::SimArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
    /// Print the CustomResourceDefinitions igw understands.
    Crds(cmd::crds::CrdsArgs),
    /// Print a complete Kubernetes install.
    Manifests(cmd::manifests::ManifestsArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    cmd::init_logging();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => cmd::serve::run(args),
        Command::Epp(args) => cmd::epp::run(*args),
        Command::Bbr(args) => cmd::bbr::run(*args),
        Command::Crds(args) => cmd::crds::run(args),
        Command::Manifests(args) => cmd::manifests::run(args),
        Command::Sim(args) => cmd::sim::run(args),
        Command::Bench(b) => cmd::bench::run(b),
    }
}
