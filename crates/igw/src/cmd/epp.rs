//! `igw epp`: the Endpoint Picker behind Envoy-based gateways (ext_proc gRPC), with upstream's
//! flags, ports and semantics.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{ArgAction, Args};
use igw_core::units::parse_go_duration;
use igw_core::{Datastore, EndpointMeta};
use igw_extproc::{Health, Listeners, ServerConfig, StreamConfig, TlsConfig};
use igw_gateway::admin::Admin;
use igw_metrics::{EngineRegistry, ScrapeConfig, Scraper};

/// Flags of `igw epp` (names and defaults as upstream's EPP).
#[derive(Args, Debug)]
pub struct EppArgs {
    /// ext_proc gRPC port.
    #[arg(long, default_value_t = 9002)]
    pub grpc_port: u16,
    /// gRPC health port.
    #[arg(long, default_value_t = 9003)]
    pub grpc_health_port: u16,
    /// Prometheus metrics port.
    #[arg(long, default_value_t = 9090)]
    pub metrics_port: u16,
    /// Address the ports bind on.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind_address: std::net::IpAddr,
    /// Serve TLS on the ext_proc port (self-signed unless --cert-path).
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub secure_serving: bool,
    /// Directory with tls.crt and tls.key.
    #[arg(long)]
    pub cert_path: Option<PathBuf>,
    /// Reload the certificate files when they change.
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub enable_cert_reload: bool,
    /// InferencePool name (Kubernetes mode).
    #[arg(long, default_value = "")]
    pub pool_name: String,
    /// InferencePool namespace (flag, then $NAMESPACE, then "default").
    #[arg(long, default_value = "")]
    pub pool_namespace: String,
    /// InferencePool API group.
    #[arg(long, default_value = "inference.networking.k8s.io")]
    pub pool_group: String,
    /// Standalone mode: pod label selector k=v,k2=v2.
    #[arg(long, default_value = "")]
    pub endpoint_selector: String,
    /// Standalone mode: target ports (1-8).
    #[arg(long, value_delimiter = ',')]
    pub endpoint_target_ports: Vec<u16>,
    /// Static endpoints ip:port,... (no Kubernetes).
    #[arg(long, value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// Standalone mode (`--endpoints`): InferenceObjectives as NAME=PRIORITY (comma-separated or
    /// repeated), named by requests with `x-gateway-inference-objective`. In Kubernetes mode they come
    /// from the cluster's InferenceObjective objects. igw extension.
    #[arg(long = "objective", value_delimiter = ',', value_parser = parse_objective)]
    pub objectives: Vec<(String, i32)>,
    /// Ignore the gateway's endpoint subset hint.
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub disable_endpoint_subset_filter: bool,
    /// Model-server metrics scrape interval (Go duration, e.g. 50ms).
    #[arg(long, default_value = "50ms", value_parser = parse_go_duration)]
    pub refresh_metrics_interval: Duration,
    /// How often each endpoint's /v1/models list (where its LoRA adapters are loaded) is read (Go
    /// duration); 0s turns the poll off. igw extension.
    #[arg(long, default_value = "1s", value_parser = parse_go_duration)]
    pub refresh_models_interval: Duration,
    /// Metrics older than this are stale in the pool gauges.
    #[arg(long, default_value = "2s", value_parser = parse_go_duration)]
    pub metrics_staleness_threshold: Duration,
    /// EndpointPickerConfig file.
    #[arg(long)]
    pub config_file: Option<PathBuf>,
    /// EndpointPickerConfig text.
    #[arg(long)]
    pub config_text: Option<String>,
    /// Scheduling policy: igw (default), igw-latency (predicted latency, docs/latency-model.md),
    /// igw-wait, upstream-default, legacy-filter-tree, random, round-robin, least-queue,
    /// power-of-two, sglang-cache-aware, dynamo-kv, llm-d.
    #[arg(long, default_value = "igw")]
    pub policy: String,
    /// Endpoints in the destination header (1 = upstream default; more for override_host).
    #[arg(long, default_value_t = 1)]
    pub max_endpoints: usize,
    /// Deprecated upstream flag: setting it is an error (use engineConfigs in the config file).
    #[arg(long, hide = true)]
    pub total_queued_requests_metric: Option<String>,
    /// Deprecated upstream flag: setting it is an error.
    #[arg(long, hide = true)]
    pub total_running_requests_metric: Option<String>,
    /// Deprecated upstream flag: setting it is an error.
    #[arg(long, hide = true)]
    pub kv_cache_usage_percentage_metric: Option<String>,
    /// Deprecated upstream flag: setting it is an error.
    #[arg(long, hide = true)]
    pub lora_info_metric: Option<String>,
    /// Deprecated upstream flag: setting it is an error.
    #[arg(long, hide = true)]
    pub cache_info_metric: Option<String>,
    /// Conformance test mode: honour the `test-epp-endpoint-selection` request header and report
    /// `x-conformance-test-served-endpoint` on responses (as upstream's test plugins
    /// `header-based-testing-filter` and `destination-endpoint-served-verifier`, which also turn it
    /// on from the config file). Never in production: clients could steer their own requests.
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub conformance_test_mode: bool,
    /// Flow control with igw's defaults (token-weighted fairness between fairness ids, strict
    /// priority between bands) when the config file does not turn it on with the `flowControl`
    /// feature gate. Requests wait in the EPP until the pool has room, instead of sheddable ones
    /// being answered 429.
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub flow_control: bool,
    /// OpenTelemetry tracing (upstream's default: on). Effective in builds with the `otel` cargo
    /// feature: spans `gateway.request` / `gateway.request_orchestration` over OTLP/gRPC and W3C
    /// trace context injected into the request to the model server; configured by `OTEL_*`
    /// environment variables.
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub tracing: bool,
    /// Leader election on a Lease (`epp-<ns>-<pool>.gateway-api-inference-extension.sigs.k8s.io`,
    /// identity `$POD_NAME`): every replica serves, readiness follows leadership, as upstream.
    /// Kubernetes mode only.
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub ha_enable_leader_election: bool,
    /// Log verbosity (2 default, 3 verbose, 4 debug, 5 trace).
    #[arg(short = 'v', long = "v", default_value_t = 2)]
    pub verbosity: u8,
}

