//! Predicted latency per endpoint, sans-IO: one currency (seconds) for every signal.
//!
//! For each candidate the model predicts the request's **time to first token** and its **time per
//! output token** once it has joined the endpoint's batch:
//!
//! ```text
//! TTFT = t₀ + p·(uncached prompt tokens) + q·(prompt tokens still prefilling ahead of it)
//!            + w·(requests ahead in the engine's queue) + r·(running requests)
//! TPOT = d₀ + d₁·(batch size after joining) + d₂·(context tokens in flight)
//!            + d₃·(prompt tokens still prefilling)
//! e2e  = TTFT + (output tokens − 1)·TPOT
//! ```
//!
//! "Prefilling" and "in flight" are the picker's own accounting (requests it sent there whose
//! first token, or end, it has not seen), which is always fresh; queue and batch come from the
//! last scrape, corrected by the requests sent since. Coefficients are fitted to relative error
//! (each sample weighted by 1/observed²), since the same model must predict 10 ms and 10 s.
//!
//! The prefix cache enters as tokens the endpoint does not have to prefill, the queue as seconds of
//! waiting, the batch as seconds per token: a cache hit and a queue are traded in the same unit.
//! The coefficients are learned online, per endpoint, by recursive least squares with forgetting
//! from igw's own request outcomes (each request's TTFT and TPOT against the features its decision
//! saw), so replicas of different speed are told apart by measurement, not by labels. At cold start
//! each endpoint predicts with the pool's model (learned from every endpoint), and the pool's model
//! starts from a prior ([`LatencyPrior`], an engine profile's step times); an endpoint's own model
//! takes over as its samples accumulate ([`LatencyConfig::trust_samples`]).
//!
//! Missing data degrades, it does not break: an endpoint without a scrape counts as idle with an
//! empty cache (the staleness filter runs before), a response without usage trains nothing, a
//! non-streamed response trains only TPOT (its TTFT is not observable). Time is passed in; nothing
//! here reads a clock.

use std::collections::HashMap;

use igw_core::{EndpointId, EndpointMetrics};
use parking_lot::Mutex;

/// Number of TTFT features.
const NT: usize = 9;
/// Number of TPOT features.
const ND: usize = 4;

/// Cold-start coefficients, in seconds: what an engine of the expected kind does. The defaults are
/// a 7B model on one H100-class GPU under vLLM (igw-sim's `llama2-7b-h100` profile); the pool's model
/// moves away from them within tens of requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencyPrior {
    /// Time to first token of a tiny prompt on an idle engine (request overhead plus one step).
    pub ttft_base_s: f64,
    /// Prefill time per uncached prompt token.
    pub prefill_per_token_s: f64,
    /// Extra TTFT per request ahead in the engine's queue.
    pub wait_per_request_s: f64,
    /// Decode step of a batch of one.
    pub step_s: f64,
    /// Extra step time per sequence in the batch.
    pub step_per_seq_s: f64,
    /// Extra step time per KV-cache token in use (attention reads).
    pub step_per_kv_token_s: f64,
    /// Extra TTFT per token of work queued ahead past saturation (1 / the engine's throughput in
    /// prompt and output tokens).
    pub queued_token_s: f64,
    /// Extra TTFT when the request's LoRA adapter must be loaded into a free slot.
    pub adapter_load_s: f64,
    /// Extra TTFT when every LoRA slot holds another adapter (wait for one to free, then load).
    pub adapter_blocked_s: f64,
}

impl Default for LatencyPrior {
    fn default() -> Self {
        LatencyPrior {
            ttft_base_s: 0.008,
            prefill_per_token_s: 2.5e-5,
            wait_per_request_s: 0.05,
            step_s: 0.0062,
            step_per_seq_s: 2.0e-5,
            step_per_kv_token_s: 2.0e-7,
            queued_token_s: 2.0e-4,
            adapter_load_s: 0.02,
            adapter_blocked_s: 1.0,
        }
    }
}

/// How the model learns and how the picker explores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencyConfig {
    /// Cold-start coefficients.
    pub prior: LatencyPrior,
    /// Forgetting factor of an endpoint's own model (0 < λ ≤ 1): the weight of a sample halves
    /// after `ln 2 / (1 − λ)` newer ones (λ 0.99: about 70).
    pub forgetting: f64,
    /// Samples after which an endpoint's own model is trusted fully (before, its prediction is
    /// blended with the pool's in proportion to its samples).
    pub trust_samples: u32,
    /// Probability that a decision picks uniformly among the endpoints predicted within 1.5× of
    /// the best, so that a model whose endpoint gets no traffic is refreshed.
    pub exploration: f64,
}

impl Default for LatencyConfig {
    fn default() -> Self {
        LatencyConfig { prior: LatencyPrior::default(), forgetting: 0.99, trust_samples: 12, exploration: 0.01 }
    }
}

