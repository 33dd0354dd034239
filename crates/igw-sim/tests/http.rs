//! The HTTP simulator against an in-process fleet on 127.0.0.1:0.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use igw_sim::profile::{Profile, ProfileOverrides};
use igw_sim::server::REPLICA_HEADER;
use igw_sim::{EngineKind, Fleet, FleetConfig};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(o: ProfileOverrides) -> FleetConfig {
    let mut p = Profile::llama2_7b_h100();
    p.apply(&o).unwrap();
    let mut c = FleetConfig::new(p);
    c.time_scale = 0.01;
    c.seed = 1;
    c
}

async fn fleet(cfg: FleetConfig, n: usize) -> Fleet {
    let ls = (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    Fleet::start(cfg, ls).await.unwrap()
}

async fn send(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (StatusCode, HeaderMap, Incoming) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or("").to_string())))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    (parts.status, parts.headers, body)
}

async fn call(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (StatusCode, HeaderMap, String) {
    let (s, h, b) = send(addr, method, path, body).await;
    let bytes = b.collect().await.unwrap().to_bytes();
    (s, h, String::from_utf8(bytes.to_vec()).unwrap())
}

fn sse_events(body: &str) -> Vec<&str> {
    body.split("\n\n").filter(|e| !e.is_empty()).map(|e| e.strip_prefix("data: ").unwrap()).collect()
}

/// `name{labels}` → value, for every sample line.
fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse::<f64>().unwrap())
        })
        .collect()
}

fn metric(samples: &[(String, f64)], prefix: &str) -> f64 {
    samples.iter().find(|(k, _)| k.starts_with(prefix)).map(|(_, v)| *v).unwrap_or_else(|| panic!("no {prefix}"))
}

#[tokio::test]
async fn completions_non_streaming_with_usage_and_replica_header() {
    let f = fleet(config(ProfileOverrides::default()), 2).await;
    for addr in f.addrs().to_vec() {
        let body = r#"{"model":"meta-llama/Llama-2-7b-hf","prompt":"hello world, this is a test","max_tokens":7,"ignore_eos":true}"#;
        let (s, h, b) = call(addr, "POST", "/v1/completions", Some(body)).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(h[REPLICA_HEADER], addr.to_string().as_str());
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["usage"]["completion_tokens"], 7);
        assert_eq!(v["usage"]["prompt_tokens"], 7, "28 chars / 4");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["choices"][0]["text"].as_str().unwrap().len(), 28);
    }
    f.shutdown().await;
}

