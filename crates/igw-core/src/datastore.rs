//! The datastore: one pool's endpoints, objectives and model rewrites.
//!
//! Writers (Kubernetes watchers, static configuration, the simulator) call `apply_*`,
//! `delete_*` and `reset_*`; each write builds a new immutable [`Snapshot`] and publishes it
//! atomically. Readers call [`Datastore::snapshot`] once per request and take no lock.
//! Per-endpoint metrics and in-flight counters live inside the shared [`Endpoint`]s, so scrapes
//! do not rebuild snapshots.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::endpoint::{Endpoint, EndpointId, EndpointKey, EndpointMeta, Labels};
use crate::error::CoreError;
use crate::objective::{InferenceObjective, ModelRewrite, ObjectRef, RewriteRule, find_rewrite_rule};
use crate::request::Priority;

/// The InferencePool this datastore serves: which pods and ports are endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolSpec {
    /// Pool name.
    pub name: String,
    /// Pool namespace.
    pub namespace: String,
    /// Pod label selector (matchLabels).
    pub selector: Labels,
    /// Target ports; each ready pod yields one endpoint per port.
    pub target_ports: Vec<u16>,
}

impl PoolSpec {
    /// True if a pod with `labels` is selected by this pool.
    pub fn selects(&self, labels: &Labels) -> bool {
        self.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// An immutable view of the datastore at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Bumped on every write.
    pub generation: u64,
    /// The pool, once known.
    pub pool: Option<PoolSpec>,
    /// Endpoints, ordered by id.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Objectives by name.
    pub objectives: BTreeMap<String, InferenceObjective>,
    /// Model rewrites.
    pub rewrites: Vec<ModelRewrite>,
}

impl Snapshot {
    /// The endpoint with `id`, if present.
    pub fn endpoint(&self, id: EndpointId) -> Option<&Arc<Endpoint>> {
        self.endpoints.binary_search_by_key(&id, |e| e.id()).ok().map(|i| &self.endpoints[i])
    }

    /// The endpoint listening on `addr`, if present.
    pub fn endpoint_by_addr(&self, addr: std::net::SocketAddr) -> Option<&Arc<Endpoint>> {
        self.endpoints.iter().find(|e| e.address() == addr)
    }

    /// The priority of a request naming objective `objective` for model `model`: the named
    /// objective's priority, else a legacy InferenceModel bound to the model name, else 0.
    pub fn priority_for(&self, objective: Option<&str>, model: &str) -> Priority {
        self.objective_for(objective, model).map_or(0, |o| o.priority)
    }

    /// The objective a request binds to: the one it names, else a legacy InferenceModel bound
    /// by its model name.
    pub fn objective_for(&self, objective: Option<&str>, model: &str) -> Option<&InferenceObjective> {
        if let Some(o) = objective.and_then(|name| self.objectives.get(name)) {
            return Some(o);
        }
        self.objectives.values().find(|o| o.legacy_model_name.as_deref() == Some(model))
    }

    /// The rewrite rule that applies to `model`, if any (see [`find_rewrite_rule`]).
    pub fn rewrite_rule(&self, model: &str) -> Option<&RewriteRule> {
        find_rewrite_rule(&self.rewrites, model)
    }

    /// The rewrite rule that applies to `model` and the InferenceModelRewrite it belongs to.
    pub fn rewrite_for(&self, model: &str) -> Option<(&ObjectRef, &RewriteRule)> {
        crate::objective::find_rewrite(&self.rewrites, model)
    }
}

#[derive(Default)]
struct State {
    generation: u64,
    next_id: u32,
    pool: Option<PoolSpec>,
    endpoints: BTreeMap<EndpointKey, Arc<Endpoint>>,
    objectives: BTreeMap<String, InferenceObjective>,
    rewrites: BTreeMap<ObjectRef, ModelRewrite>,
}

impl State {
    fn publish(&mut self) -> Snapshot {
        self.generation += 1;
        let mut endpoints: Vec<_> = self.endpoints.values().cloned().collect();
        endpoints.sort_by_key(|e| e.id());
        Snapshot {
            generation: self.generation,
            pool: self.pool.clone(),
            endpoints,
            objectives: self.objectives.clone(),
            rewrites: self.rewrites.values().cloned().collect(),
        }
    }

    fn upsert_endpoint(&mut self, meta: EndpointMeta) -> EndpointId {
        let key = meta.key();
        if let Some(existing) = self.endpoints.get(&key) {
            if existing.meta() == &meta {
                return existing.id();
            }
            // Same pod and port, new identity (address or labels changed): keep the id so the
            // indexes stay valid, and carry over the live state.
            let id = existing.id();
            let ep = Endpoint::new(id, meta);
            ep.set_metrics((*existing.metrics()).clone());
            self.endpoints.insert(key, Arc::new(ep));
            return id;
        }
        let id = EndpointId(self.next_id);
        self.next_id += 1;
        self.endpoints.insert(key, Arc::new(Endpoint::new(id, meta)));
        id
    }
}

/// The datastore of one pool. Cheap to share behind an `Arc`.
pub struct Datastore {
    snapshot: ArcSwap<Snapshot>,
    state: Mutex<State>,
}

impl Default for Datastore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Datastore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.snapshot();
        f.debug_struct("Datastore").field("generation", &s.generation).field("endpoints", &s.endpoints.len()).finish()
    }
}