/// What a decision saw of one candidate: the model's inputs.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Features {
    /// Prompt tokens the endpoint is expected to prefill (the prompt minus its cached prefix).
    pub uncached_tokens: f64,
    /// Requests ahead of this one in the engine's queue (scraped waiting, plus requests sent since
    /// the scrape while a queue exists).
    pub ahead: f64,
    /// Running requests (scraped, plus requests sent since the scrape while there is no queue).
    pub running: f64,
    /// Uncached prompt tokens of the requests sent there that have not produced a first token.
    pub prefilling: f64,
    /// Prompt and output tokens of the requests sent there that have not ended (the attention
    /// context a decode step reads, at most).
    pub context: f64,
    /// The part of `context` that waits rather than runs (`context` × the share of the
    /// endpoint's requests that are queued): work a new request waits behind past saturation.
    pub queued_work: f64,
    /// 1 when the request's LoRA adapter is not loaded there but a slot is free (a load).
    pub adapter_load: f64,
    /// 1 when the adapter is not loaded and every slot holds another one (the request waits
    /// until a slot frees, then loads).
    pub adapter_blocked: f64,
}

impl Features {
    /// The features of a candidate: its scraped metrics, the requests sent to it since the scrape
    /// (`unseen`), and the prompt tokens it would have to prefill.
    /// `prefilling` and `context` are the picker's own accounting ([`LatencyModel::load`]);
    /// `adapter` the LoRA adapter the request targets when it targets one some endpoint serves.
    pub fn of(
        m: &EndpointMetrics,
        unseen: u32,
        uncached_tokens: f64,
        prefilling: f64,
        context: f64,
        adapter: Option<&str>,
    ) -> Self {
        let (adapter_load, adapter_blocked) = match adapter {
            Some(a) if !(m.has_active_adapter(a) || m.serves(a) == Some(true)) => {
                let room =
                    m.max_adapters.is_none_or(|max| m.active_adapters.len() + m.waiting_adapters.len() < max as usize);
                if room { (1.0, 0.0) } else { (0.0, 1.0) }
            }
            _ => (0.0, 0.0),
        };
        let unseen = f64::from(unseen);
        let queueing = m.waiting > 0;
        let waiting = f64::from(m.waiting) + unseen;
        let total = waiting + f64::from(m.running);
        let queued_share = if queueing && total > 0.0 { waiting / total } else { 0.0 };
        Features {
            adapter_load,
            adapter_blocked,
            queued_work: queued_share * context.max(0.0),
            uncached_tokens: uncached_tokens.max(0.0),
            ahead: f64::from(m.waiting) + if queueing { unseen } else { 0.0 },
            running: f64::from(m.running) + if queueing { 0.0 } else { unseen },
            prefilling: prefilling.max(0.0),
            context: context.max(0.0),
        }
    }

    fn ttft_x(&self) -> [f64; NT] {
        [
            1.0,
            self.uncached_tokens * 1e-3,
            self.prefilling * 1e-3,
            self.ahead,
            self.running * 1e-2,
            self.context * 1e-5,
            self.queued_work * 1e-4,
            self.adapter_load,
            self.adapter_blocked,
        ]
    }

    fn tpot_x(&self) -> [f64; ND] {
        [1.0, (self.running + 1.0) * 1e-2, self.context * 1e-5, self.prefilling * 1e-4]
    }
}

/// A prediction for one candidate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    /// Predicted time to first token, seconds.
    pub ttft_s: f64,
    /// Predicted time per output token, seconds.
    pub tpot_s: f64,
    /// Seconds of prefill per uncached prompt token on the endpoint (its speed included): what
    /// each request already running there waits per token of this one's prefill
    /// ([`Prediction::imposed_s`]).
    pub prefill_per_token_s: f64,
    /// The endpoint's speed factor the prediction used: its time per unit of work relative to
    /// the pool's shape (above 1 is slower). What an output token costs there is its price per
    /// hour times this.
    pub slowness: f64,
    /// What 95% of the endpoint's recent TTFTs stayed within, as a multiple of their
    /// predictions (≥ 1; 1 before any sample).
    pub ttft_overrun: f64,
    /// The same for TPOT.
    pub tpot_overrun: f64,
    /// The inputs it was made from (kept to learn from the outcome).
    pub features: Features,
}

impl Prediction {
    /// Predicted end-to-end latency for `output_tokens` tokens.
    pub fn e2e_s(&self, output_tokens: f64) -> f64 {
        self.ttft_s + (output_tokens - 1.0).max(0.0) * self.tpot_s
    }

