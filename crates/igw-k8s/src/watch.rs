//! The async layer: kube watchers feeding the [`Reconciler`].
//!
//! Each watch stream is mapped to a [`Msg`]; [`drive`] applies them in arrival order and
//! publishes whether the replica is synced. CRD watches go through
//! [`kube::core::DeserializeGuard`], so one malformed object is logged and skipped and never
//! wedges a watch. Objectives and rewrites are watched only if their CRDs are installed.

use std::sync::Arc;

use futures::stream::{BoxStream, StreamExt};
use igw_core::Datastore;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams};
use kube::core::DeserializeGuard;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, watcher};
use tokio::sync::watch;

use crate::api::{InferenceModelRewrite, InferenceObjective, InferencePool};
use crate::error::ConvertError;
use crate::legacy::{self, InferenceModel};
use crate::reconcile::{Event, Reconciler, Target};
use crate::shared::{POOL_GROUP, X_GROUP};

/// Errors starting discovery.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The Kubernetes client could not be built or the API server refused a call.
    #[error("kubernetes: {0}")]
    Kube(kube::Error),
    /// The flags describe no valid target.
    #[error("{0}")]
    Config(#[from] ConvertError),
    /// `--pool-group` names a group igw does not serve pools from.
    #[error("--pool-group {0:?} is not supported; use {POOL_GROUP} (or {X_GROUP} for the legacy v1alpha2 pool)")]
    Group(String),
}

impl From<kube::Error> for WatchError {
    fn from(e: kube::Error) -> Self {
        // Not a `source`: kube's message already carries its causes.
        WatchError::Kube(e)
    }
}

/// One item from one of the watch streams.
#[derive(Debug)]
pub enum Msg {
    /// From the Pod watch (boxed: a Pod is large).
    Pod(Box<watcher::Result<watcher::Event<Pod>>>),
    /// From the InferencePool watch.
    Pool(watcher::Result<watcher::Event<DeserializeGuard<InferencePool>>>),
    /// From the legacy InferencePool watch.
    LegacyPool(watcher::Result<watcher::Event<DeserializeGuard<legacy::InferencePool>>>),
    /// From the InferenceObjective watch.
    Objective(watcher::Result<watcher::Event<DeserializeGuard<InferenceObjective>>>),
    /// From the InferenceModelRewrite watch.
    Rewrite(watcher::Result<watcher::Event<DeserializeGuard<InferenceModelRewrite>>>),
    /// From the legacy InferenceModel watch.
    Model(watcher::Result<watcher::Event<DeserializeGuard<InferenceModel>>>),
}

/// Collects a watcher's `Init`/`InitApply`/`InitDone` into one [`Event::Restarted`].
#[derive(Debug)]
pub struct Collector<K> {
    init: Vec<K>,
}

impl<K> Default for Collector<K> {
    fn default() -> Self {
        Collector { init: Vec::new() }
    }
}

impl<K> Collector<K> {
    /// Feeds one watcher event; returns the reconciler event it completes, if any.
    pub fn push(&mut self, event: watcher::Event<K>) -> Option<Event<K>> {
        match event {
            watcher::Event::Init => {
                self.init.clear();
                None
            }
            watcher::Event::InitApply(k) => {
                self.init.push(k);
                None
            }
            watcher::Event::InitDone => Some(Event::Restarted(std::mem::take(&mut self.init))),
            watcher::Event::Apply(k) => Some(Event::Applied(k)),
            watcher::Event::Delete(k) => Some(Event::Deleted(k)),
        }
    }
}

/// Unwraps [`DeserializeGuard`]s: malformed objects are logged and dropped.
fn unguard<K: kube::Resource>(kind: &str, event: watcher::Event<DeserializeGuard<K>>) -> Option<watcher::Event<K>> {
    let ok = |g: DeserializeGuard<K>| match g.0 {
        Ok(k) => Some(k),
        Err(bad) => {
            tracing::warn!(kind, name = ?bad.metadata.name, error = %bad.error, "skipping a malformed object");
            None
        }
    };
    Some(match event {
        watcher::Event::Apply(g) => watcher::Event::Apply(ok(g)?),
        watcher::Event::Delete(g) => watcher::Event::Delete(ok(g)?),
        watcher::Event::InitApply(g) => watcher::Event::InitApply(ok(g)?),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitDone => watcher::Event::InitDone,
    })
}

