//! The scheduler: candidates → (staleness filter) → weighted scorers → picker, sans-IO.
//!
//! Time (`now`) and randomness (an RNG) are passed in. A decision loads each candidate's metrics
//! once, scores the whole set with `Σ wᵢ·clamp(sᵢ, 0, 1)`, and the picker returns the primary
//! endpoint and ordered fallbacks. After routing, [`Scheduler::on_routed`] records the request
//! (in-flight load, prefix index) and [`Scheduler::on_finished`] releases it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use igw_core::{Endpoint, InferenceRequest, Instant, Placement};
use rand::Rng;
use rand::seq::SliceRandom;

use crate::detector::UtilizationDetector;
use crate::latency::{Features, LatencyConfig, LatencyModel, Observed, Prediction};
use crate::prefix::{PrefixConfig, PrefixIndex, PrefixMatch, hash_prompt};
use crate::scoring::{Candidate, ScoreInput, Scorer, unseen_in_flight};
pub use crate::slo::Slo;
use crate::wait::{WaitConfig, WaitTracker};

/// How the scored candidates become a pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Picker {
    /// `max-score-picker`: shuffle (random tie break), stable sort by score, highest first.
    MaxScore,
    /// `random-picker`: uniform.
    Random,
    /// Round robin over the candidates (IPVS / Envoy's default).
    RoundRobin,
    /// `weighted-random-picker`: a draw weighted by score (A-Res: key `u^(1/score)`, highest
    /// keys first); endpoints scoring ≤ 0 come last; all ≤ 0 is a uniform draw.
    WeightedRandom,
    /// Power of two choices over router-local in-flight requests (SGLang and vLLM routers).
    PowerOfTwo,
    /// SGLang router's `cache_aware` ([`crate::peers::CacheAware`]).
    CacheAware,
    /// Dynamo's KV router cost ([`crate::peers::DynamoKv`]): the lowest
    /// `prefill blocks − overlap + decode blocks`.
    DynamoKv,
    /// The lowest predicted end-to-end latency ([`crate::latency`]), among the endpoints that meet
    /// the request's SLO when some do.
    PredictedLatency,
}

/// Why no endpoint was chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// No candidate endpoints (→ 503).
    #[error("no candidate endpoints")]
    NoCandidates,
    /// A sheddable request (priority < 0) arrived while the pool is saturated (→ 429).
    #[error("system saturated, sheddable request dropped")]
    Saturated,
    /// A sheddable request that no endpoint is predicted to serve within its SLO (→ 429).
    #[error("no endpoint can meet the request's latency objective, sheddable request dropped")]
    SloUnattainable,
}

/// The result of one decision.
#[derive(Debug, Clone)]
pub struct Decision {
    /// Ordered endpoints, primary first.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Total weighted score of each returned endpoint (same order).
    pub scores: Vec<f64>,
    /// The prompt's prefix-block hashes (empty when prefix scoring is off), kept so that
    /// [`Scheduler::on_routed`] does not hash again.
    pub prefix_hashes: Vec<u64>,
    /// Estimated tokens of work, added to and later released from the in-flight load.
    pub tokens: u64,
    /// Estimated prompt tokens.
    pub input_tokens: u64,
    /// Prefix blocks of the prompt that were looked up (0 when prefix scoring is off).
    pub prefix_blocks: usize,
    /// Of those, the blocks the index holds for the primary endpoint (its cache hit).
    pub prefix_matched_blocks: u32,
    /// The latency model's prediction on each returned endpoint (same order), when the policy
    /// predicts; the outcome is learned against it.
    pub predictions: Vec<Prediction>,
    /// The request's latency objective (from its headers), if any.
    pub slo: Slo,
    /// Output tokens the decision assumed (`max_tokens`, or the learned mean).
    pub output_tokens: f64,
}

impl Decision {
    /// The primary endpoint's prefix hit as a fraction of the prompt's blocks, when prefix
    /// scoring is on.
    pub fn prefix_hit_ratio(&self) -> Option<f64> {
        (self.prefix_blocks > 0).then(|| f64::from(self.prefix_matched_blocks) / self.prefix_blocks as f64)
    }

    /// The prediction made for `endpoint`, if it is one of the returned endpoints and the
    /// policy predicts.
    pub fn prediction_for(&self, endpoint: &Endpoint) -> Option<&Prediction> {
        let i = self.endpoints.iter().position(|e| e.id() == endpoint.id())?;
        self.predictions.get(i)
    }
}

/// A configured scheduler. Cheap to share (`Arc`); decisions take no lock except the prefix
/// index's read lock.
#[derive(Debug)]
pub struct Scheduler {
    name: String,
    scorers: Vec<(Scorer, f64)>,
    picker: Picker,
    prefix: Option<PrefixIndex>,
    blend_in_flight: bool,
    staleness_filter: Option<Duration>,
    legacy_tree: bool,
    detector: UtilizationDetector,
    rr: AtomicUsize,
    wait: Option<WaitTracker>,
    cache_aware: Option<crate::peers::CacheAware>,
    dynamo: Option<crate::peers::DynamoKv>,
    latency: Option<LatencyModel>,
    affinity: Option<crate::affinity::AffinityFilter>,
    no_hit: Option<parking_lot::Mutex<crate::affinity::NoHitLru>>,
}

/// The policies selectable by name.
pub const POLICY_NAMES: &[&str] = &[
    "igw",
    "igw-wait",
    "upstream-default",
    "legacy-filter-tree",
    "random",
    "round-robin",
    "least-queue",
    "power-of-two",
    "sglang-cache-aware",
    "dynamo-kv",
    "igw-latency",
    "llm-d",
];

/// Why a policy could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown policy {0:?}; known: {names}", names = POLICY_NAMES.join(", "))]
pub struct UnknownPolicy(pub String);

impl Scheduler {
    /// A scheduler from explicit parts (no prefix index unless `prefix` is set).
    pub fn new(name: &str, scorers: Vec<(Scorer, f64)>, picker: Picker, prefix: Option<PrefixConfig>) -> Self {
        Scheduler {
            name: name.to_string(),
            picker,
            prefix: prefix.map(PrefixIndex::new),
            blend_in_flight: false,
            staleness_filter: None,
            legacy_tree: false,
            detector: UtilizationDetector::default(),
            rr: AtomicUsize::new(0),
            wait: None,
            cache_aware: (picker == Picker::CacheAware).then(crate::peers::CacheAware::new),
            dynamo: (picker == Picker::DynamoKv).then(crate::peers::DynamoKv::default),
            latency: (picker == Picker::PredictedLatency).then(|| LatencyModel::new(LatencyConfig::default())),
            affinity: None,
            no_hit: scorers_have(&scorers, Scorer::NoHitLru).then(|| parking_lot::Mutex::new(Default::default())),
            scorers,
        }
    }

    /// Run llm-d's `prefix-cache-affinity-filter` before scoring (`None`: no filter).
    pub fn with_affinity_filter(mut self, filter: Option<crate::affinity::AffinityFilter>) -> Self {
        self.affinity = filter;
        self
    }

    /// The `no-hit-lru-scorer`'s `lruSize` (when that scorer is configured).
    pub fn with_no_hit_lru_size(mut self, size: usize) -> Self {
        if self.no_hit.is_some() {
            self.no_hit = Some(parking_lot::Mutex::new(crate::affinity::NoHitLru::new(size)));
        }
        self
    }

    /// The latency model's configuration (a [`Picker::PredictedLatency`] scheduler only).
    pub fn with_latency_config(mut self, config: LatencyConfig) -> Self {
        if self.latency.is_some() {
            self.latency = Some(LatencyModel::new(config));
        }
        self
    }

    /// The latency model, when the policy predicts.
    pub fn latency_model(&self) -> Option<&LatencyModel> {
        self.latency.as_ref()
    }