#[tokio::test]
async fn chat_streaming_one_token_per_event_with_usage_chunk() {
    let f = fleet(config(ProfileOverrides::default()), 1).await;
    let body = r#"{"model":"meta-llama/Llama-2-7b-hf","messages":[{"role":"user","content":"Say something"}],
        "max_tokens":12,"ignore_eos":true,"stream":true,"stream_options":{"include_usage":true}}"#;
    let (s, h, b) = call(f.addrs()[0], "POST", "/v1/chat/completions", Some(body)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(h["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let ev = sse_events(&b);
    assert_eq!(ev.len(), 1 + 12 + 1 + 1, "role + 12 tokens + usage + [DONE]");
    assert_eq!(*ev.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = ev[..ev.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    for (i, c) in chunks[1..13].iter().enumerate() {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["choices"][0]["delta"]["content"].as_str().unwrap().len(), 4, "one 4-char token per event");
        let fin = &c["choices"][0]["finish_reason"];
        if i == 11 {
            assert_eq!(fin, "length")
        } else {
            assert!(fin.is_null())
        }
        assert!(c["usage"].is_null());
    }
    let usage = &chunks[13];
    assert_eq!(usage["choices"].as_array().unwrap().len(), 0);
    assert_eq!(usage["usage"]["completion_tokens"], 12);
    f.shutdown().await;
}

#[tokio::test]
async fn completions_streaming_without_usage() {
    let f = fleet(config(ProfileOverrides::default()), 1).await;
    let body = r#"{"prompt":"abc","max_tokens":5,"ignore_eos":true,"stream":true}"#;
    let (_, _, b) = call(f.addrs()[0], "POST", "/v1/completions", Some(body)).await;
    let ev = sse_events(&b);
    assert_eq!(ev.len(), 6);
    assert_eq!(ev[5], "[DONE]");
    let last: Value = serde_json::from_str(ev[4]).unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert!(last.get("usage").is_none());
    f.shutdown().await;
}

#[tokio::test]
async fn sampled_lengths_respect_bounds_and_seed() {
    async fn lengths() -> Vec<u64> {
        let f = fleet(config(ProfileOverrides::default()), 1).await;
        let mut out = Vec::new();
        for _ in 0..6 {
            let (_, _, b) = call(
                f.addrs()[0],
                "POST",
                "/v1/completions",
                Some(r#"{"prompt":"x","max_tokens":300,"min_tokens":20}"#),
            )
            .await;
            let v: Value = serde_json::from_str(&b).unwrap();
            let n = v["usage"]["completion_tokens"].as_u64().unwrap();
            let fin = v["choices"][0]["finish_reason"].as_str().unwrap().to_string();
            assert!((20..=300).contains(&n), "{n}");
            assert_eq!(fin == "length", n == 300);
            out.push(n);
        }
        f.shutdown().await;
        out
    }
    let a = lengths().await;
    assert_eq!(a, lengths().await, "same seed, same lengths");
    assert!(a.iter().any(|n| *n != a[0]), "lengths vary: {a:?}");
}

#[tokio::test]
async fn errors_unknown_model_bad_json_and_too_long() {
    let f = fleet(config(ProfileOverrides::default()), 1).await;
    let a = f.addrs()[0];
    let (s, h, b) = call(a, "POST", "/v1/completions", Some(r#"{"model":"nope","prompt":"x"}"#)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(h[REPLICA_HEADER], a.to_string().as_str());
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!((v["error"]["type"].as_str(), v["error"]["code"].as_u64()), (Some("NotFoundError"), Some(404)));
    let (s, _, b) = call(a, "POST", "/v1/chat/completions", Some(r#"{"model": "#)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(serde_json::from_str::<Value>(&b).unwrap()["error"]["code"], 400);
    let long = format!(r#"{{"prompt":"{}"}}"#, "x".repeat(4 * 5000));
    assert_eq!(call(a, "POST", "/v1/completions", Some(&long)).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(call(a, "GET", "/nowhere", None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(call(a, "GET", "/v1/completions", None).await.0, StatusCode::METHOD_NOT_ALLOWED);
    f.shutdown().await;
}

#[tokio::test]
async fn chunked_request_body_is_accepted() {
    let f = fleet(config(ProfileOverrides::default()), 1).await;
    let mut s = tokio::net::TcpStream::connect(f.addrs()[0]).await.unwrap();
    let body = r#"{"prompt":"chunked","max_tokens":3,"ignore_eos":true}"#;
    let (p1, p2) = body.split_at(10);
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n{p1}\r\n{:x}\r\n{p2}\r\n0\r\n\r\n",
        p1.len(),
        p2.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("\"completion_tokens\":3"));
    f.shutdown().await;
}

#[tokio::test]
async fn metrics_show_running_and_waiting_change() {
    let mut cfg = config(ProfileOverrides { max_num_seqs: Some(1), ..Default::default() });
    cfg.time_scale = 0.2;
    let f = fleet(cfg, 1).await;
    let a = f.addrs()[0];
    let stream_req = r#"{"prompt":"hello","max_tokens":40,"ignore_eos":true,"stream":true}"#;
    let (_, _, mut first) = send(a, "POST", "/v1/completions", Some(stream_req)).await;
    // The first token proves request 1 is running.
    let _ = first.frame().await.unwrap().unwrap();
    let m = parse_metrics(&call(a, "GET", "/metrics", None).await.2);
    assert_eq!(metric(&m, "vllm:num_requests_running{"), 1.0);
    assert_eq!(metric(&m, "vllm:num_requests_waiting{"), 0.0);
    assert!(metric(&m, "vllm:kv_cache_usage_perc{") > 0.0);
    assert_eq!(metric(&m, "vllm:gpu_cache_usage_perc{"), metric(&m, "vllm:kv_cache_usage_perc{"));
    // A streaming response's headers arrive once the request is queued; max_num_seqs=1 keeps it waiting.
    let (_, _, second) = send(a, "POST", "/v1/completions", Some(stream_req)).await;
    let m = parse_metrics(&call(a, "GET", "/metrics", None).await.2);
    assert_eq!(metric(&m, "vllm:num_requests_running{"), 1.0);
    assert_eq!(metric(&m, "vllm:num_requests_waiting{"), 1.0);
    let _ = first.collect().await.unwrap();
    let _ = second.collect().await.unwrap();
    let text = call(a, "GET", "/metrics", None).await.2;
    let m = parse_metrics(&text);
    assert_eq!(metric(&m, "vllm:num_requests_running{"), 0.0);
    assert_eq!(metric(&m, "vllm:num_requests_waiting{"), 0.0);
    assert_eq!(metric(&m, "vllm:generation_tokens_total{"), 80.0);
    assert_eq!(metric(&m, "vllm:request_success_total{engine=\"0\",finished_reason=\"length\""), 2.0);
    assert_eq!(metric(&m, "vllm:time_to_first_token_seconds_count{"), 2.0);
    assert_eq!(metric(&m, "vllm:e2e_request_latency_seconds_bucket{engine=\"0\",le=\"+Inf\""), 2.0);
    assert!(metric(&m, "vllm:request_queue_time_seconds_sum{") > 0.0, "the second request queued");
    assert!(text.contains("# TYPE vllm:time_to_first_token_seconds histogram"));
    assert!(text.contains("model_name=\"meta-llama/Llama-2-7b-hf\""));
    assert!(text.contains("vllm:cache_config_info{_block_size_resolved=\"True\",block_size=\"16\","));
    // vLLM 0.32's families move with the engine too.
    assert_eq!(metric(&m, "vllm:request_params_n_count{"), 2.0);
    assert_eq!(metric(&m, "vllm:request_max_num_generation_tokens_sum{"), 80.0);
    assert_eq!(metric(&m, "vllm:request_num_preemptions_sum{"), 0.0);
    assert_eq!(metric(&m, "vllm:request_time_per_output_token_seconds_count{"), 2.0);
    assert_eq!(
        metric(
            &m,
            "vllm:num_requests_waiting_by_reason{engine=\"0\",model_name=\"meta-llama/Llama-2-7b-hf\",reason=\"capacity\""
        ),
        0.0
    );
    assert!(text.contains("num_gpu_blocks=\"7300\""));
    assert!(!text.contains("lora_requests_info"), "LoRA is off");
    f.shutdown().await;
}

#[tokio::test]
async fn prefix_cache_counters_move() {
    let f = fleet(config(ProfileOverrides::default()), 1).await;
    let a = f.addrs()[0];
    let prompt = "y".repeat(64 * 10);
    let body = format!(r#"{{"prompt":"{prompt}","max_tokens":2,"ignore_eos":true}}"#);
    let (_, _, first) = call(a, "POST", "/v1/completions", Some(&body)).await;
    let (_, _, second) = call(a, "POST", "/v1/completions", Some(&body)).await;
    let c =
        |b: &str| serde_json::from_str::<Value>(b).unwrap()["usage"]["prompt_tokens_details"]["cached_tokens"].clone();
    assert_eq!(c(&first), 0);
    assert_eq!(c(&second), 144, "9 of 10 blocks (the last one is recomputed)");
    let m = parse_metrics(&call(a, "GET", "/metrics", None).await.2);
    assert_eq!(metric(&m, "vllm:prefix_cache_queries_total{"), 320.0);
    assert_eq!(metric(&m, "vllm:prefix_cache_hits_total{"), 144.0);
    // 0.32's per-request accounting: the second prompt's cached tokens, by source.
    assert_eq!(metric(&m, "vllm:prompt_tokens_cached_total{"), 144.0);
    assert_eq!(
        metric(
            &m,
            "vllm:prompt_tokens_cached_by_source_total{engine=\"0\",model_name=\"meta-llama/Llama-2-7b-hf\",source=\"device\""
        ),
        144.0
    );
    assert_eq!(metric(&m, "vllm:request_prefill_kv_computed_tokens_sum{"), 320.0 - 144.0);
    f.shutdown().await;
}

#[tokio::test]
async fn lora_load_unload_and_metrics() {
    let mut cfg = config(ProfileOverrides::default());
    cfg.enable_lora = true;
    cfg.max_loras = 2;
    let f = fleet(cfg, 1).await;
    let a = f.addrs()[0];
    let load = r#"{"lora_name":"sql-lora","lora_path":"/adapters/sql"}"#;
    let (s, _, b) = call(a, "POST", "/v1/load_lora_adapter", Some(load)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(call(a, "POST", "/v1/load_lora_adapter", Some(load)).await.0, StatusCode::BAD_REQUEST);
    let (_, _, models) = call(a, "GET", "/v1/models", None).await;
    let v: Value = serde_json::from_str(&models).unwrap();
    let ids: Vec<&str> = v["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["meta-llama/Llama-2-7b-hf", "sql-lora"]);
    assert_eq!(v["data"][1]["parent"], "meta-llama/Llama-2-7b-hf");
    let req = r#"{"model":"sql-lora","prompt":"select","max_tokens":3,"ignore_eos":true}"#;
    let (s, _, b) = call(a, "POST", "/v1/completions", Some(req)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(serde_json::from_str::<Value>(&b).unwrap()["model"], "sql-lora");
    let text = call(a, "GET", "/metrics", None).await.2;
    let line = text.lines().find(|l| l.starts_with("vllm:lora_requests_info{")).unwrap();
    assert!(line.starts_with("vllm:lora_requests_info{max_lora=\"2\",running_lora_adapters=\"sql-lora\""), "{line}");
    let value: f64 = line.rsplit_once(' ').unwrap().1.parse().unwrap();
    assert!(value > 1.6e9, "unix time, got {value}");
    let unload = r#"{"lora_name":"sql-lora"}"#;
    assert_eq!(call(a, "POST", "/v1/unload_lora_adapter", Some(unload)).await.0, StatusCode::OK);
    assert_eq!(call(a, "POST", "/v1/unload_lora_adapter", Some(unload)).await.0, StatusCode::NOT_FOUND);
    assert_eq!(call(a, "POST", "/v1/completions", Some(req)).await.0, StatusCode::NOT_FOUND);
    // Old label sets persist after the adapter is idle.
    let text = call(a, "GET", "/metrics", None).await.2;
    assert!(text.contains("running_lora_adapters=\"sql-lora\""));
    f.shutdown().await;
}

#[tokio::test]
async fn sglang_metric_names() {
    let mut cfg = config(ProfileOverrides::default());
    cfg.engine_kind = EngineKind::Sglang;
    let f = fleet(cfg, 1).await;
    let a = f.addrs()[0];
    call(a, "POST", "/v1/completions", Some(r#"{"prompt":"x","max_tokens":2,"ignore_eos":true}"#)).await;
    let text = call(a, "GET", "/metrics", None).await.2;
    let m = parse_metrics(&text);
    assert_eq!(metric(&m, "sglang:num_running_reqs{"), 0.0);
    assert_eq!(metric(&m, "sglang:num_queue_reqs{"), 0.0);
    assert_eq!(metric(&m, "sglang:token_usage{"), 0.0);
    assert_eq!(metric(&m, "sglang:generation_tokens_total{"), 2.0);
    assert!(text.contains("num_pages=\"7300\",page_size=\"16\"} 1.0"));
    assert!(!text.contains("vllm:"));
    f.shutdown().await;
}

#[tokio::test]
async fn peer_endpoints() {
    let f = fleet(config(ProfileOverrides::default()), 1).await;
    let a = f.addrs()[0];
    let (s, _, b) = call(a, "GET", "/get_load", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(serde_json::from_str::<Value>(&b).unwrap()["load"], 0);
    for p in ["/model_info", "/server_info", "/get_model_info", "/get_server_info"] {
        let (s, _, b) = call(a, "GET", p, None).await;
        assert_eq!(s, StatusCode::OK);
        assert!(serde_json::from_str::<Value>(&b).unwrap().get("model_path").is_none(), "{p}: {b}");
    }
    let (_, _, b) =
        call(a, "POST", "/v1/completions/render", Some(r#"{"model":"meta-llama/Llama-2-7b-hf","prompt":"abcdefgh"}"#))
            .await;
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v[0]["token_ids"].as_array().unwrap().len(), 2);
    let chat = r#"{"messages":[{"role":"user","content":"hello there"}]}"#;
    let (_, _, b) = call(a, "POST", "/v1/chat/completions/render", Some(chat)).await;
    let v: Value = serde_json::from_str(&b).unwrap();
    assert!(!v["token_ids"].as_array().unwrap().is_empty());
    let (_, _, b) = call(a, "POST", "/tokenize", Some(r#"{"prompt":"abcdefgh"}"#)).await;
    assert_eq!(serde_json::from_str::<Value>(&b).unwrap()["count"], 2);
    assert_eq!(call(a, "GET", "/health", None).await.0, StatusCode::OK);
    f.shutdown().await;
}

/// The model clock must not absorb the wall clock's lateness: at time_scale 0.01 a decode step
/// lasts ~70 µs on the wall, shorter than a typical timer wake-up, so starting each step at "now"
/// would stretch the modelled e2e several times over. Steps run back to back must be laid end to
/// end, giving exactly the sans-IO engine's e2e for the same request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_wake_ups_do_not_stretch_model_time() {
    let mut cfg = config(ProfileOverrides::default());
    cfg.jitter_sigma = 0.0;
    let f = fleet(cfg, 1).await;
    let prompt = "p".repeat(400);
    let body = format!(r#"{{"prompt":"{prompt}","max_tokens":300,"ignore_eos":true}}"#);
    let (s, _, b) = call(f.addrs()[0], "POST", "/v1/completions", Some(&body)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (_, _, m) = call(f.addrs()[0], "GET", "/metrics", None).await;
    let served = metric(&parse_metrics(&m), "vllm:e2e_request_latency_seconds_sum");
    f.shutdown().await;

    let mut p = Profile::llama2_7b_h100();
    p.apply(&ProfileOverrides::default()).unwrap();
    let mut cfg = igw_sim::engine::EngineConfig::new(p);
    cfg.jitter_sigma = 0.0;
    let mut e = igw_sim::engine::Engine::new(cfg).unwrap();
    let req = igw_sim::engine::SimRequest {
        id: igw_sim::engine::RequestId(1),
        prompt_tokens: 100,
        block_hashes: Vec::new(),
        output_tokens: 300,
        max_tokens: 300,
        adapter: None,
    };
    e.submit(req, igw_core::Instant::ZERO).unwrap();
    let mut t = igw_core::Instant::ZERO;
    while let Some((d, _)) = e.step(t) {
        t = t.saturating_add(d);
    }
    let modelled = t.as_secs_f64();
    assert!(modelled > 1.0, "300 decode steps: {modelled}");
    // Only the first step may start late (at the request's arrival on the model clock).
    assert!((served - modelled).abs() < 0.01 * modelled, "served e2e {served} s vs modelled {modelled} s");
}
