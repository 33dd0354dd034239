//! A virtual-time driver for one replica: arrivals, steps and a throughput report.
//!
//! The cluster DES (router + many replicas) lives elsewhere; this is the minimal loop used to
//! calibrate one engine, and an example of how to drive [`Engine`] in virtual time.

use igw_core::Instant;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand_distr::{Distribution, Exp};

use crate::engine::{Engine, EngineConfig, RequestId, SimRequest};
use crate::error::SimError;
use crate::workload::ShareGptLengths;

/// How requests arrive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arrivals {
    /// Open loop, exponential inter-arrival times at `rate` requests/s.
    Poisson {
        /// Requests per second.
        rate: f64,
    },
    /// Saturation: keep at least `depth` requests waiting at every step.
    Backlog {
        /// Waiting requests to maintain.
        depth: usize,
    },
}

/// A single-replica run.
#[derive(Debug, Clone, PartialEq)]
pub struct DesConfig {
    /// The engine.
    pub engine: EngineConfig,
    /// Arrival process (lengths are ShareGPT-like, `max_tokens` = output length).
    pub arrivals: Arrivals,
    /// Virtual seconds to simulate (arrivals stop and the report window ends here).
    pub duration_s: f64,
    /// Virtual seconds excluded from the report at the start.
    pub warmup_s: f64,
    /// Seed of the workload RNG.
    pub seed: u64,
}

/// What a run measured over `[warmup_s, duration_s]`.
#[derive(Debug, Clone, PartialEq)]
pub struct DesReport {
    /// Output tokens per virtual second.
    pub output_tokens_per_s: f64,
    /// Completed requests per virtual second.
    pub requests_per_s: f64,
    /// Mean time to first token over the whole run, seconds.
    pub mean_ttft_s: f64,
    /// Mean running-set size over steps in the window.
    pub mean_running: f64,
    /// Preemptions over the whole run.
    pub preemptions: u64,
    /// Steps over the whole run.
    pub steps: u64,
}

/// Runs one replica in virtual time.
pub fn run_single_replica(cfg: &DesConfig) -> Result<DesReport, SimError> {
    let mut engine = Engine::new(cfg.engine.clone())?;
    let lengths = ShareGptLengths::new();
    let mut rng = SmallRng::seed_from_u64(cfg.seed);
    let exp = match cfg.arrivals {
        Arrivals::Poisson { rate } => {
            Some(Exp::new(rate).map_err(|e| SimError::Config(format!("arrival rate {rate}: {e}")))?)
        }
        Arrivals::Backlog { .. } => None,
    };
    let mut next_id = 0u64;
    let mut submit = |engine: &mut Engine, rng: &mut SmallRng, at: f64| -> Result<(), SimError> {
        let (input, output) = (lengths.input(rng), lengths.output(rng));
        next_id += 1;
        engine.submit(
            SimRequest {
                id: RequestId(next_id),
                prompt_tokens: input,
                block_hashes: Vec::new(),
                output_tokens: output,
                max_tokens: output,
                adapter: None,
            },
            Instant::from_secs_f64(at),
        )
    };
    let mut t = 0.0f64;
    let mut next_arrival = exp.as_ref().map(|e| e.sample(&mut rng)).unwrap_or(f64::INFINITY);
    let (mut tokens, mut done, mut running_sum, mut steps_in_window) = (0u64, 0u64, 0.0f64, 0u64);
    while t < cfg.duration_s {
        if let Arrivals::Backlog { depth } = cfg.arrivals {
            while engine.waiting_len() < depth {
                submit(&mut engine, &mut rng, t)?;
            }
        }
        while next_arrival <= t {
            submit(&mut engine, &mut rng, next_arrival)?;
            next_arrival += exp.as_ref().map(|e| e.sample(&mut rng)).unwrap_or(f64::INFINITY);
        }
        let Some(d) = engine.start_step(Instant::from_secs_f64(t)) else {
            if next_arrival.is_finite() {
                t = next_arrival;
                continue;
            }
            break;
        };
        let end = t + d.as_secs_f64();
        let running = engine.running_len();
        let out = engine.finish_step(Instant::from_secs_f64(end));
        if end >= cfg.warmup_s && end <= cfg.duration_s {
            tokens += out.events.len() as u64;
            running_sum += running as f64;
            steps_in_window += 1;
            for ev in &out.events {
                if ev.finished.is_some() {
                    done += 1;
                }
            }
        }
        t = end;
    }
    let st = engine.stats();
    let window = (cfg.duration_s - cfg.warmup_s).max(1e-9);
    Ok(DesReport {
        output_tokens_per_s: tokens as f64 / window,
        requests_per_s: done as f64 / window,
        mean_ttft_s: if st.ttft.count > 0 { st.ttft.sum / st.ttft.count as f64 } else { 0.0 },
        mean_running: if steps_in_window > 0 { running_sum / steps_in_window as f64 } else { 0.0 },
        preemptions: st.preemptions,
        steps: st.steps,
    })
}
