//! Expected wait per endpoint, sans-IO: the work the picker has sent to an endpoint and not yet
//! seen finish (in estimated tokens), divided by the rate at which that endpoint has been
//! finishing work while it was backlogged.
//!
//! Two signals the queue scorer does not use:
//! - **Work, not counts.** Request sizes are heavy-tailed (ShareGPT), so equal waiting counts can
//!   hide very unequal waiting work. The picker knows each request's estimated tokens (prompt plus
//!   `max_tokens`) from [`crate::Decision::tokens`]; requests the last scrape reports beyond the
//!   picker's own (another gateway's) count at the pool's mean size.
//! - **Speed.** Replicas differ (an older GPU, a noisy neighbour). The tracker learns each
//!   endpoint's service rate from the tokens of its completions over time, but only over intervals
//!   in which the endpoint had requests waiting at both ends (so the rate is what it can do, not
//!   what it was sent). Until an endpoint has a sample it is assumed as fast as the learned mean.
//!
//! Time is passed in; nothing here reads a clock.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use igw_core::{EndpointId, Instant};

use crate::scoring::Candidate;

/// How the tracker learns service rates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WaitConfig {
    /// Shortest interval over which one rate sample is taken.
    pub sample_interval: Duration,
    /// Weight of a new sample in the moving average (0..=1).
    pub alpha: f64,
    /// Learn per-endpoint speed; when false every endpoint counts as equally fast (work only).
    pub learn_speed: bool,
}

impl Default for WaitConfig {
    fn default() -> Self {
        WaitConfig { sample_interval: Duration::from_secs(5), alpha: 0.2, learn_speed: true }
    }
}

#[derive(Debug, Default)]
struct EndpointRate {
    /// Estimated tokens of the requests finished so far.
    finished_tokens: u64,
    /// Start of the current sample: time, finished tokens then, and whether the endpoint had
    /// requests waiting then.
    sample: Option<(Instant, u64, bool)>,
    /// Learned rate, estimated tokens per second.
    rate: Option<f64>,
}

/// Per-endpoint finished work and learned rates. Shared by all decisions (one short lock each).
#[derive(Debug, Default)]
pub struct WaitTracker {
    config: WaitConfig,
    endpoints: Mutex<HashMap<EndpointId, EndpointRate>>,
}

impl WaitTracker {
    /// A tracker with `config`.
    pub fn new(config: WaitConfig) -> Self {
        WaitTracker { config, endpoints: Mutex::default() }
    }

    /// The configuration.
    pub fn config(&self) -> WaitConfig {
        self.config
    }

    /// Records that a request of `tokens` estimated tokens finished on `endpoint`.
    pub fn on_finished(&self, endpoint: EndpointId, tokens: u64) {
        let mut map = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(endpoint).or_default().finished_tokens += tokens;
    }

    /// Forgets endpoints no longer in the pool.
    pub fn retain(&self, keep: impl Fn(EndpointId) -> bool) {
        self.endpoints.lock().unwrap_or_else(|p| p.into_inner()).retain(|id, _| keep(*id));
    }

    /// The learned rate of `endpoint` in estimated tokens per second, if any sample was taken.
    pub fn rate(&self, endpoint: EndpointId) -> Option<f64> {
        let map = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&endpoint).and_then(|e| e.rate)
    }

    /// Updates the rates at `now` from the candidates' current state and writes each candidate's
    /// expected wait in seconds (work ÷ rate; work alone when no rate is known anywhere).
    pub fn estimate(&self, cands: &mut [Candidate], now: Instant) {
        let mut map = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        if self.config.learn_speed {
            for c in cands.iter() {
                let e = map.entry(c.endpoint.id()).or_default();
                let backlogged = c.metrics.waiting > 0;
                match e.sample {
                    Some((t0, done0, was_backlogged)) => {
                        let dt = now.saturating_duration_since(t0);
                        if dt >= self.config.sample_interval {
                            if was_backlogged && backlogged {
                                let r = (e.finished_tokens - done0) as f64 / dt.as_secs_f64();
                                let a = self.config.alpha.clamp(0.0, 1.0);
                                e.rate = Some(e.rate.map_or(r, |old| (1.0 - a) * old + a * r));
                            }
                            e.sample = Some((now, e.finished_tokens, backlogged));
                        } else if !backlogged {
                            e.sample = Some((t0, done0, false));
                        }
                    }
                    None => e.sample = Some((now, e.finished_tokens, backlogged)),
                }
            }
        }
        let (mut sum, mut n) = (0.0, 0usize);
        for c in cands.iter() {
            if let Some(r) = map.get(&c.endpoint.id()).and_then(|e| e.rate).filter(|r| *r > 0.0) {
                sum += r;
                n += 1;
            }
        }
        let mean_rate = if n > 0 { sum / n as f64 } else { 1.0 };
        let (tokens, requests) = cands.iter().fold((0u64, 0u64), |(t, r), c| {
            (t + c.endpoint.in_flight().tokens(), r + c.endpoint.in_flight().requests())
        });
        let mean_size = if requests > 0 { tokens as f64 / requests as f64 } else { 0.0 };
        for c in cands.iter_mut() {
            let rate = map.get(&c.endpoint.id()).and_then(|e| e.rate).filter(|r| *r > 0.0).unwrap_or(mean_rate);
            c.expected_wait = queued_fraction(c) * expected_work(c, mean_size) / rate;
        }
    }
}

