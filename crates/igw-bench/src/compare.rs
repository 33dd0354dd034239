//! `igw bench compare`: every contender over the same simulated fleet, in real time.
//!
//! For each contender a fresh `igw-sim` fleet is started (so no contender inherits another's warm
//! prefix caches), the [`Contender`] is started in front of it as child processes (Envoy, `igw
//! serve`, Envoy + `igw epp`, sglang-router, vllm-router), probed until one completion passes
//! through it, and then driven by the `igw bench run` client ([`crate::load::http`]) with the same
//! seed and workload. A contender whose program is not installed is skipped with the reason.
//! Every child is killed when its turn ends, also on error and when the comparison's future is
//! dropped.
//!
//! Latencies are reported in *model time* (wall time ÷ the fleet's `time_scale`), so runs at
//! different scales and the discrete-event model (`igw bench sim`) can be set side by side; the
//! DES runs the same scenario, replicas and QPS for every contender whose policy it models, and the
//! report states how far the two disagree ([`validate`]). Progress goes to stderr.

mod configs;
mod contender;
mod real_fleet;
mod report;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use thiserror::Error;

pub use configs::{envoy_epp_config, envoy_round_robin_config, serve_config};
pub use contender::{Contender, Running, Tools};
pub use real_fleet::FleetKind;
pub use report::{CompareReport, CompareRow, DesClass, DesPoint, Skipped, Validation, markdown, validate};

use crate::BenchError;
use crate::load::http::{Send, StepReport, Target, WireClass, run_step};
use crate::scenario::Scenario;
use crate::workload::Generator;

