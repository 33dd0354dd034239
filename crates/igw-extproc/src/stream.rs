//! The per-stream state machine: one ext_proc stream is one HTTP request and its response.
//!
//! [`StreamState`] is a plain struct fed [`ProcessingRequest`]s; it answers with
//! [`ProcessingResponse`]s and never does I/O. It drives the request core
//! ([`igw_request::PoolCore`]): the one asynchronous step, admission (flow control may hold the
//! request), is handed to the caller as [`Step::Pick`]; the caller awaits [`Pool::admit`] and
//! feeds the admitted request back with [`StreamState::on_picked`], which decides and answers. The
//! gRPC server in `server.rs` is a thin loop around this.
//!
//! Body modes, read from `protocol_config` on the first message (absent: full duplex):
//!
//! * `FULL_DUPLEX_STREAMED` (what upstream's EPP requires): the request headers response is held
//!   until the body is complete; then one headers response carries the destination header and
//!   `envoy.lb` metadata, followed by the (possibly rewritten) body as `streamed_response`
//!   chunks of at most 62,000 bytes. Response chunks are echoed as `streamed_response` too.
//! * `BUFFERED` / `BUFFERED_PARTIAL` / `STREAMED`: request headers are answered at once; the
//!   destination goes into the header mutation of the final request body response, with the
//!   whole body as a replacement when it was rewritten. Response chunks are answered with a
//!   replacement body only when the model name had to be written back. Under `STREAMED` the
//!   upstream is usually chosen before the body ends, so routing by body needs a buffered mode.
//! * `NONE` request body: the request is routed like a body-less one (any endpoint).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyMutation, BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, HttpBody, HttpHeaders,
    ImmediateResponse, ProcessingRequest, ProcessingResponse, StreamedBodyResponse, TrailersResponse, body_mutation,
    processing_request, processing_response,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use igw_core::Snapshot;
use igw_request::error::MSG_NO_CANDIDATES;
use igw_request::headers::{
    CONFORMANCE_SERVED_ENDPOINT, DESTINATION_ENDPOINT, DESTINATION_ENDPOINT_SERVED, ENVOY_LB_NAMESPACE,
    TEST_ENDPOINT_SELECTION,
};
use igw_request::{
    BodyBuffer, DEFAULT_MAX_BODY_BYTES, EndpointSubset, ErrorCode, HeaderMutations, ModelNameRestorer, Pool, Prepared,
    PreparedRequest, Request, RequestError, RequestHead, ResponseTracker, streamed_chunks,
};
use tonic::Status;

use crate::metadata::{destination_metadata, header_value, served_endpoint, set_header, subset_hint};

/// Response header naming the endpoint the EPP picked (conformance test mode).
pub const CONFORMANCE_SELECTED_ENDPOINT: &str = "x-conformance-test-selected-endpoint";
/// Response header naming the EPP's pool as `namespace/name` (conformance test mode).
pub const CONFORMANCE_EPP_POOL: &str = "x-conformance-test-epp-pool";
/// Request header the conformance echo server copies into its response (`name:value`).
pub const ECHO_SET_HEADER: &str = "x-echo-set-header";

/// Per-stream behaviour, shared by all streams of a server.
#[derive(Clone, Debug)]
pub struct StreamConfig {
    /// How many endpoints (primary plus fallbacks) to send. Default 1: `ORIGINAL_DST` clusters
    /// and older `override_host` builds accept a single address only.
    pub max_endpoints: usize,
    /// Largest request body accepted; larger bodies get 413.
    pub max_body_bytes: usize,
    /// Ignore the gateway's subset hint (`--disable-endpoint-subset-filter`).
    pub disable_subset_filter: bool,
    /// Conformance test mode (upstream's `header-based-testing-filter` plugin): a request's
    /// `test-epp-endpoint-selection` header (`ip` or `ip:port`, comma-separated) confines its pick
    /// to those endpoints; without the header every endpoint stays eligible.
    pub test_endpoint_selection: bool,
    /// Conformance test mode (upstream's `destination-endpoint-served-verifier` plugin): responses
    /// carry `x-conformance-test-served-endpoint` (the gateway's `envoy.lb` served endpoint, or a
    /// `fail: ...` reason), `x-conformance-test-selected-endpoint` (the pick) and, when
    /// [`pool`](Self::pool) is set, `x-conformance-test-epp-pool`.
    pub served_endpoint_verifier: bool,
    /// The pool as `namespace/name`, for `x-conformance-test-epp-pool`.
    pub pool: Option<String>,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            max_endpoints: 1,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            disable_subset_filter: false,
            test_endpoint_selection: false,
            served_endpoint_verifier: false,
            pool: None,
        }
    }
}

