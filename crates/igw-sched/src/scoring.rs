//! Scorers: each gives every candidate a score in [0, 1] (clamped by the scheduler), upstream's
//! formulas (`../shared/spec/scheduler.md` §2.3).

use std::sync::Arc;

use igw_core::{Endpoint, EndpointMetrics};

use crate::prefix::PrefixMatch;

/// One candidate as a decision sees it: the endpoint and the metrics loaded once.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The endpoint.
    pub endpoint: Arc<Endpoint>,
    /// Its metrics as last scraped.
    pub metrics: Arc<EndpointMetrics>,
    /// Requests the picker sent that the last scrape cannot have counted yet (see
    /// [`unseen_in_flight`]); 0 when in-flight blending is off.
    pub unseen: u32,
    /// Expected wait in seconds (or in tokens when no rate is known), from
    /// [`crate::wait::WaitTracker`]; 0 when the scheduler has no tracker.
    pub expected_wait: f64,
}

/// Requests the picker has in flight on an endpoint beyond what its last scrape reported as
/// running or waiting: `max(0, in_flight − (running + waiting))`. These were sent after the
/// scrape (or are still in transit) and will show up in the server's queue, so igw counts them
/// as waiting. This is what keeps a burst between two scrapes from landing on one replica.
pub fn unseen_in_flight(in_flight: u64, m: &EndpointMetrics) -> u32 {
    let seen = u64::from(m.running) + u64::from(m.waiting);
    u32::try_from(in_flight.saturating_sub(seen)).unwrap_or(u32::MAX)
}

/// What scorers read besides the candidates.
#[derive(Debug)]
pub struct ScoreInput<'a> {
    /// The request's target model (a LoRA adapter name when one is targeted).
    pub target_model: &'a str,
    /// Prefix-cache match of the request over the candidates, when the prefix scorer is on.
    pub prefix: Option<&'a PrefixMatch>,
    /// The pod (`namespace/name`) the request's session token names, if it sent a valid one.
    pub session: Option<&'a str>,
    /// The `no-hit-lru-scorer`'s state and whether the request is cold (no candidate holds any
    /// of its prefix), when that scorer is configured.
    pub no_hit: Option<(&'a crate::affinity::NoHitLru, bool)>,
}

/// A scorer type with its upstream name.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scorer {
    /// `queue-scorer`: `(maxQ − q)/(maxQ − minQ)`, all 1.0 when equal; q includes unseen
    /// in-flight requests when blending is on.
    Queue,
    /// `kv-cache-utilization-scorer`: `1 − kv`.
    KvCache,
    /// `running-requests-size-scorer`: min-max on the running count.
    RunningRequests,
    /// `prefix-cache-scorer`: matched blocks / total blocks.
    Prefix,
    /// `lora-affinity-scorer`: 1.0 active, 0.8 room to load, 0.6 waiting, else 0.
    LoraAffinity,
    /// `active-request-scorer`: `(max − n)/max` over the picker's in-flight requests; 1.0 when idle.
    ActiveRequest,
    /// `token-load-scorer`: `1 − min(tokens, T)/T` over in-flight tokens.
    TokenLoad {
        /// `queueThresholdTokens` (default 4,194,304).
        threshold: u64,
    },
    /// `load-aware-scorer` (llm-d): `0.5` for an empty queue, `0.5·(1 − q/t)` below the
    /// threshold, `0` at or above it (the maximum is deliberately 0.5); q includes unseen
    /// in-flight requests when blending is on.
    LoadAware {
        /// `threshold` (default 128).
        threshold: u32,
    },
    /// `session-affinity-scorer`: 1.0 for the pod the request's `x-session-token` names, else 0
    /// ([`crate::session`]).
    SessionAffinity,
    /// `expected-wait-scorer` (igw): min-max on the expected wait, i.e. the picker's in-flight
    /// work divided by the endpoint's learned service rate ([`crate::wait`]). Only through the
    /// `igw-wait` policy (it needs the scheduler's wait tracker); not an EndpointPickerConfig type.
    ExpectedWait,
    /// `no-hit-lru-scorer` (llm-d): cold requests spread by least recent use
    /// ([`crate::affinity::NoHitLru`]); 0.5 everywhere for a request with a hit.
    NoHitLru,
}

