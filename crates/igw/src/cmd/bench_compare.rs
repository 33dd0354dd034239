//! `igw bench compare`: every contender over the same simulated fleet, in real time.
//!
//! For each contender a fresh `igw-sim` fleet is started (so no contender inherits another's warm
//! prefix caches), the contender is started in front of it as a child process (Envoy, `igw serve`,
//! Envoy + `igw epp`, sglang-router, vllm-router), probed until one completion passes through it,
//! and then driven by the `igw bench run` client with the same seed and workload. A contender whose
//! program is not installed is skipped with the reason. Every child is killed when its turn ends,
//! also on error.
//!
//! Latencies are reported in *model time* (wall time ÷ the fleet's `time_scale`), so runs at
//! different scales and the discrete-event model (`igw bench sim`) can be set side by side; the
//! DES runs the same scenario, replicas and QPS for every contender whose policy it models, and the
//! report states how far the two disagree.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

use super::bench_run::{Send, StepReport, Target, run_step};

fn parse_go_duration(s: &str) -> Result<Duration, String> {
    igw_sched::flow::quantity::parse_duration(s).map_err(|e| e.to_string())
}

/// Every contender `igw bench compare` knows, in its default order.
pub const CONTENDERS: &[&str] = &[
    "envoy-round-robin",
    "igw-random",
    "igw",
    "igw-upstream-default",
    "igw-legacy-filter-tree",
    "envoy+igw-epp",
    "sglang-router-cache-aware",
    "sglang-router-power-of-two",
    "vllm-router-round-robin",
    "vllm-router-cache-aware",
];

/// Contenders that run by default only when the scenario has traffic classes: `igw serve` with
/// flow control (the scenario's `flow` TTL and limits), which only matters when priorities differ.
pub const CLASS_CONTENDERS: &[&str] = &["igw+flow"];

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
}

/// How a contender is started.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    EnvoyRoundRobin,
    /// `igw serve` with a policy, with or without flow control.
    IgwServe(&'static str, bool),
    EnvoyEpp,
    Sglang(&'static str),
    Vllm(&'static str),
}

fn kind(name: &str) -> anyhow::Result<Kind> {
    Ok(match name {
        "envoy-round-robin" => Kind::EnvoyRoundRobin,
        "igw" => Kind::IgwServe("igw", false),
        "igw+flow" => Kind::IgwServe("igw", true),
        "igw-random" => Kind::IgwServe("random", false),
        "igw-upstream-default" => Kind::IgwServe("upstream-default", false),
        "igw-legacy-filter-tree" => Kind::IgwServe("legacy-filter-tree", false),
        "envoy+igw-epp" => Kind::EnvoyEpp,
        "sglang-router-cache-aware" => Kind::Sglang("cache_aware"),
        "sglang-router-power-of-two" => Kind::Sglang("power_of_two"),
        "vllm-router-round-robin" => Kind::Vllm("round_robin"),
        "vllm-router-cache-aware" => Kind::Vllm("cache_aware"),
        other => {
            bail!("unknown contender {other:?} (known: {}, {})", CONTENDERS.join(", "), CLASS_CONTENDERS.join(", "))
        }
    })
}

/// The `igw bench sim` policy that models a contender, where the DES has a faithful one.
pub fn des_policy(contender: &str) -> Option<&'static str> {
    Some(match contender {
        "envoy-round-robin" | "vllm-router-round-robin" => "round-robin",
        "igw-random" => "random",
        "igw" | "envoy+igw-epp" => "igw",
        "igw+flow" => "igw+flow",
        "igw-upstream-default" => "upstream-default",
        "igw-legacy-filter-tree" => "legacy-filter-tree",
        "sglang-router-cache-aware" => "sglang-cache-aware",
        "sglang-router-power-of-two" => "power-of-two",
        _ => return None,
    })
}

/// One (contender, QPS) row, latencies in model time.
#[derive(Debug, Serialize, Deserialize)]
pub struct CompareRow {
    /// Contender name.
    pub contender: String,
    /// The real-time client's results for the step, converted to model time.
    #[serde(flatten)]
    pub step: StepReport,
    /// The DES's row for the same policy, scenario, fleet and QPS, if it models the contender.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub des: Option<DesPoint>,
}

/// The DES's figures for one point.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DesPoint {
    /// The DES policy.
    pub policy: String,
    /// p90 TTFT, ms.
    pub p90_ttft_ms: f64,
    /// p90 inter-token latency, ms.
    pub p90_itl_ms: f64,
    /// p90 e2e ÷ output tokens, ms.
    pub p90_tpot_ms: f64,
    /// p90 e2e, ms.
    pub p90_e2e_ms: f64,
    /// Completed output tokens per minute.
    pub output_tokens_per_min: f64,
    /// Per class (scenarios with classes): rejected requests and p90 e2e.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_class: BTreeMap<String, DesClass>,
}

