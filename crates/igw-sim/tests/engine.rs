//! Behaviour of the sans-IO engine and its calibration in virtual time.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use igw_core::Instant;
use igw_sim::des::{Arrivals, DesConfig, run_single_replica};
use igw_sim::engine::{Engine, EngineConfig, FinishReason, RequestId, SimRequest, StepOutcome};
use igw_sim::profile::{Profile, ProfileOverrides};
use igw_sim::step_time::{StepShape, step_ms};

fn req(id: u64, prompt: u32, output: u32, max_tokens: u32) -> SimRequest {
    SimRequest {
        id: RequestId(id),
        prompt_tokens: prompt,
        block_hashes: Vec::new(),
        output_tokens: output,
        max_tokens,
        adapter: None,
    }
}

fn engine_with(o: ProfileOverrides) -> Engine {
    let mut p = Profile::llama2_7b_h100();
    p.apply(&o).unwrap();
    Engine::new(EngineConfig::new(p)).unwrap()
}

/// Runs steps back to back from `t` until idle; returns (end time, all outcomes with their end times).
fn drain(e: &mut Engine, mut t: Instant) -> (Instant, Vec<(Instant, StepOutcome)>) {
    let mut all = Vec::new();
    while let Some((d, out)) = e.step(t) {
        t = t.saturating_add(d);
        all.push((t, out));
    }
    (t, all)
}

#[test]
fn single_request_prefill_then_decodes() {
    let mut e = engine_with(ProfileOverrides::default());
    e.submit(req(1, 100, 5, 5), Instant::ZERO).unwrap();
    let d = e.start_step(Instant::ZERO).unwrap();
    let want = step_ms(&Profile::llama2_7b_h100().step, &StepShape::prefill(100));
    assert!((d.as_secs_f64() * 1000.0 - want).abs() < 1e-6);
    assert_eq!((e.running_len(), e.waiting_len()), (1, 0));
    let out = e.finish_step(Instant::ZERO.saturating_add(d));
    assert_eq!(out.events.len(), 1);
    assert_eq!(out.events[0].index, 0);
    let (_, rest) = drain(&mut e, Instant::ZERO.saturating_add(d));
    assert_eq!(rest.len(), 4, "four decode steps");
    let last = rest.last().unwrap().1.events[0];
    assert_eq!(last.index, 4);
    let f = last.finished.unwrap();
    assert_eq!((f.reason, f.prompt_tokens, f.completion_tokens), (FinishReason::Length, 100, 5));
    assert!(!e.has_work());
    assert_eq!(e.kv_usage(), 0.0);
    assert_eq!(e.stats().generation_tokens, 5);
    assert_eq!(e.stats().prompt_tokens, 100);
}

#[test]
fn natural_end_before_max_tokens_is_stop() {
    let mut e = engine_with(ProfileOverrides::default());
    e.submit(req(1, 10, 3, 50), Instant::ZERO).unwrap();
    let (_, outs) = drain(&mut e, Instant::ZERO);
    let f = outs.last().unwrap().1.events[0].finished.unwrap();
    assert_eq!((f.reason, f.completion_tokens), (FinishReason::Stop, 3));
    assert_eq!(e.stats().finished_stop, 1);
}

#[test]
fn chunked_prefill_respects_token_budget_and_mixes_with_decodes() {
    let mut e = engine_with(ProfileOverrides { max_num_batched_tokens: Some(64), ..Default::default() });
    e.submit(req(1, 8, 50, 50), Instant::ZERO).unwrap();
    let (_, first) = e.step(Instant::ZERO).unwrap();
    assert_eq!(first.tokens, 8);
    e.submit(req(2, 200, 2, 2), Instant::ZERO).unwrap();
    // Steps: decode(1) + 63 prefill, then 1 + 63, 1 + 63, then 1 + 11 → first token of request 2.
    let mut t = Instant::from_millis(100);
    let mut seen = Vec::new();
    for _ in 0..4 {
        let (d, out) = e.step(t).unwrap();
        t = t.saturating_add(d);
        seen.push((out.tokens, out.events.iter().any(|ev| ev.id == RequestId(2))));
    }
    assert_eq!(seen, vec![(64, false), (64, false), (64, false), (12, true)]);
}