/// `NAME=PRIORITY`, e.g. `critical=10` or `batch=-1`.
fn parse_objective(s: &str) -> Result<(String, i32), String> {
    let (name, prio) = s.split_once('=').ok_or_else(|| format!("{s:?}: expected NAME=PRIORITY, e.g. critical=10"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("{s:?}: the objective name is empty"));
    }
    let p = prio.trim().parse::<i32>().map_err(|e| format!("{s:?}: priority {prio:?} is not an integer ({e})"))?;
    Ok((name.to_string(), p))
}

impl EppArgs {
    fn validate(&self) -> anyhow::Result<()> {
        for (flag, v) in [
            ("--total-queued-requests-metric", &self.total_queued_requests_metric),
            ("--total-running-requests-metric", &self.total_running_requests_metric),
            ("--kv-cache-usage-percentage-metric", &self.kv_cache_usage_percentage_metric),
            ("--lora-info-metric", &self.lora_info_metric),
            ("--cache-info-metric", &self.cache_info_metric),
        ] {
            if v.is_some() {
                bail!(
                    "{flag} is deprecated and may not be set; configure engineConfigs of core-metrics-extractor in the EndpointPickerConfig instead"
                );
            }
        }
        if self.config_file.is_some() && self.config_text.is_some() {
            bail!("--config-file and --config-text are mutually exclusive");
        }
        let modes = [!self.pool_name.is_empty(), !self.endpoint_selector.is_empty(), !self.endpoints.is_empty()];
        match modes.iter().filter(|m| **m).count() {
            1 => {}
            0 => bail!("one of --pool-name, --endpoint-selector or --endpoints is required"),
            _ => bail!("--pool-name, --endpoint-selector and --endpoints are mutually exclusive"),
        }
        if !self.objectives.is_empty() && self.endpoints.is_empty() {
            bail!(
                "--objective needs standalone mode (--endpoints); in Kubernetes the InferenceObjective objects apply"
            );
        }
        let mut names: Vec<&str> = self.objectives.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            bail!("--objective {:?} is given twice", w[0]);
        }
        if self.ha_enable_leader_election && !self.endpoints.is_empty() {
            bail!("--ha-enable-leader-election needs Kubernetes mode (--pool-name or --endpoint-selector)");
        }
        Ok(())
    }
}

/// Runs `igw epp` until Ctrl-C.
pub fn run(args: EppArgs) -> anyhow::Result<()> {
    args.validate()?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(serve(args))
}