/// The DES's figures for one class at one point.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DesClass {
    /// Completed requests.
    pub completed: u64,
    /// Answered 429/503 by the gateway.
    pub rejected: u64,
    /// Abandoned by the client.
    pub timeouts: u64,
    /// p90 e2e of completed requests, ms.
    pub p90_e2e_ms: f64,
}

/// A contender that did not run, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Skipped {
    /// Contender name.
    pub contender: String,
    /// Why.
    pub reason: String,
}

/// The agreement of real time and DES at one QPS.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Validation {
    /// Offered QPS (model time).
    pub qps: f64,
    /// DES policies ordered by real-time p90 e2e (best first).
    pub real_order: Vec<String>,
    /// The same policies ordered by DES p90 e2e.
    pub des_order: Vec<String>,
    /// Pairs of contenders that the two rank the same way, of those whose p90 e2e differ by more
    /// than the tolerance in both (closer pairs are ties and not counted).
    pub concordant_pairs: usize,
    /// Pairs ranked the other way round (beyond the tolerance in both).
    pub discordant_pairs: usize,
    /// Largest |real / DES − 1| of p90 TPOT over the contenders.
    pub max_tpot_dev: f64,
    /// Largest |real / DES − 1| of p90 e2e over the contenders.
    pub max_e2e_dev: f64,
    /// Median |real / DES − 1| of p90 e2e.
    pub median_e2e_dev: f64,
}

/// The whole comparison.
#[derive(Debug, Serialize, Deserialize)]
pub struct CompareReport {
    /// Scenario name.
    pub scenario: String,
    /// Workload description.
    pub workload: String,
    /// Fleet size.
    pub replicas: usize,
    /// The fleet's time_scale.
    pub time_scale: f64,
    /// The DES capacity estimate of this fleet (requests/s, model time).
    pub capacity_qps: f64,
    /// Every row.
    pub rows: Vec<CompareRow>,
    /// Contenders not run.
    pub skipped: Vec<Skipped>,
    /// Real time vs DES, per QPS.
    pub validation: Vec<Validation>,
    /// The stated tolerance.
    pub tolerance: f64,
}

/// Runs the comparison and prints the table (and JSON).
pub fn run(args: CompareArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.replicas > 0, "--replicas must be at least 1");
    anyhow::ensure!(args.time_scale.is_finite() && args.time_scale > 0.0, "--time-scale must be positive");
    let report = match &args.replot {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let last = text.lines().rev().find(|l| l.starts_with('{')).context("no JSON report line in the file")?;
            serde_json::from_str(last)
                .with_context(|| format!("{}: not an igw bench compare report", path.display()))?
        }
        None => {
            let rt =
                tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
            rt.block_on(async {
                // On Ctrl-C or SIGTERM the comparison is dropped, which stops its child processes.
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .context("installing the SIGTERM handler")?;
                tokio::select! {
                    r = compare(&args) => r,
                    _ = tokio::signal::ctrl_c() => bail!("interrupted; the contenders were stopped"),
                    _ = term.recv() => bail!("terminated; the contenders were stopped"),
                }
            })?
        }
    };
    print!("{}", markdown(&report));
    if let Some(prefix) = &args.chart {
        super::bench::write_chart(&chart(&report), prefix)?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

/// The comparison in the blog's three-panel form, one bar colour per contender.
pub fn chart(r: &CompareReport) -> igw_bench::chart::Chart {
    let rows: Vec<igw_bench::chart::ThreePanelRow<'_>> = r
        .rows
        .iter()
        .map(|row| {
            let t = &row.step;
            let lat = |v: f64| if t.completed == 0 { f64::NAN } else { v };
            (row.contender.as_str(), t.qps, t.output_tokens_per_min, lat(t.p90_tpot_ms), lat(t.p90_e2e_ms))
        })
        .collect();
    let title = format!("igw bench compare · {} · {} replicas · model time", r.scenario, r.replicas);
    igw_bench::chart::Chart::three_panel(&title, &rows)
}

fn scenario(args: &CompareArgs) -> anyhow::Result<igw_bench::scenario::Scenario> {
    let mut sc = match &args.scenario_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            igw_bench::scenario::Scenario::from_yaml(&text).with_context(|| path.display().to_string())?
        }
        None => igw_bench::scenario::Scenario::builtin(&args.scenario)?,
    };
    sc.fleet.replicas = args.replicas;
    sc.fleet.speed_factors.truncate(args.replicas);
    sc.fleet.slow = sc.fleet.slow.map(|mut s| {
        s.count = s.count.min(args.replicas / 2);
        s
    });
    sc.capacity_qps = None;
    sc.client.mode = igw_bench::scenario::ClientMode::Open;
    sc.client.timeout_s = args.timeout.as_secs_f64() / args.time_scale;
    sc.arrivals.process = igw_bench::workload::Process::Poisson;
    sc.arrivals.duration_s = args.duration.as_secs_f64() / args.time_scale;
    sc.arrivals.seed = args.seed;
    Ok(sc)
}

