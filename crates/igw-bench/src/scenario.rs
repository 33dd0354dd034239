//! Scenarios as data: a strict YAML schema (unknown fields are errors naming the line) and the
//! built-in scenarios, which are YAML files under `scenarios/` compiled in.

use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand_distr::{Distribution, Normal};
use serde::Deserialize;

use crate::error::BenchError;
use crate::workload::{Process, WorkloadSpec};

/// Built-in scenarios: (name, YAML).
pub const BUILTINS: &[(&str, &str)] = &[
    ("blog", include_str!("../scenarios/blog.yaml")),
    ("blog-sheddable", include_str!("../scenarios/blog-sheddable.yaml")),
    ("heterogeneous", include_str!("../scenarios/heterogeneous.yaml")),
    ("shared-prefix", include_str!("../scenarios/shared-prefix.yaml")),
    ("multi-lora", include_str!("../scenarios/multi-lora.yaml")),
    ("priority-overload", include_str!("../scenarios/priority-overload.yaml")),
    ("fairness", include_str!("../scenarios/fairness.yaml")),
    ("tiny-shared-prefix", include_str!("../scenarios/tiny-shared-prefix.yaml")),
    ("hot-prefix-1", include_str!("../scenarios/hot-prefix-1.yaml")),
    ("hot-prefix-2", include_str!("../scenarios/hot-prefix-2.yaml")),
    ("hot-prefix-5", include_str!("../scenarios/hot-prefix-5.yaml")),
    ("heterogeneous-speeds", include_str!("../scenarios/heterogeneous-speeds.yaml")),
    ("heterogeneous-cost", include_str!("../scenarios/heterogeneous-cost.yaml")),
];

/// One benchmark scenario.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name (shown in reports).
    pub name: String,
    /// What it models.
    #[serde(default)]
    pub description: String,
    /// The replicas.
    pub fleet: FleetSpec,
    /// Request lengths, prefixes, adapters.
    pub workload: WorkloadSpec,
    /// Arrival process and the QPS ladder.
    pub arrivals: ArrivalsSpec,
    /// Requests/s the fleet sustains; measured from the fleet and workload when left out.
    #[serde(default)]
    pub capacity_qps: Option<f64>,
    /// Traffic classes; none = one class `default` with priority 0.
    #[serde(default)]
    pub classes: Vec<ClassSpec>,
    /// Metric scrape period per replica (ms), as the EPP's `--refresh-metrics-interval`.
    #[serde(default = "default_scrape")]
    pub scrape_interval_ms: u64,
    /// The client model.
    #[serde(default)]
    pub client: ClientSpec,
    /// Flow-control settings for the `+flow` policies.
    #[serde(default)]
    pub flow: FlowSpec,
    /// Policies to compare (names, `NAME+flow`, or EndpointPickerConfig file paths).
    pub policies: Vec<String>,
}

fn default_scrape() -> u64 {
    50
}

/// The `fleet` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSpec {
    /// Number of replicas.
    pub replicas: usize,
    /// Engine profile (`llama2-7b-h100`, `llama2-70b-tp4-h100`, `tiny-llama-cpu`).
    #[serde(default = "default_profile")]
    pub profile: String,
    /// Profile overrides.
    #[serde(default)]
    pub overrides: Overrides,
    /// Per-replica speed factors drawn from N(1, σ) (clamped to [0.5, 1.5]).
    #[serde(default)]
    pub speed_sigma: f64,
    /// Explicit speed factors for the first replicas (override the drawn ones).
    #[serde(default)]
    pub speed_factors: Vec<f64>,
    /// The last `count` replicas run at `factor` of their speed.
    #[serde(default)]
    pub slow: Option<SlowSpec>,
    /// Per-step multiplicative jitter σ.
    #[serde(default)]
    pub jitter_sigma: f64,
    /// LoRA slots per replica (0 = LoRA disabled).
    #[serde(default)]
    pub max_loras: u32,
    /// Wall-clock scale for real-time runs; the virtual-time runner ignores it.
    #[serde(default)]
    pub time_scale: Option<f64>,
    /// Seed of speed factors and jitter.
    #[serde(default = "one")]
    pub seed: u64,
    /// Each replica's price per hour (the `igw.dev/cost-per-hour` label its endpoint carries);
    /// empty = unpriced. Reports then show the cost per million output tokens.
    #[serde(default)]
    pub costs_per_hour: Vec<f64>,
}