    /// The delay the request's prefill imposes on the requests already running on the endpoint:
    /// each of them waits through its uncached prompt tokens (prefill chunks share their
    /// steps). This is the part of a pick's cost that falls on others; a pick on its own latency
    /// alone prefills a long prompt wherever the batch is slightly smaller, and the pool loses
    /// the cache locality it needs when its prompts do not fit one replica's cache
    /// (`shared-prefix`: hit rate 68% against 90-97%). The decode side (the longer steps of a
    /// bigger batch) is left out: counted the same way it overweights the batch size, and
    /// balancing by it lost 5-16% p90 e2e on `hot-prefix-2` and `blog` (BENCHMARKS.md).
    pub fn imposed_s(&self) -> f64 {
        self.features.running * self.features.uncached_tokens * self.prefill_per_token_s
    }
}

/// What a finished request showed: the observations the model learns from.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Observed {
    /// Time to first token (streamed responses only).
    pub ttft_s: Option<f64>,
    /// From the attempt to the end of the response.
    pub e2e_s: f64,
    /// Completion tokens (from the usage).
    pub completion_tokens: u64,
    /// Prompt tokens served from the engine's cache, when the usage reports them.
    pub cached_tokens: Option<u64>,
    /// Prompt tokens (from the usage).
    pub prompt_tokens: u64,
}

/// Recursive least squares with forgetting, `N` features.
#[derive(Debug, Clone)]
struct Rls<const N: usize> {
    theta: [f64; N],
    p: [[f64; N]; N],
    cap: [f64; N],
    /// Largest value of each coefficient (a hundred times its prior standard deviation).
    hi: [f64; N],
    samples: u64,
}

impl<const N: usize> Rls<N> {
    #[allow(clippy::needless_range_loop, reason = "a diagonal is clearer with an index")]
    fn new(theta: [f64; N], variance: [f64; N]) -> Self {
        let mut p = [[0.0; N]; N];
        for i in 0..N {
            p[i][i] = variance[i];
        }
        let hi = variance.map(|v| 100.0 * v.sqrt());
        Rls { theta, p, cap: variance, hi, samples: 0 }
    }

    fn predict(&self, x: &[f64; N]) -> f64 {
        self.theta.iter().zip(x).map(|(t, x)| t * x).sum()
    }

    /// One sample.
    #[allow(clippy::needless_range_loop, reason = "matrix algebra reads clearer with indices")]
    fn update(&mut self, x: &[f64; N], y: f64, lambda: f64) {
        if !(y.is_finite() && y > 0.0) || x.iter().any(|v| !v.is_finite()) {
            return;
        }
        let mut px = [0.0; N];
        for i in 0..N {
            px[i] = (0..N).map(|j| self.p[i][j] * x[j]).sum();
        }
        let denom = lambda + x.iter().zip(&px).map(|(a, b)| a * b).sum::<f64>();
        if !(denom.is_finite() && denom > 0.0) {
            return;
        }
        let err = y - self.predict(x);
        for i in 0..N {
            // Projected onto θ ≥ 0: every coefficient is a cost (more load never makes an engine
            // faster), and a negative one would extrapolate to absurdly good predictions for
            // the most loaded endpoint and pile requests onto it.
            self.theta[i] = (self.theta[i] + px[i] / denom * err).clamp(0.0, self.hi[i]);
        }
        for i in 0..N {
            for j in 0..N {
                self.p[i][j] = (self.p[i][j] - px[i] * px[j] / denom) / lambda;
            }
        }
        // Covariance bound: a direction the data does not excite would otherwise grow without
        // limit under forgetting (wind-up) and make the next sample swing the coefficients.
        for i in 0..N {
            if self.p[i][i] > self.cap[i] {
                let f = (self.cap[i] / self.p[i][i]).sqrt();
                for j in 0..N {
                    self.p[i][j] *= f;
                    self.p[j][i] *= f;
                }
            }
        }
        self.samples += 1;
    }
}

/// The pool's learned shape: TTFT and TPOT of an engine of speed 1.
#[derive(Debug, Clone)]
struct Model {
    ttft: Rls<NT>,
    tpot: Rls<ND>,
    /// Exponentially weighted mean |relative error| of TTFT and TPOT predictions.
    ttft_err: Option<f64>,
    tpot_err: Option<f64>,
}