/// What the caller does after feeding a message.
#[derive(Debug)]
pub enum Step {
    /// Send these responses (possibly none) in order, then read the next message.
    Reply(Vec<ProcessingResponse>),
    /// The request is complete: await [`Pool::admit`] on it and pass the result to
    /// [`StreamState::on_picked`].
    Pick(PendingPick),
    /// End the stream with this gRPC error (the gateway then applies its failure mode).
    Fail(Status),
}

/// The addresses a request is sent to, primary first.
struct Picked {
    endpoints: Vec<SocketAddr>,
}

/// A complete request waiting for its pick.
#[derive(Debug)]
pub struct PendingPick {
    prepared: Box<PreparedRequest>,
    subset: Option<EndpointSubset>,
    ended_by_trailers: bool,
}

impl PendingPick {
    /// The prepared request.
    pub fn prepared(&self) -> &PreparedRequest {
        &self.prepared
    }

    /// The gateway's subset hint, if it sent one.
    pub fn subset(&self) -> Option<&EndpointSubset> {
        self.subset.as_ref()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Reading the request.
    Request,
    /// The request is complete; the pick is being awaited.
    Picking,
    /// The request was forwarded; following the response.
    Response,
    /// Answered (or failed); nothing more to say.
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RequestMode {
    Duplex,
    Buffered,
    NoBody,
}

/// The state of one ext_proc stream. Dropping it before the response ended drops its
/// [`Request`], which ends it without a summary: the core's accounting survives aborted streams.
pub struct StreamState {
    pool: Arc<Pool>,
    config: Arc<StreamConfig>,
    modes_known: bool,
    request_mode: RequestMode,
    response_duplex: bool,
    response_has_body: bool,
    phase: Phase,
    head: Option<RequestHead>,
    body: BodyBuffer,
    subset: Option<EndpointSubset>,
    request: Option<Request>,
    /// Headers the core adds to the client's response (a session token).
    response_headers: Vec<(String, String)>,
    tracker: ResponseTracker,
    restorer: ModelNameRestorer,
    served: Option<SocketAddr>,
    /// What the gateway's metadata said about the served endpoint (for the verifier).
    served_report: ServedReport,
    /// The primary endpoint picked (for the verifier).
    selected: Option<SocketAddr>,
    /// The request's OpenTelemetry spans.
    #[cfg(feature = "otel")]
    span: Option<crate::otel::RequestSpan>,
}

/// What the `envoy.lb` metadata said about the endpoint that served the response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum ServedReport {
    /// No `envoy.lb` metadata arrived.
    #[default]
    NoLbMetadata,
    /// `envoy.lb` arrived without a usable served endpoint.
    NoServedKey,
    /// The served endpoint.
    Served(SocketAddr),
}

impl std::fmt::Debug for StreamState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamState")
            .field("phase", &self.phase)
            .field("request_mode", &self.request_mode)
            .field("response_duplex", &self.response_duplex)
            .field("request", &self.request)
            .finish_non_exhaustive()
    }
}

impl StreamState {
    /// A fresh stream.
    pub fn new(pool: Arc<Pool>, config: Arc<StreamConfig>) -> Self {
        let body = BodyBuffer::new(config.max_body_bytes);
        StreamState {
            pool,
            config,
            modes_known: false,
            request_mode: RequestMode::Duplex,
            response_duplex: true,
            response_has_body: true,
            phase: Phase::Request,
            head: None,
            body,
            subset: None,
            request: None,
            response_headers: Vec::new(),
            tracker: ResponseTracker::default(),
            restorer: ModelNameRestorer::default(),
            served: None,
            served_report: ServedReport::NoLbMetadata,
            selected: None,
            #[cfg(feature = "otel")]
            span: None,
        }
    }