    /// Blend the picker's own in-flight counts into the queue signal (see
    /// [`unseen_in_flight`]).
    pub fn with_in_flight_blending(mut self, on: bool) -> Self {
        self.blend_in_flight = on;
        self
    }

    /// Track in-flight work and learn service rates for the `expected-wait-scorer`
    /// ([`crate::wait`]); `None` turns tracking off (the scorer then sees 0 everywhere).
    pub fn with_wait_tracking(mut self, config: Option<WaitConfig>) -> Self {
        self.wait = config.map(WaitTracker::new);
        self
    }

    /// The wait tracker, when on.
    pub fn wait_tracker(&self) -> Option<&WaitTracker> {
        self.wait.as_ref()
    }

    /// Leave out endpoints whose metrics are older than `threshold` (all of them stay when every
    /// endpoint is stale: fail open).
    pub fn with_staleness_filter(mut self, threshold: Option<Duration>) -> Self {
        self.staleness_filter = threshold;
        self
    }

    /// True if a `session-affinity-scorer` is configured (responses then carry the session token).
    pub fn session_affinity(&self) -> bool {
        self.scorers.iter().any(|(s, _)| *s == Scorer::SessionAffinity)
    }

    /// The picker.
    pub fn picker(&self) -> Picker {
        self.picker
    }

    /// The saturation detector (shedding, and flow control's gate).
    pub fn detector(&self) -> &UtilizationDetector {
        &self.detector
    }

    /// The saturation detector used for shedding.
    pub fn with_detector(mut self, d: UtilizationDetector) -> Self {
        self.detector = d;
        self
    }

    /// A policy by name (see [`POLICY_NAMES`]):
    /// - `upstream-default`: upstream's current default, exactly — queue-scorer 2,
    ///   kv-cache-utilization-scorer 2, prefix-cache-scorer 3 (upstream prefix index), max-score.
    /// - `igw`: the same weights plus igw's improvements — the prefix index in igw mode (chain
    ///   roots survive eviction, per-endpoint chain continuity), in-flight blending (requests sent
    ///   since the last scrape count as waiting, so bursts between scrapes spread), and stale
    ///   endpoints (metrics older than 1 s) left out unless all are stale.
    /// - `igw-wait`: `igw` with the queue scorer replaced by the `expected-wait-scorer`
    ///   ([`crate::wait`]): the picker's in-flight work in estimated tokens (not a request count),
    ///   times the share of the endpoint's requests that queue, divided by the endpoint's service
    ///   rate learned from its completions while backlogged. Aimed at fleets of unequal replicas
    ///   past saturation; not the default (see BENCHMARKS.md).
    /// - `legacy-filter-tree`: the v0.3 filter tree and a random pick ([`crate::legacy`]), the
    ///   scheduler behind the blog's published numbers.
    /// - `llm-d`: llm-d's optimized baseline — `prefix-cache-affinity-filter` (threshold 0.80,
    ///   18 s TTFT gate at 15,928 prefill tokens/s), then queue-scorer 2, kv-cache-utilization-scorer
    ///   2, prefix-cache-scorer 3 and no-hit-lru-scorer 2 ([`crate::affinity`]), max-score.
    /// - `random` (a Kubernetes Service), `round-robin` (IPVS / Envoy), `least-queue`
    ///   (queue-scorer alone, max-score).
    pub fn from_policy(name: &str) -> Result<Self, UnknownPolicy> {
        let upstream = vec![(Scorer::Queue, 2.0), (Scorer::KvCache, 2.0), (Scorer::Prefix, 3.0)];
        Ok(match name {
            "upstream-default" => Scheduler::new(name, upstream, Picker::MaxScore, Some(PrefixConfig::upstream())),
            "llm-d" => {
                let mut scorers = upstream;
                scorers.push((Scorer::NoHitLru, 2.0));
                Scheduler::new(name, scorers, Picker::MaxScore, Some(PrefixConfig::upstream()))
                    .with_affinity_filter(Some(crate::affinity::AffinityFilter::default()))
            }
            "igw" => {
                // Upstream's default has no LoRA signal: a request for an adapter lands wherever
                // the queue is shortest and the engine loads the adapter there, evicting another.
                let mut scorers = upstream;
                scorers.push((Scorer::LoraAffinity, 3.0));
                Scheduler::new(name, scorers, Picker::MaxScore, Some(PrefixConfig::default()))
            }
            .with_in_flight_blending(true)
            .with_staleness_filter(Some(Duration::from_secs(1))),
            "igw-wait" => {
                // igw with the queue scorer's waiting count replaced by the expected wait.
                let scorers = vec![
                    (Scorer::ExpectedWait, 2.0),
                    (Scorer::KvCache, 2.0),
                    (Scorer::Prefix, 3.0),
                    (Scorer::LoraAffinity, 3.0),
                ];
                Scheduler::new(name, scorers, Picker::MaxScore, Some(PrefixConfig::default()))
                    .with_in_flight_blending(true)
                    .with_staleness_filter(Some(Duration::from_secs(1)))
                    .with_wait_tracking(Some(WaitConfig::default()))
            }
            "legacy-filter-tree" => {
                let mut s = Scheduler::new(name, vec![], Picker::Random, None);
                s.legacy_tree = true;
                s
            }
            "random" => Scheduler::new(name, vec![], Picker::Random, None),
            "round-robin" => Scheduler::new(name, vec![], Picker::RoundRobin, None),
            "least-queue" => Scheduler::new(name, vec![(Scorer::Queue, 1.0)], Picker::MaxScore, None),
            "power-of-two" => Scheduler::new(name, vec![], Picker::PowerOfTwo, None),
            "sglang-cache-aware" => Scheduler::new(name, vec![], Picker::CacheAware, None),
            // Dynamo's KV router with its defaults (credit 1.0, prefill load scale 1, temperature 0)
            // over igw's approximate index (Dynamo's approximate mode, without KV events).
            "dynamo-kv" => Scheduler::new(name, vec![], Picker::DynamoKv, Some(PrefixConfig::default())),
            // Predicted latency: every signal in seconds, learned per endpoint.
            "igw-latency" => Scheduler::new(name, vec![], Picker::PredictedLatency, Some(PrefixConfig::default()))
                .with_in_flight_blending(true)
                .with_staleness_filter(Some(Duration::from_secs(1))),
            other => return Err(UnknownPolicy(other.to_string())),
        })
    }

    /// The policy name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The scorers and their weights, by upstream type name.
    pub fn scorer_weights(&self) -> Vec<(&'static str, f64)> {
        self.scorers.iter().map(|(s, w)| (s.type_name(), *w)).collect()
    }

    /// The `prefix-cache-affinity-filter`, when configured.
    pub fn affinity_filter(&self) -> Option<&crate::affinity::AffinityFilter> {
        self.affinity.as_ref()
    }

    /// The prefix index, when prefix scoring is on.
    pub fn prefix_index(&self) -> Option<&PrefixIndex> {
        self.prefix.as_ref()
    }

    /// Legacy admission: a request with priority < 0 is shed when the pool's saturation over
    /// `candidates` ([`UtilizationDetector::pool_view`], the model flow control uses too) is
    /// ≥ 1.0; other requests are never shed.
    pub fn admit(
        &self,
        req: &InferenceRequest,
        candidates: &[Arc<Endpoint>],
        now: Instant,
    ) -> Result<(), ScheduleError> {
        if !req.is_sheddable() {
            return Ok(());
        }
        if self.detector.pool_view(candidates, now).saturation(0) >= 1.0 {
            return Err(ScheduleError::Saturated);
        }
        Ok(())
    }