impl Model {
    fn from_prior(p: &LatencyPrior) -> Self {
        let pf = p.prefill_per_token_s * 1e3;
        // A request joins at the next step boundary and its prefill shares a step with the
        // decodes: TTFT grows with the step time, i.e. with the batch and its context.
        let t = [
            p.ttft_base_s,
            pf,
            pf,
            p.wait_per_request_s,
            1.5 * p.step_per_seq_s * 1e2,
            1.5 * p.step_per_kv_token_s * 1e5,
            p.queued_token_s * 1e4,
            p.adapter_load_s,
            p.adapter_blocked_s,
        ];
        let d = [p.step_s, p.step_per_seq_s * 1e2, p.step_per_kv_token_s * 1e5, p.step_s * 0.5];
        // The shape is learned slowly, from the whole pool's samples (thousands, normalized by
        // each endpoint's speed): the covariance (relative to unit observation noise) starts
        // at the square of each coefficient or a floor, which hundreds of samples outweigh.
        // Fast per-endpoint learning of the whole shape was tried and is unstable: the samples
        // are what the picker chose, so a coefficient fitted on few of them extrapolates badly
        // and the endpoint it flatters is flooded before the outcomes say so.
        let var = |v: f64, floor: f64, _typical: f64| (v.abs().max(floor)).powi(2) * 10.0;
        let tv = [
            var(t[0], 0.01, 0.05),
            var(t[1], 0.01, 0.05),
            var(t[2], 0.01, 0.05),
            var(t[3], 0.05, 0.05),
            var(t[4], 0.01, 0.05),
            var(t[5], 0.01, 0.05),
            var(t[6], 0.5, 0.05),
            var(t[7], 0.05, 0.05),
            var(t[8], 0.5, 0.05),
        ];
        let dv = [var(d[0], 0.005, 0.01), var(d[1], 0.005, 0.01), var(d[2], 0.005, 0.01), var(d[3], 0.005, 0.01)];
        Model { ttft: Rls::new(t, tv), tpot: Rls::new(d, dv), ttft_err: None, tpot_err: None }
    }
}

/// An endpoint's speed relative to the pool's shape: one log factor, learned from decode as an
/// exponentially weighted mean of `ln(observed TPOT / pool prediction)`, applied to TTFT and TPOT.
#[derive(Debug, Clone, Copy, Default)]
struct Speed {
    ln_speed: f64,
    ttft_samples: u64,
    tpot_samples: u64,
    ttft_err: Option<f64>,
    tpot_err: Option<f64>,
    /// Running 95th percentiles of ln(observed / predicted) TTFT and TPOT: how far outcomes
    /// overrun predictions here (a packed endpoint's batch keeps growing after a request joins).
    ttft_overrun: Overrun,
    tpot_overrun: Overrun,
}

/// A running quantile of ln(observed / predicted), by stochastic approximation: every sample
/// above it moves it up by `OVERRUN_STEP × q`, every other down by `OVERRUN_STEP × (1 − q)`, so
/// it settles where a fraction `1 − q` of the samples lie above it, tracking drift without
/// keeping samples.
#[derive(Debug, Clone, Copy, Default)]
struct Overrun {
    ln: f64,
}

/// The quantile [`Overrun`] tracks: `cheapest` placement counts an endpoint as meeting an SLO
/// when the prediction, overrun by what 95% of its outcomes stayed within, still does.
const OVERRUN_QUANTILE: f64 = 0.95;
/// Step of [`Overrun`] in ln units (2%: it follows drift within about fifty samples).
const OVERRUN_STEP: f64 = 0.02;

impl Overrun {
    fn learn(&mut self, predicted: f64, seen: f64) {
        if !(predicted > 0.0 && seen > 0.0) {
            return;
        }
        let r = (seen / predicted).ln();
        self.ln += if r > self.ln { OVERRUN_STEP * OVERRUN_QUANTILE } else { -OVERRUN_STEP * (1.0 - OVERRUN_QUANTILE) };
    }

    /// The factor a prediction is multiplied by to cover 95% of outcomes; never below 1.
    fn factor(self) -> f64 {
        self.ln.max(0.0).exp()
    }
}

/// Weight of a new sample in an endpoint's speed factors.
const SPEED_ALPHA: f64 = 0.1;
/// One sample moves a speed factor by at most this factor (a stall or a cache surprise is not
/// a new speed).
const SPEED_CLIP: f64 = 3.0;

impl Speed {
    fn learn(ln: &mut f64, n: &mut u64, seen: f64, base: f64) {
        if !(seen > 0.0 && base > 0.0) {
            return;
        }
        let step = ((seen / base).ln() - *ln).clamp(-SPEED_CLIP.ln(), SPEED_CLIP.ln());
        // The first samples weigh more (a running mean) until the moving average takes over.
        let a = (1.0 / (*n as f64 + 1.0)).max(SPEED_ALPHA);
        *ln += a * step;
        *n += 1;
    }
}

