//! `igw serve`: the standalone OpenAI-compatible gateway.
//!
//! With no arguments it starts an embedded pool of simulated vLLM replicas on loopback, so the
//! quick start works anywhere; `--endpoints ip:port,...` routes to real model servers instead, and
//! `--config gateway.yaml` to several pools with model routing, reloaded when the file changes.
//! This file turns the flags into [`ServeOptions`] and a [`Source`]; `igw_gateway::serve` runs them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use igw_core::EndpointMeta;
use igw_gateway::pools::Reloader;
use igw_gateway::serve::{ServeOptions, Serving, Source};
use igw_metrics::ScrapeConfig;
use igw_proxy::gateway::GatewayConfig;
use igw_sim::profile::Profile;
use igw_sim::{Fleet, FleetConfig};
use tokio::net::TcpListener;

/// Default gateway listener.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default admin listener.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";

/// Flags of `igw serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address the gateway listens on [default: the file's `listen`, else 127.0.0.1:8080].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Address of the admin listener (/metrics, /healthz, /readyz, /debug/endpoints, /debug/config)
    /// [default: the file's `adminListen`, else 127.0.0.1:9090].
    #[arg(long)]
    pub admin_listen: Option<SocketAddr>,
    /// Model servers as ip:port,...; without it (and without --config) an embedded simulated pool
    /// is started.
    #[arg(long, value_delimiter = ',', conflicts_with = "config")]
    pub endpoints: Vec<String>,
    /// Gateway configuration file (pools, models, objectives, rewrites; docs/gateway-config.md),
    /// reloaded when it changes.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// How often the configuration files are checked for changes, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub config_poll_ms: u64,
    /// Replicas of the embedded simulated pool.
    #[arg(long, default_value_t = 4)]
    pub sim_replicas: usize,
    /// time_scale of the embedded simulated pool (1 = real time).
    #[arg(long, default_value_t = 1.0)]
    pub sim_time_scale: f64,
    /// Largest accepted request body in bytes (413 above it).
    #[arg(long, default_value_t = igw_request::DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Seconds to wait for a replica's response head before trying the next candidate.
    #[arg(long, default_value_t = 300.0)]
    pub response_timeout_secs: f64,
    /// Seconds to let in-flight requests finish on shutdown.
    #[arg(long, default_value_t = 30.0)]
    pub drain_secs: f64,
    /// How often each endpoint's /metrics page is scraped, in milliseconds.
    #[arg(long, default_value_t = 50)]
    pub refresh_metrics_interval_ms: u64,
    /// How often each endpoint's /v1/models list (where its LoRA adapters are loaded) is read, in
    /// milliseconds; 0 turns the poll off.
    #[arg(long, default_value_t = 1000)]
    pub refresh_models_interval_ms: u64,
    /// Scheduling policy: igw (default), igw-latency (predicted latency, docs/latency-model.md),
    /// igw-wait, upstream-default, legacy-filter-tree, random, round-robin, least-queue,
    /// power-of-two, sglang-cache-aware, dynamo-kv, llm-d.
    #[arg(long, default_value = "igw")]
    pub policy: String,
    /// Pool name reported in metrics.
    #[arg(long, default_value = "default")]
    pub pool_name: String,
    /// Flow control for the `--endpoints` / embedded pool, with igw's defaults: requests wait in
    /// the gateway, by priority band and fairness id, until the pool has room (pools of a
    /// `--config` file turn it on with the `flowControl` feature gate of their scheduler config).
    #[arg(long, conflicts_with = "config")]
    pub flow_control: bool,
    /// Kubernetes: route over the pods of this InferencePool (watched with the in-cluster config or
    /// kubeconfig, as `igw epp --pool-name`).
    #[arg(long, conflicts_with_all = ["config", "endpoints"])]
    pub inference_pool: Option<String>,
    /// Kubernetes: the pool's namespace (default `$NAMESPACE`, then `default`).
    #[arg(long, default_value = "")]
    pub pool_namespace: String,
    /// Kubernetes without CRDs: route over the Ready pods matching this label selector (k=v,...).
    #[arg(long, conflicts_with_all = ["config", "endpoints", "inference_pool"])]
    pub endpoint_selector: Option<String>,
    /// Kubernetes without CRDs: the pods' model-server ports.
    #[arg(long, value_delimiter = ',', default_value = "8000")]
    pub endpoint_target_ports: Vec<u16>,
}