    /// Chooses up to `max` ordered endpoints for `req` among `candidates`.
    pub fn schedule<R: Rng + ?Sized>(
        &self,
        req: &InferenceRequest,
        candidates: &[Arc<Endpoint>],
        max: usize,
        now: Instant,
        rng: &mut R,
    ) -> Result<Decision, ScheduleError> {
        if candidates.is_empty() {
            return Err(ScheduleError::NoCandidates);
        }
        let mut any_model_list = false;
        let mut cands: Vec<Candidate> = candidates
            .iter()
            .map(|e| {
                let metrics = e.metrics();
                any_model_list |= metrics.served_models.is_some();
                let unseen =
                    if self.blend_in_flight { unseen_in_flight(e.in_flight().requests(), &metrics) } else { 0 };
                Candidate { endpoint: e.clone(), metrics, unseen, expected_wait: 0.0 }
            })
            .collect();
        if let Some(w) = &self.wait {
            w.estimate(&mut cands, now);
        }
        if let Some(threshold) = self.staleness_filter
            && cands.iter().any(|c| !c.metrics.is_stale(now, threshold))
        {
            cands.retain(|c| !c.metrics.is_stale(now, threshold));
        }
        // An endpoint whose model list lacks the requested model (an adapter loaded elsewhere)
        // would answer 404: when some candidate lists it, drop those that are known not to.
        // Endpoints with no list (not polled, never answered) stay; so does everyone when no list
        // names the model (a base model under another alias, or an engine that loads on demand).
        if any_model_list && cands.iter().any(|c| c.metrics.serves(&req.target_model) == Some(true)) {
            cands.retain(|c| c.metrics.serves(&req.target_model) != Some(false));
        }
        if self.legacy_tree {
            cands = crate::legacy::filter_tree(&req.target_model, cands, rng);
        }
        let tokens = req.estimated_tokens();
        let (hashes, matched) = match &self.prefix {
            None if self.cache_aware.is_some() => (crate::peers::CacheAware::chunks(&req.prompt.prefix_text()), None),
            Some(index) => {
                let text = req.prompt.prefix_text();
                let hashes = hash_prompt(index.config(), &req.target_model, req.cache_salt.as_deref(), text.as_bytes());
                let m = index.match_prefix(&hashes);
                (hashes, Some(m))
            }
            None => (Vec::new(), None),
        };
        if let (Some(f), Some(m)) = (&self.affinity, &matched) {
            let blocks = hashes.len().max(1) as f64;
            let ratios: Vec<f64> = cands.iter().map(|c| f64::from(m.matched(c.endpoint.id())) / blocks).collect();
            let tokens: Vec<u64> = cands.iter().map(|c| c.endpoint.in_flight().tokens()).collect();
            let draw = if f.exploration > 0.0 { rng.random::<f64>() } else { 1.0 };
            if let Some(keep) = f.keep(&ratios, &tokens, draw) {
                let mut k = keep.into_iter();
                cands.retain(|_| k.next().unwrap_or(true));
            }
        }
        // A cold request (no candidate holds any of its prefix), for the no-hit LRU.
        let cold = self.no_hit.is_some()
            && matched.as_ref().is_none_or(|m| cands.iter().all(|c| m.matched(c.endpoint.id()) == 0));
        let max = max.clamp(1, cands.len());
        let slo = Slo::from_request(req);
        let output_tokens = match (req.max_tokens, self.latency.as_ref().and_then(LatencyModel::mean_output_tokens)) {
            (Some(m), _) => f64::from(m.max(1)),
            (None, Some(mean)) => mean,
            (None, None) => (tokens - req.estimated_input_tokens()) as f64,
        };
        let mut preds: Vec<Prediction> = Vec::new();
        let order = match self.picker {
            Picker::Random => {
                cands.shuffle(rng);
                None
            }
            Picker::RoundRobin => {
                let start = self.rr.fetch_add(1, Ordering::Relaxed) % cands.len();
                cands.rotate_left(start);
                None
            }
            Picker::PowerOfTwo => {
                let eps: Vec<Arc<Endpoint>> = cands.iter().map(|c| c.endpoint.clone()).collect();
                let first = crate::peers::power_of_two(&eps, rng);
                cands[..=first].rotate_right(1);
                None
            }
            Picker::CacheAware => {
                let model = self.cache_aware.as_ref();
                let eps: Vec<Arc<Endpoint>> = cands.iter().map(|c| c.endpoint.clone()).collect();
                let first = model.map_or(0, |m| m.pick(req.prompt.prefix_text().len(), &hashes, &eps));
                cands[..=first].rotate_right(1);
                None
            }
            Picker::DynamoKv => {
                let blocks = req.estimated_input_tokens() as f64 / self.block_tokens();
                let model = self.dynamo.as_ref();
                Some(
                    cands
                        .iter()
                        .map(|c| {
                            let overlap = matched.as_ref().map_or(0, |m| m.matched(c.endpoint.id()));
                            -model.map_or(0.0, |d| d.cost(c.endpoint.id(), blocks, f64::from(overlap)))
                        })
                        .collect(),
                )
            }
            Picker::PredictedLatency => {
                let (totals, p) = self.predict(req, &cands, matched.as_ref(), &slo, output_tokens);
                preds = p;
                if req.is_sheddable() && slo.is_set() && !totals.iter().any(|t| *t > -INFEASIBLE) {
                    return Err(ScheduleError::SloUnattainable);
                }
                Some(totals)
            }
            Picker::MaxScore => Some(self.score(req, &cands, matched.as_ref(), cold)),
            Picker::WeightedRandom => {
                let totals = self.score(req, &cands, matched.as_ref(), cold);
                if totals.iter().all(|t| *t <= 0.0) {
                    cands.shuffle(rng);
                    None
                } else {
                    // A-Res keys; sorting them like max-score scores gives the weighted order.
                    Some(totals.iter().map(|&t| a_res_key(t, rng.random::<f64>())).collect())
                }
            }
        };
        let (endpoints, scores): (Vec<Arc<Endpoint>>, Vec<f64>) = match order {
            None => (cands.iter().take(max).map(|c| c.endpoint.clone()).collect(), vec![0.0; max]),
            Some(totals) => {
                let mut idx: Vec<usize> = (0..cands.len()).collect();
                idx.shuffle(rng);
                idx.sort_by(|a, b| totals[*b].total_cmp(&totals[*a]));
                if let Some(model) = &self.latency {
                    explore(&mut idx, &totals, model.config().exploration, rng);
                }
                idx.truncate(max);
                if !preds.is_empty() {
                    preds = idx.iter().map(|&i| preds[i]).collect();
                }
                (idx.iter().map(|&i| cands[i].endpoint.clone()).collect(), idx.iter().map(|&i| totals[i]).collect())
            }
        };
        if cold && let Some(lru) = &self.no_hit {
            lru.lock().touch(endpoints[0].id());
        }
        let prefix_matched_blocks = matched.as_ref().map_or(0, |m| m.matched(endpoints[0].id()));
        Ok(Decision {
            endpoints,
            scores,
            prefix_blocks: if self.prefix.is_some() { hashes.len() } else { 0 },
            prefix_hashes: hashes,
            tokens,
            input_tokens: req.estimated_input_tokens(),
            prefix_matched_blocks,
            predictions: preds,
            slo,
            output_tokens,
        })
    }

