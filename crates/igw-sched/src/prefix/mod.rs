//! Approximate prefix-cache index (`../shared/spec/scheduler.md` §3.1).
//!
//! The gateway cannot see which KV-cache blocks a model server holds, so it keeps its own guess: after
//! routing a request it assumes the chosen endpoint now caches the whole prompt, and before routing the
//! next one it asks which endpoints hold the longest prefix of it.
//!
//! * [`hash_prompt`] turns the prompt text into a chain of block hashes (each hash covers the block and,
//!   through its parent, everything before it), scoped to the target model and `cache_salt`.
//! * [`PrefixIndex`] maps block hashes to the endpoints believed to hold them, with a bounded LRU per
//!   endpoint standing in for the engine's block pool.
//! * [`PrefixIndex::match_prefix`] answers "how many leading blocks does each endpoint hold?" as a
//!   [`PrefixMatch`]; a scorer typically uses `matched / total_blocks`.
//!
//! Two behaviours are available through [`MatchMode`]: [`MatchMode::Upstream`] reproduces the upstream
//! Endpoint Picker exactly (for A/B parity runs), [`MatchMode::Igw`] (the default) fixes its weak points
//! (§3.1 "Weak points", §8 "Cheap wins"); see the variants for what changes and why.

mod hash;
mod holders;
mod index;
mod lru;

#[cfg(test)]
mod tests;

pub use hash::{hash_prompt, hash_prompt_into};
pub use index::{PrefixIndex, PrefixMatch, bytes_per_entry};

/// How [`PrefixIndex`] counts matches and orders recency.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MatchMode {
    /// Upstream's algorithm, bit for bit, for `upstream-default` A/B comparisons.
    ///
    /// * Matching walks the hashes in order and stops at the first block no endpoint holds; every
    ///   endpoint holding a block gets +1, whether or not it held the blocks before it.
    /// * Insert adds `h0..hn` in prompt order, so the chain root is the *least* recent entry of the
    ///   endpoint's LRU and is evicted first, which breaks every longer match on that endpoint.
    /// * Lookups never refresh recency.
    Upstream,
    /// igw's variant (the default).
    ///
    /// * **Per-endpoint chain continuity.** An endpoint's count is the length of its *contiguous* run
    ///   from block 0, and the walk stops once no endpoint continues. A block is only reusable by the
    ///   engine if all blocks before it are cached too (prefix caching is a chain), so a stray later
    ///   block must not inflate the score.
    /// * **Tail-first insert.** Insert walks the chain backwards (tail first, root last), so the root is
    ///   the most recent entry and the tail is evicted first. This mirrors vLLM, which frees tail blocks
    ///   first, and keeps the shared system-prompt blocks that most requests reuse.
    /// * **Refresh on routing.** Re-inserting a chain (done for every routed request) moves all its blocks,
    ///   matched part included, to the front; hot prefixes therefore stay resident. Plain lookups still
    ///   do not refresh: only a lookup that led to routing says the engine really touched those blocks.
    #[default]
    Igw,
}

/// Prefix-index settings; defaults are upstream's (`approximateprefix/types.go`), except [`Self::mode`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefixConfig {
    /// Block size in tokens (vLLM's default block size, 16).
    pub block_size_tokens: usize,
    /// Characters assumed per token (4); one block covers `block_size_tokens * chars_per_token` bytes.
    pub chars_per_token: usize,
    /// At most this many blocks are hashed (256, i.e. 16 KiB of text with the defaults).
    pub max_prefix_blocks: usize,
    /// If > 0, overrides [`Self::max_prefix_blocks`] with `max_prefix_tokens / block_size_tokens`.
    pub max_prefix_tokens: usize,
    /// Entries per endpoint LRU when its KV-cache size is unknown (31,250 ≈ 500K tokens / 16).
    pub lru_capacity_per_server: usize,
    /// Size each endpoint's LRU from its `num_gpu_blocks` metric when it is known.
    pub auto_tune: bool,
    /// Matching and recency behaviour.
    pub mode: MatchMode,
}

impl Default for PrefixConfig {
    fn default() -> Self {
        PrefixConfig {
            block_size_tokens: 16,
            chars_per_token: 4,
            max_prefix_blocks: 256,
            max_prefix_tokens: 0,
            lru_capacity_per_server: 31_250,
            auto_tune: true,
            mode: MatchMode::Igw,
        }
    }
}

impl PrefixConfig {
    /// The defaults with [`MatchMode::Upstream`]: upstream's behaviour exactly.
    pub fn upstream() -> Self {
        PrefixConfig { mode: MatchMode::Upstream, ..Self::default() }
    }

    /// Bytes of prompt text per block (`block_size_tokens * chars_per_token`, 64 by default).
    pub fn chars_per_block(&self) -> usize {
        self.block_size_tokens.saturating_mul(self.chars_per_token)
    }

    /// The most blocks hashed per prompt: `max_prefix_tokens / block_size_tokens` when
    /// `max_prefix_tokens > 0`, else `max_prefix_blocks`.
    pub fn max_blocks(&self) -> usize {
        if self.max_prefix_tokens > 0 && self.block_size_tokens > 0 {
            self.max_prefix_tokens / self.block_size_tokens
        } else {
            self.max_prefix_blocks
        }
    }

    /// Checks the settings a config loader should reject: a zero block size or zero characters per
    /// token (upstream rejects `blockSizeTokens <= 0`). With such a config [`hash_prompt`] returns no
    /// hashes rather than failing.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.block_size_tokens == 0 {
            return Err("prefix cache: block_size_tokens must be > 0");
        }
        if self.chars_per_token == 0 {
            return Err("prefix cache: chars_per_token must be > 0");
        }
        Ok(())
    }
}
