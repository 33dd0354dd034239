//! Running pools: the request core every data plane routes with ([`pool`]), its metric sources
//! for the admin listener ([`metric_sources`]), and the pools of a gateway configuration with
//! their replacement when the file changes ([`PoolSet`], [`Reloader`]).
//!
//! A [`PoolSet`] is everything one configuration generation runs: per pool a datastore, a
//! request core (with flow control when on) and a metrics scraper. A reload builds the next set
//! completely (datastores filled, every endpoint scraped once) before the gateway's routing table
//! and the admin view are swapped to it; requests already in flight finish on the set they started
//! with, and the old set's scrapers stop once it is replaced. A pool whose definition is unchanged
//! is carried over as it runs. A file that does not load leaves everything as it was and is
//! reported in the log, on `/debug/config` and in the `igw_config_*` metrics.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use igw_core::{CoreError, Datastore};
use igw_metrics::{EngineRegistry, ScrapeConfig, Scraper};
use igw_proxy::gateway::{Gateway, GatewayConfig};
use igw_proxy::routes::{PoolRoute, Routes, RoutesError};
use igw_request::metrics::RequestMetrics;
use igw_request::{Pool, PoolCore};
use igw_sched::Scheduler;
use igw_sched::flow::{FlowConfig, FlowConfigError};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::admin::MetricsSource;
use crate::config::{self, GatewayPlan};
use crate::pools_admin::{AdminPool, AdminView, ConfigStatus, PoolsAdmin};

/// Why pools could not be built or started.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// A rewrite of the configuration was refused by the pool's datastore.
    #[error(transparent)]
    Rewrite(#[from] CoreError),
    /// The pool's flow-control configuration cannot be used.
    #[error("flow control: {0}")]
    FlowControl(FlowConfigError),
    /// The model → pool routing table cannot be built.
    #[error(transparent)]
    Routes(#[from] RoutesError),
    /// The pool set's routing table was already handed to a gateway.
    #[error("routes already taken")]
    RoutesTaken,
}

/// A seed for production randomness (random tie breaks, request ids), different per process.
fn process_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish()
}

/// The pool `name` over `datastore`, deciding with `scheduler` and returning up to
/// `max_endpoints` per decision; with `flow` the requests wait in flow control (and legacy
/// shedding of sheddable requests is off, as upstream), on the process clock. Its random draws
/// are seeded differently in every process.
pub fn pool(
    name: &str,
    datastore: &Arc<Datastore>,
    scheduler: Scheduler,
    flow: Option<FlowConfig>,
    max_endpoints: usize,
) -> Result<Arc<Pool>, PoolError> {
    let clock = Arc::new(*igw_core::time::process_clock());
    let mut core = PoolCore::new(name, datastore.clone(), Arc::new(scheduler))
        .with_seed(process_seed())
        .with_max_endpoints(max_endpoints)
        .with_timer(clock.clone());
    if let Some(fc) = flow {
        core = core.with_flow_control(fc).map_err(PoolError::FlowControl)?;
    }
    Ok(Pool::new(Arc::new(core), clock))
}

/// Exposes flow control's metrics (`inference_extension_flow_control_*`) on the admin listener.
#[derive(Debug)]
pub struct FlowMetricsSource(pub Arc<igw_request::flow_gate::FlowMetrics>);

impl MetricsSource for FlowMetricsSource {
    fn render(&self, out: &mut String) {
        self.0.render(out);
    }
}

/// Exposes the core's request metrics on the admin listener.
#[derive(Debug)]
pub struct RequestMetricsSource(pub Arc<RequestMetrics>);

impl MetricsSource for RequestMetricsSource {
    fn render(&self, out: &mut String) {
        self.0.render(out);
    }
}

/// The admin listener's metric sources of `pool`: its request metrics and, with flow control,
/// flow control's.
pub fn metric_sources(pool: &Pool) -> Vec<Arc<dyn MetricsSource>> {
    let mut v: Vec<Arc<dyn MetricsSource>> = vec![Arc::new(RequestMetricsSource(pool.core().metrics().clone()))];
    if pool.gate().is_some() {
        v.push(Arc::new(FlowMetricsSource(pool.core().flow_metrics().clone())));
    }
    v
}

