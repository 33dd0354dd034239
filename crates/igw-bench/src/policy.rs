//! Routing policies by name: igw's real schedulers (optionally behind the real flow controller),
//! EndpointPickerConfig files, and models of peer routers from spec/peers.md.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use igw_core::Endpoint;
use igw_sched::Scheduler;
use igw_sched::flow::{FairnessPolicy, FlowConfig};
use rand::Rng;
use rand::rngs::SmallRng;

use crate::error::BenchError;
use crate::scenario::FlowSpec;

/// Policy names accepted besides EndpointPickerConfig files (each scheduler name also takes `+flow`).
pub const POLICY_NAMES: &[&str] = &[
    "random",
    "round-robin",
    "least-queue",
    "igw",
    "igw-wait",
    "upstream-default",
    "legacy-filter-tree",
    "igw+flow",
    "igw-wait+flow",
    "upstream-default+flow",
    "sglang-cache-aware",
    "power-of-two",
];

/// Who picks the endpoint.
#[derive(Debug)]
pub enum Router {
    /// igw's scheduler (named policy or EndpointPickerConfig).
    Scheduler(Box<Scheduler>),
    /// SGLang router's `cache_aware` (model).
    SglangCacheAware(SglangCacheAware),
    /// SGLang / vLLM router's `power_of_two` over router-local in-flight counts (model).
    PowerOfTwo,
}

/// A routing policy ready to run one simulation.
#[derive(Debug)]
pub struct Policy {
    /// The name as given.
    pub name: String,
    /// The router.
    pub router: Router,
    /// Flow control in front of the router, when enabled.
    pub flow: Option<FlowConfig>,
    /// Whether the saturation seen by flow control counts requests sent since the last scrape
    /// (igw's policies: `igw`, `igw-wait`).
    pub blend_in_flight: bool,
}

impl Policy {
    /// Builds the policy called `name` (a fresh one per simulation: schedulers keep state).
    pub fn build(name: &str, flow: &FlowSpec) -> Result<Self, BenchError> {
        let err = |m: String| BenchError::Policy(name.to_string(), m);
        let (base, with_flow) = match name.strip_suffix("+flow") {
            Some(b) => (b, true),
            None => (name, false),
        };
        let router = match base {
            "sglang-cache-aware" => Router::SglangCacheAware(SglangCacheAware::new()),
            "power-of-two" => Router::PowerOfTwo,
            b if b.ends_with(".yaml") || b.ends_with(".yml") => {
                let text = std::fs::read_to_string(b).map_err(|e| err(e.to_string()))?;
                Router::Scheduler(Box::new(
                    igw_sched::config::scheduler_from_yaml(&text).map_err(|e| err(e.to_string()))?,
                ))
            }
            b => Router::Scheduler(Box::new(Scheduler::from_policy(b).map_err(|_| {
                err(format!("unknown policy (known: {}, or an EndpointPickerConfig .yaml)", POLICY_NAMES.join(", ")))
            })?)),
        };
        let flow = if with_flow {
            let mut cfg = if base == "upstream-default" { FlowConfig::upstream() } else { FlowConfig::igw() };
            cfg.default_ttl = Some(Duration::from_secs_f64(flow.ttl_s.unwrap_or(30.0).max(0.001)));
            if let Some([max, min]) = flow.holdback {
                cfg.usage_limit =
                    igw_sched::flow::UsageLimitPolicy::PriorityHoldback { max_ceiling: max, min_ceiling: min };
                cfg.validate().map_err(|e| err(format!("flow.holdback: {e}")))?;
            }
            if let Some(c) = flow.lower_band_max_concurrency {
                cfg.batch_holdback = Some(c);
                cfg.validate().map_err(|e| err(format!("flow.lower_band_max_concurrency: {e}")))?;
            }
            if let Some(f) = &flow.fairness {
                cfg.default_band.fairness =
                    FairnessPolicy::from_type(f).ok_or_else(|| err(format!("unknown fairness policy {f:?}")))?;
            }
            Some(cfg)
        } else {
            None
        };
        Ok(Policy { name: name.to_string(), router, flow, blend_in_flight: base.starts_with("igw") })
    }
}

/// Characters per block of the cache-aware model's approximate tree.
const CHUNK: usize = 64;