/// Every contender `igw bench compare` knows, in its default order.
pub const CONTENDERS: &[&str] = &[
    "envoy-round-robin",
    "igw-random",
    "igw",
    "igw-latency",
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

/// The model the simulated fleet serves and every request names.
pub const MODEL: &str = "meta-llama/Llama-2-7b-hf";

/// What stops a comparison (a contender that fails to start or to answer is skipped instead, with
/// the error as the reason).
#[derive(Debug, Error)]
pub enum CompareError {
    /// The scenario, the workload, the DES or a file.
    #[error(transparent)]
    Bench(#[from] BenchError),
    /// A setting out of range (the message names it).
    #[error("{0}")]
    Invalid(&'static str),
    /// A contender name that is not one of [`CONTENDERS`] or [`CLASS_CONTENDERS`].
    #[error("unknown contender {name:?} (known: {known})")]
    UnknownContender {
        /// The name given.
        name: String,
        /// The known names, comma-separated.
        known: String,
    },
    /// `igw+flow` asked for with a scenario whose flow section has a holdback.
    #[error(
        "scenario {0}: flow.holdback (upstream's priority-holdback plugin) has no igw serve flowControl form; \
         drop igw+flow from --contenders"
    )]
    Holdback(String),
    /// The scenario file is not a valid scenario.
    #[error("{}", .0.display())]
    ScenarioFile(PathBuf, #[source] BenchError),
    /// The simulated fleet could not be started.
    #[error("starting the simulated fleet")]
    Fleet(#[source] igw_sim::SimError),
    /// The real fleet's launcher did not bring its servers up (the message says what it printed
    /// and where the servers' logs are).
    #[error("real vLLM fleet: {0}")]
    FleetFailed(String),
    /// No free loopback port.
    #[error("finding a free port")]
    FreePort(#[source] std::io::Error),
    /// A contender's program could not be started.
    #[error("starting {what} ({program:?})")]
    Spawn {
        /// Which process.
        what: String,
        /// The program run.
        program: std::ffi::OsString,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The Envoy template has a placeholder this crate does not fill.
    #[error("unfilled placeholder in the Envoy template")]
    Template,
    /// A contender never passed one completion through within the limit.
    #[error("{name} did not become ready at {url}: {reason}")]
    NotReady {
        /// The contender.
        name: String,
        /// Its URL.
        url: String,
        /// What the last probe got (`last probe: status 503`, say).
        reason: String,
    },
    /// A saved report file has no line starting with `{`.
    #[error("no JSON report line in the file")]
    NoReportLine,
    /// A saved report's JSON line is not a comparison report.
    #[error("{}: not an igw bench compare report", .0.display())]
    NotAReport(PathBuf, #[source] serde_json::Error),
    /// Writing a contender's configuration or log file.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// What to compare.
#[derive(Debug, Clone)]
pub struct CompareConfig {
    /// The built-in scenario whose fleet profile, speed factors and workload are used.
    pub scenario: String,
    /// A scenario file (YAML) instead of the built-in scenario.
    pub scenario_file: Option<PathBuf>,
    /// Replicas in the simulated fleet (overrides the scenario's).
    pub replicas: usize,
    /// Offered QPS per step in model time; empty: `load_factors` × the fleet's capacity.
    pub qps: Vec<f64>,
    /// Load factors (of the DES capacity estimate for this fleet) used when `qps` is empty.
    pub load_factors: Vec<f64>,
    /// Wall-clock arrival window of each step; each step then waits for its requests.
    pub duration: Duration,
    /// The fleet's time_scale: wall time = model time × this.
    pub time_scale: f64,
    /// Contenders to run, in order; empty: [`CONTENDERS`], plus [`CLASS_CONTENDERS`] when the
    /// scenario has traffic classes.
    pub contenders: Vec<String>,
    /// Seed of the arrival times (the same for every contender); the workload's own seed stays
    /// the scenario's.
    pub seed: u64,
    /// Client timeout per request (wall clock).
    pub timeout: Duration,
    /// The programs and the log directory.
    pub tools: Tools,
    /// Set the discrete-event model's figures beside each row.
    pub des: bool,
    /// The stated tolerance of real time vs DES on p90 TPOT and p90 e2e (0.25 = ±25%).
    pub tolerance: f64,
    /// The model servers each contender runs over.
    pub fleet: FleetKind,
}

impl CompareConfig {
    /// Checks the fleet settings: at least one replica, a positive finite time scale (exactly 1
    /// over a real fleet, which runs in real time).
    pub fn check(&self) -> Result<(), CompareError> {
        if self.replicas == 0 {
            return Err(CompareError::Invalid("--replicas must be at least 1"));
        }
        if !(self.time_scale.is_finite() && self.time_scale > 0.0) {
            return Err(CompareError::Invalid("--time-scale must be positive"));
        }
        if matches!(self.fleet, FleetKind::Vllm { .. }) && self.time_scale != 1.0 {
            return Err(CompareError::Invalid(
                "--time-scale applies to the simulated fleet; a real fleet runs in real time",
            ));
        }
        Ok(())
    }

    /// The model every request names: the simulated fleet's, or the real fleet's served name.
    pub fn model(&self) -> &str {
        match &self.fleet {
            FleetKind::Sim => MODEL,
            FleetKind::Vllm { model, .. } => model,
        }
    }
}

/// The `igw bench sim` policy that models a contender, where the DES has a faithful one.
pub fn des_policy(contender: &str) -> Option<&'static str> {
    Some(match contender {
        "envoy-round-robin" | "vllm-router-round-robin" => "round-robin",
        "igw-random" => "random",
        "igw" | "envoy+igw-epp" => "igw",
        "igw-latency" => "igw-latency",
        "igw+flow" => "igw+flow",
        "igw-upstream-default" => "upstream-default",
        "igw-legacy-filter-tree" => "legacy-filter-tree",
        "sglang-router-cache-aware" => "sglang-cache-aware",
        "sglang-router-power-of-two" => "power-of-two",
        _ => return None,
    })
}

/// The scenario as the comparison runs it: the configured fleet size, an open-loop Poisson client
/// with the configured timeout and step window (both in model time) and seed.
fn scenario(cfg: &CompareConfig) -> Result<Scenario, CompareError> {
    let mut sc = match &cfg.scenario_file {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| BenchError::io(format!("reading {}", path.display()), e))?;
            Scenario::from_yaml(&text).map_err(|e| CompareError::ScenarioFile(path.clone(), e))?
        }
        None => Scenario::builtin(&cfg.scenario)?,
    };
    sc.fleet.replicas = cfg.replicas;
    sc.fleet.speed_factors.truncate(cfg.replicas);
    sc.fleet.costs_per_hour.truncate(cfg.replicas);
    sc.fleet.slow = sc.fleet.slow.map(|mut s| {
        s.count = s.count.min(cfg.replicas / 2);
        s
    });
    sc.capacity_qps = None;
    sc.client.mode = crate::scenario::ClientMode::Open;
    sc.client.timeout_s = cfg.timeout.as_secs_f64() / cfg.time_scale;
    sc.arrivals.process = crate::workload::Process::Poisson;
    sc.arrivals.duration_s = cfg.duration.as_secs_f64() / cfg.time_scale;
    sc.arrivals.seed = cfg.seed;
    Ok(sc)
}

/// The simulated fleet of a scenario, as `igw sim` would serve it.
fn fleet_config(sc: &Scenario, time_scale: f64) -> Result<igw_sim::FleetConfig, BenchError> {
    let mut cfg = igw_sim::FleetConfig::new(sc.profile()?);
    cfg.model = MODEL.into();
    cfg.time_scale = time_scale;
    cfg.seed = sc.fleet.seed;
    cfg.jitter_sigma = sc.fleet.jitter_sigma;
    cfg.speed_factors = sc.speed_factors();
    if matches!(sc.workload, crate::workload::WorkloadSpec::MultiLora { .. }) {
        cfg.enable_lora = true;
        cfg.max_loras = sc.fleet.max_loras.max(1);
    }
    Ok(cfg)
}

/// Runs the comparison: each contender in turn over its own fresh fleet, then the DES beside.
pub async fn compare(cfg: &CompareConfig) -> Result<CompareReport, CompareError> {
    cfg.check()?;
    let sc = scenario(cfg)?;
    let names: Vec<String> = if cfg.contenders.is_empty() {
        let extra = if sc.classes.is_empty() { &[][..] } else { CLASS_CONTENDERS };
        CONTENDERS.iter().chain(extra).map(|s| (*s).to_string()).collect()
    } else {
        cfg.contenders.clone()
    };
    let kinds = names.iter().map(|n| Contender::parse(n)).collect::<Result<Vec<_>, _>>()?;
    if kinds.iter().any(|k| matches!(k, Contender::IgwServe { flow: true, .. })) && sc.flow.holdback.is_some() {
        return Err(CompareError::Holdback(sc.name.clone()));
    }
    if matches!(cfg.fleet, FleetKind::Vllm { .. })
        && matches!(sc.workload, crate::workload::WorkloadSpec::MultiLora { .. })
    {
        return Err(CompareError::Invalid(
            "LoRA workloads need the simulated fleet (the real fleet serves no adapters of the scenario's names)",
        ));
    }
    let generator = crate::cluster::generator(&sc)?;
    let capacity = crate::cluster::capacity_qps(&sc, &generator)?;
    let ladder: Vec<f64> = if cfg.qps.is_empty() {
        cfg.load_factors.iter().map(|f| (f * capacity * 10.0).round() / 10.0).collect()
    } else {
        cfg.qps.clone()
    };
    if !ladder.iter().all(|q| q.is_finite() && *q > 0.0) {
        return Err(CompareError::Invalid("QPS must be positive"));
    }
    let log_dir = &cfg.tools.log_dir;
    std::fs::create_dir_all(log_dir).map_err(|e| BenchError::io(format!("creating {}", log_dir.display()), e))?;
    eprintln!(
        "igw bench compare · scenario {} · {} replicas · capacity {:.1} QPS (model time) · QPS {:?} · time_scale {}",
        sc.name, cfg.replicas, capacity, ladder, cfg.time_scale
    );

    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    for (name, kind) in names.iter().zip(&kinds) {
        if let Some(reason) = kind.missing(&cfg.tools) {
            eprintln!("  {name}: skipped ({reason})");
            skipped.push(Skipped { contender: name.clone(), reason });
            continue;
        }
        let fleet = match &cfg.fleet {
            FleetKind::Sim => real_fleet::Fleet::Sim(
                igw_sim::Fleet::bind(fleet_config(&sc, cfg.time_scale)?, cfg.replicas, 0)
                    .await
                    .map_err(CompareError::Fleet)?,
            ),
            FleetKind::Vllm { launcher, .. } => {
                eprintln!("  {name}: starting {} real vLLM servers ...", cfg.replicas);
                let profile = sc.profile()?;
                match real_fleet::Fleet::vllm(launcher, cfg.replicas, &profile, log_dir.join(format!("vllm-{name}")))
                    .await
                {
                    Ok(f) => f,
                    Err(e) => {
                        let reason = crate::error::chain(&e);
                        eprintln!("  {name}: failed ({reason})");
                        skipped.push(Skipped { contender: name.clone(), reason });
                        continue;
                    }
                }
            }
        };
        let addrs = fleet.addrs();
        let result = match kind.start(name, &addrs, &sc, cfg.time_scale, &cfg.tools) {
            Ok(mut running) => {
                let r = drive(cfg, name, &running.url, &ladder, &sc, &generator).await.map(|mut steps| {
                    for s in &mut steps {
                        s.cost_per_mtok = step_cost(&sc, capacity, &addrs, s);
                    }
                    steps
                });
                running.stop();
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
                let reason = crate::error::chain(&e);
                eprintln!("  {name}: failed ({reason}); logs in {}", log_dir.display());
                skipped.push(Skipped { contender: name.clone(), reason });
            }
        }
    }

    if cfg.des {
        eprintln!("  the same points in the discrete-event model ...");
        des_beside(&mut rows, &sc, &generator, capacity)?;
    }
    let validation = validate(&rows, &ladder, cfg.tolerance);
    Ok(CompareReport {
        scenario: sc.name.clone(),
        workload: generator.description.clone(),
        replicas: cfg.replicas,
        time_scale: cfg.time_scale,
        capacity_qps: capacity,
        rows,
        skipped,
        validation,
        tolerance: cfg.tolerance,
    })
}

/// A real-time step's cost per million output tokens at capacity on a priced fleet, by the DES's
/// definition ([`crate::cluster::cost_per_mtok`]); `addrs[i]` is replica `i` (its speed factor and
/// price), as the replicas name themselves in `x-igw-sim-replica`.
fn step_cost(sc: &Scenario, capacity: f64, addrs: &[String], s: &StepReport) -> Option<f64> {
    let speeds = sc.speed_factors();
    let (mut tokens, mut priced) = (0u64, 0.0f64);
    for (replica, t) in &s.tokens_by_replica {
        let i = addrs.iter().position(|a| a == replica)?;
        tokens += t;
        priced += *t as f64 * sc.fleet.costs_per_hour.get(i)? / speeds.get(i)?.max(1e-9);
    }
    crate::cluster::cost_per_mtok(sc, capacity, &speeds, s.completed, tokens, priced)
}

/// Sets the DES's figures beside every row whose contender it models (one DES run per policy
/// and QPS).
fn des_beside(rows: &mut [CompareRow], sc: &Scenario, generator: &Generator, capacity: f64) -> Result<(), BenchError> {
    let mut cache: Vec<(String, f64, DesPoint)> = Vec::new();
    for row in rows {
        let Some(policy) = des_policy(&row.contender) else { continue };
        if let Some((_, _, d)) = cache.iter().find(|(p, q, _)| p == policy && *q == row.step.qps) {
            row.des = Some(d.clone());
            continue;
        }
        let r = crate::cluster::run_point(sc, generator, policy, row.step.qps, capacity)?.row;
        let d = DesPoint {
            policy: policy.into(),
            p90_ttft_ms: r.p90_ttft_ms,
            p90_itl_ms: r.p90_itl_ms,
            p90_tpot_ms: r.p90_tpot_ms,
            p90_e2e_ms: r.p90_e2e_ms,
            output_tokens_per_min: r.output_tokens_per_min,
            cost_per_mtok: r.cost_per_mtok,
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
                            slo_attainment: c.slo_attainment,
                        };
                        (k.clone(), d)
                    })
                    .collect()
            },
        };
        cache.push((policy.into(), row.step.qps, d.clone()));
        row.des = Some(d);
    }
    Ok(())
}

