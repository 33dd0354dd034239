//! Routing policies by name for the simulator: igw's scheduler policies (igw's own, the upstream
//! default, round robin, random, and the peer models `sglang-cache-aware`, `power-of-two`,
//! `dynamo-kv` and `llm-d`, all
//! [`igw_sched::Scheduler`] policies that `igw serve --policy` runs too), EndpointPickerConfig
//! files, and `+flow` for flow control in front of them.

use std::time::Duration;

use igw_sched::Scheduler;
use igw_sched::flow::{FairnessPolicy, FlowConfig};

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
    "dynamo-kv",
    "igw-latency",
    "igw-latency+flow",
    "llm-d",
];

/// A routing policy ready to run one simulation.
#[derive(Debug)]
pub struct Policy {
    /// The name as given.
    pub name: String,
    /// The scheduler that decides.
    pub scheduler: Scheduler,
    /// Flow control in front of the scheduler, when enabled.
    pub flow: Option<FlowConfig>,
}

impl Policy {
    /// Builds the policy called `name` (a fresh one per simulation: schedulers keep state).
    pub fn build(name: &str, flow: &FlowSpec) -> Result<Self, BenchError> {
        let err = |m: String| BenchError::Policy(name.to_string(), m);
        let (base, with_flow) = match name.strip_suffix("+flow") {
            Some(b) => (b, true),
            None => (name, false),
        };
        let scheduler = match base {
            b if b.ends_with(".yaml") || b.ends_with(".yml") => {
                let text = std::fs::read_to_string(b).map_err(|e| err(e.to_string()))?;
                igw_sched::config::scheduler_from_yaml(&text).map_err(|e| err(e.to_string()))?
            }
            b => Scheduler::from_policy(b).map_err(|_| {
                err(format!("unknown policy (known: {}, or an EndpointPickerConfig .yaml)", POLICY_NAMES.join(", ")))
            })?,
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
        Ok(Policy { name: name.to_string(), scheduler, flow })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
}