    /// Predicts every candidate and ranks them: the total is minus the predicted end-to-end
    /// seconds, less [`INFEASIBLE`] for a candidate predicted to miss the request's SLO.
    fn predict(
        &self,
        req: &InferenceRequest,
        cands: &[Candidate],
        matched: Option<&PrefixMatch>,
        slo: &Slo,
        output_tokens: f64,
    ) -> (Vec<f64>, Vec<Prediction>) {
        let Some(model) = &self.latency else { return (vec![0.0; cands.len()], Vec::new()) };
        let input = req.estimated_input_tokens() as f64;
        let block = self.prefix.as_ref().map_or(0, |i| i.config().block_size_tokens) as f64;
        let ids: Vec<igw_core::EndpointId> = cands.iter().map(|c| c.endpoint.id()).collect();
        let load = model.load(&ids);
        // A LoRA request: some candidate holds the target as an adapter (a base-model request,
        // or an adapter nobody has loaded, costs the same everywhere).
        let target = req.target_model.as_str();
        let adapter = cands.iter().any(|c| c.metrics.has_adapter(target)).then_some(target);
        let features: Vec<Features> = cands
            .iter()
            .zip(&load)
            .map(|(c, &(prefilling, context))| {
                let cached = matched.map_or(0.0, |m| f64::from(m.matched(c.endpoint.id())) * block);
                Features::of(&c.metrics, c.unseen, input - cached.min(input), prefilling, context, adapter)
            })
            .collect();
        let mut preds = Vec::with_capacity(cands.len());
        model.predict_all(&ids, &features, &mut preds);
        let tiers = if req.goals.placement == Placement::Cheapest && slo.is_set() {
            cost_tiers(cands, &preds, slo)
        } else {
            Vec::new()
        };
        let totals = preds
            .iter()
            .zip(cands)
            .enumerate()
            .map(|(i, (p, c))| {
                // An idle endpoint is never ruled out by its prediction (a model can be wrong;
                // an idle engine is the best any request can get).
                let idle = c.metrics.waiting == 0 && c.metrics.running == 0 && c.unseen == 0;
                let miss = !idle && !slo.met_by(p);
                let tier = tiers.get(i).copied().unwrap_or(0.0);
                -(p.e2e_s(output_tokens) + p.imposed_s()) - tier * TIER_S - if miss { INFEASIBLE } else { 0.0 }
            })
            .collect();
        (totals, preds)
    }

    fn score(&self, req: &InferenceRequest, cands: &[Candidate], prefix: Option<&PrefixMatch>, cold: bool) -> Vec<f64> {
        let session = if self.scorers.iter().any(|(s, _)| *s == Scorer::SessionAffinity) {
            req.header(crate::session::SESSION_TOKEN_HEADER).and_then(crate::session::decode_token)
        } else {
            None
        };
        let lru = self.no_hit.as_ref().map(|m| m.lock());
        let input = ScoreInput {
            target_model: &req.target_model,
            prefix,
            session: session.as_deref(),
            no_hit: lru.as_deref().map(|l| (l, cold)),
        };
        let mut totals = vec![0.0; cands.len()];
        let mut scratch = vec![0.0; cands.len()];
        for (scorer, weight) in &self.scorers {
            scorer.score(&input, cands, &mut scratch);
            for (t, s) in totals.iter_mut().zip(&scratch) {
                let s = if s.is_finite() { s.clamp(0.0, 1.0) } else { 0.0 };
                *t += weight * s;
            }
        }
        totals
    }

    /// Records that the request of `decision` was sent to `endpoint`: in-flight load and, when
    /// prefix scoring is on, the prompt's blocks as cached there.
    pub fn on_routed(&self, decision: &Decision, endpoint: &Arc<Endpoint>) {
        self.on_attempt(decision, endpoint, None);
    }

    /// [`Self::on_routed`] for one routing attempt: with `added`, the prefix hashes the endpoint
    /// did not hold before are appended to it, so that [`Self::on_attempt_failed`] can take them
    /// back if the attempt never reaches the endpoint.
    pub fn on_attempt(&self, decision: &Decision, endpoint: &Arc<Endpoint>, added: Option<&mut Vec<u64>>) {
        endpoint.in_flight().add(decision.tokens);
        if let Some(d) = &self.dynamo {
            d.add(endpoint.id(), self.dynamo_blocks(decision));
        }
        if let Some(m) = &self.latency {
            m.sent(endpoint.id(), uncached_on(decision, endpoint), decision.tokens as f64);
        }
        if decision.prefix_hashes.is_empty() {
            return;
        }
        if let Some(index) = &self.prefix {
            let capacity = endpoint.metrics().cache_num_blocks;
            match added {
                Some(added) => index.insert_new(endpoint.id(), &decision.prefix_hashes, capacity, added),
                None => index.insert(endpoint.id(), &decision.prefix_hashes, capacity),
            }
        } else if let Some(m) = &self.cache_aware {
            m.record(endpoint.id(), &decision.prefix_hashes);
        }
    }

    /// Undoes an attempt that failed before `endpoint` served the request (refused connection,
    /// 503, reset): its in-flight load is released and the prefix entries the attempt added
    /// (`added`, from [`Self::on_attempt`]) are forgotten. The wait tracker is not told: no work
    /// was done there.
    pub fn on_attempt_failed(&self, decision: &Decision, endpoint: &Arc<Endpoint>, added: &[u64]) {
        endpoint.in_flight().release(decision.tokens);
        if let Some(d) = &self.dynamo {
            d.release(endpoint.id(), self.dynamo_blocks(decision), true);
        }
        if let Some(m) = &self.latency {
            m.prefilled(endpoint.id(), uncached_on(decision, endpoint));
            m.ended(endpoint.id(), decision.tokens as f64);
        }
        if let Some(index) = &self.prefix {
            index.forget(endpoint.id(), added);
        }
    }

    /// The first token of a request sent to `endpoint` arrived: its prefill is done (Dynamo's
    /// model stops counting its prompt as prefill load).
    pub fn on_first_token(&self, decision: &Decision, endpoint: &Arc<Endpoint>) {
        if let Some(d) = &self.dynamo {
            d.prefilled(endpoint.id(), self.dynamo_blocks(decision));
        }
        if let Some(m) = &self.latency {
            m.prefilled(endpoint.id(), uncached_on(decision, endpoint));
        }
    }

    /// Releases the in-flight load of a request sent to `endpoint`.
    pub fn on_finished(&self, decision: &Decision, endpoint: &Arc<Endpoint>) {
        self.on_finished_observed(decision, endpoint, None, false);
    }

    /// [`Self::on_finished`] with what the response showed: the latency model learns from it
    /// (`seen`; `None` when no usable response arrived). `first_token` says whether
    /// [`Self::on_first_token`] was called for this attempt.
    pub fn on_finished_observed(
        &self,
        decision: &Decision,
        endpoint: &Arc<Endpoint>,
        seen: Option<&Observed>,
        first_token: bool,
    ) {
        endpoint.in_flight().release(decision.tokens);
        if let Some(w) = &self.wait {
            w.on_finished(endpoint.id(), decision.tokens);
        }
        if let Some(d) = &self.dynamo {
            d.release(endpoint.id(), self.dynamo_blocks(decision), !first_token);
        }
        if let Some(model) = &self.latency {
            if !first_token {
                model.prefilled(endpoint.id(), uncached_on(decision, endpoint));
            }
            model.ended(endpoint.id(), decision.tokens as f64);
            if let (Some(seen), Some(p)) = (seen, decision.prediction_for(endpoint)) {
                model.observe(endpoint.id(), p, seen);
            }
        }
    }

    /// A request's prompt blocks as Dynamo's model counts them.
    fn dynamo_blocks(&self, decision: &Decision) -> f64 {
        (decision.input_tokens as f64 / self.block_tokens()).ceil()
    }

    /// Tokens per block of the prefix index (vLLM's default, 16, without one).
    fn block_tokens(&self) -> f64 {
        self.prefix.as_ref().map_or(16, |i| i.config().block_size_tokens.max(1)) as f64
    }

    /// Drops prefix and wait-tracking state of endpoints no longer present.
    pub fn retain_endpoints(&self, keep: impl Fn(igw_core::EndpointId) -> bool) {
        if let Some(w) = &self.wait {
            w.retain(&keep);
        }
        if let Some(m) = &self.cache_aware {
            m.retain(&keep);
        }
        if let Some(m) = &self.dynamo {
            m.retain(&keep);
        }
        if let Some(m) = &self.latency {
            m.retain(&keep);
        }
        if let Some(index) = &self.prefix {
            index.retain(keep);
        }
    }
}