fn default_profile() -> String {
    "llama2-7b-h100".into()
}
fn one() -> u64 {
    1
}

/// `fleet.slow`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlowSpec {
    /// How many replicas (the last ones).
    pub count: usize,
    /// Their speed factor (0.7 = 30% slower).
    pub factor: f64,
}

/// `fleet.overrides`: the engine profile's knobs.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Overrides {
    pub max_num_seqs: Option<u32>,
    pub max_num_batched_tokens: Option<u32>,
    pub num_gpu_blocks: Option<u32>,
    pub block_size: Option<u32>,
    pub max_model_len: Option<u32>,
    pub lora_load_ms: Option<f64>,
}

/// The `arrivals` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArrivalsSpec {
    /// Poisson or constant.
    #[serde(default)]
    pub process: Process,
    /// Offered QPS per step.
    #[serde(default)]
    pub qps: Vec<f64>,
    /// Offered load per step as multiples of `capacity_qps` (used when `qps` is empty).
    #[serde(default)]
    pub load_factors: Vec<f64>,
    /// Seconds of arrivals per step.
    pub duration_s: f64,
    /// Seed of arrivals and classes.
    #[serde(default = "one")]
    pub seed: u64,
}

/// One traffic class.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassSpec {
    /// Name (a key of `by_class`).
    pub name: String,
    /// InferenceObjective priority (< 0 is sheddable).
    #[serde(default)]
    pub priority: i32,
    /// `x-gateway-inference-fairness-id` (default: the class name).
    #[serde(default)]
    pub fairness_id: Option<String>,
    /// Fraction of the offered load.
    pub fraction: f64,
    /// The class's latency objective (its InferenceObjective's `slo`); reports then show the
    /// fraction of its requests that met it.
    #[serde(default)]
    pub slo: Option<ClassSlo>,
    /// Its placement, `fastest` (default) or `cheapest` (needs `slo`).
    #[serde(default)]
    pub placement: Option<String>,
}

/// A class's latency objective, milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ClassSlo {
    /// Time to first token.
    #[serde(default)]
    pub ttft_ms: Option<u32>,
    /// Time per output token after the first.
    #[serde(default)]
    pub tpot_ms: Option<u32>,
}

impl ClassSpec {
    /// The InferenceObjective goals the class's requests carry.
    pub fn goals(&self) -> igw_core::ObjectiveGoals {
        let slo = self.slo.unwrap_or_default();
        igw_core::ObjectiveGoals {
            ttft_ms: slo.ttft_ms,
            tpot_ms: slo.tpot_ms,
            placement: self.placement.as_deref().and_then(igw_core::Placement::parse).unwrap_or_default(),
        }
    }
}

/// Client behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ClientMode {
    /// Open loop; throughput measured over the arrival window.
    Open,
    /// The blog's LPG: `qps × duration` prompts, then drain; throughput over arrivals + drain.
    #[default]
    Lpg,
}

/// The `client` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSpec {
    /// `open` or `lpg`.
    #[serde(default)]
    pub mode: ClientMode,
    /// A request not finished this long after it was sent is abandoned and counted as a timeout.
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
    /// Streaming (TTFT and ITL are measured either way in virtual time).
    #[serde(default = "yes")]
    pub streaming: bool,
}

fn default_timeout() -> f64 {
    600.0
}
fn yes() -> bool {
    true
}

impl Default for ClientSpec {
    fn default() -> Self {
        ClientSpec { mode: ClientMode::Lpg, timeout_s: default_timeout(), streaming: true }
    }
}

