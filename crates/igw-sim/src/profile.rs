//! Model/hardware profiles: the step-time coefficients and engine capacities, as data.
//!
//! Every field can be overridden (see [`ProfileOverrides`]), so a profile is only a starting point.

use crate::error::SimError;

/// Coefficients of the step-time formula of `../shared/spec/simulator.md` §2.4 (all in milliseconds).
///
/// `T = fixed + max(linear_floor, linear_base + linear_per_token·N) + decode_kv_per_token·C_dec
///      + prefill_attn_per_pair·Σ n(c + n/2) + per_seq·S`
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepCoefficients {
    /// Fixed cost per step (scheduler, sampler, kernel launches), ms.
    pub fixed_ms: f64,
    /// Weight-read floor of the linear layers, ms.
    pub linear_floor_ms: f64,
    /// Intercept of the compute-bound linear term, ms.
    pub linear_base_ms: f64,
    /// Slope of the compute-bound linear term, ms per token in the step.
    pub linear_per_token_ms: f64,
    /// Decode attention (KV read), ms per context token of each decoding sequence.
    pub decode_kv_per_token_ms: f64,
    /// Prefill attention, ms per (query, key) pair.
    pub prefill_attn_per_pair_ms: f64,
    /// Per-sequence bookkeeping, ms per sequence in the step.
    pub per_seq_ms: f64,
}

/// Cost model of LoRA adapters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoraCost {
    /// Milliseconds added to a step that must bring an adapter into a GPU slot.
    pub load_ms: f64,
    /// Step slowdown when any adapter is in the batch (0.1 = 10% slower).
    pub base_slowdown: f64,
    /// Extra slowdown per distinct adapter in the batch.
    pub per_adapter_slowdown: f64,
}

/// A model on a given hardware: coefficients and capacities.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// Profile name (e.g. `llama2-7b-h100`).
    pub name: String,
    /// The model name the profile describes (the default served model name).
    pub model: String,
    /// Step-time coefficients.
    pub step: StepCoefficients,
    /// KV-cache blocks on the GPU(s).
    pub num_gpu_blocks: u32,
    /// Tokens per KV block.
    pub block_size: u32,
    /// Most sequences in the running set.
    pub max_num_seqs: u32,
    /// Token budget of one step.
    pub max_num_batched_tokens: u32,
    /// Longest prompt + output, in tokens.
    pub max_model_len: u32,
    /// LoRA cost model.
    pub lora: LoraCost,
}

/// Names of the built-in profiles.
pub const PROFILE_NAMES: &[&str] = &["llama2-7b-h100", "llama2-70b-tp4-h100", "tiny-llama-cpu"];

impl Profile {
    /// Llama-2-7B fp16 on one H100-80GB with vLLM V1: the calibrated model of §2.4.
    pub fn llama2_7b_h100() -> Self {
        Profile {
            name: "llama2-7b-h100".into(),
            model: "meta-llama/Llama-2-7b-hf".into(),
            step: StepCoefficients {
                fixed_ms: 0.5,
                linear_floor_ms: 5.6,
                linear_base_ms: 2.0,
                linear_per_token_ms: 0.020,
                decode_kv_per_token_ms: 2.0e-4,
                prefill_attn_per_pair_ms: 1.3e-6,
                per_seq_ms: 0.005,
            },
            num_gpu_blocks: 7300,
            block_size: 16,
            max_num_seqs: 256,
            max_num_batched_tokens: 8192,
            max_model_len: 4096,
            lora: LoraCost { load_ms: 2.0, base_slowdown: 0.10, per_adapter_slowdown: 0.035 },
        }
    }

