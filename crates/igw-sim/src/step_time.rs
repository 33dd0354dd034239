//! The step-time formula (spec/simulator.md §2.4), without noise or LoRA factors.

use crate::profile::StepCoefficients;

/// What one engine step processes, as far as its duration is concerned.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepShape {
    /// Tokens processed (one per decoding sequence plus every prefill-chunk token).
    pub tokens: u32,
    /// Sequences in the step.
    pub seqs: u32,
    /// Sum of the context lengths of the decoding sequences.
    pub decode_context: u64,
    /// Σ n·(c + n/2) over prefill chunks (n = chunk tokens, c = tokens already computed).
    pub prefill_pairs: f64,
}

impl StepShape {
    /// A step where `batch` sequences each decode one token with `context_each` tokens of context.
    pub fn decode(batch: u32, context_each: u32) -> Self {
        StepShape {
            tokens: batch,
            seqs: batch,
            decode_context: u64::from(batch) * u64::from(context_each),
            prefill_pairs: 0.0,
        }
    }

    /// A step that prefills one prompt of `tokens` tokens from an empty cache.
    pub fn prefill(tokens: u32) -> Self {
        let n = f64::from(tokens);
        StepShape { tokens, seqs: 1, decode_context: 0, prefill_pairs: n * (n / 2.0) }
    }
}

/// Duration of one step in milliseconds, before speed, jitter and LoRA factors.
pub fn step_ms(c: &StepCoefficients, s: &StepShape) -> f64 {
    let linear = c.linear_floor_ms.max(c.linear_base_ms + c.linear_per_token_ms * f64::from(s.tokens));
    c.fixed_ms
        + linear
        + c.decode_kv_per_token_ms * s.decode_context as f64
        + c.prefill_attn_per_pair_ms * s.prefill_pairs
        + c.per_seq_ms * f64::from(s.seqs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Profile;

    fn close(actual: f64, expected: f64, tol: f64) -> bool {
        (actual - expected).abs() <= tol
    }

    /// The decode table of §2.4 (batch, total context, step ms), to 0.15 ms.
    #[test]
    fn decode_table_matches_spec() {
        let c = Profile::llama2_7b_h100().step;
        for (batch, total_ctx, want) in [
            (1u32, 512u32, 6.2),
            (8, 4096, 7.0),
            (32, 16384, 9.5),
            (64, 32768, 13.0),
            (128, 65536, 19.8),
            (256, 102400, 29.4),
        ] {
            let got = step_ms(&c, &StepShape::decode(batch, total_ctx / batch));
            assert!(close(got, want, 0.15), "batch {batch}: {got:.2} ms, spec {want} ms");
        }
    }

    /// The prefill table of §2.4, to 2% (the spec rounds), and ≈40k tokens/s at 512–4096 tokens.
    #[test]
    fn prefill_table_matches_spec() {
        let c = Profile::llama2_7b_h100().step;
        for (p, want) in [(128u32, 6.1), (256, 7.7), (512, 12.9), (1024, 23.7), (2048, 46.2), (4096, 95.0)] {
            let got = step_ms(&c, &StepShape::prefill(p));
            assert!(close(got, want, want * 0.02), "prefill {p}: {got:.2} ms, spec {want} ms");
        }
        for p in [512u32, 1024, 2048, 4096] {
            let tok_s = f64::from(p) / (step_ms(&c, &StepShape::prefill(p)) / 1000.0);
            assert!((38_000.0..46_000.0).contains(&tok_s), "prefill {p}: {tok_s:.0} tok/s");
        }
    }

    #[test]
    fn larger_profile_is_slower() {
        let small = Profile::llama2_7b_h100().step;
        let big = Profile::llama2_70b_tp4_h100().step;
        let s = StepShape::decode(32, 512);
        assert!(step_ms(&big, &s) > 1.5 * step_ms(&small, &s));
    }
}
