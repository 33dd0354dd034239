//! Which pool serves a request: the model → pool table of a multi-pool gateway.
//!
//! A [`Routes`] value is immutable; the gateway holds the current one behind an atomic pointer
//! and a configuration reload replaces it whole, so a request sees one consistent table from
//! its first byte to its last.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use igw_request::Pool;

/// One pool: a name, its request core (with flow control when on), and the models it serves.
pub struct PoolRoute {
    /// Pool name (metrics, `/v1/models` `owned_by`, logs).
    pub name: String,
    /// Admission, scheduling and accounting over the pool's endpoints.
    pub pool: Arc<Pool>,
    /// Model names declared for this pool (base models and client-facing names of rewrites).
    pub models: Vec<String>,
}

impl std::fmt::Debug for PoolRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolRoute").field("name", &self.name).field("models", &self.models).finish_non_exhaustive()
    }
}

/// Why a routing table could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RoutesError {
    /// No pool at all.
    #[error("at least one pool is needed")]
    NoPools,
    /// The default pool index is out of range.
    #[error("default pool index {0} is out of range")]
    BadDefault(usize),
    /// Two pools declare the same model.
    #[error("model {model:?} is declared by pools {first:?} and {second:?}")]
    DuplicateModel {
        /// The model name.
        model: String,
        /// The pool that declared it first.
        first: String,
        /// The pool that declared it again.
        second: String,
    },
}

/// Where a request's model sends it.
#[derive(Debug)]
pub enum RouteMatch<'a> {
    /// The pool that serves the model.
    Pool(&'a Arc<PoolRoute>),
    /// No pool serves the model (the gateway answers 404).
    UnknownModel,
}

/// An immutable model → pool table.
pub struct Routes {
    pools: Vec<Arc<PoolRoute>>,
    by_model: HashMap<String, usize>,
    default_pool: usize,
    generation: u64,
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routes")
            .field("pools", &self.pools)
            .field("default_pool", &self.default_pool)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl Routes {
    /// One pool that takes every model (`--endpoints`, the embedded simulated pool).
    pub fn single(name: impl Into<String>, pool: Arc<Pool>) -> Self {
        Routes {
            pools: vec![Arc::new(PoolRoute { name: name.into(), pool, models: Vec::new() })],
            by_model: HashMap::new(),
            default_pool: 0,
            generation: 0,
        }
    }

    /// A table over `pools`. Requests for a declared model go to its pool; when no pool declares
    /// any model, every request goes to the default pool. `default_pool` also takes the paths
    /// that are not scheduled (passthrough). `generation` identifies the configuration.
    pub fn new(pools: Vec<PoolRoute>, default_pool: usize, generation: u64) -> Result<Self, RoutesError> {
        if pools.is_empty() {
            return Err(RoutesError::NoPools);
        }
        if default_pool >= pools.len() {
            return Err(RoutesError::BadDefault(default_pool));
        }
        let mut by_model = HashMap::new();
        for (i, p) in pools.iter().enumerate() {
            for m in &p.models {
                if let Some(prev) = by_model.insert(m.clone(), i)
                    && prev != i
                {
                    return Err(RoutesError::DuplicateModel {
                        model: m.clone(),
                        first: pools[prev].name.clone(),
                        second: p.name.clone(),
                    });
                }
            }
        }
        Ok(Routes { pools: pools.into_iter().map(Arc::new).collect(), by_model, default_pool, generation })
    }

    /// The pools, in configuration order.
    pub fn pools(&self) -> &[Arc<PoolRoute>] {
        &self.pools
    }

    /// The pool that takes passthrough paths and, without declared models, every request.
    pub fn default_pool(&self) -> &Arc<PoolRoute> {
        &self.pools[self.default_pool]
    }

    /// The configuration generation this table was built from.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// True if requests are routed by model name (some pool declares models): only then must
    /// the gateway read the model before choosing a pool, and only then can a model be unknown.
    pub fn routes_by_model(&self) -> bool {
        !self.by_model.is_empty()
    }

    /// The pool for `model`: a declared model's pool; else the pool one of whose endpoints
    /// reports `model` as a loaded or requested LoRA adapter; else unknown.
    pub fn route(&self, model: &str) -> RouteMatch<'_> {
        if !self.routes_by_model() {
            return RouteMatch::Pool(self.default_pool());
        }
        if let Some(i) = self.by_model.get(model) {
            return RouteMatch::Pool(&self.pools[*i]);
        }
        for p in &self.pools {
            if p.pool.core().snapshot().endpoints.iter().any(|e| e.metrics().has_adapter(model)) {
                return RouteMatch::Pool(p);
            }
        }
        RouteMatch::UnknownModel
    }

