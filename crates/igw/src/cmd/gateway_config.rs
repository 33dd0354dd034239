//! The `igw serve --config` file: several pools, model → pool routing, objectives and rewrites.
//!
//! Decoded strictly (unknown fields are errors naming their line), then validated: every pool
//! reference, address, engine and scheduler configuration is checked, and every scheduler is
//! built, before anything is started or swapped in. A file with any error yields one message
//! naming the line and the field. See `docs/gateway-config.md`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use igw_core::endpoint::ENGINE_TYPE_LABEL;
use igw_core::{EndpointMeta, InferenceObjective, ModelRewrite, ObjectRef, Priority, RewriteRule, TargetModel};
use igw_metrics::EngineRegistry;
use igw_sched::Scheduler;
use igw_sched::config::EndpointPickerConfig;
use serde::Deserialize;
use serde_saphyr::Spanned;

/// Namespace the file's objectives and rewrites are given (they have no Kubernetes identity).
pub const NAMESPACE: &str = "default";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileSpec {
    listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
    default_pool: Option<Spanned<String>>,
    pools: Vec<Spanned<PoolFileSpec>>,
    #[serde(default)]
    objectives: Vec<Spanned<ObjectiveSpec>>,
    #[serde(default)]
    rewrites: Vec<Spanned<RewriteSpec>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PoolFileSpec {
    name: String,
    endpoints: Vec<Spanned<String>>,
    engine: Option<Spanned<String>>,
    #[serde(default)]
    models: Vec<Spanned<String>>,
    policy: Option<Spanned<String>>,
    scheduler_config_file: Option<Spanned<String>>,
    scheduler_config: Option<Spanned<EndpointPickerConfig>>,
    flow_control: Option<Spanned<igw_sched::flow::FlowControlConfig>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ObjectiveSpec {
    name: String,
    priority: Option<Priority>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RewriteSpec {
    name: String,
    pool: Option<Spanned<String>>,
    rules: Vec<Spanned<RuleSpec>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RuleSpec {
    #[serde(default)]
    matches: Vec<MatchSpec>,
    targets: Vec<TargetSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MatchSpec {
    model: ModelMatchSpec,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ModelMatchSpec {
    #[serde(rename = "type")]
    kind: Option<String>,
    value: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TargetSpec {
    model_rewrite: String,
    weight: Option<u32>,
}

/// One pool, validated, with its scheduler built.
#[derive(Debug)]
pub struct PoolPlan {
    /// Pool name.
    pub name: String,
    /// Its endpoints (engine label set when the pool names an engine).
    pub endpoints: Vec<EndpointMeta>,
    /// Models requests may name to reach this pool (declared models and rewrite match names).
    pub models: Vec<String>,
    /// The scheduler it decides with.
    pub scheduler: Scheduler,
    /// Where the scheduler came from (for logs and `/debug/config`).
    pub scheduler_source: String,
    /// What the scheduler was built from (policy name, file text, inline config): a reload keeps
    /// a pool running, with its state, when this and the rest of its definition are unchanged.
    pub scheduler_key: String,
    /// Rewrites applied in this pool's datastore.
    pub rewrites: Vec<ModelRewrite>,
    /// Flow control, when the pool's EndpointPickerConfig turns on the `flowControl` feature gate.
    pub flow: Option<igw_sched::flow::FlowConfig>,
}

/// A gateway configuration, validated and ready to start.
#[derive(Debug)]
pub struct GatewayPlan {
    /// Gateway listener from the file, if set.
    pub listen: Option<SocketAddr>,
    /// Admin listener from the file, if set.
    pub admin_listen: Option<SocketAddr>,
    /// Pools in file order.
    pub pools: Vec<PoolPlan>,
    /// Index of the pool that takes passthrough paths (and, without declared models, everything).
    pub default_pool: usize,
    /// Objectives, applied to every pool.
    pub objectives: Vec<InferenceObjective>,
    /// Every file the configuration was read from (the file and scheduler config files).
    pub files: Vec<PathBuf>,
}

fn at<T>(s: &Spanned<T>) -> u64 {
    s.defined.line()
}

fn scheduler_for(
    pool: &PoolFileSpec,
    line: u64,
    base_dir: &Path,
    default_policy: &str,
    files: &mut Vec<PathBuf>,
) -> anyhow::Result<(Scheduler, String, String, Option<igw_sched::flow::FlowConfig>)> {
    let name = &pool.name;
    let given = [pool.policy.is_some(), pool.scheduler_config_file.is_some(), pool.scheduler_config.is_some()];
    if given.iter().filter(|g| **g).count() > 1 {
        bail!("line {line}: pool {name:?}: set at most one of policy, schedulerConfigFile, schedulerConfig");
    }
    // A pool's own `flowControl` section goes with a named policy; an EndpointPickerConfig carries
    // its own section behind its feature gate.
    if let Some(f) = &pool.flow_control
        && (pool.scheduler_config_file.is_some() || pool.scheduler_config.is_some())
    {
        bail!(
            "line {}: pool {name:?}: flowControl goes with policy; with an EndpointPickerConfig, use its flowControl \
             section and featureGates: [flowControl]",
            at(f)
        );
    }
    let named_flow = |policy: &str| -> anyhow::Result<(Option<igw_sched::flow::FlowConfig>, String)> {
        let Some(f) = &pool.flow_control else { return Ok((None, String::new())) };
        let cfg = f
            .value
            .resolve(&igw_sched::flow::FlowConfig::igw(), None)
            .map_err(|e| anyhow!("line {}: pool {name:?}: flowControl: {e}", at(f)))?;
        Ok((Some(cfg), format!(" with flowControl {:?} on {policy}", f.value)))
    };
    if let Some(p) = &pool.policy {
        let s = Scheduler::from_policy(&p.value).map_err(|e| anyhow!("line {}: pool {name:?}: policy: {e}", at(p)))?;
        let (flow, key) = named_flow(&p.value)?;
        let source = format!("policy {}{}", p.value, if flow.is_some() { " with flowControl" } else { "" });
        return Ok((s, source, format!("policy {}{key}", p.value), flow));
    }
    if let Some(f) = &pool.scheduler_config_file {
        let path = base_dir.join(&f.value);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| anyhow!("line {}: pool {name:?}: schedulerConfigFile {}: {e}", at(f), path.display()))?;
        files.push(path.clone());
        let err = |e: igw_sched::config::ConfigError| {
            anyhow!("line {}: pool {name:?}: schedulerConfigFile {}: {e}", at(f), path.display())
        };
        let cfg = EndpointPickerConfig::parse(&text).map_err(err)?;
        let s = cfg.build("config").map_err(err)?;
        let flow = cfg.flow_config().map_err(err)?;
        return Ok((s, format!("schedulerConfigFile {}", path.display()), text, flow));
    }
    if let Some(c) = &pool.scheduler_config {
        if let Some(kind) = &c.value.kind
            && kind != "EndpointPickerConfig"
        {
            bail!("line {}: pool {name:?}: schedulerConfig: kind must be EndpointPickerConfig, not {kind:?}", at(c));
        }
        // Plugin errors carry the plugin's line in this file.
        let err = |e: igw_sched::config::ConfigError| anyhow!("pool {name:?}: schedulerConfig (line {}): {e}", at(c));
        let s = c.value.build(name).map_err(err)?;
        let flow = c.value.flow_config().map_err(err)?;
        return Ok((s, "schedulerConfig (inline)".to_string(), format!("{:?}", c.value), flow));
    }
    let s = Scheduler::from_policy(default_policy).context("--policy")?;
    let (flow, key) = named_flow(default_policy)?;
    let source = format!("policy {default_policy}{}", if flow.is_some() { " with flowControl" } else { "" });
    Ok((s, source, format!("policy {default_policy}{key}"), flow))
}

/// Parses and validates a configuration file's `text`; `path` locates relative scheduler config
/// files; `default_policy` applies to pools that name no scheduler.
pub fn parse(text: &str, path: &Path, default_policy: &str) -> anyhow::Result<GatewayPlan> {
    // The decoder's message starts with the line and column; a source excerpt follows.
    let spec: FileSpec = serde_saphyr::from_str(text).map_err(|e| {
        anyhow!("{}", e.to_string().lines().next().unwrap_or("invalid YAML").trim_start_matches("error: "))
    })?;
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut files = vec![path.to_path_buf()];
    if spec.pools.is_empty() {
        bail!("pools: at least one pool is needed");
    }
    let engines = EngineRegistry::builtin();
    let mut pool_index: BTreeMap<String, usize> = BTreeMap::new();
    let mut model_pool: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    let mut pools = Vec::new();
    for (i, sp) in spec.pools.iter().enumerate() {
        let line = at(sp);
        let p = &sp.value;
        let name = &p.name;
        if name.is_empty() {
            bail!("line {line}: pools[{i}].name: must not be empty");
        }
        if pool_index.insert(name.clone(), i).is_some() {
            bail!("line {line}: pools[{i}].name: duplicate pool name {name:?}");
        }
        if p.endpoints.is_empty() {
            bail!("line {line}: pool {name:?}: endpoints: at least one ip:port is needed");
        }
        let engine = match &p.engine {
            Some(e) => {
                if engines.get(&e.value).is_none() {
                    let known: Vec<&str> = engines.names().collect();
                    bail!(
                        "line {}: pool {name:?}: engine: unknown engine {:?}; known: {}",
                        at(e),
                        e.value,
                        known.join(", ")
                    );
                }
                Some(e.value.clone())
            }
            None => None,
        };
        let mut endpoints = Vec::new();
        for e in &p.endpoints {
            let mut meta = EndpointMeta::parse_addr(&e.value).map_err(|_| {
                anyhow!("line {}: pool {name:?}: endpoints: {:?} is not an ip:port address", at(e), e.value)
            })?;
            if endpoints.iter().any(|m: &EndpointMeta| m.address == meta.address) {
                bail!("line {}: pool {name:?}: endpoints: {} is listed twice", at(e), e.value);
            }
            if let Some(engine) = &engine {
                meta.labels.insert(ENGINE_TYPE_LABEL.to_string(), engine.clone());
            }
            endpoints.push(meta);
        }
        let mut models = Vec::new();
        for m in &p.models {
            if m.value.is_empty() {
                bail!("line {}: pool {name:?}: models: empty model name", at(m));
            }
            if let Some((other, other_line)) = model_pool.insert(m.value.clone(), (i, at(m))) {
                bail!(
                    "line {}: pool {name:?}: models: {:?} is already served by pool {:?} (line {other_line})",
                    at(m),
                    m.value,
                    spec.pools[other].value.name
                );
            }
            models.push(m.value.clone());
        }
        let (scheduler, scheduler_source, scheduler_key, flow) =
            scheduler_for(p, line, &base_dir, default_policy, &mut files)?;
        pools.push(PoolPlan {
            name: name.clone(),
            endpoints,
            models,
            scheduler,
            scheduler_source,
            scheduler_key,
            rewrites: vec![],
            flow,
        });
    }
    let default_pool = match &spec.default_pool {
        Some(d) => *pool_index
            .get(&d.value)
            .ok_or_else(|| anyhow!("line {}: defaultPool: no pool is named {:?}", at(d), d.value))?,
        None => 0,
    };

    let mut objectives = Vec::new();
    let mut seen_objectives = BTreeMap::new();
    for o in &spec.objectives {
        if o.value.name.is_empty() {
            bail!("line {}: objectives: name must not be empty", at(o));
        }
        if seen_objectives.insert(o.value.name.clone(), ()).is_some() {
            bail!("line {}: objectives: duplicate objective {:?}", at(o), o.value.name);
        }
        objectives.push(InferenceObjective {
            id: ObjectRef::new(NAMESPACE, &o.value.name),
            priority: o.value.priority.unwrap_or(0),
            legacy_model_name: None,
        });
    }

    for (order, r) in spec.rewrites.iter().enumerate() {
        let line = at(r);
        let rw = &r.value;
        let name = &rw.name;
        if name.is_empty() {
            bail!("line {line}: rewrites[{order}].name: must not be empty");
        }
        if rw.rules.is_empty() {
            bail!("line {line}: rewrite {name:?}: rules: at least one rule is needed");
        }
        let mut rules = Vec::new();
        for rule in &rw.rules {
            let rl = at(rule);
            if rule.value.targets.is_empty() {
                bail!("line {rl}: rewrite {name:?}: targets: at least one target is needed");
            }
            let mut matches = Vec::new();
            for m in &rule.value.matches {
                if let Some(k) = m.model.kind.as_deref()
                    && k != "Exact"
                {
                    bail!("line {rl}: rewrite {name:?}: matches: model.type must be Exact, not {k:?}");
                }
                if m.model.value.is_empty() {
                    bail!("line {rl}: rewrite {name:?}: matches: model.value must not be empty");
                }
                matches.push(m.model.value.clone());
            }
            let mut targets = Vec::new();
            for t in &rule.value.targets {
                if t.model_rewrite.is_empty() {
                    bail!("line {rl}: rewrite {name:?}: targets: modelRewrite must not be empty");
                }
                let weight = t.weight.unwrap_or(0);
                if weight > 1_000_000 {
                    bail!("line {rl}: rewrite {name:?}: targets: weight must be at most 1000000");
                }
                targets.push(TargetModel { model: t.model_rewrite.clone(), weight });
            }
            rules.push(RewriteRule { matches, targets });
        }
        // The pool: named, or the one pool that serves every target.
        let pool = match &rw.pool {
            Some(p) => *pool_index
                .get(&p.value)
                .ok_or_else(|| anyhow!("line {}: rewrite {name:?}: pool: no pool is named {:?}", at(p), p.value))?,
            None => {
                let mut found: Option<usize> = None;
                for t in rules.iter().flat_map(|r| &r.targets) {
                    let Some((i, _)) = model_pool.get(&t.model) else {
                        bail!(
                            "line {line}: rewrite {name:?}: target {:?} is not a model of any pool; add it to a \
                             pool's models or set the rewrite's pool",
                            t.model
                        );
                    };
                    match found {
                        Some(f) if f != *i => bail!(
                            "line {line}: rewrite {name:?}: targets are served by pools {:?} and {:?}; a rewrite \
                             routes to one pool",
                            pools[f].name,
                            pools[*i].name
                        ),
                        _ => found = Some(*i),
                    }
                }
                found.ok_or_else(|| anyhow!("line {line}: rewrite {name:?}: no targets"))?
            }
        };
        for m in rules.iter().flat_map(|r| &r.matches) {
            match model_pool.get(m) {
                Some((i, _)) if *i != pool => bail!(
                    "line {line}: rewrite {name:?}: model {m:?} is served by pool {:?}, but the rewrite's pool is {:?}",
                    pools[*i].name,
                    pools[pool].name
                ),
                Some(_) => {}
                None => {
                    model_pool.insert(m.clone(), (pool, line));
                    pools[pool].models.push(m.clone());
                }
            }
        }
        let rewrite = ModelRewrite {
            id: ObjectRef::new(NAMESPACE, name),
            created_unix: i64::try_from(order).unwrap_or(0),
            rules,
        };
        rewrite.validate().map_err(|e| anyhow!("line {line}: {e}"))?;
        if pools[pool].rewrites.iter().any(|r| r.id.name == *name) {
            bail!("line {line}: rewrite {name:?}: duplicate rewrite name");
        }
        pools[pool].rewrites.push(rewrite);
    }
    Ok(GatewayPlan { listen: spec.listen, admin_listen: spec.admin_listen, pools, default_pool, objectives, files })
}

/// Reads and validates the configuration file at `path`.
pub fn load(path: &Path, default_policy: &str) -> anyhow::Result<GatewayPlan> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&text, path, default_policy).with_context(|| format!("{}", path.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        format!("{:#}", parse(text, Path::new("gw.yaml"), "igw").unwrap_err())
    }

    const GOOD: &str = "\
listen: 127.0.0.1:8080
pools:
- name: chat
  endpoints: [10.0.0.1:8000, 10.0.0.2:8000]
  engine: vllm
  models: [llama, llama-v2]
  policy: least-queue
- name: embed
  endpoints: [10.0.0.3:8000]
  engine: sglang
  models: [bge]
  schedulerConfig:
    plugins:
    - type: queue-scorer
objectives:
- name: premium
  priority: 10
- name: batch
  priority: -1
rewrites:
- name: canary
  rules:
  - matches:
    - model: {type: Exact, value: chat-latest}
    targets:
    - modelRewrite: llama
      weight: 90
    - modelRewrite: llama-v2
      weight: 10
";

    #[test]
    fn a_flow_control_section_goes_with_a_named_policy_only() {
        let named = "pools:\n- name: p\n  endpoints: [10.0.0.1:8000]\n  policy: igw\n  flowControl:\n    defaultRequestTTL: 5s\n    lowerBandMaxConcurrency: 65\n";
        let plan = parse(named, Path::new("gw.yaml"), "igw").unwrap();
        let flow = plan.pools[0].flow.clone().unwrap();
        assert_eq!((flow.default_ttl, flow.batch_holdback), (Some(std::time::Duration::from_secs(5)), Some(65.0)));
        // The default policy takes the section too; the key changes with it, so a reload rebuilds the pool.
        let default = named.replace("  policy: igw\n", "");
        let plan2 = parse(&default, Path::new("gw.yaml"), "igw").unwrap();
        assert!(plan2.pools[0].flow.is_some());
        let without =
            parse(&named.replace("    lowerBandMaxConcurrency: 65\n", ""), Path::new("gw.yaml"), "igw").unwrap();
        assert_ne!(plan.pools[0].scheduler_key, without.pools[0].scheduler_key);
        let e = err(&format!("{named}  schedulerConfig:\n    plugins:\n    - type: queue-scorer\n")
            .replace("  policy: igw\n", ""));
        assert!(e.contains("line 5") && e.contains("flowControl goes with policy"), "{e}");
        let e = err(&named.replace("5s", "soon"));
        assert!(e.contains("soon"), "{e}");
    }

    #[test]
    fn a_complete_file_loads() {
        let err = parse(GOOD, Path::new("gw.yaml"), "igw").err().map(|e| format!("{e:#}"));
        assert_eq!(err, None);
        let plan = parse(GOOD, Path::new("gw.yaml"), "igw").unwrap();
        assert_eq!(plan.listen, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(plan.pools.len(), 2);
        assert_eq!(plan.pools[0].models, ["llama", "llama-v2", "chat-latest"], "the rewrite's name routes to its pool");
        assert_eq!(plan.pools[0].rewrites.len(), 1);
        assert_eq!(plan.pools[1].endpoints[0].engine_label(), Some("sglang"));
        assert_eq!(plan.pools[0].scheduler_source, "policy least-queue");
        assert_eq!(plan.objectives[1].priority, -1);
    }

    #[test]
    fn errors_name_the_line_and_field() {
        let e = err(&GOOD.replace("  engine: sglang\n", "  engine: sglang\n  colour: blue\n"));
        assert!(e.contains("colour") && e.contains("line 11"), "{e}");
        let e = err(&GOOD.replace("10.0.0.3:8000", "10.0.0.3"));
        assert!(e.contains("line 9") && e.contains("\"10.0.0.3\" is not an ip:port"), "{e}");
        let e = err(&GOOD.replace("engine: sglang", "engine: tgi"));
        assert!(e.contains("line 10") && e.contains("unknown engine \"tgi\""), "{e}");
        let e = err(&GOOD.replace("models: [bge]", "models: [llama]"));
        assert!(e.contains("line 11") && e.contains("already served by pool \"chat\" (line 6)"), "{e}");
        let e = err(&GOOD.replace("type: queue-scorer", "type: queue-scorerz"));
        assert!(e.contains("line 14") && e.contains("queue-scorerz"), "{e}");
        let e = err(&GOOD.replace("modelRewrite: llama\n", "modelRewrite: bge\n"));
        assert!(e.contains("served by pools \"embed\" and \"chat\""), "{e}");
        let e = err(&GOOD.replace("policy: least-queue", "policy: fastest"));
        assert!(e.contains("line 7") && e.contains("fastest"), "{e}");
        let e = err(&format!("{GOOD}defaultPool: gpu\n"));
        assert!(e.contains("defaultPool: no pool is named \"gpu\""), "{e}");
        let e = err(&GOOD.replace("  policy: least-queue\n", "  policy: igw\n  schedulerConfigFile: x.yaml\n"));
        assert!(e.contains("at most one of"), "{e}");
    }

    #[test]
    fn scheduler_config_files_are_read_relative_to_the_file() {
        let dir = std::env::temp_dir().join(format!("igw-gwcfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("epp.yaml"), igw_sched::config::DEFAULT_CONFIG).unwrap();
        let text = "pools:\n- name: p\n  endpoints: [10.0.0.1:80]\n  schedulerConfigFile: epp.yaml\n";
        let plan = parse(text, &dir.join("gw.yaml"), "igw").unwrap();
        assert_eq!(plan.files, [dir.join("gw.yaml"), dir.join("epp.yaml")]);
        std::fs::write(dir.join("epp.yaml"), "plugins:\n- type: nope\n").unwrap();
        let e = format!("{:#}", parse(text, &dir.join("gw.yaml"), "igw").unwrap_err());
        assert!(e.contains("line 4: pool \"p\": schedulerConfigFile") && e.contains("line 2"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
