//! The sans-IO core of discovery: watch events in, datastore writes out.
//!
//! The async layer (`watch`) turns kube watch streams into [`Event`]s and calls the
//! [`Reconciler`]; tests feed it synthetic event sequences. The reconciler keeps a small cache of
//! the pods it has seen (name, IP, readiness, labels, active ports), so that a change of the
//! pool's selector or ports resyncs every endpoint without a new list call.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use igw_core::datastore::PoolSpec;
use igw_core::{Datastore, EndpointMeta, InferenceObjective as CoreObjective, Labels, ModelRewrite, ObjectRef};
use k8s_openapi::api::core::v1::Pod;

use crate::api::{InferenceModelRewrite, InferenceObjective, InferencePool};
use crate::convert;
use crate::error::ConvertError;
use crate::legacy::{self, InferenceModel};
use crate::shared::ACTIVE_PORTS_ANNOTATION;

/// One watch event, after the async layer has collected an initial list.
#[derive(Clone, Debug)]
pub enum Event<K> {
    /// The object was added or changed.
    Applied(K),
    /// The object was deleted.
    Deleted(K),
    /// The watch (re)started: this is the complete current list.
    Restarted(Vec<K>),
}

/// What this replica serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The InferencePool (v1) `name` in `namespace`.
    Pool {
        /// Pool name.
        name: String,
        /// Pool namespace.
        namespace: String,
    },
    /// The legacy v1alpha2 InferencePool `name` in `namespace`.
    LegacyPool {
        /// Pool name.
        name: String,
        /// Pool namespace.
        namespace: String,
    },
    /// Standalone mode: pods matching a selector, no CRDs.
    Selector(PoolSpec),
}

impl Target {
    /// The namespace watched.
    pub fn namespace(&self) -> &str {
        match self {
            Target::Pool { namespace, .. } | Target::LegacyPool { namespace, .. } => namespace,
            Target::Selector(spec) => &spec.namespace,
        }
    }

    /// Builds the standalone target from `--endpoint-selector k=v,k2=v2` and
    /// `--endpoint-target-ports` (1-8 ports; duplicates removed).
    pub fn from_selector(namespace: &str, selector: &str, ports: &[u16]) -> Result<Self, ConvertError> {
        let invalid =
            |reason: String| ConvertError::Invalid { kind: "endpoint selector", name: selector.into(), reason };
        let mut labels = Labels::new();
        for pair in selector.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| invalid(format!("{pair:?} is not key=value")))?;
            if k.trim().is_empty() {
                return Err(invalid(format!("{pair:?} has an empty key")));
            }
            labels.insert(k.trim().to_string(), v.trim().to_string());
        }
        if labels.is_empty() {
            return Err(invalid("no labels".into()));
        }
        let mut target_ports: Vec<u16> = Vec::new();
        for p in ports {
            if *p == 0 {
                return Err(invalid("port 0".into()));
            }
            if !target_ports.contains(p) {
                target_ports.push(*p);
            }
        }
        if target_ports.is_empty() || target_ports.len() > 8 {
            return Err(invalid(format!("{} target ports; 1 to 8 are allowed", target_ports.len())));
        }
        Ok(Target::Selector(PoolSpec {
            name: "standalone".into(),
            namespace: namespace.into(),
            selector: labels,
            target_ports,
        }))
    }
}

/// What the reconciler keeps of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    /// Pod name.
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod IP, once assigned.
    pub ip: Option<IpAddr>,
    /// PodReady is True and the pod is not being deleted.
    pub ready: bool,
    /// Labels (the engine-type label among them).
    pub labels: Labels,
    /// Ports named by the active-ports annotation; `None` when absent (all ports active).
    pub active_ports: Option<Vec<u16>>,
}

