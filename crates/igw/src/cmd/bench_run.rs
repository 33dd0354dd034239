//! `igw bench run`: a real-time, open-loop load generator against any OpenAI-compatible URL.
//!
//! Requests follow a scenario's workload (lengths, shared prefixes, adapters) with Poisson
//! arrivals per QPS step; a late request never delays the next. Each request streams
//! (`stream_options.include_usage`) and is timed at the client: TTFT (first token event), the gaps
//! between token events (ITL), TPOT (e2e ÷ output tokens, the blog's per-output-token latency) and
//! e2e. Every request is accounted for: completed, rejected (429/503), failed (other status or
//! transport error) or timed out.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::Serialize;

fn parse_go_duration(s: &str) -> Result<Duration, String> {
    igw_sched::flow::quantity::parse_duration(s).map_err(|e| e.to_string())
}

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
    pub sharegpt_file: Option<std::path::PathBuf>,
    /// Seed of the arrivals and the workload.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print one JSON object as the last stdout line.
    #[arg(long)]
    pub json: bool,
    /// Write the blog's three-panel chart of the steps to PREFIX.svg and PREFIX.png.
    #[arg(long, value_name = "PREFIX")]
    pub chart: Option<std::path::PathBuf>,
    /// This run's series name in the chart (the policy or gateway measured).
    #[arg(long, default_value = "run")]
    pub label: String,
}

/// One QPS step's results.
#[derive(Debug, Default, Serialize, serde::Deserialize)]
pub struct StepReport {
    /// Offered QPS.
    pub qps: f64,
    /// Requests actually sent per second.
    pub sent_qps: f64,
    /// Requests sent.
    pub attempted: u64,
    /// Answered 2xx and fully read.
    pub completed: u64,
    /// Answered 429 or 503.
    pub rejected: u64,
    /// Other statuses and transport errors.
    pub failed: u64,
    /// Not finished within the client timeout.
    pub timeouts: u64,
    /// TTFT percentiles (ms).
    pub p50_ttft_ms: f64,
    /// p90 TTFT (ms).
    pub p90_ttft_ms: f64,
    /// p50 inter-token latency (ms).
    pub p50_itl_ms: f64,
    /// p90 inter-token latency (ms).
    pub p90_itl_ms: f64,
    /// p50 e2e ÷ output tokens (ms).
    pub p50_tpot_ms: f64,
    /// p90 e2e ÷ output tokens (ms).
    pub p90_tpot_ms: f64,
    /// p50 e2e (ms).
    pub p50_e2e_ms: f64,
    /// p90 e2e (ms).
    pub p90_e2e_ms: f64,
    /// Output tokens of completed requests per minute of the step.
    pub output_tokens_per_min: f64,
    /// Per traffic class, when the requests carried one (scenarios with `classes`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_class: BTreeMap<String, ClassStep>,
}

/// One traffic class's results in a step.
#[derive(Debug, Default, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ClassStep {
    /// Requests sent in this class.
    pub attempted: u64,
    /// Answered 2xx and fully read.
    pub completed: u64,
    /// Answered 429 or 503.
    pub rejected: u64,
    /// Other statuses and transport errors.
    pub failed: u64,
    /// Not finished within the client timeout.
    pub timeouts: u64,
    /// p90 TTFT of completed requests (ms).
    pub p90_ttft_ms: f64,
    /// p90 e2e of completed requests (ms).
    pub p90_e2e_ms: f64,
    /// This class's fraction of the step's completed output tokens.
    pub share: f64,
}

/// A traffic class on the wire: the InferenceObjective a request names and its fairness id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireClass {
    /// Class name, sent as `x-gateway-inference-objective` (the objective of that name).
    pub name: String,
    /// Sent as `x-gateway-inference-fairness-id`.
    pub fairness_id: String,
}

impl WireClass {
    /// The wire form of a scenario's classes; none when the scenario declares no classes.
    pub fn of(sc: &igw_bench::scenario::Scenario) -> Vec<Arc<WireClass>> {
        sc.classes
            .iter()
            .map(|c| {
                Arc::new(WireClass {
                    name: c.name.clone(),
                    fairness_id: c.fairness_id.clone().unwrap_or_else(|| c.name.clone()),
                })
            })
            .collect()
    }
}