    /// Llama-2-70B fp16, tensor-parallel over 4×H100 (rough: linear term from the vidur profile, all-reduce
    /// folded into the fixed cost, GQA KV of 80 KiB per token per GPU). Not calibrated against hardware.
    pub fn llama2_70b_tp4_h100() -> Self {
        Profile {
            name: "llama2-70b-tp4-h100".into(),
            model: "meta-llama/Llama-2-70b-hf".into(),
            step: StepCoefficients {
                fixed_ms: 3.7,
                linear_floor_ms: 14.5,
                linear_base_ms: 4.0,
                linear_per_token_ms: 0.055,
                decode_kv_per_token_ms: 3.0e-5,
                prefill_attn_per_pair_ms: 1.6e-6,
                per_seq_ms: 0.005,
            },
            num_gpu_blocks: 30_000,
            block_size: 16,
            max_num_seqs: 256,
            max_num_batched_tokens: 8192,
            max_model_len: 4096,
            lora: LoraCost { load_ms: 4.0, base_slowdown: 0.10, per_adapter_slowdown: 0.035 },
        }
    }

    /// Looks a built-in profile up by name.
    pub fn by_name(name: &str) -> Result<Self, SimError> {
        match name {
            "llama2-7b-h100" => Ok(Self::llama2_7b_h100()),
            "llama2-70b-tp4-h100" => Ok(Self::llama2_70b_tp4_h100()),
            "tiny-llama-cpu" => Ok(Self::tiny_llama_cpu()),
            other => Err(SimError::UnknownProfile(other.to_string())),
        }
    }

    /// The tiny random-weight Llama of the real-vLLM tests (`scripts/make-tiny-models`) on vLLM
    /// 0.32's CPU build, one server pinned to one core of the 2-core box, as `scripts/real-vllm`
    /// starts it (`--max-num-seqs 32 --max-num-batched-tokens 2048`, 1 GB of KV cache: 8,192
    /// blocks of 128 tokens, 1,024-token context). Step times are medians of the runs of
    /// `scripts/calibrate-tiny-vllm` in BENCHMARKS.md: the engine is overhead-bound (a decode step
    /// ≈ 4.2 ms at batch 1 to 8), a prefill costs ≈ 0.013 ms per token, and each sequence in a
    /// step ≈ 0.4 ms, mostly the API server's streaming on the same core (saturation 63–105
    /// requests/s of 24 tokens). Not modelled: the API server's ≈ 5–11 ms of per-request work
    /// before the first step.
    pub fn tiny_llama_cpu() -> Self {
        Profile {
            name: "tiny-llama-cpu".into(),
            model: "tiny".into(),
            step: StepCoefficients {
                fixed_ms: 0.0,
                linear_floor_ms: 4.2,
                linear_base_ms: 2.54,
                linear_per_token_ms: 0.013,
                decode_kv_per_token_ms: 0.0,
                prefill_attn_per_pair_ms: 0.0,
                per_seq_ms: 0.4,
            },
            num_gpu_blocks: 8192,
            block_size: 128,
            max_num_seqs: 32,
            max_num_batched_tokens: 2048,
            max_model_len: 1024,
            lora: LoraCost { load_ms: 2.0, base_slowdown: 0.10, per_adapter_slowdown: 0.035 },
        }
    }

    /// Applies overrides in place and checks the result.
    pub fn apply(&mut self, o: &ProfileOverrides) -> Result<(), SimError> {
        macro_rules! set {
            ($($field:ident).+ <- $src:ident) => {
                if let Some(v) = o.$src {
                    self.$($field).+ = v;
                }
            };
        }
        set!(max_num_seqs <- max_num_seqs);
        set!(max_num_batched_tokens <- max_num_batched_tokens);
        set!(num_gpu_blocks <- num_gpu_blocks);
        set!(block_size <- block_size);
        set!(max_model_len <- max_model_len);
        set!(step.fixed_ms <- fixed_ms);
        set!(step.linear_floor_ms <- linear_floor_ms);
        set!(step.linear_base_ms <- linear_base_ms);
        set!(step.linear_per_token_ms <- linear_per_token_ms);
        set!(step.decode_kv_per_token_ms <- decode_kv_per_token_ms);
        set!(step.prefill_attn_per_pair_ms <- prefill_attn_per_pair_ms);
        set!(step.per_seq_ms <- per_seq_ms);
        set!(lora.load_ms <- lora_load_ms);
        set!(lora.base_slowdown <- lora_base_slowdown);
        set!(lora.per_adapter_slowdown <- lora_per_adapter_slowdown);
        self.validate()
    }