fn scorers_have(scorers: &[(Scorer, f64)], s: Scorer) -> bool {
    scorers.iter().any(|(x, _)| *x == s)
}

/// The prompt tokens `endpoint` was expected to prefill for `decision` (the whole prompt when the
/// decision did not predict there).
fn uncached_on(decision: &Decision, endpoint: &Endpoint) -> f64 {
    decision.prediction_for(endpoint).map_or(decision.input_tokens as f64, |p| p.features.uncached_tokens)
}

/// Subtracted from a candidate's total when it is predicted to miss the request's SLO: every
/// candidate that meets it ranks first.
pub const INFEASIBLE: f64 = 1e9;

/// Seconds subtracted per cost tier under `cheapest` placement: more than any predicted latency,
/// so a cheaper tier always ranks first, less than [`INFEASIBLE`] over every tier.
const TIER_S: f64 = 1e5;
/// The tier of a candidate `cheapest` placement cannot rank by price: it is predicted to miss
/// the SLO, or has no price. Such candidates rank after every priced one that meets the SLO,
/// among themselves as under `fastest`.
const UNRANKED_TIER: f64 = 1000.0;
/// Relative price step between two tiers: endpoints within 25% of each other's price per token
/// share a tier and are ranked by latency (their learned speeds differ by noise).
const TIER_STEP: f64 = 1.25;

/// `cheapest` placement: each candidate's cost tier, 0 for the cheapest price per output token
/// (price per hour × learned slowness) among the candidates predicted to meet `slo`, one more per
/// 25% above it; [`UNRANKED_TIER`] for a candidate predicted to miss it or without a price.
/// Meeting it means with the endpoint's learned overrun ([`Slo::surely_met_by`]): packing a
/// request onto the cheapest endpoint that barely meets the SLO at join time misses it once
/// later requests join the batch. The prediction decides here even for an idle endpoint: an
/// idle but too slow accelerator is not a cheap way to meet the objective.
fn cost_tiers(cands: &[Candidate], preds: &[Prediction], slo: &Slo) -> Vec<f64> {
    let per_token: Vec<Option<f64>> = cands
        .iter()
        .zip(preds)
        .map(|(c, p)| c.endpoint.meta().cost_per_hour().filter(|_| slo.surely_met_by(p)).map(|h| h * p.slowness))
        .collect();
    let Some(min) = per_token.iter().flatten().copied().reduce(f64::min) else {
        return vec![UNRANKED_TIER; cands.len()];
    };
    per_token
        .iter()
        .map(|c| c.map_or(UNRANKED_TIER, |x| ((x / min).ln() / TIER_STEP.ln()).floor().clamp(0.0, UNRANKED_TIER - 1.0)))
        .collect()
}

/// Exploration: with probability `p`, a uniformly drawn candidate among those predicted within
/// 1.5× of the best (and as feasible as the best) becomes the primary; the rest keep their order.
fn explore<R: Rng + ?Sized>(idx: &mut [usize], totals: &[f64], p: f64, rng: &mut R) {
    if idx.len() < 2 || !(p > 0.0 && rng.random::<f64>() < p) {
        return;
    }
    let best = totals[idx[0]];
    let bound = if best > -INFEASIBLE { 1.5 * best } else { best - 0.5 * (best + INFEASIBLE).abs() };
    let close = idx.iter().take_while(|&&i| totals[i] >= bound).count();
    if close > 1 {
        let j = rng.random_range(0..close);
        idx[..=j].rotate_right(1);
    }
}