impl PodInfo {
    /// Extracts what matters from a Pod. A malformed IP or active-ports annotation is an error.
    pub fn from_pod(pod: &Pod) -> Result<Self, ConvertError> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let namespace = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let invalid =
            |reason: String| ConvertError::Invalid { kind: "Pod", name: format!("{namespace}/{name}"), reason };
        let status = pod.status.as_ref();
        let ip = match status.and_then(|s| s.pod_ip.as_deref()).filter(|s| !s.is_empty()) {
            Some(s) => Some(s.parse::<IpAddr>().map_err(|_| invalid(format!("pod IP {s:?} does not parse")))?),
            None => None,
        };
        let ready = pod.metadata.deletion_timestamp.is_none()
            && status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let active_ports = match pod.metadata.annotations.as_ref().and_then(|a| a.get(ACTIVE_PORTS_ANNOTATION)) {
            None => None,
            Some(v) => Some(
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        s.parse::<u16>().map_err(|_| invalid(format!("{ACTIVE_PORTS_ANNOTATION}: {s:?} is not a port")))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        Ok(PodInfo {
            ip,
            ready,
            labels: pod.metadata.labels.clone().unwrap_or_default().into_iter().collect(),
            active_ports,
            name,
            namespace,
        })
    }

    /// The endpoints this pod contributes to `pool`: one per active target port, ranked by the
    /// port's index in the pool's target ports. None unless ready, with an IP, and selected.
    pub fn endpoints(&self, pool: &PoolSpec) -> Vec<EndpointMeta> {
        let Some(ip) = self.ip else { return Vec::new() };
        if !self.ready || self.namespace != pool.namespace || !pool.selects(&self.labels) {
            return Vec::new();
        }
        pool.target_ports
            .iter()
            .enumerate()
            .filter(|(_, p)| self.active_ports.as_ref().is_none_or(|a| a.contains(p)))
            .map(|(rank, port)| {
                let address = SocketAddr::new(ip, *port);
                EndpointMeta {
                    namespace: self.namespace.clone(),
                    pod: self.name.clone(),
                    rank: u16::try_from(rank).unwrap_or(u16::MAX),
                    address,
                    metrics_addr: address,
                    labels: self.labels.clone(),
                }
            })
            .collect()
    }
}

/// Applies watch events to a [`Datastore`].
pub struct Reconciler {
    datastore: Arc<Datastore>,
    target: Target,
    pool: Option<PoolSpec>,
    pods: BTreeMap<String, PodInfo>,
    pods_listed: bool,
    objectives: BTreeMap<ObjectRef, CoreObjective>,
    rewrites: BTreeMap<ObjectRef, ModelRewrite>,
    skipped: u64,
}

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler").field("target", &self.target).field("pods", &self.pods.len()).finish()
    }
}

impl Reconciler {
    /// A reconciler writing into `datastore` for `target`. In standalone mode the pool is known
    /// at once.
    pub fn new(datastore: Arc<Datastore>, target: Target) -> Self {
        let mut r = Reconciler {
            datastore,
            pool: None,
            pods: BTreeMap::new(),
            pods_listed: false,
            objectives: BTreeMap::new(),
            rewrites: BTreeMap::new(),
            skipped: 0,
            target,
        };
        if let Target::Selector(spec) = &r.target {
            let spec = spec.clone();
            r.set_pool(Some(spec));
        }
        r
    }

    /// What this reconciler serves.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// True once the pool is known and the pods have been listed: the replica can serve.
    pub fn is_synced(&self) -> bool {
        self.pool.is_some() && self.pods_listed
    }

