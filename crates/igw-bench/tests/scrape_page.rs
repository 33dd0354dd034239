//! The simulator scrapes each replica's vLLM page without its latency histograms: igw reads the
//! same metrics from it as from the full page a live replica serves.

#![allow(clippy::unwrap_used)]

use igw_core::Instant;
use igw_metrics::EngineMapping;
use igw_sim::{Engine, EngineConfig, RequestId, SimRequest};

#[test]
fn the_page_without_histograms_reads_the_same_as_the_full_page() {
    let profile = igw_sim::profile::Profile::llama2_7b_h100();
    let mut engine = Engine::new(EngineConfig::new(profile.clone())).unwrap();
    let mut now = Instant::ZERO;
    for i in 0..300 {
        let req = SimRequest {
            id: RequestId(i),
            prompt_tokens: 500,
            block_hashes: Vec::new(),
            output_tokens: 50,
            max_tokens: 50,
            adapter: None,
        };
        engine.submit(req, now).unwrap();
    }
    for _ in 0..40 {
        let (d, _) = engine.step(now).unwrap();
        now = now.saturating_add(d);
    }
    let snap = engine.snapshot();
    let full = igw_sim::metrics_text::render_vllm(&snap, &profile.model, |t| t);
    let lean = igw_sim::metrics_text::render_vllm_without_histograms(&snap, &profile.model, |t| t);
    assert!(lean.len() * 3 < full.len(), "the histograms are most of the page");
    assert!(!lean.contains("_bucket"));
    let m = EngineMapping::vllm();
    let read = |page: &str| igw_metrics::extract_from_bytes(page.as_bytes(), &m, &Default::default(), now);
    let (a, b) = (read(&full), read(&lean));
    assert_eq!(a.metrics, b.metrics);
    assert!(a.metrics.waiting > 0 && a.metrics.running > 0 && a.metrics.kv_usage > 0.0, "{:?}", a.metrics);
    // Every line of the lean page is a line of the full one.
    assert!(lean.lines().all(|l| full.lines().any(|f| f == l)));
}
