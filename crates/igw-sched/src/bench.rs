//! The in-process decision benchmark behind `igw bench scheduler`.
//!
//! Builds `endpoints` endpoints with varied fresh metrics (queue 0–20, KV 0–0.9, some LoRA
//! adapters), warms the prefix index with 10,000 earlier requests spread over the endpoints, of
//! which half share one of 20 long prefixes, then times `decisions` decisions on `prompt_bytes`-byte prompts (half of
//! them sharing a warmed prefix). Timed: admission + scheduling, including prompt hashing and
//! the prefix lookup; not timed: body parsing and `on_routed` (the index insert after routing),
//! which is measured separately.

use std::time::{Duration, Instant as WallInstant};

use igw_core::{Datastore, EndpointMeta, EndpointMetrics, InferenceRequest, Instant};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::scheduler::{Scheduler, UnknownPolicy};

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Policy name.
    pub policy: String,
    /// Number of endpoints.
    pub endpoints: usize,
    /// Prompt size in bytes.
    pub prompt_bytes: usize,
    /// Timed decisions.
    pub decisions: usize,
    /// Requests used to warm the prefix index.
    pub warmup_requests: usize,
    /// Seed.
    pub seed: u64,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            policy: "igw".into(),
            endpoints: 100,
            prompt_bytes: 4096,
            decisions: 20_000,
            warmup_requests: 10_000,
            seed: 1,
        }
    }
}

/// Results (latencies in microseconds).
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    /// Policy name.
    pub policy: String,
    /// Endpoints.
    pub endpoints: usize,
    /// Prompt bytes.
    pub prompt_bytes: usize,
    /// Timed decisions.
    pub decisions: usize,
    /// Median decision latency.
    pub p50_us: f64,
    /// 99th percentile decision latency.
    pub p99_us: f64,
    /// Mean decision latency.
    pub mean_us: f64,
    /// Decisions per second on one thread (1 / mean).
    pub decisions_per_s: f64,
    /// Median latency of `on_routed` (prefix insert + in-flight add).
    pub on_routed_p50_us: f64,
    /// Prefix index entries after the run.
    pub index_entries: usize,
    /// Prefix index memory estimate in bytes.
    pub index_bytes: usize,
    /// Bytes per index entry (estimate / entries).
    pub index_bytes_per_entry: f64,
}

fn text(rng: &mut SmallRng, len: usize) -> String {
    const WORDS: &[&str] =
        &["the", "model", "cache", "token", "route", "gateway", "prefix", "queue", "replica", "lora"];
    let mut s = String::with_capacity(len + 16);
    while s.len() < len {
        s.push_str(WORDS[rng.random_range(0..WORDS.len())]);
        s.push(' ');
    }
    s.truncate(len);
    s
}

/// igw's one percentile definition (nearest rank) over sorted samples.
use igw_core::stats::quantile_sorted as percentile;

/// A warmed pool and the requests to time: what both `igw bench scheduler` and the criterion
/// benches measure.
#[derive(Debug)]
pub struct Fixture {
    /// The scheduler under test.
    pub scheduler: Scheduler,
    /// The pool.
    pub datastore: Datastore,
    /// Requests to decide on (half share a warmed prefix).
    pub requests: Vec<InferenceRequest>,
    /// The time the pool's metrics are fresh at.
    pub now: Instant,
    rng: SmallRng,
}

impl Fixture {
    /// Builds the pool for `opts.policy`, warms the prefix index and prepares the requests.
    pub fn new(opts: &BenchOptions) -> Result<Self, UnknownPolicy> {
        Self::with_scheduler(opts, Scheduler::from_policy(&opts.policy)?)
    }

