//! Control headers: names, defaults, what is stripped, and the header mutations sent upstream.

use std::net::SocketAddr;

use igw_core::request::DEFAULT_FAIRNESS_ID;

/// Request id; generated (UUIDv4 format) when the client sent none.
pub const REQUEST_ID: &str = "x-request-id";
/// Name of the InferenceObjective whose priority applies.
pub const INFERENCE_OBJECTIVE: &str = "x-gateway-inference-objective";
/// Flow-control fairness key (tenant or flow); default [`DEFAULT_FAIRNESS_ID`].
pub const FAIRNESS_ID: &str = "x-gateway-inference-fairness-id";
/// Forces the target model written into the body's `model` field.
pub const MODEL_NAME_REWRITE: &str = "x-gateway-model-name-rewrite";
/// The picked endpoint(s), `ip:port[,ip:port...]` (picker → gateway).
pub const DESTINATION_ENDPOINT: &str = "x-gateway-destination-endpoint";
/// The endpoint that actually served the response (gateway → picker, response path metadata).
pub const DESTINATION_ENDPOINT_SERVED: &str = "x-gateway-destination-endpoint-served";
/// The endpoints a request may be sent to (gateway → picker; metadata, or a header in the proxy).
pub const DESTINATION_ENDPOINT_SUBSET: &str = "x-gateway-destination-endpoint-subset";
/// Optional time-to-first-token SLO in milliseconds.
pub const SLO_TTFT_MS: &str = "x-slo-ttft-ms";
/// Optional time-per-output-token SLO in milliseconds.
pub const SLO_TPOT_MS: &str = "x-slo-tpot-ms";
/// Test only: comma-separated `ip` or `ip:port` list that steers picks in conformance tests.
pub const TEST_ENDPOINT_SELECTION: &str = "test-epp-endpoint-selection";
/// Conformance response header naming the endpoint that served the request.
pub const CONFORMANCE_SERVED_ENDPOINT: &str = "x-conformance-test-served-endpoint";
/// Model name header set by body-based routing.
pub const BBR_MODEL_NAME: &str = "x-gateway-model-name";
/// Base model name header set by body-based routing.
pub const BBR_BASE_MODEL_NAME: &str = "x-gateway-base-model-name";
/// `content-length`.
pub const CONTENT_LENGTH: &str = "content-length";
/// `content-type`.
pub const CONTENT_TYPE: &str = "content-type";
/// The HTTP/2 path pseudo-header, which selects the API.
pub const PATH: &str = ":path";
/// First fallback for the path when `:path` is absent.
pub const ORIGINAL_PATH: &str = "x-original-path";
/// Second fallback for the path.
pub const FORWARDED_PATH: &str = "x-forwarded-path";
/// The HTTP/2 status pseudo-header of a response.
pub const STATUS: &str = ":status";
/// The path assumed when a request carries none.
pub const DEFAULT_PATH: &str = "/v1/completions";

/// Envoy metadata namespace holding the destination (and, on responses, the served endpoint).
pub const ENVOY_LB_NAMESPACE: &str = "envoy.lb";
/// Envoy metadata namespace holding the subset hint.
pub const SUBSET_HINT_NAMESPACE: &str = "envoy.lb.subset_hint";
/// Key of the subset hint inside [`SUBSET_HINT_NAMESPACE`].
pub const SUBSET_HINT_KEY: &str = DESTINATION_ENDPOINT_SUBSET;

/// Control headers a client sends to the picker; they are removed before the model server sees
/// the request.
pub const INPUT_CONTROL_HEADERS: [&str; 4] =
    [FAIRNESS_ID, INFERENCE_OBJECTIVE, MODEL_NAME_REWRITE, DESTINATION_ENDPOINT_SUBSET];
/// Headers only the picker sets.
pub const OUTPUT_INJECTION_HEADERS: [&str; 2] = [DESTINATION_ENDPOINT, DESTINATION_ENDPOINT_SERVED];

/// True for a header the client sends to the picker only (case-insensitive).
pub fn is_input_control_header(name: &str) -> bool {
    INPUT_CONTROL_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// True for a header the picker owns: input control headers, injected headers, and
/// `content-length` (the picker sets it for the re-serialised body). Adapters that re-set the
/// client's headers skip these.
pub fn is_system_owned(name: &str) -> bool {
    is_input_control_header(name)
        || OUTPUT_INJECTION_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name))
        || name.eq_ignore_ascii_case(CONTENT_LENGTH)
}