    /// True once the stream has nothing more to say: the caller may close it.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Feeds one message from the gateway.
    pub fn on_message(&mut self, msg: ProcessingRequest) -> Step {
        if !self.modes_known {
            self.read_modes(&msg);
        }
        if let Some(md) = &msg.metadata_context {
            if self.phase == Phase::Request
                && !self.config.disable_subset_filter
                && let Some(s) = subset_hint(md)
            {
                self.subset = Some(s);
            }
            if let Some(addr) = served_endpoint(md) {
                self.served = Some(addr);
                self.served_report = ServedReport::Served(addr);
                // Envoy may have used a fallback: the accounting follows the endpoint it reports.
                let now = self.pool.now();
                if let Some(r) = &mut self.request {
                    r.served_by(addr, now);
                }
            } else if md.filter_metadata.contains_key(ENVOY_LB_NAMESPACE) && self.served.is_none() {
                self.served_report = ServedReport::NoServedKey;
            }
        }
        if self.phase == Phase::Done {
            return Step::Reply(Vec::new());
        }
        use processing_request::Request;
        let result = match msg.request {
            None => Ok(Step::Reply(Vec::new())),
            Some(Request::RequestHeaders(h)) => self.on_request_headers(h),
            Some(Request::RequestBody(b)) => self.on_request_body(b),
            Some(Request::RequestTrailers(_)) => self.on_request_trailers(),
            Some(Request::ResponseHeaders(h)) => self.on_response_headers(h),
            Some(Request::ResponseBody(b)) => self.on_response_body(b),
            Some(Request::ResponseTrailers(_)) => self.on_response_trailers(),
        };
        result.unwrap_or_else(|e| self.fail(e))
    }

    /// Feeds the result of admission ([`Pool::admit`]) for `pending`: decides where the request
    /// goes and answers the gateway.
    pub fn on_picked(&mut self, pending: PendingPick, result: Result<Request, RequestError>) -> Step {
        if self.phase != Phase::Picking {
            return self.fail(RequestError::internal("pick result without a pending request"));
        }
        let mut request = match result {
            Ok(r) => r,
            Err(e) => return self.fail(e),
        };
        let now = self.pool.now();
        let endpoints: Vec<SocketAddr> = match request.decide(&pending.prepared, pending.subset.as_ref(), now) {
            Ok(eps) => eps.iter().take(self.config.max_endpoints.max(1)).map(|e| e.address()).collect(),
            // The request is dropped here: its place in flow control is released.
            Err(e) => return self.fail(e),
        };
        if let Some(primary) = request.endpoints().first().cloned() {
            request.attempt(&primary, now);
        }
        self.response_headers = request.response_headers();
        let picked = Picked { endpoints };
        let PendingPick { prepared, ended_by_trailers, .. } = pending;
        let mut mutations = prepared.mutations.clone();
        if prepared.request.header(DESTINATION_ENDPOINT_SERVED).is_some() {
            mutations.remove_header(DESTINATION_ENDPOINT_SERVED);
        }
        let destination = mutations.set_destination(&picked.endpoints);
        self.selected = picked.endpoints.first().copied();
        self.echo_selected(&mut mutations);
        #[cfg(feature = "otel")]
        if let Some(span) = &mut self.span {
            span.picked(Ok(&destination), &mut mutations);
        }
        self.tracker = prepared.response_tracker();
        self.restorer = prepared.model_restorer();
        self.request = Some(request);
        self.phase = Phase::Response;
        let mut out = Vec::new();
        if self.request_mode == RequestMode::Duplex {
            out.push(request_headers_response(&mutations, &destination));
            let last_eos = !ended_by_trailers;
            out.extend(streamed(&prepared.body, last_eos, Direction::Request));
        } else {
            let common = CommonResponse {
                header_mutation: Some(header_mutation(&mutations)),
                body_mutation: prepared
                    .body_rewritten
                    .then(|| BodyMutation { mutation: Some(body_mutation::Mutation::Body(prepared.body.to_vec())) }),
                clear_route_cache: true,
                ..Default::default()
            };
            out.push(ProcessingResponse {
                response: Some(processing_response::Response::RequestBody(BodyResponse { response: Some(common) })),
                dynamic_metadata: Some(destination_metadata(&destination)),
                ..Default::default()
            });
        }
        if ended_by_trailers {
            out.push(trailers_response(Direction::Request));
        }
        Step::Reply(out)
    }

