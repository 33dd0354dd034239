//! `igw bench run`: a QPS ladder of [`run_step`]s against one OpenAI-compatible URL, with a
//! scenario's workload (lengths, shared prefixes, adapters, traffic classes) or a ShareGPT file's
//! prompts, Poisson arrivals per step, and the report as Markdown.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::Serialize;

use super::http::{Send, StepReport, Target, WireClass, pick_class, run_step};
use crate::BenchError;
use crate::scenario::Scenario;
use crate::sharegpt::TextPair;
use crate::workload::{Generator, Process, WorkloadSpec};

/// What to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Base URL of the OpenAI-compatible server or gateway.
    pub url: String,
    /// Model name sent in every request that names no LoRA adapter.
    pub model: String,
    /// The built-in scenario whose workload (lengths, prefixes, adapters, classes) is sent.
    pub scenario: String,
    /// Offered QPS per step.
    pub qps: Vec<f64>,
    /// Arrival window of each step; the step then waits for its requests to end.
    pub duration: Duration,
    /// Client timeout per request.
    pub timeout: Duration,
    /// Cap on each request's max_tokens (0 = the workload's own lengths).
    pub max_tokens_cap: u32,
    /// Send the prompts of this ShareGPT JSON file in file order instead of the scenario's
    /// workload, with max_tokens = the second turn's tokens (see [`crate::sharegpt::text_pairs`]).
    pub sharegpt_file: Option<PathBuf>,
    /// Seed of the arrivals and the workload.
    pub seed: u64,
}

/// The whole run.
#[derive(Debug, Serialize)]
pub struct RunReport {
    /// Target URL.
    pub url: String,
    /// Workload description.
    pub workload: String,
    /// One entry per QPS step.
    pub steps: Vec<StepReport>,
}

/// Runs every step against `cfg.url`.
pub async fn run(cfg: &RunConfig) -> Result<RunReport, BenchError> {
    let texts = cfg.sharegpt_file.as_deref().map(sharegpt_texts).transpose()?;
    let scenario = Scenario::builtin(&cfg.scenario)?;
    let generator = Arc::new(match &texts {
        Some(_) => Generator::new(&WorkloadSpec::LpgFit { seed: 1 }, None)?,
        None => crate::cluster::generator(&scenario)?,
    });
    // Each request belongs to one of the scenario's classes, drawn by its fraction of the load
    // (its own random stream, so the lengths are those of a run without classes).
    let classes = WireClass::of(&scenario, 1.0);
    let fractions: Vec<f64> = scenario.classes.iter().map(|c| c.fraction).collect();
    let mut crng = SmallRng::seed_from_u64(cfg.seed ^ 0x0c1a_55e5);
    let target = Target::new(&cfg.url, &cfg.model, cfg.timeout);
    let mut rng = SmallRng::seed_from_u64(cfg.seed);
    let mut steps = Vec::new();
    let mut next_id = 0u64;
    for &qps in &cfg.qps {
        let times = crate::workload::arrival_times(Process::Poisson, qps, cfg.duration.as_secs_f64(), &mut rng);
        let sends: Vec<Send> = times
            .iter()
            .map(|&at| {
                let mut spec = generator.next(&mut rng);
                let text = texts.as_ref().map(|(pairs, _)| {
                    let p = &pairs[next_id as usize % pairs.len()];
                    (spec.input, spec.output) = (p.prompt_tokens, p.output_tokens);
                    p.prompt.clone()
                });
                if cfg.max_tokens_cap > 0 {
                    spec.output = spec.output.min(cfg.max_tokens_cap);
                }
                next_id += 1;
                let class = pick_class(&classes, &fractions, rand::Rng::random(&mut crng));
                Send { at, spec, id: next_id, text, class }
            })
            .collect();
        steps.push(run_step(&target, qps, cfg.duration, sends).await);
    }
    let workload = texts.map_or_else(|| generator.description.clone(), |(_, d)| d);
    Ok(RunReport { url: cfg.url.clone(), workload, steps })
}