async fn serve(args: EppArgs) -> anyhow::Result<()> {
    let _otel = super::tracing_otel::init(args.tracing)?;
    let endpoints = EndpointMeta::parse_list(&args.endpoints.join(",")).context("--endpoints")?;
    let datastore = Arc::new(Datastore::with_endpoints(endpoints));
    datastore.reset_objectives(args.objectives.iter().map(|(name, priority)| igw_core::InferenceObjective {
        id: igw_core::ObjectRef::new(igw_gateway::config::NAMESPACE, name),
        priority: *priority,
        legacy_model_name: None,
        goals: igw_core::ObjectiveGoals::default(),
    }));
    // Kubernetes mode (--pool-name / --endpoint-selector): igw-k8s's watchers feed the datastore.
    let discovery = if args.endpoints.is_empty() {
        let cfg = igw_k8s::watch::DiscoveryConfig {
            pool_name: args.pool_name.clone(),
            pool_namespace: args.pool_namespace.clone(),
            pool_group: args.pool_group.clone(),
            endpoint_selector: args.endpoint_selector.clone(),
            endpoint_target_ports: args.endpoint_target_ports.clone(),
        };
        Some(igw_k8s::watch::start(datastore.clone(), &cfg).await.context("starting Kubernetes discovery")?)
    } else {
        None
    };
    let scraper = Scraper::new(
        ScrapeConfig { interval: args.refresh_metrics_interval, ..ScrapeConfig::default() }
            .with_models_interval(args.refresh_models_interval),
        EngineRegistry::builtin(),
    );
    let follower = scraper.follow(datastore.clone());
    let config_text = match (&args.config_file, &args.config_text) {
        (Some(path), _) => Some((
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
            format!("--config-file {}", path.display()),
        )),
        (None, Some(text)) => Some((text.clone(), "--config-text".to_string())),
        (None, None) => None,
    };
    let (scheduler, epp_config) = match &config_text {
        Some((text, origin)) => {
            let cfg = igw_sched::config::EndpointPickerConfig::parse(text).with_context(|| origin.clone())?;
            (cfg.build("config").with_context(|| origin.clone())?, Some(cfg))
        }
        None => (igw_sched::Scheduler::from_policy(&args.policy).context("--policy")?, None),
    };
    let flow_config = match epp_config.as_ref().map(|c| c.flow_config()).transpose()?.flatten() {
        Some(fc) => Some(fc),
        None if args.flow_control => Some(igw_sched::flow::FlowConfig::igw()),
        None => None,
    };
    let pool_label = if args.pool_name.is_empty() { "static".to_string() } else { args.pool_name.clone() };
    let flow_on = flow_config.is_some();
    let pool = igw_gateway::pools::pool(&pool_label, &datastore, scheduler, flow_config, args.max_endpoints.max(1))?;
    let has_plugin = |kind: &str| epp_config.as_ref().is_some_and(|c| c.has_plugin_type(kind));
    let test_endpoint_selection = args.conformance_test_mode || has_plugin("header-based-testing-filter");
    let served_endpoint_verifier = args.conformance_test_mode || has_plugin("destination-endpoint-served-verifier");
    if test_endpoint_selection || served_endpoint_verifier {
        tracing::warn!("conformance test mode: requests may steer their own pick with test-epp-endpoint-selection");
    }
    let extra_metrics = igw_gateway::pools::metric_sources(&pool);
    if flow_on {
        tracing::info!("flow control on: requests queue by priority and fairness id until the pool has room");
    }

    let ext = tokio::net::TcpListener::bind(SocketAddr::new(args.bind_address, args.grpc_port))
        .await
        .with_context(|| format!("binding the ext_proc port {}", args.grpc_port))?;
    let health_l = tokio::net::TcpListener::bind(SocketAddr::new(args.bind_address, args.grpc_health_port))
        .await
        .with_context(|| format!("binding the health port {}", args.grpc_health_port))?;
    let metrics_l = tokio::net::TcpListener::bind(SocketAddr::new(args.bind_address, args.metrics_port))
        .await
        .with_context(|| format!("binding the metrics port {}", args.metrics_port))?;

    let config = ServerConfig {
        stream: StreamConfig {
            max_endpoints: args.max_endpoints.max(1),
            disable_subset_filter: args.disable_endpoint_subset_filter,
            test_endpoint_selection,
            served_endpoint_verifier,
            pool: (!args.pool_name.is_empty()).then(|| format!("{}/{}", args.pool_namespace, args.pool_name)),
            ..StreamConfig::default()
        },
        tls: TlsConfig {
            secure_serving: args.secure_serving,
            cert_path: args.cert_path.clone(),
            enable_cert_reload: args.enable_cert_reload,
            ..TlsConfig::default()
        },
        ..ServerConfig::default()
    };
    // A static pool is synced as soon as it is loaded; a Kubernetes pool once discovery has
    // listed it (and, with leader election, only while this replica leads).
    let health = Health::new(discovery.is_none()).await;
    let _readiness = match &discovery {
        Some(d) => {
            let leader = if args.ha_enable_leader_election {
                let ns = igw_k8s::watch::DiscoveryConfig {
                    pool_name: args.pool_name.clone(),
                    pool_namespace: args.pool_namespace.clone(),
                    pool_group: args.pool_group.clone(),
                    endpoint_selector: args.endpoint_selector.clone(),
                    endpoint_target_ports: args.endpoint_target_ports.clone(),
                }
                .namespace();
                let pool = if args.pool_name.is_empty() { "standalone" } else { args.pool_name.as_str() };
                let identity = std::env::var("POD_NAME")
                    .ok()
                    .filter(|s| !s.is_empty())
                    .context("--ha-enable-leader-election needs the POD_NAME environment variable (Downward API)")?;
                let cfg = igw_k8s::lease::LeaseConfig::new(&igw_k8s::lease::lease_name(&ns, pool), &ns, &identity);
                Some(igw_k8s::lease::start(cfg).await.context("starting leader election")?)
            } else {
                None
            };
            let h = health.clone();
            Some(tokio::spawn(igw_k8s::readiness::follow(d.synced.clone(), leader, move |ready| {
                let h = h.clone();
                async move {
                    tracing::info!(ready, "readiness changed");
                    h.set_ready(ready).await;
                }
            })))
        }
        None => None,
    };
    let admin = Arc::new(Admin {
        pool_name: if args.pool_name.is_empty() { "static".into() } else { args.pool_name.clone() },
        datastore: datastore.clone(),
        staleness: args.metrics_staleness_threshold,
        extra: extra_metrics,
        scheduler: Some(pool.core().scheduler().clone()),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let metrics_task = tokio::spawn(admin.serve(metrics_l, wait(stop_rx.clone())));
    tracing::info!(
        grpc = %ext.local_addr()?, health = %health_l.local_addr()?, metrics = %args.metrics_port,
        tls = args.secure_serving, endpoints = datastore.snapshot().endpoints.len(), "igw epp serving"
    );
    let gate_task =
        pool.gate().map(|g| tokio::spawn(g.clone().run(igw_gateway::pools::FLOW_TICK, wait(stop_rx.clone()))));
    let server = tokio::spawn(igw_extproc::serve(
        config,
        pool.clone(),
        Listeners { ext_proc: ext, health: Some(health_l) },
        health,
        wait(stop_rx.clone()),
    ));
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        r = server => {
            r.context("ext_proc server task")?.context("ext_proc server")?;
            bail!("ext_proc server stopped unexpectedly");
        }
    }
    let _ = stop_tx.send(true);
    let _ = metrics_task.await;
    if let Some(t) = gate_task {
        let _ = t.await;
    }
    follower.abort();
    scraper.shutdown().await;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: EppArgs,
    }

    fn validate(v: &[&str]) -> Result<(), String> {
        Cli::try_parse_from(std::iter::once("epp").chain(v.iter().copied()))
            .map_err(|e| e.to_string())?
            .args
            .validate()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn modes_and_flags_are_checked_before_anything_starts() {
        assert!(validate(&["--endpoints", "10.0.0.1:8000"]).is_ok());
        assert!(validate(&["--pool-name", "p", "--ha-enable-leader-election"]).is_ok());
        assert!(validate(&[]).unwrap_err().contains("is required"));
        assert!(validate(&["--endpoints", "10.0.0.1:8000", "--objective", "critical=10,batch=-1"]).is_ok());
        let e = validate(&["--pool-name", "p", "--objective", "critical=10"]).unwrap_err();
        assert!(e.contains("--objective needs standalone mode"), "{e}");
        let e = validate(&["--endpoints", "10.0.0.1:8000", "--objective", "a=1", "--objective", "a=2"]).unwrap_err();
        assert!(e.contains("\"a\" is given twice"), "{e}");
        for (bad, why) in
            [("critical", "expected NAME=PRIORITY"), ("=3", "name is empty"), ("x=high", "not an integer")]
        {
            let e = validate(&["--endpoints", "10.0.0.1:8000", "--objective", bad]).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(validate(&["--pool-name", "p", "--endpoints", "10.0.0.1:8000"]).unwrap_err().contains("exclusive"));
        let e = validate(&["--endpoints", "10.0.0.1:8000", "--ha-enable-leader-election"]).unwrap_err();
        assert!(e.contains("Kubernetes mode"), "{e}");
        let e = validate(&["--endpoints", "10.0.0.1:8000", "--total-queued-requests-metric", "x"]).unwrap_err();
        assert!(e.contains("deprecated") && e.contains("engineConfigs"), "{e}");
        let e = validate(&["--endpoints", "a:1", "--config-file", "f", "--config-text", "t"]).unwrap_err();
        assert!(e.contains("mutually exclusive"), "{e}");
    }
}