#[test]
fn max_num_seqs_caps_running_set() {
    let mut e = engine_with(ProfileOverrides { max_num_seqs: Some(3), ..Default::default() });
    for i in 0..5 {
        e.submit(req(i, 20, 10, 10), Instant::ZERO).unwrap();
    }
    e.start_step(Instant::ZERO).unwrap();
    assert_eq!((e.running_len(), e.waiting_len()), (3, 2));
    let s = e.snapshot();
    assert_eq!((s.running, s.waiting), (3, 2));
    assert!(s.kv_usage > 0.0);
}

#[test]
fn kv_exhaustion_preempts_newest_and_everything_still_finishes() {
    // 12 blocks = 192 tokens; three requests of 48 + 60 tokens each cannot all grow.
    let mut e = engine_with(ProfileOverrides { num_gpu_blocks: Some(12), ..Default::default() });
    for i in 0..3 {
        e.submit(req(i, 48, 60, 60), Instant::ZERO).unwrap();
    }
    let (_, outs) = drain(&mut e, Instant::ZERO);
    let finished: Vec<u64> =
        outs.iter().flat_map(|(_, o)| o.events.iter()).filter(|ev| ev.finished.is_some()).map(|ev| ev.id.0).collect();
    assert_eq!(finished.len(), 3);
    assert!(e.stats().preemptions > 0);
    // The oldest request is never the victim, so it finishes first.
    assert_eq!(finished[0], 0);
    let tokens: usize = outs.iter().map(|(_, o)| o.events.len()).sum();
    assert_eq!(tokens, 180, "each request emits exactly its 60 tokens despite recomputation");
}

#[test]
fn prefix_cache_hits_skip_prefill() {
    let mut e = engine_with(ProfileOverrides::default());
    let hashes: Vec<u64> = (1..=20).collect();
    let mut a = req(1, 320, 2, 2);
    a.block_hashes = hashes.clone();
    e.submit(a, Instant::ZERO).unwrap();
    let (t, _) = drain(&mut e, Instant::ZERO);
    let mut b = req(2, 330, 2, 2);
    b.block_hashes = hashes;
    e.submit(b, t).unwrap();
    let (_, first) = e.step(t).unwrap();
    // 20 blocks (320 tokens) cached; only the 10 uncached tokens are prefilled.
    assert_eq!(first.tokens, 10);
    let s = e.stats();
    assert_eq!((s.prefix_queries, s.prefix_hits), (650, 320));
    // A fully cached prompt still recomputes its last block.
    let mut c = req(3, 320, 1, 1);
    c.block_hashes = (1..=20).collect();
    e.submit(c, t).unwrap();
    let (_, out) = drain(&mut e, t);
    let f = out.iter().flat_map(|(_, o)| o.events.iter()).find(|ev| ev.id == RequestId(3)).unwrap();
    assert_eq!(f.finished.unwrap().cached_tokens, 304);
}

#[test]
fn lora_slots_limit_adapters_and_slow_steps() {
    let mut p = Profile::llama2_7b_h100();
    p.apply(&ProfileOverrides::default()).unwrap();
    let mut cfg = EngineConfig::new(p);
    cfg.max_loras = 1;
    let mut e = Engine::new(cfg.clone()).unwrap();
    let mut a = req(1, 16, 3, 3);
    a.adapter = Some(Arc::from("a"));
    let mut b = req(2, 16, 3, 3);
    b.adapter = Some(Arc::from("b"));
    let base = req(3, 16, 3, 3);
    e.submit(a, Instant::ZERO).unwrap();
    e.submit(b, Instant::ZERO).unwrap();
    e.submit(base, Instant::ZERO).unwrap();
    let d_lora = e.start_step(Instant::ZERO).unwrap();
    // Adapter b must wait for a's slot; the base-model request runs.
    assert_eq!((e.running_len(), e.waiting_len()), (2, 1));
    let mut plain = Engine::new(EngineConfig::new(Profile::llama2_7b_h100())).unwrap();
    plain.submit(req(1, 16, 3, 3), Instant::ZERO).unwrap();
    plain.submit(req(3, 16, 3, 3), Instant::ZERO).unwrap();
    let d_plain = plain.start_step(Instant::ZERO).unwrap();
    assert!(d_lora > d_plain.mul_f64(1.1), "{d_lora:?} vs {d_plain:?}");
    e.finish_step(Instant::ZERO.saturating_add(d_lora));
    let snap = e.snapshot();
    assert_eq!(snap.lora_info.last().map(|s| (s.running.as_str(), s.waiting.as_str())), Some(("a", "b")));
    let (_, outs) = drain(&mut e, Instant::from_millis(10));
    assert!(outs.iter().flat_map(|(_, o)| o.events.iter()).any(|ev| ev.id == RequestId(2) && ev.finished.is_some()));
    // Without LoRA enabled, adapter requests are rejected.
    let mut r = req(9, 16, 3, 3);
    r.adapter = Some(Arc::from("a"));
    assert!(plain.submit(r, Instant::ZERO).is_err());
}