impl ServeArgs {
    /// The run-time options these flags describe.
    fn options(&self) -> ServeOptions {
        ServeOptions {
            policy: self.policy.clone(),
            pool_name: self.inference_pool.clone().unwrap_or_else(|| self.pool_name.clone()),
            flow_control: self.flow_control,
            gateway: GatewayConfig {
                max_body_bytes: self.max_body_bytes,
                response_head_timeout: Duration::from_secs_f64(self.response_timeout_secs.max(0.001)),
                ..GatewayConfig::default()
            },
            scrape: ScrapeConfig {
                interval: Duration::from_millis(self.refresh_metrics_interval_ms.max(1)),
                ..ScrapeConfig::default()
            }
            .with_models_interval(Duration::from_millis(self.refresh_models_interval_ms)),
            drain: Duration::from_secs_f64(self.drain_secs.max(0.0)),
            config_poll: Duration::from_millis(self.config_poll_ms.max(1)),
        }
    }
}

/// Runs `igw serve` until Ctrl-C.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(serve(args))
}

async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut fleet = None;
    let mut model = None;
    let (source, file_listen, file_admin) = match &args.config {
        Some(path) => {
            let plan = igw_gateway::config::load(path, &args.policy).context("invalid gateway configuration")?;
            let (l, a) = (plan.listen, plan.admin_listen);
            (Source::Config(path.clone(), plan), l, a)
        }
        None if args.inference_pool.is_some() || args.endpoint_selector.is_some() => {
            let cfg = igw_k8s::watch::DiscoveryConfig {
                pool_name: args.inference_pool.clone().unwrap_or_default(),
                pool_namespace: args.pool_namespace.clone(),
                pool_group: igw_k8s::shared::POOL_GROUP.to_string(),
                endpoint_selector: args.endpoint_selector.clone().unwrap_or_default(),
                endpoint_target_ports: args.endpoint_target_ports.clone(),
            };
            (Source::Kubernetes(cfg), None, None)
        }
        None if args.endpoints.is_empty() => {
            let mut cfg = FleetConfig::new(Profile::llama2_7b_h100());
            cfg.time_scale = args.sim_time_scale;
            model = Some(cfg.model.clone());
            let f =
                Fleet::bind(cfg, args.sim_replicas.max(1), 0).await.context("starting the embedded simulated pool")?;
            let eps = f.addrs().iter().map(|a| EndpointMeta::from_addr(*a)).collect();
            fleet = Some(f);
            (Source::Static(eps), None, None)
        }
        None => {
            let eps = EndpointMeta::parse_list(&args.endpoints.join(",")).context("--endpoints")?;
            (Source::Static(eps), None, None)
        }
    };
    let default = |s: &str| s.parse::<SocketAddr>().context("default address");
    let listen = match args.listen.or(file_listen) {
        Some(a) => a,
        None => default(DEFAULT_LISTEN)?,
    };
    let admin_listen = match args.admin_listen.or(file_admin) {
        Some(a) => a,
        None => default(DEFAULT_ADMIN_LISTEN)?,
    };
    let serving = Serving::start(&args.options(), source, bind(listen).await?, bind(admin_listen).await?).await?;
    let (addr, admin_addr) = (serving.addr, serving.admin_addr);
    let pools = serving.gateway().routes();
    let n: usize = pools.pools().iter().map(|p| p.pool.core().snapshot().endpoints.len()).sum();
    match (&model, &args.config) {
        (Some(model), _) => println!(
            "igw serve: listening on http://{addr} (admin http://{admin_addr}), {n} simulated replicas\n  try: curl -s http://{addr}/v1/chat/completions -H 'content-type: application/json' -d '{{\"model\":\"{model}\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hello!\"}}],\"max_tokens\":16}}'"
        ),
        (None, Some(file)) => println!(
            "igw serve: listening on http://{addr} (admin http://{admin_addr}), {} pools, {n} endpoints from {}",
            pools.pools().len(),
            file.display()
        ),
        (None, None) => println!("igw serve: listening on http://{addr} (admin http://{admin_addr}), {n} endpoints"),
    }
    drop(pools);

    wait_for_ctrl_c(serving.reloader.clone()).await?;
    tracing::info!("shutting down: draining in-flight requests");
    serving.shutdown().await;
    if let Some(fleet) = fleet {
        fleet.shutdown().await;
    }
    Ok(())
}

/// Waits for Ctrl-C; meanwhile SIGHUP reloads the configuration file now.
async fn wait_for_ctrl_c(reloader: Option<Arc<Reloader>>) -> anyhow::Result<()> {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).context("SIGHUP")?;
    loop {
        tokio::select! {
            r = tokio::signal::ctrl_c() => return r.context("waiting for Ctrl-C"),
            _ = hup.recv() => match &reloader {
                Some(r) => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    r.reload().await;
                }
                None => tracing::info!("SIGHUP ignored: no --config file"),
            },
        }
    }
}