/// The report as a Markdown table.
pub fn markdown(r: &RunReport) -> String {
    let mut s = format!("`igw bench run` against {} · workload {}\n\n", r.url, r.workload);
    s.push_str("| QPS | sent | attempted | completed | rejected | failed | timeouts | p50 / p90 TTFT ms | p90 ITL ms | p90 TPOT ms | p50 / p90 e2e ms | output tok/min |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for t in &r.steps {
        s.push_str(&format!("| {} |\n", t.cells()));
    }
    s
}

/// The prompts of a ShareGPT file in file order, and the workload's description.
fn sharegpt_texts(path: &Path) -> Result<(Vec<TextPair>, String), BenchError> {
    let bytes = std::fs::read(path).map_err(|e| BenchError::io(format!("reading {}", path.display()), e))?;
    let counting = crate::tokenizer::Counting::choose();
    let pairs = crate::sharegpt::text_pairs(&bytes, &counting.load()?)?;
    let d = format!(
        "sharegpt-file {} ({} prompts in file order, {} tokens)",
        path.display(),
        pairs.len(),
        counting.label()
    );
    Ok((pairs, d))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(url: String, scenario: &str, duration: Duration, sharegpt_file: Option<PathBuf>) -> RunConfig {
        RunConfig {
            url,
            model: "meta-llama/Llama-2-7b-hf".into(),
            scenario: scenario.into(),
            qps: vec![40.0],
            duration,
            timeout: Duration::from_secs(30),
            max_tokens_cap: 8,
            sharegpt_file,
            seed: 3,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_request_against_a_sim_fleet_is_accounted_for() {
        let mut cfg = igw_sim::FleetConfig::new(igw_sim::profile::Profile::llama2_7b_h100());
        cfg.time_scale = 0.01;
        let fleet = igw_sim::Fleet::bind(cfg, 1, 0).await.unwrap();
        let url = format!("http://{}", fleet.addrs()[0]);
        let r = run(&config(url, "shared-prefix", Duration::from_millis(500), None)).await.unwrap();
        let s = &r.steps[0];
        assert_eq!(s.attempted, 20);
        assert_eq!(s.attempted, s.completed + s.rejected + s.failed + s.timeouts);
        assert_eq!(s.completed, 20, "{s:?}");
        assert!(s.p50_ttft_ms > 0.0 && s.p90_e2e_ms >= s.p50_e2e_ms && s.p90_tpot_ms > 0.0);
        assert!(markdown(&r).contains("| 40.0 |"));
        fleet.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sharegpt_file_is_sent_prompt_by_prompt() {
        let mut cfg = igw_sim::FleetConfig::new(igw_sim::profile::Profile::llama2_7b_h100());
        cfg.time_scale = 0.01;
        let fleet = igw_sim::Fleet::bind(cfg, 1, 0).await.unwrap();
        let file = std::env::temp_dir().join(format!("igw-bench-run-sharegpt-{}.json", std::process::id()));
        let turn = |from: &str, n: usize| serde_json::json!({"from": from, "value": "hello world ".repeat(n)});
        let conv = |n: usize| serde_json::json!({"id": "x", "conversations": [turn("human", n), turn("gpt", 2 * n)]});
        // The middle conversation is too short to keep.
        std::fs::write(&file, serde_json::json!([conv(10), conv(1), conv(12)]).to_string()).unwrap();
        let url = format!("http://{}", fleet.addrs()[0]);
        let r = run(&config(url, "blog", Duration::from_millis(250), Some(file.clone()))).await.unwrap();
        std::fs::remove_file(&file).unwrap();
        let s = &r.steps[0];
        assert_eq!((s.attempted, s.completed), (10, 10), "{s:?}");
        assert!(
            r.workload.starts_with("sharegpt-file ") && r.workload.contains("(2 prompts in file order"),
            "{}",
            r.workload
        );
        assert!(s.p50_itl_ms <= s.p90_itl_ms && s.p50_tpot_ms > 0.0 && s.p50_tpot_ms <= s.p90_tpot_ms);
        fleet.shutdown().await;
    }

    #[test]
    fn a_missing_sharegpt_file_is_named() {
        let e = sharegpt_texts(Path::new("/nonexistent/sg.json")).unwrap_err();
        assert_eq!(e.to_string(), "reading /nonexistent/sg.json");
        assert_eq!(
            crate::error::chain(&e),
            format!("reading /nonexistent/sg.json: {}", std::error::Error::source(&e).unwrap())
        );
    }
}
