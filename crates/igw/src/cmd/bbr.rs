//! `igw bbr`: the Body-Based Router, an ext_proc server that copies the body's model into
//! `X-Gateway-Model-Name` (and its base model into `X-Gateway-Base-Model-Name`) so that
//! HTTPRoutes can route on it. Flags, ports and plugin syntax as upstream's BBR.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{ArgAction, Args};
use igw_extproc::bbr::{BaseModels, BbrConfig, BbrMetrics, BbrPlugin, serve_bbr};
use igw_extproc::{Health, Listeners, TlsConfig};

/// Flags of `igw bbr`.
#[derive(Args, Debug)]
pub struct BbrArgs {
    /// ext_proc gRPC port.
    #[arg(long, default_value_t = 9004)]
    pub grpc_port: u16,
    /// gRPC health port.
    #[arg(long, default_value_t = 9005)]
    pub grpc_health_port: u16,
    /// Prometheus metrics port.
    #[arg(long, default_value_t = 9090)]
    pub metrics_port: u16,
    /// Address the ports bind on.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind_address: std::net::IpAddr,
    /// Assume FULL_DUPLEX_STREAMED when the gateway does not say (it normally does, in
    /// `protocol_config`; either mode is then followed).
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub streaming: bool,
    /// Serve TLS on the ext_proc port (self-signed unless --cert-path).
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub secure_serving: bool,
    /// Directory with tls.crt and tls.key.
    #[arg(long)]
    pub cert_path: Option<PathBuf>,
    /// A plugin, `type:name[:json]`, repeatable, run in order. Types: `body-field-to-header`
    /// (`{"fieldName":"model","headerName":"X-Gateway-Model-Name"}`, the defaults) and
    /// `base-model-to-header`. None given: both, as upstream.
    #[arg(long = "plugin")]
    pub plugins: Vec<String>,
    /// YAML list of `{baseModel: NAME, adapters: [A, B]}` for `base-model-to-header` (upstream
    /// reads the same from ConfigMaps labelled `inference.networking.k8s.io/bbr-managed`).
    #[arg(long)]
    pub base_models: Option<PathBuf>,
    /// Largest request body accepted, in bytes (larger: 413).
    #[arg(long, default_value_t = igw_request::DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Accepted for compatibility with upstream's flags; igw has no tracing exporter here.
    #[arg(long, hide = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub tracing: Option<bool>,
    /// Accepted for compatibility; the metrics port is served without authentication.
    #[arg(long, hide = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub metrics_endpoint_auth: Option<bool>,
    /// Accepted for compatibility; there is no pprof in a Rust binary.
    #[arg(long, hide = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub enable_pprof: Option<bool>,
    /// Log verbosity (accepted as upstream's `-v`; use RUST_LOG for filters).
    #[arg(short = 'v', long = "v", default_value_t = 2)]
    pub verbosity: u8,
}

impl BbrArgs {
    fn config(&self) -> anyhow::Result<BbrConfig> {
        let ports = [self.grpc_port, self.grpc_health_port, self.metrics_port];
        if ports[0] != 0 && (ports[0] == ports[1] || ports[0] == ports[2]) || ports[1] != 0 && ports[1] == ports[2] {
            bail!("--grpc-port, --grpc-health-port and --metrics-port must differ");
        }
        let plugins = if self.plugins.is_empty() {
            BbrConfig::default_plugins()
        } else {
            self.plugins.iter().map(|p| BbrPlugin::parse(p)).collect::<Result<_, _>>()?
        };
        let base_models = match &self.base_models {
            Some(path) => BaseModels::from_yaml(
                &std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
            )
            .with_context(|| format!("--base-models {}", path.display()))?,
            None => BaseModels::default(),
        };
        Ok(BbrConfig {
            plugins,
            base_models,
            max_body_bytes: self.max_body_bytes,
            streaming: self.streaming,
            metrics: Arc::new(BbrMetrics::default()),
        })
    }
}

