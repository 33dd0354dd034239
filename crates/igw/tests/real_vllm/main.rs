//! igw against the engine users run: real vLLM 0.32 (the CPU build, `scripts/install-vllm`) serving
//! a tiny random-weight Llama, through `igw serve` and through real Envoy + `igw epp`.
//!
//! Every test starts its own fleet with `scripts/real-vllm` (40-60 s per server on two cores), so
//! the tests run one at a time (nextest group `real-vllm`, `.config/nextest.toml`) and each covers
//! what one fleet can show. Without the venv the tests print a loud notice and pass, unless
//! `IGW_REQUIRE_VLLM` is set (CI sets it), when they fail.
//!
//! Nothing here waits on the wall clock for a result: readiness and engine state are polled, and
//! every limit is a deadline that fails the test.

#![allow(clippy::unwrap_used, missing_docs)]

mod harness;

use std::time::Duration;

use std::collections::{BTreeMap, BTreeSet};

use harness::{EnvoyEpp, Fleet, Serve, get, log_dir, poll, post, post_stream, read_some, sample, sum_samples};
use serde_json::{Value, json};

/// Words the tiny tokenizer was trained on: prompts made of them are about one token per word.
const WORDS: &[&str] = &[
    "system",
    "prompt",
    "user",
    "assistant",
    "tool",
    "answer",
    "question",
    "request",
    "model",
    "server",
    "cache",
    "token",
    "gateway",
    "route",
    "replica",
    "prefix",
    "queue",
    "latency",
    "water",
    "people",
    "number",
    "write",
];

/// A deterministic prompt of `words` words, distinct for each `seed` from its first word on.
fn prompt(seed: usize, words: usize) -> String {
    let mut out = format!("doc{seed}");
    for i in 0..words {
        out.push(' ');
        out.push_str(WORDS[(seed * 31 + i * 7 + i / 5) % WORDS.len()]);
    }
    out
}

fn completion(model: &str, prompt: &str, max_tokens: u64) -> Value {
    json!({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": true})
}

fn cached_tokens(v: &Value) -> u64 {
    v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0)
}

/// igw's view of the endpoints (`/debug/endpoints` of `igw serve`).
fn igw_endpoints(serve: &Serve) -> Vec<Value> {
    let (status, body) = get(&format!("{}/debug/endpoints", serve.admin));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Value>(&body).unwrap()["endpoints"].as_array().unwrap().clone()
}

/// The long-prompt pairs both paths send: every repeat must land where its first copy did, which
/// vLLM proves by reporting cached prompt tokens (caches are per replica).
fn repeated_prompts_hit_the_cache(url: &str, seeds: std::ops::Range<usize>) -> Vec<Option<String>> {
    let mut served = Vec::new();
    for seed in seeds {
        let body = completion("tiny", &prompt(seed, 600), 4);
        let first = post(&format!("{url}/v1/completions"), &body);
        assert_eq!(first.status, 200, "{}", first.body);
        let v = first.json();
        assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 256, "a prompt of several 128-token blocks: {v}");
        assert_eq!(cached_tokens(&v), 0, "a fresh prompt has nothing cached: {v}");
        let again = post(&format!("{url}/v1/completions"), &body);
        assert_eq!(again.status, 200, "{}", again.body);
        let v = again.json();
        assert!(cached_tokens(&v) >= 256, "the repeat of prompt {seed} landed where its blocks are cached: {v}");
        if first.served.is_some() {
            assert_eq!(first.served, again.served, "prompt {seed}: both copies on one replica");
        }
        served.push(first.served);
    }
    served
}

/// A streamed completion with usage: the last data event before `[DONE]` carries it.
fn streamed_usage(url: &str, max_tokens: u64) -> Value {
    let mut body = completion("tiny", &prompt(900, 40), max_tokens);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let reply = post(&format!("{url}/v1/completions"), &body);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let events: Vec<&str> = reply.body.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{}", reply.body);
    let text_events = events.iter().filter(|e| e.contains("\"text\"")).count();
    assert!(text_events as u64 >= max_tokens / 2, "tokens streamed one event at a time: {}", reply.body);
    let usage: Value = serde_json::from_str(events[events.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], max_tokens, "{usage}");
    usage
}

