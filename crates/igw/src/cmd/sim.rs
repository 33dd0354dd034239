//! `igw sim`: simulated vLLM (or SGLang) model servers on loopback.
//!
//! Serves N replicas on 127.0.0.1 ports P..P+N-1, prints one JSON line with their addresses on stdout
//! once all of them listen, and runs until interrupted. Prompt tokens are counted as characters / 4.

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use igw_sim::profile::{PROFILE_NAMES, Profile, ProfileOverrides};
use igw_sim::{EngineKind, Fleet, FleetConfig};

/// Metric names to export.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Engine {
    /// vLLM V1 (`vllm:*`).
    Vllm,
    /// SGLang (`sglang:*`).
    Sglang,
}

/// Flags of `igw sim`.
#[derive(Args, Debug)]
pub struct SimArgs {
    /// Number of replicas.
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
    /// First port; replica i listens on PORT+i (0 = ephemeral ports).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Address the replicas listen on (0.0.0.0 in a pod, so the gateway can reach it).
    #[arg(long, default_value = "127.0.0.1")]
    pub bind_address: std::net::IpAddr,
    /// Served model name.
    #[arg(long, default_value = "meta-llama/Llama-2-7b-hf")]
    pub model: String,
    /// Model/hardware profile (llama2-7b-h100, llama2-70b-tp4-h100).
    #[arg(long, default_value = "llama2-7b-h100")]
    pub profile: String,
    /// Multiplies every modelled duration (10 = ten times slower, 0.1 = ten times faster).
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Seed of all randomness (replica i uses seed + i).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Per-step jitter σ (multiplicative N(1, σ)).
    #[arg(long, default_value_t = 0.02)]
    pub jitter: f64,
    /// Metric names of this engine.
    #[arg(long, value_enum, default_value_t = Engine::Vllm)]
    pub engine: Engine,
    /// LoRA adapters loaded at start (enables LoRA).
    #[arg(long, value_delimiter = ',')]
    pub lora_adapters: Vec<String>,
    /// Distinct LoRA adapters per batch (enables LoRA).
    #[arg(long)]
    pub max_loras: Option<u32>,
    /// Relative speed per replica, e.g. 1,1,0.7 (0.7 = 30% slower; missing = 1).
    #[arg(long, value_delimiter = ',')]
    pub speed_factors: Vec<f64>,
    /// Profile overrides (boxed to keep the subcommand enum small).
    #[command(flatten)]
    pub overrides: Box<OverrideArgs>,
}

/// Flags that replace fields of the chosen profile.
#[derive(Args, Debug)]
pub struct OverrideArgs {
    /// Override: most sequences in the running set.
    #[arg(long)]
    pub max_num_seqs: Option<u32>,
    /// Override: token budget per step.
    #[arg(long)]
    pub max_num_batched_tokens: Option<u32>,
    /// Override: KV-cache blocks.
    #[arg(long)]
    pub num_gpu_blocks: Option<u32>,
    /// Override: tokens per KV block.
    #[arg(long)]
    pub block_size: Option<u32>,
    /// Override: longest prompt + output.
    #[arg(long)]
    pub max_model_len: Option<u32>,
    /// Override: fixed step cost, ms.
    #[arg(long)]
    pub step_fixed_ms: Option<f64>,
    /// Override: linear-layer floor, ms.
    #[arg(long)]
    pub step_linear_floor_ms: Option<f64>,
    /// Override: linear-layer cost per token, ms.
    #[arg(long)]
    pub step_linear_per_token_ms: Option<f64>,
    /// Override: decode attention cost per context token, ms.
    #[arg(long)]
    pub step_decode_kv_per_token_ms: Option<f64>,
    /// Override: LoRA adapter load cost, ms.
    #[arg(long)]
    pub lora_load_ms: Option<f64>,
}

/// Runs `igw sim`.
pub fn run(args: SimArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.replicas > 0, "--replicas must be at least 1");
    let mut profile =
        Profile::by_name(&args.profile).with_context(|| format!("--profile (one of {})", PROFILE_NAMES.join(", ")))?;
    let o = &args.overrides;
    profile.apply(&ProfileOverrides {
        max_num_seqs: o.max_num_seqs,
        max_num_batched_tokens: o.max_num_batched_tokens,
        num_gpu_blocks: o.num_gpu_blocks,
        block_size: o.block_size,
        max_model_len: o.max_model_len,
        fixed_ms: o.step_fixed_ms,
        linear_floor_ms: o.step_linear_floor_ms,
        linear_per_token_ms: o.step_linear_per_token_ms,
        decode_kv_per_token_ms: o.step_decode_kv_per_token_ms,
        lora_load_ms: o.lora_load_ms,
        ..Default::default()
    })?;
    let mut cfg = FleetConfig::new(profile);
    cfg.model = args.model;
    cfg.time_scale = args.time_scale;
    cfg.seed = args.seed;
    cfg.jitter_sigma = args.jitter;
    cfg.engine_kind = match args.engine {
        Engine::Vllm => EngineKind::Vllm,
        Engine::Sglang => EngineKind::Sglang,
    };
    cfg.enable_lora = args.max_loras.is_some() || !args.lora_adapters.is_empty();
    cfg.max_loras = args.max_loras.unwrap_or(1);
    cfg.lora_adapters = args.lora_adapters;
    cfg.speed_factors = args.speed_factors;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let mut listeners = Vec::with_capacity(args.replicas);
        for i in 0..args.replicas {
            let port = if args.port == 0 {
                0
            } else {
                u16::try_from(usize::from(args.port) + i)
                    .map_err(|_| anyhow::anyhow!("--port {} + {i} is out of range", args.port))?
            };
            let addr = std::net::SocketAddr::new(args.bind_address, port);
            listeners.push(std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?);
        }
        let fleet = Fleet::start(cfg, listeners).await?;
        let addrs: Vec<String> = fleet.addrs().iter().map(ToString::to_string).collect();
        println!("{}", serde_json::json!({ "replicas": addrs }));
        tracing::info!(replicas = addrs.len(), "igw sim serving");
        tokio::signal::ctrl_c().await?;
        tracing::info!("shutting down");
        fleet.shutdown().await;
        Ok(())
    })
}