impl Datastore {
    /// An empty datastore.
    pub fn new() -> Self {
        Datastore { snapshot: ArcSwap::from_pointee(Snapshot::default()), state: Mutex::new(State::default()) }
    }

    /// A datastore holding static endpoints (no pool object), e.g. from `--endpoints`.
    pub fn with_endpoints(endpoints: impl IntoIterator<Item = EndpointMeta>) -> Self {
        let ds = Self::new();
        ds.reset_endpoints(endpoints);
        ds
    }

    /// The current snapshot: lock-free, never blocks on writers.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    fn write<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut st = self.state.lock();
        let r = f(&mut st);
        self.snapshot.store(Arc::new(st.publish()));
        r
    }

    /// Sets the pool. Endpoints that the new selector no longer selects are removed.
    pub fn apply_pool(&self, pool: PoolSpec) {
        self.write(|st| {
            st.endpoints.retain(|k, e| pool.selects(&e.meta().labels) && pool.target_ports.contains(&k.port));
            st.pool = Some(pool);
        });
    }

    /// Removes the pool and every endpoint.
    pub fn delete_pool(&self) {
        self.write(|st| {
            st.pool = None;
            st.endpoints.clear();
        });
    }

    /// Adds or updates one endpoint; returns its id (stable across updates).
    pub fn apply_endpoint(&self, meta: EndpointMeta) -> EndpointId {
        self.write(|st| st.upsert_endpoint(meta))
    }

    /// Removes an endpoint; returns true if it existed.
    pub fn delete_endpoint(&self, key: &EndpointKey) -> bool {
        self.write(|st| st.endpoints.remove(key).is_some())
    }

    /// Removes every endpoint of pod `namespace/pod` (all its ranks); returns how many.
    pub fn delete_pod(&self, namespace: &str, pod: &str) -> usize {
        self.write(|st| {
            let before = st.endpoints.len();
            st.endpoints.retain(|k, _| !(k.namespace == namespace && k.pod == pod));
            before - st.endpoints.len()
        })
    }

    /// Replaces the endpoint set with `endpoints`. Endpoints present before and after keep their
    /// id and live state.
    pub fn reset_endpoints(&self, endpoints: impl IntoIterator<Item = EndpointMeta>) {
        let metas: Vec<EndpointMeta> = endpoints.into_iter().collect();
        self.write(|st| {
            let keep: std::collections::BTreeSet<EndpointKey> = metas.iter().map(EndpointMeta::key).collect();
            st.endpoints.retain(|k, _| keep.contains(k));
            for m in metas {
                st.upsert_endpoint(m);
            }
        });
    }

    /// Adds or replaces an objective (by name).
    pub fn apply_objective(&self, objective: InferenceObjective) {
        self.write(|st| {
            st.objectives.insert(objective.id.name.clone(), objective);
        });
    }

    /// Removes an objective by name; returns true if it existed.
    pub fn delete_objective(&self, name: &str) -> bool {
        self.write(|st| st.objectives.remove(name).is_some())
    }

    /// Replaces every objective.
    pub fn reset_objectives(&self, objectives: impl IntoIterator<Item = InferenceObjective>) {
        self.write(|st| st.objectives = objectives.into_iter().map(|o| (o.id.name.clone(), o)).collect());
    }

    /// Adds or replaces a model rewrite, after validating it.
    pub fn apply_rewrite(&self, rewrite: ModelRewrite) -> Result<(), CoreError> {
        rewrite.validate()?;
        self.write(|st| {
            st.rewrites.insert(rewrite.id.clone(), rewrite);
        });
        Ok(())
    }

    /// Removes a model rewrite; returns true if it existed.
    pub fn delete_rewrite(&self, id: &ObjectRef) -> bool {
        self.write(|st| st.rewrites.remove(id).is_some())
    }

    /// Replaces every model rewrite. Invalid ones are skipped and returned as errors.
    pub fn reset_rewrites(&self, rewrites: impl IntoIterator<Item = ModelRewrite>) -> Vec<CoreError> {
        let mut errors = Vec::new();
        self.write(|st| {
            st.rewrites.clear();
            for rw in rewrites {
                match rw.validate() {
                    Ok(()) => {
                        st.rewrites.insert(rw.id.clone(), rw);
                    }
                    Err(e) => errors.push(e),
                }
            }
        });
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objective::TargetModel;

    fn pod(name: &str, ip: &str, port: u16, labels: &[(&str, &str)]) -> EndpointMeta {
        EndpointMeta {
            namespace: "ns".into(),
            pod: name.into(),
            rank: 0,
            address: format!("{ip}:{port}").parse().expect("addr"),
            metrics_addr: format!("{ip}:{port}").parse().expect("addr"),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn snapshots_are_immutable_and_ids_stable() {
        let ds = Datastore::new();
        let a = ds.apply_endpoint(pod("a", "10.0.0.1", 8000, &[]));
        let before = ds.snapshot();
        let b = ds.apply_endpoint(pod("b", "10.0.0.2", 8000, &[]));
        assert_ne!(a, b);
        assert_eq!(before.endpoints.len(), 1, "an old snapshot never changes");
        let now = ds.snapshot();
        assert_eq!(now.endpoints.len(), 2);
        assert!(now.generation > before.generation);
        // Re-applying the same pod keeps its id; live state carries over on change.
        now.endpoint(a).expect("a").in_flight().add(5);
        assert_eq!(ds.apply_endpoint(pod("a", "10.0.0.1", 8000, &[])), a);
        assert_eq!(ds.snapshot().endpoint(a).expect("a").in_flight().requests(), 1);
        assert_eq!(ds.apply_endpoint(pod("a", "10.0.0.1", 8000, &[("x", "y")])), a);
        assert!(ds.delete_endpoint(&EndpointKey { namespace: "ns".into(), pod: "b".into(), port: 8000 }));
        assert!(ds.snapshot().endpoint(b).is_none());
        // A deleted and re-added endpoint gets a fresh id.
        assert_ne!(ds.apply_endpoint(pod("b", "10.0.0.2", 8000, &[])), b);
    }

    #[test]
    fn reset_keeps_survivors() {
        let ds = Datastore::new();
        let a = ds.apply_endpoint(pod("a", "10.0.0.1", 8000, &[]));
        ds.apply_endpoint(pod("b", "10.0.0.2", 8000, &[]));
        ds.reset_endpoints([pod("a", "10.0.0.1", 8000, &[]), pod("c", "10.0.0.3", 8000, &[])]);
        let s = ds.snapshot();
        let names: Vec<_> = s.endpoints.iter().map(|e| e.meta().pod.clone()).collect();
        assert_eq!(names, ["a", "c"]);
        assert_eq!(s.endpoints[0].id(), a);
        assert_eq!(ds.delete_pod("ns", "c"), 1);
    }

    #[test]
    fn pool_selector_prunes_endpoints() {
        let ds = Datastore::new();
        ds.apply_endpoint(pod("a", "10.0.0.1", 8000, &[("app", "x")]));
        ds.apply_endpoint(pod("b", "10.0.0.2", 8000, &[("app", "y")]));
        ds.apply_endpoint(pod("c", "10.0.0.3", 8001, &[("app", "x")]));
        ds.apply_pool(PoolSpec {
            name: "p".into(),
            namespace: "ns".into(),
            selector: [("app".to_string(), "x".to_string())].into(),
            target_ports: vec![8000],
        });
        let s = ds.snapshot();
        assert_eq!(s.endpoints.len(), 1);
        assert_eq!(s.endpoints[0].meta().pod, "a");
        ds.delete_pool();
        assert!(ds.snapshot().endpoints.is_empty());
    }

    #[test]
    fn objectives_and_rewrites() {
        let ds = Datastore::new();
        ds.apply_objective(InferenceObjective {
            id: ObjectRef::new("ns", "critical"),
            priority: 10,
            legacy_model_name: None,
            goals: Default::default(),
        });
        ds.apply_objective(InferenceObjective {
            id: ObjectRef::new("ns", "legacy"),
            priority: -1,
            legacy_model_name: Some("old-model".into()),
            goals: Default::default(),
        });
        let s = ds.snapshot();
        assert_eq!(s.priority_for(Some("critical"), "m"), 10);
        assert_eq!(s.priority_for(Some("unknown"), "m"), 0);
        assert_eq!(s.priority_for(None, "old-model"), -1);
        assert!(ds.delete_objective("critical"));
        assert_eq!(ds.snapshot().priority_for(Some("critical"), "m"), 0);

        let bad = ModelRewrite {
            id: ObjectRef::new("ns", "bad"),
            created_unix: 0,
            rules: vec![RewriteRule { matches: vec![], targets: vec![] }],
        };
        assert!(ds.apply_rewrite(bad.clone()).is_err());
        let good = ModelRewrite {
            id: ObjectRef::new("ns", "good"),
            created_unix: 0,
            rules: vec![RewriteRule {
                matches: vec!["m".into()],
                targets: vec![TargetModel { model: "m-v2".into(), weight: 1 }],
            }],
        };
        assert_eq!(ds.reset_rewrites([bad, good.clone()]).len(), 1);
        assert_eq!(ds.snapshot().rewrite_rule("m").map(|r| r.targets[0].model.as_str()), Some("m-v2"));
        assert!(ds.delete_rewrite(&good.id));
        assert!(ds.snapshot().rewrite_rule("m").is_none());
    }
}