/// Waits until one small completion passes through the contender (60 s at most), then replays
/// each QPS point's requests — exactly the DES's for the same point, on the wall clock.
async fn drive(
    cfg: &CompareConfig,
    name: &str,
    url: &str,
    ladder: &[f64],
    sc: &Scenario,
    generator: &Generator,
) -> Result<Vec<StepReport>, CompareError> {
    ready(url, cfg.model(), Duration::from_secs(60)).await.map_err(|reason| CompareError::NotReady {
        name: name.to_string(),
        url: url.to_string(),
        reason,
    })?;
    eprintln!("  {name} at {url} ...");
    let target = Target::new(url, cfg.model(), cfg.timeout);
    let mut steps = Vec::with_capacity(ladder.len());
    let mut id = 0u64;
    // The DES's class of each request, sent as its objective and fairness id.
    let classes = WireClass::of(sc, cfg.time_scale);
    for &qps in ladder {
        let sends: Vec<Send> = crate::cluster::point_arrivals(sc, generator, qps)
            .into_iter()
            .map(|a| {
                id += 1;
                Send { at: a.at * cfg.time_scale, spec: a.spec, id, text: None, class: classes.get(a.class).cloned() }
            })
            .collect();
        let mut s = run_step(&target, qps / cfg.time_scale, cfg.duration, sends).await;
        s.to_model_time(cfg.time_scale);
        s.qps = qps;
        eprintln!(
            "    {:.1} QPS: {} completed, {} rejected, {} failed, {} timeouts; p90 TTFT {:.0} ms, p90 TPOT {:.1} ms, p90 e2e {:.0} ms",
            s.qps, s.completed, s.rejected, s.failed, s.timeouts, s.p90_ttft_ms, s.p90_tpot_ms, s.p90_e2e_ms
        );
        steps.push(s);
    }
    Ok(steps)
}

