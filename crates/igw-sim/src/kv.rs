//! The KV-cache block pool with prefix caching.
//!
//! Blocks are counted, not stored: a block is either plain (no hash) or registered under the hash of
//! the 16-token prompt block it holds. Blocks that no request references but that still hold a hash
//! stay in the cache and are evicted least-recently-freed first when a new block is needed.

use std::collections::{BTreeMap, HashMap};

/// One block held by a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockRef {
    /// A block with no registered hash (partial block, generated tokens, or a duplicate).
    Plain,
    /// A block registered in the prefix cache under this hash.
    Hashed(u64),
}

#[derive(Debug, Clone, Copy)]
struct Cached {
    refs: u32,
    /// Position in the eviction order while `refs == 0`.
    stamp: u64,
}

/// Block accounting for one engine.
#[derive(Debug, Clone)]
pub struct BlockPool {
    num_blocks: u32,
    free_plain: u32,
    used: u32,
    cached: HashMap<u64, Cached>,
    evictable: BTreeMap<u64, u64>,
    next_stamp: u64,
}

impl BlockPool {
    /// A pool of `num_blocks` empty blocks.
    pub fn new(num_blocks: u32) -> Self {
        BlockPool {
            num_blocks,
            free_plain: num_blocks,
            used: 0,
            cached: HashMap::new(),
            evictable: BTreeMap::new(),
            next_stamp: 0,
        }
    }

    /// Total blocks.
    pub fn num_blocks(&self) -> u32 {
        self.num_blocks
    }

    /// Blocks referenced by at least one request.
    pub fn used(&self) -> u32 {
        self.used
    }

    /// Blocks that an allocation can take (empty or evictable cached blocks).
    pub fn free(&self) -> u32 {
        self.free_plain + self.evictable.len() as u32
    }

    /// Fraction of blocks in use, 0..=1 (vLLM's `kv_cache_usage_perc`).
    pub fn usage(&self) -> f64 {
        f64::from(self.used) / f64::from(self.num_blocks.max(1))
    }

    /// Hashes currently in the prefix cache (referenced or evictable).
    pub fn cached_blocks(&self) -> usize {
        self.cached.len()
    }

    /// How many leading `hashes` are in the cache, at most `max_blocks`.
    pub fn lookup(&self, hashes: &[u64], max_blocks: usize) -> usize {
        hashes.iter().take(max_blocks).take_while(|h| self.cached.contains_key(h)).count()
    }

    /// How many of the first `n` hashes are cached but unreferenced (acquiring them takes them out of
    /// the free pool).
    pub fn evictable_among(&self, hashes: &[u64], n: usize) -> u32 {
        hashes.iter().take(n).filter(|h| self.cached.get(h).is_some_and(|c| c.refs == 0)).count() as u32
    }

    /// Takes a reference on the cached blocks of the first `n` hashes (found by [`lookup`](Self::lookup))
    /// and appends them to `blocks`.
    pub fn acquire_cached(&mut self, hashes: &[u64], n: usize, blocks: &mut Vec<BlockRef>) {
        for h in hashes.iter().take(n) {
            if let Some(c) = self.cached.get_mut(h) {
                if c.refs == 0 {
                    self.evictable.remove(&c.stamp);
                    self.used += 1;
                }
                c.refs += 1;
                blocks.push(BlockRef::Hashed(*h));
            }
        }
    }

    /// Allocates `n` plain blocks onto `blocks`, evicting cached blocks as needed. Returns false (and
    /// allocates nothing) if fewer than `n` blocks are free.
    pub fn allocate(&mut self, n: u32, blocks: &mut Vec<BlockRef>) -> bool {
        if n > self.free() {
            return false;
        }
        for _ in 0..n {
            if self.free_plain > 0 {
                self.free_plain -= 1;
            } else if let Some((_, h)) = self.evictable.pop_first() {
                self.cached.remove(&h);
            }
            blocks.push(BlockRef::Plain);
        }
        self.used += n;
        true
    }

    /// Registers a plain block that now holds a full prompt block under `hash`. If the hash is
    /// already cached (another request computed the same block), the block stays plain.
    pub fn register(&mut self, block: &mut BlockRef, hash: u64) {
        if *block == BlockRef::Plain && !self.cached.contains_key(&hash) {
            self.cached.insert(hash, Cached { refs: 1, stamp: 0 });
            *block = BlockRef::Hashed(hash);
        }
    }

    /// Releases a request's blocks. Tail blocks become evictable first, as in vLLM.
    pub fn release(&mut self, blocks: &mut Vec<BlockRef>) {
        for b in blocks.drain(..).rev() {
            match b {
                BlockRef::Plain => {
                    self.used -= 1;
                    self.free_plain += 1;
                }
                BlockRef::Hashed(h) => {
                    if let Some(c) = self.cached.get_mut(&h) {
                        c.refs -= 1;
                        if c.refs == 0 {
                            self.used -= 1;
                            c.stamp = self.next_stamp;
                            self.evictable.insert(self.next_stamp, h);
                            self.next_stamp += 1;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn allocate_release_and_capacity() {
        let mut p = BlockPool::new(4);
        let mut a = Vec::new();
        assert!(p.allocate(3, &mut a));
        assert!(!p.allocate(2, &mut a), "only one block left");
        assert_eq!((p.used(), p.free()), (3, 1));
        p.release(&mut a);
        assert_eq!((p.used(), p.free()), (0, 4));
    }

    #[test]
    fn prefix_hits_share_blocks_and_lru_evicts_oldest() {
        let mut p = BlockPool::new(4);
        let mut a = Vec::new();
        assert!(p.allocate(2, &mut a));
        p.register(&mut a[0], 10);
        p.register(&mut a[1], 11);
        // A second request shares the two cached blocks: no new blocks used.
        assert_eq!(p.lookup(&[10, 11, 12], 3), 2);
        let mut b = Vec::new();
        p.acquire_cached(&[10, 11], 2, &mut b);
        assert_eq!(p.used(), 2);
        p.release(&mut a);
        p.release(&mut b);
        assert_eq!((p.used(), p.free(), p.cached_blocks()), (0, 4, 2));
        // Needing all 4 blocks evicts both cached ones; the tail block (11) goes first.
        let mut c = Vec::new();
        assert!(p.allocate(3, &mut c));
        assert_eq!(p.lookup(&[10], 1), 1);
        assert_eq!(p.lookup(&[11], 1), 0);
        // A cached block in use cannot be evicted.
        let mut d = Vec::new();
        p.acquire_cached(&[10], 1, &mut d);
        assert!(!p.allocate(1, &mut c));
    }
}