/// One endpoint as `/debug/endpoints` shows it: its learned speed and recent errors.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct EndpointView {
    /// TTFT samples learned from.
    pub ttft_samples: u64,
    /// TPOT samples learned from.
    pub tpot_samples: u64,
    /// Its TTFT relative to the pool's model (2.0: twice as slow).
    pub ttft_factor: f64,
    /// Its TPOT relative to the pool's model.
    pub tpot_factor: f64,
    /// Mean |relative error| of its recent TTFT predictions.
    pub ttft_error: Option<f64>,
    /// Mean |relative error| of its recent TPOT predictions.
    pub tpot_error: Option<f64>,
    /// What 95% of its recent TTFTs stayed within, as a multiple of the prediction (≥ 1).
    pub ttft_overrun: f64,
    /// The same for TPOT.
    pub tpot_overrun: f64,
}

/// A learned model's coefficients, for `/debug/endpoints`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ModelView {
    /// Samples it learned TTFT from.
    pub ttft_samples: u64,
    /// Samples it learned TPOT from.
    pub tpot_samples: u64,
    /// TTFT intercept, seconds.
    pub ttft_base_s: f64,
    /// Prefill seconds per uncached prompt token.
    pub prefill_per_token_s: f64,
    /// TTFT seconds per prompt token still prefilling ahead of the request.
    pub prefill_ahead_per_token_s: f64,
    /// TTFT seconds per request ahead in the queue.
    pub wait_per_request_s: f64,
    /// TTFT seconds per running request.
    pub ttft_per_running_s: f64,
    /// TTFT seconds per context token in flight.
    pub ttft_per_context_token_s: f64,
    /// TTFT seconds per token of work queued ahead.
    pub ttft_per_queued_token_s: f64,
    /// TTFT seconds of loading a LoRA adapter into a free slot.
    pub adapter_load_s: f64,
    /// TTFT seconds of waiting for a LoRA slot and loading.
    pub adapter_blocked_s: f64,
    /// Decode step of a batch of one, seconds.
    pub step_s: f64,
    /// Decode step seconds per sequence in the batch.
    pub step_per_seq_s: f64,
    /// Decode step seconds per context token in flight.
    pub step_per_context_token_s: f64,
    /// Decode step seconds per prompt token still prefilling.
    pub step_per_prefill_token_s: f64,
    /// Mean |relative error| of its recent TTFT predictions.
    pub ttft_error: Option<f64>,
    /// Mean |relative error| of its recent TPOT predictions.
    pub tpot_error: Option<f64>,
}

impl From<&Model> for ModelView {
    fn from(m: &Model) -> Self {
        let (t, d) = (&m.ttft.theta, &m.tpot.theta);
        ModelView {
            ttft_samples: m.ttft.samples,
            tpot_samples: m.tpot.samples,
            ttft_base_s: t[0],
            prefill_per_token_s: t[1] * 1e-3,
            prefill_ahead_per_token_s: t[2] * 1e-3,
            wait_per_request_s: t[3],
            ttft_per_running_s: t[4] * 1e-2,
            ttft_per_context_token_s: t[5] * 1e-5,
            ttft_per_queued_token_s: t[6] * 1e-4,
            adapter_load_s: t[7],
            adapter_blocked_s: t[8],
            step_s: d[0],
            step_per_seq_s: d[1] * 1e-2,
            step_per_context_token_s: d[2] * 1e-5,
            step_per_prefill_token_s: d[3] * 1e-4,
            ttft_error: m.ttft_err,
            tpot_error: m.tpot_err,
        }
    }
}

/// The picker's own load on one endpoint.
#[derive(Debug, Clone, Copy, Default)]
struct Load {
    prefilling: f64,
    context: f64,
}

#[derive(Debug)]
struct State {
    pool: Model,
    endpoints: HashMap<EndpointId, Speed>,
    load: HashMap<EndpointId, Load>,
    /// Mean completion tokens of finished requests (for requests without `max_tokens`).
    mean_output: Option<f64>,
}

/// The latency model of one pool: the pool's shape and each endpoint's speed. Shared by all decisions
/// (one short lock to predict a decision's candidates, one to learn from an outcome).
#[derive(Debug)]
pub struct LatencyModel {
    config: LatencyConfig,
    state: Mutex<State>,
}

/// Weight of a new error sample in the mean relative errors.
const ERR_ALPHA: f64 = 0.05;
/// Shortest predictions, seconds (a model that learned a negative intercept still predicts > 0).
const MIN_S: f64 = 1e-4;