/// Metrics older than this are shown as stale on the admin listener.
pub const ADMIN_STALENESS: Duration = Duration::from_secs(2);

/// One pool's running parts. A reload that leaves the pool's definition unchanged keeps them
/// (its in-flight accounting, prefix index and scrapes carry on); otherwise they are replaced.
struct PoolRuntime {
    fingerprint: String,
    datastore: Arc<Datastore>,
    pool: Arc<Pool>,
    scraper: Scraper,
    follower: std::sync::Mutex<Option<JoinHandle<()>>>,
    /// The gate's dispatch loop and the switch that ends it (queued requests then get 503).
    gate_task: std::sync::Mutex<Option<(watch::Sender<bool>, JoinHandle<()>)>>,
}

impl PoolRuntime {
    fn new(fingerprint: String, datastore: Arc<Datastore>, pool: Arc<Pool>, scrape: &ScrapeConfig) -> Self {
        PoolRuntime {
            fingerprint,
            datastore,
            pool,
            scraper: Scraper::new(scrape.clone(), EngineRegistry::builtin()),
            follower: std::sync::Mutex::new(None),
            gate_task: std::sync::Mutex::new(None),
        }
    }

    fn follower(&self) -> std::sync::MutexGuard<'_, Option<JoinHandle<()>>> {
        self.follower.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn gate_task(&self) -> std::sync::MutexGuard<'_, Option<(watch::Sender<bool>, JoinHandle<()>)>> {
        self.gate_task.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts the flow-control dispatch loop, if the pool has a gate and it is not running.
    fn start_gate(&self) {
        let Some(gate) = self.pool.gate() else { return };
        let mut slot = self.gate_task();
        if slot.is_some() {
            return;
        }
        let (tx, mut rx) = watch::channel(false);
        let task = tokio::spawn(gate.clone().run(FLOW_TICK, async move {
            let _ = rx.wait_for(|s| *s).await;
        }));
        *slot = Some((tx, task));
    }

    async fn stop(&self) {
        if let Some(f) = self.follower().take() {
            f.abort();
        }
        let gate_task = self.gate_task().take();
        if let Some((tx, task)) = gate_task {
            let _ = tx.send(true);
            let _ = task.await;
        }
        self.scraper.shutdown().await;
    }
}

/// How often flow control re-checks the pool when nothing else wakes it (TTLs, fresh metrics).
pub const FLOW_TICK: Duration = Duration::from_millis(10);

/// Candidates per request in `igw serve`: the primary and two fallbacks (see [`GatewayConfig`]).
fn max_attempts() -> usize {
    GatewayConfig::default().max_attempts
}

/// One configuration generation's pools, running.
pub struct PoolSet {
    routes: Option<Routes>,
    view: AdminView,
    pools: Vec<Arc<PoolRuntime>>,
    summary: Vec<serde_json::Value>,
}

impl std::fmt::Debug for PoolSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolSet").field("pools", &self.summary).finish_non_exhaustive()
    }
}

