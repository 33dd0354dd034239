//! `igw serve`: the standalone OpenAI-compatible gateway.
//!
//! With no arguments it starts an embedded pool of simulated vLLM replicas on loopback, so the
//! quick start works anywhere; `--endpoints ip:port,...` routes to real model servers instead.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use igw_core::{Datastore, EndpointMeta};
use igw_metrics::{EngineRegistry, ScrapeConfig, Scraper};
use igw_proxy::admin::Admin;
use igw_proxy::gateway::{Gateway, GatewayConfig};
use igw_sim::profile::Profile;
use igw_sim::{Fleet, FleetConfig};

/// Flags of `igw serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address the gateway listens on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Address of the admin listener (/metrics, /healthz, /readyz, /debug/endpoints).
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin_listen: SocketAddr,
    /// Model servers as ip:port,...; without it an embedded simulated pool is started.
    #[arg(long, value_delimiter = ',')]
    pub endpoints: Vec<String>,
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
    /// Scheduling policy: igw (default), upstream-default, legacy-filter-tree, random, round-robin, least-queue.
    #[arg(long, default_value = "igw")]
    pub policy: String,
    /// Pool name reported in metrics.
    #[arg(long, default_value = "default")]
    pub pool_name: String,
}

/// Runs `igw serve` until Ctrl-C.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(serve(args))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let (endpoints, fleet, model) = if args.endpoints.is_empty() {
        let profile = Profile::llama2_7b_h100();
        let mut cfg = FleetConfig::new(profile);
        cfg.time_scale = args.sim_time_scale;
        let model = cfg.model.clone();
        let fleet =
            Fleet::bind(cfg, args.sim_replicas.max(1), 0).await.context("starting the embedded simulated pool")?;
        let eps: Vec<EndpointMeta> = fleet.addrs().iter().map(|a| EndpointMeta::from_addr(*a)).collect();
        (eps, Some(fleet), Some(model))
    } else {
        let eps = EndpointMeta::parse_list(&args.endpoints.join(",")).context("--endpoints")?;
        (eps, None, None)
    };
    let datastore = Arc::new(Datastore::with_endpoints(endpoints));
    let scrape_config = ScrapeConfig {
        interval: Duration::from_millis(args.refresh_metrics_interval_ms.max(1)),
        ..ScrapeConfig::default()
    };
    let scraper = Scraper::new(scrape_config, EngineRegistry::builtin());
    let follower = scraper.follow(datastore.clone());
    let picker = super::picker::build(&datastore, &args.policy)?;
    let request_metrics = picker.metrics().clone();
    let gateway = Arc::new(Gateway::new(
        picker,
        GatewayConfig {
            max_body_bytes: args.max_body_bytes,
            response_head_timeout: Duration::from_secs_f64(args.response_timeout_secs.max(0.001)),
            ..GatewayConfig::default()
        },
    ));
    let admin = Arc::new(Admin {
        pool_name: args.pool_name.clone(),
        datastore: datastore.clone(),
        staleness: Duration::from_secs(2),
        extra: vec![Arc::new(super::picker::RequestMetricsSource(request_metrics))],
    });

    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let admin_listener = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("binding {}", args.admin_listen))?;
    let addr = listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wait_stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let drain = Duration::from_secs_f64(args.drain_secs.max(0.0));
    let admin_task = tokio::spawn(igw_proxy::listener::serve(
        admin_listener,
        move |req| admin.clone().handle(req),
        wait_stop(stop_rx.clone()),
        Duration::from_secs(1),
    ));
    let gw_task = tokio::spawn(igw_proxy::listener::serve(
        listener,
        move |req| gateway.clone().handle(req),
        wait_stop(stop_rx.clone()),
        drain,
    ));

    let n = datastore.snapshot().endpoints.len();
    match &model {
        Some(model) => println!(
            "igw serve: listening on http://{addr} (admin http://{admin_addr}), {n} simulated replicas\n  try: curl -s http://{addr}/v1/chat/completions -H 'content-type: application/json' -d '{{\"model\":\"{model}\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hello!\"}}],\"max_tokens\":16}}'"
        ),
        None => println!("igw serve: listening on http://{addr} (admin http://{admin_addr}), {n} endpoints"),
    }

    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    tracing::info!("shutting down: draining in-flight requests");
    let _ = stop_tx.send(true);
    let _ = gw_task.await;
    let _ = admin_task.await;
    follower.abort();
    scraper.shutdown().await;
    if let Some(fleet) = fleet {
        fleet.shutdown().await;
    }
    Ok(())
}
