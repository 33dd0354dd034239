//! The hash → endpoints index with one bounded LRU per endpoint.

use std::fmt;

use igw_core::EndpointId;
use parking_lot::RwLock;
use rustc_hash::FxHashMap;

use super::holders::Holders;
use super::lru::{Push, SlabLru};
use super::{MatchMode, PrefixConfig};

/// Nominal memory cost of one `(hash, endpoint)` entry, in bytes, when every hash is held by one
/// endpoint: a 16-byte LRU node plus one slot of the hash map (8-byte key, 24-byte inline holder set,
/// 1 control byte) at hashbrown's maximum load of 7/8, i.e. 16 + ⌈33 · 8/7⌉ = 54 bytes. A hash held by
/// `k > 2` endpoints costs 16 + 8 bytes per entry plus the map slot shared by the `k` entries. Right after
/// the map doubles its load is 7/16, which adds up to another 38 bytes per distinct hash;
/// [`PrefixIndex::approx_bytes`] measures the real capacities instead of using this figure.
pub const fn bytes_per_entry() -> usize {
    let map_slot = size_of::<u64>() + size_of::<Holders>() + 1;
    SlabLru::NODE_BYTES + (map_slot * 8).div_ceil(7)
}

/// How many leading blocks of a prompt each endpoint holds (the result of [`PrefixIndex::match_prefix`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrefixMatch {
    /// Number of blocks in the prompt (the length of the hash chain).
    pub total_blocks: usize,
    /// `(endpoint, matched blocks)`, sorted by endpoint, only endpoints with at least one block.
    entries: Vec<(EndpointId, u32)>,
}

impl PrefixMatch {
    /// A match result from explicit counts (handy in scorer tests). Entries are sorted; zero counts and
    /// duplicate endpoints (the largest count wins) are dropped.
    pub fn new(total_blocks: usize, mut entries: Vec<(EndpointId, u32)>) -> Self {
        entries.retain(|e| e.1 > 0);
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        entries.dedup_by_key(|e| e.0);
        PrefixMatch { total_blocks, entries }
    }

    /// Blocks of the prompt that `endpoint` holds (0 if none). `O(log n)` in the matched endpoints.
    #[inline]
    pub fn matched(&self, endpoint: EndpointId) -> u32 {
        match self.entries.binary_search_by_key(&endpoint, |e| e.0) {
            Ok(i) => self.entries[i].1,
            Err(_) => 0,
        }
    }

    /// `matched(endpoint) / total_blocks` in `[0, 1]` (0 for a prompt with no blocks): upstream's score.
    pub fn ratio(&self, endpoint: EndpointId) -> f64 {
        if self.total_blocks == 0 { 0.0 } else { f64::from(self.matched(endpoint)) / self.total_blocks as f64 }
    }

    /// The largest match over all endpoints.
    pub fn max_matched(&self) -> u32 {
        self.entries.iter().map(|e| e.1).max().unwrap_or(0)
    }

    /// `(endpoint, matched blocks)` for every endpoint with a match, sorted by endpoint.
    pub fn entries(&self) -> &[(EndpointId, u32)] {
        &self.entries
    }

    /// True if no endpoint holds even the first block.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The approximate prefix-cache index: which endpoints are believed to hold which block hashes.
///
/// `hash → sorted set of (endpoint, LRU slot)` in one `FxHashMap`, plus one slab LRU per endpoint
/// (see [`bytes_per_entry`]). Everything sits behind one `parking_lot::RwLock`: matching takes the read
/// lock once per call (readers run concurrently), insert takes the write lock once per routed request
/// for a few microseconds. The index is `Send + Sync`; share it with an `Arc`.
pub struct PrefixIndex {
    cfg: PrefixConfig,
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    map: FxHashMap<u64, Holders>,
    lrus: FxHashMap<EndpointId, SlabLru>,
    /// Total `(hash, endpoint)` entries (the sum of the LRU lengths).
    entries: usize,
    /// Heap bytes of spilled holder sets.
    holder_heap: usize,
}

impl fmt::Debug for PrefixIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.inner.read();
        f.debug_struct("PrefixIndex")
            .field("mode", &self.cfg.mode)
            .field("endpoints", &inner.lrus.len())
            .field("hashes", &inner.map.len())
            .field("entries", &inner.entries)
            .finish()
    }
}

