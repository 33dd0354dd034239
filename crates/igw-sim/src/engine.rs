//! The engine: a step-by-step model of the vLLM V1 scheduler, sans-IO.
//!
//! Time comes in as [`Instant`] values (model time, unscaled) and randomness from a seed, so a run is
//! a pure function of its inputs. A step has two halves: [`Engine::start_step`] forms the batch (running
//! requests first, then waiting ones FCFS, within the token budget, `max_num_seqs`, free KV blocks and
//! LoRA slots, preempting the newest running request when blocks run out) and returns the modelled
//! duration; [`Engine::finish_step`], called when that duration has elapsed, advances the computed
//! tokens, emits one token per request whose prefill is complete and retires finished requests.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use igw_core::Instant;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand_distr::{Distribution, Normal};

use crate::error::SimError;
use crate::kv::{BlockPool, BlockRef};
use crate::profile::Profile;
use crate::stats::EngineStats;
use crate::step_time::{StepShape, step_ms};

/// Identifies a request inside one engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// A request as the engine sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct SimRequest {
    /// Caller-chosen unique id.
    pub id: RequestId,
    /// Prompt length in tokens (≥ 1).
    pub prompt_tokens: u32,
    /// Chained hashes of the prompt's full KV blocks, in order (for prefix caching); may be empty.
    pub block_hashes: Vec<u64>,
    /// Tokens to generate (≥ 1; capped at `max_model_len - prompt_tokens`).
    pub output_tokens: u32,
    /// The request's `max_tokens`: when `output_tokens` reaches it the finish reason is `length`.
    pub max_tokens: u32,
    /// LoRA adapter, if any.
    pub adapter: Option<Arc<str>>,
}

/// Why a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// Natural end of the generation (EOS).
    Stop,
    /// `max_tokens` reached.
    Length,
    /// Aborted by the caller.
    Abort,
}

impl FinishReason {
    /// The OpenAI / vLLM spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
        }
    }
}

/// Summary of a finished request (what the API reports as `usage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    /// Why it ended.
    pub reason: FinishReason,
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Generated tokens.
    pub completion_tokens: u32,
    /// Prompt tokens served from the prefix cache at first admission.
    pub cached_tokens: u32,
}

/// One generated token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenEvent {
    /// The request.
    pub id: RequestId,
    /// 0-based index of the token in the output.
    pub index: u32,
    /// Set on the last token.
    pub finished: Option<Finished>,
}

/// What a finished step produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepOutcome {
    /// Tokens, in batch order. Every event happens at the step's end time.
    pub events: Vec<TokenEvent>,
    /// Tokens processed by the step (prefill + decode).
    pub tokens: u32,
}

/// Engine settings beyond the profile.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Model, hardware and capacities.
    pub profile: Profile,
    /// Relative speed of this replica: step durations are divided by it (0.7 = 30% slower).
    pub speed: f64,
    /// Standard deviation of the per-step multiplicative jitter (N(1, σ), clamped to ±50%); 0 = none.
    pub jitter_sigma: f64,
    /// Seed of the jitter RNG.
    pub seed: u64,
    /// Distinct LoRA adapters usable in one batch; 0 disables LoRA.
    pub max_loras: u32,
}

impl EngineConfig {
    /// A noiseless engine for `profile` with LoRA disabled.
    pub fn new(profile: Profile) -> Self {
        EngineConfig { profile, speed: 1.0, jitter_sigma: 0.0, seed: 0, max_loras: 0 }
    }
}

/// One `lora_requests_info` label set and when it was last seen (model seconds).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraInfoSample {
    /// Comma-joined adapters with running requests.
    pub running: String,
    /// Comma-joined adapters with waiting requests.
    pub waiting: String,
    /// Last model time (seconds) this label set was current.
    pub at_secs: f64,
}

/// Gauges and counters at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsSnapshot {
    /// Requests in the running set.
    pub running: u32,
    /// Requests waiting (including preempted ones).
    pub waiting: u32,
    /// Fraction of KV blocks referenced by requests.
    pub kv_usage: f64,
    /// Blocks referenced by requests.
    pub used_blocks: u32,
    /// Total KV blocks.
    pub num_gpu_blocks: u32,
    /// Tokens per block.
    pub block_size: u32,
    /// LoRA slots (0 = LoRA disabled).
    pub max_loras: u32,
    /// Cumulative counters and histograms.
    pub stats: EngineStats,
    /// `lora_requests_info` label sets, oldest first (empty when LoRA is disabled).
    pub lora_info: Vec<LoraInfoSample>,
}