/// The simulated fleet of a scenario, as `igw sim` would serve it.
fn fleet_config(sc: &igw_bench::scenario::Scenario, time_scale: f64) -> anyhow::Result<igw_sim::FleetConfig> {
    let mut cfg = igw_sim::FleetConfig::new(sc.profile()?);
    cfg.model = MODEL.into();
    cfg.time_scale = time_scale;
    cfg.seed = sc.fleet.seed;
    cfg.jitter_sigma = sc.fleet.jitter_sigma;
    cfg.speed_factors = sc.speed_factors();
    if matches!(sc.workload, igw_bench::workload::WorkloadSpec::MultiLora { .. }) {
        cfg.enable_lora = true;
        cfg.max_loras = sc.fleet.max_loras.max(1);
    }
    Ok(cfg)
}

const MODEL: &str = "meta-llama/Llama-2-7b-hf";

async fn compare(args: &CompareArgs) -> anyhow::Result<CompareReport> {
    let sc = scenario(args)?;
    let names: Vec<String> = if args.contenders.is_empty() {
        let extra = if sc.classes.is_empty() { &[][..] } else { CLASS_CONTENDERS };
        CONTENDERS.iter().chain(extra).map(|s| (*s).to_string()).collect()
    } else {
        args.contenders.clone()
    };
    let kinds = names.iter().map(|n| kind(n)).collect::<anyhow::Result<Vec<_>>>()?;
    if kinds.iter().any(|k| matches!(k, Kind::IgwServe(_, true))) && sc.flow.holdback.is_some() {
        bail!(
            "scenario {}: flow.holdback (upstream's priority-holdback plugin) has no igw serve flowControl form; \
             drop igw+flow from --contenders",
            sc.name
        );
    }
    let generator = igw_bench::cluster::generator(&sc)?;
    let capacity = igw_bench::cluster::capacity_qps(&sc, &generator)?;
    let ladder: Vec<f64> = if args.qps.is_empty() {
        args.load_factors.iter().map(|f| (f * capacity * 10.0).round() / 10.0).collect()
    } else {
        args.qps.clone()
    };
    anyhow::ensure!(ladder.iter().all(|q| q.is_finite() && *q > 0.0), "QPS must be positive");
    std::fs::create_dir_all(&args.log_dir).with_context(|| format!("creating {}", args.log_dir.display()))?;
    let igw_bin = match &args.igw_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("locating the igw binary")?,
    };
    let envoy_bin = args.envoy_bin.clone().or_else(|| std::env::var_os("IGW_ENVOY_BIN").map(PathBuf::from));
    let envoy_bin = envoy_bin.unwrap_or_else(|| PathBuf::from("target/venv-envoy/lib/envoy"));
    eprintln!(
        "igw bench compare · scenario {} · {} replicas · capacity {:.1} QPS (model time) · QPS {:?} · time_scale {}",
        sc.name, args.replicas, capacity, ladder, args.time_scale
    );

    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    for (name, kind) in names.iter().zip(&kinds) {
        if let Some(reason) = missing(kind, &envoy_bin, &args.peers_venv) {
            eprintln!("  {name}: skipped ({reason})");
            skipped.push(Skipped { contender: name.clone(), reason });
            continue;
        }
        let fleet = igw_sim::Fleet::bind(fleet_config(&sc, args.time_scale)?, args.replicas, 0)
            .await
            .context("starting the simulated fleet")?;
        let addrs: Vec<String> = fleet.addrs().iter().map(ToString::to_string).collect();
        let started =
            start(kind, name, &addrs, &sc, args.time_scale, &igw_bin, &envoy_bin, &args.peers_venv, &args.log_dir);
        let result = match started {
            Ok(mut procs) => {
                let r = drive(args, name, &procs.url, &ladder, &sc, &generator).await;
                procs.stop();
                r
            }
            Err(e) => Err(e),
        };
        fleet.shutdown().await;
        match result {
            Ok(steps) => {
                rows.extend(steps.into_iter().map(|step| CompareRow { contender: name.clone(), step, des: None }))
            }
            Err(e) => {
                let reason = format!("{e:#}");
                eprintln!("  {name}: failed ({reason}); logs in {}", args.log_dir.display());
                skipped.push(Skipped { contender: name.clone(), reason });
            }
        }
    }

    if !args.no_des {
        eprintln!("  the same points in the discrete-event model ...");
        let mut cache: Vec<(String, f64, DesPoint)> = Vec::new();
        for row in &mut rows {
            let Some(policy) = des_policy(&row.contender) else { continue };
            if let Some((_, _, d)) = cache.iter().find(|(p, q, _)| p == policy && *q == row.step.qps) {
                row.des = Some(d.clone());
                continue;
            }
            let r = igw_bench::cluster::run_point(&sc, &generator, policy, row.step.qps, capacity)?.row;
            let d = DesPoint {
                policy: policy.into(),
                p90_ttft_ms: r.p90_ttft_ms,
                p90_itl_ms: r.p90_itl_ms,
                p90_tpot_ms: r.p90_tpot_ms,
                p90_e2e_ms: r.p90_e2e_ms,
                output_tokens_per_min: r.output_tokens_per_min,
                by_class: if sc.classes.is_empty() {
                    BTreeMap::new()
                } else {
                    r.by_class
                        .iter()
                        .map(|(k, c)| {
                            let d = DesClass {
                                completed: c.completed,
                                rejected: c.rejected,
                                timeouts: c.timeouts,
                                p90_e2e_ms: c.p90_e2e_ms,
                            };
                            (k.clone(), d)
                        })
                        .collect()
                },
            };
            cache.push((policy.into(), row.step.qps, d.clone()));
            row.des = Some(d);
        }
    }
    let validation = validate(&rows, &ladder, args.tolerance);
    Ok(CompareReport {
        scenario: sc.name.clone(),
        workload: generator.description.clone(),
        replicas: args.replicas,
        time_scale: args.time_scale,
        capacity_qps: capacity,
        rows,
        skipped,
        validation,
        tolerance: args.tolerance,
    })
}

