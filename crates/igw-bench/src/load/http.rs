//! The open-loop HTTP load generator: one QPS step of streamed `/v1/completions` requests against
//! any OpenAI-compatible URL, every request accounted for.
//!
//! Requests go out on schedule (a late request never delays the next); each one streams and is
//! timed at the client by [`SseTimer`]: TTFT (first token event), the gaps
//! between token events (ITL), TPOT (e2e ÷ output tokens, the blog's per-output-token latency)
//! and e2e. Every request ends as completed, rejected (429/503), failed (other status or
//! transport error) or timed out. While a step runs on a terminal, a progress line is kept on
//! stderr; each step ends with one summary line there.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

use super::sse::SseTimer;
use crate::scenario::Scenario;
use crate::workload::RequestSpec;

/// One QPS step's results.
#[derive(Debug, Default, Serialize, Deserialize)]
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
    /// Completed output tokens by the replica that served them (`x-igw-sim-replica`, which
    /// simulated replicas send); empty when no response named one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tokens_by_replica: BTreeMap<String, u64>,
    /// The price of a million output tokens at capacity, for a priced fleet (the DES's
    /// [`crate::report::Row::cost_per_mtok`], from `tokens_by_replica`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_per_mtok: Option<f64>,
}

/// One traffic class's results in a step.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Fraction of the class's requests sent that met its SLO (TTFT, and time per output token
    /// after the first), a request that did not complete counting as a miss; `None` when the
    /// class states none. The DES's [`crate::report::ClassRow::slo_attainment`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo_attainment: Option<f64>,
}

/// A traffic class on the wire: the InferenceObjective a request names and its fairness id.
#[derive(Debug, Clone, PartialEq)]
pub struct WireClass {
    /// Class name, sent as `x-gateway-inference-objective` (the objective of that name).
    pub name: String,
    /// Sent as `x-gateway-inference-fairness-id`.
    pub fairness_id: String,
    /// The class's SLO on the wall clock, seconds: (TTFT, time per output token).
    pub slo_s: Option<(Option<f64>, Option<f64>)>,
}

