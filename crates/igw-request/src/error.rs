//! Errors of the request lifecycle: upstream's error codes and how each one is answered.
//!
//! Most codes are answered immediately (an ext_proc `ImmediateResponse`, or an HTTP error from the
//! standalone proxy). `ModelServerError` and `Unknown` are not: the ext_proc adapter ends the
//! stream with a gRPC error so that the gateway applies its failure mode.

use std::fmt;

use thiserror::Error;

/// Message for a body whose `model` is missing or not a string (wire-compatible with upstream).
pub const MSG_MODEL_NOT_FOUND: &str = "model not found in request body";
/// Message when no endpoint is left to serve a request (empty pool or subset without a match).
pub const MSG_NO_CANDIDATES: &str = "failed to find endpoint candidates for serving the request";
/// Message when a body-less request arrives and the datastore holds no endpoint.
pub const MSG_NO_ENDPOINTS: &str = "no pods available in datastore";
/// Message when a sheddable request is dropped because the pool is saturated.
pub const MSG_SATURATED: &str = "system saturated, sheddable request dropped";
/// 429 body: a sheddable request no endpoint is predicted to serve within its SLO.
pub const MSG_SLO_UNATTAINABLE: &str =
    "no endpoint can meet the request's latency objective, sheddable request dropped";
/// Message prefix when the scheduler finds no endpoint (the scheduler's reason follows).
pub const MSG_SCHEDULE_FAILED: &str = "failed to find target endpoint";
/// Message when an admission plugin denies a request.
pub const MSG_NOT_ADMITTED: &str = "request cannot be admitted";
/// Message of a request refused because its queue is full (429).
pub const MSG_QUEUE_FULL: &str = "flow control queue full";
/// Message of a request whose queue TTL ran out (503).
pub const MSG_QUEUE_TTL: &str = "request timed out in the flow control queue";
/// Message of a request evicted at shutdown (503).
pub const MSG_QUEUE_SHUTDOWN: &str = "flow control is shutting down";

/// An error code, as upstream names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The request is malformed (bad JSON, missing model, wrong API shape). HTTP 400.
    BadRequest,
    /// Reserved. HTTP 401.
    Unauthorized,
    /// Reserved. HTTP 403.
    Forbidden,
    /// Reserved (historically: an unknown model). HTTP 404.
    NotFound,
    /// The request body exceeds the configured limit. HTTP 413. (An igw addition: upstream has
    /// no body limit of its own.)
    PayloadTooLarge,
    /// Shed under saturation, no endpoint found by the scheduler, or queue capacity. HTTP 429.
    ResourceExhausted,
    /// A fault inside the picker, or no endpoints for a body-less request. HTTP 500.
    Internal,
    /// No candidate endpoint, or a queued request timed out or was cancelled. HTTP 503.
    ServiceUnavailable,
    /// The model server failed; not answered immediately.
    ModelServerError,
    /// Anything else; not answered immediately.
    Unknown,
}

