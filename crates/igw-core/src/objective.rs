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
    /// What the objective asks of the scheduler beyond its priority (igw's extension).
    pub goals: ObjectiveGoals,
}

/// An objective's latency targets and placement preference: igw's extension to the
/// InferenceObjective (the gateway file's `slo` and `placement`; annotations on Kubernetes).
/// A request's own SLO headers override the targets field by field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ObjectiveGoals {
    /// Time-to-first-token objective, milliseconds.
    pub ttft_ms: Option<u32>,
    /// Time-per-output-token objective, milliseconds.
    pub tpot_ms: Option<u32>,
    /// Where requests should go among the endpoints that meet the targets.
    pub placement: Placement,
}

/// Which endpoint a latency-scheduled request prefers among those predicted to meet its SLO.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Placement {
    /// The fastest (least predicted latency, and least delay imposed on others).
    #[default]
    Fastest,
    /// The cheapest per output token (an endpoint's price per hour over its learned speed);
    /// the fastest among equally cheap ones.
    Cheapest,
}

/// Annotation of an InferenceObjective carrying its TTFT objective in milliseconds.
pub const SLO_TTFT_ANNOTATION: &str = "igw.dev/slo-ttft-ms";
/// Annotation of an InferenceObjective carrying its TPOT objective in milliseconds.
pub const SLO_TPOT_ANNOTATION: &str = "igw.dev/slo-tpot-ms";
/// Annotation of an InferenceObjective carrying its placement (`fastest` or `cheapest`).
pub const PLACEMENT_ANNOTATION: &str = "igw.dev/placement";

impl ObjectiveGoals {
    /// The goals an object's annotations state (`get` looks one up), and a description of each
    /// annotation that is present but invalid (that goal is then left unset).
    pub fn from_annotations<'a>(get: impl Fn(&str) -> Option<&'a str>) -> (Self, Vec<String>) {
        let mut problems = Vec::new();
        let mut ms = |key: &str| {
            let v = get(key)?;
            let parsed = parse_slo_ms(v);
            if parsed.is_none() {
                problems.push(format!("{key}: {v:?} is not a whole number of milliseconds from 1 to 3600000"));
            }
            parsed
        };
        let (ttft_ms, tpot_ms) = (ms(SLO_TTFT_ANNOTATION), ms(SLO_TPOT_ANNOTATION));
        let placement = match get(PLACEMENT_ANNOTATION) {
            None => Placement::Fastest,
            Some(v) => Placement::parse(v.trim()).unwrap_or_else(|| {
                problems.push(format!("{PLACEMENT_ANNOTATION}: {v:?} is neither fastest nor cheapest"));
                Placement::Fastest
            }),
        };
        (ObjectiveGoals { ttft_ms, tpot_ms, placement }, problems)
    }

    /// True when a TTFT or TPOT target is set.
    pub fn has_slo(&self) -> bool {
        self.ttft_ms.is_some() || self.tpot_ms.is_some()
    }
}

/// An SLO in milliseconds: a whole number from 1 to one hour.
pub fn parse_slo_ms(v: &str) -> Option<u32> {
    v.trim().parse::<u32>().ok().filter(|x| (1..=3_600_000).contains(x))
}

impl Placement {
    /// Its name in configuration: `fastest` or `cheapest`.
    pub fn as_str(self) -> &'static str {
        match self {
            Placement::Fastest => "fastest",
            Placement::Cheapest => "cheapest",
        }
    }

    /// The placement named `s`, if it is one.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "fastest" => Some(Placement::Fastest),
            "cheapest" => Some(Placement::Cheapest),
            _ => None,
        }
    }
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
    use proptest::prelude::*;

    proptest! {
        // Any annotation text: never a panic; a goal is set only from a valid value, and every
        // invalid one is reported.
        #[test]
        fn annotations_parse_or_are_reported(ttft in ".{0,12}", tpot in "[0-9]{0,9}", place in ".{0,10}") {
            let map = [(SLO_TTFT_ANNOTATION, ttft.as_str()), (SLO_TPOT_ANNOTATION, tpot.as_str()), (PLACEMENT_ANNOTATION, place.as_str())];
            let (g, problems) = ObjectiveGoals::from_annotations(|k| map.iter().find(|(n, _)| *n == k).map(|(_, v)| *v));
            prop_assert_eq!(g.ttft_ms, parse_slo_ms(&ttft));
            prop_assert_eq!(g.tpot_ms, parse_slo_ms(&tpot));
            prop_assert!(g.ttft_ms.is_none_or(|v| (1..=3_600_000).contains(&v)));
            let bad = usize::from(g.ttft_ms.is_none()) + usize::from(g.tpot_ms.is_none())
                + usize::from(Placement::parse(place.trim()).is_none());
            prop_assert_eq!(problems.len(), bad);
        }

        #[test]
        fn a_cost_is_finite_and_positive_or_absent(v in ".{0,16}", x in 0.0f64..1e6) {
            prop_assert!(crate::endpoint::parse_cost_per_hour(&v).is_none_or(|c| c.is_finite() && c > 0.0));
            let shown = format!("{x}");
            prop_assert_eq!(crate::endpoint::parse_cost_per_hour(&shown), (x > 0.0).then_some(x));
        }
    }

    #[test]
    fn goals_from_annotations() {
        let map = [(SLO_TTFT_ANNOTATION, "3000"), (PLACEMENT_ANNOTATION, " cheapest ")];
        let (g, problems) = ObjectiveGoals::from_annotations(|k| map.iter().find(|(n, _)| *n == k).map(|(_, v)| *v));
        assert_eq!(g, ObjectiveGoals { ttft_ms: Some(3000), tpot_ms: None, placement: Placement::Cheapest });
        assert!(problems.is_empty() && g.has_slo());
        let (g, problems) = ObjectiveGoals::from_annotations(|k| (k == SLO_TPOT_ANNOTATION).then_some("0"));
        assert_eq!((g, problems.len()), (ObjectiveGoals::default(), 1));
        assert!(problems[0].contains("igw.dev/slo-tpot-ms: \"0\""), "{problems:?}");
        for p in [Placement::Fastest, Placement::Cheapest] {
            assert_eq!(Placement::parse(p.as_str()), Some(p));
        }
    }

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