impl PrefixIndex {
    /// An empty index.
    pub fn new(cfg: PrefixConfig) -> Self {
        PrefixIndex { cfg, inner: RwLock::new(Inner::default()) }
    }

    /// The configuration the index was built with.
    pub fn config(&self) -> &PrefixConfig {
        &self.cfg
    }

    /// For every endpoint holding a prefix of `hashes`, the number of matched blocks.
    ///
    /// [`MatchMode::Upstream`]: walk the blocks in order, stop at the first block nobody holds, +1 for
    /// every holder of each block. [`MatchMode::Igw`]: an endpoint's count is its contiguous run from
    /// block 0; stop when no endpoint continues. Neither mode refreshes recency.
    pub fn match_prefix(&self, hashes: &[u64]) -> PrefixMatch {
        let mut out = PrefixMatch::default();
        self.match_prefix_into(hashes, &mut out);
        out
    }

    /// [`Self::match_prefix`] writing into `out`, reusing its allocation.
    pub fn match_prefix_into(&self, hashes: &[u64], out: &mut PrefixMatch) {
        out.total_blocks = hashes.len();
        out.entries.clear();
        let inner = self.inner.read();
        match self.cfg.mode {
            MatchMode::Upstream => match_upstream(&inner.map, hashes, &mut out.entries),
            MatchMode::Igw => match_chain(&inner.map, hashes, &mut out.entries),
        }
    }

    /// Records that `endpoint` now caches the whole prompt `hashes` (called after routing).
    ///
    /// `capacity_blocks` is the endpoint's `num_gpu_blocks` metric when known; the endpoint's LRU is sized
    /// when it is first seen: `capacity_blocks` if `auto_tune` is on and it is `Some(n > 0)`, else
    /// `lru_capacity_per_server`. Later values do not resize it (as upstream).
    ///
    /// Upstream mode adds `h0..hn` in order; igw mode adds them tail first so the root ends up most
    /// recent (see [`MatchMode::Igw`]). Either way a hash already held is moved to the front, and a full
    /// LRU evicts its least recent hash, unlinking the endpoint from it.
    pub fn insert(&self, endpoint: EndpointId, hashes: &[u64], capacity_blocks: Option<u64>) {
        self.insert_inner(endpoint, hashes, capacity_blocks, |_| {});
    }

    /// [`Self::insert`], appending to `added` the hashes `endpoint` did not hold before, so that
    /// [`Self::forget`] can take them back if the request never reached the endpoint.
    pub fn insert_new(&self, endpoint: EndpointId, hashes: &[u64], capacity_blocks: Option<u64>, added: &mut Vec<u64>) {
        self.insert_inner(endpoint, hashes, capacity_blocks, |h| added.push(h));
    }

    /// Takes back hashes recorded for `endpoint` by [`Self::insert_new`]: the request that was
    /// routed there failed before the endpoint served it, so it caches none of them. Hashes the
    /// endpoint no longer holds are skipped; entries the insert evicted are not restored.
    pub fn forget(&self, endpoint: EndpointId, hashes: &[u64]) {
        if hashes.is_empty() {
            return;
        }
        let mut guard = self.inner.write();
        let inner = &mut *guard;
        let Some(lru) = inner.lrus.get_mut(&endpoint) else { return };
        for &h in hashes {
            let Some(slot) = inner.map.get(&h).and_then(|hs| hs.slot_of(endpoint)) else { continue };
            unlink(&mut inner.map, &mut inner.holder_heap, h, endpoint);
            inner.entries -= 1;
            if let Some((moved, _)) = lru.remove(slot)
                && let Some(holders) = inner.map.get_mut(&moved)
            {
                holders.insert(endpoint, slot);
            }
        }
    }

    /// The insert, calling `on_new` for each hash `endpoint` did not hold before (monomorphized:
    /// a plain insert pays nothing for it).
    fn insert_inner(
        &self,
        endpoint: EndpointId,
        hashes: &[u64],
        capacity_blocks: Option<u64>,
        mut on_new: impl FnMut(u64),
    ) {
        if hashes.is_empty() {
            return;
        }
        let capacity = match capacity_blocks {
            Some(n) if self.cfg.auto_tune && n > 0 => usize::try_from(n).unwrap_or(usize::MAX),
            _ => self.cfg.lru_capacity_per_server,
        };
        let mut guard = self.inner.write();
        let inner = &mut *guard;
        let lru = inner.lrus.entry(endpoint).or_insert_with(|| SlabLru::new(capacity));
        let mut put = |h: u64| {
            if put_one(&mut inner.map, lru, &mut inner.entries, &mut inner.holder_heap, endpoint, h) {
                on_new(h);
            }
        };
        match self.cfg.mode {
            MatchMode::Upstream => hashes.iter().for_each(|&h| put(h)),
            MatchMode::Igw => hashes.iter().rev().for_each(|&h| put(h)),
        }
    }

