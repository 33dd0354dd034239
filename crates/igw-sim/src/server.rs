//! The HTTP simulator: N replicas, each an [`Engine`] driven in real time behind an OpenAI-compatible
//! server with vLLM's (or SGLang's) `/metrics`.
//!
//! Every replica has one tokio task that loops: start a step, sleep until its modelled end (model
//! duration × `time_scale`), finish it and push the tokens into per-request channels. Steps are laid
//! end to end on the model timeline, so a late wake-up does not delay later steps. Metrics histograms
//! are in model time (what the modelled GPU would show), independent of `time_scale`.

// Handlers return early with a ready-made error response; those are not a hot path.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::sync::Notify;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::engine::{Engine, EngineConfig, Finished, RequestId, SimRequest};
use crate::error::SimError;
use crate::metrics_text;
use crate::openai::{self, Api, Prompt, ResponseMeta, Usage};
use crate::profile::Profile;
use crate::prompt;
use crate::workload::ShareGptLengths;

/// Response header naming the replica that served a request (`127.0.0.1:PORT`).
pub const REPLICA_HEADER: &str = "x-igw-sim-replica";
/// tokio's timer fires on the first millisecond tick at or after a deadline; waking this much early
/// centres the delivery error around the modelled time instead of always late by up to 1 ms.
const TIMER_LEAD: Duration = Duration::from_micros(600);
/// Largest accepted request body.
const MAX_BODY: usize = 64 << 20;

/// Which server's metric names `/metrics` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// `vllm:*` names.
    Vllm,
    /// `sglang:*` names.
    Sglang,
}

/// Configuration of a simulated fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetConfig {
    /// Served model name.
    pub model: String,
    /// Model/hardware profile (with overrides applied).
    pub profile: Profile,
    /// Metric names.
    pub engine_kind: EngineKind,
    /// Multiplies every modelled duration on the wall clock (10 = ten times slower).
    pub time_scale: f64,
    /// Seed; replica `i` uses `seed + i`.
    pub seed: u64,
    /// Per-step jitter σ (multiplicative N(1, σ)).
    pub jitter_sigma: f64,
    /// Relative speed of each replica (missing entries are 1.0; 0.7 = 30% slower).
    pub speed_factors: Vec<f64>,
    /// Whether LoRA is enabled (adapters may be loaded, `lora_requests_info` is exported).
    pub enable_lora: bool,
    /// Distinct adapters in one batch.
    pub max_loras: u32,
    /// Adapters loaded at start (implies `enable_lora`).
    pub lora_adapters: Vec<String>,
    /// Record the modelled due time of every token (see [`Fleet::token_trace`]); for measurements.
    pub record_token_times: bool,
}

impl FleetConfig {
    /// Defaults for a profile: its model name, vLLM metrics, real time, seed 0, 2% jitter, LoRA off.
    pub fn new(profile: Profile) -> Self {
        FleetConfig {
            model: profile.model.clone(),
            profile,
            engine_kind: EngineKind::Vllm,
            time_scale: 1.0,
            seed: 0,
            jitter_sigma: 0.02,
            speed_factors: Vec::new(),
            enable_lora: false,
            max_loras: 1,
            lora_adapters: Vec::new(),
            record_token_times: false,
        }
    }
}

/// The modelled delivery time of one streamed token (recorded when
/// [`FleetConfig::record_token_times`] is set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenTrace {
    /// Replica index.
    pub replica: usize,
    /// The number in the response id (`cmpl-PORT-N` / `chatcmpl-PORT-N`).
    pub request: u64,
    /// Token index.
    pub index: u32,
    /// When the model says the token exists.
    pub due: std::time::Instant,
}

struct Shared {
    cfg: FleetConfig,
    epoch: tokio::time::Instant,
    epoch_unix: f64,
    cancel: CancellationToken,
}

impl Shared {
    fn model_now(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64() / self.cfg.time_scale
    }
}

enum Msg {
    Token(u32, Option<Finished>),
}

struct State {
    engine: Engine,
    sinks: HashMap<RequestId, UnboundedSender<Msg>>,
    adapters: Vec<String>,
    rng: SmallRng,
}

struct Replica {
    shared: Arc<Shared>,
    index: usize,
    addr: SocketAddr,
    addr_header: HeaderValue,
    state: Mutex<State>,
    wake: Notify,
    next_id: AtomicU64,
    lengths: ShareGptLengths,
    trace: Mutex<Vec<TokenTrace>>,
}

