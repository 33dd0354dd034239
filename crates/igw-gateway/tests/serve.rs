//! `igw serve` end to end over loopback: configuration files and their reload, `/v1/models`, and
//! chaos (a replica killed mid-run, a replica whose `/metrics` is garbage) against real `igw sim`
//! replicas.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::http::{Request, Response, StatusCode};
use igw_core::EndpointMeta;
use igw_gateway::config as gateway_config;
use igw_gateway::serve::{ServeOptions, Serving, Source};
use igw_proxy::gateway::{GatewayConfig, SERVED_HEADER};
use igw_proxy::upstream::Upstream;
use igw_sim::profile::Profile;
use igw_sim::{Fleet, FleetConfig};
use tokio::net::TcpListener;

fn args() -> ServeOptions {
    ServeOptions {
        gateway: GatewayConfig { response_head_timeout: Duration::from_secs(30), ..GatewayConfig::default() },
        drain: Duration::from_secs(1),
        config_poll: Duration::from_millis(2),
        ..ServeOptions::default()
    }
}

async fn start(source: Source) -> Serving {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = TcpListener::bind("127.0.0.1:0").await.unwrap();
    Serving::start(&args(), source, l, a).await.unwrap()
}

/// A fleet of one replica per listener address (so replicas can be told apart by IP and killed
/// one at a time), serving `model`.
async fn fleet(model: &str, ip: &str, time_scale: f64) -> Fleet {
    let mut cfg = FleetConfig::new(Profile::llama2_7b_h100());
    cfg.time_scale = time_scale;
    cfg.model = model.to_string();
    Fleet::start(cfg, vec![std::net::TcpListener::bind((ip, 0)).unwrap()]).await.unwrap()
}

async fn send(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Response<Incoming> {
    let mut b = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let (parts, ()) = b.header("content-type", "application/json").body(()).unwrap().into_parts();
    Upstream::new().send(addr, parts, Bytes::from(body.to_string()), Duration::from_secs(30)).await.unwrap()
}

/// Status, served replica and body of a complete exchange; `Err` if the body broke off.
async fn call(addr: SocketAddr, path: &str, body: &str) -> (StatusCode, Option<SocketAddr>, Result<Bytes, String>) {
    let resp = send(addr, "POST", path, &[], body).await;
    let served = resp.headers().get(SERVED_HEADER).map(|v| v.to_str().unwrap().parse().unwrap());
    let status = resp.status();
    (status, served, resp.into_body().collect().await.map(|c| c.to_bytes()).map_err(|e| e.to_string()))
}

async fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let resp = send(addr, "GET", path, &[], "").await;
    assert_eq!(resp.status(), StatusCode::OK, "GET {path}");
    serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap()
}

