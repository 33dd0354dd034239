//! `igw bench extproc`: flags → [`igw_bench::load::extproc::ExtprocConfig`] → the run → text and
//! JSON.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use igw_bench::load::extproc::ExtprocConfig;
use igw_core::units::parse_go_duration;

/// Flags of `igw bench extproc`.
#[derive(Args, Debug)]
pub struct ExtprocArgs {
    /// Endpoints in the pool (each a loopback server with a vLLM-shaped /metrics page).
    #[arg(long, default_value_t = 100)]
    pub endpoints: usize,
    /// Request body size in bytes (the prompt dominates it).
    #[arg(long, default_value_t = 4096)]
    pub prompt_bytes: usize,
    /// Offered requests per second (open loop: a late request does not delay the next).
    #[arg(long, default_value_t = 2000.0)]
    pub rps: f64,
    /// How long to offer load (Go duration), after a warm-up of a tenth of it.
    #[arg(long, default_value = "10s", value_parser = parse_go_duration)]
    pub duration: Duration,
    /// HTTP/2 connections to the EPP (Envoy opens a few per worker).
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Connect with TLS (the EPP's self-signed certificate, not verified, as gateways do).
    #[arg(long)]
    pub tls: bool,
    /// Scheduling policy of the EPP.
    #[arg(long, default_value = "igw")]
    pub policy: String,
    /// Run the EPP with flow control (`igw epp --flow-control`).
    #[arg(long)]
    pub flow_control: bool,
    /// The igw binary to run as the EPP (default: this one).
    #[arg(long)]
    pub igw_bin: Option<PathBuf>,
    /// Print one JSON object as the last stdout line.
    #[arg(long)]
    pub json: bool,
}

/// Runs the benchmark and prints its report.
pub fn run(args: ExtprocArgs) -> anyhow::Result<()> {
    let igw_bin = match args.igw_bin {
        Some(b) => b,
        None => std::env::current_exe().context("locating the igw binary")?,
    };
    let cfg = ExtprocConfig {
        endpoints: args.endpoints,
        prompt_bytes: args.prompt_bytes,
        rps: args.rps,
        duration: args.duration,
        connections: args.connections,
        tls: args.tls,
        policy: args.policy,
        flow_control: args.flow_control,
        igw_bin,
    };
    cfg.check()?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    let report = rt.block_on(igw_bench::load::extproc::run(&cfg))?;
    print!("{}", report.text());
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}