#[derive(Default)]
struct Collectors {
    pods: Collector<Pod>,
    pools: Collector<InferencePool>,
    legacy_pools: Collector<legacy::InferencePool>,
    objectives: Collector<InferenceObjective>,
    rewrites: Collector<InferenceModelRewrite>,
    models: Collector<InferenceModel>,
}

fn apply(r: &mut Reconciler, c: &mut Collectors, msg: Msg) {
    fn ok<E>(kind: &str, item: watcher::Result<E>) -> Option<E> {
        item.map_err(|e| tracing::warn!(kind, error = %e, "watch error; the watcher retries with backoff")).ok()
    }
    match msg {
        Msg::Pod(e) => {
            if let Some(ev) = ok("Pod", *e).and_then(|e| c.pods.push(e)) {
                r.pod(ev);
            }
        }
        Msg::Pool(e) => {
            if let Some(ev) =
                ok("InferencePool", e).and_then(|e| unguard("InferencePool", e)).and_then(|e| c.pools.push(e))
            {
                r.pool(ev);
            }
        }
        Msg::LegacyPool(e) => {
            if let Some(ev) =
                ok("InferencePool", e).and_then(|e| unguard("InferencePool", e)).and_then(|e| c.legacy_pools.push(e))
            {
                r.legacy_pool(ev);
            }
        }
        Msg::Objective(e) => {
            if let Some(ev) = ok("InferenceObjective", e)
                .and_then(|e| unguard("InferenceObjective", e))
                .and_then(|e| c.objectives.push(e))
            {
                r.objective(ev);
            }
        }
        Msg::Rewrite(e) => {
            if let Some(ev) = ok("InferenceModelRewrite", e)
                .and_then(|e| unguard("InferenceModelRewrite", e))
                .and_then(|e| c.rewrites.push(e))
            {
                r.rewrite(ev);
            }
        }
        Msg::Model(e) => {
            if let Some(ev) =
                ok("InferenceModel", e).and_then(|e| unguard("InferenceModel", e)).and_then(|e| c.models.push(e))
            {
                r.legacy_model(ev);
            }
        }
    }
}

/// Applies every message of `msgs` to `reconciler`, publishing `is_synced` on `synced` after
/// each. Returns when the stream ends (watchers never end on their own).
pub async fn drive(mut reconciler: Reconciler, mut msgs: BoxStream<'static, Msg>, synced: watch::Sender<bool>) {
    let mut c = Collectors::default();
    while let Some(msg) = msgs.next().await {
        apply(&mut reconciler, &mut c, msg);
        let now = reconciler.is_synced();
        synced.send_if_modified(|s| std::mem::replace(s, now) != now);
    }
}

/// Where to discover endpoints, as the EPP's flags say it.
#[derive(Clone, Debug, Default)]
pub struct DiscoveryConfig {
    /// `--pool-name` (pool mode).
    pub pool_name: String,
    /// `--pool-namespace`; empty means `$NAMESPACE`, then `default`.
    pub pool_namespace: String,
    /// `--pool-group`.
    pub pool_group: String,
    /// `--endpoint-selector k=v,...` (standalone mode).
    pub endpoint_selector: String,
    /// `--endpoint-target-ports`.
    pub endpoint_target_ports: Vec<u16>,
}