#[test]
fn abort_frees_blocks_and_silences_tokens() {
    let mut e = engine_with(ProfileOverrides::default());
    e.submit(req(1, 100, 50, 50), Instant::ZERO).unwrap();
    e.submit(req(2, 100, 50, 50), Instant::ZERO).unwrap();
    let d = e.start_step(Instant::ZERO).unwrap();
    assert!(e.abort(RequestId(2), Instant::ZERO));
    assert!(!e.abort(RequestId(2), Instant::ZERO));
    let out = e.finish_step(Instant::ZERO.saturating_add(d));
    assert!(out.events.iter().all(|ev| ev.id == RequestId(1)));
    assert_eq!(e.running_len(), 1);
    assert_eq!(e.stats().finished_abort, 1);
    assert!(e.abort(RequestId(1), Instant::ZERO));
    assert_eq!(e.kv_usage(), 0.0);
}

#[test]
fn rejects_impossible_requests() {
    let mut e = engine_with(ProfileOverrides { num_gpu_blocks: Some(4), ..Default::default() });
    assert!(e.submit(req(1, 0, 1, 1), Instant::ZERO).is_err());
    assert!(e.submit(req(2, 5000, 1, 1), Instant::ZERO).is_err());
    assert!(e.submit(req(3, 60, 10, 10), Instant::ZERO).is_err(), "70 tokens > 64 token KV");
    e.submit(req(4, 10, 1, 1), Instant::ZERO).unwrap();
    assert!(e.submit(req(4, 10, 1, 1), Instant::ZERO).is_err(), "duplicate id");
}

#[test]
fn jitter_and_speed_are_seeded() {
    let durations = |seed: u64, speed: f64| {
        let mut cfg = EngineConfig::new(Profile::llama2_7b_h100());
        cfg.jitter_sigma = 0.02;
        cfg.seed = seed;
        cfg.speed = speed;
        let mut e = Engine::new(cfg).unwrap();
        e.submit(req(1, 64, 20, 20), Instant::ZERO).unwrap();
        let mut t = Instant::ZERO;
        let mut v = Vec::new();
        while let Some((d, _)) = e.step(t) {
            t = t.saturating_add(d);
            v.push(d);
        }
        v
    };
    assert_eq!(durations(1, 1.0), durations(1, 1.0));
    assert_ne!(durations(1, 1.0), durations(2, 1.0));
    let slow: f64 = durations(1, 0.5).iter().map(|d| d.as_secs_f64()).sum();
    let fast: f64 = durations(1, 1.0).iter().map(|d| d.as_secs_f64()).sum();
    assert!((slow / fast - 2.0).abs() < 1e-6, "{slow} vs {fast}");
}

/// One replica saturated with ShareGPT-like requests produces ≈5.8k output tokens/s (spec §2.6);
/// tolerance ±15%.
#[test]
fn saturation_throughput_is_calibrated() {
    let r = run_single_replica(&DesConfig {
        engine: EngineConfig::new(Profile::llama2_7b_h100()),
        arrivals: Arrivals::Backlog { depth: 64 },
        duration_s: 120.0,
        warmup_s: 20.0,
        seed: 3,
    })
    .unwrap();
    eprintln!("saturation: {r:?}");
    assert!((4930.0..6670.0).contains(&r.output_tokens_per_s), "{r:?}");
    assert!((20.0..32.0).contains(&r.requests_per_s), "{r:?}");
}

/// Below saturation the replica keeps up: throughput equals the offered load and TTFT stays small.
#[test]
fn below_saturation_keeps_up() {
    let r = run_single_replica(&DesConfig {
        engine: EngineConfig::new(Profile::llama2_7b_h100()),
        arrivals: Arrivals::Poisson { rate: 8.0 },
        duration_s: 200.0,
        warmup_s: 20.0,
        seed: 5,
    })
    .unwrap();
    assert!((6.8..9.2).contains(&r.requests_per_s), "{r:?}");
    assert!(r.mean_ttft_s < 0.1, "{r:?}");
    assert_eq!(r.preemptions, 0);
}