impl PoolSet {
    /// Builds datastores, request cores and scrapers for `plan` (nothing new is started yet). A pool
    /// of `previous` whose definition (name, endpoints, engine, models, scheduler, rewrites,
    /// objectives) is unchanged is carried over as it runs.
    pub fn build(
        plan: GatewayPlan,
        generation: u64,
        scrape: &ScrapeConfig,
        previous: Option<&PoolSet>,
    ) -> Result<Self, PoolError> {
        let mut routes = Vec::new();
        let mut view = AdminView::default();
        let mut pools = Vec::new();
        let mut summary = Vec::new();
        for pool in plan.pools {
            let fingerprint = format!(
                "{}|{:?}|{:?}|{}|{:?}|{:?}",
                pool.name, pool.endpoints, pool.models, pool.scheduler_key, pool.rewrites, plan.objectives
            );
            let kept = previous.and_then(|p| p.pools.iter().find(|r| r.fingerprint == fingerprint)).cloned();
            let rt = match kept {
                Some(rt) => rt,
                None => {
                    let ds = Arc::new(Datastore::with_endpoints(pool.endpoints));
                    ds.reset_objectives(plan.objectives.iter().cloned());
                    for rw in pool.rewrites {
                        ds.apply_rewrite(rw)?;
                    }
                    let core = self::pool(&pool.name, &ds, pool.scheduler, pool.flow, max_attempts())?;
                    Arc::new(PoolRuntime::new(fingerprint, ds, core, scrape))
                }
            };
            summary.push(serde_json::json!({
                "name": pool.name,
                "endpoints": rt.datastore.snapshot().endpoints.iter().map(|e| e.address().to_string()).collect::<Vec<_>>(),
                "models": pool.models,
                "scheduler": pool.scheduler_source,
            }));
            view.pools.push(AdminPool {
                name: pool.name.clone(),
                datastore: rt.datastore.clone(),
                scheduler: Some(rt.pool.core().scheduler().clone()),
            });
            view.metrics.extend(metric_sources(&rt.pool));
            routes.push(PoolRoute { name: pool.name, pool: rt.pool.clone(), models: pool.models });
            pools.push(rt);
        }
        let routes = Routes::new(routes, plan.default_pool, generation)?;
        Ok(PoolSet { routes: Some(routes), view, pools, summary })
    }

    /// One pool that takes every model, routed by `pool` over `datastore` (`--endpoints`, the
    /// embedded simulated pool).
    pub fn single(name: &str, datastore: Arc<Datastore>, pool: Arc<Pool>, scrape: &ScrapeConfig) -> Self {
        let rt = Arc::new(PoolRuntime::new(String::new(), datastore.clone(), pool.clone(), scrape));
        let metrics = metric_sources(&pool);
        let scheduler = Some(pool.core().scheduler().clone());
        let view = AdminView { pools: vec![AdminPool { name: name.to_string(), datastore, scheduler }], metrics };
        PoolSet {
            routes: Some(Routes::single(name, pool)),
            view,
            pools: vec![rt],
            summary: vec![serde_json::json!({"name": name})],
        }
    }

    /// Scrapes every endpoint of the pools not yet running once, concurrently, and publishes
    /// what parsed, so new pools start with fresh metrics; then starts their periodic scrapes.
    pub async fn warm_and_start(&mut self) {
        let mut set = JoinSet::new();
        let fresh: Vec<&Arc<PoolRuntime>> = self.pools.iter().filter(|p| p.follower().is_none()).collect();
        for rt in &fresh {
            let snap = rt.datastore.snapshot();
            for ep in &snap.endpoints {
                let ep = ep.clone();
                let s = Scraper::new(rt.scraper.config().clone(), rt.scraper.engines().clone());
                set.spawn(async move {
                    if let Ok(x) = s.scrape_once(&ep).await
                        && x.is_fresh()
                    {
                        ep.set_metrics(x.metrics);
                    }
                });
            }
        }
        while set.join_next().await.is_some() {}
        for rt in fresh {
            *rt.follower() = Some(rt.scraper.follow(rt.datastore.clone()));
            rt.start_gate();
        }
    }

    /// The admin view of these pools.
    pub fn view(&self) -> AdminView {
        self.view.clone()
    }

    /// Takes the routing table (once).
    pub fn take_routes(&mut self) -> Option<Routes> {
        self.routes.take()
    }

    /// The pools as `/debug/config` shows them.
    pub fn summary(&self) -> &[serde_json::Value] {
        &self.summary
    }

    /// How many of these pools `other` carries on (the same running pool).
    pub fn shared_with(&self, other: &PoolSet) -> usize {
        self.pools.iter().filter(|p| other.pools.iter().any(|o| Arc::ptr_eq(p, o))).count()
    }

    /// Stops the scrapers of the pools that `successor` does not carry on.
    pub async fn stop(self, successor: Option<&PoolSet>) {
        for p in &self.pools {
            if successor.is_some_and(|s| s.pools.iter().any(|o| Arc::ptr_eq(p, o))) {
                continue;
            }
            p.stop().await;
        }
    }
}