    /// Forgets everything about `endpoint`.
    pub fn remove_endpoint(&self, endpoint: EndpointId) {
        let mut guard = self.inner.write();
        guard.drop_endpoint(endpoint);
    }

    /// Keeps only the endpoints for which `keep` returns true (drop endpoints gone from the datastore).
    pub fn retain(&self, keep: impl Fn(EndpointId) -> bool) {
        let mut guard = self.inner.write();
        let gone: Vec<EndpointId> = guard.lrus.keys().copied().filter(|&ep| !keep(ep)).collect();
        for ep in gone {
            guard.drop_endpoint(ep);
        }
    }

    /// Total `(hash, endpoint)` entries.
    pub fn len(&self) -> usize {
        self.inner.read().entries
    }

    /// True if the index holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of endpoints with an LRU.
    pub fn num_endpoints(&self) -> usize {
        self.inner.read().lrus.len()
    }

    /// `(entries, capacity)` of `endpoint`'s LRU, if it has one.
    pub fn endpoint_usage(&self, endpoint: EndpointId) -> Option<(usize, usize)> {
        self.inner.read().lrus.get(&endpoint).map(|l| (l.len(), l.capacity()))
    }

    /// Estimated heap bytes of the index, from the real table capacities (see [`bytes_per_entry`]).
    pub fn approx_bytes(&self) -> usize {
        let inner = self.inner.read();
        let map = inner.map.capacity() * (size_of::<(u64, Holders)>() + 1);
        let lru_tables = inner.lrus.capacity() * (size_of::<(EndpointId, SlabLru)>() + 1);
        let slabs: usize = inner.lrus.values().map(SlabLru::heap_bytes).sum();
        map + inner.holder_heap + lru_tables + slabs
    }
}

#[cfg(test)]
impl PrefixIndex {
    /// `endpoint`'s hashes from most to least recent.
    pub(super) fn lru_order(&self, endpoint: EndpointId) -> Vec<u64> {
        self.inner.read().lrus.get(&endpoint).map(|l| l.iter().collect()).unwrap_or_default()
    }

    /// Panics unless the map and the LRUs describe the same entries.
    pub(super) fn check_invariants(&self) {
        let inner = self.inner.read();
        let mut held = 0;
        let mut heap = 0;
        for (h, holders) in &inner.map {
            assert!(!holders.is_empty(), "empty holder set kept for {h}");
            assert!(holders.as_slice().windows(2).all(|w| w[0].0 < w[1].0), "holders unsorted");
            heap += holders.heap_bytes();
            for &(ep, slot) in holders.as_slice() {
                let lru = inner.lrus.get(&ep).expect("holder without LRU");
                assert_eq!(lru.hash(slot), *h, "slot of {ep} points elsewhere");
                held += 1;
            }
        }
        let mut listed = 0;
        for (ep, lru) in &inner.lrus {
            assert!(lru.len() <= lru.capacity());
            assert_eq!(lru.iter().count(), lru.len());
            for h in lru.iter() {
                assert!(inner.map.get(&h).and_then(|hs| hs.slot_of(*ep)).is_some(), "{h} of {ep} not in map");
            }
            listed += lru.len();
        }
        assert_eq!(held, inner.entries);
        assert_eq!(listed, inner.entries);
        assert_eq!(heap, inner.holder_heap);
    }
}

impl Inner {
    fn drop_endpoint(&mut self, ep: EndpointId) {
        let Some(lru) = self.lrus.remove(&ep) else {
            return;
        };
        for h in lru.iter() {
            unlink(&mut self.map, &mut self.holder_heap, h, ep);
        }
        self.entries -= lru.len();
    }
}

