//! OpenAI-style error responses: `{"error":{"message","type","code"}}`.

use bytes::Bytes;
use http::{Response, StatusCode, header};

/// The OpenAI error `type` for an HTTP status.
pub fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 413 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        503 => "service_unavailable",
        _ => "internal_error",
    }
}

/// The JSON body of an OpenAI-style error.
pub fn error_body(status: StatusCode, message: &str) -> Bytes {
    let v = serde_json::json!({
        "error": {
            "message": message,
            "type": error_type(status),
            "code": status.as_u16(),
        }
    });
    Bytes::from(v.to_string())
}

/// A complete error response with the JSON body and content type set.
pub fn error_response<B: From<Bytes>>(status: StatusCode, message: &str) -> Response<B> {
    let mut resp = Response::new(B::from(error_body(status, message)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    resp
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn shape() {
        let b = error_body(StatusCode::TOO_MANY_REQUESTS, "system saturated");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"]["message"], "system saturated");
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert_eq!(v["error"]["code"], 429);
        let r: Response<Bytes> = error_response(StatusCode::PAYLOAD_TOO_LARGE, "too big");
        assert_eq!(r.status(), 413);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
    }
}
