//! `igw bench run`: flags → [`igw_bench::load::run::RunConfig`] → the run → Markdown, chart, JSON.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use igw_bench::load::run::{RunConfig, markdown};
use igw_core::units::parse_go_duration;

/// Flags of `igw bench run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Base URL of the OpenAI-compatible server or gateway.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Model name sent in every request.
    #[arg(long, default_value = "meta-llama/Llama-2-7b-hf")]
    pub model: String,
    /// The built-in scenario whose workload (lengths, prefixes, adapters) is sent.
    #[arg(long, default_value = "blog")]
    pub scenario: String,
    /// Offered QPS per step.
    #[arg(long, value_delimiter = ',', default_value = "5")]
    pub qps: Vec<f64>,
    /// Duration of each step (Go duration); the step then waits for its requests to end.
    #[arg(long, default_value = "30s", value_parser = parse_go_duration)]
    pub duration: Duration,
    /// Client timeout per request.
    #[arg(long, default_value = "600s", value_parser = parse_go_duration)]
    pub timeout: Duration,
    /// Cap on each request's max_tokens (0 = the workload's own lengths).
    #[arg(long, default_value_t = 0)]
    pub max_tokens_cap: u32,
    /// Send the prompts of this ShareGPT JSON file (valid or truncated) in file order instead of the
    /// scenario's workload, with max_tokens = the second turn's tokens (the tokenizer of
    /// `igw bench workload`: $IGW_TOKENIZER_JSON or target/venv-bench, else chars/4), as
    /// inference-perf's shareGPT data does; pairs outside 4..=1024 tokens are skipped.
    #[arg(long)]
    pub sharegpt_file: Option<PathBuf>,
    /// Seed of the arrivals and the workload.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print one JSON object as the last stdout line.
    #[arg(long)]
    pub json: bool,
    /// Write the blog's three-panel chart of the steps to PREFIX.svg and PREFIX.png.
    #[arg(long, value_name = "PREFIX")]
    pub chart: Option<PathBuf>,
    /// This run's series name in the chart (the policy or gateway measured).
    #[arg(long, default_value = "run")]
    pub label: String,
}

impl RunArgs {
    /// The library's configuration for these flags.
    fn config(&self) -> RunConfig {
        RunConfig {
            url: self.url.clone(),
            model: self.model.clone(),
            scenario: self.scenario.clone(),
            qps: self.qps.clone(),
            duration: self.duration,
            timeout: self.timeout,
            max_tokens_cap: self.max_tokens_cap,
            sharegpt_file: self.sharegpt_file.clone(),
            seed: self.seed,
        }
    }
}

/// Runs the benchmark and prints the table (and the chart's files, and JSON).
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    let report = rt.block_on(igw_bench::load::run::run(&args.config()))?;
    print!("{}", markdown(&report));
    if let Some(prefix) = &args.chart {
        super::output::write_chart(&igw_bench::chart::Chart::from_run(&report, &args.label), prefix)?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}