    fn read_modes(&mut self, msg: &ProcessingRequest) {
        let Some(pc) = &msg.protocol_config else { return };
        self.modes_known = true;
        let duplex = |m: i32| {
            matches!(BodySendMode::try_from(m), Ok(BodySendMode::FullDuplexStreamed | BodySendMode::Grpc) | Err(_))
        };
        self.request_mode = if duplex(pc.request_body_mode) {
            RequestMode::Duplex
        } else if pc.request_body_mode == BodySendMode::None as i32 {
            RequestMode::NoBody
        } else {
            RequestMode::Buffered
        };
        self.response_duplex = duplex(pc.response_body_mode);
        self.response_has_body = pc.response_body_mode != BodySendMode::None as i32;
    }

    fn on_request_headers(&mut self, h: HttpHeaders) -> Result<Step, RequestError> {
        if self.phase != Phase::Request || self.head.is_some() {
            return Err(protocol_error("request headers received twice"));
        }
        let pairs: Vec<(String, String)> = h
            .headers
            .iter()
            .flat_map(|m| m.headers.iter())
            .map(|hv| (hv.key.clone(), header_value(hv).into_owned()))
            .collect();
        let head = self.pool.core().head(None, pairs);
        #[cfg(feature = "otel")]
        {
            self.span = Some(crate::otel::RequestSpan::start(&head.headers));
        }
        if h.end_of_stream || self.request_mode == RequestMode::NoBody {
            return self.route_without_body(head);
        }
        self.head = Some(head);
        Ok(Step::Reply(match self.request_mode {
            RequestMode::Duplex => Vec::new(),
            _ => vec![ProcessingResponse {
                response: Some(processing_response::Response::RequestHeaders(HeadersResponse::default())),
                ..Default::default()
            }],
        }))
    }

    /// A request without a body: any endpoint, answered at once (no parsing or scheduling).
    fn route_without_body(&mut self, head: RequestHead) -> Result<Step, RequestError> {
        let client_sent_served = head.headers.iter().any(|(k, _)| k == DESTINATION_ENDPOINT_SERVED);
        let Prepared::NoBody(nb) = head.clone().prepare(None, &Snapshot::default(), 0)? else {
            return Err(RequestError::internal("body-less request prepared with a body"));
        };
        let addr = match self.steering(&head) {
            Some(steer) => self.pick_steered(&steer)?,
            None => self.pool.core().pick_any()?.address(),
        };
        self.selected = Some(addr);
        let mut mutations = nb.mutations;
        self.echo_selected(&mut mutations);
        if client_sent_served {
            mutations.remove_header(DESTINATION_ENDPOINT_SERVED);
        }
        let destination = mutations.set_destination(&[addr]);
        #[cfg(feature = "otel")]
        if let Some(span) = &mut self.span {
            span.picked(Ok(&destination), &mut mutations);
        }
        self.phase = Phase::Response;
        Ok(Step::Reply(vec![request_headers_response(&mutations, &destination)]))
    }

    fn on_request_body(&mut self, b: HttpBody) -> Result<Step, RequestError> {
        if self.phase != Phase::Request || self.head.is_none() {
            return Err(protocol_error("request body outside the request"));
        }
        self.body.push(&b.body)?;
        if b.end_of_stream {
            return self.complete_request(false);
        }
        Ok(Step::Reply(match self.request_mode {
            RequestMode::Duplex => Vec::new(),
            _ => vec![body_response(Direction::Request, None)],
        }))
    }

