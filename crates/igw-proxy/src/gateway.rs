//! The request path of `igw serve`: parse once, pick, forward with fallbacks, stream back.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use igw_core::{ApiKind, Endpoint};
use igw_request::{
    ModelNameRestorer, Pool, Prepared, PreparedRequest, Request as CoreRequest, RequestError, ResponseTracker, headers,
    parse_body,
};

use arc_swap::ArcSwap;

use crate::body::{ObservedBody, Outcome, ResponseObserver};
use crate::openai_error::error_response;
use crate::routes::{RouteMatch, Routes};
use crate::upstream::{Transport, Upstream, UpstreamError};

/// The body of every response the gateway sends: its own (errors, `/v1/models`) or a replica's,
/// observed as it streams.
pub type ProxyBody<B = Incoming> = Either<Full<Bytes>, ObservedBody<B>>;

/// Response header naming the replica that served the request.
pub const SERVED_HEADER: &str = headers::DESTINATION_ENDPOINT_SERVED;

/// Tunables of the request path.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Largest request body accepted (413 above it).
    pub max_body_bytes: usize,
    /// How long to wait for a replica's response head before trying the next candidate.
    pub response_head_timeout: Duration,
    /// Candidates tried per request: the primary plus fallbacks (at least 1).
    pub max_attempts: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            max_body_bytes: igw_request::DEFAULT_MAX_BODY_BYTES,
            response_head_timeout: Duration::from_secs(300),
            max_attempts: 3,
        }
    }
}

/// The standalone gateway's request handler: the HTTP driver of the request core.
///
/// It routes over a [`Routes`] table (one [`Pool`] per pool) that [`Gateway::set_routes`] replaces
/// atomically: a request loads the table once and finishes on it, so a reload never drops or
/// re-routes a request already in flight.
pub struct Gateway<T: Transport = Upstream> {
    routes: ArcSwap<Routes>,
    upstream: T,
    config: GatewayConfig,
}

impl<T: Transport> std::fmt::Debug for Gateway<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("config", &self.config).finish_non_exhaustive()
    }
}

fn err_response<B>(e: &RequestError) -> Response<ProxyBody<B>> {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let resp: Response<Full<Bytes>> = error_response(status, &e.message);
    resp.map(Either::Left)
}

/// True for paths whose bodies are parsed and scheduled (the OpenAI inference APIs).
pub fn is_inference_path(method: &Method, path: &str) -> bool {
    method == Method::POST
        && matches!(
            path.trim_end_matches('/'),
            "/v1/completions" | "/v1/chat/completions" | "/v1/embeddings" | "/v1/responses" | "/v1/conversations"
        )
}