    /// Checks that capacities are positive and coefficients finite and non-negative.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |what: &str| Err(SimError::InvalidProfile(format!("{}: {what}", self.name)));
        if self.num_gpu_blocks == 0 || self.block_size == 0 || self.max_num_seqs == 0 {
            return bad("num_gpu_blocks, block_size and max_num_seqs must be positive");
        }
        if self.max_num_batched_tokens == 0 || self.max_model_len < 2 {
            return bad("max_num_batched_tokens must be positive and max_model_len at least 2");
        }
        let s = &self.step;
        let l = &self.lora;
        let all = [
            s.fixed_ms,
            s.linear_floor_ms,
            s.linear_base_ms,
            s.linear_per_token_ms,
            s.decode_kv_per_token_ms,
            s.prefill_attn_per_pair_ms,
            s.per_seq_ms,
            l.load_ms,
            l.base_slowdown,
            l.per_adapter_slowdown,
        ];
        if all.iter().any(|v| !v.is_finite() || *v < 0.0) {
            return bad("coefficients must be finite and non-negative");
        }
        Ok(())
    }
}

/// Optional replacements for any profile field.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProfileOverrides {
    /// Replaces [`Profile::max_num_seqs`].
    pub max_num_seqs: Option<u32>,
    /// Replaces [`Profile::max_num_batched_tokens`].
    pub max_num_batched_tokens: Option<u32>,
    /// Replaces [`Profile::num_gpu_blocks`].
    pub num_gpu_blocks: Option<u32>,
    /// Replaces [`Profile::block_size`].
    pub block_size: Option<u32>,
    /// Replaces [`Profile::max_model_len`].
    pub max_model_len: Option<u32>,
    /// Replaces [`StepCoefficients::fixed_ms`].
    pub fixed_ms: Option<f64>,
    /// Replaces [`StepCoefficients::linear_floor_ms`].
    pub linear_floor_ms: Option<f64>,
    /// Replaces [`StepCoefficients::linear_base_ms`].
    pub linear_base_ms: Option<f64>,
    /// Replaces [`StepCoefficients::linear_per_token_ms`].
    pub linear_per_token_ms: Option<f64>,
    /// Replaces [`StepCoefficients::decode_kv_per_token_ms`].
    pub decode_kv_per_token_ms: Option<f64>,
    /// Replaces [`StepCoefficients::prefill_attn_per_pair_ms`].
    pub prefill_attn_per_pair_ms: Option<f64>,
    /// Replaces [`StepCoefficients::per_seq_ms`].
    pub per_seq_ms: Option<f64>,
    /// Replaces [`LoraCost::load_ms`].
    pub lora_load_ms: Option<f64>,
    /// Replaces [`LoraCost::base_slowdown`].
    pub lora_base_slowdown: Option<f64>,
    /// Replaces [`LoraCost::per_adapter_slowdown`].
    pub lora_per_adapter_slowdown: Option<f64>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_and_overrides_apply() {
        for n in PROFILE_NAMES {
            assert_eq!(Profile::by_name(n).unwrap().name, *n);
        }
        assert!(Profile::by_name("nope").is_err());
        let mut p = Profile::llama2_7b_h100();
        p.apply(&ProfileOverrides { max_num_seqs: Some(8), fixed_ms: Some(1.0), ..Default::default() }).unwrap();
        assert_eq!(p.max_num_seqs, 8);
        assert_eq!(p.step.fixed_ms, 1.0);
        assert!(p.apply(&ProfileOverrides { num_gpu_blocks: Some(0), ..Default::default() }).is_err());
        assert!(p.apply(&ProfileOverrides { per_seq_ms: Some(f64::NAN), ..Default::default() }).is_err());
    }
}