/// The outcome of the latest configuration load, published to subscribers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadEvent {
    /// Loads attempted since start, the first included.
    pub attempts: u64,
    /// Generation in force (1 = the configuration loaded at start).
    pub generation: u64,
    /// The error of the latest attempt, if it failed (the previous generation is still in force).
    pub error: Option<String>,
    /// Pools the latest successful reload carried over unchanged (running, with their state).
    pub kept: usize,
}

/// The configuration's state for `/debug/config` and `/metrics`.
pub struct ConfigState {
    file: PathBuf,
    tx: watch::Sender<ReloadEvent>,
    failures: AtomicU64,
    pools: std::sync::Mutex<Vec<serde_json::Value>>,
}

impl std::fmt::Debug for ConfigState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigState").field("file", &self.file).field("event", &*self.tx.borrow()).finish()
    }
}

impl ConfigStatus for ConfigState {
    fn json(&self) -> serde_json::Value {
        let ev = self.tx.borrow().clone();
        serde_json::json!({
            "file": self.file.display().to_string(),
            "generation": ev.generation,
            "attempts": ev.attempts,
            "last_error": ev.error,
            "pools": *self.pools.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
        })
    }

    fn render(&self, out: &mut String) {
        let ev = self.tx.borrow().clone();
        let failures = self.failures.load(Ordering::Relaxed);
        let _ = writeln!(out, "# HELP igw_config_generation Generation of the gateway configuration in force.");
        let _ = writeln!(out, "# TYPE igw_config_generation gauge");
        let _ = writeln!(out, "igw_config_generation {}", ev.generation);
        let _ = writeln!(out, "# HELP igw_config_last_load_success 1 if the latest configuration load succeeded.");
        let _ = writeln!(out, "# TYPE igw_config_last_load_success gauge");
        let _ = writeln!(out, "igw_config_last_load_success {}", u8::from(ev.error.is_none()));
        let _ = writeln!(out, "# HELP igw_config_loads_total Configuration loads attempted, by result.");
        let _ = writeln!(out, "# TYPE igw_config_loads_total counter");
        let _ = writeln!(out, "igw_config_loads_total{{result=\"success\"}} {}", ev.attempts - failures);
        let _ = writeln!(out, "igw_config_loads_total{{result=\"failure\"}} {failures}");
    }
}

type FileContents = BTreeMap<PathBuf, Option<Vec<u8>>>;

fn read_all(files: impl IntoIterator<Item = PathBuf>) -> FileContents {
    files.into_iter().map(|f| (f.clone(), std::fs::read(&f).ok())).collect()
}

struct Current {
    pools: Option<PoolSet>,
    seen: FileContents,
    listen: (Option<std::net::SocketAddr>, Option<std::net::SocketAddr>),
}

/// Serves a configuration file: the gateway and admin listener built from it, and their
/// replacement whenever the file (or a scheduler config file it names) changes.
pub struct Reloader {
    file: PathBuf,
    policy: String,
    scrape: ScrapeConfig,
    gateway: Arc<Gateway>,
    admin: Arc<PoolsAdmin>,
    state: Arc<ConfigState>,
    current: tokio::sync::Mutex<Current>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").field("file", &self.file).finish_non_exhaustive()
    }
}

impl Reloader {
    /// Starts the pools of `plan` (already loaded from `file`) and the gateway over them.
    pub async fn start(
        file: PathBuf,
        plan: GatewayPlan,
        policy: &str,
        scrape: ScrapeConfig,
        gateway_config: GatewayConfig,
    ) -> Result<Arc<Self>, PoolError> {
        let seen = read_all(plan.files.iter().cloned());
        let listen = (plan.listen, plan.admin_listen);
        let mut pools = PoolSet::build(plan, 1, &scrape, None)?;
        pools.warm_and_start().await;
        let routes = pools.take_routes().ok_or(PoolError::RoutesTaken)?;
        let (tx, _) = watch::channel(ReloadEvent { attempts: 1, generation: 1, error: None, kept: 0 });
        let state = Arc::new(ConfigState {
            file: file.clone(),
            tx,
            failures: AtomicU64::new(0),
            pools: std::sync::Mutex::new(pools.summary().to_vec()),
        });
        let admin = Arc::new(PoolsAdmin::new(pools.view(), ADMIN_STALENESS, Some(state.clone())));
        let gateway = Arc::new(Gateway::with_routes(routes, gateway_config));
        Ok(Arc::new(Reloader {
            file,
            policy: policy.to_string(),
            scrape,
            gateway,
            admin,
            state,
            current: tokio::sync::Mutex::new(Current { pools: Some(pools), seen, listen }),
        }))
    }

