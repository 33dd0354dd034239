//! Models of peer routers' policies (`../shared/spec/peers.md`), runnable as igw policies so the
//! simulator and `igw serve --policy` compare igw with them on one decision path.
//!
//! - `power-of-two` (SGLang and vLLM routers): two distinct candidates drawn uniformly, the one
//!   with fewer router-local in-flight requests first.
//! - `sglang-cache-aware` (SGLang router's `cache_aware`): load = router-local in-flight requests;
//!   when imbalanced (`max − min > 64` and `max > 1.5 × min`) the least-loaded worker; else the
//!   worker holding the longest cached prefix if it covers more than 30% of the prompt, else the
//!   least-loaded worker. The radix tree over characters is modelled by chained hashes of
//!   64-character chunks per worker; no eviction (the default cap, 2^26 characters per worker, is
//!   not reached by the benchmark runs).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use igw_core::{Endpoint, EndpointId};
use parking_lot::Mutex;
use rand::Rng;

/// Characters per block of the cache-aware model's approximate tree.
pub const CHUNK: usize = 64;

/// SGLang router's `cache_aware` policy with its defaults (`cache_threshold` 0.3,
/// `balance_abs_threshold` 64, `balance_rel_threshold` 1.5).
#[derive(Debug, Default)]
pub struct CacheAware {
    trees: Mutex<HashMap<EndpointId, HashSet<u64>>>,
}

impl CacheAware {
    /// An empty model.
    pub fn new() -> Self {
        Self::default()
    }

    /// Chained hashes of the 64-character chunks of `text`.
    pub fn chunks(text: &str) -> Vec<u64> {
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

    /// The index in `endpoints` of the worker for a prompt of `text_len` characters with
    /// `chunks` ([`Self::chunks`]). Empty `endpoints` give 0.
    pub fn pick(&self, text_len: usize, chunks: &[u64], endpoints: &[Arc<Endpoint>]) -> usize {
        let loads: Vec<u64> = endpoints.iter().map(|e| e.in_flight().requests()).collect();
        let (min_i, min) = loads.iter().copied().enumerate().min_by_key(|(_, l)| *l).unwrap_or((0, 0));
        let max = loads.iter().copied().max().unwrap_or(0);
        if max - min > 64 && (max as f64) > 1.5 * min as f64 {
            return min_i;
        }
        let trees = self.trees.lock();
        let mut best = (0usize, min_i);
        for (i, e) in endpoints.iter().enumerate() {
            let Some(tree) = trees.get(&e.id()) else { continue };
            let depth = chunks.iter().take_while(|h| tree.contains(h)).count();
            if depth > best.0 {
                best = (depth, i);
            }
        }
        let matched = (best.0 * CHUNK).min(text_len);
        if text_len == 0 || matched as f64 / text_len as f64 <= 0.3 { min_i } else { best.1 }
    }

    /// Records the prompt's chunks as cached on `endpoint` (the request was sent there).
    pub fn record(&self, endpoint: EndpointId, chunks: &[u64]) {
        self.trees.lock().entry(endpoint).or_default().extend(chunks.iter().copied());
    }

    /// Forgets endpoints for which `keep` is false.
    pub fn retain(&self, keep: impl Fn(EndpointId) -> bool) {
        self.trees.lock().retain(|id, _| keep(*id));
    }
}

/// Dynamo's KV router cost (`../shared/spec/kv-events-pd.md` §3.3) with its defaults (overlap
/// credit 1.0, prefill load scale 1, temperature 0: the argmin), over router-local load:
///
/// ```text
/// cost = max(active prefill blocks + prompt blocks − overlap blocks, 0)
///      + active decode blocks + prompt blocks
/// ```
/// A request's prompt blocks count as prefill load from routing to its first token (Dynamo's
/// `--router-track-prefill-tokens`) and as decode load until it ends; output blocks are not
/// tracked (`--router-track-output-blocks` is off by default). The overlap comes from igw's
/// approximate index, as Dynamo's approximate mode (`--no-router-kv-events`).
#[derive(Debug, Default)]
pub struct DynamoKv {
    load: Mutex<HashMap<EndpointId, (f64, f64)>>,
}

impl DynamoKv {
    /// The cost of sending a prompt of `prompt_blocks` blocks, `overlap` of them cached, to
    /// `endpoint`.
    pub fn cost(&self, endpoint: EndpointId, prompt_blocks: f64, overlap: f64) -> f64 {
        let (prefill, decode) = self.load.lock().get(&endpoint).copied().unwrap_or_default();
        (prefill + prompt_blocks - overlap).max(0.0) + decode + prompt_blocks
    }