/// Why a contender cannot run here, if it cannot.
fn missing(kind: &Kind, envoy: &Path, venv: &Path) -> Option<String> {
    let needs_envoy = matches!(kind, Kind::EnvoyRoundRobin | Kind::EnvoyEpp);
    if needs_envoy && !envoy.exists() {
        return Some(format!("no Envoy at {} (run scripts/install-envoy or pass --envoy-bin)", envoy.display()));
    }
    let python = venv.join("bin/python");
    let module = match kind {
        Kind::Sglang(_) => "sglang_router",
        Kind::Vllm(_) => "vllm_router",
        _ => return None,
    };
    let ok = python.exists()
        && Command::new(&python)
            .args(["-c", &format!("import {module}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    (!ok).then(|| {
        format!(
            "Python module {module} not found in {} (python3 -m venv {0} && {0}/bin/pip install sglang-router==0.3.2 vllm-router==0.1.17)",
            venv.display()
        )
    })
}

/// The child processes of one contender; killed on drop.
struct Procs {
    url: String,
    children: Vec<(String, Child)>,
}

impl Procs {
    fn stop(&mut self) {
        for (_, c) in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0").context("finding a free port")?.local_addr()?.port())
}

fn spawn(cmd: &mut Command, what: &str, log_dir: &Path) -> anyhow::Result<Child> {
    let log = log_dir.join(format!("{}.log", what.replace(['/', ' ', '+'], "_")));
    let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    cmd.spawn().with_context(|| format!("starting {what} ({:?})", cmd.get_program()))
}

fn envoy_round_robin_config(listen: u16, admin: u16, addrs: &[String]) -> String {
    let endpoints: String = addrs
        .iter()
        .map(|a| {
            let (ip, port) = a.rsplit_once(':').unwrap_or((a.as_str(), "80"));
            format!(
                "        - endpoint: {{ address: {{ socket_address: {{ address: {ip}, port_value: {port} }} }} }}\n"
            )
        })
        .collect();
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:
  - name: gateway
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listen} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: gateway
          route_config:
            virtual_hosts:
            - name: pool
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: pool, timeout: 0s, idle_timeout: 0s }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: pool
    type: STATIC
    connect_timeout: 5s
    lb_policy: ROUND_ROBIN
    circuit_breakers:
      thresholds:
      - {{ max_connections: 100000, max_pending_requests: 100000, max_requests: 100000 }}
    load_assignment:
      cluster_name: pool
      endpoints:
      - lb_endpoints:
{endpoints}"#
    )
}

/// The `igw serve --config` file of an igw contender: one pool over the fleet with `policy`, the
/// scenario's classes as objectives, and with `flow` a flowControl section carrying the scenario's
/// TTL, fairness policy and lower-band concurrency limit (as the DES's `igw+flow` policy). The
/// gateway runs on the wall clock, so the TTL (model time) is multiplied by the fleet's `time_scale`.
pub fn serve_config(
    addrs: &[String],
    policy: &str,
    flow: bool,
    sc: &igw_bench::scenario::Scenario,
    time_scale: f64,
) -> String {
    let mut s = format!("pools:\n- name: compare\n  endpoints: [{}]\n  policy: {policy}\n", addrs.join(", "));
    if flow {
        let ttl_ms = (sc.flow.ttl_s.unwrap_or(30.0) * 1000.0 * time_scale).round();
        s.push_str(&format!("  flowControl:\n    defaultRequestTTL: {ttl_ms}ms\n"));
        if let Some(n) = sc.flow.lower_band_max_concurrency {
            s.push_str(&format!("    lowerBandMaxConcurrency: {n}\n"));
        }
        if let Some(f) = &sc.flow.fairness {
            s.push_str(&format!("    defaultPriorityBand:\n      fairnessPolicyRef: {f}\n"));
        }
    }
    if !sc.classes.is_empty() {
        s.push_str("objectives:\n");
        for c in &sc.classes {
            s.push_str(&format!("- name: {:?}\n  priority: {}\n", c.name, c.priority));
        }
    }
    s
}