impl Scorer {
    /// Upstream's plugin type name.
    pub fn type_name(&self) -> &'static str {
        match self {
            Scorer::Queue => "queue-scorer",
            Scorer::KvCache => "kv-cache-utilization-scorer",
            Scorer::RunningRequests => "running-requests-size-scorer",
            Scorer::Prefix => "prefix-cache-scorer",
            Scorer::LoraAffinity => "lora-affinity-scorer",
            Scorer::ActiveRequest => "active-request-scorer",
            Scorer::TokenLoad { .. } => "token-load-scorer",
            Scorer::LoadAware { .. } => "load-aware-scorer",
            Scorer::SessionAffinity => "session-affinity-scorer",
            Scorer::ExpectedWait => "expected-wait-scorer",
            Scorer::NoHitLru => "no-hit-lru-scorer",
        }
    }

    /// Scores every candidate into `out` (same order, same length).
    pub fn score(&self, input: &ScoreInput<'_>, cands: &[Candidate], out: &mut [f64]) {
        match self {
            Scorer::Queue => min_max(cands, out, |c| f64::from(c.metrics.waiting) + f64::from(c.unseen)),
            Scorer::RunningRequests => min_max(cands, out, |c| f64::from(c.metrics.running)),
            Scorer::ExpectedWait => min_max(cands, out, |c| c.expected_wait),
            Scorer::NoHitLru => match input.no_hit {
                Some((lru, cold)) => {
                    let ids: Vec<igw_core::EndpointId> = cands.iter().map(|c| c.endpoint.id()).collect();
                    lru.score(&ids, cold, out);
                }
                None => out.fill(0.5),
            },
            Scorer::KvCache => {
                for (o, c) in out.iter_mut().zip(cands) {
                    *o = 1.0 - c.metrics.kv_usage;
                }
            }
            Scorer::Prefix => {
                for (o, c) in out.iter_mut().zip(cands) {
                    *o = input.prefix.map_or(0.0, |p| p.ratio(c.endpoint.id()));
                }
            }
            Scorer::LoraAffinity => {
                for (o, c) in out.iter_mut().zip(cands) {
                    *o = lora_affinity(&c.metrics, input.target_model);
                }
            }
            Scorer::ActiveRequest => {
                let max = cands.iter().map(|c| c.endpoint.in_flight().requests()).max().unwrap_or(0);
                for (o, c) in out.iter_mut().zip(cands) {
                    let n = c.endpoint.in_flight().requests();
                    *o = if n == 0 || max == 0 { 1.0 } else { (max - n) as f64 / max as f64 };
                }
            }
            Scorer::SessionAffinity => {
                for (o, c) in out.iter_mut().zip(cands) {
                    let m = c.endpoint.meta();
                    *o = match input.session.and_then(|s| s.split_once('/')) {
                        Some((ns, pod)) if ns == m.namespace && pod == m.pod => 1.0,
                        _ => 0.0,
                    };
                }
            }
            Scorer::LoadAware { threshold } => {
                let t = f64::from((*threshold).max(1));
                for (o, c) in out.iter_mut().zip(cands) {
                    let q = f64::from(c.metrics.waiting) + f64::from(c.unseen);
                    *o = if q <= 0.0 {
                        0.5
                    } else if q >= t {
                        0.0
                    } else {
                        0.5 * (1.0 - q / t)
                    };
                }
            }
            Scorer::TokenLoad { threshold } => {
                let t = (*threshold).max(1);
                for (o, c) in out.iter_mut().zip(cands) {
                    let tokens = c.endpoint.in_flight().tokens();
                    *o = 1.0 - tokens.min(t) as f64 / t as f64;
                }
            }
        }
    }
}

/// `(max − v)/(max − min)`: lower is better; every candidate scores 1.0 when all are equal.
fn min_max(cands: &[Candidate], out: &mut [f64], value: impl Fn(&Candidate) -> f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for c in cands {
        let v = value(c);
        lo = lo.min(v);
        hi = hi.max(v);
    }
    for (o, c) in out.iter_mut().zip(cands) {
        *o = if hi > lo { (hi - value(c)) / (hi - lo) } else { 1.0 };
    }
}