/// The `flow` section (used by `+flow` policies).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowSpec {
    /// Queue TTL in seconds (→ 503); default 30.
    #[serde(default)]
    pub ttl_s: Option<f64>,
    /// Fairness plugin type (`vtc-fairness-policy`, `round-robin-fairness-policy`,
    /// `global-strict-fairness-policy`); default: the policy's own.
    #[serde(default)]
    pub fairness: Option<String>,
    /// `[max, min]`: upstream's priority-holdback usage limit instead of the static ceiling 1.0 —
    /// the highest band is released up to saturation `max`, the lowest up to `min`, the others in
    /// between, keeping headroom for higher priorities at the cost of throughput.
    #[serde(default)]
    pub holdback: Option<[f64; 2]>,
    /// In-flight requests per replica at which every band below the highest stops being dispatched
    /// (the flow controller's `lowerBandMaxConcurrency`); the highest band still fills up to the
    /// saturation detector's limit. Default: none.
    #[serde(default)]
    pub lower_band_max_concurrency: Option<f64>,
}

impl Scenario {
    /// Parses and validates a scenario file.
    pub fn from_yaml(text: &str) -> Result<Self, BenchError> {
        let s: Scenario = serde_saphyr::from_str(text).map_err(|e| BenchError::Scenario(e.to_string()))?;
        s.validate()?;
        Ok(s)
    }