    fn on_request_trailers(&mut self) -> Result<Step, RequestError> {
        match self.phase {
            // Trailers end a request whose body did not carry end_of_stream.
            Phase::Request if self.head.is_some() => self.complete_request(true),
            _ => Ok(Step::Reply(vec![trailers_response(Direction::Request)])),
        }
    }

    fn complete_request(&mut self, ended_by_trailers: bool) -> Result<Step, RequestError> {
        let head = self.head.take().ok_or_else(|| protocol_error("request completed without headers"))?;
        let body = self.body.take();
        let snapshot = self.pool.core().snapshot();
        if let Some(steer) = self.steering(&head) {
            // Confine the pick to the steered endpoints (and the gateway's hint, when it sent one).
            let hint = self.subset.take();
            let allowed = snapshot
                .endpoints
                .iter()
                .map(|e| e.address())
                .filter(|a| steer.admits(*a) && hint.as_ref().is_none_or(|h| h.admits(*a)));
            self.subset = Some(EndpointSubset::of_addresses(allowed));
        }
        let prepared = match self.pool.core().prepare(head, Some(body), None)? {
            Prepared::Inference(p) => p,
            Prepared::NoBody(_) => return Err(RequestError::internal("request with a body prepared as body-less")),
        };
        self.phase = Phase::Picking;
        #[cfg(feature = "otel")]
        if let Some(span) = &mut self.span {
            span.start_orchestration(&prepared.request.model, &prepared.request.target_model);
        }
        Ok(Step::Pick(PendingPick { prepared, subset: self.subset.clone(), ended_by_trailers }))
    }

    fn on_response_headers(&mut self, h: HttpHeaders) -> Result<Step, RequestError> {
        self.enter_response()?;
        let now = self.pool.now();
        if let Some(r) = &mut self.request {
            r.first_byte(now);
        }
        self.tracker
            .on_headers(h.headers.iter().flat_map(|m| m.headers.iter()).map(|hv| (hv.key.as_str(), header_str(hv))));
        let reply = ProcessingResponse {
            response: Some(processing_response::Response::ResponseHeaders(self.response_headers_answer())),
            ..Default::default()
        };
        if h.end_of_stream || !self.response_has_body {
            self.finish_response();
        }
        Ok(Step::Reply(vec![reply]))
    }

    fn on_response_body(&mut self, b: HttpBody) -> Result<Step, RequestError> {
        self.enter_response()?;
        if self.tracker.on_body(&b.body)
            && let Some(r) = &mut self.request
        {
            r.first_token(self.pool.now());
        }
        let original = Bytes::from(b.body);
        let mut out = self.restorer.push(original.clone());
        if b.end_of_stream {
            let rest = self.restorer.finish();
            if !rest.is_empty() {
                out = concat(out, rest);
            }
        }
        let reply = if self.response_duplex {
            if out.is_empty() && !b.end_of_stream {
                Vec::new()
            } else {
                streamed(&out, b.end_of_stream, Direction::Response)
            }
        } else {
            let replacement = (self.restorer.is_active() && out != original).then_some(out);
            vec![body_response(Direction::Response, replacement)]
        };
        if b.end_of_stream {
            self.finish_response();
        }
        Ok(Step::Reply(reply))
    }

    fn on_response_trailers(&mut self) -> Result<Step, RequestError> {
        self.enter_response()?;
        let mut out = Vec::new();
        let rest = self.restorer.finish();
        if self.response_duplex && !rest.is_empty() {
            out.extend(streamed(&rest, false, Direction::Response));
        }
        out.push(trailers_response(Direction::Response));
        self.finish_response();
        Ok(Step::Reply(out))
    }

    /// The steering subset of a request, in conformance test mode when it carries the header.
    fn steering(&self, head: &RequestHead) -> Option<EndpointSubset> {
        if !self.config.test_endpoint_selection {
            return None;
        }
        let (_, v) = head.headers.iter().find(|(k, _)| k == TEST_ENDPOINT_SELECTION)?;
        Some(EndpointSubset::steering(v))
    }

