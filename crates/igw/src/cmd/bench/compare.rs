//! `igw bench compare`: flags → [`igw_bench::compare::CompareConfig`] → the comparison (stopped,
//! with its child processes, on Ctrl-C or SIGTERM) or a saved report → Markdown, chart, JSON.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use igw_bench::compare::{CompareConfig, CompareReport, FleetKind, Tools, markdown};
use igw_core::units::parse_go_duration;

/// Flags of `igw bench compare`.
#[derive(Args, Debug)]
pub struct CompareArgs {
    /// The built-in scenario whose fleet profile, speed factors and workload are used.
    #[arg(long, default_value = "shared-prefix")]
    pub scenario: String,
    /// A scenario file (YAML, docs/bench-scenarios.md) instead of a built-in scenario.
    #[arg(long, conflicts_with = "replot")]
    pub scenario_file: Option<PathBuf>,
    /// Replicas in the simulated fleet (overrides the scenario's, which is sized for a GPU cluster).
    #[arg(long, default_value_t = 4)]
    pub replicas: usize,
    /// Offered QPS per step in model time; default: `--load-factors` × the fleet's capacity.
    #[arg(long, value_delimiter = ',')]
    pub qps: Vec<f64>,
    /// Load factors (of the DES capacity estimate for this fleet) used when `--qps` is not given.
    #[arg(long, value_delimiter = ',', default_value = "0.5,1.0")]
    pub load_factors: Vec<f64>,
    /// Wall-clock duration of each step (Go duration); each step then waits for its requests.
    #[arg(long, default_value = "15s", value_parser = parse_go_duration)]
    pub duration: Duration,
    /// The fleet's time_scale: wall time = model time × this (0.5 runs twice as fast as real time
    /// and needs twice the token rate from the machine).
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Contenders to run, in order (default: all of them).
    #[arg(long, value_delimiter = ',')]
    pub contenders: Vec<String>,
    /// Seed of the arrival times (the same for every contender); the workload's own seed (lengths,
    /// prefix groups) stays the scenario's.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Client timeout per request (wall clock).
    #[arg(long, default_value = "120s", value_parser = parse_go_duration)]
    pub timeout: Duration,
    /// The `igw` binary started for the igw contenders (default: this one).
    #[arg(long)]
    pub igw_bin: Option<PathBuf>,
    /// The Envoy binary (default: `$IGW_ENVOY_BIN`, else target/venv-envoy/lib/envoy).
    #[arg(long)]
    pub envoy_bin: Option<PathBuf>,
    /// A Python virtualenv with `sglang-router` and/or `vllm-router` installed.
    #[arg(long, default_value = "target/venv-peers")]
    pub peers_venv: PathBuf,
    /// Where the children's logs go.
    #[arg(long, default_value = "target/bench-compare")]
    pub log_dir: PathBuf,
    /// Skip the discrete-event side-by-side.
    #[arg(long)]
    pub no_des: bool,
    /// The stated tolerance of real time vs DES on p90 TPOT and p90 e2e (0.25 = ±25%).
    #[arg(long, default_value_t = 0.25)]
    pub tolerance: f64,
    /// Write the blog-style three-panel chart (throughput, p90 TPOT, p90 e2e per QPS, one bar per
    /// contender) to PREFIX.svg and PREFIX.png.
    #[arg(long)]
    pub chart: Option<PathBuf>,
    /// Print one JSON object as the last stdout line.
    #[arg(long)]
    pub json: bool,
    /// Run nothing: print the table (and `--chart`) of a report saved from an earlier `--json` run
    /// (the file's last line).
    #[arg(long)]
    pub replot: Option<PathBuf>,
    /// The model servers each contender runs over: `sim` (igw-sim replicas in this process) or
    /// `vllm` (real vLLM servers from `--vllm-launcher`, in real time; docs/real-vllm.md).
    #[arg(long, default_value = "sim", value_parser = ["sim", "vllm"])]
    pub fleet: String,
    /// The launcher of a real fleet (`--fleet vllm`): prints `{"replicas":[...]}` once its servers
    /// answer, stops them on SIGTERM.
    #[arg(long, default_value = "scripts/real-vllm")]
    pub vllm_launcher: PathBuf,
    /// The model name the real fleet serves (`--fleet vllm`).
    #[arg(long, default_value = "tiny")]
    pub vllm_model: String,
}

impl CompareArgs {
    /// The library's configuration for these flags; `igw` is the binary the igw contenders run.
    fn config(&self, igw: PathBuf) -> CompareConfig {
        let envoy = self.envoy_bin.clone().or_else(|| std::env::var_os("IGW_ENVOY_BIN").map(PathBuf::from));
        CompareConfig {
            scenario: self.scenario.clone(),
            scenario_file: self.scenario_file.clone(),
            replicas: self.replicas,
            qps: self.qps.clone(),
            load_factors: self.load_factors.clone(),
            duration: self.duration,
            time_scale: self.time_scale,
            contenders: self.contenders.clone(),
            seed: self.seed,
            timeout: self.timeout,
            tools: Tools {
                igw,
                envoy: envoy.unwrap_or_else(|| PathBuf::from("target/venv-envoy/lib/envoy")),
                peers_venv: self.peers_venv.clone(),
                log_dir: self.log_dir.clone(),
            },
            des: !self.no_des,
            tolerance: self.tolerance,
            fleet: match self.fleet.as_str() {
                "vllm" => FleetKind::Vllm { launcher: self.vllm_launcher.clone(), model: self.vllm_model.clone() },
                _ => FleetKind::Sim,
            },
        }
    }
}

/// Runs the comparison (or reads `--replot`'s report) and prints the table (and chart, and JSON).
pub fn run(args: CompareArgs) -> anyhow::Result<()> {
    let igw = match &args.igw_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("locating the igw binary")?,
    };
    let cfg = args.config(igw);
    cfg.check()?;
    let report: CompareReport = match &args.replot {
        Some(path) => CompareReport::load_saved(path)?,
        None => {
            let rt =
                tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
            rt.block_on(async {
                // On Ctrl-C or SIGTERM the comparison is dropped, which stops its child processes.
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .context("installing the SIGTERM handler")?;
                tokio::select! {
                    r = igw_bench::compare::compare(&cfg) => Ok(r?),
                    _ = tokio::signal::ctrl_c() => bail!("interrupted; the contenders were stopped"),
                    _ = term.recv() => bail!("terminated; the contenders were stopped"),
                }
            })?
        }
    };
    print!("{}", markdown(&report));
    if let Some(prefix) = &args.chart {
        super::output::write_chart(&igw_bench::chart::Chart::from_compare(&report), prefix)?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}