fn envoy_epp_config(listen: u16, admin: u16, epp: u16) -> anyhow::Result<String> {
    let template = include_str!("../../../../deploy/envoy/extproc-plaintext.yaml");
    let text = template
        .replace("{{LISTEN_PORT}}", &listen.to_string())
        .replace("{{ADMIN_PORT}}", &admin.to_string())
        .replace("{{EPP_PORT}}", &epp.to_string());
    anyhow::ensure!(!text.contains("{{"), "unfilled placeholder in the Envoy template");
    Ok(text)
}

#[allow(clippy::too_many_arguments)]
fn start(
    kind: &Kind,
    name: &str,
    addrs: &[String],
    sc: &igw_bench::scenario::Scenario,
    time_scale: f64,
    igw: &Path,
    envoy: &Path,
    venv: &Path,
    log_dir: &Path,
) -> anyhow::Result<Procs> {
    let port = free_port()?;
    let mut procs = Procs { url: format!("http://127.0.0.1:{port}"), children: Vec::new() };
    let endpoints = addrs.join(",");
    let worker_urls: Vec<String> = addrs.iter().map(|a| format!("http://{a}")).collect();
    match kind {
        Kind::EnvoyRoundRobin => {
            let cfg = log_dir.join("envoy-round-robin.yaml");
            std::fs::write(&cfg, envoy_round_robin_config(port, free_port()?, addrs))?;
            let mut c = Command::new(envoy);
            c.arg("-c").arg(&cfg).args(["--log-level", "warn", "--concurrency", "1", "--base-id"]);
            c.arg(free_port()?.to_string());
            procs.children.push((name.into(), spawn(&mut c, name, log_dir)?));
        }
        Kind::IgwServe(policy, flow) => {
            let cfg = log_dir.join(format!("{}.gateway.yaml", name.replace('+', "_")));
            std::fs::write(&cfg, serve_config(addrs, policy, *flow, sc, time_scale))?;
            let mut c = Command::new(igw);
            c.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
                .args(["--admin-listen", &format!("127.0.0.1:{}", free_port()?)])
                .arg("--config")
                .arg(&cfg)
                .env("RUST_LOG", "warn");
            procs.children.push((name.into(), spawn(&mut c, name, log_dir)?));
        }
        Kind::EnvoyEpp => {
            let (grpc, health, metrics) = (free_port()?, free_port()?, free_port()?);
            let mut e = Command::new(igw);
            e.args(["epp", "--bind-address", "127.0.0.1", "--secure-serving=false"])
                .args(["--grpc-port", &grpc.to_string(), "--grpc-health-port", &health.to_string()])
                .args(["--metrics-port", &metrics.to_string(), "--endpoints", &endpoints])
                .env("RUST_LOG", "warn");
            for c in &sc.classes {
                e.arg("--objective").arg(format!("{}={}", c.name, c.priority));
            }
            procs.children.push(("igw epp".into(), spawn(&mut e, "igw-epp", log_dir)?));
            let cfg = log_dir.join("envoy-epp.yaml");
            std::fs::write(&cfg, envoy_epp_config(port, free_port()?, grpc)?)?;
            let mut c = Command::new(envoy);
            c.arg("-c").arg(&cfg).args(["--log-level", "warn", "--concurrency", "1", "--base-id"]);
            c.arg(free_port()?.to_string());
            procs.children.push(("envoy".into(), spawn(&mut c, "envoy-epp", log_dir)?));
        }
        Kind::Sglang(policy) | Kind::Vllm(policy) => {
            // The two routers share their launcher flags; only the entry point and a log level name differ.
            let (mut c, log_level) = match kind {
                Kind::Sglang(_) => {
                    let mut c = Command::new(venv.join("bin/python"));
                    c.args(["-m", "sglang_router.launch_router"]);
                    (c, "warn")
                }
                _ => (Command::new(venv.join("bin/vllm-router")), "warning"),
            };
            c.args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .arg("--worker-urls")
                .args(&worker_urls)
                .args(["--policy", policy, "--prometheus-host", "127.0.0.1"])
                .args(["--prometheus-port", &free_port()?.to_string()])
                .args(["--worker-startup-check-interval", "1", "--log-level", log_level]);
            procs.children.push((name.into(), spawn(&mut c, name, log_dir)?));
        }
    }
    Ok(procs)
}

