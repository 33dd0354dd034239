//! The Body-Based Router (`igw bbr`): an ext_proc server placed before routing that copies body
//! fields into request headers, so that HTTPRoute header matches can pick the InferencePool.
//!
//! OpenAI clients name the model in the JSON body; Gateway API routes can only match headers and
//! paths. With the default plugins a request `{"model":"food-review-1",...}` leaves with
//! `X-Gateway-Model-Name: food-review-1` and, when `food-review-1` is a known LoRA adapter of
//! `Qwen/Qwen3-32B`, `X-Gateway-Base-Model-Name: Qwen/Qwen3-32B`; `clear_route_cache` makes the
//! gateway route again on them. The body itself is never changed.
//!
//! Wire behaviour follows upstream's BBR (`../shared/spec/epp-protocol.md` §6.3):
//!
//! * `FULL_DUPLEX_STREAMED`: request headers are held until the body ends; then one headers
//!   response (the new headers, `content-length` of the body, `clear_route_cache`) followed by the
//!   body as `streamed_response` chunks of at most 62,000 bytes. Response chunks are echoed.
//! * `BUFFERED`: request headers are answered at once; the complete body is answered with the
//!   header mutation and `clear_route_cache`, without a body mutation.
//! * A body that is not a JSON object is answered 400. Trailers get empty answers.
//!
//! [`BbrStream`] is the sans-IO state machine; [`serve_bbr`] runs it behind tonic.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, HttpBody, HttpHeaders, ImmediateResponse,
    ProcessingRequest, ProcessingResponse, TrailersResponse, processing_request, processing_response,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use futures::FutureExt;
use igw_request::metrics::{SCHEDULER_BUCKETS, counters, gauges, histograms, observe, render_registry};
use igw_request::{BodyBuffer, DEFAULT_MAX_BODY_BYTES};
use prometheus::{GaugeVec, Histogram, HistogramVec, IntCounter, IntCounterVec, Registry};
use serde_json::Value;
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::conn::incoming;
use crate::health::Health;
use crate::metadata::set_header;
use crate::server::{Listeners, ServeError};
use crate::stream::{Direction, streamed};
use crate::tls::{TlsConfig, server_config};

/// Header the default `body-field-to-header` plugin writes.
pub const MODEL_NAME_HEADER: &str = "X-Gateway-Model-Name";
/// Header the `base-model-to-header` plugin writes.
pub const BASE_MODEL_NAME_HEADER: &str = "X-Gateway-Base-Model-Name";
/// Plugin type: copy a body field into a header.
pub const BODY_FIELD_TO_HEADER: &str = "body-field-to-header";
/// Plugin type: write the base model of the body's model (a LoRA adapter or a base model).
pub const BASE_MODEL_TO_HEADER: &str = "base-model-to-header";

/// A bad `--plugin` or base-model mapping.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BbrConfigError {
    /// The `--plugin` value is not `type:name[:json]`, names an unknown type, or has bad parameters.
    #[error("--plugin {spec:?}: {reason}")]
    Plugin {
        /// The flag's value.
        spec: String,
        /// What is wrong.
        reason: String,
    },
    /// The base-model mapping file does not decode.
    #[error("base model mapping: {0}")]
    Mapping(String),
}

/// One configured plugin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BbrPlugin {
    /// Copies `field` of the JSON body (its text; numbers and booleans as written) into `header`.
    BodyFieldToHeader {
        /// The plugin's name.
        name: String,
        /// Top-level body field.
        field: String,
        /// Header to set.
        header: String,
    },
    /// Writes [`BASE_MODEL_NAME_HEADER`]: the base model of the body's `model` when it is a known
    /// adapter, the model itself when it is a known base model, else the empty string.
    BaseModelToHeader {
        /// The plugin's name.
        name: String,
    },
}