/// Probes `url` with a one-token completion every 200 ms until one succeeds; after `limit`, what
/// the last probe got.
async fn ready(url: &str, model: &str, limit: Duration) -> Result<(), String> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let body = serde_json::json!({"model": model, "prompt": "readiness probe", "max_tokens": 1}).to_string();
    let deadline = Instant::now() + limit;
    let mut last = String::from("no answer");
    let mut interval = tokio::time::interval(Duration::from_millis(200));
    while Instant::now() < deadline {
        interval.tick().await;
        let req = hyper::Request::post(format!("{url}/v1/completions"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.clone())))
            .map_err(|e| e.to_string())?;
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
    Err(format!("last probe: {last}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config() -> CompareConfig {
        CompareConfig {
            scenario: "shared-prefix".into(),
            scenario_file: None,
            replicas: 2,
            qps: vec![1.0],
            load_factors: vec![0.5, 1.0],
            duration: Duration::from_millis(100),
            time_scale: 0.5,
            contenders: vec!["sglang-router-cache-aware".into()],
            seed: 1,
            timeout: Duration::from_secs(10),
            tools: Tools {
                igw: "/nonexistent/igw".into(),
                envoy: "/nonexistent/envoy".into(),
                peers_venv: "/nonexistent/venv".into(),
                log_dir: std::env::temp_dir().join(format!("igw-bench-compare-unit-{}", std::process::id())),
            },
            des: false,
            tolerance: 0.25,
            fleet: FleetKind::Sim,
        }
    }

    #[test]
    fn the_scenario_is_resized_and_clocked_in_model_time() {
        let sc = scenario(&config()).unwrap();
        assert_eq!(sc.fleet.replicas, 2);
        assert_eq!((sc.arrivals.duration_s, sc.client.timeout_s), (0.2, 20.0), "wall ÷ time_scale");
        assert!(matches!(sc.client.mode, crate::scenario::ClientMode::Open));
    }

    #[test]
    fn settings_are_checked_before_anything_runs() {
        let mut c = config();
        c.replicas = 0;
        assert_eq!(c.check().unwrap_err().to_string(), "--replicas must be at least 1");
        let mut c = config();
        c.time_scale = f64::NAN;
        assert_eq!(c.check().unwrap_err().to_string(), "--time-scale must be positive");
        let mut c = config();
        c.fleet = FleetKind::Vllm { launcher: "scripts/real-vllm".into(), model: "tiny".into() };
        assert!(c.check().unwrap_err().to_string().contains("real fleet runs in real time"));
        c.time_scale = 1.0;
        c.check().unwrap();
        assert_eq!(c.model(), "tiny");
        let mut c = config();
        c.contenders = vec!["nginx".into()];
        let e = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(compare(&c));
        assert!(matches!(e, Err(CompareError::UnknownContender { .. })), "{e:?}");
    }

    #[tokio::test]
    async fn a_contender_that_is_not_installed_is_skipped_with_the_reason() {
        let c = config();
        let r = compare(&c).await.unwrap();
        assert!(r.rows.is_empty());
        assert_eq!(r.skipped.len(), 1);
        assert!(r.skipped[0].reason.contains("sglang_router"), "{:?}", r.skipped);
        let _ = std::fs::remove_dir_all(&c.tools.log_dir);
    }
}
