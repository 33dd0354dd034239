//! Behaviour tests of the index in both modes, and a model check against a naive implementation.

#![allow(clippy::unwrap_used)]

use igw_core::EndpointId;
use proptest::prelude::*;

use super::*;

const A: EndpointId = EndpointId(1);
const B: EndpointId = EndpointId(2);
const C: EndpointId = EndpointId(3);

fn index(mode: MatchMode, cap: usize) -> PrefixIndex {
    PrefixIndex::new(PrefixConfig { mode, lru_capacity_per_server: cap, ..PrefixConfig::default() })
}

fn counts(m: &PrefixMatch) -> Vec<(u32, u32)> {
    m.entries().iter().map(|e| (e.0.0, e.1)).collect()
}

#[test]
fn defaults() {
    let c = PrefixConfig::default();
    assert_eq!((c.block_size_tokens, c.chars_per_token, c.max_prefix_blocks), (16, 4, 256));
    assert_eq!((c.max_prefix_tokens, c.lru_capacity_per_server, c.auto_tune), (0, 31_250, true));
    assert_eq!(c.mode, MatchMode::Igw);
    assert_eq!(PrefixConfig::upstream().mode, MatchMode::Upstream);
    assert_eq!(c.chars_per_block(), 64);
}

#[test]
fn hashed_prompts_match_by_shared_prefix() {
    let cfg = PrefixConfig::default();
    let idx = PrefixIndex::new(cfg.clone());
    let system = "You are a helpful assistant. ".repeat(20);
    let p1 = format!("{system}What is the capital of France?");
    let p2 = format!("{system}Write a poem about the sea, please, in the style of a limerick.");
    let h1 = hash_prompt(&cfg, "llama", None, p1.as_bytes());
    let h2 = hash_prompt(&cfg, "llama", None, p2.as_bytes());
    idx.insert(A, &h1, None);
    let m = idx.match_prefix(&h2);
    assert_eq!(m.total_blocks, h2.len());
    assert_eq!(m.matched(A), (system.len() / 64) as u32);
    assert_eq!(idx.match_prefix(&h1).matched(A), h1.len() as u32);
    // Another model does not match.
    let other = hash_prompt(&cfg, "llama-lora", None, p1.as_bytes());
    assert!(idx.match_prefix(&other).is_empty());
    assert!(idx.match_prefix(&[]).is_empty());
}

#[test]
fn gap_counts_differ_between_modes() {
    let chain = [10, 11, 12, 13];
    for (mode, a_count) in [(MatchMode::Upstream, 3), (MatchMode::Igw, 2)] {
        let idx = index(mode, 100);
        idx.insert(A, &[10, 11], None);
        idx.insert(A, &[13], None);
        idx.insert(B, &chain, None);
        let m = idx.match_prefix(&chain);
        assert_eq!(counts(&m), [(1, a_count), (2, 4)], "{mode:?}");
        idx.check_invariants();
    }
    // Without anyone holding block 2, both modes stop there.
    for mode in [MatchMode::Upstream, MatchMode::Igw] {
        let idx = index(mode, 100);
        idx.insert(A, &[10, 11], None);
        idx.insert(A, &[13], None);
        assert_eq!(counts(&idx.match_prefix(&chain)), [(1, 2)]);
    }
}

#[test]
fn igw_stops_when_no_endpoint_continues() {
    let idx = index(MatchMode::Igw, 100);
    idx.insert(A, &[1, 2], None);
    idx.insert(B, &[1], None);
    idx.insert(C, &[1, 2, 3, 4], None);
    assert_eq!(counts(&idx.match_prefix(&[1, 2, 9, 4])), [(1, 2), (2, 1), (3, 2)]);
    assert_eq!(counts(&idx.match_prefix(&[1, 2, 3, 4])), [(1, 2), (2, 1), (3, 4)]);
}

#[test]
fn upstream_evicts_the_root_first_igw_the_tail() {
    let chain = [1, 2, 3, 4];
    let up = index(MatchMode::Upstream, 4);
    up.insert(A, &chain, None);
    assert_eq!(up.lru_order(A), [4, 3, 2, 1]);
    up.insert(A, &[99], None);
    assert_eq!(up.lru_order(A), [99, 4, 3, 2]);
    // The root is gone, so the whole chain stops matching although 3 of its blocks are still held.
    assert!(up.match_prefix(&chain).is_empty());

    let igw = index(MatchMode::Igw, 4);
    igw.insert(A, &chain, None);
    assert_eq!(igw.lru_order(A), [1, 2, 3, 4]);
    igw.insert(A, &[99], None);
    assert_eq!(igw.lru_order(A), [99, 1, 2, 3]);
    assert_eq!(igw.match_prefix(&chain).matched(A), 3);
    igw.check_invariants();
    up.check_invariants();
}