async fn get_text(addr: SocketAddr, path: &str) -> String {
    let resp = send(addr, "GET", path, &[], "").await;
    String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

fn completion(model: &str, max_tokens: u32) -> String {
    format!(r#"{{"model":"{model}","prompt":"hello there","max_tokens":{max_tokens},"ignore_eos":true}}"#)
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("igw-serve-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Replaces `path` atomically, so the watcher never reads half a file.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn the_example_configuration_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/gateway.yaml");
    let plan = gateway_config::load(&path, "igw").map_err(|e| format!("{e:#}")).unwrap();
    assert!(plan.pools.len() >= 2, "the example shows several pools");
    assert!(plan.pools.iter().any(|p| !p.rewrites.is_empty()), "and a rewrite");
    assert!(!plan.objectives.is_empty(), "and objectives");
}

fn two_pools(a: &Fleet, b: &Fleet, extra: &str) -> String {
    format!(
        "pools:\n- name: pool-a\n  endpoints: [{}]\n  models: [model-a]\n- name: pool-b\n  endpoints: [{}]\n  engine: vllm\n  models: [model-b]\n  policy: least-queue\n{extra}",
        a.addrs()[0],
        b.addrs()[0]
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_routes_models_reloads_on_change_and_keeps_serving_through_a_broken_file() {
    let (fa, fb) = (fleet("model-a", "127.0.0.1", 0.02).await, fleet("model-b", "127.0.0.1", 0.02).await);
    let dir = temp_dir("reload");
    let path = dir.join("gateway.yaml");
    write_atomically(&path, &two_pools(&fa, &fb, ""));
    let plan = gateway_config::load(&path, "igw").unwrap();
    let s = start(Source::Config(path.clone(), plan)).await;
    let reloader = s.reloader.clone().unwrap();
    let mut events = reloader.subscribe();

    let (st, served, _) = call(s.addr, "/v1/completions", &completion("model-a", 2)).await;
    assert_eq!((st, served), (StatusCode::OK, Some(fa.addrs()[0])));
    let (st, served, _) = call(s.addr, "/v1/completions", &completion("model-b", 2)).await;
    assert_eq!((st, served), (StatusCode::OK, Some(fb.addrs()[0])));
    let (st, _, body) = call(s.addr, "/v1/completions", &completion("latest", 2)).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert!(String::from_utf8_lossy(&body.unwrap()).contains("`latest` does not exist"));

    // A streaming request in flight across the reload finishes on the old configuration.
    let stream_body = r#"{"model":"model-a","prompt":"hi","max_tokens":40,"ignore_eos":true,"stream":true}"#;
    let resp = send(s.addr, "POST", "/v1/completions", &[], stream_body).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut in_flight = resp.into_body();
    let first = in_flight.frame().await.unwrap().unwrap();
    assert!(first.is_data());

    // New file: "latest" is rewritten to model-b in pool-b.
    let rewrite = "rewrites:\n- name: latest\n  rules:\n  - matches:\n    - model: {value: latest}\n    targets:\n    - modelRewrite: model-b\n";
    write_atomically(&path, &two_pools(&fa, &fb, rewrite));
    let ev = events.wait_for(|e| e.attempts >= 2).await.unwrap().clone();
    assert_eq!((ev.generation, ev.error), (2, None));
    assert_eq!(ev.kept, 1, "pool-a is unchanged and keeps running with its state; pool-b is rebuilt");
    let (st, served, body) = call(s.addr, "/v1/completions", &completion("latest", 2)).await;
    assert_eq!((st, served), (StatusCode::OK, Some(fb.addrs()[0])), "the new routing is in force");
    let v: serde_json::Value = serde_json::from_slice(&body.unwrap()).unwrap();
    assert_eq!(v["model"], "latest", "the client's model name is written back");
    let rest = in_flight.collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&rest).trim_end().ends_with("data: [DONE]"), "the old request completed");
    let eps = get_json(s.admin_addr, "/debug/endpoints").await;
    assert!(eps["endpoints"].as_array().unwrap().iter().all(|e| e["in_flight_requests"] == 0), "{eps}");

    // A broken file: logged, reported, and the previous configuration keeps serving.
    write_atomically(
        &path,
        &two_pools(&fa, &fb, rewrite).replace("  engine: vllm\n", "  engine: vllm\n  colour: blue\n"),
    );
    let ev = events.wait_for(|e| e.attempts >= 3).await.unwrap().clone();
    assert_eq!(ev.generation, 2);
    let err = ev.error.unwrap();
    assert!(err.contains("colour") && err.contains("line 8"), "{err}");
    let (st, served, _) = call(s.addr, "/v1/completions", &completion("latest", 2)).await;
    assert_eq!((st, served), (StatusCode::OK, Some(fb.addrs()[0])), "routing unchanged");
    let cfg = get_json(s.admin_addr, "/debug/config").await;
    assert_eq!(cfg["generation"], 2);
    assert!(cfg["last_error"].as_str().unwrap().contains("colour"));
    let metrics = get_text(s.admin_addr, "/metrics").await;
    assert!(metrics.contains("igw_config_last_load_success 0\n"), "{metrics}");
    assert!(metrics.contains("inference_pool_ready_pods{name=\"pool-b\"}"));

    // /v1/models lists every pool's models, the rewrite's name included.
    let models = get_json(s.addr, "/v1/models").await;
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["model-a", "model-b", "latest"]);
    assert_eq!(models["object"], "list");

    s.shutdown().await;
    fa.shutdown().await;
    fb.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_models_lists_and_routes_lora_adapters_reported_in_endpoint_metrics() {
    let page = "vllm:num_requests_waiting{model_name=\"base\"} 0\nvllm:num_requests_running{model_name=\"base\"} 1\n\
vllm:kv_cache_usage_perc{model_name=\"base\"} 0.1\n\
vllm:lora_requests_info{max_lora=\"2\",running_lora_adapters=\"sql-lora\",waiting_lora_adapters=\"\"} 1.7e9\n";
    let replica = fake_replica(page).await;
    let dir = temp_dir("models");
    let path = dir.join("gateway.yaml");
    write_atomically(&path, &format!("pools:\n- name: p\n  endpoints: [{replica}]\n  models: [base]\n"));
    let s = start(Source::Config(path.clone(), gateway_config::load(&path, "igw").unwrap())).await;
    let models = get_json(s.addr, "/v1/models").await;
    let data = models["data"].as_array().unwrap();
    assert_eq!(data[0]["id"], "base");
    let lora = data.iter().find(|m| m["id"] == "sql-lora");
    assert!(lora.is_some_and(|m| m["parent"] == "base" && m["owned_by"] == "p"), "{models}");
    let (status, served, _) = call(s.addr, "/v1/completions", &completion("sql-lora", 2)).await;
    assert_eq!((status, served), (StatusCode::OK, Some(replica)), "an adapter routes to the pool reporting it");
    s.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_run_fails_no_request_that_had_not_started_streaming() {
    let mut fleets = Vec::new();
    for ip in ["127.0.0.1", "127.0.0.2", "127.0.0.3"] {
        fleets.push(fleet("m", ip, 0.05).await);
    }
    let addrs: Vec<SocketAddr> = fleets.iter().map(|f| f.addrs()[0]).collect();
    let s = start(Source::Static(addrs.iter().map(|a| EndpointMeta::from_addr(*a)).collect())).await;
    let gw = s.addr;
    let batch = |n: usize| {
        (0..n).map(|_| tokio::spawn(async move { call(gw, "/v1/completions", &completion("m", 128)).await })).collect()
    };
    let before: Vec<_> = batch(24);
    // A stream pinned to replica 0 (subset hint by IP): once its first token is here, replica 0
    // is serving, and so, with 24 requests spread over three replicas, are some of the batch.
    let probe = send(
        gw,
        "POST",
        "/v1/completions",
        &[("x-gateway-destination-endpoint-subset", "127.0.0.1")],
        r#"{"model":"m","prompt":"x","max_tokens":500,"ignore_eos":true,"stream":true}"#,
    )
    .await;
    assert_eq!(probe.status(), StatusCode::OK);
    let mut probe = probe.into_body();
    assert!(probe.frame().await.unwrap().unwrap().is_data());
    let (running, waiting) = fleets[0].load(0).unwrap();
    assert!(running + waiting >= 2, "replica 0 is busy with batch requests too: {running} running {waiting} waiting");
    let killed = fleets.remove(0);
    killed.shutdown().await;
    let after: Vec<_> = batch(24);

    let mut served_by = std::collections::BTreeMap::<SocketAddr, usize>::new();
    for h in before.into_iter().chain(after) {
        let (status, served, body) = h.await.unwrap();
        assert_eq!(status, StatusCode::OK, "a request that had not started streaming never fails");
        let v: serde_json::Value = serde_json::from_slice(&body.unwrap()).unwrap();
        assert_eq!(v["usage"]["completion_tokens"], 128);
        *served_by.entry(served.unwrap()).or_default() += 1;
    }
    assert!(probe.collect().await.is_err(), "the stream that was cut mid-way reports an error");
    assert!(served_by.keys().filter(|a| **a == addrs[0]).count() <= 1);
    assert_eq!(served_by.values().sum::<usize>(), 48);
    let eps = get_json(s.admin_addr, "/debug/endpoints").await;
    let in_flight: u64 =
        eps["endpoints"].as_array().unwrap().iter().map(|e| e["in_flight_requests"].as_u64().unwrap()).sum();
    assert_eq!(in_flight, 0, "every request, the broken stream included, released its load");
    s.shutdown().await;
    for f in fleets {
        f.shutdown().await;
    }
}

/// A replica whose `/metrics` page is garbage but which answers requests.
async fn garbage_metrics_replica() -> SocketAddr {
    fake_replica("vllm:num_requests_waiting{{{ not a number\n<html>oops</html>\n").await
}

/// A replica that serves `metrics` as its `/metrics` page and a fixed completion on every other
/// path.
async fn fake_replica(metrics: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(igw_proxy::listener::serve(
        l,
        move |req: Request<Incoming>| async move {
            let body = if req.uri().path() == "/metrics" {
                metrics.to_string()
            } else {
                r#"{"id":"x","object":"text_completion","model":"m","choices":[{"index":0,"text":"hi","finish_reason":"length"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#.to_string()
            };
            Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(body))))
        },
        std::future::pending::<()>(),
        Duration::from_secs(1),
    ));
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_garbage_metrics_is_stale_and_never_picked() {
    let good = [fleet("m", "127.0.0.1", 0.02).await, fleet("m", "127.0.0.1", 0.02).await];
    let bad = garbage_metrics_replica().await;
    let mut eps: Vec<EndpointMeta> = good.iter().map(|f| EndpointMeta::from_addr(f.addrs()[0])).collect();
    eps.push(EndpointMeta::from_addr(bad));
    let s = start(Source::Static(eps)).await;

    let dbg = get_json(s.admin_addr, "/debug/endpoints").await;
    for e in dbg["endpoints"].as_array().unwrap() {
        let is_bad = e["address"] == bad.to_string();
        assert_eq!(e["stale"], is_bad, "only the garbage replica is stale: {e}");
    }
    for _ in 0..30 {
        let (status, served, _) = call(s.addr, "/v1/completions", &completion("m", 2)).await;
        assert_eq!(status, StatusCode::OK);
        assert_ne!(served, Some(bad), "a replica with untrusted metrics is not picked while others are fresh");
    }
    s.shutdown().await;
    for f in good {
        f.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_still_serves_when_every_scheduler_input_is_garbage() {
    // Fail open: with every endpoint stale the pick falls back to all of them.
    let bad = garbage_metrics_replica().await;
    let s = start(Source::Static(vec![EndpointMeta::from_addr(bad)])).await;
    let (status, served, _) = call(s.addr, "/v1/completions", &completion("m", 2)).await;
    assert_eq!((status, served), (StatusCode::OK, Some(bad)));
    s.shutdown().await;
}

#[test]
fn an_invalid_file_is_rejected_at_start_with_the_line() {
    let dir = temp_dir("invalid");
    let path = dir.join("gateway.yaml");
    write_atomically(&path, "pools:\n- name: p\n  endpoints: [10.0.0.1:80]\n  polcy: igw\n");
    let e = format!("{:#}", gateway_config::load(&path, "igw").unwrap_err());
    assert!(e.contains("polcy") && e.contains("line 4") && e.contains("gateway.yaml"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_scheduler_config_file_is_reloaded_and_a_broken_one_is_reported_with_its_line() {
    let f = fleet("m", "127.0.0.1", 0.02).await;
    let dir = temp_dir("eppfile");
    let (path, epp) = (dir.join("gateway.yaml"), dir.join("epp.yaml"));
    write_atomically(&epp, igw_sched::config::DEFAULT_CONFIG);
    let text =
        format!("pools:\n- name: p\n  endpoints: [{}]\n  models: [m]\n  schedulerConfigFile: epp.yaml\n", f.addrs()[0]);
    write_atomically(&path, &text);
    let s = start(Source::Config(path.clone(), gateway_config::load(&path, "igw").unwrap())).await;
    let mut events = s.reloader.clone().unwrap().subscribe();

    write_atomically(&epp, "plugins:\n- type: queue-scorer\n");
    let ev = events.wait_for(|e| e.attempts >= 2).await.unwrap().clone();
    assert_eq!((ev.generation, ev.error, ev.kept), (2, None, 0), "the pool is rebuilt with the new scheduler");
    let cfg = get_json(s.admin_addr, "/debug/config").await;
    assert!(cfg["pools"][0]["scheduler"].as_str().unwrap().contains("epp.yaml"), "{cfg}");

    write_atomically(&epp, "plugins:\n- type: queue-scorer\n- type: no-such-scorer\n");
    let ev = events.wait_for(|e| e.attempts >= 3).await.unwrap().clone();
    let err = ev.error.unwrap();
    assert!(err.contains("epp.yaml") && err.contains("line 3") && err.contains("no-such-scorer"), "{err}");
    assert_eq!(ev.generation, 2);
    let (status, served, _) = call(s.addr, "/v1/completions", &completion("m", 2)).await;
    assert_eq!((status, served), (StatusCode::OK, Some(f.addrs()[0])));
    s.shutdown().await;
    f.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_with_the_flow_control_gate_queues_through_its_gate() {
    let f = fleet("m", "127.0.0.1", 0.02).await;
    let dir = temp_dir("flowgate");
    let path = dir.join("gateway.yaml");
    let text = format!(
        "pools:\n- name: gated\n  endpoints: [{}]\n  models: [m]\n  schedulerConfig:\n    featureGates: [flowControl]\n    plugins:\n    - type: queue-scorer\n    flowControl:\n      defaultRequestTTL: 30s\n",
        f.addrs()[0]
    );
    write_atomically(&path, &text);
    let s = start(Source::Config(path.clone(), gateway_config::load(&path, "igw").unwrap())).await;
    let (status, served, _) = call(s.addr, "/v1/completions", &completion("m", 2)).await;
    assert_eq!((status, served), (StatusCode::OK, Some(f.addrs()[0])));
    let metrics = get_text(s.admin_addr, "/metrics").await;
    assert!(
        metrics.contains("inference_extension_flow_control_request_queue_duration_seconds_count{fairness_id=\"default-flow\",inference_pool=\"gated\",model_name=\"m\",outcome=\"Dispatched\",priority=\"0\",target_model_name=\"m\"} 1"),
        "{metrics}"
    );
    s.shutdown().await;
    f.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_policy_with_a_flow_control_section_queues_by_the_objective_priority() {
    let f = fleet("m", "127.0.0.1", 0.02).await;
    let dir = temp_dir("namedflow");
    let path = dir.join("gateway.yaml");
    let text = format!(
        "pools:\n- name: gated\n  endpoints: [{}]\n  models: [m]\n  policy: igw\n  flowControl:\n    defaultRequestTTL: 30s\nobjectives:\n- name: critical\n  priority: 10\n",
        f.addrs()[0]
    );
    write_atomically(&path, &text);
    let plan = gateway_config::load(&path, "igw").unwrap();
    let flow = plan.pools[0].flow.clone().expect("the section turns flow control on");
    assert_eq!(flow.default_ttl, Some(Duration::from_secs(30)));
    assert_eq!(flow.default_band.fairness, igw_sched::flow::FairnessPolicy::Vtc, "igw's defaults fill the rest");
    assert_eq!(plan.pools[0].scheduler_source, "policy igw with flowControl");
    let s = start(Source::Config(path.clone(), plan)).await;
    let resp =
        send(s.addr, "POST", "/v1/completions", &[("x-gateway-inference-objective", "critical")], &completion("m", 2))
            .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let _ = resp.into_body().collect().await.unwrap();
    let metrics = get_text(s.admin_addr, "/metrics").await;
    assert!(
        metrics.contains("inference_extension_flow_control_request_queue_duration_seconds_count{fairness_id=\"default-flow\",inference_pool=\"gated\",model_name=\"m\",outcome=\"Dispatched\",priority=\"10\",target_model_name=\"m\"} 1"),
        "{metrics}"
    );
    s.shutdown().await;
    f.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_kubernetes_pool_without_a_cluster_is_a_clear_error() {
    // No in-cluster environment and no kubeconfig here: discovery cannot start, and says so.
    let cfg = igw_k8s::watch::DiscoveryConfig {
        pool_name: "p".into(),
        pool_namespace: "default".into(),
        pool_group: igw_k8s::shared::POOL_GROUP.into(),
        endpoint_selector: String::new(),
        endpoint_target_ports: vec![8000],
    };
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let e = Serving::start(&args(), Source::Kubernetes(cfg), l, a).await.unwrap_err();
    assert!(format!("{e:#}").contains("starting Kubernetes discovery"), "{e:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn igw_latency_learns_each_replica_and_shows_it_on_the_admin_listener() {
    // Real-time replicas (time scale 1) and a 2,000-token prompt: each prefill takes about 47 ms
    // of modelled GPU time, which the simulator never shortens, while the response headers leave
    // before it starts. A lower bound on what was seen therefore tells TTFT-at-first-token from
    // TTFT-at-headers however slow or noisy this machine is.
    let (fa, fb) = (fleet("m", "127.0.0.1", 1.0).await, fleet("m", "127.0.0.1", 1.0).await);
    let dir = temp_dir("latency");
    let path = dir.join("gateway.yaml");
    let text = format!(
        "pools:\n- name: p\n  endpoints: [{}, {}]\n  models: [m]\n  policy: igw-latency\n",
        fa.addrs()[0],
        fb.addrs()[0]
    );
    write_atomically(&path, &text);
    let plan = gateway_config::load(&path, "igw").unwrap();
    let s = start(Source::Config(path.clone(), plan)).await;
    let filler = "word ".repeat(1_600);
    for i in 0..12 {
        // A distinct first block each time: no prefix cache hit shortens a prefill.
        let body = serde_json::json!({
            "model": "m", "prompt": format!("{i:04} {filler}"), "max_tokens": 8, "ignore_eos": true,
            "stream": true, "stream_options": {"include_usage": true}
        })
        .to_string();
        let resp = send(s.addr, "POST", "/v1/completions", &[("x-llm-d-slo-ttft-ms", "60000")], &body).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let text = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&text).contains("data: [DONE]"));
    }
    let eps = get_json(s.admin_addr, "/debug/endpoints").await;
    let samples = |field: &str| -> u64 {
        eps["endpoints"].as_array().unwrap().iter().map(|e| e["latency_model"][field].as_u64().unwrap_or(0)).sum()
    };
    let (learned, ttft_learned) = (samples("tpot_samples"), samples("ttft_samples"));
    assert_eq!(learned, 12, "every streamed response trains its replica's model: {eps}");
    assert_eq!(ttft_learned, 12, "TTFT from the first streamed token: {eps}");
    let pool = &eps["pools"][0]["latency_model"];
    assert!(pool["step_s"].as_f64().unwrap() > 0.0, "the pool's learned shape is shown: {eps}");
    let metrics = get_text(s.admin_addr, "/metrics").await;
    assert!(metrics.contains("inference_objective_request_predicted_ttft_seconds_count 12"), "{metrics}");
    assert!(metrics.contains("igw_latency_prediction_error_ratio_count{signal=\"ttft\"} 12"), "{metrics}");
    assert!(metrics.contains("igw_latency_prediction_error_ratio_bucket{signal=\"tpot\""), "{metrics}");
    // TTFT is the first token, not the response headers: no TTFT under 25 ms was seen.
    let l = "{model_name=\"m\",target_model_name=\"m\"";
    assert!(metrics.contains(&format!("inference_objective_request_ttft_seconds_count{l}}} 12")), "{metrics}");
    assert!(
        metrics.contains(&format!("inference_objective_request_ttft_seconds_bucket{l},le=\"0.025\"}} 0")),
        "{metrics}"
    );
    assert!(metrics.contains(&format!("inference_objective_request_tpot_seconds_count{l}}} 12")), "{metrics}");
    assert!(!metrics.contains("inference_objective_request_slo_violation_total{"), "a 60 s TTFT objective is met");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cheapest_objective_goes_to_the_cheapest_replica_that_meets_its_slo() {
    let (fa, fb) = (fleet("m", "127.0.0.1", 0.05).await, fleet("m", "127.0.0.1", 0.05).await);
    let dir = temp_dir("cheapest");
    let path = dir.join("gateway.yaml");
    let text = format!(
        "pools:\n- name: p\n  endpoints:\n  - {{address: '{}', labels: {{igw.dev/cost-per-hour: '8.22', inference.networking.k8s.io/accelerator: H100}}}}\n  - {{address: '{}', labels: {{igw.dev/cost-per-hour: '1.01'}}}}\n  models: [m]\n  policy: igw-latency\nobjectives:\n- name: batch\n  slo: {{ttftMs: 60000, tpotMs: 60000}}\n  placement: cheapest\n",
        fa.addrs()[0],
        fb.addrs()[0]
    );
    write_atomically(&path, &text);
    let plan = gateway_config::load(&path, "igw").unwrap();
    let s = start(Source::Config(path.clone(), plan)).await;
    let body =
        r#"{"model":"m","prompt":"hello there","max_tokens":4,"stream":true,"stream_options":{"include_usage":true}}"#;
    for _ in 0..8 {
        let resp = send(s.addr, "POST", "/v1/completions", &[("x-gateway-inference-objective", "batch")], body).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let served: SocketAddr = resp.headers().get(SERVED_HEADER).unwrap().to_str().unwrap().parse().unwrap();
        let _ = resp.into_body().collect().await.unwrap();
        assert_eq!(served, fb.addrs()[0], "the 1.01 replica meets a 60 s objective every time");
    }
    let eps = get_json(s.admin_addr, "/debug/endpoints").await;
    let listed = eps["endpoints"].as_array().unwrap();
    assert_eq!(listed[0]["accelerator"], "H100", "{eps}");
    assert_eq!(listed[1]["cost_per_hour"], 1.01, "{eps}");
    s.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}