    /// A uniformly random endpoint among the steered ones (body-less requests); none → 503.
    fn pick_steered(&self, steer: &EndpointSubset) -> Result<SocketAddr, RequestError> {
        let snapshot = self.pool.core().snapshot();
        let hint = self.subset.as_ref();
        let eligible: Vec<SocketAddr> = snapshot
            .endpoints
            .iter()
            .map(|e| e.address())
            .filter(|a| steer.admits(*a) && hint.is_none_or(|h| h.admits(*a)))
            .collect();
        if eligible.is_empty() {
            return Err(RequestError::service_unavailable(MSG_NO_CANDIDATES));
        }
        let i = self.pool.core().draw() % eligible.len() as u64;
        Ok(eligible[i as usize])
    }

    /// Asks the conformance echo backend to reflect the pick (`X-Echo-Set-Header`), as upstream's
    /// test EPP does.
    fn echo_selected(&self, mutations: &mut HeaderMutations) {
        if let (true, Some(addr)) = (self.config.served_endpoint_verifier, self.selected) {
            mutations.set_header(ECHO_SET_HEADER, format!("{CONFORMANCE_SERVED_ENDPOINT}:{addr}"));
        }
    }

    /// The response-headers answer: the picker's response headers (e.g. a session token) and,
    /// in conformance test mode, the verifier's; empty when there are none.
    fn response_headers_answer(&self) -> HeadersResponse {
        let mut set: Vec<_> = self.response_headers.iter().map(|(k, v)| set_header(k, v)).collect();
        if self.config.served_endpoint_verifier {
            set.extend(self.verifier_headers());
        }
        if set.is_empty() {
            return HeadersResponse::default();
        }
        HeadersResponse {
            response: Some(CommonResponse {
                header_mutation: Some(HeaderMutation { set_headers: set, remove_headers: Vec::new() }),
                ..Default::default()
            }),
        }
    }

    /// The conformance verifier's response headers.
    fn verifier_headers(&self) -> Vec<envoy_types::pb::envoy::config::core::v3::HeaderValueOption> {
        let served = match self.served_report {
            ServedReport::Served(addr) => addr.to_string(),
            ServedReport::NoLbMetadata => "fail: missing envoy lb metadata".to_string(),
            ServedReport::NoServedKey => "fail: missing destination endpoint served metadata".to_string(),
        };
        let mut set = vec![set_header(CONFORMANCE_SERVED_ENDPOINT, &served)];
        if let Some(addr) = self.selected {
            set.push(set_header(CONFORMANCE_SELECTED_ENDPOINT, &addr.to_string()));
        }
        if let Some(pool) = &self.config.pool {
            set.push(set_header(CONFORMANCE_EPP_POOL, pool));
        }
        set
    }

    /// Response messages are only expected once the request was answered.
    fn enter_response(&mut self) -> Result<(), RequestError> {
        match self.phase {
            Phase::Response => Ok(()),
            _ => Err(protocol_error("response message before the request was answered")),
        }
    }

    fn finish_response(&mut self) {
        self.phase = Phase::Done;
        if let Some(request) = self.request.take() {
            let summary = self.tracker.finish();
            request.end(Some(&summary), self.pool.now());
        }
    }

    /// Answers an error: an ImmediateResponse for codes that have an HTTP status, else a gRPC
    /// error that ends the stream.
    fn fail(&mut self, e: RequestError) -> Step {
        self.phase = Phase::Done;
        #[cfg(feature = "otel")]
        if let Some(span) = &mut self.span {
            span.failed(e.http_status(), &e.to_string());
        }
        match e.immediate_status() {
            Some(status) => Step::Reply(vec![immediate_response(status, &e)]),
            None => {
                let code = match e.code {
                    ErrorCode::ModelServerError => tonic::Code::Internal,
                    _ => tonic::Code::Unknown,
                };
                Step::Fail(Status::new(code, format!("failed to handle request: {e}")))
            }
        }
    }
}

fn protocol_error(msg: &str) -> RequestError {
    RequestError::new(ErrorCode::Unknown, format!("unexpected ext_proc message: {msg}"))
}

