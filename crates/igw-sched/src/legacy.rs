//! The v0.3-era filter tree (`legacy-filter-tree` policy): the scheduler that produced the
//! Gateway API Inference Extension blog's published numbers (`../shared/spec/scheduler.md` §2.1,
//! with the v0.3 changes: LoRA queue threshold 128, soft affinity 0.999). The critical /
//! sheddable split is done by admission, not here.
//!
//! ```text
//! low-queue (q < 128) ── success → lora-affinity → least-queue → least-kv-cache
//!                     └─ failure → least-queue → lora-affinity → least-kv-cache
//! then a uniformly random pick among the survivors
//! ```
//! A filter "succeeds" when it keeps at least one endpoint; on failure the next filter gets the
//! filter's input unchanged.

use rand::Rng;

use crate::scoring::Candidate;

/// Queue threshold of the low-queue filter (v0.3: 128).
pub const LOW_QUEUE_THRESHOLD: u32 = 128;
/// Probability of keeping the affinity group when both groups exist (v0.3: 0.999).
pub const LORA_AFFINITY_THRESHOLD: f64 = 0.999;

/// Runs the tree; returns the survivors (never empty when `cands` is not).
pub fn filter_tree<R: Rng + ?Sized>(adapter: &str, cands: Vec<Candidate>, rng: &mut R) -> Vec<Candidate> {
    let low: Vec<Candidate> = cands.iter().filter(|c| c.metrics.waiting < LOW_QUEUE_THRESHOLD).cloned().collect();
    if !low.is_empty() {
        let s = or_input(lora_affinity(adapter, &low, rng), low);
        least_kv(least_queue(s))
    } else {
        let s = least_queue(cands);
        least_kv(or_input(lora_affinity(adapter, &s, rng), s))
    }
}

fn or_input(out: Vec<Candidate>, input: Vec<Candidate>) -> Vec<Candidate> {
    if out.is_empty() { input } else { out }
}

/// Soft LoRA affinity (v0.5 groups): "affinity" = adapter active or waiting; "available" = room
/// to load it. Both present → affinity with probability 0.999, else available.
pub fn lora_affinity<R: Rng + ?Sized>(adapter: &str, cands: &[Candidate], rng: &mut R) -> Vec<Candidate> {
    let affinity: Vec<Candidate> = cands.iter().filter(|c| c.metrics.has_adapter(adapter)).cloned().collect();
    let available: Vec<Candidate> = cands
        .iter()
        .filter(|c| {
            let m = &c.metrics;
            m.max_adapters.is_some_and(|max| m.active_adapters.len() + m.waiting_adapters.len() < max as usize)
        })
        .cloned()
        .collect();
    match (affinity.is_empty(), available.is_empty()) {
        (false, false) => {
            if rng.random_bool(LORA_AFFINITY_THRESHOLD) {
                affinity
            } else {
                available
            }
        }
        (false, true) => affinity,
        _ => available,
    }
}

/// Keeps the "first bucket" of queue lengths: `min ≤ q ≤ min + (max − min)/N` (integer division).
pub fn least_queue(cands: Vec<Candidate>) -> Vec<Candidate> {
    let n = cands.len() as u32;
    let (Some(lo), Some(hi)) =
        (cands.iter().map(|c| c.metrics.waiting).min(), cands.iter().map(|c| c.metrics.waiting).max())
    else {
        return cands;
    };
    let limit = lo + (hi - lo) / n.max(1);
    cands.into_iter().filter(|c| c.metrics.waiting <= limit).collect()
}

/// Keeps the first bucket of KV utilisation: `min ≤ kv ≤ min + (max − min)/N`.
pub fn least_kv(cands: Vec<Candidate>) -> Vec<Candidate> {
    let n = cands.len().max(1) as f64;
    let lo = cands.iter().map(|c| c.metrics.kv_usage).fold(f64::INFINITY, f64::min);
    let hi = cands.iter().map(|c| c.metrics.kv_usage).fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() {
        return cands;
    }
    let limit = lo + (hi - lo) / n;
    cands.into_iter().filter(|c| c.metrics.kv_usage <= limit).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use igw_core::{Endpoint, EndpointId, EndpointMeta, EndpointMetrics};
    use rand::SeedableRng;
    use rand::rngs::SmallRng;
    use std::sync::Arc;

    fn cand(id: u32, waiting: u32, kv: f64, adapters: &[&str]) -> Candidate {
        let ep = Endpoint::new(EndpointId(id), EndpointMeta::parse_addr(&format!("10.0.0.{id}:8000")).unwrap());
        let mut m = EndpointMetrics { waiting, kv_usage: kv, max_adapters: Some(2), ..Default::default() };
        m.active_adapters = adapters.iter().map(|s| s.to_string()).collect();
        Candidate { endpoint: Arc::new(ep), metrics: Arc::new(m), unseen: 0, expected_wait: 0.0 }
    }

    fn ids(v: &[Candidate]) -> Vec<u32> {
        v.iter().map(|c| c.endpoint.id().0).collect()
    }

    #[test]
    fn first_bucket_rules() {
        // N = 4, min 0, max 12 → keep q ≤ 3.
        let v =
            least_queue(vec![cand(0, 0, 0.0, &[]), cand(1, 3, 0.0, &[]), cand(2, 4, 0.0, &[]), cand(3, 12, 0.0, &[])]);
        assert_eq!(ids(&v), [0, 1]);
        let v = least_kv(vec![cand(0, 0, 0.1, &[]), cand(1, 0, 0.5, &[]), cand(2, 0, 0.9, &[])]);
        assert_eq!(ids(&v), [0], "limit 0.1 + 0.8/3");
    }

    #[test]
    fn low_queue_branch_prefers_the_adapter_then_load() {
        let mut rng = SmallRng::seed_from_u64(1);
        let c = vec![cand(0, 1, 0.2, &["sql", "x"]), cand(1, 0, 0.1, &[]), cand(2, 200, 0.0, &["sql"])];
        // 2 fails low-queue; 0 has the adapter (affinity) and 1 has room (available): affinity wins.
        assert_eq!(ids(&filter_tree("sql", c, &mut rng)), [0]);
    }

    #[test]
    fn overloaded_pool_takes_the_failure_branch() {
        let mut rng = SmallRng::seed_from_u64(1);
        let c = vec![cand(0, 300, 0.5, &[]), cand(1, 130, 0.9, &["a", "b"]), cand(2, 135, 0.2, &[])];
        // Nobody below 128 → least-queue keeps q ≤ 130 + (300-130)/3 = 186 → {1, 2}; lora: 2 has room.
        assert_eq!(ids(&filter_tree("sql", c, &mut rng)), [2]);
    }
}
