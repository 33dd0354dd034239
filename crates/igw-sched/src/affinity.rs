//! llm-d's prefix-affinity plugins, as its optimized baseline runs them (the `llm-d` policy):
//!
//! - `prefix-cache-affinity-filter` ([`AffinityFilter`]): keep only the "sticky" candidates, whose
//!   share of the prompt's blocks found cached is at least `affinityThreshold` (0.80), unless none
//!   is sticky, or a draw below `explorationProbability` (0) skips the filter, or the load gate
//!   opens: the best sticky candidate's estimated TTFT exceeds the best other's by more than
//!   `maxTTFTPenaltyMs` (18,000), a TTFT estimated as in-flight tokens over
//!   `peakPrefillThroughput` (15,928 tokens/s).
//! - `no-hit-lru-scorer` ([`NoHitLru`]): a request no candidate has any prefix of ("cold") is
//!   spread by least recent use: candidates that never received a cold request score highest
//!   (1, then lower in candidate order), then those that received one longest ago; the most
//!   recent scores lowest. A request with a hit scores 0.5 everywhere. The pick of a cold
//!   request becomes the most recently used.
//!
//! Sans-IO: the caller passes the match ratios, in-flight tokens and the random draw.

use std::collections::VecDeque;

use igw_core::EndpointId;

/// `prefix-cache-affinity-filter`'s parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AffinityFilter {
    /// `affinityThreshold`: a candidate is sticky at this match ratio or more; 0 disables.
    pub threshold: f64,
    /// `explorationProbability`: chance of skipping the filter.
    pub exploration: f64,
    /// `maxTTFTPenaltyMs`: how much slower (estimated TTFT) the best sticky candidate may be
    /// than the best other before the filter keeps everyone; 0 disables the gate.
    pub max_ttft_penalty_ms: f64,
    /// `peakPrefillThroughput`, tokens/s: in-flight tokens over this is the estimated TTFT.
    pub peak_prefill_tps: f64,
}

impl Default for AffinityFilter {
    fn default() -> Self {
        AffinityFilter { threshold: 0.80, exploration: 0.0, max_ttft_penalty_ms: 18_000.0, peak_prefill_tps: 15_928.0 }
    }
}

impl AffinityFilter {
    /// Checks the ranges llm-d enforces.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.threshold) {
            return Err(format!("affinityThreshold must be in [0, 1], not {}", self.threshold));
        }
        if !(0.0..=1.0).contains(&self.exploration) {
            return Err(format!("explorationProbability must be in [0, 1], not {}", self.exploration));
        }
        if !(self.max_ttft_penalty_ms >= 0.0 && self.max_ttft_penalty_ms.is_finite()) {
            return Err(format!("maxTTFTPenaltyMs must be >= 0, not {}", self.max_ttft_penalty_ms));
        }
        if !(self.peak_prefill_tps >= 0.0 && self.peak_prefill_tps.is_finite()) {
            return Err(format!("peakPrefillThroughput must be >= 0, not {}", self.peak_prefill_tps));
        }
        if self.max_ttft_penalty_ms > 0.0 && self.peak_prefill_tps == 0.0 {
            return Err("peakPrefillThroughput must be > 0 while the maxTTFTPenaltyMs gate is on".into());
        }
        Ok(())
    }

    /// Which candidates to keep, given each one's prefix match ratio and in-flight tokens and a
    /// uniform draw in [0, 1): `None` keeps them all.
    pub fn keep(&self, ratios: &[f64], in_flight_tokens: &[u64], draw: f64) -> Option<Vec<bool>> {
        if ratios.len() <= 1 || self.threshold <= 0.0 || draw < self.exploration {
            return None;
        }
        let sticky: Vec<bool> = ratios.iter().map(|r| *r >= self.threshold).collect();
        if !sticky.iter().any(|s| *s) {
            return None;
        }
        if self.max_ttft_penalty_ms > 0.0 && sticky.iter().any(|s| !*s) {
            let ttft_ms = |t: u64| t as f64 / self.peak_prefill_tps * 1000.0;
            let best = |want: bool| {
                sticky
                    .iter()
                    .zip(in_flight_tokens)
                    .filter(|(s, _)| **s == want)
                    .map(|(_, t)| ttft_ms(*t))
                    .fold(f64::INFINITY, f64::min)
            };
            if best(true) - best(false) > self.max_ttft_penalty_ms {
                return None;
            }
        }
        Some(sticky)
    }
}