fn json_response<B>(body: &serde_json::Value) -> Response<ProxyBody<B>> {
    let mut resp = Response::new(Either::Left(Full::new(Bytes::from(body.to_string()))));
    resp.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn unknown_model<B>(model: &str) -> Response<ProxyBody<B>> {
    let msg = format!("The model `{model}` does not exist or is not served by this gateway.");
    let resp: Response<Full<Bytes>> = error_response(StatusCode::NOT_FOUND, &msg);
    resp.map(Either::Left)
}

impl Gateway {
    /// A gateway routing every request through `pool` (one pool, any model).
    pub fn new(pool: Arc<Pool>, config: GatewayConfig) -> Self {
        Self::with_routes(Routes::single("default", pool), config)
    }

    /// A gateway routing over several pools.
    pub fn with_routes(routes: Routes, config: GatewayConfig) -> Self {
        Self::with_transport(routes, config, Upstream::new())
    }
}

impl<T: Transport> Gateway<T> {
    /// A gateway routing over `routes` and reaching the replicas through `transport`.
    pub fn with_transport(routes: Routes, config: GatewayConfig, transport: T) -> Self {
        Gateway { routes: ArcSwap::from_pointee(routes), upstream: transport, config }
    }

    /// The default pool.
    pub fn pool(&self) -> Arc<Pool> {
        self.routes.load().default_pool().pool.clone()
    }

    /// The routing table in force.
    pub fn routes(&self) -> Arc<Routes> {
        self.routes.load_full()
    }

    /// Replaces the routing table; returns the previous one. Requests already routed finish on
    /// the table they started with.
    pub fn set_routes(&self, routes: Routes) -> Arc<Routes> {
        self.routes.swap(Arc::new(routes))
    }

    /// Handles one client request. Never fails: errors become OpenAI-style JSON responses.
    pub async fn handle<B>(self: Arc<Self>, req: Request<B>) -> Result<Response<ProxyBody<T::Body>>, Infallible>
    where
        B: http_body::Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, self.config.max_body_bytes).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                let too_big = e.downcast_ref::<http_body_util::LengthLimitError>().is_some();
                let err = if too_big {
                    RequestError::new(
                        igw_request::ErrorCode::PayloadTooLarge,
                        format!("request body exceeds the limit of {} bytes", self.config.max_body_bytes),
                    )
                } else {
                    RequestError::bad_request(format!("failed to read request body: {e}"))
                };
                return Ok(err_response(&err));
            }
        };
        let path = parts.uri.path().to_string();
        let routes = self.routes.load_full();
        if !is_inference_path(&parts.method, &path) {
            if routes.routes_by_model() && parts.method == Method::GET && path.trim_end_matches('/') == "/v1/models" {
                return Ok(json_response(&routes.models_json()));
            }
            return Ok(self.passthrough(&routes.default_pool().pool, parts, body).await);
        }
        // With several pools the model chooses the pool: the body is parsed here, once, and the
        // parse is handed to the pool's core.
        let (route, parsed) = if routes.routes_by_model() {
            match parse_body(ApiKind::from_path(&path), &body) {
                Ok(parsed) => match routes.route(&parsed.model) {
                    RouteMatch::Pool(p) => (p.clone(), Some(parsed)),
                    RouteMatch::UnknownModel => return Ok(unknown_model(&parsed.model)),
                },
                Err(e) => return Ok(err_response(&e)),
            }
        } else {
            (routes.default_pool().clone(), None)
        };
        drop(routes);
        let pool = &route.pool;
        let core = pool.core();
        let header_list: Vec<(&str, &str)> =
            parts.headers.iter().filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v))).collect();
        let head = core.head(Some(&path), header_list);
        let subset = head.subset_from_header();
        let prepared = match core.prepare(head, Some(body), parsed) {
            Ok(Prepared::Inference(p)) => *p,
            Ok(Prepared::NoBody(_)) => return Ok(self.passthrough(pool, parts, Bytes::new()).await),
            Err(e) => return Ok(err_response(&e)),
        };
        // Admission: flow control may hold the request until the pool has room. A client that
        // goes away drops this future, which takes the request out of its queue.
        let mut request = match pool.admit(&prepared).await {
            Ok(r) => r,
            Err(e) => return Ok(err_response(&e)),
        };
        let endpoints = match request.decide(&prepared, subset.as_ref(), pool.now()) {
            Ok(eps) => eps.iter().take(self.config.max_attempts.max(1)).cloned().collect::<Vec<_>>(),
            Err(e) => return Ok(err_response(&e)),
        };
        let mut last_err = None;
        for endpoint in &endpoints {
            let mut up_parts = parts_clone(&parts);
            apply_mutations(&mut up_parts, &prepared);
            request.attempt(endpoint, pool.now());
            match self
                .upstream
                .send(endpoint.address(), up_parts, prepared.body.clone(), self.config.response_head_timeout)
                .await
            {
                Ok(resp) if resp.status() == StatusCode::SERVICE_UNAVAILABLE => {
                    // Not served and nothing reached the client: take the attempt back, try the next.
                    request.attempt_failed(pool.now());
                    tracing::debug!(endpoint = %endpoint.address(), "replica answered 503; trying the next candidate");
                    last_err = Some(format!("replica {} answered 503", endpoint.address()));
                }
                Ok(resp) => {
                    request.first_byte(pool.now());
                    return Ok(Self::stream_back(pool, resp, &prepared, request, endpoint.clone()));
                }
                Err(e) => {
                    request.attempt_failed(pool.now());
                    tracing::warn!(error = %e, "upstream attempt failed; trying the next candidate");
                    last_err = Some(e.to_string());
                }
            }
        }
        let msg = last_err.unwrap_or_else(|| "no candidate endpoint".to_string());
        Ok(err_response(&RequestError::service_unavailable(format!("every candidate failed: {msg}"))))
    }

    fn stream_back(
        pool: &Arc<Pool>,
        resp: Response<T::Body>,
        prepared: &PreparedRequest,
        request: CoreRequest,
        endpoint: Arc<Endpoint>,
    ) -> Response<ProxyBody<T::Body>> {
        let (mut parts, body) = resp.into_parts();
        let mut tracker = prepared.response_tracker();
        tracker.set_status(parts.status.as_u16());
        tracker.on_headers(parts.headers.iter().filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v))));
        let restorer = prepared.model_restorer();
        if restorer.is_active() {
            // The body length changes when the model name is written back.
            parts.headers.remove(http::header::CONTENT_LENGTH);
        }
        if let Ok(v) = HeaderValue::from_str(&endpoint.address().to_string()) {
            parts.headers.insert(HeaderName::from_static(SERVED_HEADER), v);
        }
        for (k, v) in request.response_headers() {
            if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(&v)) {
                parts.headers.insert(k, v);
            }
        }
        let observer = Accounting { pool: pool.clone(), request: Some(request), endpoint, tracker, restorer };
        Response::from_parts(parts, Either::Right(ObservedBody::new(body, Box::new(observer))))
    }

    /// Forwards a request that is not scheduled (other paths, body-less requests) to a random
    /// endpoint.
    async fn passthrough(
        &self,
        pool: &Arc<Pool>,
        parts: http::request::Parts,
        body: Bytes,
    ) -> Response<ProxyBody<T::Body>> {
        let endpoint = match pool.core().pick_any() {
            Ok(e) => e,
            Err(e) => return err_response(&RequestError::service_unavailable(e.message)),
        };
        match self.upstream.send(endpoint.address(), parts, body, self.config.response_head_timeout).await {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                if let Ok(v) = HeaderValue::from_str(&endpoint.address().to_string()) {
                    parts.headers.insert(HeaderName::from_static(SERVED_HEADER), v);
                }
                Response::from_parts(parts, Either::Right(ObservedBody::new(body, Box::new(NoObserver))))
            }
            Err(e) => err_response(&upstream_failed(&e)),
        }
    }
}