/// Waits until one small completion passes through the contender (60 s at most), then replays
/// each QPS point's requests — exactly the DES's for the same point, on the wall clock.
async fn drive(
    args: &CompareArgs,
    name: &str,
    url: &str,
    ladder: &[f64],
    sc: &igw_bench::scenario::Scenario,
    generator: &igw_bench::workload::Generator,
) -> anyhow::Result<Vec<StepReport>> {
    ready(url, Duration::from_secs(60)).await.with_context(|| format!("{name} did not become ready at {url}"))?;
    eprintln!("  {name} at {url} ...");
    let target = Target::new(url, MODEL, args.timeout);
    let mut steps = Vec::with_capacity(ladder.len());
    let mut id = 0u64;
    // The DES's class of each request, sent as its objective and fairness id.
    let classes = super::bench_run::WireClass::of(sc);
    for &qps in ladder {
        let sends: Vec<Send> = igw_bench::cluster::point_arrivals(sc, generator, qps)
            .into_iter()
            .map(|a| {
                id += 1;
                Send { at: a.at * args.time_scale, spec: a.spec, id, text: None, class: classes.get(a.class).cloned() }
            })
            .collect();
        let mut s = run_step(&target, qps / args.time_scale, args.duration, sends).await;
        to_model_time(&mut s, args.time_scale);
        s.qps = qps;
        eprintln!(
            "    {:.1} QPS: {} completed, {} rejected, {} failed, {} timeouts; p90 TTFT {:.0} ms, p90 TPOT {:.1} ms, p90 e2e {:.0} ms",
            s.qps, s.completed, s.rejected, s.failed, s.timeouts, s.p90_ttft_ms, s.p90_tpot_ms, s.p90_e2e_ms
        );
        steps.push(s);
    }
    Ok(steps)
}

/// Converts a wall-clock step report of a fleet running at `time_scale` into model time.
pub fn to_model_time(s: &mut StepReport, time_scale: f64) {
    s.sent_qps *= time_scale;
    for v in [
        &mut s.p50_ttft_ms,
        &mut s.p90_ttft_ms,
        &mut s.p50_itl_ms,
        &mut s.p90_itl_ms,
        &mut s.p50_tpot_ms,
        &mut s.p90_tpot_ms,
        &mut s.p50_e2e_ms,
        &mut s.p90_e2e_ms,
    ] {
        *v /= time_scale;
    }
    for c in s.by_class.values_mut() {
        c.p90_ttft_ms /= time_scale;
        c.p90_e2e_ms /= time_scale;
    }
    s.output_tokens_per_min *= time_scale;
}

async fn ready(url: &str, limit: Duration) -> anyhow::Result<()> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let body = serde_json::json!({"model": MODEL, "prompt": "readiness probe", "max_tokens": 1}).to_string();
    let deadline = Instant::now() + limit;
    let mut last = String::from("no answer");
    let mut interval = tokio::time::interval(Duration::from_millis(200));
    while Instant::now() < deadline {
        interval.tick().await;
        let req = hyper::Request::post(format!("{url}/v1/completions"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.clone())))?;
        match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
            Ok(Ok(resp)) if resp.status().is_success() => {
                let _ = resp.into_body().collect().await;
                return Ok(());
            }
            Ok(Ok(resp)) => last = format!("status {}", resp.status()),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "probe timed out".into(),
        }
    }
    bail!("last probe: {last}")
}

fn dev(real: f64, des: f64) -> f64 {
    if des > 0.0 { (real / des - 1.0).abs() } else { f64::INFINITY }
}

/// Real time vs DES per QPS: orders, pair agreement, deviations.
pub fn validate(rows: &[CompareRow], ladder: &[f64], tolerance: f64) -> Vec<Validation> {
    let mut out = Vec::new();
    for &q in ladder {
        let pts: Vec<(&CompareRow, &DesPoint)> =
            rows.iter().filter(|r| r.step.qps == q).filter_map(|r| r.des.as_ref().map(|d| (r, d))).collect();
        if pts.is_empty() {
            continue;
        }
        let order = |key: &dyn Fn(&(&CompareRow, &DesPoint)) -> f64| {
            let mut v: Vec<&(&CompareRow, &DesPoint)> = pts.iter().collect();
            v.sort_by(|a, b| key(a).total_cmp(&key(b)));
            v.iter().map(|(r, _)| r.contender.clone()).collect::<Vec<_>>()
        };
        let (mut concordant, mut discordant) = (0, 0);
        for (i, a) in pts.iter().enumerate() {
            for b in &pts[i + 1..] {
                let real = a.0.step.p90_e2e_ms / b.0.step.p90_e2e_ms.max(1e-9);
                let des = a.1.p90_e2e_ms / b.1.p90_e2e_ms.max(1e-9);
                let clear = |r: f64| (r - 1.0).abs() > tolerance;
                if clear(real) && clear(des) {
                    if (real > 1.0) == (des > 1.0) {
                        concordant += 1;
                    } else {
                        discordant += 1;
                    }
                }
            }
        }
        let mut e2e: Vec<f64> = pts.iter().map(|(r, d)| dev(r.step.p90_e2e_ms, d.p90_e2e_ms)).collect();
        let tpot = pts.iter().map(|(r, d)| dev(r.step.p90_tpot_ms, d.p90_tpot_ms)).fold(0.0, f64::max);
        e2e.sort_by(f64::total_cmp);
        out.push(Validation {
            qps: q,
            real_order: order(&|p| p.0.step.p90_e2e_ms),
            des_order: order(&|p| p.1.p90_e2e_ms),
            concordant_pairs: concordant,
            discordant_pairs: discordant,
            max_tpot_dev: tpot,
            max_e2e_dev: e2e.last().copied().unwrap_or(0.0),
            median_e2e_dev: e2e[e2e.len() / 2],
        });
    }
    out
}