impl LatencyModel {
    /// A model with `config`.
    pub fn new(config: LatencyConfig) -> Self {
        let pool = Model::from_prior(&config.prior);
        LatencyModel {
            config,
            state: Mutex::new(State { pool, endpoints: HashMap::new(), load: HashMap::new(), mean_output: None }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &LatencyConfig {
        &self.config
    }

    /// Mean completion tokens seen so far (`None` before the first finished request).
    pub fn mean_output_tokens(&self) -> Option<f64> {
        self.state.lock().mean_output
    }

    /// The picker's own load on each of `ids`: (uncached prompt tokens still prefilling, context
    /// tokens in flight).
    pub fn load(&self, ids: &[EndpointId]) -> Vec<(f64, f64)> {
        let st = self.state.lock();
        ids.iter().map(|id| st.load.get(id).map_or((0.0, 0.0), |l| (l.prefilling, l.context))).collect()
    }

    /// A request was sent to `endpoint`: `uncached` prompt tokens to prefill, `context` tokens
    /// (prompt and output) it will hold.
    pub fn sent(&self, endpoint: EndpointId, uncached: f64, context: f64) {
        let mut st = self.state.lock();
        let l = st.load.entry(endpoint).or_default();
        l.prefilling += uncached.max(0.0);
        l.context += context.max(0.0);
    }

    /// Its first token arrived (or it ended without one): its prompt no longer prefills.
    pub fn prefilled(&self, endpoint: EndpointId, uncached: f64) {
        if let Some(l) = self.state.lock().load.get_mut(&endpoint) {
            l.prefilling = (l.prefilling - uncached.max(0.0)).max(0.0);
        }
    }

    /// It ended (or its attempt failed).
    pub fn ended(&self, endpoint: EndpointId, context: f64) {
        if let Some(l) = self.state.lock().load.get_mut(&endpoint) {
            l.context = (l.context - context.max(0.0)).max(0.0);
        }
    }

    /// Predicts each of `features` on the endpoint with the same index in `ids`: the pool's
    /// shape times the endpoint's speed factors (an endpoint with few samples leans on the mean
    /// factors of the others).
    pub fn predict_all(&self, ids: &[EndpointId], features: &[Features], out: &mut Vec<Prediction>) {
        let st = self.state.lock();
        let trust = f64::from(self.config.trust_samples.max(1));
        let mean = mean_speed(&st.endpoints);
        out.clear();
        for (id, f) in ids.iter().zip(features) {
            let base = (st.pool.ttft.predict(&f.ttft_x()), st.pool.tpot.predict(&f.tpot_x()));
            // One speed factor, learned from decode: a slower accelerator prefills and decodes
            // slower alike, while a long TTFT is mostly queueing, which is load (the pool's
            // shape), not speed. Learning TTFT factors per endpoint was tried: a factor learned
            // while an endpoint was queued outlives the queue (its requests stop coming, so no
            // sample corrects it) and the endpoint idles under overload.
            let (ln, overrun) = match st.endpoints.get(id) {
                None => (mean, (1.0, 1.0)),
                Some(sp) => {
                    let w = (sp.tpot_samples as f64 / trust).min(1.0);
                    (w * sp.ln_speed + (1.0 - w) * mean, (sp.ttft_overrun.factor(), sp.tpot_overrun.factor()))
                }
            };
            let k = ln.exp();
            out.push(Prediction {
                ttft_s: (base.0 * k).max(MIN_S),
                tpot_s: (base.1 * k).max(MIN_S),
                prefill_per_token_s: st.pool.ttft.theta[1] * 1e-3 * k,
                slowness: k,
                ttft_overrun: overrun.0,
                tpot_overrun: overrun.1,
                features: *f,
            });
        }
    }

    /// Learns from a request that `endpoint` served: `predicted` is what its decision predicted
    /// there (its features are the inputs), `seen` what happened.
    pub fn observe(&self, endpoint: EndpointId, predicted: &Prediction, seen: &Observed) {
        let lambda = self.config.forgetting.clamp(0.5, 1.0);
        let mut f = predicted.features;
        // The cache hit the engine reports replaces the index's guess.
        if let Some(cached) = seen.cached_tokens.filter(|_| seen.prompt_tokens > 0) {
            f.uncached_tokens = seen.prompt_tokens.saturating_sub(cached) as f64;
        }
        let ttft = seen.ttft_s.filter(|t| t.is_finite() && *t > 0.0);
        let decode_tokens = seen.completion_tokens.saturating_sub(1);
        let tpot = if decode_tokens == 0 {
            None
        } else {
            // Without a first-token time (a response that was not streamed), the decode time is
            // what is left after the predicted TTFT.
            let first = ttft.unwrap_or(predicted.ttft_s);
            let t = (seen.e2e_s - first) / decode_tokens as f64;
            (t.is_finite() && t > 0.0).then_some(t)
        };
        let mut st = self.state.lock();
        let st = &mut *st;
        if seen.completion_tokens > 0 {
            let c = seen.completion_tokens as f64;
            st.mean_output = Some(st.mean_output.map_or(c, |m| 0.99 * m + 0.01 * c));
        }
        let (xt, xd) = (f.ttft_x(), f.tpot_x());
        let base = (st.pool.ttft.predict(&xt).max(MIN_S), st.pool.tpot.predict(&xd).max(MIN_S));
        let sp = st.endpoints.entry(endpoint).or_default();
        if let Some(y) = ttft {
            track(&mut sp.ttft_err, predicted.ttft_s, y);
            sp.ttft_overrun.learn(predicted.ttft_s, y);
            sp.ttft_samples += 1;
            // The pool learns the shape of a speed-1 engine.
            let k = sp.ln_speed.exp();
            st.pool.ttft.update(&xt, y / k, lambda.max(0.995));
        }
        let sp = st.endpoints.entry(endpoint).or_default();
        if let Some(y) = tpot {
            track(&mut sp.tpot_err, predicted.tpot_s, y);
            sp.tpot_overrun.learn(predicted.tpot_s, y);
            Speed::learn(&mut sp.ln_speed, &mut sp.tpot_samples, y, base.1);
            let k = sp.ln_speed.exp();
            st.pool.tpot.update(&xd, y / k, lambda.max(0.995));
        }
    }

    /// What the model learned of `endpoint` (`None` before its first sample).
    pub fn view(&self, endpoint: EndpointId) -> Option<EndpointView> {
        self.state.lock().endpoints.get(&endpoint).map(|sp| EndpointView {
            ttft_samples: sp.ttft_samples,
            tpot_samples: sp.tpot_samples,
            ttft_factor: sp.ln_speed.exp(),
            tpot_factor: sp.ln_speed.exp(),
            ttft_error: sp.ttft_err,
            tpot_error: sp.tpot_err,
            ttft_overrun: sp.ttft_overrun.factor(),
            tpot_overrun: sp.tpot_overrun.factor(),
        })
    }

    /// The pool's model (the shape of a speed-1 endpoint).
    pub fn pool_view(&self) -> ModelView {
        ModelView::from(&self.state.lock().pool)
    }

    /// Forgets endpoints for which `keep` is false.
    pub fn retain(&self, keep: impl Fn(EndpointId) -> bool) {
        let mut st = self.state.lock();
        st.endpoints.retain(|id, _| keep(*id));
        st.load.retain(|id, _| keep(*id));
    }
}

/// Mean log speed factor over the endpoints that have samples (0 = the pool's shape).
fn mean_speed(endpoints: &HashMap<EndpointId, Speed>) -> f64 {
    let (sum, n) =
        endpoints.values().filter(|s| s.tpot_samples > 0).fold((0.0, 0usize), |(sum, n), s| (sum + s.ln_speed, n + 1));
    if n == 0 { 0.0 } else { sum / n as f64 }
}

fn track(err: &mut Option<f64>, predicted: f64, seen: f64) {
    if seen > 0.0 {
        let e = ((predicted - seen) / seen).abs();
        *err = Some(err.map_or(e, |m| (1.0 - ERR_ALPHA) * m + ERR_ALPHA * e));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn feats(u: f64, ahead: f64, running: f64) -> Features {
        Features {
            uncached_tokens: u,
            ahead,
            running,
            prefilling: 0.0,
            context: 10_000.0,
            queued_work: 0.0,
            adapter_load: 0.0,
            adapter_blocked: 0.0,
        }
    }

    fn predict(m: &LatencyModel, id: u32, f: Features) -> Prediction {
        let mut out = Vec::new();
        m.predict_all(&[EndpointId(id)], &[f], &mut out);
        out[0]
    }

    #[test]
    fn prior_predicts_prefill_and_decode_in_seconds() {
        let m = LatencyModel::new(LatencyConfig::default());
        let short = predict(&m, 0, feats(100.0, 0.0, 0.0));
        let long = predict(&m, 0, feats(4_000.0, 0.0, 0.0));
        assert!(long.ttft_s > short.ttft_s + 0.09, "4k uncached tokens cost ≈ 0.1 s: {long:?}");
        let queued = predict(&m, 0, feats(100.0, 4.0, 0.0));
        assert!(queued.ttft_s > short.ttft_s + 0.15, "{queued:?}");
        assert!((0.005..0.01).contains(&short.tpot_s), "{short:?}");
        assert_eq!(short.e2e_s(1.0), short.ttft_s);
    }

    #[test]
    fn learns_a_slower_endpoint_from_outcomes() {
        let m = LatencyModel::new(LatencyConfig::default());
        // Endpoint 1 is twice as slow as the prior at everything.
        for i in 0..200 {
            let f = feats(f64::from(i % 7) * 500.0, f64::from(i % 3), f64::from(i % 40));
            let p = predict(&m, 1, f);
            let ttft = 2.0 * (0.008 + 2.5e-5 * f.uncached_tokens + 0.05 * f.ahead);
            let tpot = 2.0 * (0.0062 + 2.0e-5 * (f.running + 1.0) + 2.0e-7 * f.context);
            let seen = Observed {
                ttft_s: Some(ttft),
                e2e_s: ttft + 99.0 * tpot,
                completion_tokens: 100,
                cached_tokens: None,
                prompt_tokens: 0,
            };
            m.observe(EndpointId(1), &p, &seen);
        }
        let f = feats(2_000.0, 1.0, 10.0);
        let p = predict(&m, 1, f);
        let want_ttft = 2.0 * (0.008 + 2.5e-5 * 2_000.0 + 0.05);
        assert!((p.ttft_s / want_ttft - 1.0).abs() < 0.05, "{p:?} vs {want_ttft}");
        let want_tpot = 2.0 * (0.0062 + 2.0e-5 * 11.0 + 2.0e-7 * 10_000.0);
        assert!((p.tpot_s / want_tpot - 1.0).abs() < 0.05, "{p:?} vs {want_tpot}");
        let v = m.view(EndpointId(1)).unwrap();
        assert_eq!(v.ttft_samples, 200);
        assert!(v.ttft_error.unwrap() < 0.2 && v.tpot_error.unwrap() < 0.2, "{v:?}");
        // A never-seen endpoint predicts with the pool's model, which learned from endpoint 1.
        let fresh = predict(&m, 9, f);
        assert!(fresh.ttft_s > 1.5 * (0.008 + 2.5e-5 * 2_000.0 + 0.05), "{fresh:?}");
        assert_eq!(m.mean_output_tokens(), Some(100.0));
    }

    #[test]
    fn non_streamed_responses_train_decode_only_and_bad_input_is_ignored() {
        let m = LatencyModel::new(LatencyConfig::default());
        let p = predict(&m, 0, feats(100.0, 0.0, 0.0));
        let seen = Observed { ttft_s: None, e2e_s: 1.0, completion_tokens: 51, cached_tokens: None, prompt_tokens: 0 };
        m.observe(EndpointId(0), &p, &seen);
        let v = m.view(EndpointId(0)).unwrap();
        assert_eq!((v.ttft_samples, v.tpot_samples), (0, 1));
        let nan = Observed { ttft_s: Some(f64::NAN), e2e_s: f64::NAN, completion_tokens: 5, ..Default::default() };
        m.observe(EndpointId(0), &p, &nan);
        let v = m.view(EndpointId(0)).unwrap();
        assert_eq!((v.ttft_samples, v.tpot_samples), (0, 1));
        assert!(predict(&m, 0, feats(100.0, 0.0, 0.0)).ttft_s.is_finite());
    }

    #[test]
    fn features_count_requests_sent_since_the_scrape() {
        let idle = EndpointMetrics { running: 3, ..Default::default() };
        let f = Features::of(&idle, 2, 100.0, 50.0, 900.0, None);
        assert_eq!((f.ahead, f.running, f.prefilling, f.context), (0.0, 5.0, 50.0, 900.0), "no queue: they join");
        let busy = EndpointMetrics { running: 3, waiting: 4, ..Default::default() };
        let f = Features::of(&busy, 2, -5.0, -1.0, 0.0, None);
        assert_eq!((f.ahead, f.running, f.uncached_tokens, f.prefilling), (6.0, 3.0, 0.0, 0.0), "a queue: they wait");
        let mut lora = EndpointMetrics { max_adapters: Some(1), ..Default::default() };
        let f = |m: &EndpointMetrics| {
            let f = Features::of(m, 0, 0.0, 0.0, 0.0, Some("a"));
            (f.adapter_load, f.adapter_blocked)
        };
        assert_eq!(f(&lora), (1.0, 0.0), "a free slot: one load");
        lora.active_adapters.insert("b".into());
        assert_eq!(f(&lora), (0.0, 1.0), "every slot taken: wait, then load");
        lora.active_adapters.insert("a".into());
        assert_eq!(f(&lora), (0.0, 0.0), "loaded");
    }

    #[test]
    fn own_load_is_charged_and_released() {
        let m = LatencyModel::new(LatencyConfig::default());
        let (a, b) = (EndpointId(0), EndpointId(1));
        m.sent(a, 1_000.0, 1_200.0);
        m.sent(a, 500.0, 700.0);
        assert_eq!(m.load(&[a, b]), vec![(1_500.0, 1_900.0), (0.0, 0.0)]);
        m.prefilled(a, 1_000.0);
        m.ended(a, 1_200.0);
        assert_eq!(m.load(&[a]), vec![(500.0, 700.0)]);
        m.prefilled(a, 9_000.0);
        m.ended(a, 9_000.0);
        assert_eq!(m.load(&[a]), vec![(0.0, 0.0)], "never below zero");
        m.retain(|id| id != a);
        assert_eq!(m.load(&[a]), vec![(0.0, 0.0)]);
    }
}
