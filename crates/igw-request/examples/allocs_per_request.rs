//! Heap allocations per request on the sans-IO request path, counted by dhat's global allocator
//! (every allocation and reallocation, in blocks and bytes): read the request (`head`, `prepare`:
//! parse a ~1 KB chat body), `admit`, `decide` (igw's default policy over 100 endpoints with fresh
//! metrics), `attempt`, `first_byte`, `end` with a usage summary. Prints the mean over `N`
//! requests after a warm-up; the request bodies are built before counting starts.
//!
//! Run: `cargo run --release -p igw-request --example allocs_per_request [-- N]`

use std::sync::Arc;

use bytes::Bytes;
use igw_core::{Datastore, EndpointMeta, EndpointMetrics, Instant};
use igw_request::{Admission, PoolCore, Prepared, ResponseSummary, Usage};
use igw_sched::Scheduler;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn main() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let n: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let metas = (0..100).map(|i| EndpointMeta::from_addr(std::net::SocketAddr::from(([10, 0, 0, i as u8], 8000))));
    let ds = Arc::new(Datastore::with_endpoints(metas));
    let now = Instant::from_millis(10);
    for e in &ds.snapshot().endpoints {
        e.set_metrics(EndpointMetrics {
            waiting: 1,
            running: 4,
            kv_usage: 0.3,
            update_time: Some(now),
            ..Default::default()
        });
    }
    let sched = Arc::new(Scheduler::from_policy("igw").unwrap_or_else(|e| panic!("{e}")));
    let core = Arc::new(PoolCore::new("bench", ds, sched).with_max_endpoints(3));
    let body = |i: u64| {
        let text = format!("You are a helpful assistant for tenant {}. {}", i % 8, "lorem ipsum dolor sit ".repeat(40));
        Bytes::from(format!(r#"{{"model":"m","messages":[{{"role":"user","content":"{text} {i}"}}],"max_tokens":16}}"#))
    };
    let usage = Usage { prompt_tokens: 230, completion_tokens: 16, total_tokens: 246, cached_tokens: 0 };
    let summary = ResponseSummary { status: Some(200), usage: Some(usage), response_bytes: 400, ..Default::default() };
    let one = |i: u64, b: Bytes| {
        let head = core.head(Some("/v1/chat/completions"), [("content-type", "application/json")]);
        let Ok(Prepared::Inference(p)) = core.prepare(head, Some(b), None) else { panic!("not an inference request") };
        let Ok(Admission::Admitted(mut r)) = core.admit(&p, now) else { panic!("not admitted") };
        let primary = r.decide(&p, None, now).unwrap_or_else(|e| panic!("{e}"))[0].clone();
        r.attempt(&primary, now);
        r.first_byte(now);
        r.end(Some(&summary), Instant::from_millis(10 + i % 7));
    };
    for i in 0..1_000 {
        one(i, body(i));
    }
    let bodies: Vec<Bytes> = (0..n).map(|i| body(1_000 + i)).collect();
    let before = dhat::HeapStats::get();
    for (i, b) in bodies.into_iter().enumerate() {
        one(1_000 + i as u64, b);
    }
    let after = dhat::HeapStats::get();
    let (a, b) = (after.total_blocks - before.total_blocks, after.total_bytes - before.total_bytes);
    println!(
        "{{\"requests\":{n},\"allocations_per_request\":{:.1},\"bytes_per_request\":{:.0}}}",
        a as f64 / n as f64,
        b as f64 / n as f64
    );
}