impl StepReport {
    /// The step as Markdown table cells (without the outer pipes): QPS, sent, attempted, completed,
    /// rejected, failed, timeouts, p50 / p90 TTFT, p90 ITL, p90 TPOT, p50 / p90 e2e, output tok/min.
    pub fn cells(&self) -> String {
        let t = self;
        format!(
            "{:.1} | {:.1} | {} | {} | {} | {} | {} | {:.0} / {:.0} | {:.1} | {:.1} | {:.0} / {:.0} | {:.0}",
            t.qps,
            t.sent_qps,
            t.attempted,
            t.completed,
            t.rejected,
            t.failed,
            t.timeouts,
            t.p50_ttft_ms,
            t.p90_ttft_ms,
            t.p90_itl_ms,
            t.p90_tpot_ms,
            t.p50_e2e_ms,
            t.p90_e2e_ms,
            t.output_tokens_per_min
        )
    }
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

enum Outcome {
    Completed { ttft: f64, itls: Vec<f64>, e2e: f64, tokens: u64 },
    Rejected,
    Failed,
    TimedOut,
}

/// Runs the benchmark and prints the table (and JSON).
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    let report = rt.block_on(bench(&args))?;
    print!("{}", markdown(&report));
    if let Some(prefix) = &args.chart {
        super::bench::write_chart(&chart(&report, &args.label), prefix)?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

/// The steps as the blog's three-panel chart, one series named `label`; latencies of a step
/// where nothing completed are left out.
pub fn chart(r: &RunReport, label: &str) -> igw_bench::chart::Chart {
    let rows: Vec<igw_bench::chart::ThreePanelRow<'_>> = r
        .steps
        .iter()
        .map(|t| {
            let lat = |v: f64| if t.completed == 0 { f64::NAN } else { v };
            (label, t.qps, t.output_tokens_per_min, lat(t.p90_tpot_ms), lat(t.p90_e2e_ms))
        })
        .collect();
    igw_bench::chart::Chart::three_panel(&format!("igw bench run · {}", r.url), &rows)
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

/// Runs every step against `args.url`.
pub async fn bench(args: &RunArgs) -> anyhow::Result<RunReport> {
    let texts = args.sharegpt_file.as_deref().map(sharegpt_texts).transpose()?;
    let scenario = igw_bench::scenario::Scenario::builtin(&args.scenario)?;
    let generator = Arc::new(match &texts {
        Some(_) => igw_bench::workload::Generator::new(&igw_bench::workload::WorkloadSpec::LpgFit { seed: 1 }, None)?,
        None => igw_bench::cluster::generator(&scenario)?,
    });
    // Each request belongs to one of the scenario's classes, drawn by its fraction of the load
    // (its own random stream, so the lengths are those of a run without classes).
    let classes = WireClass::of(&scenario);
    let fractions: Vec<f64> = scenario.classes.iter().map(|c| c.fraction).collect();
    let mut crng = SmallRng::seed_from_u64(args.seed ^ 0x0c1a_55e5);
    let target = Target::new(&args.url, &args.model, args.timeout);
    let mut rng = SmallRng::seed_from_u64(args.seed);
    let mut steps = Vec::new();
    let mut next_id = 0u64;
    for &qps in &args.qps {
        let times = igw_bench::workload::arrival_times(
            igw_bench::workload::Process::Poisson,
            qps,
            args.duration.as_secs_f64(),
            &mut rng,
        );
        let sends: Vec<Send> = times
            .iter()
            .map(|&at| {
                let mut spec = generator.next(&mut rng);
                let text = texts.as_ref().map(|(pairs, _)| {
                    let p = &pairs[next_id as usize % pairs.len()];
                    (spec.input, spec.output) = (p.prompt_tokens, p.output_tokens);
                    p.prompt.clone()
                });
                if args.max_tokens_cap > 0 {
                    spec.output = spec.output.min(args.max_tokens_cap);
                }
                next_id += 1;
                let class = pick_class(&classes, &fractions, rand::Rng::random(&mut crng));
                Send { at, spec, id: next_id, text, class }
            })
            .collect();
        steps.push(run_step(&target, qps, args.duration, sends).await);
    }
    let workload = texts.map_or_else(|| generator.description.clone(), |(_, d)| d);
    Ok(RunReport { url: args.url.clone(), workload, steps })
}

/// The class whose share of the cumulative `fractions` covers `u` in [0, 1) (the last one when
/// the fractions sum to less); none without classes.
pub fn pick_class(classes: &[Arc<WireClass>], fractions: &[f64], u: f64) -> Option<Arc<WireClass>> {
    let mut acc = 0.0;
    let i = fractions
        .iter()
        .position(|f| {
            acc += f;
            u < acc
        })
        .unwrap_or(classes.len().saturating_sub(1));
    classes.get(i).cloned()
}

/// Where a step's requests go.
pub struct Target {
    client: Client<HttpConnector, Full<Bytes>>,
    completions: String,
    model: String,
    timeout: Duration,
}

impl Target {
    /// An OpenAI-compatible base URL, the model sent when a request names no LoRA adapter, and the
    /// client timeout per request.
    pub fn new(url: &str, model: &str, timeout: Duration) -> Self {
        Target {
            client: Client::builder(TokioExecutor::new()).build_http(),
            completions: format!("{}/v1/completions", url.trim_end_matches('/')),
            model: model.into(),
            timeout,
        }
    }
}

/// One request of a step.
pub struct Send {
    /// When to send it, seconds (wall clock) after the step starts.
    pub at: f64,
    /// Lengths, prefix group, adapter (the request's `model` when set).
    pub spec: igw_bench::workload::RequestSpec,
    /// Request number (makes unshared prompts unique).
    pub id: u64,
    /// The prompt text; else the workload's text for `spec` and `id`.
    pub text: Option<String>,
    /// The request's traffic class (its objective and fairness headers), if the scenario has classes.
    pub class: Option<Arc<WireClass>>,
}

/// Sends one step's requests on schedule (open loop), waits for all of them and summarizes;
/// `duration` is the step's arrival window (for the sent rate and the throughput).
pub async fn run_step(target: &Target, qps: f64, duration: Duration, sends: Vec<Send>) -> StepReport {
    let start = tokio::time::Instant::now();
    let counts = Arc::new(Counts::default());
    let planned = sends.len() as u64;
    let ticker = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
        let counts = counts.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(500));
            loop {
                every.tick().await;
                eprint!("\r{}", progress_line(qps, start.elapsed(), duration, planned, &counts.read()));
            }
        })
    });
    let mut tasks = Vec::with_capacity(sends.len());
    for send in sends {
        tokio::time::sleep_until(start + Duration::from_secs_f64(send.at.max(0.0))).await;
        let spec = &send.spec;
        let prompt = send.text.unwrap_or_else(|| igw_bench::workload::prompt_text(spec, send.id));
        // The body the simulator feeds the request core for the same request.
        let body = igw_bench::workload::completion_body(spec, &target.model, &prompt, true);
        let (client, url, timeout) = (target.client.clone(), target.completions.clone(), target.timeout);
        let counts = counts.clone();
        counts.sent.fetch_add(1, Ordering::Relaxed);
        let class = send.class;
        tasks.push(tokio::spawn(async move {
            let o = one(client, url, body, class.as_deref(), timeout).await;
            let n = match o {
                Outcome::Completed { .. } => &counts.completed,
                _ => &counts.unsuccessful,
            };
            n.fetch_add(1, Ordering::Relaxed);
            (class, o)
        }));
    }
    let mut outcomes = Vec::with_capacity(tasks.len());
    for t in tasks {
        outcomes.push(t.await.unwrap_or((None, Outcome::Failed)));
    }
    if let Some(t) = ticker {
        t.abort();
        eprint!("\r{}\r", " ".repeat(100));
    }
    let report = summarize(qps, duration.as_secs_f64(), outcomes);
    eprintln!(
        "  {:.1} QPS: {} attempted, {} completed, {} rejected, {} failed, {} timeouts",
        qps, report.attempted, report.completed, report.rejected, report.failed, report.timeouts
    );
    report
}