/// Formats `random` as a version-4 UUID string (`xxxxxxxx-xxxx-4xxx-[89ab]xxx-xxxxxxxxxxxx`).
/// The caller draws `random`, which keeps this function pure.
pub fn generate_request_id(random: u128) -> String {
    let v = (random & !(0xF << 76)) | (0x4 << 76);
    let v = (v & !(0x3 << 62)) | (0x2 << 62);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        v >> 96,
        (v >> 80) & 0xFFFF,
        (v >> 64) & 0xFFFF,
        (v >> 48) & 0xFFFF,
        v & 0xFFFF_FFFF_FFFF
    )
}

/// Formats picked endpoints as the destination value: `ip:port` joined by `,` with no spaces,
/// IPv6 in brackets, primary first.
pub fn format_destination(addrs: &[SocketAddr]) -> String {
    let mut out = String::with_capacity(addrs.len() * 22);
    for (i, a) in addrs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&a.to_string());
    }
    out
}

/// The control headers of one request, read once from its headers.
///
/// Names match case-insensitively; an empty value counts as absent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ControlHeaders {
    /// `x-request-id`.
    pub request_id: Option<String>,
    /// `x-gateway-inference-objective`.
    pub objective: Option<String>,
    /// `x-gateway-inference-fairness-id` (see [`ControlHeaders::fairness_id`] for the default).
    pub fairness: Option<String>,
    /// `x-gateway-model-name-rewrite`.
    pub model_rewrite: Option<String>,
    /// `x-gateway-destination-endpoint-subset` sent as a header (the standalone proxy's form of
    /// the subset hint; Envoy sends it as metadata).
    pub subset: Option<String>,
    /// `x-slo-ttft-ms`, if a number.
    pub slo_ttft_ms: Option<f64>,
    /// `x-slo-tpot-ms`, if a number.
    pub slo_tpot_ms: Option<f64>,
    /// `test-epp-endpoint-selection`.
    pub test_endpoint_selection: Option<String>,
    /// The request path: `:path`, else `x-original-path`, else `x-forwarded-path`.
    pub path: Option<String>,
    /// Input control headers present on the request (to be removed upstream), lower-case.
    pub present_controls: Vec<&'static str>,
}

impl ControlHeaders {
    /// Reads the control headers from `(name, value)` pairs.
    pub fn from_headers<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut c = ControlHeaders::default();
        let (mut original, mut forwarded) = (None, None);
        let some = |v: &str| (!v.is_empty()).then(|| v.to_string());
        for (name, value) in headers {
            let is = |n: &str| name.eq_ignore_ascii_case(n);
            if let Some(h) = INPUT_CONTROL_HEADERS.iter().find(|h| is(h))
                && !c.present_controls.contains(h)
            {
                c.present_controls.push(h);
            }
            let value = value.trim();
            if is(REQUEST_ID) {
                c.request_id = c.request_id.or(some(value));
            } else if is(INFERENCE_OBJECTIVE) {
                c.objective = c.objective.or(some(value));
            } else if is(FAIRNESS_ID) {
                c.fairness = c.fairness.or(some(value));
            } else if is(MODEL_NAME_REWRITE) {
                c.model_rewrite = c.model_rewrite.or(some(value));
            } else if is(DESTINATION_ENDPOINT_SUBSET) {
                c.subset = c.subset.or(Some(value.to_string()));
            } else if is(SLO_TTFT_MS) {
                c.slo_ttft_ms = c.slo_ttft_ms.or(value.parse().ok().filter(|v: &f64| v.is_finite()));
            } else if is(SLO_TPOT_MS) {
                c.slo_tpot_ms = c.slo_tpot_ms.or(value.parse().ok().filter(|v: &f64| v.is_finite()));
            } else if is(TEST_ENDPOINT_SELECTION) {
                c.test_endpoint_selection = c.test_endpoint_selection.or(some(value));
            } else if is(PATH) {
                c.path = c.path.or(some(value));
            } else if is(ORIGINAL_PATH) {
                original = original.or(some(value));
            } else if is(FORWARDED_PATH) {
                forwarded = forwarded.or(some(value));
            }
        }
        c.path = c.path.or(original).or(forwarded);
        c
    }

    /// The fairness id, [`DEFAULT_FAIRNESS_ID`] when none was sent.
    pub fn fairness_id(&self) -> &str {
        self.fairness.as_deref().unwrap_or(DEFAULT_FAIRNESS_ID)
    }

    /// The request path, [`DEFAULT_PATH`] when none was found.
    pub fn path_or_default(&self) -> &str {
        self.path.as_deref().unwrap_or(DEFAULT_PATH)
    }
}

/// Header changes to apply to the upstream request: set (add or overwrite) and remove.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderMutations {
    /// Headers to set, lower-case names, each name at most once.
    pub set: Vec<(String, String)>,
    /// Headers to remove, lower-case names.
    pub remove: Vec<String>,
}