impl BbrPlugin {
    /// Parses upstream's `--plugin type:name[:json]` syntax, e.g.
    /// `body-field-to-header:model-extractor:{"fieldName":"model","headerName":"X-Gateway-Model-Name"}`.
    pub fn parse(spec: &str) -> Result<Self, BbrConfigError> {
        let err = |reason: &str| BbrConfigError::Plugin { spec: spec.to_string(), reason: reason.to_string() };
        let mut parts = spec.splitn(3, ':');
        let kind = parts.next().unwrap_or_default().trim();
        let name = parts.next().map(str::trim).filter(|n| !n.is_empty()).ok_or_else(|| err("expected type:name"))?;
        let params: Option<Value> = match parts.next() {
            Some(json) => Some(serde_json::from_str(json).map_err(|e| err(&format!("parameters are not JSON: {e}")))?),
            None => None,
        };
        match kind {
            BODY_FIELD_TO_HEADER => {
                let get = |k: &str, default: &str| -> Result<String, BbrConfigError> {
                    match params.as_ref().and_then(|p| p.get(k)) {
                        None => Ok(default.to_string()),
                        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                        Some(_) => Err(err(&format!("{k} must be a non-empty string"))),
                    }
                };
                Ok(BbrPlugin::BodyFieldToHeader {
                    name: name.to_string(),
                    field: get("fieldName", "model")?,
                    header: get("headerName", MODEL_NAME_HEADER)?,
                })
            }
            BASE_MODEL_TO_HEADER => Ok(BbrPlugin::BaseModelToHeader { name: name.to_string() }),
            other => Err(err(&format!(
                "unknown plugin type {other:?}; known: {BODY_FIELD_TO_HEADER}, {BASE_MODEL_TO_HEADER}"
            ))),
        }
    }

    fn type_and_name(&self) -> (&'static str, &str) {
        match self {
            BbrPlugin::BodyFieldToHeader { name, .. } => (BODY_FIELD_TO_HEADER, name),
            BbrPlugin::BaseModelToHeader { name } => (BASE_MODEL_TO_HEADER, name),
        }
    }
}

/// Base models and their LoRA adapters (upstream reads them from ConfigMaps labelled
/// `inference.networking.k8s.io/bbr-managed: "true"` with keys `baseModel` and `adapters`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BaseModels {
    adapter_to_base: BTreeMap<String, String>,
    bases: std::collections::BTreeSet<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MappingEntry {
    base_model: String,
    #[serde(default)]
    adapters: Vec<String>,
}

impl BaseModels {
    /// Adds a base model and its adapters.
    pub fn add(&mut self, base: &str, adapters: impl IntoIterator<Item = impl Into<String>>) {
        self.bases.insert(base.to_string());
        for a in adapters {
            self.adapter_to_base.insert(a.into(), base.to_string());
        }
    }

    /// Parses a YAML list of `{baseModel: NAME, adapters: [A, B]}` entries.
    pub fn from_yaml(text: &str) -> Result<Self, BbrConfigError> {
        let entries: Vec<MappingEntry> =
            serde_saphyr::from_str(text).map_err(|e| BbrConfigError::Mapping(e.to_string()))?;
        let mut m = BaseModels::default();
        for e in entries {
            if e.base_model.is_empty() {
                return Err(BbrConfigError::Mapping("baseModel must not be empty".into()));
            }
            m.add(&e.base_model, e.adapters);
        }
        Ok(m)
    }

    /// The base model for `model`: its base if it is an adapter, itself if it is a base model,
    /// else the empty string.
    pub fn base_of(&self, model: &str) -> &str {
        if let Some(b) = self.adapter_to_base.get(model) {
            b
        } else if let Some(b) = self.bases.get(model) {
            b
        } else {
            ""
        }
    }
}

/// BBR's metrics under upstream's names (subsystem `bbr`). A request updates handles resolved
/// once per plugin: no label set is looked up or allocated per request.
#[derive(Debug)]
pub struct BbrMetrics {
    registry: Registry,
    /// `bbr_info` {commit, build_ref} = 1.
    pub info: GaugeVec,
    /// `bbr_success_total`: requests whose headers were set.
    pub success: IntCounterVec,
    /// `bbr_body_field_not_found_total` {field}.
    pub field_not_found: IntCounterVec,
    /// `bbr_body_field_empty_total` {field}.
    pub field_empty: IntCounterVec,
    /// `bbr_plugin_duration_seconds` {extension_point, plugin_type, plugin_name}.
    pub plugin_duration: HistogramVec,
    success_one: OnceLock<IntCounter>,
    plugins: OnceLock<Vec<PluginSeries>>,
}

/// Why a body-field plugin set no header.
enum Missing {
    NotFound,
    Empty,
}

/// The handles of one configured plugin.
#[derive(Debug)]
struct PluginSeries {
    kind: &'static str,
    name: String,
    field: Option<String>,
    duration: Histogram,
    not_found: OnceLock<IntCounter>,
    empty: OnceLock<IntCounter>,
}