/// A model of SGLang router's `cache_aware` policy (spec/peers.md): load = router-local in-flight
/// requests; when imbalanced (`max − min > 64` and `max > 1.5 × min`) the least-loaded worker;
/// else the worker holding the longest cached prefix if it covers more than 30% of the prompt,
/// else the least-loaded worker. The radix tree over characters is modelled by chained hashes of
/// 64-character chunks per worker; no eviction (the default cap, 2^26 characters per worker, is
/// not reached by these runs).
#[derive(Debug, Default)]
pub struct SglangCacheAware {
    trees: Vec<HashSet<u64>>,
}

impl SglangCacheAware {
    /// Defaults of SGLang 0.4+ (`cache_threshold` 0.3, `balance_abs_threshold` 64, `balance_rel_threshold` 1.5).
    pub fn new() -> Self {
        Self::default()
    }

    fn chunks(text: &str) -> Vec<u64> {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        text.as_bytes()
            .chunks(CHUNK)
            .map(|c| {
                for b in c {
                    h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
                }
                h
            })
            .collect()
    }

    /// Picks a worker index for `text` and records the text as cached there.
    pub fn pick(&mut self, text: &str, endpoints: &[Arc<Endpoint>]) -> usize {
        if self.trees.len() < endpoints.len() {
            self.trees.resize_with(endpoints.len(), HashSet::new);
        }
        let loads: Vec<u64> = endpoints.iter().map(|e| e.in_flight().requests()).collect();
        let (min_i, min) = loads.iter().copied().enumerate().min_by_key(|(_, l)| *l).unwrap_or((0, 0));
        let max = loads.iter().copied().max().unwrap_or(0);
        let chunks = Self::chunks(text);
        let imbalanced = max - min > 64 && (max as f64) > 1.5 * min as f64;
        let choice = if imbalanced {
            min_i
        } else {
            let mut best = (0usize, min_i);
            for (i, tree) in self.trees.iter().enumerate().take(endpoints.len()) {
                let depth = chunks.iter().take_while(|h| tree.contains(h)).count();
                if depth > best.0 {
                    best = (depth, i);
                }
            }
            let matched = (best.0 * CHUNK).min(text.len());
            if text.is_empty() || matched as f64 / text.len() as f64 <= 0.3 { min_i } else { best.1 }
        };
        self.trees[choice].extend(chunks);
        choice
    }
}

/// Power of two choices over router-local in-flight requests.
pub fn power_of_two(endpoints: &[Arc<Endpoint>], rng: &mut SmallRng) -> usize {
    let n = endpoints.len();
    if n < 2 {
        return 0;
    }
    let a = rng.random_range(0..n);
    let mut b = rng.random_range(0..n - 1);
    if b >= a {
        b += 1;
    }
    if endpoints[b].in_flight().requests() < endpoints[a].in_flight().requests() { b } else { a }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use igw_core::{Datastore, EndpointMeta};
    use rand::SeedableRng;

    fn pool(n: usize) -> Vec<Arc<Endpoint>> {
        let ds = Datastore::with_endpoints(
            (0..n).map(|i| EndpointMeta::parse_addr(&format!("10.0.0.{}:8000", i + 1)).unwrap()),
        );
        ds.snapshot().endpoints.clone()
    }

    #[test]
    fn names_build_and_unknown_fails() {
        for n in POLICY_NAMES {
            let p = Policy::build(n, &FlowSpec::default()).unwrap();
            assert_eq!(p.flow.is_some(), n.ends_with("+flow"));
        }
        assert!(Policy::build("nope", &FlowSpec::default()).is_err());
        let rr = FlowSpec { fairness: Some("round-robin-fairness-policy".into()), ..Default::default() };
        let p = Policy::build("igw+flow", &rr).unwrap();
        assert_eq!(p.flow.unwrap().default_band.fairness, FairnessPolicy::RoundRobin);
    }

    #[test]
    fn cache_aware_follows_the_prefix_until_imbalanced() {
        let eps = pool(3);
        let mut m = SglangCacheAware::new();
        let sys = "s".repeat(2000);
        let first = m.pick(&format!("{sys} question one"), &eps);
        eps[first].in_flight().add(1);
        assert_eq!(m.pick(&format!("{sys} question two"), &eps), first, "prefix hit wins while balanced");
        for _ in 0..100 {
            eps[first].in_flight().add(1);
        }
        assert_ne!(m.pick(&format!("{sys} question three"), &eps), first, "imbalance goes to the least loaded");
    }

    #[test]
    fn power_of_two_prefers_the_lighter() {
        let eps = pool(2);
        for _ in 0..5 {
            eps[0].in_flight().add(1);
        }
        let mut rng = SmallRng::seed_from_u64(1);
        assert!((0..50).all(|_| power_of_two(&eps, &mut rng) == 1));
    }
}
