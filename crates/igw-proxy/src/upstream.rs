//! The pooled HTTP client that carries requests to model servers, behind the [`Transport`] port
//! the gateway sends through (so the same request path runs over an in-process model server in
//! tests and in virtual time).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Why an upstream attempt failed before any response arrived.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Could not connect, or the connection broke before a response head arrived.
    #[error("upstream {addr} unreachable: {source}")]
    Unreachable {
        /// The replica.
        addr: SocketAddr,
        /// The client error.
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// No response head within the timeout.
    #[error("upstream {addr} did not answer within {timeout:?}")]
    Timeout {
        /// The replica.
        addr: SocketAddr,
        /// The limit that passed.
        timeout: Duration,
    },
    /// The request could not be built (bad path or header).
    #[error("cannot build upstream request: {0}")]
    Build(#[from] http::Error),
    /// The replica refused the request before answering (a transport other than HTTP).
    #[error("upstream {addr} refused the request: {reason}")]
    Refused {
        /// The replica.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
}

/// How the gateway reaches a model server: one request out, the response head back (its body
/// streams after). [`Upstream`] is the HTTP/1.1 client; tests plug in other transports.
pub trait Transport: Send + Sync + 'static {
    /// The response body type.
    type Body: http_body::Body<Data = Bytes> + Send + Unpin + 'static;

    /// Sends `parts` + `body` to `addr`, waiting at most `head_timeout` for the response head.
    fn send(
        &self,
        addr: SocketAddr,
        parts: http::request::Parts,
        body: Bytes,
        head_timeout: Duration,
    ) -> impl Future<Output = Result<Response<Self::Body>, UpstreamError>> + Send;
}

impl Transport for Upstream {
    type Body = Incoming;

    fn send(
        &self,
        addr: SocketAddr,
        parts: http::request::Parts,
        body: Bytes,
        head_timeout: Duration,
    ) -> impl Future<Output = Result<Response<Incoming>, UpstreamError>> + Send {
        Upstream::send(self, addr, parts, body, head_timeout)
    }
}

/// A keep-alive connection pool to model servers (HTTP/1.1, TCP_NODELAY).
#[derive(Clone, Debug)]
pub struct Upstream {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Upstream {
    fn default() -> Self {
        Self::new()
    }
}

impl Upstream {
    /// A client with TCP_NODELAY, a 5 s connect timeout and idle connections kept for 90 s.
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .build(connector);
        Upstream { client }
    }

    /// Sends `parts` + `body` to `addr`, waiting at most `head_timeout` for the response head.
    /// The path and query of `parts.uri` are kept; scheme and authority become `http://addr`.
    pub async fn send(
        &self,
        addr: SocketAddr,
        mut parts: http::request::Parts,
        body: Bytes,
        head_timeout: Duration,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = Uri::builder().scheme("http").authority(addr.to_string()).path_and_query(pq).build()?;
        parts.version = http::Version::HTTP_11;
        parts.headers.remove(http::header::HOST);
        if let Ok(v) = http::HeaderValue::from_str(&addr.to_string()) {
            parts.headers.insert(http::header::HOST, v);
        }
        parts.headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(body.len()));
        parts.headers.remove(http::header::TRANSFER_ENCODING);
        let req = Request::from_parts(parts, Full::new(body));
        match tokio::time::timeout(head_timeout, self.client.request(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(source)) => Err(UpstreamError::Unreachable { addr, source }),
            Err(_) => Err(UpstreamError::Timeout { addr, timeout: head_timeout }),
        }
    }
}
