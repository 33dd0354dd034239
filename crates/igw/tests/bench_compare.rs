//! `igw bench compare` end to end: real child processes (igw serve, igw epp behind real Envoy, Envoy
//! round robin) in front of a fresh simulated fleet each, every request accounted for, the DES beside.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn envoy() -> Option<PathBuf> {
    let p = std::env::var_os("IGW_ENVOY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/venv-envoy/lib/envoy"));
    if p.exists() {
        return Some(p);
    }
    assert!(std::env::var_os("IGW_REQUIRE_ENVOY").is_none(), "IGW_REQUIRE_ENVOY is set but {} is missing", p.display());
    eprintln!("skipping the Envoy contenders: no Envoy at {} (scripts/install-envoy)", p.display());
    None
}

#[test]
fn runs_each_contender_over_its_own_fleet_and_sets_the_des_beside() {
    let envoy = envoy();
    let mut contenders = vec!["igw", "igw-random"];
    if envoy.is_some() {
        contenders.extend(["envoy-round-robin", "envoy+igw-epp"]);
    }
    let logs = tempdir();
    let chart = logs.join("compare");
    let extra = ["--replicas", "2", "--peers-venv", "/nonexistent", "--chart", chart.to_str().unwrap()];
    let (v, stdout) = compare("shared-prefix", &contenders, envoy.as_deref(), &logs, &extra);
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), contenders.len(), "one row per contender: {v}");
    for (row, name) in rows.iter().zip(&contenders) {
        assert_eq!(row["contender"], *name);
        // 10 QPS in model time at time_scale 0.2 = 50 QPS on the wall for 1 s.
        let attempted = row["attempted"].as_u64().unwrap();
        assert!(attempted > 20, "{row}");
        assert_eq!(row["completed"].as_u64().unwrap(), attempted, "nothing lost or rejected at 10 QPS: {row}");
        // Model-time latencies: 100 output tokens at ≥ 6 ms per decode step.
        assert!(row["p90_e2e_ms"].as_f64().unwrap() > 600.0, "{row}");
        let des = &row["des"];
        assert!(des["p90_e2e_ms"].as_f64().unwrap() > 600.0, "the DES ran the same point: {row}");
    }
    assert!(v["validation"][0]["real_order"].as_array().unwrap().len() == contenders.len(), "{v}");
    assert!(v["skipped"].as_array().unwrap().is_empty(), "{v}");
    assert!(stdout.contains("| igw-random | 10.0 |"), "{stdout}");
    let svg = std::fs::read_to_string(logs.join("compare.svg")).unwrap();
    assert!(contenders.iter().all(|c| svg.contains(c)), "every contender in the chart's legend");
    assert!(std::fs::read(logs.join("compare.png")).unwrap().starts_with(b"\x89PNG"));
    // A saved report is redrawn without running anything.
    std::fs::write(logs.join("report.json"), stdout.as_bytes()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_igw"))
        .args(["bench", "compare", "--replot"])
        .arg(logs.join("report.json"))
        .arg("--chart")
        .arg(logs.join("replot"))
        .output()
        .unwrap();
    let replotted = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(replotted.contains("| igw-random | 10.0 |") && replotted.contains("DES vs real time"), "{replotted}");
    assert!(logs.join("replot.png").exists());
    // A peer that is not installed is skipped with the reason, not an error.
    let out = Command::new(env!("CARGO_BIN_EXE_igw"))
        .args(["bench", "compare", "--replicas", "1", "--qps", "1", "--duration", "100ms", "--no-des", "--json"])
        .args(["--contenders", "sglang-router-cache-aware", "--peers-venv", "/nonexistent", "--log-dir"])
        .arg(&logs)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert!(v["skipped"][0]["reason"].as_str().unwrap().contains("sglang_router"), "{v}");
    let _ = std::fs::remove_dir_all(&logs);
}