impl WireClass {
    /// The wire form of a scenario's classes, for a fleet whose wall clock runs at
    /// `time_scale` × model time; none when the scenario declares no classes.
    pub fn of(sc: &Scenario, time_scale: f64) -> Vec<Arc<WireClass>> {
        let wall = |ms: Option<u32>| ms.map(|m| f64::from(m) / 1000.0 * time_scale);
        sc.classes
            .iter()
            .map(|c| {
                Arc::new(WireClass {
                    name: c.name.clone(),
                    fairness_id: c.fairness_id.clone().unwrap_or_else(|| c.name.clone()),
                    slo_s: c.slo.map(|s| (wall(s.ttft_ms), wall(s.tpot_ms))),
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

    /// Converts a wall-clock step of a fleet running at `time_scale` (wall time = model time ×
    /// `time_scale`) into model time: latencies divided by it, rates multiplied by it.
    pub fn to_model_time(&mut self, time_scale: f64) {
        let s = self;
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
    pub spec: RequestSpec,
    /// Request number (makes unshared prompts unique).
    pub id: u64,
    /// The prompt text; else the workload's text for `spec` and `id`.
    pub text: Option<String>,
    /// The request's traffic class (its objective and fairness headers), if the scenario has classes.
    pub class: Option<Arc<WireClass>>,
}

/// How one request ended.
enum Ended {
    Completed { ttft: f64, itls: Vec<f64>, e2e: f64, tokens: u64, replica: Option<String> },
    Rejected,
    Failed,
    TimedOut,
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
        let prompt = send.text.unwrap_or_else(|| crate::workload::prompt_text(spec, send.id));
        // The body the simulator feeds the request core for the same request.
        let body = crate::workload::completion_body(spec, &target.model, &prompt, true);
        let (client, url, timeout) = (target.client.clone(), target.completions.clone(), target.timeout);
        let counts = counts.clone();
        counts.sent.fetch_add(1, Ordering::Relaxed);
        let class = send.class;
        tasks.push(tokio::spawn(async move {
            let o = one(client, url, body, class.as_deref(), timeout).await;
            let n = match o {
                Ended::Completed { .. } => &counts.completed,
                _ => &counts.unsuccessful,
            };
            n.fetch_add(1, Ordering::Relaxed);
            (class, o)
        }));
    }
    let mut outcomes = Vec::with_capacity(tasks.len());
    for t in tasks {
        outcomes.push(t.await.unwrap_or((None, Ended::Failed)));
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

async fn one(
    client: Client<HttpConnector, Full<Bytes>>,
    url: String,
    body: String,
    class: Option<&WireClass>,
    timeout: Duration,
) -> Ended {
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
            Err(_) => return Ended::Failed,
        };
        let resp = match client.request(req).await {
            Ok(r) => r,
            Err(_) => return Ended::Failed,
        };
        let status = resp.status().as_u16();
        if status == 429 || status == 503 {
            return Ended::Rejected;
        }
        if !(200..300).contains(&status) {
            return Ended::Failed;
        }
        let replica =
            resp.headers().get(igw_sim::server::REPLICA_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
        let mut body = resp.into_body();
        let mut sse = SseTimer::default();
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return Ended::Failed };
            if let Ok(data) = frame.into_data() {
                sse.push(&data, t0.elapsed().as_secs_f64());
            }
        }
        sse.finish(t0.elapsed().as_secs_f64());
        match sse.first {
            Some(ttft) => Ended::Completed {
                ttft,
                itls: sse.itls,
                e2e: t0.elapsed().as_secs_f64(),
                tokens: sse.usage_tokens.unwrap_or(sse.events),
                replica,
            },
            None => Ended::Failed,
        }
    };
    tokio::time::timeout(timeout, fut).await.unwrap_or(Ended::TimedOut)
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
    slo_met: u64,
    by_replica: BTreeMap<String, u64>,
}

impl Tally {
    /// Counts `o`; the inter-token gaps are kept only with `itls` (the step's, not each class's).
    fn add(&mut self, o: &Ended, itls: bool, slo: Option<(Option<f64>, Option<f64>)>) {
        self.attempted += 1;
        match o {
            Ended::Completed { ttft, itls: gaps, e2e, tokens, replica } => {
                if let Some((ttft_slo, tpot_slo)) = slo {
                    let tpot = (*tokens > 1).then(|| (e2e - ttft) / (*tokens - 1) as f64);
                    let met =
                        ttft_slo.is_none_or(|s| *ttft <= s) && tpot_slo.is_none_or(|s| tpot.is_none_or(|t| t <= s));
                    self.slo_met += u64::from(met);
                }
                if let Some(r) = replica {
                    *self.by_replica.entry(r.clone()).or_default() += tokens;
                }
                self.completed += 1;
                self.ttft.push(*ttft);
                self.e2e.push(*e2e);
                self.tpot.push(e2e / (*tokens).max(1) as f64);
                if itls {
                    self.itl.extend_from_slice(gaps);
                }
                self.tokens += tokens;
            }
            Ended::Rejected => self.rejected += 1,
            Ended::Failed => self.failed += 1,
            Ended::TimedOut => self.timeouts += 1,
        }
    }
}

fn summarize(qps: f64, duration_s: f64, outcomes: Vec<(Option<Arc<WireClass>>, Ended)>) -> StepReport {
    let mut all = Tally::default();
    let mut classes: BTreeMap<String, Tally> = BTreeMap::new();
    let mut slos: BTreeMap<String, bool> = BTreeMap::new();
    for (class, o) in &outcomes {
        all.add(o, true, None);
        if let Some(c) = class {
            classes.entry(c.name.clone()).or_default().add(o, false, c.slo_s);
            slos.insert(c.name.clone(), c.slo_s.is_some());
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
                slo_attainment: slos
                    .get(&name)
                    .copied()
                    .unwrap_or(false)
                    .then(|| c.slo_met as f64 / c.attempted.max(1) as f64),
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
        tokens_by_replica: all.by_replica,
        cost_per_mtok: None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_drawn_by_fraction_and_summarized_apart() {
        let class = |n: &str| Arc::new(WireClass { name: n.into(), fairness_id: format!("{n}-flow"), slo_s: None });
        let classes = [class("critical"), class("sheddable")];
        let fr = [0.3, 0.7];
        assert_eq!(pick_class(&classes, &fr, 0.1).unwrap().name, "critical");
        assert_eq!(pick_class(&classes, &fr, 0.31).unwrap().name, "sheddable");
        assert_eq!(pick_class(&classes, &fr, 0.999_999).unwrap().name, "sheddable");
        assert!(pick_class(&[], &[], 0.5).is_none());
        let done = |e: f64, n: u64| Ended::Completed { ttft: 0.01, itls: vec![], e2e: e, tokens: n, replica: None };
        let r = summarize(
            2.0,
            1.0,
            vec![
                (Some(classes[0].clone()), done(1.0, 30)),
                (Some(classes[0].clone()), done(2.0, 30)),
                (Some(classes[1].clone()), Ended::Rejected),
                (Some(classes[1].clone()), done(4.0, 40)),
                (Some(classes[1].clone()), Ended::TimedOut),
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
        s.by_class.insert("critical".into(), ClassStep { p90_e2e_ms: 50.0, p90_ttft_ms: 5.0, ..Default::default() });
        s.to_model_time(0.5);
        assert_eq!((s.sent_qps, s.p90_e2e_ms, s.p90_tpot_ms, s.output_tokens_per_min), (2.5, 200.0, 4.0, 300.0));
        assert_eq!((s.p50_itl_ms, s.p50_tpot_ms), (2.0, 3.0), "every latency, the medians too");
        assert_eq!((s.by_class["critical"].p90_e2e_ms, s.by_class["critical"].p90_ttft_ms), (100.0, 10.0));
    }
}
