//! Block hashing of prompt text (upstream's `hashing.go` algorithm, own implementation).

use xxhash_rust::xxh64::{Xxh64, xxh64};

use super::PrefixConfig;

/// Hashes `text` into a chain of block hashes, scoped to `target_model` and `cache_salt`.
///
/// The text is cut into blocks of [`PrefixConfig::chars_per_block`] bytes (64 by default), after
/// truncation to [`PrefixConfig::max_blocks`] blocks. A trailing partial block is hashed too and
/// counts as a block. Text shorter than one block yields no hashes: such a prompt scores 0 everywhere.
///
/// The chain seed `h0 = xxh64(target_model ‖ cache_salt)` is not emitted; block `i` hashes to
/// `h_i = xxh64(block_i ‖ h_{i-1} as 8 little-endian bytes)`, all with xxh64 seed 0. Each hash thus
/// stands for the whole prefix up to and including its block, and different models (LoRA adapters)
/// or salts (tenants) produce disjoint chains.
pub fn hash_prompt(cfg: &PrefixConfig, target_model: &str, cache_salt: Option<&str>, text: &[u8]) -> Vec<u64> {
    let mut out = Vec::new();
    hash_prompt_into(cfg, target_model, cache_salt, text, &mut out);
    out
}

/// [`hash_prompt`] writing into `out` (cleared first), so a caller can reuse the buffer.
pub fn hash_prompt_into(
    cfg: &PrefixConfig,
    target_model: &str,
    cache_salt: Option<&str>,
    text: &[u8],
    out: &mut Vec<u64>,
) {
    out.clear();
    let chars = cfg.chars_per_block();
    if chars == 0 || text.len() < chars {
        return;
    }
    let limit = cfg.max_blocks().saturating_mul(chars);
    let text = &text[..text.len().min(limit)];

    let mut seed = Xxh64::new(0);
    seed.update(target_model.as_bytes());
    if let Some(salt) = cache_salt {
        seed.update(salt.as_bytes());
    }
    let mut prev = seed.digest();

    out.reserve(text.len().div_ceil(chars));
    // One scratch buffer holds `block ‖ LE64(parent)` so each block is a single one-shot xxh64 call.
    let mut buf = Vec::with_capacity(chars + 8);
    for block in text.chunks(chars) {
        buf.clear();
        buf.extend_from_slice(block);
        buf.extend_from_slice(&prev.to_le_bytes());
        prev = xxh64(&buf, 0);
        out.push(prev);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cfg() -> PrefixConfig {
        PrefixConfig::default()
    }

    fn text(n: usize) -> Vec<u8> {
        (0..n).map(|i| b'a' + (i % 26) as u8).collect()
    }

    #[test]
    fn deterministic() {
        let t = text(1000);
        assert_eq!(hash_prompt(&cfg(), "m", None, &t), hash_prompt(&cfg(), "m", None, &t));
    }

    #[test]
    fn short_prompt_has_no_hashes() {
        assert!(hash_prompt(&cfg(), "m", None, &text(63)).is_empty());
        assert!(hash_prompt(&cfg(), "m", None, b"").is_empty());
        assert_eq!(hash_prompt(&cfg(), "m", None, &text(64)).len(), 1);
    }

    #[test]
    fn partial_trailing_block_counts() {
        let t = text(64 * 3 + 1);
        let h = hash_prompt(&cfg(), "m", None, &t);
        assert_eq!(h.len(), 4);
        // The full blocks hash the same as the prompt cut at the block boundary.
        assert_eq!(h[..3], hash_prompt(&cfg(), "m", None, &t[..192])[..]);
        // The partial block depends on its content.
        let mut t2 = t.clone();
        *t2.last_mut().unwrap() ^= 1;
        assert_ne!(h[3], hash_prompt(&cfg(), "m", None, &t2)[3]);
    }

    #[test]
    fn matches_the_formula() {
        let t = text(100);
        let h0 = xxh64(b"modelsalt", 0);
        let mut b1 = t[..64].to_vec();
        b1.extend_from_slice(&h0.to_le_bytes());
        let h1 = xxh64(&b1, 0);
        let mut b2 = t[64..].to_vec();
        b2.extend_from_slice(&h1.to_le_bytes());
        let h2 = xxh64(&b2, 0);
        assert_eq!(hash_prompt(&cfg(), "model", Some("salt"), &t), vec![h1, h2]);
    }

    #[test]
    fn model_and_salt_scope_the_chain() {
        let t = text(64 * 10);
        let base = hash_prompt(&cfg(), "m1", None, &t);
        for other in [
            hash_prompt(&cfg(), "m2", None, &t),
            hash_prompt(&cfg(), "m1", Some("tenant-a"), &t),
            hash_prompt(&cfg(), "m1", Some("tenant-b"), &t),
        ] {
            assert_eq!(other.len(), base.len());
            assert!(other.iter().all(|h| !base.contains(h)));
        }
        assert_ne!(hash_prompt(&cfg(), "m1", Some("tenant-a"), &t), hash_prompt(&cfg(), "m1", Some("tenant-b"), &t));
    }

    #[test]
    fn truncates_to_max_blocks() {
        let t = text(64 * 300 + 5);
        let h = hash_prompt(&cfg(), "m", None, &t);
        assert_eq!(h.len(), 256);
        let c = PrefixConfig { max_prefix_tokens: 160, ..cfg() };
        assert_eq!(c.max_blocks(), 10);
        let h10 = hash_prompt(&c, "m", None, &t);
        assert_eq!(h10[..], h[..10]);
        let c = PrefixConfig { max_prefix_blocks: 3, ..cfg() };
        assert_eq!(hash_prompt(&c, "m", None, &t).len(), 3);
    }

    #[test]
    fn zero_block_size_gives_nothing() {
        let c = PrefixConfig { block_size_tokens: 0, ..cfg() };
        assert!(c.validate().is_err());
        assert!(hash_prompt(&c, "m", None, &text(500)).is_empty());
        assert!(cfg().validate().is_ok());
    }
}