/// vLLM's own 400s reach the client unchanged.
fn bad_requests_pass_through(url: &str, replica: &str) {
    for body in [completion("tiny", "hello", 0), completion("tiny", "hello", 5000)] {
        let direct = post(&format!("http://{replica}/v1/completions"), &body);
        assert_eq!(direct.status, 400, "{}", direct.body);
        let via = post(&format!("{url}/v1/completions"), &body);
        assert_eq!(via.status, 400, "{}", via.body);
        let (d, v) = (direct.json(), via.json());
        assert_eq!(v["error"]["message"], d["error"]["message"], "vLLM's message, unchanged");
        assert_eq!(v["error"]["type"], d["error"]["type"]);
    }
}

/// Opens a long stream, reads its first events, drops it; vLLM's running count must fall back to 0.
fn abort_mid_stream(url: &str, replicas: &[String]) {
    let mut body = completion("tiny", &prompt(901, 40), 900);
    body["stream"] = json!(true);
    let mut resp = post_stream(&format!("{url}/v1/completions"), &body);
    assert_eq!(resp.status().as_u16(), 200);
    let first = read_some(&mut resp, 400);
    assert!(String::from_utf8_lossy(&first).contains("data: "), "{}", String::from_utf8_lossy(&first));
    let running = || -> f64 {
        replicas
            .iter()
            .map(|r| sample(&get(&format!("http://{r}/metrics")).1, "vllm:num_requests_running").unwrap_or(0.0))
            .sum()
    };
    assert!(running() >= 1.0, "the stream is running on a replica");
    drop(resp);
    poll("vLLM to drop the aborted request", Duration::from_secs(60), || (running() == 0.0).then_some(()));
}

/// A page's `vllm:` families: type and label names (without `le`), values left out. prometheus_client's
/// `_created` companions are left out too (they describe the exporter, not the engine).
fn shape(page: &str) -> BTreeMap<String, (String, BTreeSet<String>)> {
    let expo = igw_metrics::parse(page.as_bytes());
    expo.families
        .iter()
        .filter(|f| f.name.starts_with("vllm:") && !f.name.ends_with("_created"))
        .map(|f| {
            let labels = f.samples.iter().flat_map(|s| s.labels.iter().map(|(k, _)| k.to_owned()));
            (f.name.clone(), (format!("{:?}", f.kind), labels.filter(|k| k != "le").collect()))
        })
        .collect()
}

/// Families `igw sim` serves that vLLM 0.32 no longer does: the older names upstream's pickers and
/// dashboards still read.
const SIM_ONLY: &[&str] = &[
    "vllm:gpu_cache_usage_perc",
    "vllm:gpu_prefix_cache_hits_total",
    "vllm:gpu_prefix_cache_queries_total",
    "vllm:time_per_output_token_seconds",
];

/// `igw sim` set to the CPU engine's block size and context counts cached prompt tokens as vLLM
/// does (whole 128-token blocks, never the prompt's last token), and its page has real vLLM 0.32's
/// families, types and label names, and nothing else but [`SIM_ONLY`].
fn simulator_matches_the_engine(real: &str, logs: &std::path::Path) {
    let sim = harness::sim(&["--block-size", "128", "--max-model-len", "1024"], logs);
    for (i, len) in [100usize, 128, 129, 255, 256, 257, 600].into_iter().enumerate() {
        let ids: Vec<u64> = (0..len).map(|j| 3 + ((i * 37 + j * 11) % 500) as u64).collect();
        let cached = |url: &str, model: &str| {
            let body = json!({"model": model, "prompt": ids, "max_tokens": 2});
            let _ = post(&format!("{url}/v1/completions"), &body);
            let again = post(&format!("{url}/v1/completions"), &body);
            assert_eq!(again.status, 200, "{}", again.body);
            cached_tokens(&again.json())
        };
        let (want, got) = (cached(&format!("http://{real}"), "tiny"), cached(&sim.url, "meta-llama/Llama-2-7b-hf"));
        assert_eq!(got, want, "cached tokens of a repeated {len}-token prompt: sim {got}, vLLM {want}");
        assert_eq!(want, (len as u64 - 1) / 128 * 128, "vLLM caches whole blocks short of the last token");
    }
    // Traffic on both, so every family that appears only once used has appeared.
    for url in [format!("http://{real}"), sim.url.clone()] {
        let model = if url.ends_with(real) { "tiny" } else { "meta-llama/Llama-2-7b-hf" };
        assert_eq!(post(&format!("{url}/v1/completions"), &completion(model, &prompt(5, 20), 4)).status, 200);
    }
    let (want, got) =
        (shape(&get(&format!("http://{real}/metrics")).1), shape(&get(&format!("{}/metrics", sim.url)).1));
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k) && !SIM_ONLY.contains(&k.as_str())).collect();
    let differ: Vec<_> = want.iter().filter_map(|(k, w)| got.get(k).filter(|g| *g != w).map(|g| (k, w, g))).collect();
    assert!(
        missing.is_empty() && extra.is_empty() && differ.is_empty(),
        "igw sim vs vLLM 0.32:\nmissing {missing:?}\nextra {extra:?}\ndiffering (vLLM, sim) {differ:#?}"
    );
}