/// Live counts of one step, for the progress line.
#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    completed: AtomicU64,
    unsuccessful: AtomicU64,
}

impl Counts {
    fn read(&self) -> [u64; 3] {
        [&self.sent, &self.completed, &self.unsuccessful].map(|c| c.load(Ordering::Relaxed))
    }
}

/// The progress line shown on a terminal while a step runs: a bar over the step's duration (then
/// over the requests still in flight while it drains), sent / completed / unsuccessful counts.
pub fn progress_line(
    qps: f64,
    elapsed: Duration,
    duration: Duration,
    planned: u64,
    [sent, done, bad]: &[u64; 3],
) -> String {
    const WIDTH: usize = 24;
    let (frac, phase) = if elapsed < duration {
        (elapsed.as_secs_f64() / duration.as_secs_f64().max(1e-9), "sending")
    } else {
        ((done + bad) as f64 / planned.max(1) as f64, "draining")
    };
    let filled = ((frac.clamp(0.0, 1.0) * WIDTH as f64).round() as usize).min(WIDTH);
    format!(
        "  {qps:.1} QPS [{}{}] {phase} {:.0}/{:.0} s · sent {sent}/{planned} · completed {done} · unsuccessful {bad} · in flight {}",
        "#".repeat(filled),
        ".".repeat(WIDTH - filled),
        elapsed.as_secs_f64().min(duration.as_secs_f64()),
        duration.as_secs_f64(),
        sent.saturating_sub(done + bad)
    )
}