/// `/metrics` in the Prometheus text format, `/healthz`, and 404 for anything else.
fn metrics_response(path: &str, metrics: &BbrMetrics) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => {
            let mut out = String::new();
            metrics.render(&mut out);
            (hyper::StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", out)
        }
        "/healthz" => (hyper::StatusCode::OK, "text/plain", "ok\n".to_string()),
        _ => (hyper::StatusCode::NOT_FOUND, "text/plain", "not found\n".to_string()),
    };
    let mut resp = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    resp
}

/// Runs `igw bbr` until Ctrl-C.
pub fn run(args: BbrArgs) -> anyhow::Result<()> {
    let config = Arc::new(args.config()?);
    for (flag, set) in [
        ("--tracing", args.tracing),
        ("--metrics-endpoint-auth", args.metrics_endpoint_auth),
        ("--enable-pprof", args.enable_pprof),
    ] {
        if set == Some(true) {
            tracing::info!("{flag} is accepted for compatibility and has no effect in igw");
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(serve(args, config))
}

async fn serve(args: BbrArgs, config: Arc<BbrConfig>) -> anyhow::Result<()> {
    let bind = |port: u16, what: &'static str| async move {
        tokio::net::TcpListener::bind(SocketAddr::new(args.bind_address, port))
            .await
            .with_context(|| format!("binding the {what} port {port}"))
    };
    let ext = bind(args.grpc_port, "ext_proc").await?;
    let health_l = bind(args.grpc_health_port, "health").await?;
    let metrics_l = bind(args.metrics_port, "metrics").await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let metrics = config.metrics.clone();
    let metrics_task = tokio::spawn(igw_proxy::listener::serve(
        metrics_l,
        move |req: hyper::Request<hyper::body::Incoming>| {
            let m = metrics.clone();
            async move { Ok::<_, std::convert::Infallible>(metrics_response(req.uri().path(), &m)) }
        },
        wait(stop_rx.clone()),
        Duration::from_secs(1),
    ));
    tracing::info!(
        grpc = %ext.local_addr()?, health = %health_l.local_addr()?, metrics = %args.metrics_port,
        tls = args.secure_serving, plugins = config.plugins.len(), "igw bbr serving"
    );
    let tls =
        TlsConfig { secure_serving: args.secure_serving, cert_path: args.cert_path.clone(), ..TlsConfig::default() };
    let health = Health::new(true).await;
    let server = serve_bbr(config, &tls, Listeners { ext_proc: ext, health: Some(health_l) }, health, wait(stop_rx));
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        r = server => {
            r.context("bbr server")?;
            bail!("bbr server stopped unexpectedly");
        }
    }
    let _ = stop_tx.send(true);
    let _ = metrics_task.await;
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
        args: BbrArgs,
    }

    fn args(v: &[&str]) -> BbrArgs {
        Cli::parse_from(std::iter::once("bbr").chain(v.iter().copied())).args
    }

    #[test]
    fn upstream_chart_flags_parse() {
        let a = args(&[
            "--grpc-port",
            "9004",
            "--streaming",
            "--plugin",
            r#"body-field-to-header:model-extractor:{"fieldName":"model","headerName":"X-Gateway-Model-Name"}"#,
            "--plugin",
            "base-model-to-header:base-model-mapper",
            "--tracing=false",
            "--enable-pprof",
            "-v",
            "3",
        ]);
        let c = a.config().unwrap();
        assert!(c.streaming);
        assert_eq!(c.plugins, BbrConfig::default_plugins());
    }

    #[test]
    fn bad_flags_are_named() {
        let e = args(&["--grpc-port", "9090"]).config().unwrap_err().to_string();
        assert!(e.contains("must differ"), "{e}");
        let e = args(&["--plugin", "nope:x"]).config().unwrap_err().to_string();
        assert!(e.contains("unknown plugin type"), "{e}");
        let e = args(&["--base-models", "/nonexistent/igw-base-models.yaml"]).config().unwrap_err();
        assert!(format!("{e:#}").contains("reading"), "{e:#}");
    }
}