impl HeaderMutations {
    /// Sets `name` to `value`, replacing an earlier set of the same name.
    pub fn set_header(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        match self.set.iter_mut().find(|(k, _)| k.eq_ignore_ascii_case(name)) {
            Some(slot) => slot.1 = value,
            None => self.set.push((name.to_ascii_lowercase(), value)),
        }
    }

    /// Adds `name` to the headers to remove (once).
    pub fn remove_header(&mut self, name: &str) {
        if !self.remove.iter().any(|k| k.eq_ignore_ascii_case(name)) {
            self.remove.push(name.to_ascii_lowercase());
        }
    }

    /// The value set for `name`, if any.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.set.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Sets the destination header to the picked endpoints and returns the value, which the
    /// ext_proc adapter also writes to `envoy.lb` metadata (they must be identical).
    pub fn set_destination(&mut self, addrs: &[SocketAddr]) -> String {
        let value = format_destination(addrs);
        self.set_header(DESTINATION_ENDPOINT, value.clone());
        value
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_uuid_v4() {
        for r in [0u128, u128::MAX, 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef] {
            let id = generate_request_id(r);
            assert_eq!(id.len(), 36);
            let parts: Vec<_> = id.split('-').collect();
            assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), [8, 4, 4, 4, 12]);
            assert!(parts[2].starts_with('4'), "{id}");
            assert!(matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'), "{id}");
            assert!(id.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        }
        assert_eq!(generate_request_id(0), "00000000-0000-4000-8000-000000000000");
        assert_ne!(generate_request_id(1), generate_request_id(2));
    }

    #[test]
    fn defaults_and_case() {
        let c = ControlHeaders::from_headers([("X-Other", "1")]);
        assert_eq!(c.fairness_id(), "default-flow");
        assert_eq!(c.path_or_default(), "/v1/completions");
        assert!(c.request_id.is_none() && c.objective.is_none() && c.present_controls.is_empty());

        let c = ControlHeaders::from_headers([
            ("X-Request-Id", "abc"),
            ("x-gateway-inference-objective", "critical"),
            ("x-gateway-inference-fairness-id", ""),
            ("x-gateway-model-name-rewrite", "m2"),
            ("x-slo-ttft-ms", "250"),
            ("x-slo-tpot-ms", "nope"),
            ("test-epp-endpoint-selection", "10.0.0.1"),
            ("x-forwarded-path", "/v1/embeddings"),
            ("x-original-path", "/v1/chat/completions"),
        ]);
        assert_eq!(c.request_id.as_deref(), Some("abc"));
        assert_eq!(c.objective.as_deref(), Some("critical"));
        assert_eq!(c.fairness_id(), "default-flow", "empty means default");
        assert_eq!(c.model_rewrite.as_deref(), Some("m2"));
        assert_eq!((c.slo_ttft_ms, c.slo_tpot_ms), (Some(250.0), None));
        assert_eq!(c.test_endpoint_selection.as_deref(), Some("10.0.0.1"));
        assert_eq!(c.path.as_deref(), Some("/v1/chat/completions"), "x-original-path before x-forwarded-path");
        assert_eq!(c.present_controls, [INFERENCE_OBJECTIVE, FAIRNESS_ID, MODEL_NAME_REWRITE]);

        let c = ControlHeaders::from_headers([(":path", "/v1/responses"), ("x-original-path", "/x")]);
        assert_eq!(c.path.as_deref(), Some("/v1/responses"));
    }

    #[test]
    fn system_owned() {
        for h in ["X-Gateway-Inference-Objective", "x-gateway-destination-endpoint", "Content-Length"] {
            assert!(is_system_owned(h), "{h}");
        }
        assert!(!is_system_owned("x-request-id"));
        assert!(is_input_control_header(DESTINATION_ENDPOINT_SUBSET));
        assert!(!is_input_control_header(DESTINATION_ENDPOINT));
    }

    #[test]
    fn mutations_and_destination() {
        let mut m = HeaderMutations::default();
        m.set_header("Content-Length", "1");
        m.set_header("content-length", "2");
        m.remove_header("A");
        m.remove_header("a");
        assert_eq!(m.set, [("content-length".to_string(), "2".to_string())]);
        assert_eq!(m.remove, ["a"]);
        let addrs: Vec<SocketAddr> = vec!["10.0.0.1:8000".parse().unwrap(), "[fd00::1]:8000".parse().unwrap()];
        assert_eq!(m.set_destination(&addrs), "10.0.0.1:8000,[fd00::1]:8000");
        assert_eq!(m.get(DESTINATION_ENDPOINT), Some("10.0.0.1:8000,[fd00::1]:8000"));
    }
}