/// `no-hit-lru-scorer`'s state: which endpoints received cold requests, oldest first, at most
/// `capacity` of them (`lruSize`, 1024).
#[derive(Debug, Clone, PartialEq)]
pub struct NoHitLru {
    capacity: usize,
    order: VecDeque<EndpointId>,
}

/// `lruSize`'s default.
pub const DEFAULT_LRU_SIZE: usize = 1024;

impl Default for NoHitLru {
    fn default() -> Self {
        Self::new(DEFAULT_LRU_SIZE)
    }
}

impl NoHitLru {
    /// An empty LRU of `capacity` endpoints (at least 1).
    pub fn new(capacity: usize) -> Self {
        NoHitLru { capacity: capacity.max(1), order: VecDeque::new() }
    }

    /// Scores `ids` into `out`: 0.5 each for a request with a hit (`cold` false); else the LRU
    /// ranks described in the module documentation.
    pub fn score(&self, ids: &[EndpointId], cold: bool, out: &mut [f64]) {
        if !cold {
            out.fill(0.5);
            return;
        }
        if ids.len() == 1 {
            out.fill(1.0);
            return;
        }
        let span = (ids.len() - 1) as f64;
        let never = ids.iter().filter(|id| !self.order.contains(id)).count();
        let mut next_never = 0usize;
        for (o, id) in out.iter_mut().zip(ids) {
            let rank = match self.order.iter().position(|x| x == id) {
                Some(pos) => never + pos,
                None => {
                    next_never += 1;
                    next_never - 1
                }
            };
            *o = (1.0 - rank as f64 / span).max(0.0);
        }
    }

    /// `id` received a cold request: it becomes the most recently used.
    pub fn touch(&mut self, id: EndpointId) {
        if let Some(pos) = self.order.iter().position(|x| *x == id) {
            self.order.remove(pos);
        }
        self.order.push_back(id);
        while self.order.len() > self.capacity {
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_keeps_sticky_candidates_until_the_load_gate_opens() {
        let f = AffinityFilter { max_ttft_penalty_ms: 100.0, peak_prefill_tps: 1000.0, ..Default::default() };
        assert_eq!(f.keep(&[0.9, 0.85, 0.1], &[0, 0, 0], 0.5), Some(vec![true, true, false]));
        assert_eq!(f.keep(&[0.5, 0.1], &[0, 0], 0.5), None, "nobody sticky: everyone");
        // 500 ms against 50 ms of estimated TTFT: 450 ms > 100 ms breaks stickiness.
        assert_eq!(f.keep(&[0.9, 0.1], &[500, 50], 0.5), None);
        assert_eq!(f.keep(&[0.9, 0.1], &[140, 50], 0.5), Some(vec![true, false]), "90 ms is within the gate");
        let explore = AffinityFilter { exploration: 0.3, ..f };
        assert_eq!(explore.keep(&[0.9, 0.1], &[0, 0], 0.2), None, "a draw under the probability skips it");
        assert_eq!(AffinityFilter { threshold: 0.0, ..f }.keep(&[0.9, 0.1], &[0, 0], 0.5), None);
        assert!(AffinityFilter { peak_prefill_tps: 0.0, ..f }.validate().is_err());
        assert!(AffinityFilter { threshold: 1.5, ..f }.validate().is_err());
        assert!(AffinityFilter::default().validate().is_ok());
    }

    #[test]
    fn cold_requests_go_round_the_least_recently_used() {
        let ids = [EndpointId(0), EndpointId(1), EndpointId(2)];
        let mut lru = NoHitLru::new(8);
        let mut out = [0.0; 3];
        lru.score(&ids, true, &mut out);
        assert_eq!(out, [1.0, 0.5, 0.0], "never used: candidate order");
        lru.touch(EndpointId(0));
        lru.score(&ids, true, &mut out);
        assert_eq!(out, [0.0, 1.0, 0.5], "never-used first, then the used one");
        lru.touch(EndpointId(1));
        lru.touch(EndpointId(2));
        lru.touch(EndpointId(0));
        lru.score(&ids, true, &mut out);
        assert_eq!(out, [0.0, 1.0, 0.5], "1 is the oldest, 0 the most recent");
        lru.score(&ids, false, &mut out);
        assert_eq!(out, [0.5; 3], "a hit: neutral");
        let mut small = NoHitLru::new(1);
        small.touch(EndpointId(0));
        small.touch(EndpointId(1));
        small.score(&ids, true, &mut out);
        assert_eq!(out, [1.0, 0.0, 0.5], "capacity 1 forgets 0");
    }
}
