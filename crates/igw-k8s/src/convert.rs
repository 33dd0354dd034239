//! Conversions from the Kubernetes objects into the datastore's types.

use igw_core::datastore::PoolSpec;
use igw_core::{
    InferenceObjective as CoreObjective, ModelRewrite, ObjectRef, ObjectiveGoals, RewriteRule, TargetModel,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::api::{InferenceModelRewrite, InferenceObjective, InferencePool, PoolObjectReference};
use crate::error::ConvertError;
use crate::legacy::{self, InferenceModel};
use crate::shared::{POOL_GROUP, X_GROUP};

fn id(meta: &ObjectMeta) -> ObjectRef {
    ObjectRef::new(meta.namespace.as_deref().unwrap_or("default"), meta.name.as_deref().unwrap_or_default())
}

fn display(meta: &ObjectMeta) -> String {
    let id = id(meta);
    format!("{}/{}", id.namespace, id.name)
}

/// Creation time in seconds since the Unix epoch (0 when unset).
pub fn created_unix(meta: &ObjectMeta) -> i64 {
    meta.creation_timestamp.as_ref().map_or(0, |t| t.0.as_second())
}

fn ports(
    kind: &'static str,
    meta: &ObjectMeta,
    numbers: impl IntoIterator<Item = i32>,
) -> Result<Vec<u16>, ConvertError> {
    let mut out: Vec<u16> = Vec::new();
    for n in numbers {
        let p = u16::try_from(n).ok().filter(|p| *p > 0).ok_or_else(|| ConvertError::Invalid {
            kind,
            name: display(meta),
            reason: format!("target port {n} is outside 1-65535"),
        })?;
        if out.contains(&p) {
            return Err(ConvertError::Invalid { kind, name: display(meta), reason: format!("port {p} is repeated") });
        }
        out.push(p);
    }
    if out.is_empty() {
        return Err(ConvertError::Missing { kind, name: display(meta), field: "spec.targetPorts" });
    }
    Ok(out)
}

/// The datastore's view of an InferencePool (v1).
pub fn pool_spec(pool: &InferencePool) -> Result<PoolSpec, ConvertError> {
    let id = id(&pool.metadata);
    if pool.spec.selector.match_labels.is_empty() {
        return Err(ConvertError::Missing {
            kind: "InferencePool",
            name: display(&pool.metadata),
            field: "spec.selector.matchLabels",
        });
    }
    if pool.spec.target_ports.len() > 8 {
        return Err(ConvertError::Invalid {
            kind: "InferencePool",
            name: display(&pool.metadata),
            reason: "more than 8 target ports".into(),
        });
    }
    Ok(PoolSpec {
        name: id.name,
        namespace: id.namespace,
        selector: pool.spec.selector.match_labels.clone(),
        target_ports: ports("InferencePool", &pool.metadata, pool.spec.target_ports.iter().map(|p| p.number))?,
    })
}

/// The datastore's view of a legacy v1alpha2 InferencePool.
pub fn legacy_pool_spec(pool: &legacy::InferencePool) -> Result<PoolSpec, ConvertError> {
    let id = id(&pool.metadata);
    if pool.spec.selector.is_empty() {
        return Err(ConvertError::Missing {
            kind: "InferencePool",
            name: display(&pool.metadata),
            field: "spec.selector",
        });
    }
    Ok(PoolSpec {
        name: id.name,
        namespace: id.namespace,
        selector: pool.spec.selector.clone(),
        target_ports: ports("InferencePool", &pool.metadata, [pool.spec.target_port_number])?,
    })
}

/// True if `r` names the pool `pool_name` of the GA group (the EPP requires both name and group
/// to match; an unset group means the default, `inference.networking.k8s.io`).
pub fn pool_ref_matches(r: &PoolObjectReference, pool_name: &str) -> bool {
    r.name == pool_name && r.group.as_deref().unwrap_or(POOL_GROUP) == POOL_GROUP
}

/// The datastore's view of an InferenceObjective. Priorities outside `i32` are clamped; its
/// `igw.dev/slo-*-ms` and `igw.dev/placement` annotations give its goals (an invalid one is
/// logged and left unset).
pub fn objective(o: &InferenceObjective) -> CoreObjective {
    let p = o.spec.priority.unwrap_or(0).clamp(i64::from(i32::MIN), i64::from(i32::MAX));
    let annotations = o.metadata.annotations.as_ref();
    let (goals, problems) =
        ObjectiveGoals::from_annotations(|k| annotations.and_then(|a| a.get(k)).map(String::as_str));
    for problem in problems {
        let name = display(&o.metadata);
        tracing::warn!(objective = %name, "ignoring annotation {problem}");
    }
    CoreObjective {
        id: id(&o.metadata),
        priority: i32::try_from(p).unwrap_or_default(),
        legacy_model_name: None,
        goals,
    }
}

/// The datastore's view of an InferenceModelRewrite. Weights absent everywhere become 0
/// (uniform pick).
pub fn rewrite(rw: &InferenceModelRewrite) -> Result<ModelRewrite, ConvertError> {
    let invalid =
        |reason: String| ConvertError::Invalid { kind: "InferenceModelRewrite", name: display(&rw.metadata), reason };
    let mut rules = Vec::with_capacity(rw.spec.rules.len());
    for (i, r) in rw.spec.rules.iter().enumerate() {
        if r.targets.is_empty() {
            return Err(invalid(format!("rule {i} has no targets")));
        }
        let mut targets = Vec::with_capacity(r.targets.len());
        for t in &r.targets {
            let weight = match t.weight {
                None => 0,
                Some(w) if (1..=1_000_000).contains(&w) => w.unsigned_abs(),
                Some(w) => return Err(invalid(format!("weight {w} is outside 1-1000000"))),
            };
            targets.push(TargetModel { model: t.model_rewrite.clone(), weight });
        }
        rules.push(RewriteRule { matches: r.matches.iter().map(|m| m.model.value.clone()).collect(), targets });
    }
    let out = ModelRewrite { id: id(&rw.metadata), created_unix: created_unix(&rw.metadata), rules };
    out.validate().map_err(|e| invalid(e.to_string()))?;
    Ok(out)
}

/// True if a legacy InferenceModel's pool reference names the legacy pool `pool_name`.
pub fn legacy_pool_ref_matches(m: &InferenceModel, pool_name: &str) -> bool {
    m.spec.pool_ref.name == pool_name && m.spec.pool_ref.group.as_deref().unwrap_or(X_GROUP) == X_GROUP
}

/// A legacy InferenceModel becomes an objective bound by model name (priority from its
/// criticality, see [`legacy::Criticality::priority`]) and, when it lists target models, a
/// rewrite of that model name to them.
pub fn legacy_model(m: &InferenceModel) -> Result<(CoreObjective, Option<ModelRewrite>), ConvertError> {
    let name = display(&m.metadata);
    if m.spec.model_name.is_empty() {
        return Err(ConvertError::Missing { kind: "InferenceModel", name, field: "spec.modelName" });
    }
    let set = m.spec.target_models.iter().filter(|t| t.weight.is_some()).count();
    if set != 0 && set != m.spec.target_models.len() {
        return Err(ConvertError::Invalid {
            kind: "InferenceModel",
            name,
            reason: "weights must be set on all target models or on none".into(),
        });
    }
    let objective = CoreObjective {
        id: id(&m.metadata),
        priority: m.spec.criticality.map_or(0, legacy::Criticality::priority),
        legacy_model_name: Some(m.spec.model_name.clone()),
        goals: ObjectiveGoals::default(),
    };
    let rewrite = (!m.spec.target_models.is_empty()).then(|| ModelRewrite {
        id: id(&m.metadata),
        created_unix: created_unix(&m.metadata),
        rules: vec![RewriteRule {
            matches: vec![m.spec.model_name.clone()],
            targets: m
                .spec
                .target_models
                .iter()
                .map(|t| TargetModel { model: t.name.clone(), weight: t.weight.unwrap_or(0).unsigned_abs() })
                .collect(),
        }],
    });
    if let Some(rw) = &rewrite {
        rw.validate().map_err(|e| ConvertError::Invalid { kind: "InferenceModel", name, reason: e.to_string() })?;
    }
    Ok((objective, rewrite))
}