/// The prompts of a ShareGPT file in file order, and the workload's description.
fn sharegpt_texts(path: &std::path::Path) -> anyhow::Result<(Vec<igw_bench::sharegpt::TextPair>, String)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let counting = igw_bench::tokenizer::Counting::choose();
    let pairs = igw_bench::sharegpt::text_pairs(&bytes, &counting.load()?)?;
    let d = format!(
        "sharegpt-file {} ({} prompts in file order, {} tokens)",
        path.display(),
        pairs.len(),
        counting.label()
    );
    Ok((pairs, d))
}

async fn one(
    client: Client<HttpConnector, Full<Bytes>>,
    url: String,
    body: String,
    class: Option<&WireClass>,
    timeout: Duration,
) -> Outcome {
    let t0 = Instant::now();
    let fut = async {
        let mut req = hyper::Request::post(&url).header("content-type", "application/json");
        if let Some(c) = class {
            req = req
                .header("x-gateway-inference-objective", c.name.as_str())
                .header("x-gateway-inference-fairness-id", c.fairness_id.as_str());
        }
        let req = match req.body(Full::new(Bytes::from(body))) {
            Ok(r) => r,
            Err(_) => return Outcome::Failed,
        };
        let resp = match client.request(req).await {
            Ok(r) => r,
            Err(_) => return Outcome::Failed,
        };
        let status = resp.status().as_u16();
        if status == 429 || status == 503 {
            return Outcome::Rejected;
        }
        if !(200..300).contains(&status) {
            return Outcome::Failed;
        }
        let mut body = resp.into_body();
        let mut sse = SseTimer::default();
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return Outcome::Failed };
            if let Ok(data) = frame.into_data() {
                sse.push(&data, t0.elapsed().as_secs_f64());
            }
        }
        match sse.first {
            Some(ttft) => Outcome::Completed {
                ttft,
                itls: sse.itls,
                e2e: t0.elapsed().as_secs_f64(),
                tokens: sse.usage_tokens.unwrap_or(sse.events),
            },
            None => Outcome::Failed,
        }
    };
    tokio::time::timeout(timeout, fut).await.unwrap_or(Outcome::TimedOut)
}

/// Times token events in an SSE stream whose chunks may split events anywhere.
#[derive(Debug, Default)]
pub struct SseTimer {
    buf: Vec<u8>,
    /// Seconds to the first token event.
    pub first: Option<f64>,
    last: f64,
    /// Gaps between consecutive token events (s).
    pub itls: Vec<f64>,
    /// Token events seen.
    pub events: u64,
    /// `usage.completion_tokens` of the final usage event, if one came.
    pub usage_tokens: Option<u64>,
}

impl SseTimer {
    /// Feeds a chunk that arrived `at` seconds after the request was sent.
    pub fn push(&mut self, chunk: &[u8], at: f64) {
        self.buf.extend_from_slice(chunk);
        while let Some(pos) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = self.buf.drain(..pos + 2).collect();
            let text = String::from_utf8_lossy(&event);
            for line in text.lines() {
                let Some(data) = line.strip_prefix("data:").map(str::trim) else { continue };
                if data == "[DONE]" {
                    continue;
                }
                let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else { continue };
                if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                    self.usage_tokens = Some(n);
                }
                let has_token = v["choices"].as_array().is_some_and(|c| {
                    c.iter().any(|c| {
                        c["text"].as_str().is_some_and(|t| !t.is_empty())
                            || c["delta"]["content"].as_str().is_some_and(|t| !t.is_empty())
                    })
                });
                if has_token {
                    self.events += 1;
                    match self.first {
                        None => self.first = Some(at),
                        Some(_) => self.itls.push(at - self.last),
                    }
                    self.last = at;
                }
            }
        }
    }
}