/// The report as Markdown: the table, what was skipped, the DES agreement.
pub fn markdown(r: &CompareReport) -> String {
    let mut s = format!(
        "`igw bench compare` · scenario {} · {} · {} replicas · capacity {:.1} QPS · time_scale {} · latencies in model time\n\n",
        r.scenario, r.workload, r.replicas, r.capacity_qps, r.time_scale
    );
    s.push_str("| contender | QPS | sent | attempted | completed | rejected | failed | timeouts | p50 / p90 TTFT ms | p90 ITL ms | p90 TPOT ms | p50 / p90 e2e ms | output tok/min | DES p90 TTFT / ITL / TPOT / e2e ms |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    let mut rows: Vec<&CompareRow> = r.rows.iter().collect();
    rows.sort_by(|a, b| a.step.qps.total_cmp(&b.step.qps));
    for row in rows {
        let t = &row.step;
        let des = row.des.as_ref().map_or_else(
            || "–".to_string(),
            |d| format!("{:.0} / {:.1} / {:.1} / {:.0}", d.p90_ttft_ms, d.p90_itl_ms, d.p90_tpot_ms, d.p90_e2e_ms),
        );
        s.push_str(&format!("| {} | {} | {des} |\n", row.contender, t.cells()));
    }
    if r.rows.iter().any(|row| !row.step.by_class.is_empty()) {
        s.push_str("\nPer traffic class (objective and fairness id sent as headers; peers ignore them):\n\n");
        s.push_str("| contender | QPS | class | attempted | completed | rejected | failed | timeouts | p90 TTFT ms | p90 e2e ms | token share | DES completed / rejected / p90 e2e ms |\n");
        s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        let mut rows: Vec<&CompareRow> = r.rows.iter().collect();
        rows.sort_by(|a, b| a.step.qps.total_cmp(&b.step.qps));
        for row in rows {
            for (name, c) in &row.step.by_class {
                let des = row.des.as_ref().and_then(|d| d.by_class.get(name)).map_or_else(
                    || "–".to_string(),
                    |d| format!("{} / {} / {:.0}", d.completed, d.rejected + d.timeouts, d.p90_e2e_ms),
                );
                s.push_str(&format!(
                    "| {} | {:.1} | {name} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.3} | {des} |\n",
                    row.contender,
                    row.step.qps,
                    c.attempted,
                    c.completed,
                    c.rejected,
                    c.failed,
                    c.timeouts,
                    c.p90_ttft_ms,
                    c.p90_e2e_ms,
                    c.share
                ));
            }
        }
    }
    for k in &r.skipped {
        s.push_str(&format!("\nskipped {}: {}\n", k.contender, k.reason));
    }
    for v in &r.validation {
        s.push_str(&format!(
            "\nDES vs real time at {:.1} QPS: p90 e2e order real {:?} / DES {:?}; pairs apart by more than ±{:.0}% in both: {} same way, {} reversed; |real/DES − 1| of p90 e2e median {:.0}%, max {:.0}%; of p90 TPOT max {:.0}%\n",
            v.qps,
            v.real_order,
            v.des_order,
            r.tolerance * 100.0,
            v.concordant_pairs,
            v.discordant_pairs,
            v.median_e2e_dev * 100.0,
            v.max_e2e_dev * 100.0,
            v.max_tpot_dev * 100.0
        ));
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_contender_has_a_kind_and_unknown_ones_are_named() {
        for c in CONTENDERS {
            kind(c).unwrap();
        }
        let e = kind("nginx").unwrap_err().to_string();
        assert!(e.contains("nginx") && e.contains("envoy-round-robin"), "{e}");
        assert_eq!(des_policy("envoy+igw-epp"), Some("igw"));
        assert_eq!(des_policy("vllm-router-cache-aware"), None);
    }

    #[test]
    fn an_igw_contender_is_configured_with_the_scenarios_objectives_and_flow() {
        let sc = igw_bench::scenario::Scenario::builtin("priority-overload").unwrap();
        let addrs = ["127.0.0.1:8001".to_string(), "127.0.0.1:8002".to_string()];
        let text = serve_config(&addrs, "igw", true, &sc, 1.0);
        let plan = igw_gateway::config::parse(&text, Path::new("c.yaml"), "random").unwrap();
        assert_eq!(plan.pools[0].endpoints.len(), 2);
        assert_eq!(plan.pools[0].scheduler_source, "policy igw with flowControl", "{text}");
        assert_eq!(plan.pools[0].flow.as_ref().unwrap().default_ttl, Some(Duration::from_secs(30)));
        let prios: Vec<(String, i32)> = plan.objectives.iter().map(|o| (o.id.name.clone(), o.priority)).collect();
        assert_eq!(prios, [("critical".into(), 10), ("standard".into(), 0), ("sheddable".into(), -1)]);
        let plain =
            igw_gateway::config::parse(&serve_config(&addrs, "random", false, &sc, 1.0), Path::new("c.yaml"), "igw")
                .unwrap();
        assert!(plain.pools[0].flow.is_none() && plain.objectives.len() == 3);
        // A scenario without classes declares no objectives.
        let shared = igw_bench::scenario::Scenario::builtin("shared-prefix").unwrap();
        assert!(!serve_config(&addrs, "igw", false, &shared, 1.0).contains("objectives"));
        // At time_scale 2 the fleet runs at half speed, so 30 s of model time is 60 s on the wall.
        let slow = serve_config(&addrs, "igw", true, &sc, 2.0);
        assert!(slow.contains("defaultRequestTTL: 60000ms"), "{slow}");
        // The example scenario with igw's batch holdback carries it into the gateway's config.
        let holdback = igw_bench::scenario::Scenario::from_yaml(include_str!(
            "../../../../examples/scenarios/priority-overload-holdback.yaml"
        ))
        .unwrap();
        let text = serve_config(&addrs, "igw", true, &holdback, 1.0);
        let plan = igw_gateway::config::parse(&text, Path::new("c.yaml"), "igw").unwrap();
        assert_eq!(plan.pools[0].flow.as_ref().unwrap().batch_holdback, Some(65.0), "{text}");
    }

    #[test]
    fn model_time_divides_latencies_and_multiplies_rates() {
        let mut s = StepReport {
            sent_qps: 5.0,
            p90_e2e_ms: 100.0,
            p90_tpot_ms: 2.0,
            p50_itl_ms: 1.0,
            p50_tpot_ms: 1.5,
            output_tokens_per_min: 600.0,
            ..Default::default()
        };
        s.by_class.insert(
            "critical".into(),
            super::super::bench_run::ClassStep { p90_e2e_ms: 50.0, p90_ttft_ms: 5.0, ..Default::default() },
        );
        to_model_time(&mut s, 0.5);
        assert_eq!((s.sent_qps, s.p90_e2e_ms, s.p90_tpot_ms, s.output_tokens_per_min), (2.5, 200.0, 4.0, 300.0));
        assert_eq!((s.p50_itl_ms, s.p50_tpot_ms), (2.0, 3.0), "every latency, the medians too");
        assert_eq!((s.by_class["critical"].p90_e2e_ms, s.by_class["critical"].p90_ttft_ms), (100.0, 10.0));
    }

    fn row(c: &str, q: f64, real: f64, des: f64) -> CompareRow {
        CompareRow {
            contender: c.into(),
            step: StepReport { qps: q, p90_e2e_ms: real, p90_tpot_ms: real / 100.0, ..Default::default() },
            des: Some(DesPoint {
                policy: c.into(),
                p90_ttft_ms: 0.0,
                p90_itl_ms: 0.0,
                p90_tpot_ms: des / 100.0,
                p90_e2e_ms: des,
                output_tokens_per_min: 0.0,
                by_class: BTreeMap::new(),
            }),
        }
    }

    #[test]
    fn validation_counts_pairs_beyond_the_tolerance_only() {
        // a ≪ b in both; b vs c within 10% in real time (a tie); c ≪ d reversed in the DES.
        let rows = vec![
            row("a", 1.0, 100.0, 110.0),
            row("b", 1.0, 300.0, 300.0),
            row("c", 1.0, 310.0, 600.0),
            row("d", 1.0, 900.0, 500.0),
        ];
        let v = &validate(&rows, &[1.0], 0.25)[0];
        assert_eq!(v.real_order, ["a", "b", "c", "d"]);
        assert_eq!(v.des_order, ["a", "b", "d", "c"]);
        // Pairs clear in both: a-b, a-c, a-d (same way), b-c (real 1.03: a tie, skipped), b-d (same), c-d (real 2.9 vs des 0.83: reversed? des 0.83 is within 25% → skipped).
        assert_eq!((v.concordant_pairs, v.discordant_pairs), (4, 0));
        assert!((v.max_e2e_dev - 0.8).abs() < 1e-9, "{}", v.max_e2e_dev);
        let rows = vec![row("a", 1.0, 100.0, 400.0), row("b", 1.0, 400.0, 100.0)];
        let v = &validate(&rows, &[1.0, 2.0], 0.25);
        assert_eq!(v.len(), 1, "no rows at 2.0 QPS → no validation entry");
        assert_eq!((v[0].concordant_pairs, v[0].discordant_pairs), (0, 1));
    }

    #[test]
    fn envoy_configs_name_every_endpoint_and_fill_every_placeholder() {
        let c = envoy_round_robin_config(10000, 10001, &["127.0.0.1:8001".into(), "127.0.0.1:8002".into()]);
        assert!(c.contains("port_value: 8001") && c.contains("port_value: 8002") && c.contains("ROUND_ROBIN"));
        let c = envoy_epp_config(10000, 10001, 9002).unwrap();
        assert!(c.contains("port_value: 9002") && !c.contains("{{"));
    }
}
