//! `igw serve` running: the pools, the HTTP gateway over them, the admin listener and, with a
//! configuration file, its reloader, started together by [`Serving::start`] and stopped by
//! [`Serving::shutdown`].
//!
//! The pools come from a [`Source`]: a configuration file (several pools, routed by model,
//! reloaded when it changes), one pool of static endpoints, or one pool discovered from
//! Kubernetes. The caller binds the listeners and decides when to stop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use igw_core::{Datastore, EndpointMeta};
use igw_k8s::watch::{DiscoveryConfig, WatchError};
use igw_metrics::ScrapeConfig;
use igw_proxy::gateway::{Gateway, GatewayConfig};
use igw_sched::{Scheduler, UnknownPolicy};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::GatewayPlan;
use crate::pools::{ADMIN_STALENESS, PoolError, PoolSet, Reloader};
use crate::pools_admin::PoolsAdmin;

/// How `igw serve` runs, whatever the source of its pools.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Scheduling policy of the single pool, and of the file's pools that name no scheduler.
    pub policy: String,
    /// Name of the single pool (static or Kubernetes), reported in metrics.
    pub pool_name: String,
    /// Flow control with igw's defaults for the single pool (a file's pools set their own).
    pub flow_control: bool,
    /// The request path's tunables.
    pub gateway: GatewayConfig,
    /// How endpoints' metrics are scraped.
    pub scrape: ScrapeConfig,
    /// How long in-flight requests may take to finish on shutdown.
    pub drain: Duration,
    /// How often the configuration files are checked for changes.
    pub config_poll: Duration,
}

impl Default for ServeOptions {
    /// `igw serve`'s defaults.
    fn default() -> Self {
        ServeOptions {
            policy: "igw".into(),
            pool_name: "default".into(),
            flow_control: false,
            gateway: GatewayConfig::default(),
            scrape: ScrapeConfig::default(),
            drain: Duration::from_secs(30),
            config_poll: Duration::from_secs(1),
        }
    }
}

/// Where `igw serve` gets its endpoints.
#[derive(Debug)]
pub enum Source {
    /// A configuration file, already loaded and validated.
    Config(PathBuf, GatewayPlan),
    /// One pool of static endpoints (`--endpoints`, or the embedded simulated pool).
    Static(Vec<EndpointMeta>),
    /// One pool discovered from Kubernetes (`--inference-pool` or `--endpoint-selector`).
    Kubernetes(DiscoveryConfig),
}

/// Why `igw serve` could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The pools could not be built.
    #[error(transparent)]
    Pools(#[from] PoolError),
    /// The single pool's policy is unknown.
    #[error("--policy: {0}")]
    Policy(UnknownPolicy),
    /// Kubernetes discovery could not start (no cluster, no permission, bad target).
    #[error("starting Kubernetes discovery: {0}")]
    Discovery(WatchError),
    /// A listener's address could not be read.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A running `igw serve`.
pub struct Serving {
    /// Where the gateway listens.
    pub addr: SocketAddr,
    /// Where the admin listener listens.
    pub admin_addr: SocketAddr,
    /// The configuration file's reloader (with [`Source::Config`]).
    pub reloader: Option<Arc<Reloader>>,
    gateway: Arc<Gateway>,
    static_pools: Option<PoolSet>,
    /// Kubernetes discovery feeding the pool, when it comes from a cluster.
    discovery_task: Option<JoinHandle<()>>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Serving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serving")
            .field("addr", &self.addr)
            .field("admin_addr", &self.admin_addr)
            .finish_non_exhaustive()
    }
}

impl Serving {
    /// Starts the pools of `source` (every endpoint scraped once first), the gateway on `listener`
    /// and the admin listener on `admin_listener`; with a configuration file, also its watcher.
    pub async fn start(
        options: &ServeOptions,
        source: Source,
        listener: TcpListener,
        admin_listener: TcpListener,
    ) -> Result<Self, ServeError> {
        let mut discovery_task = None;
        let (gateway, admin, reloader, static_pools) = match source {
            Source::Config(file, plan) => {
                let r = Reloader::start(file, plan, &options.policy, options.scrape.clone(), options.gateway.clone())
                    .await?;
                (r.gateway().clone(), r.admin().clone(), Some(r), None)
            }
            Source::Static(_) | Source::Kubernetes(_) => {
                let (datastore, discovery) = match source {
                    Source::Static(endpoints) => (Arc::new(Datastore::with_endpoints(endpoints)), None),
                    Source::Kubernetes(cfg) => {
                        let ds = Arc::new(Datastore::new());
                        let d = igw_k8s::watch::start(ds.clone(), &cfg).await.map_err(ServeError::Discovery)?;
                        (ds, Some(d))
                    }
                    Source::Config(..) => unreachable!("handled above"),
                };
                discovery_task = discovery.map(|d| d.task);
                let name = options.pool_name.as_str();
                let scheduler = Scheduler::from_policy(&options.policy).map_err(ServeError::Policy)?;
                let flow = options.flow_control.then(igw_sched::flow::FlowConfig::igw);
                let pool = crate::pools::pool(name, &datastore, scheduler, flow, options.gateway.max_attempts)?;
                let mut pools = PoolSet::single(name, datastore, pool, &options.scrape);
                pools.warm_and_start().await;
                let routes = pools.take_routes().ok_or(PoolError::RoutesTaken)?;
                let admin = Arc::new(PoolsAdmin::new(pools.view(), ADMIN_STALENESS, None));
                (Arc::new(Gateway::with_routes(routes, options.gateway.clone())), admin, None, Some(pools))
            }
        };
        let addr = listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let wait_stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let mut tasks = vec![
            tokio::spawn(admin.serve(admin_listener, wait_stop(stop_rx.clone()))),
            tokio::spawn({
                let gateway = gateway.clone();
                igw_proxy::listener::serve(
                    listener,
                    move |req| gateway.clone().handle(req),
                    wait_stop(stop_rx.clone()),
                    options.drain,
                )
            }),
        ];
        if let Some(r) = &reloader {
            tasks.push(r.watch(options.config_poll, wait_stop(stop_rx.clone())));
        }
        Ok(Serving { addr, admin_addr, reloader, gateway, static_pools, discovery_task, stop, tasks })
    }

    /// The gateway.
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// Stops accepting, drains in-flight requests (up to [`ServeOptions::drain`]), stops the
    /// scrapers and discovery.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        if let Some(r) = &self.reloader {
            r.shutdown().await;
        }
        if let Some(p) = self.static_pools {
            p.stop(None).await;
        }
        if let Some(d) = self.discovery_task {
            d.abort();
        }
    }
}