impl ErrorCode {
    /// The code's name as it appears in error bodies (`BadRequest`, `ResourceExhausted`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "BadRequest",
            ErrorCode::Unauthorized => "Unauthorized",
            ErrorCode::Forbidden => "Forbidden",
            ErrorCode::NotFound => "NotFound",
            ErrorCode::PayloadTooLarge => "PayloadTooLarge",
            ErrorCode::ResourceExhausted => "ResourceExhausted",
            ErrorCode::Internal => "Internal",
            ErrorCode::ServiceUnavailable => "ServiceUnavailable",
            ErrorCode::ModelServerError => "ModelServerError",
            ErrorCode::Unknown => "Unknown",
        }
    }

    /// The HTTP status of the immediate response, or `None` for the codes that are not answered
    /// immediately (`ModelServerError`, `Unknown`).
    pub fn immediate_status(self) -> Option<u16> {
        match self {
            ErrorCode::BadRequest => Some(400),
            ErrorCode::Unauthorized => Some(401),
            ErrorCode::Forbidden => Some(403),
            ErrorCode::NotFound => Some(404),
            ErrorCode::PayloadTooLarge => Some(413),
            ErrorCode::ResourceExhausted => Some(429),
            ErrorCode::Internal => Some(500),
            ErrorCode::ServiceUnavailable => Some(503),
            ErrorCode::ModelServerError | ErrorCode::Unknown => None,
        }
    }

    /// The HTTP status a plain HTTP proxy answers with: the immediate status, else 502 for a
    /// model-server failure and 500 for an unknown error.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::ModelServerError => 502,
            ErrorCode::Unknown => 500,
            other => other.immediate_status().unwrap_or(500),
        }
    }

    /// The OpenAI-style `error.type` for this code.
    pub fn openai_type(self) -> &'static str {
        match self {
            ErrorCode::BadRequest | ErrorCode::PayloadTooLarge => "invalid_request_error",
            ErrorCode::Unauthorized => "authentication_error",
            ErrorCode::Forbidden => "permission_error",
            ErrorCode::NotFound => "not_found_error",
            ErrorCode::ResourceExhausted => "rate_limit_error",
            ErrorCode::ServiceUnavailable => "service_unavailable_error",
            ErrorCode::ModelServerError => "upstream_error",
            ErrorCode::Internal | ErrorCode::Unknown => "server_error",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request failure: a code and a human-readable message.
///
/// `Display` gives exactly the body upstream sends in an ImmediateResponse:
/// `inference error: <Code> - <message>`.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("inference error: {code} - {message}")]
pub struct RequestError {
    /// The code, which decides the HTTP status.
    pub code: ErrorCode,
    /// What went wrong.
    pub message: String,
}

impl RequestError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RequestError { code, message: message.into() }
    }

    /// A `BadRequest` (400).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// A `ResourceExhausted` (429).
    pub fn resource_exhausted(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ResourceExhausted, message)
    }

    /// An `Internal` error (500).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// A `ServiceUnavailable` (503).
    pub fn service_unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ServiceUnavailable, message)
    }

    /// The HTTP status of the immediate response; `None` when the error must not be answered
    /// immediately (the ext_proc adapter then fails the stream instead).
    pub fn immediate_status(&self) -> Option<u16> {
        self.code.immediate_status()
    }

    /// The HTTP status a plain HTTP proxy answers with (see [`ErrorCode::http_status`]).
    pub fn http_status(&self) -> u16 {
        self.code.http_status()
    }

    /// The ImmediateResponse body: `inference error: <Code> - <message>`.
    pub fn envoy_body(&self) -> String {
        self.to_string()
    }

    /// An OpenAI-style JSON error body for the standalone proxy:
    /// `{"error":{"message":...,"type":...,"code":<http status>}}`.
    pub fn openai_body(&self) -> String {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.code.openai_type(),
                "code": self.http_status(),
            }
        })
        .to_string()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn status_mapping() {
        let cases = [
            (ErrorCode::BadRequest, Some(400)),
            (ErrorCode::Unauthorized, Some(401)),
            (ErrorCode::Forbidden, Some(403)),
            (ErrorCode::NotFound, Some(404)),
            (ErrorCode::PayloadTooLarge, Some(413)),
            (ErrorCode::ResourceExhausted, Some(429)),
            (ErrorCode::Internal, Some(500)),
            (ErrorCode::ServiceUnavailable, Some(503)),
            (ErrorCode::ModelServerError, None),
            (ErrorCode::Unknown, None),
        ];
        for (code, status) in cases {
            assert_eq!(code.immediate_status(), status, "{code}");
            assert_eq!(code.http_status(), status.unwrap_or(if code == ErrorCode::Unknown { 500 } else { 502 }));
        }
    }

    #[test]
    fn envoy_body_format() {
        let e = RequestError::bad_request(MSG_MODEL_NOT_FOUND);
        assert_eq!(e.envoy_body(), "inference error: BadRequest - model not found in request body");
        let e = RequestError::service_unavailable(MSG_NO_CANDIDATES);
        assert_eq!(
            e.envoy_body(),
            "inference error: ServiceUnavailable - failed to find endpoint candidates for serving the request"
        );
        assert_eq!(RequestError::internal(MSG_NO_ENDPOINTS).immediate_status(), Some(500));
    }

    #[test]
    fn openai_body_is_json() {
        let e = RequestError::resource_exhausted("too \"busy\"");
        let v: serde_json::Value = serde_json::from_str(&e.openai_body()).unwrap();
        assert_eq!(v["error"]["message"], "too \"busy\"");
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert_eq!(v["error"]["code"], 429);
    }
}