/// A running fleet of simulated replicas.
pub struct Fleet {
    replicas: Vec<Arc<Replica>>,
    addrs: Vec<SocketAddr>,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet").field("addrs", &self.addrs).finish()
    }
}

impl Fleet {
    /// Binds `replicas` listeners on 127.0.0.1 at `base_port..base_port+replicas` (0 = ephemeral
    /// ports) and starts the fleet.
    pub async fn bind(cfg: FleetConfig, replicas: usize, base_port: u16) -> Result<Fleet, SimError> {
        let mut listeners = Vec::with_capacity(replicas);
        for i in 0..replicas {
            let port = if base_port == 0 {
                0
            } else {
                u16::try_from(usize::from(base_port) + i)
                    .map_err(|_| SimError::Config(format!("port {base_port} + {i} is out of range")))?
            };
            listeners.push(std::net::TcpListener::bind(("127.0.0.1", port))?);
        }
        Self::start(cfg, listeners).await
    }

    /// Starts one replica per pre-bound listener. Must be called inside a tokio runtime.
    pub async fn start(cfg: FleetConfig, listeners: Vec<std::net::TcpListener>) -> Result<Fleet, SimError> {
        if !(cfg.time_scale.is_finite() && cfg.time_scale > 0.0) {
            return Err(SimError::Config(format!("time_scale must be positive, got {}", cfg.time_scale)));
        }
        if listeners.is_empty() {
            return Err(SimError::Config("at least one replica is needed".into()));
        }
        cfg.profile.validate()?;
        let enable_lora = cfg.enable_lora || !cfg.lora_adapters.is_empty();
        let shared = Arc::new(Shared {
            epoch: tokio::time::Instant::now(),
            epoch_unix: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0),
            cancel: CancellationToken::new(),
            cfg,
        });
        let mut replicas = Vec::new();
        let mut addrs = Vec::new();
        let mut tasks = Vec::new();
        let mut tokio_listeners = Vec::new();
        for (i, l) in listeners.into_iter().enumerate() {
            l.set_nonblocking(true)?;
            let addr = l.local_addr()?;
            let c = &shared.cfg;
            let engine = Engine::new(EngineConfig {
                profile: c.profile.clone(),
                speed: c.speed_factors.get(i).copied().unwrap_or(1.0),
                jitter_sigma: c.jitter_sigma,
                seed: c.seed.wrapping_add(i as u64),
                max_loras: if enable_lora { c.max_loras.max(1) } else { 0 },
            })?;
            let addr_header = HeaderValue::from_str(&addr.to_string())
                .map_err(|e| SimError::Config(format!("address {addr}: {e}")))?;
            let rep = Arc::new(Replica {
                shared: shared.clone(),
                index: i,
                addr,
                addr_header,
                state: Mutex::new(State {
                    engine,
                    sinks: HashMap::new(),
                    adapters: c.lora_adapters.clone(),
                    rng: SmallRng::seed_from_u64(c.seed.wrapping_add(0x5eed_0000).wrapping_add(i as u64)),
                }),
                wake: Notify::new(),
                next_id: AtomicU64::new(1),
                lengths: ShareGptLengths::new(),
                trace: Mutex::new(Vec::new()),
            });
            tokio_listeners.push((rep.clone(), tokio::net::TcpListener::from_std(l)?));
            addrs.push(addr);
            replicas.push(rep);
        }
        for (rep, listener) in tokio_listeners {
            tasks.push(tokio::spawn(drive(rep.clone())));
            tasks.push(tokio::spawn(accept_loop(rep, listener)));
        }
        Ok(Fleet { replicas, addrs, shared, tasks })
    }

    /// The replicas' addresses, in order.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The instant model time 0 corresponds to.
    pub fn epoch(&self) -> std::time::Instant {
        self.shared.epoch.into_std()
    }

    /// Modelled due times of streamed tokens so far (empty unless `record_token_times`).
    pub fn token_trace(&self) -> Vec<TokenTrace> {
        self.replicas.iter().flat_map(|r| r.trace.lock().clone()).collect()
    }

    /// Running and waiting requests of replica `i` right now.
    pub fn load(&self, i: usize) -> Option<(usize, usize)> {
        self.replicas.get(i).map(|r| {
            let st = r.state.lock();
            (st.engine.running_len(), st.engine.waiting_len())
        })
    }

    /// Stops accepting, stops the engines and waits for the fleet's tasks.
    pub async fn shutdown(mut self) {
        self.shared.cancel.cancel();
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

/// The engine loop of one replica.
async fn drive(rep: Arc<Replica>) {
    let shared = rep.shared.clone();
    let scale = shared.cfg.time_scale;
    let record = shared.cfg.record_token_times;
    let mut cursor = 0.0f64;
    // Whether the last step ran into this one without an idle gap: then the next step starts
    // exactly where the last one ended on the model timeline, however late this task woke up
    // (starting it at "now" instead would add every wake-up's lateness to the model's clock:
    // about a millisecond per step, +15% on a 7 ms decode step).
    let mut busy = false;
    loop {
        let start = if busy { cursor } else { cursor.max(shared.model_now()) };
        let planned = rep.state.lock().engine.start_step(igw_core::Instant::from_secs_f64(start));
        let Some(d) = planned else {
            busy = false;
            tokio::select! {
                _ = rep.wake.notified() => continue,
                _ = shared.cancel.cancelled() => return,
            }
        };
        busy = true;
        let end = start + d.as_secs_f64();
        let deadline = shared.epoch + Duration::from_secs_f64(end * scale);
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.checked_sub(TIMER_LEAD).unwrap_or(deadline)) => {}
            _ = shared.cancel.cancelled() => return,
        }
        let mut st = rep.state.lock();
        let st = &mut *st;
        let out = st.engine.finish_step(igw_core::Instant::from_secs_f64(end));
        let mut dead = Vec::new();
        let mut traced = Vec::new();
        for ev in &out.events {
            let Some(tx) = st.sinks.get(&ev.id) else { continue };
            if tx.send(Msg::Token(ev.index, ev.finished)).is_err() {
                dead.push(ev.id);
            } else if ev.finished.is_some() {
                st.sinks.remove(&ev.id);
            }
            if record {
                traced.push(TokenTrace {
                    replica: rep.index,
                    request: ev.id.0,
                    index: ev.index,
                    due: deadline.into_std(),
                });
            }
        }
        for id in dead {
            st.sinks.remove(&id);
            st.engine.abort(id, igw_core::Instant::from_secs_f64(end));
        }
        if record {
            rep.trace.lock().extend(traced);
        }
        cursor = end;
    }
}