    /// The gateway.
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// The admin listener.
    pub fn admin(&self) -> &Arc<PoolsAdmin> {
        &self.admin
    }

    /// Load outcomes, as they happen.
    pub fn subscribe(&self) -> watch::Receiver<ReloadEvent> {
        self.state.tx.subscribe()
    }

    /// Loads the file now (SIGHUP) and, if it is valid, swaps to it.
    pub async fn reload(&self) {
        let mut cur = self.current.lock().await;
        self.reload_locked(&mut cur).await;
    }

    /// Reloads if any configuration file changed since the last load attempt; returns whether
    /// it tried.
    pub async fn reload_if_changed(&self) -> bool {
        let mut cur = self.current.lock().await;
        let mut files: Vec<PathBuf> = cur.seen.keys().cloned().collect();
        if !files.contains(&self.file) {
            files.push(self.file.clone());
        }
        let now = read_all(files);
        if now == cur.seen {
            return false;
        }
        cur.seen = now;
        self.reload_locked(&mut cur).await;
        true
    }

    async fn reload_locked(&self, cur: &mut Current) {
        let prev = self.state.tx.borrow().clone();
        let attempts = prev.attempts + 1;
        let built = config::load(&self.file, &self.policy).map_err(|e| e.to_string()).and_then(|plan| {
            let files = plan.files.clone();
            let listen = (plan.listen, plan.admin_listen);
            let pools = PoolSet::build(plan, prev.generation + 1, &self.scrape, cur.pools.as_ref())
                .map_err(|e| e.to_string())?;
            Ok((pools, files, listen))
        });
        let (mut pools, files, listen) = match built {
            Ok(x) => x,
            Err(msg) => {
                tracing::error!(error = %msg, "configuration not reloaded; the previous configuration stays in force");
                self.state.failures.fetch_add(1, Ordering::Relaxed);
                self.state.tx.send_replace(ReloadEvent {
                    attempts,
                    generation: prev.generation,
                    error: Some(msg),
                    kept: prev.kept,
                });
                return;
            }
        };
        if listen != cur.listen {
            tracing::warn!("listen/adminListen changed in the file: they take effect at the next start");
        }
        pools.warm_and_start().await;
        let Some(routes) = pools.take_routes() else { return };
        let generation = routes.generation();
        self.gateway.set_routes(routes);
        self.admin.set_view(pools.view());
        *self.state.pools.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = pools.summary().to_vec();
        let kept = cur.pools.as_ref().map_or(0, |old| old.shared_with(&pools));
        let old = cur.pools.replace(pools);
        cur.listen = listen;
        // Watch exactly the files this generation was read from.
        cur.seen = files
            .into_iter()
            .map(|f| {
                let contents = cur.seen.get(&f).cloned().unwrap_or_else(|| std::fs::read(&f).ok());
                (f, contents)
            })
            .collect();
        tracing::info!(generation, kept, file = %self.file.display(), "configuration reloaded");
        self.state.tx.send_replace(ReloadEvent { attempts, generation, error: None, kept });
        if let Some(old) = old {
            old.stop(cur.pools.as_ref()).await;
        }
    }

    /// Checks the files every `interval` and reloads on change, until `stop` resolves.
    pub fn watch(
        self: &Arc<Self>,
        interval: Duration,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    () = &mut stop => return,
                    _ = tick.tick() => {}
                }
                me.reload_if_changed().await;
            }
        })
    }

    /// Stops the pools' scrapers.
    pub async fn shutdown(&self) {
        if let Some(p) = self.current.lock().await.pools.take() {
            p.stop(None).await;
        }
    }
}