/// The work queued on a candidate in estimated tokens: the picker's own in-flight tokens plus, for
/// requests the scrape reports beyond the picker's own, the pool's mean request size each.
pub fn expected_work(c: &Candidate, mean_size: f64) -> f64 {
    let f = c.endpoint.in_flight();
    let seen = u64::from(c.metrics.running) + u64::from(c.metrics.waiting);
    let foreign = seen.saturating_sub(f.requests());
    f.tokens() as f64 + foreign as f64 * mean_size
}

/// The share of an endpoint's requests that are queued rather than running, as the last scrape
/// (plus the picker's unseen in-flight requests) shows it: 0 when nothing waits, so that below
/// saturation the expected wait is 0 everywhere and the other scorers decide, as with the queue
/// scorer; near 1 past saturation, where queues are long.
pub fn queued_fraction(c: &Candidate) -> f64 {
    let waiting = f64::from(c.metrics.waiting) + f64::from(c.unseen);
    let total = waiting + f64::from(c.metrics.running);
    if total > 0.0 { waiting / total } else { 0.0 }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use igw_core::{Endpoint, EndpointMeta, EndpointMetrics};
    use std::sync::Arc;

    fn cand(id: u32, waiting: u32, running: u32) -> Candidate {
        let ep = Endpoint::new(EndpointId(id), EndpointMeta::parse_addr(&format!("10.0.0.{id}:8000")).unwrap());
        let m = EndpointMetrics { waiting, running, ..Default::default() };
        Candidate { endpoint: Arc::new(ep), metrics: Arc::new(m), unseen: 0, expected_wait: 0.0 }
    }

    fn with_metrics(c: &mut Candidate, waiting: u32) {
        c.metrics = Arc::new(EndpointMetrics { waiting, ..Default::default() });
    }

    #[test]
    fn work_counts_tokens_and_foreign_requests() {
        let c = cand(1, 3, 1);
        c.endpoint.in_flight().add(1_000);
        c.endpoint.in_flight().add(10);
        // 4 seen by the scrape, 2 of them ours: 2 foreign at the mean size of 100.
        assert_eq!(expected_work(&c, 100.0), 1_210.0);
    }

    #[test]
    fn equal_counts_unequal_work_rank_by_work() {
        let t = WaitTracker::new(WaitConfig { learn_speed: false, ..Default::default() });
        let mut c = [cand(1, 1, 0), cand(2, 1, 0)];
        c[0].endpoint.in_flight().add(2_000);
        c[1].endpoint.in_flight().add(50);
        t.estimate(&mut c, Instant::from_millis(1));
        assert_eq!((c[0].expected_wait, c[1].expected_wait), (2_000.0, 50.0));
        let mut scores = vec![0.0; 2];
        let input = crate::scoring::ScoreInput { target_model: "m", prefix: None, session: None, no_hit: None };
        crate::scoring::Scorer::ExpectedWait.score(&input, &c, &mut scores);
        assert_eq!(scores, vec![0.0, 1.0], "the queue scorer would tie these two");
        crate::scoring::Scorer::Queue.score(&input, &c, &mut scores);
        assert_eq!(scores, vec![1.0, 1.0]);
    }

    #[test]
    fn nothing_waiting_means_no_wait() {
        let t = WaitTracker::new(WaitConfig::default());
        let mut c = [cand(1, 0, 1), cand(2, 0, 0)];
        c[0].endpoint.in_flight().add(5_000);
        t.estimate(&mut c, Instant::from_millis(1));
        assert_eq!((c[0].expected_wait, c[1].expected_wait), (0.0, 0.0), "below saturation the other scorers decide");
        c[0].unseen = 1;
        t.estimate(&mut c, Instant::from_millis(2));
        assert_eq!(c[0].expected_wait, 2_500.0, "half of its requests queue (1 unseen, 1 running)");
    }

    #[test]
    fn learns_speed_only_while_backlogged() {
        let t = WaitTracker::new(WaitConfig { sample_interval: Duration::from_secs(1), alpha: 1.0, learn_speed: true });
        let (fast, slow) = (EndpointId(1), EndpointId(2));
        let mut c = [cand(1, 5, 8), cand(2, 5, 8)];
        t.estimate(&mut c, Instant::from_millis(0));
        // One second backlogged: the fast endpoint finishes 1,000 tokens, the slow one 500.
        t.on_finished(fast, 1_000);
        t.on_finished(slow, 500);
        t.estimate(&mut c, Instant::from_millis(1_000));
        assert_eq!(t.rate(fast), Some(1_000.0));
        assert_eq!(t.rate(slow), Some(500.0));
        // Equal work: the slow endpoint's wait is twice as long.
        c[0].endpoint.in_flight().add(3_000);
        c[1].endpoint.in_flight().add(3_000);
        t.estimate(&mut c, Instant::from_millis(1_100));
        assert!((c[1].expected_wait / c[0].expected_wait - 2.0).abs() < 1e-9);
        // An interval with nothing waiting teaches nothing: the rate stays.
        with_metrics(&mut c[0], 0);
        t.on_finished(fast, 10);
        t.estimate(&mut c, Instant::from_millis(2_200));
        t.estimate(&mut c, Instant::from_millis(3_300));
        assert_eq!(t.rate(fast), Some(1_000.0));
        // An endpoint that leaves the pool is forgotten.
        t.retain(|id| id != slow);
        assert_eq!((t.rate(fast), t.rate(slow)), (Some(1_000.0), None));
        // Averaging: with alpha 0.5 a second sample moves the rate half way.
        let t = WaitTracker::new(WaitConfig { sample_interval: Duration::from_secs(1), alpha: 0.5, learn_speed: true });
        let mut c = [cand(1, 5, 8)];
        for (ms, tokens) in [(0, 0), (1_000, 1_000), (2_000, 3_000)] {
            t.on_finished(fast, tokens);
            t.estimate(&mut c, Instant::from_millis(ms));
        }
        assert_eq!(t.rate(fast), Some(2_000.0));
    }

    #[test]
    fn unknown_rates_default_to_the_mean_and_work_only_ignores_speed() {
        let t = WaitTracker::new(WaitConfig { sample_interval: Duration::from_secs(1), alpha: 1.0, learn_speed: true });
        let mut c = [cand(1, 5, 0), cand(2, 0, 0)];
        t.estimate(&mut c, Instant::from_millis(0));
        t.on_finished(EndpointId(1), 400);
        t.estimate(&mut c, Instant::from_millis(2_000));
        assert_eq!(t.rate(EndpointId(1)), Some(200.0));
        assert_eq!(t.rate(EndpointId(2)), None);
        c[0].endpoint.in_flight().add(400);
        c[1].endpoint.in_flight().add(400);
        with_metrics(&mut c[1], 5);
        t.estimate(&mut c, Instant::from_millis(2_001));
        // 400 tokens of ours plus 4 foreign requests at the mean size (400) each, at 200 tokens/s.
        assert_eq!((c[0].expected_wait, c[1].expected_wait), (10.0, 10.0));
        let work_only = WaitTracker::new(WaitConfig { learn_speed: false, ..Default::default() });
        work_only.on_finished(EndpointId(1), 400);
        work_only.estimate(&mut c, Instant::from_millis(0));
        work_only.estimate(&mut c, Instant::from_millis(10_000));
        assert_eq!(work_only.rate(EndpointId(1)), None);
        assert_eq!(c[0].expected_wait, 2_000.0, "work alone, in tokens");
    }
}
