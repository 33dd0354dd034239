//! Flow-control micro-benchmarks: one enqueue plus one dispatch against a controller holding 10,000 queued
//! requests spread over 3 priority bands and 100 fairness flows (the queue stays at 10,000), for igw's default
//! (VTC fairness, FCFS), upstream's default (global strict, FCFS), round robin, and EDF with a TTL; plus a
//! cancel of a mid-queue request followed by a re-enqueue.
//!
//! Run: `cargo bench -p igw-sched --bench flow -- --warm-up-time 1 --measurement-time 3`.
//! Operations per second = 2 / (time per iteration).

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use igw_core::Instant;
use igw_sched::flow::{FairnessPolicy, FlowConfig, FlowController, OrderingPolicy, QueuedRequest};

const QUEUED: u64 = 10_000;
const FLOWS: u64 = 100;

struct Gen {
    ids: Vec<Arc<str>>,
    next: u64,
    rng: u64,
}

impl Gen {
    fn new() -> Self {
        Gen { ids: (0..FLOWS).map(|i| Arc::from(format!("tenant-{i}"))).collect(), next: 0, rng: 0x1234_5678 }
    }

    /// xorshift64
    fn rand(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn request(&mut self) -> QueuedRequest {
        let r = self.rand();
        let id = self.next;
        self.next += 1;
        QueuedRequest {
            id,
            priority: (r % 3) as i32 - 1,
            fairness_id: self.ids[((r >> 8) % FLOWS) as usize].clone(),
            bytes: 1_000 + (r >> 20) % 4_000,
            enqueue_time: Instant::from_nanos(id * 1_000),
            ttl: (r >> 40).is_multiple_of(2).then(|| Duration::from_secs(60)),
            slo_deadline: None,
            est_tokens: 200 + (r >> 30) % 800,
        }
    }
}

fn filled(cfg: FlowConfig, g: &mut Gen) -> FlowController {
    let mut c = FlowController::new(cfg).unwrap();
    for _ in 0..QUEUED {
        c.enqueue(g.request()).unwrap();
    }
    c
}

fn config(fairness: FairnessPolicy, ordering: OrderingPolicy) -> FlowConfig {
    let mut c = FlowConfig::igw();
    c.default_band.fairness = fairness;
    c.default_band.ordering = ordering;
    c.default_ttl = Some(Duration::from_secs(30));
    c
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("flow_10k_queued");
    let cases = [
        ("enqueue_dispatch/vtc_fcfs", config(FairnessPolicy::Vtc, OrderingPolicy::Fcfs)),
        ("enqueue_dispatch/global_strict_fcfs", config(FairnessPolicy::GlobalStrict, OrderingPolicy::Fcfs)),
        ("enqueue_dispatch/round_robin_fcfs", config(FairnessPolicy::RoundRobin, OrderingPolicy::Fcfs)),
        ("enqueue_dispatch/vtc_edf", config(FairnessPolicy::Vtc, OrderingPolicy::Edf)),
    ];
    for (name, cfg) in cases {
        let mut g = Gen::new();
        let mut ctl = filled(cfg, &mut g);
        group.bench_function(name, |b| {
            b.iter(|| {
                let r = g.request();
                let now = r.enqueue_time;
                ctl.enqueue(r).unwrap();
                black_box(ctl.dispatch(now, 0.5).unwrap());
            })
        });
        assert_eq!(ctl.len() as u64, QUEUED);
    }
    let mut g = Gen::new();
    let mut ctl = filled(config(FairnessPolicy::Vtc, OrderingPolicy::Fcfs), &mut g);
    group.bench_function("cancel_enqueue/vtc_fcfs", |b| {
        b.iter(|| {
            // Cancel a request from the middle of the queue, then refill.
            let victim = g.next - QUEUED / 2;
            black_box(ctl.cancel(victim));
            ctl.enqueue(g.request()).unwrap();
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