impl PluginSeries {
    fn new(m: &BbrMetrics, plugin: &BbrPlugin) -> Self {
        let (kind, name) = plugin.type_and_name();
        let field = match plugin {
            BbrPlugin::BodyFieldToHeader { field, .. } => Some(field.clone()),
            BbrPlugin::BaseModelToHeader { .. } => None,
        };
        PluginSeries {
            kind,
            name: name.to_string(),
            field,
            duration: m.plugin_duration.with_label_values(&["RequestProcessing", name, kind]),
            not_found: OnceLock::new(),
            empty: OnceLock::new(),
        }
    }

    fn is_for(&self, plugin: &BbrPlugin) -> bool {
        let (kind, name) = plugin.type_and_name();
        let field = match plugin {
            BbrPlugin::BodyFieldToHeader { field, .. } => Some(field.as_str()),
            BbrPlugin::BaseModelToHeader { .. } => None,
        };
        self.kind == kind && self.name == name && self.field.as_deref() == field
    }
}

impl Default for BbrMetrics {
    fn default() -> Self {
        let r = Registry::new();
        let m = BbrMetrics {
            info: gauges(&r, "bbr_info", "General information of the current build of BBR.", &["build_ref", "commit"]),
            success: counters(&r, "bbr_success_total", "Count of successfully processed requests.", &[]),
            field_not_found: counters(
                &r,
                "bbr_body_field_not_found_total",
                "Count of requests whose body lacked the configured field.",
                &["field"],
            ),
            field_empty: counters(
                &r,
                "bbr_body_field_empty_total",
                "Count of requests whose body had the configured field empty.",
                &["field"],
            ),
            plugin_duration: histograms(
                &r,
                "bbr_plugin_duration_seconds",
                "Plugin processing latency distribution in seconds.",
                SCHEDULER_BUCKETS,
                &["extension_point", "plugin_name", "plugin_type"],
            ),
            registry: r,
            success_one: OnceLock::new(),
            plugins: OnceLock::new(),
        };
        let commit = option_env!("IGW_GIT_COMMIT").unwrap_or("unknown");
        m.info.with_label_values(&[env!("CARGO_PKG_VERSION"), commit]).set(1.0);
        m
    }
}

impl BbrMetrics {
    /// Appends every family in the Prometheus text format 0.0.4.
    pub fn render(&self, out: &mut String) {
        render_registry(&self.registry, out);
    }

    fn succeeded(&self) {
        self.success_one.get_or_init(|| self.success.with_label_values(&[] as &[&str])).inc();
    }

    /// Runs `record` with the handles of `plugins[i]`: resolved once for the plugin list the
    /// metrics first saw (the server's), and for any other list as a one-off.
    fn with_plugin(&self, plugins: &[BbrPlugin], i: usize, record: impl FnOnce(&PluginSeries, &Self)) {
        let cached = self.plugins.get_or_init(|| plugins.iter().map(|p| PluginSeries::new(self, p)).collect());
        match cached.get(i) {
            Some(s) if s.is_for(&plugins[i]) => record(s, self),
            _ => record(&PluginSeries::new(self, &plugins[i]), self),
        }
    }
}

impl PluginSeries {
    fn field_not_found(&self, m: &BbrMetrics) {
        let field = self.field.as_deref().unwrap_or_default();
        self.not_found.get_or_init(|| m.field_not_found.with_label_values(&[field])).inc();
    }

    fn field_empty(&self, m: &BbrMetrics) {
        let field = self.field.as_deref().unwrap_or_default();
        self.empty.get_or_init(|| m.field_empty.with_label_values(&[field])).inc();
    }
}

/// What every stream of a BBR server shares.
#[derive(Debug)]
pub struct BbrConfig {
    /// Plugins, run in order.
    pub plugins: Vec<BbrPlugin>,
    /// Base models and adapters for `base-model-to-header`.
    pub base_models: BaseModels,
    /// Largest body accepted (larger: 413).
    pub max_body_bytes: usize,
    /// Assume `FULL_DUPLEX_STREAMED` when the gateway sends no `protocol_config` (`--streaming`).
    pub streaming: bool,
    /// Metrics.
    pub metrics: Arc<BbrMetrics>,
}

impl BbrConfig {
    /// Upstream's default plugin set: the model into [`MODEL_NAME_HEADER`] and its base model into
    /// [`BASE_MODEL_NAME_HEADER`].
    pub fn default_plugins() -> Vec<BbrPlugin> {
        vec![
            BbrPlugin::BodyFieldToHeader {
                name: "model-extractor".into(),
                field: "model".into(),
                header: MODEL_NAME_HEADER.into(),
            },
            BbrPlugin::BaseModelToHeader { name: "base-model-mapper".into() },
        ]
    }
}

