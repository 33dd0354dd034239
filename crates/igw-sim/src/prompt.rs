//! Prompt accounting without a tokenizer.
//!
//! The simulator counts **one token per 4 characters** of prompt text (rounded up, at least one),
//! and hashes the text in chained 64-character blocks (16 tokens × 4 characters) for the engine's
//! prefix cache, so prompts that share a text prefix share cached KV blocks. Token ids (for the
//! `/render` and `/tokenize` endpoints) are a hash of each 4-character piece.

/// Characters per simulated token.
pub const CHARS_PER_TOKEN: usize = 4;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// Prompt tokens of a text: ⌈chars / 4⌉, at least 1.
pub fn count_tokens(text: &str) -> u32 {
    let chars = text.chars().count();
    chars.div_ceil(CHARS_PER_TOKEN).max(1) as u32
}

/// Chained hashes of the full 16-token (64-character) blocks of `text`. `salt` separates caches
/// (e.g. the LoRA adapter name, as vLLM includes the adapter in its block hashes).
pub fn block_hashes(text: &str, block_tokens: u32, salt: &str) -> Vec<u64> {
    let block_chars = block_tokens as usize * CHARS_PER_TOKEN;
    let mut out = Vec::new();
    if block_chars == 0 {
        return out;
    }
    let mut parent = fnv(FNV_OFFSET, salt.as_bytes());
    let mut start = 0usize;
    let mut n = 0usize;
    for (i, _) in text.char_indices() {
        if n == block_chars {
            parent = fnv(parent.rotate_left(17), &text.as_bytes()[start..i]);
            out.push(parent);
            start = i;
            n = 0;
        }
        n += 1;
    }
    if n == block_chars {
        parent = fnv(parent.rotate_left(17), &text.as_bytes()[start..]);
        out.push(parent);
    }
    out
}

/// Chained hashes of full blocks of a prompt given as token ids.
pub fn block_hashes_of_ids(ids: &[u32], block_tokens: u32, salt: &str) -> Vec<u64> {
    let mut parent = fnv(FNV_OFFSET, salt.as_bytes());
    ids.chunks_exact(block_tokens.max(1) as usize)
        .map(|c| {
            let mut h = parent.rotate_left(17);
            for id in c {
                h = fnv(h, &id.to_le_bytes());
            }
            parent = h;
            h
        })
        .collect()
}

/// Simulated token ids of a text: one id per 4-character piece, below a 32,000-entry vocabulary.
pub fn token_ids(text: &str) -> Vec<u32> {
    let mut ids = Vec::with_capacity(text.len() / CHARS_PER_TOKEN + 1);
    let mut start = 0usize;
    let mut n = 0usize;
    for (i, _) in text.char_indices() {
        if n == CHARS_PER_TOKEN {
            ids.push((fnv(FNV_OFFSET, &text.as_bytes()[start..i]) % 31_000) as u32 + 1_000);
            start = i;
            n = 0;
        }
        n += 1;
    }
    if n > 0 || ids.is_empty() {
        ids.push((fnv(FNV_OFFSET, &text.as_bytes()[start..]) % 31_000) as u32 + 1_000);
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_hashes() {
        assert_eq!(count_tokens(""), 1);
        assert_eq!(count_tokens("abcd"), 1);
        assert_eq!(count_tokens("abcde"), 2);
        let a = "x".repeat(64 * 3 + 10);
        let mut b = "x".repeat(64 * 2);
        b.push_str(&"y".repeat(64));
        let (ha, hb) = (block_hashes(&a, 16, ""), block_hashes(&b, 16, ""));
        assert_eq!(ha.len(), 3);
        assert_eq!(ha[..2], hb[..2], "shared prefix, shared hashes");
        assert_ne!(ha[2], hb[2]);
        // Chained: equal block text at a different position hashes differently.
        assert_ne!(ha[0], ha[1]);
        assert_ne!(block_hashes(&a, 16, "lora-a"), ha);
        assert_eq!(token_ids(&a).len(), count_tokens(&a) as usize);
        assert_eq!(token_ids("abcdefgh")[0], token_ids("abcdzzzz")[0]);
        assert_eq!(block_hashes_of_ids(&[1; 40], 16, "").len(), 2);
    }
}
