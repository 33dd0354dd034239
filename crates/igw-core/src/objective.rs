//! Objectives (request priority) and model rewrites (traffic splitting), as the datastore holds
//! them. Kubernetes objects (InferenceObjective, InferenceModelRewrite, legacy InferenceModel)
//! are converted to these by the adapter that watches them.

use crate::error::CoreError;
use crate::request::Priority;

/// A reference to a namespaced object: `namespace/name`.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectRef {
    /// `namespace/name`.
    pub fn new(namespace: &str, name: &str) -> Self {
        ObjectRef { namespace: namespace.to_string(), name: name.to_string() }
    }
}

/// An InferenceObjective: a named priority that requests select with
/// `x-gateway-inference-objective: <name>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InferenceObjective {
    /// Which object this is.
    pub id: ObjectRef,
    /// Priority; unset in the object means 0. Below zero is sheddable.
    pub priority: Priority,
    /// For a legacy InferenceModel: the model name that binds requests to it (the legacy API
    /// bound by model name, not by header).
    pub legacy_model_name: Option<String>,
}

/// One weighted target of a rewrite rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetModel {
    /// The model name sent to the model server.
    pub model: String,
    /// Relative weight; 0 = unset.
    pub weight: u32,
}

/// One rewrite rule: which client model names it matches and where it sends them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RewriteRule {
    /// Exact model names matched (OR); empty = matches every model (a generic rule).
    pub matches: Vec<String>,
    /// Weighted targets (at least one).
    pub targets: Vec<TargetModel>,
}

impl RewriteRule {
    /// True if the rule has no match list and so applies to every model.
    pub fn is_generic(&self) -> bool {
        self.matches.is_empty()
    }

    /// Picks a target with `draw`, a uniform random number: by weight when weights are set,
    /// uniformly when all weights are 0.
    pub fn pick(&self, draw: u64) -> Option<&TargetModel> {
        if self.targets.is_empty() {
            return None;
        }
        let total: u64 = self.targets.iter().map(|t| u64::from(t.weight)).sum();
        if total == 0 {
            return self.targets.get((draw % self.targets.len() as u64) as usize);
        }
        let mut r = draw % total;
        for t in &self.targets {
            let w = u64::from(t.weight);
            if r < w {
                return Some(t);
            }
            r -= w;
        }
        self.targets.last()
    }
}

/// An InferenceModelRewrite (or the traffic split of a legacy InferenceModel).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelRewrite {
    /// Which object this is.
    pub id: ObjectRef,
    /// Creation time in seconds since the Unix epoch: older objects win ties.
    pub created_unix: i64,
    /// Rules in order.
    pub rules: Vec<RewriteRule>,
}

impl ModelRewrite {
    /// Checks the invariants the CRD enforces (at least one target per rule, no empty names).
    pub fn validate(&self) -> Result<(), CoreError> {
        let invalid = |reason: &str| CoreError::Invalid {
            kind: "InferenceModelRewrite",
            name: self.id.name.clone(),
            reason: reason.to_string(),
        };
        for rule in &self.rules {
            if rule.targets.is_empty() {
                return Err(invalid("a rule has no targets"));
            }
            if rule.targets.iter().any(|t| t.model.is_empty()) || rule.matches.iter().any(String::is_empty) {
                return Err(invalid("empty model name"));
            }
        }
        Ok(())
    }
}

/// Finds the rule that applies to `model` among `rewrites`: exact matches before generic rules,
/// and within each class the oldest object first (then by name), first matching rule within it.
pub fn find_rewrite_rule<'a>(rewrites: &'a [ModelRewrite], model: &str) -> Option<&'a RewriteRule> {
    find_rewrite(rewrites, model).map(|(_, rule)| rule)
}

/// Like [`find_rewrite_rule`], also naming the InferenceModelRewrite the rule belongs to.
pub fn find_rewrite<'a>(rewrites: &'a [ModelRewrite], model: &str) -> Option<(&'a ObjectRef, &'a RewriteRule)> {
    let mut ordered: Vec<&ModelRewrite> = rewrites.iter().collect();
    ordered.sort_by(|a, b| a.created_unix.cmp(&b.created_unix).then_with(|| a.id.cmp(&b.id)));
    let rules = || ordered.iter().flat_map(|rw| rw.rules.iter().map(move |r| (&rw.id, r)));
    let exact = rules().find(|(_, r)| r.matches.iter().any(|m| m == model));
    exact.or_else(|| rules().find(|(_, r)| r.is_generic()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(name: &str, created: i64, rules: Vec<RewriteRule>) -> ModelRewrite {
        ModelRewrite { id: ObjectRef::new("ns", name), created_unix: created, rules }
    }

    fn rule(matches: &[&str], targets: &[(&str, u32)]) -> RewriteRule {
        RewriteRule {
            matches: matches.iter().map(|s| s.to_string()).collect(),
            targets: targets.iter().map(|(m, w)| TargetModel { model: m.to_string(), weight: *w }).collect(),
        }
    }

    #[test]
    fn exact_beats_generic_and_oldest_wins() {
        let rws = vec![
            rw("generic-old", 1, vec![rule(&[], &[("g", 1)])]),
            rw("exact-new", 30, vec![rule(&["m"], &[("new", 1)])]),
            rw("exact-old", 20, vec![rule(&["m"], &[("old", 1)])]),
        ];
        let r = find_rewrite_rule(&rws, "m").map(|r| r.targets[0].model.as_str());
        assert_eq!(r, Some("old"));
        let r = find_rewrite_rule(&rws, "other").map(|r| r.targets[0].model.as_str());
        assert_eq!(r, Some("g"));
        assert!(find_rewrite_rule(&rws[1..], "other").is_none());
    }

    #[test]
    fn weighted_pick_follows_weights() {
        let r = rule(&["m"], &[("a", 1), ("b", 3)]);
        let picks: Vec<_> = (0..4).map(|d| r.pick(d).map(|t| t.model.clone()).unwrap_or_default()).collect();
        assert_eq!(picks, ["a", "b", "b", "b"]);
        let uniform = rule(&["m"], &[("a", 0), ("b", 0)]);
        assert_eq!(uniform.pick(3).map(|t| t.model.as_str()), Some("b"));
    }

    #[test]
    fn validation() {
        assert!(rw("x", 0, vec![rule(&["m"], &[])]).validate().is_err());
        assert!(rw("x", 0, vec![rule(&["m"], &[("", 1)])]).validate().is_err());
        assert!(rw("x", 0, vec![rule(&["m"], &[("t", 1)])]).validate().is_ok());
    }
}