    /// How many objects were skipped as malformed so far.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    fn skip(&mut self, e: &ConvertError) {
        self.skipped += 1;
        tracing::warn!(error = %e, "skipping a malformed object");
    }

    fn pool_name(&self) -> &str {
        match &self.target {
            Target::Pool { name, .. } | Target::LegacyPool { name, .. } => name,
            Target::Selector(spec) => &spec.name,
        }
    }

    fn is_ours(&self, meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
        meta.name.as_deref() == Some(self.pool_name())
            && meta.namespace.as_deref().unwrap_or("default") == self.target.namespace()
    }

    /// An InferencePool (v1) event.
    pub fn pool(&mut self, event: Event<InferencePool>) {
        if !matches!(self.target, Target::Pool { .. }) {
            return;
        }
        self.pool_event(event, |s, p| if s.is_ours(&p.metadata) { Some(convert::pool_spec(p)) } else { None });
    }

    /// A legacy v1alpha2 InferencePool event.
    pub fn legacy_pool(&mut self, event: Event<legacy::InferencePool>) {
        if !matches!(self.target, Target::LegacyPool { .. }) {
            return;
        }
        self.pool_event(event, |s, p| if s.is_ours(&p.metadata) { Some(convert::legacy_pool_spec(p)) } else { None });
    }

    fn pool_event<K>(&mut self, event: Event<K>, spec: impl Fn(&Self, &K) -> Option<Result<PoolSpec, ConvertError>>) {
        match event {
            Event::Applied(p) => match spec(self, &p) {
                Some(Ok(s)) => self.set_pool(Some(s)),
                Some(Err(e)) => self.skip(&e),
                None => {}
            },
            Event::Deleted(p) => {
                if spec(self, &p).is_some() {
                    self.set_pool(None);
                }
            }
            Event::Restarted(all) => {
                let mut found = None;
                for p in &all {
                    match spec(self, p) {
                        Some(Ok(s)) => found = Some(s),
                        Some(Err(e)) => self.skip(&e),
                        None => {}
                    }
                }
                self.set_pool(found);
            }
        }
    }

    fn set_pool(&mut self, pool: Option<PoolSpec>) {
        match pool {
            None => {
                if self.pool.take().is_some() {
                    tracing::info!("pool deleted: no endpoints");
                }
                self.datastore.delete_pool();
            }
            Some(spec) => {
                if self.pool.as_ref() == Some(&spec) {
                    return;
                }
                tracing::info!(pool = %spec.name, selector = ?spec.selector, ports = ?spec.target_ports, "pool applied; resyncing endpoints");
                self.datastore.apply_pool(spec.clone());
                self.pool = Some(spec);
                self.resync();
            }
        }
    }

    fn resync(&self) {
        let Some(pool) = &self.pool else { return };
        self.datastore.reset_endpoints(self.pods.values().flat_map(|p| p.endpoints(pool)));
    }

    /// A Pod event.
    pub fn pod(&mut self, event: Event<Pod>) {
        match event {
            Event::Applied(pod) => match PodInfo::from_pod(&pod) {
                Ok(info) if info.namespace == self.target.namespace() => {
                    self.sync_pod(&info);
                    self.pods.insert(info.name.clone(), info);
                }
                Ok(_) => {}
                Err(e) => {
                    // Keep serving the pod's last good state rather than guessing.
                    self.skip(&e);
                }
            },
            Event::Deleted(pod) => {
                let name = pod.metadata.name.clone().unwrap_or_default();
                if self.pods.remove(&name).is_some() {
                    self.datastore.delete_pod(self.target.namespace(), &name);
                }
            }
            Event::Restarted(all) => {
                self.pods.clear();
                for pod in &all {
                    match PodInfo::from_pod(pod) {
                        Ok(info) if info.namespace == self.target.namespace() => {
                            self.pods.insert(info.name.clone(), info);
                        }
                        Ok(_) => {}
                        Err(e) => self.skip(&e),
                    }
                }
                self.pods_listed = true;
                self.resync();
            }
        }
    }

    fn sync_pod(&self, info: &PodInfo) {
        let Some(pool) = &self.pool else { return };
        let want = info.endpoints(pool);
        let snap = self.datastore.snapshot();
        for e in snap.endpoints.iter().map(|e| e.meta()).filter(|m| m.namespace == info.namespace && m.pod == info.name)
        {
            if !want.iter().any(|w| w.key() == e.key()) {
                self.datastore.delete_endpoint(&e.key());
            }
        }
        for w in want {
            let same = snap.endpoints.iter().any(|e| e.meta() == &w);
            if !same {
                self.datastore.apply_endpoint(w);
            }
        }
    }

    /// An InferenceObjective event. Objectives whose `poolRef` does not name the pool (name and
    /// group) are ignored, and removed if they named it before.
    pub fn objective(&mut self, event: Event<InferenceObjective>) {
        let pool = self.pool_name().to_string();
        let ns = self.target.namespace().to_string();
        let mine = |o: &InferenceObjective| {
            o.metadata.namespace.as_deref().unwrap_or("default") == ns
                && convert::pool_ref_matches(&o.spec.pool_ref, &pool)
        };
        match event {
            Event::Applied(o) => {
                let obj = convert::objective(&o);
                if mine(&o) {
                    self.datastore.apply_objective(obj.clone());
                    self.objectives.insert(obj.id.clone(), obj);
                } else if self.objectives.remove(&obj.id).is_some() {
                    self.datastore.delete_objective(&obj.id.name);
                }
            }
            Event::Deleted(o) => {
                let obj = convert::objective(&o);
                if self.objectives.remove(&obj.id).is_some() {
                    self.datastore.delete_objective(&obj.id.name);
                }
            }
            Event::Restarted(all) => {
                self.objectives =
                    all.iter().filter(|o| mine(o)).map(convert::objective).map(|o| (o.id.clone(), o)).collect();
                self.datastore.reset_objectives(self.objectives.values().cloned());
            }
        }
    }

    /// An InferenceModelRewrite event (same pool filter as objectives; invalid ones skipped).
    pub fn rewrite(&mut self, event: Event<InferenceModelRewrite>) {
        let pool = self.pool_name().to_string();
        let ns = self.target.namespace().to_string();
        let mine = |o: &InferenceModelRewrite| {
            o.metadata.namespace.as_deref().unwrap_or("default") == ns
                && convert::pool_ref_matches(&o.spec.pool_ref, &pool)
        };
        match event {
            Event::Applied(o) => {
                let id = ObjectRef::new(
                    o.metadata.namespace.as_deref().unwrap_or("default"),
                    o.metadata.name.as_deref().unwrap_or_default(),
                );
                let converted = if mine(&o) { Some(convert::rewrite(&o)) } else { None };
                match converted {
                    Some(Ok(rw)) => {
                        if self.datastore.apply_rewrite(rw.clone()).is_ok() {
                            self.rewrites.insert(id, rw);
                        }
                    }
                    Some(Err(e)) => {
                        self.skip(&e);
                        if self.rewrites.remove(&id).is_some() {
                            self.datastore.delete_rewrite(&id);
                        }
                    }
                    None => {
                        if self.rewrites.remove(&id).is_some() {
                            self.datastore.delete_rewrite(&id);
                        }
                    }
                }
            }
            Event::Deleted(o) => {
                let id = ObjectRef::new(
                    o.metadata.namespace.as_deref().unwrap_or("default"),
                    o.metadata.name.as_deref().unwrap_or_default(),
                );
                if self.rewrites.remove(&id).is_some() {
                    self.datastore.delete_rewrite(&id);
                }
            }
            Event::Restarted(all) => {
                self.rewrites.clear();
                for o in all.iter().filter(|o| mine(o)) {
                    match convert::rewrite(o) {
                        Ok(rw) => {
                            self.rewrites.insert(rw.id.clone(), rw);
                        }
                        Err(e) => self.skip(&e),
                    }
                }
                for e in self.datastore.reset_rewrites(self.rewrites.values().cloned()) {
                    tracing::warn!(error = %e, "skipping an invalid rewrite");
                }
            }
        }
    }

    /// A legacy InferenceModel event: an objective bound by model name (priority from its
    /// criticality) plus, with target models, a rewrite.
    pub fn legacy_model(&mut self, event: Event<InferenceModel>) {
        let pool = self.pool_name().to_string();
        let ns = self.target.namespace().to_string();
        let mine = |m: &InferenceModel| {
            m.metadata.namespace.as_deref().unwrap_or("default") == ns && convert::legacy_pool_ref_matches(m, &pool)
        };
        let id_of = |m: &InferenceModel| {
            ObjectRef::new(
                m.metadata.namespace.as_deref().unwrap_or("default"),
                m.metadata.name.as_deref().unwrap_or_default(),
            )
        };
        match event {
            Event::Applied(m) => {
                let id = id_of(&m);
                self.forget_model(&id);
                if mine(&m) {
                    match convert::legacy_model(&m) {
                        Ok((obj, rw)) => self.remember_model(obj, rw),
                        Err(e) => self.skip(&e),
                    }
                }
            }
            Event::Deleted(m) => self.forget_model(&id_of(&m)),
            Event::Restarted(all) => {
                let ids: Vec<ObjectRef> =
                    self.objectives.values().filter(|o| o.legacy_model_name.is_some()).map(|o| o.id.clone()).collect();
                for id in &ids {
                    self.forget_model(id);
                }
                for m in all.iter().filter(|m| mine(m)) {
                    match convert::legacy_model(m) {
                        Ok((obj, rw)) => self.remember_model(obj, rw),
                        Err(e) => self.skip(&e),
                    }
                }
            }
        }
    }

    fn forget_model(&mut self, id: &ObjectRef) {
        if self.objectives.remove(id).is_some() {
            self.datastore.delete_objective(&id.name);
        }
        if self.rewrites.remove(id).is_some() {
            self.datastore.delete_rewrite(id);
        }
    }

    fn remember_model(&mut self, obj: CoreObjective, rw: Option<ModelRewrite>) {
        self.datastore.apply_objective(obj.clone());
        self.objectives.insert(obj.id.clone(), obj);
        if let Some(rw) = rw
            && self.datastore.apply_rewrite(rw.clone()).is_ok()
        {
            self.rewrites.insert(rw.id.clone(), rw);
        }
    }
}