fn header_str(hv: &envoy_types::pb::envoy::config::core::v3::HeaderValue) -> &str {
    if hv.raw_value.is_empty() { &hv.value } else { std::str::from_utf8(&hv.raw_value).unwrap_or("") }
}

fn concat(a: Bytes, b: Bytes) -> Bytes {
    if a.is_empty() {
        return b;
    }
    let mut v = Vec::with_capacity(a.len() + b.len());
    v.extend_from_slice(&a);
    v.extend_from_slice(&b);
    Bytes::from(v)
}

/// Which direction of the stream a body message belongs to.
#[derive(Clone, Copy)]
pub(crate) enum Direction {
    Request,
    Response,
}

fn header_mutation(m: &HeaderMutations) -> HeaderMutation {
    // The destination first, as upstream orders it; then the rest in the order they were set.
    let dest = m.set.iter().filter(|(k, _)| k == DESTINATION_ENDPOINT);
    let rest = m.set.iter().filter(|(k, _)| k != DESTINATION_ENDPOINT);
    HeaderMutation {
        set_headers: dest.chain(rest).map(|(k, v)| set_header(k, v)).collect(),
        remove_headers: m.remove.clone(),
    }
}

/// The request-headers response carrying the destination (header and `envoy.lb` metadata).
fn request_headers_response(m: &HeaderMutations, destination: &str) -> ProcessingResponse {
    let common =
        CommonResponse { header_mutation: Some(header_mutation(m)), clear_route_cache: true, ..Default::default() };
    ProcessingResponse {
        response: Some(processing_response::Response::RequestHeaders(HeadersResponse { response: Some(common) })),
        dynamic_metadata: Some(destination_metadata(destination)),
        ..Default::default()
    }
}

fn body_response(dir: Direction, replacement: Option<Bytes>) -> ProcessingResponse {
    let common = replacement.map(|b| CommonResponse {
        body_mutation: Some(BodyMutation { mutation: Some(body_mutation::Mutation::Body(b.to_vec())) }),
        ..Default::default()
    });
    let br = BodyResponse { response: common };
    let response = match dir {
        Direction::Request => processing_response::Response::RequestBody(br),
        Direction::Response => processing_response::Response::ResponseBody(br),
    };
    ProcessingResponse { response: Some(response), ..Default::default() }
}

fn trailers_response(dir: Direction) -> ProcessingResponse {
    let response = match dir {
        Direction::Request => processing_response::Response::RequestTrailers(TrailersResponse::default()),
        Direction::Response => processing_response::Response::ResponseTrailers(TrailersResponse::default()),
    };
    ProcessingResponse { response: Some(response), ..Default::default() }
}

/// `body` as `streamed_response` body responses of at most 62,000 bytes; `end_of_stream` on the
/// last one when `eos`. An empty body is one empty message.
pub(crate) fn streamed(body: &Bytes, eos: bool, dir: Direction) -> Vec<ProcessingResponse> {
    let n = body.len().div_ceil(igw_request::MAX_STREAMED_CHUNK_BYTES).max(1);
    streamed_chunks(body)
        .enumerate()
        .map(|(i, chunk)| {
            let sbr =
                StreamedBodyResponse { body: chunk.to_vec(), end_of_stream: eos && i + 1 == n, ..Default::default() };
            let common = CommonResponse {
                body_mutation: Some(BodyMutation { mutation: Some(body_mutation::Mutation::StreamedResponse(sbr)) }),
                ..Default::default()
            };
            let br = BodyResponse { response: Some(common) };
            let response = match dir {
                Direction::Request => processing_response::Response::RequestBody(br),
                Direction::Response => processing_response::Response::ResponseBody(br),
            };
            ProcessingResponse { response: Some(response), ..Default::default() }
        })
        .collect()
}

fn immediate_response(status: u16, e: &RequestError) -> ProcessingResponse {
    let ir = ImmediateResponse {
        status: Some(HttpStatus { code: i32::from(status) }),
        body: e.envoy_body().into_bytes(),
        ..Default::default()
    };
    ProcessingResponse { response: Some(processing_response::Response::ImmediateResponse(ir)), ..Default::default() }
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