/// Makes `h` the most recent hash of `ep`'s LRU, adding it (and evicting) if needed; true if `ep`
/// did not hold it before.
fn put_one(
    map: &mut FxHashMap<u64, Holders>,
    lru: &mut SlabLru,
    entries: &mut usize,
    holder_heap: &mut usize,
    ep: EndpointId,
    h: u64,
) -> bool {
    if let Some(slot) = map.get(&h).and_then(|hs| hs.slot_of(ep)) {
        lru.touch(slot);
        return false;
    }
    let slot = match lru.push_front(h) {
        Push::Refused => return false,
        Push::Added(slot) => {
            *entries += 1;
            slot
        }
        Push::Recycled { slot, evicted } => {
            unlink(map, holder_heap, evicted, ep);
            slot
        }
    };
    let holders = map.entry(h).or_default();
    let before = holders.heap_bytes();
    holders.insert(ep, slot);
    *holder_heap = *holder_heap + holders.heap_bytes() - before;
    true
}

/// Removes `ep` from the holders of `h`, deleting the key when no holder is left.
fn unlink(map: &mut FxHashMap<u64, Holders>, holder_heap: &mut usize, h: u64, ep: EndpointId) {
    if let Some(holders) = map.get_mut(&h) {
        let before = holders.heap_bytes();
        holders.remove(ep);
        *holder_heap = *holder_heap + holders.heap_bytes() - before;
        if holders.is_empty() {
            map.remove(&h);
        }
    }
}

/// Upstream matching: every holder of each block gets +1 until a block has no holder.
fn match_upstream(map: &FxHashMap<u64, Holders>, hashes: &[u64], out: &mut Vec<(EndpointId, u32)>) {
    let mut fresh: Vec<(EndpointId, u32)> = Vec::new();
    for h in hashes {
        let Some(holders) = map.get(h) else { break };
        let holders = holders.as_slice();
        if holders.is_empty() {
            break;
        }
        // Both lists are sorted by endpoint: one merge pass increments known endpoints and collects new ones.
        let mut i = 0;
        for &(ep, _) in holders {
            while i < out.len() && out[i].0 < ep {
                i += 1;
            }
            if i < out.len() && out[i].0 == ep {
                out[i].1 += 1;
            } else {
                fresh.push((ep, 1));
            }
        }
        if !fresh.is_empty() {
            out.append(&mut fresh);
            out.sort_unstable_by_key(|e| e.0);
        }
    }
}

/// igw matching: an endpoint counts block `i` only if it also holds blocks `0..i`.
fn match_chain(map: &FxHashMap<u64, Holders>, hashes: &[u64], out: &mut Vec<(EndpointId, u32)>) {
    let Some((first, rest)) = hashes.split_first() else { return };
    let Some(holders) = map.get(first) else { return };
    out.extend(holders.as_slice().iter().map(|&(ep, _)| (ep, 1)));
    let mut alive = out.len();
    for (depth, h) in (1u32..).zip(rest) {
        if alive == 0 {
            break;
        }
        let Some(holders) = map.get(h) else { break };
        let holders = holders.as_slice();
        let mut next_alive = 0;
        if holders.len() > 8 * alive {
            // Few survivors, many holders: look each survivor up.
            for e in out.iter_mut().filter(|e| e.1 == depth) {
                if holders.binary_search_by_key(&e.0, |h| h.0).is_ok() {
                    e.1 += 1;
                    next_alive += 1;
                }
            }
        } else {
            // Merge the sorted survivors with the sorted holders.
            let mut j = 0;
            for e in out.iter_mut().filter(|e| e.1 == depth) {
                while j < holders.len() && holders[j].0 < e.0 {
                    j += 1;
                }
                if j == holders.len() {
                    break;
                }
                if holders[j].0 == e.0 {
                    e.1 += 1;
                    next_alive += 1;
                }
            }
        }
        alive = next_alive;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bytes_per_entry_is_documented_value() {
        assert_eq!(bytes_per_entry(), 54);
    }

    #[test]
    fn prefix_match_new_normalises() {
        let m =
            PrefixMatch::new(4, vec![(EndpointId(3), 2), (EndpointId(1), 0), (EndpointId(2), 4), (EndpointId(3), 3)]);
        assert_eq!(m.entries(), [(EndpointId(2), 4), (EndpointId(3), 3)]);
        assert_eq!(m.matched(EndpointId(1)), 0);
        assert_eq!(m.matched(EndpointId(3)), 3);
        assert_eq!(m.ratio(EndpointId(2)), 1.0);
        assert_eq!(m.max_matched(), 4);
        assert_eq!(PrefixMatch::default().ratio(EndpointId(0)), 0.0);
    }

    #[test]
    fn index_is_send_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<PrefixIndex>();
    }
}