#[test]
fn real_vllm_routing_through_serve_and_envoy() {
    let logs = log_dir("routing");
    let Some(fleet) = Fleet::start(&["--replicas", "2"], &logs) else { return };

    // vLLM 0.32's page has the families igw reads, and no longer the one 0.32 dropped.
    for r in &fleet.replicas {
        let (status, page) = get(&format!("http://{r}/metrics"));
        assert_eq!(status, 200);
        for name in ["vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"] {
            assert!(sample(&page, name).is_some(), "{name} on {r}");
        }
        assert!(page.contains("block_size=\"128\""), "vllm:cache_config_info with the CPU block size");
        assert!(!page.contains("vllm:gpu_cache_usage_perc"), "0.32 dropped it");
    }

    // igw serve parses those pages: fresh, with the engine's block size and block count.
    let serve = Serve::start(&fleet.endpoints(), &[], &logs);
    poll("igw to scrape both replicas", Duration::from_secs(30), || {
        let eps = igw_endpoints(&serve);
        (eps.len() == 2 && eps.iter().all(|e| e["stale"] == false && e["cache_block_size"] == 128)).then_some(())
    });
    for e in igw_endpoints(&serve) {
        assert!(e["cache_num_blocks"].as_u64().unwrap() > 0, "{e}");
        assert!(e["kv_usage"].as_f64().unwrap() >= 0.0, "{e}");
    }

    // Prefix caching through igw serve: repeats land on the replica that has the prefix.
    let served = repeated_prompts_hit_the_cache(&serve.url, 0..4);
    assert!(served.iter().all(|s| s.as_ref().is_some_and(|s| fleet.replicas.contains(s))), "{served:?}");

    // Streaming with usage, and igw counts the tokens vLLM reported.
    let before = sum_samples(&get(&format!("{}/metrics", serve.admin)).1, "inference_objective_output_tokens_sum");
    streamed_usage(&serve.url, 24);
    poll("igw to count the streamed tokens", Duration::from_secs(10), || {
        let now = sum_samples(&get(&format!("{}/metrics", serve.admin)).1, "inference_objective_output_tokens_sum");
        (now - before >= 24.0).then_some(())
    });

    // Fresh metrics are used while a request runs: igw sees the running stream on its replica.
    let mut body = completion("tiny", &prompt(902, 40), 900);
    body["stream"] = json!(true);
    let mut resp = post_stream(&format!("{}/v1/completions", serve.url), &body);
    let replica = resp.headers().get("x-gateway-destination-endpoint-served").unwrap().to_str().unwrap().to_owned();
    read_some(&mut resp, 200);
    poll("igw to scrape the running request", Duration::from_secs(30), || {
        igw_endpoints(&serve).iter().any(|e| e["address"] == replica.as_str() && e["running"] == 1).then_some(())
    });
    drop(resp);

    abort_mid_stream(&serve.url, &fleet.replicas);
    bad_requests_pass_through(&serve.url, &fleet.replicas[0]);
    simulator_matches_the_engine(&fleet.replicas[0], &logs);

    // The same through real Envoy and igw epp (the EPP picks; Envoy forwards).
    drop(serve);
    let gw = EnvoyEpp::start(&fleet.endpoints(), &[], &logs);
    poll("the EPP to scrape both replicas", Duration::from_secs(30), || {
        let page = get(&format!("{}/metrics", gw.epp_metrics)).1;
        (sample(&page, "inference_pool_ready_pods").unwrap_or(0.0) >= 2.0).then_some(())
    });
    repeated_prompts_hit_the_cache(&gw.url, 10..14);
    streamed_usage(&gw.url, 16);
    abort_mid_stream(&gw.url, &fleet.replicas);
    bad_requests_pass_through(&gw.url, &fleet.replicas[1]);
}

