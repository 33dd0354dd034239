//! The standalone gateway's request path against real simulated replicas on loopback.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use igw_core::{Datastore, EndpointMeta};
use igw_proxy::gateway::{Gateway, GatewayConfig, SERVED_HEADER};
use igw_sim::profile::Profile;
use igw_sim::server::{Fleet, FleetConfig};
use igw_testkit::{Recorder, TestPool};
use tokio::net::TcpListener;

const MODEL: &str = "meta-llama/Llama-2-7b-hf";

struct Harness {
    url: String,
    datastore: Arc<Datastore>,
    fleet: Fleet,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(extra_dead: bool, config: GatewayConfig) -> Harness {
    let mut cfg = FleetConfig::new(Profile::llama2_7b_h100());
    cfg.time_scale = 0.01;
    cfg.model = MODEL.to_string();
    let fleet = Fleet::bind(cfg, 2, 0).await.unwrap();
    let mut eps: Vec<EndpointMeta> = fleet.addrs().iter().map(|a| EndpointMeta::from_addr(*a)).collect();
    if extra_dead {
        // A port nobody listens on: bind, learn the port, close.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = l.local_addr().unwrap();
        drop(l);
        eps.push(EndpointMeta::from_addr(dead));
    }
    let datastore = Arc::new(Datastore::with_endpoints(eps));
    // Random with two fallbacks, as `igw serve --policy random`.
    let pool = TestPool::build(datastore.clone(), "random", 3, Recorder::default());
    let gw = Arc::new(Gateway::new(pool.pool.clone(), config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(igw_proxy::listener::serve(
        listener,
        move |req| gw.clone().handle(req),
        async {
            let _ = rx.await;
        },
        Duration::from_secs(1),
    ));
    Harness { url, datastore, fleet, _stop: tx }
}

async fn post(url: &str, path: &str, body: &str) -> (StatusCode, http::HeaderMap, Bytes) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::post(format!("{url}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    (parts.status, parts.headers, body.collect().await.unwrap().to_bytes())
}

fn in_flight(ds: &Datastore) -> u64 {
    ds.snapshot().endpoints.iter().map(|e| e.in_flight().requests()).sum()
}

#[tokio::test]
async fn completions_and_streaming_chat_are_served_and_accounted() {
    let h = start(false, GatewayConfig::default()).await;
    let body = format!(r#"{{"model":"{MODEL}","prompt":"hello world","max_tokens":4,"ignore_eos":true}}"#);
    let (status, headers, bytes) = post(&h.url, "/v1/completions", &body).await;
    assert_eq!(status, StatusCode::OK);
    let served = headers[SERVED_HEADER].to_str().unwrap();
    assert_eq!(served, headers["x-igw-sim-replica"].to_str().unwrap(), "served header names the replica");
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 4);

    let body = format!(
        r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":"hi"}}],"max_tokens":5,"ignore_eos":true,"stream":true,"stream_options":{{"include_usage":true}}}}"#
    );
    let (status, headers, bytes) = post(&h.url, "/v1/chat/completions", &body).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"].to_str().unwrap().contains("text/event-stream"));
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    assert_eq!(text.matches("\"content\":").count(), 6, "role chunk + 5 tokens: {text}");
    assert!(text.trim_end().ends_with("data: [DONE]"));
    assert_eq!(in_flight(&h.datastore), 0, "every request released its in-flight load");
    h.fleet.shutdown().await;
}

#[tokio::test]
async fn bad_requests_get_openai_errors() {
    let h = start(false, GatewayConfig { max_body_bytes: 1024, ..GatewayConfig::default() }).await;
    let (status, _, bytes) = post(&h.url, "/v1/completions", "{not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");

    let (status, _, bytes) = post(&h.url, "/v1/completions", r#"{"prompt":"no model"}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&bytes).contains("model not found in request body"));

    let big = format!(r#"{{"model":"{MODEL}","prompt":"{}"}}"#, "x".repeat(4096));
    let (status, _, _) = post(&h.url, "/v1/completions", &big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(in_flight(&h.datastore), 0);
    h.fleet.shutdown().await;
}

#[tokio::test]
async fn a_dead_replica_is_skipped_before_any_byte() {
    let h = start(true, GatewayConfig::default()).await;
    let live: Vec<SocketAddr> = h.fleet.addrs().to_vec();
    let body = format!(r#"{{"model":"{MODEL}","prompt":"hello","max_tokens":2,"ignore_eos":true}}"#);
    for _ in 0..12 {
        let (status, headers, _) = post(&h.url, "/v1/completions", &body).await;
        assert_eq!(status, StatusCode::OK, "a refused connection falls back to the next candidate");
        let served: SocketAddr = headers[SERVED_HEADER].to_str().unwrap().parse().unwrap();
        assert!(live.contains(&served));
    }
    assert_eq!(in_flight(&h.datastore), 0);
    h.fleet.shutdown().await;
}

#[tokio::test]
async fn other_paths_pass_through() {
    let h = start(false, GatewayConfig::default()).await;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = client.get(format!("{}/v1/models", h.url).parse().unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().contains_key(SERVED_HEADER));
    let v: serde_json::Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["data"][0]["id"], MODEL);
    h.fleet.shutdown().await;
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served() {
    let h = start(false, GatewayConfig::default()).await;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    let body = format!(r#"{{"model":"{MODEL}","prompt":"hello","max_tokens":2,"ignore_eos":true}}"#);
    let req = Request::post(format!("{}/v1/completions", h.url)).body(Full::new(Bytes::from(body))).unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 2);
    h.fleet.shutdown().await;
}

#[tokio::test]
async fn models_route_to_their_pool_unknown_models_get_404_and_routes_swap() {
    use igw_proxy::routes::{PoolRoute, Routes};
    let fleet = |model: &str| {
        let mut cfg = FleetConfig::new(Profile::llama2_7b_h100());
        cfg.time_scale = 0.01;
        cfg.model = model.to_string();
        Fleet::bind(cfg, 1, 0)
    };
    let (fa, fb) = (fleet("model-a").await.unwrap(), fleet("model-b").await.unwrap());
    let pool = |name: &str, f: &Fleet, models: &[&str]| {
        let ds = Arc::new(Datastore::with_endpoints(f.addrs().iter().map(|a| EndpointMeta::from_addr(*a))));
        PoolRoute {
            name: name.to_string(),
            pool: TestPool::build(ds, "random", 3, Recorder::default()).pool.clone(),
            models: models.iter().map(|m| m.to_string()).collect(),
        }
    };
    let routes = Routes::new(vec![pool("a", &fa, &["model-a"]), pool("b", &fb, &["model-b"])], 0, 1).unwrap();
    let gw = Arc::new(Gateway::with_routes(routes, GatewayConfig::default()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (_tx, rx) = tokio::sync::oneshot::channel::<()>();
    let g = gw.clone();
    tokio::spawn(igw_proxy::listener::serve(
        listener,
        move |req| g.clone().handle(req),
        async {
            let _ = rx.await;
        },
        Duration::from_secs(1),
    ));
    let served = |h: &http::HeaderMap| h[SERVED_HEADER].to_str().unwrap().parse::<SocketAddr>().unwrap();
    let req = |m: &str| format!(r#"{{"model":"{m}","prompt":"hello","max_tokens":2,"ignore_eos":true}}"#);
    for _ in 0..4 {
        let (s, h, _) = post(&url, "/v1/completions", &req("model-b")).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(served(&h), fb.addrs()[0], "model-b is served by pool b");
        let (s, h, _) = post(&url, "/v1/completions", &req("model-a")).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(served(&h), fa.addrs()[0]);
    }
    let (s, _, bytes) = post(&url, "/v1/completions", &req("gpt-17")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["error"]["type"], "not_found_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("gpt-17"), "{v}");

    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = client.get(format!("{url}/v1/models").parse().unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "model-a");
    assert_eq!(v["data"][1]["owned_by"], "b");

    // Swap: only pool b is left; model-a is no longer served.
    let old = gw.set_routes(Routes::new(vec![pool("b", &fb, &["model-b"])], 0, 2).unwrap());
    assert_eq!(old.generation(), 1);
    let (s, _, bytes) = post(&url, "/v1/completions", &req("model-a")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(String::from_utf8_lossy(&bytes).contains("model-a"));
    let (s, h, _) = post(&url, "/v1/completions", &req("model-b")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(served(&h), fb.addrs()[0]);
    fa.shutdown().await;
    fb.shutdown().await;
}

/// Flow control in front of a pool: a request waits while the pool is saturated (a client that
/// gives up leaves the queue), and is served once the pool has room.
#[tokio::test]
async fn flow_control_holds_requests_until_the_pool_has_room() {
    use igw_core::EndpointMetrics;
    use igw_core::time::{Clock, process_clock};
    use igw_proxy::routes::Routes;
    use igw_sched::detector::UtilizationDetector;
    use igw_sched::flow::FlowConfig;

    let mut cfg = FleetConfig::new(Profile::llama2_7b_h100());
    cfg.time_scale = 0.01;
    cfg.model = MODEL.to_string();
    let fleet = Fleet::bind(cfg, 1, 0).await.unwrap();
    let ds = Arc::new(Datastore::with_endpoints(fleet.addrs().iter().map(|a| EndpointMeta::from_addr(*a))));
    // No scraper here: the test sets the metrics the gate sees.
    let set_waiting = |waiting| {
        let now = process_clock().now();
        ds.snapshot().endpoints[0].set_metrics(EndpointMetrics {
            waiting,
            update_time: Some(now),
            ..Default::default()
        });
    };
    set_waiting(50);
    let det = UtilizationDetector { staleness: Duration::from_secs(3600), ..Default::default() };
    let sched = Arc::new(igw_sched::Scheduler::from_policy("random").unwrap().with_detector(det));
    let core = igw_request::PoolCore::new("p", ds.clone(), sched).with_flow_control(FlowConfig::igw()).unwrap();
    let pool = igw_request::Pool::on_process_clock(core);
    let gate = pool.gate().unwrap().clone();
    let routes = Routes::single("p", pool);
    let gw = Arc::new(Gateway::with_routes(routes, GatewayConfig::default()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (_stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(igw_proxy::listener::serve(
        listener,
        move |req| gw.clone().handle(req),
        async {
            let _ = rx.await;
        },
        Duration::from_secs(1),
    ));
    let body = format!(r#"{{"model":"{MODEL}","prompt":"hi","max_tokens":2}}"#);
    let wait_queued = |n: usize| {
        let gate = gate.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while gate.len() != n {
                assert!(std::time::Instant::now() < deadline, "queue never reached {n}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };

    // A client that gives up while queued takes its request out of the queue.
    let (u, b) = (url.clone(), body.clone());
    let impatient = tokio::spawn(async move { post(&u, "/v1/completions", &b).await });
    wait_queued(1).await;
    impatient.abort();
    wait_queued(0).await;

    // A patient one is served as soon as the pool has room.
    let (u, b) = (url.clone(), body.clone());
    let patient = tokio::spawn(async move { post(&u, "/v1/completions", &b).await });
    wait_queued(1).await;
    set_waiting(0);
    gate.cycle();
    let (status, _, body) = patient.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(in_flight(&ds), 0);
    let mut m = String::new();
    gate.metrics().render(&mut m);
    assert!(m.contains("outcome=\"EvictedContextCancelled\""), "{m}");
    assert!(m.contains("outcome=\"Dispatched\""), "{m}");
    fleet.shutdown().await;
}

/// `session-affinity-scorer`: every response names its pod in `x-session-token`; a client that
/// sends the token back stays on that pod.
#[tokio::test]
async fn session_tokens_keep_a_conversation_on_its_pod() {
    let mut cfg = FleetConfig::new(Profile::llama2_7b_h100());
    cfg.time_scale = 0.01;
    cfg.model = MODEL.to_string();
    let fleet = Fleet::bind(cfg, 3, 0).await.unwrap();
    let ds = Arc::new(Datastore::with_endpoints(fleet.addrs().iter().map(|a| EndpointMeta::from_addr(*a))));
    let sched = igw_sched::config::scheduler_from_yaml(
        "plugins:\n- type: session-affinity-scorer\n- type: active-request-scorer\nschedulingProfiles:\n- name: default\n  plugins:\n  - pluginRef: session-affinity-scorer\n    weight: 10\n  - pluginRef: active-request-scorer\n    weight: 1\n",
    )
    .unwrap();
    let core = igw_request::PoolCore::new("p", ds.clone(), Arc::new(sched)).with_seed(3).with_max_endpoints(3);
    let gw = Arc::new(Gateway::new(igw_request::Pool::on_process_clock(core), GatewayConfig::default()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (_stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(igw_proxy::listener::serve(
        listener,
        move |req| gw.clone().handle(req),
        async {
            let _ = rx.await;
        },
        Duration::from_secs(1),
    ));
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let send = |token: Option<String>| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let mut b = Request::post(format!("{url}/v1/completions"));
            if let Some(t) = token {
                b = b.header("x-session-token", t);
            }
            let body = format!(r#"{{"model":"{MODEL}","prompt":"hi","max_tokens":2}}"#);
            let resp = client.request(b.body(Full::new(Bytes::from(body))).unwrap()).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let served = resp.headers()[SERVED_HEADER].to_str().unwrap().to_string();
            let token = resp.headers()["x-session-token"].to_str().unwrap().to_string();
            resp.into_body().collect().await.unwrap();
            (served, token)
        }
    };
    let (first, token) = send(None).await;
    assert_eq!(token, igw_sched::session::encode_token("default", &first));
    for _ in 0..6 {
        let (served, again) = send(Some(token.clone())).await;
        assert_eq!((served.as_str(), again.as_str()), (first.as_str(), token.as_str()));
    }
    // A token naming no pod (or garbage) is no preference: still served.
    send(Some("bm90LWEtcG9k".into())).await;
    send(Some("%%%".into())).await;
    fleet.shutdown().await;
}
