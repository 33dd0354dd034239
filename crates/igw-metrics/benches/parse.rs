//! Parsing and extraction cost for a ~300-series vLLM page.

#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use igw_core::{EndpointMetrics, Instant};
use igw_metrics::{EngineMapping, extract_from_bytes, parse};

const VLLM: &[u8] = include_bytes!("../tests/fixtures/vllm.txt");

fn bench(c: &mut Criterion) {
    let mapping = EngineMapping::vllm();
    let prev = EndpointMetrics::default();
    c.bench_function("vllm_300/full_parse", |b| b.iter(|| parse(black_box(VLLM))));
    c.bench_function("vllm_300/extract_filtered", |b| {
        b.iter(|| extract_from_bytes(black_box(VLLM), &mapping, &prev, Instant::ZERO))
    });
    let expo = parse(VLLM);
    c.bench_function("vllm_300/extract_from_full_parse", |b| {
        b.iter(|| igw_metrics::extract(black_box(&expo), &mapping, &prev, Instant::ZERO))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