    /// The same fixture around a given scheduler.
    pub fn with_scheduler(opts: &BenchOptions, sched: Scheduler) -> Result<Self, UnknownPolicy> {
        let mut rng = SmallRng::seed_from_u64(opts.seed);
        let ds = Datastore::with_endpoints((0..opts.endpoints).map(|i| {
            let addr = format!("10.{}.{}.{}:8000", (i >> 16) & 255, (i >> 8) & 255, i & 255);
            EndpointMeta::from_addr(addr.parse().unwrap_or_else(|_| std::net::SocketAddr::from(([10, 0, 0, 1], 8000))))
        }));
        let snap = ds.snapshot();
        let now = Instant::from_secs_f64(100.0);
        for e in &snap.endpoints {
            let mut m = EndpointMetrics {
                waiting: rng.random_range(0..=20),
                running: rng.random_range(0..=64),
                kv_usage: rng.random_range(0.0..0.9),
                max_adapters: Some(4),
                cache_block_size: Some(16),
                cache_num_blocks: Some(7300),
                update_time: Some(now),
                ..Default::default()
            };
            if rng.random_bool(0.3) {
                m.active_adapters.insert(format!("adapter-{}", rng.random_range(0..8)));
            }
            e.set_metrics(m);
        }
        let prefixes: Vec<String> = (0..20).map(|_| text(&mut rng, opts.prompt_bytes / 2)).collect();
        let make_prompt = |rng: &mut SmallRng| {
            if rng.random_bool(0.5) {
                let p = &prefixes[rng.random_range(0..prefixes.len())];
                format!("{p}{}", text(rng, opts.prompt_bytes.saturating_sub(p.len())))
            } else {
                text(rng, opts.prompt_bytes)
            }
        };
        let mut wrng = SmallRng::seed_from_u64(opts.seed ^ 0x5eed);
        // History spread over the whole fleet, so every endpoint holds cached chains.
        for i in 0..opts.warmup_requests {
            let req = InferenceRequest::text("meta-llama/Llama-2-7b-hf", &make_prompt(&mut wrng));
            if let Ok(d) = sched.schedule(&req, &snap.endpoints, 1, now, &mut wrng) {
                let target = &snap.endpoints[i % snap.endpoints.len()];
                sched.on_routed(&d, target);
                sched.on_finished(&d, target);
            }
        }
        let requests: Vec<InferenceRequest> = (0..opts.decisions.max(1))
            .map(|_| InferenceRequest::text("meta-llama/Llama-2-7b-hf", &make_prompt(&mut rng)))
            .collect();
        Ok(Fixture { scheduler: sched, datastore: ds, requests, now, rng })
    }

    /// One decision on request `i` (modulo the number of requests), as timed by the benchmark.
    pub fn decide(&mut self, i: usize) -> Option<crate::scheduler::Decision> {
        let snap = self.datastore.snapshot();
        let req = &self.requests[i % self.requests.len()];
        self.scheduler.admit(req, &snap.endpoints, self.now).ok()?;
        self.scheduler.schedule(req, &snap.endpoints, 1, self.now, &mut self.rng).ok()
    }
}

/// Runs the benchmark.
pub fn run(opts: &BenchOptions) -> Result<BenchReport, UnknownPolicy> {
    let Fixture { scheduler: sched, datastore: ds, requests, now, mut rng } = Fixture::new(opts)?;
    let snap = ds.snapshot();
    let mut lat = Vec::with_capacity(requests.len());
    let mut routed = Vec::with_capacity(requests.len());
    for req in &requests {
        let t0 = WallInstant::now();
        let ok = sched.admit(req, &snap.endpoints, now).is_ok();
        let d = sched.schedule(req, &snap.endpoints, 1, now, &mut rng);
        lat.push(t0.elapsed());
        if let (true, Ok(d)) = (ok, d) {
            let t1 = WallInstant::now();
            sched.on_routed(&d, &d.endpoints[0]);
            routed.push(t1.elapsed());
            sched.on_finished(&d, &d.endpoints[0]);
        }
    }
    let us = |v: &mut Vec<Duration>| {
        let mut x: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        x.sort_by(f64::total_cmp);
        x
    };
    let lat = us(&mut lat);
    let routed = us(&mut routed);
    let mean = lat.iter().sum::<f64>() / lat.len() as f64;
    let (entries, bytes) = sched.prefix_index().map_or((0, 0), |i| (i.len(), i.approx_bytes()));
    Ok(BenchReport {
        policy: opts.policy.clone(),
        endpoints: opts.endpoints,
        prompt_bytes: opts.prompt_bytes,
        decisions: lat.len(),
        p50_us: percentile(&lat, 0.5),
        p99_us: percentile(&lat, 0.99),
        mean_us: mean,
        decisions_per_s: if mean > 0.0 { 1e6 / mean } else { 0.0 },
        on_routed_p50_us: percentile(&routed, 0.5),
        index_entries: entries,
        index_bytes: bytes,
        index_bytes_per_entry: if entries > 0 { bytes as f64 / entries as f64 } else { 0.0 },
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn small_run_reports_sane_numbers() {
        let r =
            run(&BenchOptions { endpoints: 10, decisions: 200, warmup_requests: 200, ..Default::default() }).unwrap();
        assert_eq!(r.decisions, 200);
        assert!(r.p50_us > 0.0 && r.p99_us >= r.p50_us);
        assert!(r.index_entries > 0, "the warm-up fills the prefix index");
        assert!(run(&BenchOptions { policy: "nope".into(), ..Default::default() }).is_err());
    }
}