/// The `p` quantile in milliseconds of samples in seconds, by igw's one definition
/// ([`igw_core::stats`], nearest rank), the one the simulator's rows use.
fn pct(v: &mut [f64], p: f64) -> f64 {
    igw_core::stats::quantile(v, p) * 1000.0
}

/// Counts and latency samples of a set of outcomes (a step, or one class of it).
#[derive(Default)]
struct Tally {
    attempted: u64,
    completed: u64,
    rejected: u64,
    failed: u64,
    timeouts: u64,
    ttft: Vec<f64>,
    e2e: Vec<f64>,
    tpot: Vec<f64>,
    itl: Vec<f64>,
    tokens: u64,
}

impl Tally {
    /// Counts `o`; the inter-token gaps are kept only with `itls` (the step's, not each class's).
    fn add(&mut self, o: &Outcome, itls: bool) {
        self.attempted += 1;
        match o {
            Outcome::Completed { ttft, itls: gaps, e2e, tokens } => {
                self.completed += 1;
                self.ttft.push(*ttft);
                self.e2e.push(*e2e);
                self.tpot.push(e2e / (*tokens).max(1) as f64);
                if itls {
                    self.itl.extend_from_slice(gaps);
                }
                self.tokens += tokens;
            }
            Outcome::Rejected => self.rejected += 1,
            Outcome::Failed => self.failed += 1,
            Outcome::TimedOut => self.timeouts += 1,
        }
    }
}