impl DiscoveryConfig {
    /// The namespace: the flag, else `$NAMESPACE`, else `default`.
    pub fn namespace(&self) -> String {
        if !self.pool_namespace.is_empty() {
            return self.pool_namespace.clone();
        }
        std::env::var("NAMESPACE").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "default".into())
    }

    /// The target these flags describe.
    pub fn target(&self) -> Result<Target, WatchError> {
        let namespace = self.namespace();
        if !self.endpoint_selector.is_empty() {
            return Ok(Target::from_selector(&namespace, &self.endpoint_selector, &self.endpoint_target_ports)?);
        }
        match self.pool_group.as_str() {
            "" | POOL_GROUP => Ok(Target::Pool { name: self.pool_name.clone(), namespace }),
            X_GROUP => Ok(Target::LegacyPool { name: self.pool_name.clone(), namespace }),
            other => Err(WatchError::Group(other.to_string())),
        }
    }
}

/// A running discovery: whether it has synced, and the task.
#[derive(Debug)]
pub struct Discovery {
    /// True once the pool is known and pods are listed.
    pub synced: watch::Receiver<bool>,
    /// The task applying watch events (runs until aborted).
    pub task: tokio::task::JoinHandle<()>,
}

async fn crd_installed<K>(api: &Api<DeserializeGuard<K>>) -> Result<bool, kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    match api.list(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Connects to the cluster (in-cluster config or kubeconfig) and starts discovery feeding
/// `datastore`.
pub async fn start(datastore: Arc<Datastore>, config: &DiscoveryConfig) -> Result<Discovery, WatchError> {
    let target = config.target()?;
    let client = Client::try_default().await?;
    start_with(client, datastore, target).await
}

/// Starts discovery for `target` with `client`.
pub async fn start_with(client: Client, datastore: Arc<Datastore>, target: Target) -> Result<Discovery, WatchError> {
    let ns = target.namespace().to_string();
    let cfg = watcher::Config::default();
    let mut streams: Vec<BoxStream<'static, Msg>> = Vec::new();
    let pod_cfg = match &target {
        Target::Selector(spec) => {
            let sel: Vec<String> = spec.selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
            cfg.clone().labels(&sel.join(","))
        }
        _ => cfg.clone(),
    };
    streams.push(
        watcher(Api::<Pod>::namespaced(client.clone(), &ns), pod_cfg)
            .default_backoff()
            .map(|e| Msg::Pod(Box::new(e)))
            .boxed(),
    );
    let by_name = |name: &str| cfg.clone().fields(&format!("metadata.name={name}"));
    match &target {
        Target::Pool { name, .. } => {
            let pools = Api::<DeserializeGuard<InferencePool>>::namespaced(client.clone(), &ns);
            streams.push(watcher(pools, by_name(name)).default_backoff().map(Msg::Pool).boxed());
            let objectives = Api::<DeserializeGuard<InferenceObjective>>::namespaced(client.clone(), &ns);
            if crd_installed(&objectives).await? {
                streams.push(watcher(objectives, cfg.clone()).default_backoff().map(Msg::Objective).boxed());
            } else {
                tracing::info!("InferenceObjective CRD not installed; every request has priority 0");
            }
            let rewrites = Api::<DeserializeGuard<InferenceModelRewrite>>::namespaced(client.clone(), &ns);
            if crd_installed(&rewrites).await? {
                streams.push(watcher(rewrites, cfg.clone()).default_backoff().map(Msg::Rewrite).boxed());
            } else {
                tracing::info!("InferenceModelRewrite CRD not installed; no model rewrites");
            }
        }
        Target::LegacyPool { name, .. } => {
            let pools = Api::<DeserializeGuard<legacy::InferencePool>>::namespaced(client.clone(), &ns);
            streams.push(watcher(pools, by_name(name)).default_backoff().map(Msg::LegacyPool).boxed());
            let models = Api::<DeserializeGuard<InferenceModel>>::namespaced(client.clone(), &ns);
            if crd_installed(&models).await? {
                streams.push(watcher(models, cfg.clone()).default_backoff().map(Msg::Model).boxed());
            }
        }
        Target::Selector(_) => {}
    }
    tracing::info!(target = ?target, "kubernetes discovery starting");
    let (tx, rx) = watch::channel(false);
    let reconciler = Reconciler::new(datastore, target);
    let task = tokio::spawn(drive(reconciler, futures::stream::select_all(streams).boxed(), tx));
    Ok(Discovery { synced: rx, task })
}