#[test]
fn real_vllm_replica_killed_under_load_loses_nothing() {
    let logs = log_dir("killed");
    let Some(fleet) = Fleet::start(&["--replicas", "2"], &logs) else { return };
    let serve = Serve::start(&fleet.endpoints(), &[], &logs);
    poll("igw to scrape both replicas", Duration::from_secs(30), || {
        igw_endpoints(&serve).iter().all(|e| e["stale"] == false).then_some(())
    });
    // Non-streamed requests: nothing reaches the client before the whole answer, so a replica that
    // dies under one must cost the client nothing (igw tries the next candidate).
    let n = 12;
    let url = serve.url.clone();
    let results = harness::spawn_load(n, move |i| {
        post(&format!("{url}/v1/completions"), &completion("tiny", &prompt(100 + i, 60), 48))
    });
    let victim = fleet.replicas[1].clone();
    poll("replica 1 to be serving", Duration::from_secs(120), || {
        (sample(&get(&format!("http://{victim}/metrics")).1, "vllm:num_requests_running").unwrap_or(0.0) >= 1.0)
            .then_some(())
    });
    fleet.kill_replica(1);
    let mut served_by = Vec::new();
    for _ in 0..n {
        let r = results.recv_timeout(Duration::from_secs(300)).unwrap();
        assert_eq!(r.status, 200, "a request lost with the replica: {}", r.body);
        assert_eq!(r.json()["usage"]["completion_tokens"], 48);
        served_by.push(r.served.unwrap());
    }
    assert!(served_by.iter().any(|s| *s == fleet.replicas[0]), "{served_by:?}");
    // igw notices the dead replica, and what comes next goes to the live one.
    poll("igw to mark the dead replica stale", Duration::from_secs(30), || {
        igw_endpoints(&serve).iter().any(|e| e["address"] == victim.as_str() && e["stale"] == true).then_some(())
    });
    for i in 0..4 {
        let r = post(&format!("{}/v1/completions", serve.url), &completion("tiny", &prompt(200 + i, 20), 4));
        assert_eq!((r.status, r.served.as_deref()), (200, Some(fleet.replicas[0].as_str())), "{}", r.body);
    }
}

#[test]
fn real_vllm_embeddings_through_serve_and_envoy() {
    let logs = log_dir("pooling");
    let Some(fleet) = Fleet::start(&["--replicas", "1", "--pooling"], &logs) else { return };
    let body = json!({"model": "tiny-embed", "input": [prompt(1, 30), prompt(2, 12)]});
    let direct = post(&format!("http://{}/v1/embeddings", fleet.replicas[0]), &body);
    assert_eq!(direct.status, 200, "{}", direct.body);
    let want = direct.json();
    let dims = want["data"][0]["embedding"].as_array().unwrap().len();
    assert_eq!(dims, 128, "the tiny model's hidden size");
    let check = |url: &str| {
        let r = post(&format!("{url}/v1/embeddings"), &body);
        assert_eq!(r.status, 200, "{}", r.body);
        let got = r.json();
        assert_eq!(got["data"].as_array().unwrap().len(), 2, "{got}");
        assert_eq!(got["usage"]["prompt_tokens"], want["usage"]["prompt_tokens"]);
        for (g, w) in got["data"].as_array().unwrap().iter().zip(want["data"].as_array().unwrap()) {
            let (g, w) = (g["embedding"].as_array().unwrap(), w["embedding"].as_array().unwrap());
            assert_eq!(g.len(), w.len());
            let max_diff =
                g.iter().zip(w).map(|(a, b)| (a.as_f64().unwrap() - b.as_f64().unwrap()).abs()).fold(0.0, f64::max);
            assert!(max_diff < 1e-5, "the engine's embedding, unchanged by the gateway (max diff {max_diff})");
        }
    };
    let serve = Serve::start(&fleet.endpoints(), &[], &logs);
    check(&serve.url);
    drop(serve);
    let gw = EnvoyEpp::start(&fleet.endpoints(), &[], &logs);
    check(&gw.url);
}