impl Default for BbrConfig {
    fn default() -> Self {
        BbrConfig {
            plugins: Self::default_plugins(),
            base_models: BaseModels::default(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            streaming: true,
            metrics: Arc::new(BbrMetrics::default()),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Request,
    Response,
    Done,
}

/// The state of one BBR stream (one HTTP request). Sans-IO: feed messages, send the answers.
#[derive(Debug)]
pub struct BbrStream {
    config: Arc<BbrConfig>,
    modes_known: bool,
    duplex: bool,
    response_duplex: bool,
    phase: Phase,
    body: BodyBuffer,
}

impl BbrStream {
    /// A new stream.
    pub fn new(config: Arc<BbrConfig>) -> Self {
        let duplex = config.streaming;
        BbrStream {
            body: BodyBuffer::new(config.max_body_bytes),
            config,
            modes_known: false,
            duplex,
            response_duplex: duplex,
            phase: Phase::Request,
        }
    }

    /// True once nothing more will be answered.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Feeds one message; returns the answers to send, in order.
    pub fn on_message(&mut self, msg: ProcessingRequest) -> Vec<ProcessingResponse> {
        if !self.modes_known
            && let Some(pc) = &msg.protocol_config
        {
            self.modes_known = true;
            let duplex = |m: i32| m == BodySendMode::FullDuplexStreamed as i32;
            self.duplex = duplex(pc.request_body_mode);
            self.response_duplex = duplex(pc.response_body_mode);
        }
        use processing_request::Request as R;
        match msg.request {
            Some(R::RequestHeaders(h)) => self.on_request_headers(&h),
            Some(R::RequestBody(b)) => self.on_request_body(b),
            Some(R::RequestTrailers(_)) => {
                vec![answer(processing_response::Response::RequestTrailers(TrailersResponse::default()))]
            }
            Some(R::ResponseHeaders(h)) => {
                if h.end_of_stream {
                    self.phase = Phase::Done;
                }
                vec![answer(processing_response::Response::ResponseHeaders(HeadersResponse::default()))]
            }
            Some(R::ResponseBody(b)) => self.on_response_body(b),
            Some(R::ResponseTrailers(_)) => {
                self.phase = Phase::Done;
                vec![answer(processing_response::Response::ResponseTrailers(TrailersResponse::default()))]
            }
            None => Vec::new(),
        }
    }

    fn on_request_headers(&mut self, h: &HttpHeaders) -> Vec<ProcessingResponse> {
        if h.end_of_stream {
            // No body, nothing to read: the request goes on unchanged.
            self.phase = Phase::Response;
            return vec![answer(processing_response::Response::RequestHeaders(HeadersResponse::default()))];
        }
        if self.duplex {
            Vec::new()
        } else {
            vec![answer(processing_response::Response::RequestHeaders(HeadersResponse::default()))]
        }
    }

    fn on_request_body(&mut self, b: HttpBody) -> Vec<ProcessingResponse> {
        if self.phase != Phase::Request {
            return Vec::new();
        }
        if let Err(e) = self.body.push(&b.body) {
            self.phase = Phase::Done;
            let e = igw_request::RequestError::from(e);
            return vec![immediate(e.http_status(), &e.envoy_body())];
        }
        if !b.end_of_stream {
            return if self.duplex {
                Vec::new()
            } else {
                vec![answer(processing_response::Response::RequestBody(BodyResponse::default()))]
            };
        }
        let body = self.body.take();
        let set = match self.run_plugins(&body) {
            Ok(set) => set,
            Err(reason) => {
                self.phase = Phase::Done;
                return vec![immediate(400, &format!("inference error: BadRequest - {reason}"))];
            }
        };
        self.config.metrics.succeeded();
        self.phase = Phase::Response;
        let mut headers: Vec<_> = set.iter().map(|(k, v)| set_header(k, v)).collect();
        if self.duplex {
            headers.push(set_header("content-length", &body.len().to_string()));
            let common = CommonResponse {
                header_mutation: Some(HeaderMutation { set_headers: headers, remove_headers: Vec::new() }),
                clear_route_cache: true,
                ..Default::default()
            };
            let mut out =
                vec![answer(processing_response::Response::RequestHeaders(HeadersResponse { response: Some(common) }))];
            out.extend(streamed(&body, true, Direction::Request));
            out
        } else {
            let common = CommonResponse {
                header_mutation: Some(HeaderMutation { set_headers: headers, remove_headers: Vec::new() }),
                clear_route_cache: true,
                ..Default::default()
            };
            vec![answer(processing_response::Response::RequestBody(BodyResponse { response: Some(common) }))]
        }
    }

    fn on_response_body(&mut self, b: HttpBody) -> Vec<ProcessingResponse> {
        let eos = b.end_of_stream;
        if eos {
            self.phase = Phase::Done;
        }
        if self.response_duplex {
            streamed(&Bytes::from(b.body), eos, Direction::Response)
        } else {
            vec![answer(processing_response::Response::ResponseBody(BodyResponse::default()))]
        }
    }

    /// Runs the plugins over a complete body: the headers to set, or why the body is bad.
    fn run_plugins(&self, body: &[u8]) -> Result<Vec<(String, String)>, String> {
        let json: Value = serde_json::from_slice(body).map_err(|e| format!("request body is not JSON: {e}"))?;
        let Value::Object(obj) = json else { return Err("request body is not a JSON object".into()) };
        let metrics = &self.config.metrics;
        let plugins = &self.config.plugins;
        let mut set = Vec::new();
        for (i, plugin) in plugins.iter().enumerate() {
            let t0 = std::time::Instant::now();
            let mut missing = None;
            match plugin {
                BbrPlugin::BodyFieldToHeader { field, header, .. } => match obj.get(field) {
                    None | Some(Value::Null) => missing = Some(Missing::NotFound),
                    Some(v) => {
                        let text = match v {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        if text.is_empty() {
                            missing = Some(Missing::Empty);
                        } else {
                            set.push((header.clone(), text));
                        }
                    }
                },
                BbrPlugin::BaseModelToHeader { .. } => {
                    let model = obj.get("model").and_then(Value::as_str).unwrap_or_default();
                    set.push((BASE_MODEL_NAME_HEADER.to_string(), self.config.base_models.base_of(model).to_string()));
                }
            }
            let secs = t0.elapsed().as_secs_f64();
            metrics.with_plugin(plugins, i, |series, m| {
                match missing {
                    Some(Missing::NotFound) => series.field_not_found(m),
                    Some(Missing::Empty) => series.field_empty(m),
                    None => {}
                }
                observe(&series.duration, secs);
            });
        }
        Ok(set)
    }
}

fn answer(r: processing_response::Response) -> ProcessingResponse {
    ProcessingResponse { response: Some(r), ..Default::default() }
}

fn immediate(status: u16, body: &str) -> ProcessingResponse {
    answer(processing_response::Response::ImmediateResponse(ImmediateResponse {
        status: Some(HttpStatus { code: i32::from(status) }),
        body: body.as_bytes().to_vec(),
        ..Default::default()
    }))
}

/// The `ExternalProcessor` service of BBR.
#[derive(Clone, Debug)]
pub struct BbrService {
    config: Arc<BbrConfig>,
}

impl BbrService {
    /// A service running `config`'s plugins on every stream.
    pub fn new(config: Arc<BbrConfig>) -> Self {
        BbrService { config }
    }
}

#[tonic::async_trait]
impl ExternalProcessor for BbrService {
    type ProcessStream = ReceiverStream<Result<ProcessingResponse, Status>>;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let mut state = BbrStream::new(self.config.clone());
        tokio::spawn(async move {
            while !state.is_done() {
                let msg = match inbound.message().await {
                    Ok(Some(m)) => m,
                    _ => return,
                };
                for r in state.on_message(msg) {
                    if tx.send(Ok(r)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Serves BBR on `listeners.ext_proc` (TLS per `tls`) and gRPC health on `listeners.health`
/// until `shutdown` completes.
pub async fn serve_bbr(
    config: Arc<BbrConfig>,
    tls: &TlsConfig,
    listeners: Listeners,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let tls = if tls.secure_serving { Some(server_config(tls)?) } else { None };
    let shutdown = shutdown.shared();
    let main = tonic::transport::Server::builder()
        .add_service(health.service())
        .add_service(ExternalProcessorServer::new(BbrService::new(config)))
        .serve_with_incoming_shutdown(incoming(listeners.ext_proc, tls), shutdown.clone());
    match listeners.health {
        None => main.await?,
        Some(l) => {
            let h = tonic::transport::Server::builder()
                .add_service(health.service())
                .serve_with_incoming_shutdown(incoming(l, None), shutdown);
            let (a, b) = tokio::join!(main, h);
            a?;
            b?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "bbr_tests.rs"]
mod tests;