async fn accept_loop(rep: Arc<Replica>, listener: tokio::net::TcpListener) {
    let cancel = rep.shared.cancel.clone();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = cancel.cancelled() => return,
        };
        let (stream, _) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let rep = rep.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let rep = rep.clone();
                async move {
                    let mut resp = route(&rep, req).await;
                    resp.headers_mut().insert(REPLICA_HEADER, rep.addr_header.clone());
                    Ok::<_, Infallible>(resp)
                }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = cancel.cancelled() => {}
            }
        });
    }
}

/// A response body: either complete, or a token stream rendered as SSE.
pub struct SimBody(BodyKind);

enum BodyKind {
    Full(Option<Bytes>),
    Stream(Box<TokenStream>),
}

struct TokenStream {
    rx: UnboundedReceiver<Msg>,
    meta: ResponseMeta,
    role_pending: bool,
    done: bool,
}

impl SimBody {
    fn full(b: impl Into<Bytes>) -> Self {
        SimBody(BodyKind::Full(Some(b.into())))
    }
}

impl http_body::Body for SimBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut self.get_mut().0 {
            BodyKind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            BodyKind::Stream(s) => {
                if s.done {
                    return Poll::Ready(None);
                }
                let mut out = String::new();
                if s.role_pending {
                    s.role_pending = false;
                    s.meta.role_event(&mut out);
                }
                loop {
                    match s.rx.poll_recv(cx) {
                        Poll::Ready(Some(Msg::Token(i, fin))) => {
                            s.meta.token_event(&mut out, i, fin.map(|f| f.reason.as_str()));
                            if let Some(f) = fin {
                                let u = Usage {
                                    prompt: f.prompt_tokens,
                                    completion: f.completion_tokens,
                                    cached: f.cached_tokens,
                                };
                                s.meta.tail_events(&mut out, u);
                                s.done = true;
                                break;
                            }
                        }
                        Poll::Ready(None) => {
                            s.done = true;
                            break;
                        }
                        Poll::Pending => break,
                    }
                }
                if out.is_empty() {
                    if s.done { Poll::Ready(None) } else { Poll::Pending }
                } else {
                    Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))))
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            BodyKind::Full(b) => b.is_none(),
            BodyKind::Stream(s) => s.done,
        }
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<SimBody> {
    let mut r = Response::new(SimBody::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<SimBody> {
    respond(status, "application/json", body)
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response<SimBody> {
    json(status, openai::error_body(message, kind, status.as_u16()))
}

fn bad_request(message: &str) -> Response<SimBody> {
    error(StatusCode::BAD_REQUEST, "BadRequestError", message)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, Response<SimBody>> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => Err(error(StatusCode::PAYLOAD_TOO_LARGE, "BadRequestError", &format!("request body: {e}"))),
    }
}

async fn route(rep: &Arc<Replica>, req: Request<Incoming>) -> Response<SimBody> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let get = method == Method::GET;
    let post = method == Method::POST;
    match path.as_str() {
        "/health" | "/ping" if get => respond(StatusCode::OK, "text/plain", Bytes::new()),
        "/v1/models" if get => models(rep),
        "/metrics" if get => metrics(rep),
        "/get_load" if get => {
            let (r, w) = {
                let st = rep.state.lock();
                (st.engine.running_len(), st.engine.waiting_len())
            };
            json(StatusCode::OK, format!("{{\"load\":{},\"num_reqs\":{r},\"num_waiting_reqs\":{w}}}", r + w))
        }
        "/server_info" | "/get_server_info" if get => server_info(rep),
        "/model_info" | "/get_model_info" if get => json(
            StatusCode::OK,
            serde_json::json!({"is_generation": true, "served_model_name": rep.shared.cfg.model}).to_string(),
        ),
        "/v1/completions" if post => generate(rep, Api::Completions, req).await,
        "/v1/chat/completions" if post => generate(rep, Api::Chat, req).await,
        "/v1/completions/render" if post => render(rep, Api::Completions, req).await,
        "/v1/chat/completions/render" if post => render(rep, Api::Chat, req).await,
        "/tokenize" if post => tokenize(rep, req).await,
        "/v1/load_lora_adapter" if post => load_lora(rep, req).await,
        "/v1/unload_lora_adapter" if post => unload_lora(rep, req).await,
        "/health"
        | "/ping"
        | "/v1/models"
        | "/metrics"
        | "/get_load"
        | "/server_info"
        | "/get_server_info"
        | "/model_info"
        | "/get_model_info"
        | "/v1/completions"
        | "/v1/chat/completions"
        | "/v1/completions/render"
        | "/v1/chat/completions/render"
        | "/tokenize"
        | "/v1/load_lora_adapter"
        | "/v1/unload_lora_adapter" => json(StatusCode::METHOD_NOT_ALLOWED, r#"{"detail":"Method Not Allowed"}"#),
        _ => json(StatusCode::NOT_FOUND, r#"{"detail":"Not Found"}"#),
    }
}

fn models(rep: &Replica) -> Response<SimBody> {
    let c = &rep.shared.cfg;
    let created = rep.shared.epoch_unix as u64;
    let mut data = vec![serde_json::json!({
        "id": c.model, "object": "model", "created": created, "owned_by": "vllm",
        "root": c.model, "parent": null, "max_model_len": c.profile.max_model_len,
    })];
    for a in &rep.state.lock().adapters {
        data.push(serde_json::json!({
            "id": a, "object": "model", "created": created, "owned_by": "vllm", "root": a, "parent": c.model,
            "max_model_len": null,
        }));
    }
    json(StatusCode::OK, serde_json::json!({"object": "list", "data": data}).to_string())
}

fn server_info(rep: &Replica) -> Response<SimBody> {
    let p = &rep.shared.cfg.profile;
    json(
        StatusCode::OK,
        serde_json::json!({
            "served_model_name": rep.shared.cfg.model,
            "max_total_num_tokens": u64::from(p.num_gpu_blocks) * u64::from(p.block_size),
            "page_size": p.block_size,
            "max_running_requests": p.max_num_seqs,
            "chunked_prefill_size": p.max_num_batched_tokens,
            "context_length": p.max_model_len,
            "version": concat!("igw-sim ", env!("CARGO_PKG_VERSION")),
        })
        .to_string(),
    )
}

fn metrics(rep: &Replica) -> Response<SimBody> {
    let snap = rep.state.lock().engine.snapshot();
    let shared = &rep.shared;
    let text = match shared.cfg.engine_kind {
        EngineKind::Vllm => {
            metrics_text::render_vllm(&snap, &shared.cfg.model, |t| shared.epoch_unix + t * shared.cfg.time_scale)
        }
        EngineKind::Sglang => metrics_text::render_sglang(&snap, &shared.cfg.model),
    };
    respond(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", text)
}

/// Resolves the request's model to the base model (`None`) or an adapter; `Err` is the 404 response.
fn resolve_model(rep: &Replica, model: Option<&str>) -> Result<Option<Arc<str>>, Response<SimBody>> {
    match model {
        None => Ok(None),
        Some(m) if m == rep.shared.cfg.model => Ok(None),
        Some(m) if rep.state.lock().adapters.iter().any(|a| a == m) => Ok(Some(Arc::from(m))),
        Some(m) => Err(error(StatusCode::NOT_FOUND, "NotFoundError", &format!("The model `{m}` does not exist."))),
    }
}

struct PromptInfo {
    tokens: u32,
    hashes: Vec<u64>,
}

fn prompt_info(p: &Prompt, block_size: u32, salt: &str) -> PromptInfo {
    match p {
        Prompt::Text(t) => {
            PromptInfo { tokens: prompt::count_tokens(t), hashes: prompt::block_hashes(t, block_size, salt) }
        }
        Prompt::Ids(ids) => {
            PromptInfo { tokens: ids.len() as u32, hashes: prompt::block_hashes_of_ids(ids, block_size, salt) }
        }
    }
}

async fn generate(rep: &Arc<Replica>, api: Api, req: Request<Incoming>) -> Response<SimBody> {
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let parsed = match openai::parse(api, &body) {
        Ok(p) => p,
        Err(m) => return bad_request(&m),
    };
    let adapter = match resolve_model(rep, parsed.model.as_deref()) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let cfg = &rep.shared.cfg;
    let p = &cfg.profile;
    let info = prompt_info(&parsed.prompt, p.block_size, adapter.as_deref().unwrap_or(""));
    if info.tokens >= p.max_model_len {
        return bad_request(&format!(
            "This model's maximum context length is {} tokens. However, you requested {} tokens in the prompt.",
            p.max_model_len, info.tokens
        ));
    }
    let room = p.max_model_len - info.tokens;
    let max_tokens = parsed.max_tokens.unwrap_or(room);
    if max_tokens > room {
        return bad_request(&format!(
            "This model's maximum context length is {} tokens. However, you requested {} tokens ({} in the messages, {} in the completion).",
            p.max_model_len,
            info.tokens + max_tokens,
            info.tokens,
            max_tokens
        ));
    }
    let n = rep.next_id.fetch_add(1, Ordering::Relaxed);
    let id = RequestId(n);
    let (tx, rx) = unbounded_channel();
    {
        let mut st = rep.state.lock();
        let output = if parsed.ignore_eos {
            max_tokens
        } else {
            rep.lengths.output(&mut st.rng).max(parsed.min_tokens).min(max_tokens)
        };
        let sim = SimRequest {
            id,
            prompt_tokens: info.tokens,
            block_hashes: info.hashes,
            output_tokens: output,
            max_tokens,
            adapter: adapter.clone(),
        };
        let now = igw_core::Instant::from_secs_f64(rep.shared.model_now());
        if let Err(e) = st.engine.submit(sim, now) {
            return bad_request(&e.to_string());
        }
        st.sinks.insert(id, tx);
    }
    rep.wake.notify_one();
    let prefix = match api {
        Api::Completions => "cmpl",
        Api::Chat => "chatcmpl",
    };
    let model_name = parsed.model.as_deref().unwrap_or(&cfg.model);
    let meta = ResponseMeta {
        api,
        id: format!("{prefix}-{}-{n}", rep.addr.port()),
        created: unix_now(),
        model_json: serde_json::Value::from(model_name).to_string(),
        include_usage: parsed.include_usage,
    };
    if parsed.stream {
        let mut r = Response::new(SimBody(BodyKind::Stream(Box::new(TokenStream {
            rx,
            meta,
            role_pending: api == Api::Chat,
            done: false,
        }))));
        r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream; charset=utf-8"));
        return r;
    }
    let mut rx = rx;
    while let Some(Msg::Token(_, fin)) = rx.recv().await {
        if let Some(f) = fin {
            let u = Usage { prompt: f.prompt_tokens, completion: f.completion_tokens, cached: f.cached_tokens };
            return json(StatusCode::OK, meta.full_response(f.completion_tokens, f.reason.as_str(), u));
        }
    }
    error(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailableError", "the engine stopped")
}

async fn render(rep: &Arc<Replica>, api: Api, req: Request<Incoming>) -> Response<SimBody> {
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let parsed = match openai::parse(api, &body) {
        Ok(p) => p,
        Err(m) => return bad_request(&m),
    };
    if let Err(r) = resolve_model(rep, parsed.model.as_deref()) {
        return r;
    }
    let ids = match &parsed.prompt {
        Prompt::Text(t) => prompt::token_ids(t),
        Prompt::Ids(ids) => ids.clone(),
    };
    let n = rep.next_id.fetch_add(1, Ordering::Relaxed);
    let obj = serde_json::json!({
        "request_id": format!("render-{}-{n}", rep.addr.port()),
        "token_ids": ids,
        "model": parsed.model.as_deref().unwrap_or(&rep.shared.cfg.model),
        "sampling_params": {"max_tokens": parsed.max_tokens},
    });
    let out = match api {
        Api::Completions => serde_json::Value::Array(vec![obj]),
        Api::Chat => obj,
    };
    json(StatusCode::OK, out.to_string())
}

async fn tokenize(rep: &Arc<Replica>, req: Request<Incoming>) -> Response<SimBody> {
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let has_messages = serde_json::from_slice::<serde_json::Value>(&body).is_ok_and(|v| v.get("messages").is_some());
    let api = if has_messages { Api::Chat } else { Api::Completions };
    let parsed = match openai::parse(api, &body) {
        Ok(p) => p,
        Err(m) => return bad_request(&m),
    };
    let ids = match &parsed.prompt {
        Prompt::Text(t) => prompt::token_ids(t),
        Prompt::Ids(ids) => ids.clone(),
    };
    json(
        StatusCode::OK,
        serde_json::json!({"count": ids.len(), "max_model_len": rep.shared.cfg.profile.max_model_len, "tokens": ids})
            .to_string(),
    )
}

#[derive(serde::Deserialize)]
struct LoraBody {
    lora_name: String,
    #[serde(default)]
    lora_path: Option<String>,
}

async fn lora_body(req: Request<Incoming>) -> Result<LoraBody, Response<SimBody>> {
    let body = read_body(req).await?;
    serde_json::from_slice(&body).map_err(|e| bad_request(&format!("invalid JSON body: {e}")))
}

async fn load_lora(rep: &Arc<Replica>, req: Request<Incoming>) -> Response<SimBody> {
    let b = match lora_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut st = rep.state.lock();
    if st.engine.config().max_loras == 0 {
        return bad_request("LoRA is not enabled on this server (start it with --max-loras or --lora-adapters)");
    }
    if b.lora_name.is_empty() || b.lora_path.as_deref().is_some_and(str::is_empty) {
        return bad_request("Both 'lora_name' and 'lora_path' must be provided.");
    }
    if b.lora_name == rep.shared.cfg.model || st.adapters.contains(&b.lora_name) {
        return bad_request(&format!("The lora adapter '{}' has already been loaded.", b.lora_name));
    }
    st.adapters.push(b.lora_name.clone());
    respond(StatusCode::OK, "text/plain", format!("Success: LoRA adapter '{}' added successfully.", b.lora_name))
}

async fn unload_lora(rep: &Arc<Replica>, req: Request<Incoming>) -> Response<SimBody> {
    let b = match lora_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut st = rep.state.lock();
    let Some(i) = st.adapters.iter().position(|a| *a == b.lora_name) else {
        return error(
            StatusCode::NOT_FOUND,
            "NotFoundError",
            &format!("The lora adapter '{}' cannot be found.", b.lora_name),
        );
    };
    st.adapters.remove(i);
    respond(StatusCode::OK, "text/plain", format!("Success: LoRA adapter '{}' removed successfully.", b.lora_name))
}