fn summarize(qps: f64, duration_s: f64, outcomes: Vec<(Option<Arc<WireClass>>, Outcome)>) -> StepReport {
    let mut all = Tally::default();
    let mut classes: BTreeMap<String, Tally> = BTreeMap::new();
    for (class, o) in &outcomes {
        all.add(o, true);
        if let Some(c) = class {
            classes.entry(c.name.clone()).or_default().add(o, false);
        }
    }
    let by_class = classes
        .into_iter()
        .map(|(name, mut c)| {
            let step = ClassStep {
                attempted: c.attempted,
                completed: c.completed,
                rejected: c.rejected,
                failed: c.failed,
                timeouts: c.timeouts,
                p90_ttft_ms: pct(&mut c.ttft, 0.9),
                p90_e2e_ms: pct(&mut c.e2e, 0.9),
                share: if all.tokens == 0 { 0.0 } else { c.tokens as f64 / all.tokens as f64 },
            };
            (name, step)
        })
        .collect();
    StepReport {
        qps,
        sent_qps: all.attempted as f64 / duration_s.max(1e-9),
        attempted: all.attempted,
        completed: all.completed,
        rejected: all.rejected,
        failed: all.failed,
        timeouts: all.timeouts,
        p50_ttft_ms: pct(&mut all.ttft, 0.5),
        p90_ttft_ms: pct(&mut all.ttft, 0.9),
        p50_itl_ms: pct(&mut all.itl, 0.5),
        p90_itl_ms: pct(&mut all.itl, 0.9),
        p50_tpot_ms: pct(&mut all.tpot, 0.5),
        p90_tpot_ms: pct(&mut all.tpot, 0.9),
        p50_e2e_ms: pct(&mut all.e2e, 0.5),
        p90_e2e_ms: pct(&mut all.e2e, 0.9),
        output_tokens_per_min: 60.0 * all.tokens as f64 / duration_s.max(1e-9),
        by_class,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_split_anywhere_are_timed_once() {
        let stream = b"data: {\"choices\":[{\"text\":\"a\"}]}\n\ndata: {\"choices\":[{\"text\":\"b\"}]}\n\ndata: {\"choices\":[],\"usage\":{\"completion_tokens\":2}}\n\ndata: [DONE]\n\n";
        for split in 1..stream.len() {
            let mut t = SseTimer::default();
            t.push(&stream[..split], 0.1);
            t.push(&stream[split..], 0.3);
            assert_eq!((t.events, t.usage_tokens), (2, Some(2)), "split at {split}");
            assert!(t.first.is_some());
            assert_eq!(t.itls.len(), 1);
        }
    }

    #[test]
    fn classes_are_drawn_by_fraction_and_summarized_apart() {
        let class = |n: &str| Arc::new(WireClass { name: n.into(), fairness_id: format!("{n}-flow") });
        let classes = [class("critical"), class("sheddable")];
        let fr = [0.3, 0.7];
        assert_eq!(pick_class(&classes, &fr, 0.1).unwrap().name, "critical");
        assert_eq!(pick_class(&classes, &fr, 0.31).unwrap().name, "sheddable");
        assert_eq!(pick_class(&classes, &fr, 0.999_999).unwrap().name, "sheddable");
        assert!(pick_class(&[], &[], 0.5).is_none());
        let done = |e: f64, n: u64| Outcome::Completed { ttft: 0.01, itls: vec![], e2e: e, tokens: n };
        let r = summarize(
            2.0,
            1.0,
            vec![
                (Some(classes[0].clone()), done(1.0, 30)),
                (Some(classes[0].clone()), done(2.0, 30)),
                (Some(classes[1].clone()), Outcome::Rejected),
                (Some(classes[1].clone()), done(4.0, 40)),
                (Some(classes[1].clone()), Outcome::TimedOut),
            ],
        );
        assert_eq!((r.attempted, r.completed, r.rejected, r.timeouts), (5, 3, 1, 1));
        let (c, s) = (&r.by_class["critical"], &r.by_class["sheddable"]);
        assert_eq!((c.attempted, c.completed, c.rejected), (2, 2, 0));
        assert_eq!((s.attempted, s.completed, s.rejected, s.timeouts), (3, 1, 1, 1));
        assert_eq!((c.p90_e2e_ms, s.p90_e2e_ms), (2000.0, 4000.0));
        assert!((c.share - 0.6).abs() < 1e-9 && (s.share - 0.4).abs() < 1e-9);
        // Without classes there is no per-class section.
        assert!(summarize(1.0, 1.0, vec![(None, done(1.0, 1))]).by_class.is_empty());
    }

    #[test]
    fn the_progress_line_fills_while_sending_then_while_draining() {
        let d = Duration::from_secs(10);
        let l = progress_line(20.0, Duration::from_secs(5), d, 200, &[100, 80, 2]);
        assert!(l.contains("[############............] sending 5/10 s"), "{l}");
        assert!(l.contains("sent 100/200 · completed 80 · unsuccessful 2 · in flight 18"), "{l}");
        let l = progress_line(20.0, Duration::from_secs(12), d, 200, &[200, 150, 0]);
        assert!(l.contains("[##################......] draining 10/10 s"), "{l}");
        assert!(l.contains("in flight 50"), "{l}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_request_against_a_sim_fleet_is_accounted_for() {
        let mut cfg = igw_sim::FleetConfig::new(igw_sim::profile::Profile::llama2_7b_h100());
        cfg.time_scale = 0.01;
        let fleet = igw_sim::Fleet::bind(cfg, 1, 0).await.unwrap();
        let args = RunArgs {
            url: format!("http://{}", fleet.addrs()[0]),
            model: "meta-llama/Llama-2-7b-hf".into(),
            scenario: "shared-prefix".into(),
            qps: vec![40.0],
            duration: Duration::from_millis(500),
            timeout: Duration::from_secs(30),
            max_tokens_cap: 8,
            sharegpt_file: None,
            seed: 3,
            json: false,
            chart: None,
            label: "run".into(),
        };
        let r = bench(&args).await.unwrap();
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
        let args = RunArgs {
            url: format!("http://{}", fleet.addrs()[0]),
            model: "meta-llama/Llama-2-7b-hf".into(),
            scenario: "blog".into(),
            qps: vec![40.0],
            duration: Duration::from_millis(250),
            timeout: Duration::from_secs(30),
            max_tokens_cap: 8,
            sharegpt_file: Some(file.clone()),
            seed: 3,
            json: false,
            chart: None,
            label: "run".into(),
        };
        let r = bench(&args).await.unwrap();
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
}