/// The ids a replica lists at `/v1/models`.
fn listed_models(replica: &str) -> Vec<String> {
    let (status, body) = get(&format!("http://{replica}/v1/models"));
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn real_vllm_lora_loaded_at_run_time_is_found_and_used() {
    let logs = log_dir("lora");
    let Some(fleet) = Fleet::start(&["--replicas", "2", "--lora", "--max-loras", "2"], &logs) else { return };
    let (name, path) = fleet.adapters[0].clone();
    // Load the adapter on replica 1 only, at run time, as a LoRA pipeline would.
    let (home, other) = (&fleet.replicas[1], &fleet.replicas[0]);
    let r = post(&format!("http://{home}/v1/load_lora_adapter"), &json!({"lora_name": name, "lora_path": path}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(listed_models(home).contains(&name));
    assert!(!listed_models(other).contains(&name));
    // vLLM's metrics do not name an idle adapter (only `max_lora` until a request runs).
    let page = get(&format!("http://{home}/metrics")).1;
    assert!(!page.contains(&format!("running_lora_adapters=\"{name}\"")), "idle: not in lora_requests_info yet");

    let serve = Serve::start(&fleet.endpoints(), &[], &logs);
    // igw learns where the adapter is loaded from the model lists, before any request for it.
    poll("igw to read both model lists", Duration::from_secs(30), || {
        let eps = igw_endpoints(&serve);
        let listed =
            |addr: &str| eps.iter().find(|e| e["address"] == addr).and_then(|e| e["served_models"].as_array().cloned());
        let (h, o) = (listed(home)?, listed(other)?);
        (h.iter().any(|m| *m == name.as_str()) && !o.iter().any(|m| *m == name.as_str())).then_some(())
    });
    // Every request for the adapter goes where it is loaded (the other replica would answer 404),
    // even when that replica is the busier one.
    let busy = {
        let mut body = completion("tiny", &prompt(300, 40), 900);
        body["stream"] = json!(true);
        let resp = post_stream(&format!("http://{home}/v1/completions"), &body);
        assert_eq!(resp.status().as_u16(), 200);
        resp
    };
    for i in 0..6 {
        let r = post(&format!("{}/v1/completions", serve.url), &completion(&name, &prompt(310 + i, 30), 4));
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.served.as_deref(), Some(home.as_str()), "request {i} for {name}");
        assert_eq!(r.json()["model"], name.as_str());
    }
    drop(busy);
    // While its requests run, vLLM names the adapter in lora_requests_info too.
    let page = get(&format!("http://{home}/metrics")).1;
    assert!(page.contains("vllm:lora_requests_info{"), "{page}");
    // Base-model requests still use both replicas.
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..8 {
        let r = post(&format!("{}/v1/completions", serve.url), &completion("tiny", &prompt(320 + i, 30), 2));
        assert_eq!(r.status, 200, "{}", r.body);
        seen.insert(r.served.unwrap());
    }
    assert_eq!(seen.len(), 2, "{seen:?}");

    // The same through Envoy and igw epp.
    drop(serve);
    let gw = EnvoyEpp::start(&fleet.endpoints(), &[], &logs);
    let served_before = sum_samples(&get(&format!("http://{home}/metrics")).1, "vllm:request_success_total");
    poll("the EPP to route the adapter", Duration::from_secs(30), || {
        let r = post(&format!("{}/v1/completions", gw.url), &completion(&name, &prompt(330, 30), 2));
        (r.status == 200).then_some(())
    });
    for i in 0..6 {
        let r = post(&format!("{}/v1/completions", gw.url), &completion(&name, &prompt(340 + i, 30), 2));
        assert_eq!(r.status, 200, "request {i} for {name} through Envoy: {}", r.body);
    }
    let served_after = sum_samples(&get(&format!("http://{home}/metrics")).1, "vllm:request_success_total");
    assert!(served_after - served_before >= 7.0, "all on the adapter's replica: {served_before} -> {served_after}");
}

#[test]
fn real_vllm_bench_compare_runs_each_contender_over_a_fresh_real_fleet() {
    let logs = log_dir("compare");
    // The harness's check (loud skip, or failure under IGW_REQUIRE_VLLM) before anything runs.
    if !harness::vllm_installed() {
        return;
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_igw"))
        .args(["bench", "compare", "--fleet", "vllm", "--scenario", "tiny-shared-prefix", "--replicas", "1"])
        .args(["--qps", "4", "--duration", "2s", "--contenders", "igw,igw-random", "--no-des", "--json"])
        .arg("--vllm-launcher")
        .arg(harness::repo_root().join("scripts/real-vllm"))
        .arg("--log-dir")
        .arg(&logs)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "one row per contender, none skipped: {v}");
    for row in rows {
        let attempted = row["attempted"].as_u64().unwrap();
        assert!(attempted >= 4, "{row}");
        assert_eq!(row["completed"].as_u64().unwrap(), attempted, "every request served by real vLLM: {row}");
        assert!(row["p90_e2e_ms"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["output_tokens_per_min"].as_f64().unwrap() > 0.0, "{row}");
    }
    // Each contender had its own fleet, whose servers' logs are kept.
    for name in ["igw", "igw-random"] {
        let dir = logs.join(format!("vllm-{name}"));
        assert!(std::fs::read_dir(&dir).unwrap().count() >= 1, "{}", dir.display());
    }
}