#[test]
fn igw_chain_longer_than_capacity_keeps_the_root() {
    let igw = index(MatchMode::Igw, 3);
    igw.insert(A, &[1, 2, 3, 4, 5], None);
    assert_eq!(igw.lru_order(A), [1, 2, 3]);
    assert_eq!(igw.match_prefix(&[1, 2, 3, 4, 5]).matched(A), 3);
    let up = index(MatchMode::Upstream, 3);
    up.insert(A, &[1, 2, 3, 4, 5], None);
    assert_eq!(up.lru_order(A), [5, 4, 3]);
    assert_eq!(up.match_prefix(&[1, 2, 3, 4, 5]).matched(A), 0);
}

#[test]
fn reinsert_refreshes_recency() {
    let idx = index(MatchMode::Igw, 4);
    idx.insert(A, &[1, 2], None); // P
    idx.insert(A, &[5, 6], None); // Q
    idx.insert(A, &[1, 2], None); // P routed again: refreshed
    idx.insert(A, &[7, 8], None); // R evicts Q, not P
    assert_eq!(idx.match_prefix(&[1, 2]).matched(A), 2);
    assert!(idx.match_prefix(&[5, 6]).is_empty());
    // A match alone does not refresh.
    let _ = idx.match_prefix(&[7, 8]);
    assert_eq!(idx.lru_order(A), [7, 8, 1, 2]);
    assert_eq!(idx.len(), 4);
}

#[test]
fn capacity_from_auto_tune() {
    let idx = index(MatchMode::Igw, 5);
    idx.insert(A, &[1], Some(100));
    idx.insert(B, &[1], None);
    idx.insert(C, &[1], Some(0));
    assert_eq!(idx.endpoint_usage(A), Some((1, 100)));
    assert_eq!(idx.endpoint_usage(B), Some((1, 5)));
    assert_eq!(idx.endpoint_usage(C), Some((1, 5)));
    // Fixed at creation.
    idx.insert(B, &[2], Some(1000));
    assert_eq!(idx.endpoint_usage(B), Some((2, 5)));
    assert_eq!(idx.endpoint_usage(EndpointId(77)), None);

    let off =
        PrefixIndex::new(PrefixConfig { auto_tune: false, lru_capacity_per_server: 7, ..PrefixConfig::default() });
    off.insert(A, &[1], Some(100));
    assert_eq!(off.endpoint_usage(A), Some((1, 7)));
}

#[test]
fn zero_capacity_stores_nothing() {
    let idx = index(MatchMode::Upstream, 0);
    idx.insert(A, &[1, 2], None);
    assert!(idx.is_empty());
    assert!(idx.match_prefix(&[1, 2]).is_empty());
    idx.check_invariants();
}

#[test]
fn remove_and_retain() {
    for mode in [MatchMode::Upstream, MatchMode::Igw] {
        let idx = index(mode, 100);
        for ep in [A, B, C] {
            idx.insert(ep, &[1, 2, 3], None);
        }
        idx.insert(C, &[4], None);
        assert_eq!(idx.len(), 10);
        assert_eq!(idx.num_endpoints(), 3);
        idx.remove_endpoint(B);
        idx.remove_endpoint(EndpointId(99));
        assert_eq!(idx.len(), 7);
        assert_eq!(counts(&idx.match_prefix(&[1, 2, 3])), [(1, 3), (3, 3)]);
        idx.retain(|ep| ep == A);
        assert_eq!(idx.len(), 3);
        assert_eq!(counts(&idx.match_prefix(&[1, 2, 3])), [(1, 3)]);
        assert!(idx.match_prefix(&[4]).is_empty());
        idx.check_invariants();
        idx.retain(|_| false);
        assert!(idx.is_empty());
        assert_eq!(idx.num_endpoints(), 0);
        idx.check_invariants();
    }
}