#[test]
fn a_class_scenario_sends_every_class_as_the_des_draws_it() {
    let envoy = envoy();
    let mut contenders = vec!["igw+flow", "igw-random"];
    if envoy.is_some() {
        contenders.push("envoy+igw-epp");
    }
    let logs = tempdir_named("classes");
    let (v, stdout) = compare("priority-overload", &contenders, envoy.as_deref(), &logs, &["--replicas", "1"]);
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), contenders.len(), "{v}");
    for row in rows {
        let real = row["by_class"].as_object().unwrap();
        let des = row["des"]["by_class"].as_object().unwrap();
        assert_eq!(real.keys().collect::<Vec<_>>(), ["critical", "sheddable", "standard"], "{row}");
        let mut total = 0;
        for (class, c) in real {
            let d = &des[class];
            let des_attempted =
                ["completed", "rejected", "timeouts"].iter().map(|k| d[k].as_u64().unwrap()).sum::<u64>();
            assert_eq!(c["attempted"].as_u64().unwrap(), des_attempted, "the same requests per class: {row}");
            assert!(c["attempted"].as_u64().unwrap() > 0, "{row}");
            total += c["attempted"].as_u64().unwrap();
        }
        assert_eq!(total, row["attempted"].as_u64().unwrap(), "every request has its class: {row}");
    }
    assert!(stdout.contains("| igw+flow | 10.0 | critical |"), "the per-class table: {stdout}");
    // The igw contenders were configured with the scenario's objectives and, for igw+flow, its TTL
    // (30 s of model time: 6 s on the wall at time_scale 0.2).
    let cfg = std::fs::read_to_string(logs.join("igw_flow.gateway.yaml")).unwrap();
    assert!(cfg.contains("defaultRequestTTL: 6000ms") && cfg.contains("priority: -1"), "{cfg}");
    let _ = std::fs::remove_dir_all(&logs);
}

#[test]
fn an_igw_contender_is_configured_with_the_scenarios_objectives_and_flow() {
    // igw-bench writes the file; igw-gateway (which igw-bench must not depend on) reads it.
    use igw_bench::compare::serve_config;
    use igw_bench::scenario::Scenario;
    use std::time::Duration;
    let sc = Scenario::builtin("priority-overload").unwrap();
    let addrs = ["127.0.0.1:8001".to_string(), "127.0.0.1:8002".to_string()];
    let text = serve_config(&addrs, "igw", true, &sc, 1.0);
    let plan = igw_gateway::config::parse(&text, Path::new("c.yaml"), "random").unwrap();
    assert_eq!(plan.pools[0].endpoints.len(), 2);
    assert_eq!(plan.pools[0].scheduler_source, "policy igw with flowControl", "{text}");
    assert_eq!(plan.pools[0].flow.as_ref().unwrap().default_ttl, Some(Duration::from_secs(30)));
    let prios: Vec<(String, i32)> = plan.objectives.iter().map(|o| (o.id.name.clone(), o.priority)).collect();
    assert_eq!(prios, [("critical".into(), 10), ("standard".into(), 0), ("sheddable".into(), -1)]);
    let plain =
        igw_gateway::config::parse(&serve_config(&addrs, "random", false, &sc, 1.0), Path::new("c.yaml"), "igw")
            .unwrap();
    assert!(plain.pools[0].flow.is_none() && plain.objectives.len() == 3);
    // A scenario without classes declares no objectives.
    let shared = Scenario::builtin("shared-prefix").unwrap();
    assert!(!serve_config(&addrs, "igw", false, &shared, 1.0).contains("objectives"));
    // At time_scale 2 the fleet runs at half speed, so 30 s of model time is 60 s on the wall.
    let slow = serve_config(&addrs, "igw", true, &sc, 2.0);
    assert!(slow.contains("defaultRequestTTL: 60000ms"), "{slow}");
    // The example scenario with igw's batch holdback carries it into the gateway's config.
    let holdback =
        Scenario::from_yaml(include_str!("../../../examples/scenarios/priority-overload-holdback.yaml")).unwrap();
    let text = serve_config(&addrs, "igw", true, &holdback, 1.0);
    let plan = igw_gateway::config::parse(&text, Path::new("c.yaml"), "igw").unwrap();
    assert_eq!(plan.pools[0].flow.as_ref().unwrap().batch_holdback, Some(65.0), "{text}");
}

/// Runs `igw bench compare` at 10 QPS (model time) for 1 s at time_scale 0.2 with `extra` flags;
/// returns the JSON report and the whole stdout.
fn compare(
    scenario: &str,
    contenders: &[&str],
    envoy: Option<&Path>,
    logs: &Path,
    extra: &[&str],
) -> (serde_json::Value, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_igw"));
    cmd.args(["bench", "compare", "--scenario", scenario, "--qps", "10", "--duration", "1s", "--time-scale", "0.2"])
        .args(["--contenders", &contenders.join(","), "--json"])
        .args(extra)
        .arg("--log-dir")
        .arg(logs);
    if let Some(e) = envoy {
        cmd.arg("--envoy-bin").arg(e);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    (serde_json::from_str(stdout.lines().last().unwrap()).unwrap(), stdout)
}

fn tempdir() -> PathBuf {
    tempdir_named("main")
}

fn tempdir_named(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("igw-bench-compare-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
