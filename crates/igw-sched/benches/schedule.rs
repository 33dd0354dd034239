//! One scheduling decision at 10 / 100 / 1,000 endpoints, with and without prefix scoring on a
//! 4 KB prompt (the `igw` policy, and the same scorers without the prefix scorer).
//! Run: `cargo bench -p igw-sched --bench schedule`.
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use igw_sched::bench::{BenchOptions, Fixture};
use igw_sched::scoring::Scorer;
use igw_sched::{Picker, Scheduler};

fn decisions(c: &mut Criterion) {
    let mut group = c.benchmark_group("decision");
    for endpoints in [10usize, 100, 1000] {
        let opts = BenchOptions { endpoints, decisions: 1024, warmup_requests: 10_000, ..Default::default() };
        let mut with_prefix = Fixture::new(&opts).unwrap();
        let no_prefix =
            Scheduler::new("no-prefix", vec![(Scorer::Queue, 2.0), (Scorer::KvCache, 2.0)], Picker::MaxScore, None)
                .with_in_flight_blending(true);
        let mut without_prefix = Fixture::with_scheduler(&opts, no_prefix).unwrap();
        let mut i = 0usize;
        group.bench_with_input(BenchmarkId::new("igw_prefix_4k", endpoints), &endpoints, |b, _| {
            b.iter(|| {
                i += 1;
                with_prefix.decide(i)
            })
        });
        group.bench_with_input(BenchmarkId::new("no_prefix", endpoints), &endpoints, |b, _| {
            b.iter(|| {
                i += 1;
                without_prefix.decide(i)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decisions);
criterion_main!(benches);