/// Upstream's LoRA affinity score for one endpoint; an adapter the endpoint lists as loaded
/// (`/v1/models`) scores as an active one, since serving it needs no load.
pub fn lora_affinity(m: &EndpointMetrics, adapter: &str) -> f64 {
    if m.active_adapters.contains(adapter) || m.serves(adapter) == Some(true) {
        1.0
    } else if m.max_adapters.is_some_and(|max| (m.active_adapters.len() + m.waiting_adapters.len()) < max as usize) {
        0.8
    } else if m.waiting_adapters.contains(adapter) {
        0.6
    } else {
        0.0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use igw_core::{EndpointId, EndpointMeta};

    fn cand(id: u32, waiting: u32, running: u32, kv: f64) -> Candidate {
        let ep = Endpoint::new(EndpointId(id), EndpointMeta::parse_addr(&format!("10.0.0.{id}:8000")).unwrap());
        let m = EndpointMetrics { waiting, running, kv_usage: kv, ..Default::default() };
        Candidate { endpoint: Arc::new(ep), metrics: Arc::new(m), unseen: 0, expected_wait: 0.0 }
    }

    fn scores(s: Scorer, cands: &[Candidate]) -> Vec<f64> {
        let mut out = vec![0.0; cands.len()];
        s.score(&ScoreInput { target_model: "m", prefix: None, session: None, no_hit: None }, cands, &mut out);
        out
    }

    #[test]
    fn queue_min_max_and_equal_case() {
        let c = [cand(1, 0, 0, 0.0), cand(2, 5, 0, 0.0), cand(3, 10, 0, 0.0)];
        assert_eq!(scores(Scorer::Queue, &c), vec![1.0, 0.5, 0.0]);
        let eq = [cand(1, 3, 0, 0.0), cand(2, 3, 0, 0.0)];
        assert_eq!(scores(Scorer::Queue, &eq), vec![1.0, 1.0]);
        let mut blended = [cand(1, 0, 0, 0.0), cand(2, 0, 0, 0.0)];
        blended[0].unseen = 4;
        assert_eq!(scores(Scorer::Queue, &blended), vec![0.0, 1.0], "unseen in-flight counts as waiting");
    }

    #[test]
    fn kv_running_lora_tokens() {
        let c = [cand(1, 0, 2, 0.25), cand(2, 0, 4, 1.0)];
        assert_eq!(scores(Scorer::KvCache, &c), vec![0.75, 0.0]);
        assert_eq!(scores(Scorer::RunningRequests, &c), vec![1.0, 0.0]);
        let mut m = EndpointMetrics { max_adapters: Some(2), ..Default::default() };
        assert_eq!(lora_affinity(&m, "a"), 0.8);
        m.active_adapters.insert("a".into());
        assert_eq!(lora_affinity(&m, "a"), 1.0);
        m.active_adapters.insert("b".into());
        m.waiting_adapters.insert("c".into());
        assert_eq!(lora_affinity(&m, "c"), 0.6);
        assert_eq!(lora_affinity(&m, "d"), 0.0);
        m.served_models = Some(Arc::new(["base".to_owned(), "d".to_owned()].into_iter().collect()));
        assert_eq!(lora_affinity(&m, "d"), 1.0, "listed as loaded: as good as active");
        c[0].endpoint.in_flight().add(1_000);
        let t = scores(Scorer::TokenLoad { threshold: 4_000 }, &c);
        assert_eq!(t, vec![0.75, 1.0]);
        assert_eq!(scores(Scorer::ActiveRequest, &c), vec![0.0, 1.0]);
    }

    #[test]
    fn session_affinity_names_one_pod() {
        let c = [cand(1, 0, 0, 0.0), cand(2, 0, 0, 0.0)];
        let m = c[1].endpoint.meta();
        let who = format!("{}/{}", m.namespace, m.pod);
        let mut out = vec![0.0; 2];
        let input = ScoreInput { target_model: "m", prefix: None, session: Some(&who), no_hit: None };
        Scorer::SessionAffinity.score(&input, &c, &mut out);
        assert_eq!(out, vec![0.0, 1.0]);
        assert_eq!(scores(Scorer::SessionAffinity, &c), vec![0.0, 0.0], "no token, no preference");
    }

    #[test]
    fn load_aware_tops_out_at_half() {
        let c = [cand(1, 0, 0, 0.0), cand(2, 32, 0, 0.0), cand(3, 128, 0, 0.0), cand(4, 500, 0, 0.0)];
        assert_eq!(scores(Scorer::LoadAware { threshold: 128 }, &c), vec![0.5, 0.375, 0.0, 0.0]);
    }

    #[test]
    fn unseen_in_flight_formula() {
        let m = EndpointMetrics { waiting: 2, running: 3, ..Default::default() };
        assert_eq!(unseen_in_flight(4, &m), 0);
        assert_eq!(unseen_in_flight(9, &m), 4);
    }
}