fn upstream_failed(e: &UpstreamError) -> RequestError {
    RequestError::service_unavailable(e.to_string())
}

fn parts_clone(parts: &http::request::Parts) -> http::request::Parts {
    let mut b = Request::builder().method(parts.method.clone()).uri(parts.uri.clone()).version(parts.version);
    if let Some(h) = b.headers_mut() {
        *h = parts.headers.clone();
    }
    let (p, ()) = b.body(()).unwrap_or_default().into_parts();
    p
}

fn apply_mutations(parts: &mut http::request::Parts, prepared: &PreparedRequest) {
    for name in &prepared.mutations.remove {
        parts.headers.remove(name.as_str());
    }
    // A client must never steer the pick through the destination headers.
    parts.headers.remove(headers::DESTINATION_ENDPOINT);
    for (name, value) in &prepared.mutations.set {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            parts.headers.insert(n, v);
        }
    }
}

/// Feeds a response to the tracker and the model-name restorer, and ends the request in the
/// core exactly once (the body observer's end, or its drop).
struct Accounting {
    pool: Arc<Pool>,
    request: Option<CoreRequest>,
    endpoint: Arc<Endpoint>,
    tracker: ResponseTracker,
    restorer: ModelNameRestorer,
}

impl ResponseObserver for Accounting {
    fn on_data(&mut self, chunk: Bytes) -> Bytes {
        if self.tracker.on_body(&chunk)
            && let Some(r) = &mut self.request
        {
            r.first_token(self.pool.now());
        }
        if self.restorer.is_active() { self.restorer.push(chunk) } else { chunk }
    }

    fn flush(&mut self) -> Option<Bytes> {
        self.restorer.is_active().then(|| self.restorer.finish())
    }

    fn on_end(&mut self, outcome: Outcome) {
        let summary = self.tracker.finish();
        if outcome != Outcome::Completed {
            tracing::debug!(?outcome, endpoint = %self.endpoint.address(), "response ended early");
        }
        if let Some(r) = self.request.take() {
            r.end(Some(&summary), self.pool.now());
        }
    }
}

struct NoObserver;

impl ResponseObserver for NoObserver {
    fn on_data(&mut self, chunk: Bytes) -> Bytes {
        chunk
    }
    fn on_end(&mut self, _: Outcome) {}
}