    /// The `GET /v1/models` body: every declared model, and every LoRA adapter the pools'
    /// endpoints report as loaded, in OpenAI's list shape (`owned_by` names the pool; an adapter
    /// also names its pool's first model as `parent`).
    pub fn models_json(&self) -> serde_json::Value {
        let mut seen = BTreeSet::new();
        let mut data = Vec::new();
        for p in &self.pools {
            for m in &p.models {
                if seen.insert(m.clone()) {
                    data.push(serde_json::json!({"id": m, "object": "model", "created": 0, "owned_by": p.name}));
                }
            }
        }
        for p in &self.pools {
            let mut adapters = BTreeMap::new();
            for e in &p.pool.core().snapshot().endpoints {
                for a in &e.metrics().active_adapters {
                    adapters.insert(a.clone(), ());
                }
            }
            for a in adapters.into_keys() {
                if seen.insert(a.clone()) {
                    data.push(serde_json::json!({
                        "id": a, "object": "model", "created": 0, "owned_by": p.name,
                        "parent": p.models.first(),
                    }));
                }
            }
        }
        serde_json::json!({"object": "list", "data": data})
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use igw_core::EndpointMetrics;

    fn pool(name: &str, models: &[&str], addr: &str) -> PoolRoute {
        PoolRoute {
            name: name.into(),
            pool: igw_testkit::TestPool::round_robin(igw_testkit::datastore(addr)).pool.clone(),
            models: models.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn declared_models_route_to_their_pool_and_others_are_unknown() {
        let r =
            Routes::new(vec![pool("a", &["m1"], "10.0.0.1:1"), pool("b", &["m2", "m3"], "10.0.0.2:1")], 0, 7).unwrap();
        assert!(matches!(r.route("m3"), RouteMatch::Pool(p) if p.name == "b"));
        assert!(matches!(r.route("m1"), RouteMatch::Pool(p) if p.name == "a"));
        assert!(matches!(r.route("nope"), RouteMatch::UnknownModel));
        assert_eq!(r.generation(), 7);
        assert_eq!(r.default_pool().name, "a");
    }

    #[test]
    fn adapters_in_endpoint_metrics_route_and_are_listed() {
        let r = Routes::new(vec![pool("a", &["m1"], "10.0.0.1:1"), pool("b", &["m2"], "10.0.0.2:1")], 1, 1).unwrap();
        let ep = r.pools()[1].pool.core().snapshot().endpoints[0].clone();
        let mut m = EndpointMetrics::default();
        m.active_adapters.insert("sql-lora".into());
        ep.set_metrics(m);
        assert!(matches!(r.route("sql-lora"), RouteMatch::Pool(p) if p.name == "b"));
        let v = r.models_json();
        assert_eq!(v["object"], "list");
        let ids: Vec<&str> = v["data"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["m1", "m2", "sql-lora"]);
        assert_eq!(v["data"][2]["owned_by"], "b");
        assert_eq!(v["data"][2]["parent"], "m2");
    }

    #[test]
    fn without_declared_models_everything_goes_to_the_default_pool() {
        let r = Routes::new(vec![pool("a", &[], "10.0.0.1:1"), pool("b", &[], "10.0.0.2:1")], 1, 1).unwrap();
        assert!(!r.routes_by_model());
        assert!(matches!(r.route("anything"), RouteMatch::Pool(p) if p.name == "b"));
    }

    #[test]
    fn a_model_in_two_pools_is_an_error() {
        let e = Routes::new(vec![pool("a", &["m"], "10.0.0.1:1"), pool("b", &["m"], "10.0.0.2:1")], 0, 1).unwrap_err();
        assert_eq!(e, RoutesError::DuplicateModel { model: "m".into(), first: "a".into(), second: "b".into() });
        assert_eq!(Routes::new(vec![], 0, 1).unwrap_err(), RoutesError::NoPools);
    }
}