#[test]
fn len_and_approx_bytes() {
    let idx = index(MatchMode::Igw, 1000);
    assert_eq!((idx.len(), idx.approx_bytes()), (0, 0));
    for ep in 0..10 {
        let chain: Vec<u64> = (0..50).map(|i| if i < 20 { i } else { ep * 1000 + i }).collect();
        idx.insert(EndpointId(ep as u32), &chain, None);
    }
    assert_eq!(idx.len(), 500);
    let bytes = idx.approx_bytes();
    // 20 hashes held by all 10 endpoints (spilled holder sets), 300 held by one.
    assert!(bytes >= 500 * 16 + 320 * 33 + 20 * 10 * 8, "{bytes}");
    assert!(bytes <= 500 * 4 * bytes_per_entry(), "{bytes}");
    idx.check_invariants();
    idx.retain(|_| false);
    assert!(idx.approx_bytes() < bytes);
}

#[test]
fn concurrent_use() {
    let idx = std::sync::Arc::new(index(MatchMode::Igw, 64));
    let handles: Vec<_> = (0..4u32)
        .map(|t| {
            let idx = idx.clone();
            std::thread::spawn(move || {
                for i in 0..500u64 {
                    let chain: Vec<u64> = (0..8).map(|b| (i % 7) * 100 + b).collect();
                    idx.insert(EndpointId(t), &chain, None);
                    let _ = idx.match_prefix(&chain);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    idx.check_invariants();
    assert!(idx.len() <= 4 * 64);
}

/// The obvious implementation: each endpoint's hashes in a Vec, most recent first.
struct Naive {
    cfg: PrefixConfig,
    lrus: Vec<(EndpointId, usize, Vec<u64>)>,
}

impl Naive {
    fn insert(&mut self, ep: EndpointId, hashes: &[u64], cap: Option<u64>) {
        if hashes.is_empty() {
            return;
        }
        let pos = match self.lrus.iter().position(|l| l.0 == ep) {
            Some(p) => p,
            None => {
                let c = match cap {
                    Some(n) if self.cfg.auto_tune && n > 0 => n as usize,
                    _ => self.cfg.lru_capacity_per_server,
                };
                self.lrus.push((ep, c, Vec::new()));
                self.lrus.len() - 1
            }
        };
        let (_, cap, list) = &mut self.lrus[pos];
        let order: Vec<u64> = match self.cfg.mode {
            MatchMode::Upstream => hashes.to_vec(),
            MatchMode::Igw => hashes.iter().rev().copied().collect(),
        };
        for h in order {
            if let Some(i) = list.iter().position(|&x| x == h) {
                list.remove(i);
            } else if list.len() == *cap {
                if *cap == 0 {
                    continue;
                }
                list.pop();
            }
            list.insert(0, h);
        }
    }

    fn matches(&self, hashes: &[u64]) -> Vec<(u32, u32)> {
        let mut out: Vec<(u32, u32)> = Vec::new();
        match self.cfg.mode {
            MatchMode::Upstream => {
                for h in hashes {
                    let holders: Vec<u32> = self.lrus.iter().filter(|l| l.2.contains(h)).map(|l| l.0.0).collect();
                    if holders.is_empty() {
                        break;
                    }
                    for ep in holders {
                        match out.iter_mut().find(|e| e.0 == ep) {
                            Some(e) => e.1 += 1,
                            None => out.push((ep, 1)),
                        }
                    }
                }
            }
            MatchMode::Igw => {
                for l in &self.lrus {
                    let n = hashes.iter().take_while(|h| l.2.contains(h)).count() as u32;
                    if n > 0 {
                        out.push((l.0.0, n));
                    }
                }
            }
        }
        out.sort_unstable();
        out
    }

    fn retain(&mut self, keep: impl Fn(EndpointId) -> bool) {
        self.lrus.retain(|l| keep(l.0));
    }
}

#[derive(Clone, Debug)]
enum Op {
    Insert(u32, Vec<u64>, Option<u64>),
    Match(Vec<u64>),
    Remove(u32),
    Retain(u8),
}

fn chain() -> impl Strategy<Value = Vec<u64>> {
    // A small alphabet so prompts share prefixes, overlap and sometimes repeat a hash.
    prop::collection::vec(0u64..12, 0..9)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u32..5, chain(), prop::option::of(0u64..8)).prop_map(|(e, c, k)| Op::Insert(e, c, k)),
        4 => chain().prop_map(Op::Match),
        1 => (0u32..6).prop_map(Op::Remove),
        1 => any::<u8>().prop_map(Op::Retain),
    ]
}

fn model_check(mode: MatchMode, auto_tune: bool, ops: Vec<Op>) {
    let cfg = PrefixConfig { mode, auto_tune, lru_capacity_per_server: 5, ..PrefixConfig::default() };
    let idx = PrefixIndex::new(cfg.clone());
    let mut naive = Naive { cfg, lrus: Vec::new() };
    for op in ops {
        match op {
            Op::Insert(ep, c, cap) => {
                idx.insert(EndpointId(ep), &c, cap);
                naive.insert(EndpointId(ep), &c, cap);
            }
            Op::Match(c) => {
                let m = idx.match_prefix(&c);
                assert_eq!(m.total_blocks, c.len());
                assert_eq!(counts(&m), naive.matches(&c), "match {c:?}");
            }
            Op::Remove(ep) => {
                idx.remove_endpoint(EndpointId(ep));
                naive.retain(|e| e != EndpointId(ep));
            }
            Op::Retain(mask) => {
                let keep = move |e: EndpointId| mask & (1 << e.0) != 0;
                idx.retain(keep);
                naive.retain(keep);
            }
        }
        idx.check_invariants();
        assert_eq!(idx.len(), naive.lrus.iter().map(|l| l.2.len()).sum::<usize>());
        for (ep, cap, list) in &naive.lrus {
            assert_eq!(&idx.lru_order(*ep), list, "order of {ep}");
            assert_eq!(idx.endpoint_usage(*ep), Some((list.len(), *cap)));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn upstream_matches_naive_model(ops in prop::collection::vec(op(), 1..60), auto_tune: bool) {
        model_check(MatchMode::Upstream, auto_tune, ops);
    }

    #[test]
    fn igw_matches_naive_model(ops in prop::collection::vec(op(), 1..60), auto_tune: bool) {
        model_check(MatchMode::Igw, auto_tune, ops);
    }

    #[test]
    fn hashing_is_a_prefix_chain(text in prop::collection::vec(any::<u8>(), 0..700), cut in 0usize..700) {
        let cfg = PrefixConfig { max_prefix_blocks: 8, ..PrefixConfig::default() };
        let full = hash_prompt(&cfg, "m", None, &text);
        let expect = if text.len() < 64 { 0 } else { text.len().min(512).div_ceil(64) };
        prop_assert_eq!(full.len(), expect);
        // Cutting the text at a block boundary keeps the hashes of the blocks before the cut.
        let cut = cut.min(text.len()) / 64 * 64;
        let part = hash_prompt(&cfg, "m", None, &text[..cut]);
        prop_assert!(part.len() <= full.len());
        prop_assert_eq!(&part[..], &full[..part.len()]);
    }
}

#[test]
fn forget_takes_back_only_what_the_failed_attempt_added() {
    for mode in [MatchMode::Igw, MatchMode::Upstream] {
        let idx = index(mode, 100);
        // A already holds 1..=3 from an earlier request; B holds 1..=2.
        idx.insert(A, &[1, 2, 3], None);
        idx.insert(B, &[1, 2], None);
        // A request for 1..=5 routed to A fails before A serves it.
        let mut added = Vec::new();
        idx.insert_new(A, &[1, 2, 3, 4, 5], None, &mut added);
        added.sort_unstable();
        assert_eq!(added, [4, 5]);
        idx.forget(A, &added);
        idx.check_invariants();
        assert_eq!(counts(&idx.match_prefix(&[1, 2, 3, 4, 5])), [(1, 3), (2, 2)], "{mode:?}");
        assert_eq!(idx.len(), 5);
        // Forgetting what an endpoint does not hold is a no-op.
        idx.forget(C, &[1]);
        idx.forget(B, &[9]);
        idx.check_invariants();
    }
}

proptest! {
    #[test]
    fn forget_keeps_the_index_consistent(
        ops in proptest::collection::vec((0u32..3, proptest::collection::vec(0u64..40, 0..12), any::<bool>()), 1..60),
    ) {
        let idx = index(MatchMode::Igw, 16);
        for (ep, hashes, fail) in ops {
            let ep = EndpointId(ep);
            let mut added = Vec::new();
            let mut unique = hashes.clone();
            unique.sort_unstable();
            unique.dedup();
            idx.insert_new(ep, &unique, None, &mut added);
            if fail {
                idx.forget(ep, &added);
                let m = idx.match_prefix(&added);
                prop_assert!(added.is_empty() || m.matched(ep) == 0);
            }
            idx.check_invariants();
        }
    }
}