    /// A request of `blocks` prompt blocks was sent to `endpoint`.
    pub fn add(&self, endpoint: EndpointId, blocks: f64) {
        let mut m = self.load.lock();
        let e = m.entry(endpoint).or_default();
        e.0 += blocks;
        e.1 += blocks;
    }

    /// Its first token arrived: its prompt no longer counts as prefill load.
    pub fn prefilled(&self, endpoint: EndpointId, blocks: f64) {
        if let Some(e) = self.load.lock().get_mut(&endpoint) {
            e.0 = (e.0 - blocks).max(0.0);
        }
    }

    /// It ended (or its attempt failed); `prefilling` when its first token never arrived.
    pub fn release(&self, endpoint: EndpointId, blocks: f64, prefilling: bool) {
        if let Some(e) = self.load.lock().get_mut(&endpoint) {
            if prefilling {
                e.0 = (e.0 - blocks).max(0.0);
            }
            e.1 = (e.1 - blocks).max(0.0);
        }
    }

    /// Forgets endpoints for which `keep` is false.
    pub fn retain(&self, keep: impl Fn(EndpointId) -> bool) {
        self.load.lock().retain(|id, _| keep(*id));
    }
}

/// Power of two choices over router-local in-flight requests: the index of the lighter of two
/// distinct uniformly drawn candidates (0 with fewer than two).
pub fn power_of_two<R: Rng + ?Sized>(endpoints: &[Arc<Endpoint>], rng: &mut R) -> usize {
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
    use rand::rngs::SmallRng;

    fn pool(n: usize) -> Vec<Arc<Endpoint>> {
        let ds = Datastore::with_endpoints(
            (0..n).map(|i| EndpointMeta::parse_addr(&format!("10.0.0.{}:8000", i + 1)).unwrap()),
        );
        ds.snapshot().endpoints.clone()
    }

    #[test]
    fn cache_aware_follows_the_prefix_until_imbalanced() {
        let eps = pool(3);
        let m = CacheAware::new();
        let sys = "s".repeat(2000);
        let pick = |text: &str| {
            let c = CacheAware::chunks(text);
            let i = m.pick(text.len(), &c, &eps);
            m.record(eps[i].id(), &c);
            i
        };
        let first = pick(&format!("{sys} question one"));
        eps[first].in_flight().add(1);
        assert_eq!(pick(&format!("{sys} question two")), first, "prefix hit wins while balanced");
        for _ in 0..100 {
            eps[first].in_flight().add(1);
        }
        assert_ne!(pick(&format!("{sys} question three")), first, "imbalance goes to the least loaded");
    }

    #[test]
    fn dynamo_cost_trades_overlap_against_load() {
        let d = DynamoKv::default();
        let (a, b) = (EndpointId(0), EndpointId(1));
        // 100-block prompt, 80 cached on a: a costs 20 + 100, b costs 100 + 100.
        assert_eq!(d.cost(a, 100.0, 80.0), 120.0);
        assert_eq!(d.cost(b, 100.0, 0.0), 200.0);
        d.add(a, 100.0);
        d.add(a, 100.0);
        assert_eq!(d.cost(a, 100.0, 80.0), 520.0, "two prompts still prefilling on a");
        d.prefilled(a, 100.0);
        d.prefilled(a, 100.0);
        assert_eq!(d.cost(a, 100.0, 80.0), 320.0, "prefilled: decode load only");
        d.release(a, 100.0, false);
        d.release(a, 100.0, false);
        assert_eq!(d.cost(a, 100.0, 80.0), 120.0);
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
