//! Prefix-index micro-benchmarks: hashing a 4 KB prompt, matching it against a warm index of
//! 10,000 prompts over 100 endpoints (half of them sharing one of 10 system prompts), and inserting.
//!
//! Run: `cargo bench -p igw-sched --bench prefix -- --warm-up-time 1 --measurement-time 3`.

#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use igw_core::EndpointId;
use igw_sched::prefix::{MatchMode, PrefixConfig, PrefixIndex, hash_prompt, hash_prompt_into};

const ENDPOINTS: u32 = 100;
const PROMPTS: usize = 10_000;
const PROMPT_BYTES: usize = 4096;
const SHARED_BYTES: usize = 2048;
const SYSTEM_PROMPTS: u64 = 10;

struct Rng(u64);

impl Rng {
    /// splitmix64
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn text(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| b' ' + (self.next() % 94) as u8).collect()
    }
}

/// Prompt `i`: even prompts start with one of the shared system prompts, odd ones are unique.
fn prompt(systems: &[Vec<u8>], rng: &mut Rng, i: usize) -> Vec<u8> {
    if i.is_multiple_of(2) {
        let mut p = systems[(i / 2) % systems.len()].clone();
        p.extend(rng.text(PROMPT_BYTES - SHARED_BYTES));
        p
    } else {
        rng.text(PROMPT_BYTES)
    }
}

fn warm_index(cfg: &PrefixConfig) -> (PrefixIndex, Vec<Vec<u8>>) {
    let mut rng = Rng(42);
    let systems: Vec<Vec<u8>> = (0..SYSTEM_PROMPTS).map(|_| rng.text(SHARED_BYTES)).collect();
    let idx = PrefixIndex::new(cfg.clone());
    let mut prompts = Vec::with_capacity(PROMPTS);
    for i in 0..PROMPTS {
        let p = prompt(&systems, &mut rng, i);
        let h = hash_prompt(cfg, "llama-3-8b", None, &p);
        idx.insert(EndpointId((rng.next() % u64::from(ENDPOINTS)) as u32), &h, None);
        prompts.push(p);
    }
    (idx, prompts)
}

fn benches(c: &mut Criterion) {
    let cfg = PrefixConfig::default();
    let mut rng = Rng(7);
    let text = rng.text(PROMPT_BYTES);
    c.bench_function("prefix/hash_4k", |b| {
        let mut out = Vec::new();
        b.iter(|| hash_prompt_into(&cfg, "llama-3-8b", None, black_box(&text), &mut out))
    });

    for mode in [MatchMode::Igw, MatchMode::Upstream] {
        let cfg = PrefixConfig { mode, ..PrefixConfig::default() };
        let (idx, prompts) = warm_index(&cfg);
        eprintln!("{mode:?} index: {} entries, {} KiB", idx.len(), idx.approx_bytes() / 1024);
        let shared = hash_prompt(&cfg, "llama-3-8b", None, &prompts[0]);
        let unique = hash_prompt(&cfg, "llama-3-8b", None, &prompts[1]);
        let m = idx.match_prefix(&shared);
        eprintln!(
            "  shared prompt: {} endpoints match, best {}/{}",
            m.entries().len(),
            m.max_matched(),
            m.total_blocks
        );
        c.bench_function(&format!("prefix/{mode:?}/match_shared_4k"), |b| {
            b.iter(|| idx.match_prefix(black_box(&shared)))
        });
        c.bench_function(&format!("prefix/{mode:?}/match_unique_4k"), |b| {
            b.iter(|| idx.match_prefix(black_box(&unique)))
        });
        c.bench_function(&format!("prefix/{mode:?}/hash_and_match_4k"), |b| {
            let mut hashes = Vec::new();
            b.iter(|| {
                hash_prompt_into(&cfg, "llama-3-8b", None, black_box(&prompts[0]), &mut hashes);
                idx.match_prefix(&hashes)
            })
        });
        c.bench_function(&format!("prefix/{mode:?}/insert_refresh_4k"), |b| {
            b.iter(|| idx.insert(EndpointId(3), black_box(&shared), None))
        });
    }

    // Inserting new prompts into full LRUs: every block evicts one.
    // 97 endpoints of 10 chains each, fed from 2,000 chains, so an endpoint rarely sees a chain it holds.
    let cfg = PrefixConfig { lru_capacity_per_server: 640, ..PrefixConfig::default() };
    let idx = PrefixIndex::new(cfg.clone());
    let chains: Vec<Vec<u64>> = (0..2000).map(|_| (0..64).map(|_| rng.next()).collect()).collect();
    for (i, ch) in chains.iter().enumerate() {
        idx.insert(EndpointId(i as u32 % 97), ch, None);
    }
    let mut i = 0usize;
    c.bench_function("prefix/Igw/insert_new_evicting_4k", |b| {
        b.iter(|| {
            i += 1;
            idx.insert(EndpointId(i as u32 % 97), &chains[i % chains.len()], None)
        })
    });
}

criterion_group!(prefix, benches);
criterion_main!(prefix);