#[derive(Debug)]
struct Req {
    prompt: u32,
    output: u32,
    max_tokens: u32,
    hashes: Vec<u64>,
    adapter: Option<Arc<str>>,
    arrival: f64,
    computed: u32,
    generated: u32,
    blocks: Vec<BlockRef>,
    registered: usize,
    cached_tokens: Option<u32>,
    first_scheduled: Option<f64>,
    first_token: Option<f64>,
    last_token: f64,
    preemptions: u32,
}

/// Most `lora_requests_info` label sets kept.
const MAX_LORA_INFO: usize = 64;

/// The engine of one replica.
#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    kv: BlockPool,
    reqs: HashMap<RequestId, Req>,
    waiting: VecDeque<RequestId>,
    running: Vec<RequestId>,
    batch: Vec<(RequestId, u32)>,
    in_step: bool,
    gpu_loras: Vec<(Arc<str>, u64)>,
    lora_info: Vec<LoraInfoSample>,
    rng: SmallRng,
    jitter: Option<Normal<f64>>,
    stats: EngineStats,
}

fn secs(t: Instant) -> f64 {
    t.as_secs_f64()
}

fn cdiv(a: u32, b: u32) -> u32 {
    a.div_ceil(b)
}

impl Engine {
    /// A fresh engine.
    pub fn new(cfg: EngineConfig) -> Result<Self, SimError> {
        cfg.profile.validate()?;
        if !(cfg.speed.is_finite() && cfg.speed > 0.0) {
            return Err(SimError::Config(format!("speed must be positive, got {}", cfg.speed)));
        }
        let jitter = if cfg.jitter_sigma > 0.0 {
            Some(Normal::new(1.0, cfg.jitter_sigma).map_err(|e| SimError::Config(format!("jitter: {e}")))?)
        } else {
            None
        };
        Ok(Engine {
            kv: BlockPool::new(cfg.profile.num_gpu_blocks),
            reqs: HashMap::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            batch: Vec::new(),
            in_step: false,
            gpu_loras: Vec::new(),
            lora_info: Vec::new(),
            rng: SmallRng::seed_from_u64(cfg.seed),
            jitter,
            stats: EngineStats::new(cfg.profile.max_model_len),
            cfg,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Requests in the running set.
    pub fn running_len(&self) -> usize {
        self.running.len()
    }

    /// Requests waiting (including preempted ones).
    pub fn waiting_len(&self) -> usize {
        self.waiting.len()
    }

    /// Fraction of KV blocks in use.
    pub fn kv_usage(&self) -> f64 {
        self.kv.usage()
    }

    /// True while a step has been started and not finished.
    pub fn in_step(&self) -> bool {
        self.in_step
    }

    /// True if any request is waiting or running.
    pub fn has_work(&self) -> bool {
        !self.reqs.is_empty()
    }

    /// Cumulative statistics.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Adds a request to the waiting queue. It is considered at the next [`start_step`](Self::start_step).
    pub fn submit(&mut self, req: SimRequest, now: Instant) -> Result<(), SimError> {
        let p = &self.cfg.profile;
        if self.reqs.contains_key(&req.id) {
            return Err(SimError::DuplicateRequest(req.id.0));
        }
        if req.prompt_tokens == 0 {
            return Err(SimError::Rejected("empty prompt".into()));
        }
        if req.prompt_tokens >= p.max_model_len {
            return Err(SimError::Rejected(format!(
                "prompt of {} tokens does not fit max_model_len {}",
                req.prompt_tokens, p.max_model_len
            )));
        }
        if req.adapter.is_some() && self.cfg.max_loras == 0 {
            return Err(SimError::Rejected("LoRA is not enabled on this engine".into()));
        }
        let output = req.output_tokens.clamp(1, p.max_model_len - req.prompt_tokens);
        if cdiv(req.prompt_tokens + output, p.block_size) > p.num_gpu_blocks {
            return Err(SimError::Rejected("request needs more KV blocks than the engine has".into()));
        }
        let mut hashes = req.block_hashes;
        hashes.truncate((req.prompt_tokens / p.block_size) as usize);
        self.stats.requests_received += 1;
        self.stats.req_max_tokens.observe(f64::from(req.max_tokens));
        self.reqs.insert(
            req.id,
            Req {
                prompt: req.prompt_tokens,
                output,
                max_tokens: req.max_tokens,
                hashes,
                adapter: req.adapter,
                arrival: secs(now),
                computed: 0,
                generated: 0,
                blocks: Vec::new(),
                registered: 0,
                cached_tokens: None,
                preemptions: 0,
                first_scheduled: None,
                first_token: None,
                last_token: 0.0,
            },
        );
        self.waiting.push_back(req.id);
        Ok(())
    }

    /// Removes a request wherever it is, freeing its blocks. Returns false if it is unknown (e.g.
    /// already finished). Tokens of an in-flight step are not emitted for it.
    pub fn abort(&mut self, id: RequestId, _now: Instant) -> bool {
        let Some(mut r) = self.reqs.remove(&id) else {
            return false;
        };
        self.kv.release(&mut r.blocks);
        if let Some(i) = self.running.iter().position(|x| *x == id) {
            self.running.remove(i);
        } else if let Some(i) = self.waiting.iter().position(|x| *x == id) {
            self.waiting.remove(i);
        }
        self.stats.finished_abort += 1;
        true
    }

    /// Forms the next batch at `now` and returns its modelled duration, or `None` if there is nothing
    /// to run (or a step is already in progress).
    pub fn start_step(&mut self, now: Instant) -> Option<Duration> {
        if self.in_step || self.reqs.is_empty() {
            return None;
        }
        let now_s = secs(now);
        let bs = self.cfg.profile.block_size;
        let mut budget = self.cfg.profile.max_num_batched_tokens;
        let mut shape = StepShape::default();
        self.batch.clear();
        let mut preempted = false;

        // Running requests first, in admission order.
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let id = self.running[i];
            let Some(r) = self.reqs.get_mut(&id) else {
                self.running.remove(i);
                continue;
            };
            let n = (r.prompt + r.generated - r.computed).min(budget);
            let need = cdiv(r.computed + n, bs).saturating_sub(r.blocks.len() as u32);
            let mut scheduled = true;
            loop {
                let ok = match self.reqs.get_mut(&id) {
                    Some(r) => self.kv.allocate(need, &mut r.blocks),
                    None => false,
                };
                if ok {
                    break;
                }
                let Some(victim) = self.running.pop() else {
                    scheduled = false;
                    break;
                };
                self.preempt(victim);
                preempted = true;
                if victim == id {
                    scheduled = false;
                    break;
                }
            }
            if !scheduled {
                break;
            }
            let Some(r) = self.reqs.get(&id) else { break };
            add_to_shape(&mut shape, r.computed, n);
            self.batch.push((id, n));
            budget -= n;
            i += 1;
        }

        // Then waiting requests, FCFS, unless this step preempted (as vLLM V1).
        if !preempted {
            self.admit_waiting(now_s, &mut budget, &mut shape);
        }
        if self.batch.is_empty() {
            return None;
        }
        self.in_step = true;
        self.stats.steps += 1;
        self.stats.iteration_tokens.observe(f64::from(shape.tokens));

        let mut ms = step_ms(&self.cfg.profile.step, &shape);
        ms = self.apply_lora(ms);
        ms /= self.cfg.speed;
        if let Some(j) = &self.jitter {
            ms *= j.sample(&mut self.rng).clamp(0.5, 1.5);
        }
        Some(Duration::from_secs_f64(ms.max(0.0) / 1000.0))
    }

    fn admit_waiting(&mut self, now_s: f64, budget: &mut u32, shape: &mut StepShape) {
        let p = &self.cfg.profile;
        let bs = p.block_size;
        let max_seqs = p.max_num_seqs as usize;
        let max_loras = self.cfg.max_loras as usize;
        let mut adapters: Vec<Arc<str>> = Vec::new();
        if max_loras > 0 {
            for id in &self.running {
                if let Some(a) = self.reqs.get(id).and_then(|r| r.adapter.as_ref())
                    && !adapters.contains(a)
                {
                    adapters.push(a.clone());
                }
            }
        }
        let mut wi = 0;
        while wi < self.waiting.len() && *budget > 0 && self.running.len() < max_seqs {
            let id = self.waiting[wi];
            let Some(r) = self.reqs.get_mut(&id) else {
                self.waiting.remove(wi);
                continue;
            };
            if let Some(a) = &r.adapter
                && !adapters.contains(a)
                && adapters.len() >= max_loras
            {
                wi += 1;
                continue;
            }
            let total = r.prompt + r.generated;
            let max_hit = ((total - 1) / bs) as usize;
            let hits = self.kv.lookup(&r.hashes, max_hit);
            let hit_tokens = hits as u32 * bs;
            let n = (total - hit_tokens).min(*budget);
            let need = cdiv(hit_tokens + n, bs) - hits as u32;
            let reusable = self.kv.evictable_among(&r.hashes, hits);
            if self.kv.free() < need + reusable {
                break;
            }
            self.kv.acquire_cached(&r.hashes, hits, &mut r.blocks);
            let ok = self.kv.allocate(need, &mut r.blocks);
            debug_assert!(ok, "capacity was checked");
            r.computed = hit_tokens;
            r.registered = hits;
            self.stats.prefix_queries += u64::from(r.prompt);
            self.stats.prefix_hits += u64::from(hit_tokens);
            if r.cached_tokens.is_none() {
                r.cached_tokens = Some(hit_tokens.min(r.prompt));
            }
            if r.first_scheduled.is_none() {
                r.first_scheduled = Some(now_s);
                self.stats.queue.observe((now_s - r.arrival).max(0.0));
            }
            if let Some(a) = &r.adapter
                && !adapters.contains(a)
            {
                adapters.push(a.clone());
            }
            add_to_shape(shape, hit_tokens, n);
            self.waiting.remove(wi);
            self.running.push(id);
            self.batch.push((id, n));
            *budget -= n;
        }
    }

    /// Multiplies by the LoRA slowdown and adds slot-load costs for adapters in the batch.
    fn apply_lora(&mut self, ms: f64) -> f64 {
        if self.cfg.max_loras == 0 {
            return ms;
        }
        let mut in_batch: Vec<Arc<str>> = Vec::new();
        for (id, _) in &self.batch {
            if let Some(a) = self.reqs.get(id).and_then(|r| r.adapter.as_ref())
                && !in_batch.contains(a)
            {
                in_batch.push(a.clone());
            }
        }
        if in_batch.is_empty() {
            return ms;
        }
        let cost = self.cfg.profile.lora;
        let step_no = self.stats.steps;
        let mut load_ms = 0.0;
        for a in &in_batch {
            if let Some(slot) = self.gpu_loras.iter_mut().find(|(x, _)| x == a) {
                slot.1 = step_no;
                continue;
            }
            load_ms += cost.load_ms;
            if self.gpu_loras.len() >= self.cfg.max_loras as usize {
                // Evict the least recently used slot whose adapter is not in this batch.
                let victim = self
                    .gpu_loras
                    .iter()
                    .enumerate()
                    .filter(|(_, (x, _))| !in_batch.contains(x))
                    .min_by_key(|(_, (_, used))| *used)
                    .map(|(i, _)| i);
                if let Some(v) = victim {
                    self.gpu_loras.remove(v);
                }
            }
            self.gpu_loras.push((a.clone(), step_no));
        }
        ms * (1.0 + cost.base_slowdown + cost.per_adapter_slowdown * in_batch.len() as f64) + load_ms
    }

    fn preempt(&mut self, id: RequestId) {
        if let Some(r) = self.reqs.get_mut(&id) {
            self.kv.release(&mut r.blocks);
            r.computed = 0;
            r.registered = 0;
            r.preemptions += 1;
        }
        self.waiting.push_front(id);
        self.stats.preemptions += 1;
    }

    /// Completes the step started by [`start_step`](Self::start_step); `now` is its end time.
    pub fn finish_step(&mut self, now: Instant) -> StepOutcome {
        let mut out = StepOutcome::default();
        if !self.in_step {
            return out;
        }
        self.in_step = false;
        let now_s = secs(now);
        let bs = self.cfg.profile.block_size;
        let mut any_finished = false;
        for (id, n) in std::mem::take(&mut self.batch) {
            out.tokens += n;
            let Some(r) = self.reqs.get_mut(&id) else { continue };
            r.computed += n;
            let full = (r.computed.min(r.prompt) / bs) as usize;
            while r.registered < full.min(r.hashes.len()) && r.registered < r.blocks.len() {
                let h = r.hashes[r.registered];
                self.kv.register(&mut r.blocks[r.registered], h);
                r.registered += 1;
            }
            if r.computed != r.prompt + r.generated {
                continue; // a chunk of a longer prefill
            }
            r.generated += 1;
            self.stats.generation_tokens += 1;
            match r.first_token {
                None => {
                    r.first_token = Some(now_s);
                    let ttft = (now_s - r.arrival).max(0.0);
                    self.stats.ttft.observe(ttft);
                    self.stats.sglang_ttft.observe(ttft);
                    self.stats.prompt_tokens += u64::from(r.prompt);
                    let cached = r.cached_tokens.unwrap_or(0).min(r.prompt);
                    self.stats.prompt_tokens_cached += u64::from(cached);
                    self.stats.req_prompt_tokens.observe(f64::from(r.prompt));
                    self.stats.req_prefill_computed_tokens.observe(f64::from(r.prompt - cached));
                    if let Some(s) = r.first_scheduled {
                        self.stats.prefill.observe((now_s - s).max(0.0));
                    }
                }
                Some(_) => {
                    let itl = (now_s - r.last_token).max(0.0);
                    self.stats.itl.observe(itl);
                    self.stats.sglang_itl.observe(itl);
                }
            }
            r.last_token = now_s;
            let finished = (r.generated >= r.output).then(|| Finished {
                reason: if r.generated >= r.max_tokens { FinishReason::Length } else { FinishReason::Stop },
                prompt_tokens: r.prompt,
                completion_tokens: r.generated,
                cached_tokens: r.cached_tokens.unwrap_or(0),
            });
            out.events.push(TokenEvent { id, index: r.generated - 1, finished });
            if let Some(f) = finished {
                any_finished = true;
                self.retire(id, f, now_s);
            }
        }
        if any_finished {
            let reqs = &self.reqs;
            self.running.retain(|id| reqs.contains_key(id));
        }
        if self.cfg.max_loras > 0 {
            self.record_lora_info(now_s);
        }
        out
    }

    /// Starts a step at `now` and finishes it at `now + duration` in one call (for discrete-event
    /// drivers that do not interleave submissions within a step).
    pub fn step(&mut self, now: Instant) -> Option<(Duration, StepOutcome)> {
        let d = self.start_step(now)?;
        Some((d, self.finish_step(now.saturating_add(d))))
    }

    fn retire(&mut self, id: RequestId, f: Finished, now_s: f64) {
        let Some(mut r) = self.reqs.remove(&id) else { return };
        self.kv.release(&mut r.blocks);
        let s = &mut self.stats;
        let e2e = (now_s - r.arrival).max(0.0);
        s.e2e.observe(e2e);
        s.sglang_e2e.observe(e2e);
        if let Some(ft) = r.first_token {
            s.decode.observe((now_s - ft).max(0.0));
        }
        if let Some(fs) = r.first_scheduled {
            s.inference.observe((now_s - fs).max(0.0));
        }
        s.req_generation_tokens.observe(f64::from(f.completion_tokens));
        s.req_max_generation_tokens.observe(f64::from(r.max_tokens));
        s.req_params_n.observe(1.0);
        s.req_preemptions.observe(f64::from(r.preemptions));
        if let Some(ft) = r.first_token
            && f.completion_tokens > 1
        {
            s.req_tpot.observe((r.last_token - ft).max(0.0) / f64::from(f.completion_tokens - 1));
        }
        match f.reason {
            FinishReason::Stop => s.finished_stop += 1,
            FinishReason::Length => s.finished_length += 1,
            FinishReason::Abort => s.finished_abort += 1,
        }
    }

    fn record_lora_info(&mut self, now_s: f64) {
        let join = |ids: &mut dyn Iterator<Item = &RequestId>| {
            let mut names: Vec<&str> = ids.filter_map(|id| self.reqs.get(id)?.adapter.as_deref()).collect();
            names.sort_unstable();
            names.dedup();
            names.join(",")
        };
        let running = join(&mut self.running.iter());
        let waiting = join(&mut self.waiting.iter());
        if let Some(s) = self.lora_info.iter_mut().find(|s| s.running == running && s.waiting == waiting) {
            s.at_secs = now_s;
        } else {
            if self.lora_info.len() >= MAX_LORA_INFO {
                self.lora_info.remove(0);
            }
            self.lora_info.push(LoraInfoSample { running, waiting, at_secs: now_s });
        }
    }

    /// Gauges, counters and histograms now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let p = &self.cfg.profile;
        MetricsSnapshot {
            running: self.running.len() as u32,
            waiting: self.waiting.len() as u32,
            kv_usage: self.kv.usage(),
            used_blocks: self.kv.used(),
            num_gpu_blocks: p.num_gpu_blocks,
            block_size: p.block_size,
            max_loras: self.cfg.max_loras,
            stats: self.stats.clone(),
            lora_info: self.lora_info.clone(),
        }
    }
}

fn add_to_shape(shape: &mut StepShape, computed: u32, n: u32) {
    shape.tokens += n;
    shape.seqs += 1;
    if n == 1 && computed > 0 {
        shape.decode_context += u64::from(computed);
    } else {
        let (c, n) = (f64::from(computed), f64::from(n));
        shape.prefill_pairs += n * (c + n / 2.0);
    }
}