    /// A built-in scenario by name.
    pub fn builtin(name: &str) -> Result<Self, BenchError> {
        let (_, text) = BUILTINS.iter().find(|(n, _)| *n == name).ok_or_else(|| {
            BenchError::UnknownScenario(name.into(), BUILTINS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "))
        })?;
        Self::from_yaml(text)
    }

    fn validate(&self) -> Result<(), BenchError> {
        let bad = |m: String| Err(BenchError::Scenario(m));
        if self.fleet.replicas == 0 {
            return bad("fleet.replicas must be positive".into());
        }
        if self.arrivals.qps.is_empty() && self.arrivals.load_factors.is_empty() {
            return bad("arrivals needs qps or load_factors".into());
        }
        if self.arrivals.duration_s.is_nan() || self.arrivals.duration_s <= 0.0 {
            return bad("arrivals.duration_s must be positive".into());
        }
        if self.policies.is_empty() {
            return bad("policies must name at least one policy".into());
        }
        if !self.classes.is_empty() {
            let sum: f64 = self.classes.iter().map(|c| c.fraction).sum();
            if (sum - 1.0).abs() > 1e-6 || self.classes.iter().any(|c| c.fraction < 0.0) {
                return bad(format!("class fractions must be non-negative and sum to 1 (they sum to {sum})"));
            }
        }
        for c in &self.classes {
            let goals = c.goals();
            if let Some(p) = &c.placement
                && igw_core::Placement::parse(p).is_none()
            {
                return bad(format!("class {}: placement {p:?} is neither fastest nor cheapest", c.name));
            }
            if [goals.ttft_ms, goals.tpot_ms].iter().flatten().any(|ms| !(1..=3_600_000).contains(ms)) {
                return bad(format!("class {}: slo values must be from 1 to 3600000 ms", c.name));
            }
            if goals.placement == igw_core::Placement::Cheapest && !goals.has_slo() {
                return bad(format!("class {}: placement cheapest needs an slo", c.name));
            }
        }
        let costs = &self.fleet.costs_per_hour;
        if !costs.is_empty()
            && (costs.len() != self.fleet.replicas || costs.iter().any(|c| !(c.is_finite() && *c > 0.0)))
        {
            return bad(format!(
                "fleet.costs_per_hour needs one positive price per replica ({} given for {})",
                costs.len(),
                self.fleet.replicas
            ));
        }
        if self.scrape_interval_ms == 0 || self.client.timeout_s.is_nan() || self.client.timeout_s <= 0.0 {
            return bad("scrape_interval_ms and client.timeout_s must be positive".into());
        }
        Ok(())
    }

    /// Sets every seed (arrivals, workload, fleet) to `seed`, to repeat the scenario with other
    /// draws.
    pub fn reseed(&mut self, seed: u64) {
        self.arrivals.seed = seed;
        self.fleet.seed = seed;
        match &mut self.workload {
            WorkloadSpec::LpgFit { seed: s }
            | WorkloadSpec::Sharegpt { seed: s, .. }
            | WorkloadSpec::SharedPrefix { seed: s, .. }
            | WorkloadSpec::HotPrefix { seed: s, .. }
            | WorkloadSpec::MultiLora { seed: s, .. } => *s = seed,
        }
    }

    /// The classes, or the single default class.
    pub fn classes(&self) -> Vec<ClassSpec> {
        if self.classes.is_empty() {
            vec![ClassSpec {
                name: "default".into(),
                priority: 0,
                fairness_id: None,
                fraction: 1.0,
                slo: None,
                placement: None,
            }]
        } else {
            self.classes.clone()
        }
    }

    /// Each replica's speed factor.
    pub fn speed_factors(&self) -> Vec<f64> {
        let f = &self.fleet;
        let mut rng = SmallRng::seed_from_u64(f.seed ^ 0x5bd1_e995);
        let normal = Normal::new(1.0, f.speed_sigma.max(0.0)).ok();
        let mut v: Vec<f64> = (0..f.replicas)
            .map(|_| match &normal {
                Some(n) if f.speed_sigma > 0.0 => n.sample(&mut rng).clamp(0.5, 1.5),
                _ => 1.0,
            })
            .collect();
        for (s, e) in v.iter_mut().zip(&f.speed_factors) {
            *s = *e;
        }
        if let Some(slow) = f.slow {
            let n = v.len();
            for s in v.iter_mut().skip(n.saturating_sub(slow.count)) {
                *s *= slow.factor;
            }
        }
        v
    }

    /// The engine profile with overrides applied.
    pub fn profile(&self) -> Result<igw_sim::Profile, BenchError> {
        let mut p = igw_sim::Profile::by_name(&self.fleet.profile)?;
        let o = &self.fleet.overrides;
        p.apply(&igw_sim::ProfileOverrides {
            max_num_seqs: o.max_num_seqs,
            max_num_batched_tokens: o.max_num_batched_tokens,
            num_gpu_blocks: o.num_gpu_blocks,
            block_size: o.block_size,
            max_model_len: o.max_model_len,
            lora_load_ms: o.lora_load_ms,
            ..Default::default()
        })?;
        Ok(p)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_parses() {
        for (name, _) in BUILTINS {
            let s = Scenario::builtin(name).unwrap();
            assert_eq!(&s.name, name);
        }
        assert!(matches!(Scenario::builtin("nope"), Err(BenchError::UnknownScenario(..))));
    }

    #[test]
    fn unknown_field_is_an_error_naming_the_line() {
        let text = "name: x\nfleet:\n  replicas: 2\n  replica_count: 3\nworkload: {kind: lpg-fit}\narrivals: {qps: [1], duration_s: 1}\npolicies: [random]\n";
        let e = Scenario::from_yaml(text).unwrap_err().to_string();
        assert!(e.contains("replica_count") && e.contains('4'), "{e}");
        let bad_classes = "name: x\nfleet: {replicas: 1}\nworkload: {kind: lpg-fit}\narrivals: {qps: [1], duration_s: 1}\nclasses: [{name: a, fraction: 0.5}]\npolicies: [random]\n";
        assert!(Scenario::from_yaml(bad_classes).unwrap_err().to_string().contains("sum to 1"));
    }

    #[test]
    fn heterogeneous_fleet_has_two_slow_replicas() {
        let s = Scenario::builtin("heterogeneous").unwrap();
        let v = s.speed_factors();
        assert_eq!(v.len(), 10);
        assert!(v[8] < 0.8 && v[9] < 0.8 && v[..8].iter().all(|x| *x > 0.8), "{v:?}");
    }
}