/// A-Res sampling key for an endpoint of weight `score` and a uniform draw `u` in [0, 1):
/// `u^(1/score)`; a zero draw counts as 1e-10; a score ≤ 0 (or not finite) gets key 0.
pub fn a_res_key(score: f64, u: f64) -> f64 {
    if !(score.is_finite() && score > 0.0) {
        return 0.0;
    }
    u.max(1e-10).powf(1.0 / score)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::latency::{LatencyConfig, Observed};
    use igw_core::{Datastore, EndpointMeta, EndpointMetrics};
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    fn pool(n: usize) -> Datastore {
        Datastore::with_endpoints((0..n).map(|i| EndpointMeta::parse_addr(&format!("10.0.0.{i}:8000")).unwrap()))
    }

    fn set(ep: &Endpoint, waiting: u32, kv: f64, now: Instant) {
        ep.set_metrics(EndpointMetrics { waiting, kv_usage: kv, update_time: Some(now), ..Default::default() });
    }

    #[test]
    fn weighted_random_draws_in_proportion_to_scores() {
        let ds = pool(3);
        let s = ds.snapshot();
        let now = Instant::from_millis(10);
        // kv-cache scores 0.75, 0.25 and 0: picked first about 75% / 25% / never.
        set(&s.endpoints[0], 0, 0.25, now);
        set(&s.endpoints[1], 0, 0.75, now);
        set(&s.endpoints[2], 0, 1.0, now);
        let sched = Scheduler::new("w", vec![(Scorer::KvCache, 1.0)], Picker::WeightedRandom, None);
        let mut rng = SmallRng::seed_from_u64(7);
        let mut first = [0usize; 3];
        for _ in 0..4000 {
            let d = sched.schedule(&InferenceRequest::text("m", "hi"), &s.endpoints, 3, now, &mut rng).unwrap();
            first[s.endpoints.iter().position(|e| e.id() == d.endpoints[0].id()).unwrap()] += 1;
            assert_eq!(d.endpoints.len(), 3, "fallbacks follow in key order");
        }
        assert_eq!(first[2], 0, "a zero score is never drawn first while others score");
        let share = first[0] as f64 / 4000.0;
        assert!((0.72..0.78).contains(&share), "{first:?}");
        assert_eq!(a_res_key(0.0, 0.5), 0.0);
        assert_eq!(a_res_key(1.0, 0.0), 1e-10);
    }

    #[test]
    fn picks_the_least_loaded_and_orders_fallbacks() {
        let ds = pool(3);
        let now = Instant::from_millis(10);
        let s = ds.snapshot();
        set(&s.endpoints[0], 10, 0.5, now);
        set(&s.endpoints[1], 0, 0.1, now);
        set(&s.endpoints[2], 5, 0.3, now);
        for policy in ["igw", "upstream-default", "least-queue"] {
            let sched = Scheduler::from_policy(policy).unwrap();
            let d = sched
                .schedule(&InferenceRequest::text("m", "hi"), &s.endpoints, 3, now, &mut SmallRng::seed_from_u64(1))
                .unwrap();
            let ids: Vec<_> = d.endpoints.iter().map(|e| e.id().0).collect();
            assert_eq!(ids, [1, 2, 0], "{policy}");
            assert!(d.scores.windows(2).all(|w| w[0] >= w[1]));
        }
        let legacy = Scheduler::from_policy("legacy-filter-tree").unwrap();
        let d = legacy
            .schedule(&InferenceRequest::text("m", "hi"), &s.endpoints, 3, now, &mut SmallRng::seed_from_u64(1))
            .unwrap();
        assert_eq!(
            d.endpoints.iter().map(|e| e.id().0).collect::<Vec<_>>(),
            [1],
            "only the first queue bucket survives"
        );
        assert!(Scheduler::from_policy("nope").is_err());
    }

    #[test]
    fn in_flight_blending_spreads_a_burst_between_scrapes() {
        let now = Instant::from_millis(10);
        let burst = |policy: &str| {
            let ds = pool(4);
            let s = ds.snapshot();
            // Endpoint 0 looked idlest at the last scrape; the others had 2 waiting.
            for (i, e) in s.endpoints.iter().enumerate() {
                set(e, if i == 0 { 0 } else { 2 }, 0.0, now);
            }
            let sched = Scheduler::from_policy(policy).unwrap();
            let mut rng = SmallRng::seed_from_u64(3);
            let mut counts = [0u32; 4];
            for i in 0..20 {
                // Distinct long prompts: no prefix affinity in play.
                let req = InferenceRequest::text("m", &format!("{i:04} {}", "x".repeat(200)));
                let d = sched.schedule(&req, &s.endpoints, 1, now, &mut rng).unwrap();
                sched.on_routed(&d, &d.endpoints[0]);
                counts[d.endpoints[0].id().0 as usize] += 1;
            }
            counts
        };
        let igw = burst("igw");
        assert!(igw.iter().all(|&c| (3..=8).contains(&c)), "igw spreads the burst: {igw:?}");
        let up = burst("upstream-default");
        assert_eq!(up, [20, 0, 0, 0], "upstream herds onto the endpoint that looked idlest");
    }

    #[test]
    fn igw_wait_sends_to_the_endpoint_that_finishes_faster() {
        let ds = pool(2);
        let s = ds.snapshot();
        let sched = Scheduler::from_policy("igw-wait").unwrap();
        let igw = Scheduler::from_policy("igw").unwrap();
        let mut rng = SmallRng::seed_from_u64(5);
        let req = InferenceRequest::text("m", "hi");
        // Both endpoints backlogged with the same waiting count and the same work in flight.
        for e in s.endpoints.iter() {
            e.in_flight().add(4_000);
        }
        let tick = |ms: u64| {
            let now = Instant::from_millis(ms);
            for e in s.endpoints.iter() {
                set(e, 20, 0.5, now);
            }
            now
        };
        let t0 = tick(0);
        sched.schedule(&req, &s.endpoints, 2, t0, &mut rng).unwrap();
        // Over 10 virtual seconds endpoint 1 finishes three times the work of endpoint 0.
        let tracker = sched.wait_tracker().unwrap();
        tracker.on_finished(s.endpoints[0].id(), 10_000);
        tracker.on_finished(s.endpoints[1].id(), 30_000);
        let t1 = tick(10_000);
        for _ in 0..20 {
            let d = sched.schedule(&req, &s.endpoints, 2, t1, &mut rng).unwrap();
            assert_eq!(d.endpoints[0].id().0, 1, "equal work, three times the rate: a third of the wait");
        }
        let mut firsts = [0u32; 2];
        for _ in 0..200 {
            let d = igw.schedule(&req, &s.endpoints, 2, t1, &mut rng).unwrap();
            firsts[d.endpoints[0].id().0 as usize] += 1;
        }
        assert!(firsts.iter().all(|&n| n > 50), "igw sees equal queues and ties: {firsts:?}");
    }

    #[test]
    fn igw_wait_counts_work_and_releases_it() {
        let ds = pool(2);
        let s = ds.snapshot();
        let now = Instant::from_millis(10);
        for e in s.endpoints.iter() {
            set(e, 3, 0.5, now);
        }
        let sched = Scheduler::from_policy("igw-wait").unwrap();
        let mut rng = SmallRng::seed_from_u64(8);
        // One long request on endpoint 0, three short ones on endpoint 1. The scrape shows equal
        // queues (the queue scorer ties); the work is not equal.
        let long = InferenceRequest { max_tokens: Some(4_000), ..InferenceRequest::text("m", "long") };
        let short = InferenceRequest { max_tokens: Some(10), ..InferenceRequest::text("m", "short") };
        let d = sched.schedule(&long, &s.endpoints[..1], 1, now, &mut rng).unwrap();
        sched.on_routed(&d, &s.endpoints[0]);
        let mut shorts = Vec::new();
        for _ in 0..3 {
            let d = sched.schedule(&short, &s.endpoints[1..], 1, now, &mut rng).unwrap();
            sched.on_routed(&d, &s.endpoints[1]);
            shorts.push(d);
        }
        let d = sched.schedule(&short, &s.endpoints, 2, now, &mut rng).unwrap();
        assert_eq!(d.endpoints[0].id().0, 1);
        sched.on_finished(&sched.schedule(&long, &s.endpoints[..1], 1, now, &mut rng).unwrap(), &s.endpoints[0]);
        assert_eq!(s.endpoints[0].in_flight().tokens(), 0, "finishing releases the work");
        set(&s.endpoints[0], 0, 0.5, now);
        let d = sched.schedule(&short, &s.endpoints, 2, now, &mut rng).unwrap();
        assert_eq!(d.endpoints[0].id().0, 0);
    }

    fn set_full(ep: &Endpoint, waiting: u32, running: u32, now: Instant) {
        ep.set_metrics(EndpointMetrics { waiting, running, update_time: Some(now), ..Default::default() });
    }

    #[test]
    fn igw_latency_trades_a_cache_hit_against_a_queue_in_seconds() {
        let ds = pool(3);
        let s = ds.snapshot();
        let now = Instant::from_millis(10);
        for e in &s.endpoints {
            set_full(e, 0, 0, now);
        }
        let sched = Scheduler::from_policy("igw-latency")
            .unwrap()
            .with_latency_config(LatencyConfig { exploration: 0.0, ..Default::default() });
        let mut rng = SmallRng::seed_from_u64(4);
        // A 4,000-token system prompt cached on endpoint 0.
        let system = "tool preamble ".repeat(1_150);
        let req = |q: u32| InferenceRequest {
            max_tokens: Some(100),
            ..InferenceRequest::text("m", &format!("{system} question {q}"))
        };
        let first = sched.schedule(&req(0), &s.endpoints[..1], 1, now, &mut rng).unwrap();
        sched.on_routed(&first, &s.endpoints[0]);
        sched.on_first_token(&first, &s.endpoints[0]);
        sched.on_finished(&first, &s.endpoints[0]);
        // All idle: the hit saves ≈0.1 s of prefill, so the request follows its prefix.
        let d = sched.schedule(&req(1), &s.endpoints, 3, now, &mut rng).unwrap();
        assert_eq!(d.endpoints[0].id().0, 0, "{:?}", d.predictions);
        assert!(d.predictions[0].ttft_s + 0.05 < d.predictions[1].ttft_s, "{:?}", d.predictions);
        assert_eq!(d.predictions.len(), 3);
        assert_eq!(d.output_tokens, 100.0);
        // Eight requests queued there cost more than the prefill it saves: go elsewhere.
        set_full(&s.endpoints[0], 8, 40, now);
        let d = sched.schedule(&req(2), &s.endpoints, 3, now, &mut rng).unwrap();
        assert_ne!(d.endpoints[0].id().0, 0, "{:?}", d.predictions);
        assert_eq!(d.endpoints[2].id().0, 0, "the queued endpoint is the last fallback");
        // upstream-default's weights keep following the prefix into the queue.
        let up = Scheduler::from_policy("upstream-default").unwrap();
        let f = up.schedule(&req(0), &s.endpoints[..1], 1, now, &mut rng).unwrap();
        up.on_routed(&f, &s.endpoints[0]);
        let d = up.schedule(&req(3), &s.endpoints, 3, now, &mut rng).unwrap();
        assert_eq!(d.endpoints[0].id().0, 0);
    }

    #[test]
    fn igw_latency_learns_a_slow_endpoint_from_outcomes() {
        let ds = pool(2);
        let s = ds.snapshot();
        let now = Instant::from_millis(10);
        for e in &s.endpoints {
            set_full(e, 0, 4, now);
        }
        let sched = Scheduler::from_policy("igw-latency")
            .unwrap()
            .with_latency_config(LatencyConfig { exploration: 0.0, ..Default::default() });
        let mut rng = SmallRng::seed_from_u64(5);
        let req = InferenceRequest { max_tokens: Some(50), ..InferenceRequest::text("m", &"x".repeat(2_000)) };
        // Endpoint 1 answers three times slower than endpoint 0.
        for i in 0..60 {
            let e = &s.endpoints[i % 2];
            let d = sched.schedule(&req, std::slice::from_ref(e), 1, now, &mut rng).unwrap();
            sched.on_routed(&d, e);
            let k = if i % 2 == 0 { 1.0 } else { 3.0 };
            let seen = Observed {
                ttft_s: Some(k * 0.03),
                e2e_s: k * (0.03 + 49.0 * 0.008),
                completion_tokens: 50,
                cached_tokens: None,
                prompt_tokens: 500,
            };
            sched.on_first_token(&d, e);
            sched.on_finished_observed(&d, e, Some(&seen), true);
        }
        let model = sched.latency_model().unwrap();
        let (fast, slow) = (model.view(s.endpoints[0].id()).unwrap(), model.view(s.endpoints[1].id()).unwrap());
        assert_eq!(fast.ttft_samples, 30);
        let (t, d) = (slow.ttft_factor / fast.ttft_factor, slow.tpot_factor / fast.tpot_factor);
        assert!((2.5..3.5).contains(&t) && (2.5..3.5).contains(&d), "{fast:?} {slow:?}");
        // Endpoint 0 now takes the request even with a few more running.
        set_full(&s.endpoints[0], 0, 8, now);
        let d = sched.schedule(&req, &s.endpoints, 2, now, &mut rng).unwrap();
        assert_eq!(d.endpoints[0].id().0, 0, "{:?}", d.predictions);
        assert!(d.predictions[1].e2e_s(50.0) > 2.0 * d.predictions[0].e2e_s(50.0), "{:?}", d.predictions);
        assert_eq!(s.endpoints[0].in_flight().requests(), 0, "every attempt was released");
        assert_eq!(model.load(&[s.endpoints[0].id()]), vec![(0.0, 0.0)]);
    }

    #[test]
    fn a_sheddable_request_no_endpoint_can_serve_within_its_slo_is_refused() {
        let ds = pool(2);
        let s = ds.snapshot();
        let now = Instant::from_millis(10);
        for e in &s.endpoints {
            set_full(e, 20, 50, now);
        }
        let sched = Scheduler::from_policy("igw-latency").unwrap();
        let mut rng = SmallRng::seed_from_u64(6);
        let mut req = InferenceRequest::text("m", "hi");
        req.headers = vec![(crate::slo::TTFT_HEADER.into(), "50".into())];
        req.priority = -1;
        let e = sched.schedule(&req, &s.endpoints, 1, now, &mut rng).unwrap_err();
        assert_eq!(e, ScheduleError::SloUnattainable);
        // Not sheddable: scheduled anyway, on the best endpoint.
        req.priority = 0;
        let d = sched.schedule(&req, &s.endpoints, 1, now, &mut rng).unwrap();
        assert_eq!(d.slo.ttft_s, Some(0.05));
        // An idle endpoint always counts as able to meet it.
        req.priority = -1;
        set_full(&s.endpoints[1], 0, 0, now);
        let d = sched.schedule(&req, &s.endpoints, 2, now, &mut rng).unwrap();
        assert_eq!(d.endpoints[0].id().0, 1);
        // No SLO stated: nothing is refused.
        set_full(&s.endpoints[1], 20, 50, now);
        req.headers.clear();
        assert!(sched.schedule(&req, &s.endpoints, 1, now, &mut rng).is_ok());
    }

    #[test]
    fn cheapest_placement_takes_the_cheapest_endpoint_that_meets_the_slo() {
        // 0: $8.22/h, 1: $1.01/h, 2: no price.
        let ds = Datastore::with_endpoints((0..3).map(|i| {
            let mut m = EndpointMeta::parse_addr(&format!("10.0.0.{i}:8000")).unwrap();
            if let Some(price) = ["8.22", "1.01"].get(i) {
                m.labels.insert(igw_core::endpoint::COST_PER_HOUR_LABEL.into(), (*price).into());
            }
            m
        }));
        let s = ds.snapshot();
        let now = Instant::from_millis(10);
        set_full(&s.endpoints[0], 0, 0, now);
        set_full(&s.endpoints[1], 0, 8, now);
        set_full(&s.endpoints[2], 0, 0, now);
        let sched = Scheduler::from_policy("igw-latency").unwrap();
        let mut rng = SmallRng::seed_from_u64(3);
        let mut req = InferenceRequest::text("m", "hi");
        req.goals.ttft_ms = Some(2_000);
        let pick = |req: &InferenceRequest, rng: &mut SmallRng| {
            sched
                .schedule(req, &s.endpoints, 3, now, rng)
                .unwrap()
                .endpoints
                .iter()
                .map(|e| e.id().0)
                .collect::<Vec<_>>()
        };
        assert_ne!(pick(&req, &mut rng)[0], 1, "fastest placement: an idle endpoint, not the busy cheap one");
        req.goals.placement = Placement::Cheapest;
        assert_eq!(
            pick(&req, &mut rng),
            vec![1, 0, 2],
            "the cheap one while it meets 2 s, then by price, unpriced last"
        );
        // A 50 ms objective the busy cheap endpoint is predicted to miss: the next price up.
        set_full(&s.endpoints[1], 20, 50, now);
        req.goals.ttft_ms = Some(50);
        assert_eq!(pick(&req, &mut rng)[0], 0);
        // Without any objective there is nothing to be cheap within: placement by latency.
        req.goals.ttft_ms = None;
        assert_ne!(pick(&req, &mut rng)[0], 1);
        // Price per token is price per hour times learned slowness: at $1.01/h but sixteen times
        // slower, endpoint 1 costs twice what endpoint 0 does per token (three 25% tiers up).
        let tiers = cost_tiers(
            &s.endpoints
                .iter()
                .map(|e| Candidate { endpoint: e.clone(), metrics: e.metrics(), unseen: 0, expected_wait: 0.0 })
                .collect::<Vec<_>>(),
            &[0usize, 1, 2].map(|i| Prediction {
                ttft_s: 0.1,
                tpot_s: 0.01,
                prefill_per_token_s: 1e-4,
                slowness: [1.0, 16.0, 1.0][i],
                ttft_overrun: 1.0,
                tpot_overrun: 1.0,
                features: Features::default(),
            }),
            &Slo { ttft_s: Some(1.0), tpot_s: None },
        );
        assert_eq!(tiers, vec![0.0, 3.0, UNRANKED_TIER], "{tiers:?}");
    }

    #[test]
    fn llm_d_sticks_to_a_cached_prefix_and_spreads_cold_requests() {
        let ds = pool(3);
        let s = ds.snapshot();
        let now = Instant::from_millis(10);
        for e in &s.endpoints {
            set(e, 0, 0.0, now);
        }
        let sched = Scheduler::from_policy("llm-d").unwrap();
        let mut rng = SmallRng::seed_from_u64(5);
        // Cold requests (distinct prompts): the no-hit LRU sends three to three endpoints.
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..3 {
            let req = InferenceRequest::text("m", &format!("{i} {}", "cold ".repeat(300)));
            let d = sched.schedule(&req, &s.endpoints, 1, now, &mut rng).unwrap();
            sched.on_routed(&d, &d.endpoints[0]);
            seen.insert(d.endpoints[0].id().0);
        }
        assert_eq!(seen.len(), 3, "{seen:?}");
        // A repeat of the first prompt is held to the endpoint that has it, even with the
        // queue there longer (the filter leaves nobody else to score).
        let req = InferenceRequest::text("m", &format!("0 {}", "cold ".repeat(300)));
        let d = sched.schedule(&req, &s.endpoints, 3, now, &mut rng).unwrap();
        let sticky = d.endpoints[0].clone();
        set(&sticky, 30, 0.0, now);
        let again = sched.schedule(&req, &s.endpoints, 3, now, &mut rng).unwrap();
        assert_eq!(again.endpoints.len(), 1, "only the sticky endpoint passes the filter");
        assert_eq!(again.endpoints[0].id(), sticky.id());
    }

    #[test]
    fn dynamo_kv_follows_the_overlap_until_load_outweighs_it() {
        let ds = pool(2);
        let s = ds.snapshot();
        let now = Instant::from_millis(10);
        let sched = Scheduler::from_policy("dynamo-kv").unwrap();
        let mut rng = SmallRng::seed_from_u64(7);
        let system = "shared ".repeat(600);
        let req = |q: u32| InferenceRequest::text("m", &format!("{system} q{q}"));
        let first = sched.schedule(&req(0), &s.endpoints[..1], 1, now, &mut rng).unwrap();
        sched.on_routed(&first, &s.endpoints[0]);
        sched.on_first_token(&first, &s.endpoints[0]);
        sched.on_finished(&first, &s.endpoints[0]);
        let d = sched.schedule(&req(1), &s.endpoints, 2, now, &mut rng).unwrap();
        assert_eq!(d.endpoints[0].id().0, 0, "overlap credit beats an empty replica while load is light");
        let mut held = Vec::new();
        for q in 2..6 {
            let d = sched.schedule(&req(q), &s.endpoints[..1], 1, now, &mut rng).unwrap();
            sched.on_routed(&d, &s.endpoints[0]);
            held.push(d);
        }
        let d = sched.schedule(&req(9), &s.endpoints, 2, now, &mut rng).unwrap();
        assert_eq!(d.endpoints[0].id().0, 1, "four prompts still prefilling there outweigh the overlap");
        for d in &held {
            sched.on_finished(d, &s.endpoints[0]);
        }
        let d = sched.schedule(&req(10), &s.endpoints, 2, now, &mut rng).unwrap();
        assert_eq!(d.endpoints[0].id().0, 0);
    }

    #[test]
    fn stale_endpoints_are_left_out_unless_all_are_stale() {
        let ds = pool(2);
        let s = ds.snapshot();
        let now = Instant::from_millis(5_000);
        set(&s.endpoints[0], 0, 0.0, Instant::from_millis(1_000)); // idle-looking but 4 s old
        set(&s.endpoints[1], 8, 0.7, now);
        let sched = Scheduler::from_policy("igw").unwrap();
        let mut rng = SmallRng::seed_from_u64(1);
        let d = sched.schedule(&InferenceRequest::text("m", "hi"), &s.endpoints, 2, now, &mut rng).unwrap();
        assert_eq!(d.endpoints.len(), 1);
        assert_eq!(d.endpoints[0].id().0, 1);
        set(&s.endpoints[1], 8, 0.7, Instant::from_millis(1_000));
        let d = sched.schedule(&InferenceRequest::text("m", "hi"), &s.endpoints, 2, now, &mut rng).unwrap();
        assert_eq!(d.endpoints.len(), 2, "fail open when everything is stale");
    }

    #[test]
    fn endpoints_known_not_to_serve_the_model_are_left_out() {
        let ds = pool(3);
        let s = ds.snapshot();
        let now = Instant::from_millis(10);
        let list = |ids: &[&str]| Some(Arc::new(ids.iter().map(|s| s.to_string()).collect()));
        // 0: idle, lists only the base model; 1: busy, has the adapter loaded; 2: no list known.
        for (e, waiting, served) in [(0, 0, list(&["base"])), (1, 9, list(&["base", "ad1"])), (2, 5, None)] {
            s.endpoints[e].set_metrics(EndpointMetrics {
                waiting,
                update_time: Some(now),
                served_models: served,
                ..Default::default()
            });
        }
        for policy in ["igw", "upstream-default", "round-robin", "random", "least-queue"] {
            let sched = Scheduler::from_policy(policy).unwrap();
            let mut rng = SmallRng::seed_from_u64(3);
            for _ in 0..20 {
                let d = sched.schedule(&InferenceRequest::text("ad1", "hi"), &s.endpoints, 3, now, &mut rng).unwrap();
                let ids: Vec<u32> = d.endpoints.iter().map(|e| e.id().0).collect();
                assert!(!ids.contains(&0), "{policy}: endpoint 0 would answer 404 for ad1: {ids:?}");
                assert!(ids.contains(&1), "{policy}: {ids:?}");
            }
        }
        // A model no list names (an alias, an engine that loads on demand): nobody is left out.
        let sched = Scheduler::from_policy("round-robin").unwrap();
        let mut rng = SmallRng::seed_from_u64(3);
        let d = sched.schedule(&InferenceRequest::text("other", "hi"), &s.endpoints, 3, now, &mut rng).unwrap();
        assert_eq!(d.endpoints.len(), 3);
    }

    #[test]
    fn prefix_affinity_follows_the_cached_endpoint() {
        let ds = pool(3);
        let s = ds.snapshot();
        let now = Instant::from_millis(10);
        for e in &s.endpoints {
            set(e, 0, 0.0, now);
        }
        let sched = Scheduler::from_policy("upstream-default").unwrap();
        let mut rng = SmallRng::seed_from_u64(9);
        let system = "You are a helpful assistant. ".repeat(20);
        let first = sched.schedule(&InferenceRequest::text("m", &system), &s.endpoints, 1, now, &mut rng).unwrap();
        sched.on_routed(&first, &first.endpoints[0]);
        for i in 0..10 {
            let req = InferenceRequest::text("m", &format!("{system} question {i}"));
            let d = sched.schedule(&req, &s.endpoints, 1, now, &mut rng).unwrap();
            assert_eq!(d.endpoints[0].id(), first.endpoints[0].id());
        }
    }

    #[test]
    fn shedding_only_below_zero_priority() {
        let ds = pool(2);
        let s = ds.snapshot();
        let now = Instant::from_millis(10);
        set(&s.endpoints[0], 10, 0.9, now);
        set(&s.endpoints[1], 6, 0.9, now);
        let sched = Scheduler::from_policy("igw").unwrap();
        let mut req = InferenceRequest::text("m", "hi");
        assert!(sched.admit(&req, &s.endpoints, now).is_ok());
        req.priority = -1;
        assert_eq!(sched.admit(&req, &s.endpoints, now), Err(ScheduleError::Saturated));
        set(&s.endpoints[0], 0, 0.1, now);
        set(&s.endpoints[1], 0, 0.1, now);
        assert!(sched.admit(&req, &s.endpoints, now).is_ok());
    }

    #[test]
    fn round_robin_and_random_cover_everyone() {
        let ds = pool(3);
        let s = ds.snapshot();
        let now = Instant::ZERO;
        let rr = Scheduler::from_policy("round-robin").unwrap();
        let mut rng = SmallRng::seed_from_u64(2);
        let picks: Vec<_> = (0..6)
            .map(|_| {
                rr.schedule(&InferenceRequest::text("m", "x"), &s.endpoints, 1, now, &mut rng).unwrap().endpoints[0]
                    .id()
                    .0
            })
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        let random = Scheduler::from_policy("random").unwrap();
        let mut seen = [false; 3];
        for _ in 0..100 {
            let d = random.schedule(&InferenceRequest::text("m", "x"), &s.endpoints, 2, now, &mut rng).unwrap();
            assert_ne!(d.endpoints[0].id(), d.endpoints[1].id());
            seen[d.endpoints[0].id().0 as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
        assert_eq!(
            random.schedule(&InferenceRequest::text("m", "x"), &[], 1, now, &mut rng).unwrap_err(),
            ScheduleError::NoCandidates
        );
    }
}
