//! Turning request headers and a complete body into an [`InferenceRequest`], the body to
//! forward and the header mutations: everything before admission and scheduling.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use igw_core::{ApiKind, Endpoint, InferenceRequest, Snapshot};
use serde_json::{Map, Value};

use crate::error::{MSG_NO_CANDIDATES, MSG_NO_ENDPOINTS, RequestError};
use crate::headers::{self, ControlHeaders, HeaderMutations};
use crate::parse::{ParsedBody, parse_body};
use crate::rewrite::{ModelNameRestorer, ModelRewriteDecision, resolve_target_model, serialize_with_model};
use crate::subset::EndpointSubset;
use crate::usage::ResponseTracker;

/// The random draws one request needs, drawn by the caller from its own (seeded, in the
/// simulator) RNG: this crate stays sans-IO and simulations stay reproducible.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Draws {
    /// Source of a generated request id.
    pub request_id: u128,
    /// Draw for the weighted model rewrite, and for the random endpoint of a body-less request.
    pub pick: u64,
}

/// What is known once the request headers have arrived.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestHead {
    /// All request headers, names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The control headers.
    pub control: ControlHeaders,
    /// The request path that selects the API.
    pub path: String,
    /// The request id: the client's `x-request-id`, or a generated one.
    pub request_id: String,
    /// True if `request_id` was generated here (it is then added to the upstream request).
    pub request_id_generated: bool,
}

impl RequestHead {
    /// Reads request headers. `path` is the request path when the adapter knows it (the proxy);
    /// otherwise it comes from `:path`, `x-original-path`, `x-forwarded-path`, or defaults to
    /// `/v1/completions`. `id_random` becomes the request id when the client sent none.
    pub fn new<K: AsRef<str>, V: AsRef<str>>(
        path: Option<&str>,
        headers: impl IntoIterator<Item = (K, V)>,
        id_random: u128,
    ) -> Self {
        let headers: Vec<(String, String)> =
            headers.into_iter().map(|(k, v)| (k.as_ref().to_ascii_lowercase(), v.as_ref().to_string())).collect();
        let control = ControlHeaders::from_headers(headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let path = path.filter(|p| !p.is_empty()).unwrap_or(control.path_or_default()).to_string();
        let (request_id, request_id_generated) = match &control.request_id {
            Some(id) => (id.clone(), false),
            None => (headers::generate_request_id(id_random), true),
        };
        RequestHead { headers, control, path, request_id, request_id_generated }
    }

    /// The API the path names.
    pub fn api(&self) -> ApiKind {
        ApiKind::from_path(&self.path)
    }

    /// The subset hint sent as a header (the standalone proxy's form), if any.
    pub fn subset_from_header(&self) -> Option<EndpointSubset> {
        self.control.subset.as_deref().map(EndpointSubset::from_comma_separated)
    }

    /// Header mutations every request gets: the generated request id, and the input control
    /// headers removed.
    fn base_mutations(&self) -> HeaderMutations {
        let mut m = HeaderMutations::default();
        if self.request_id_generated {
            m.set_header(headers::REQUEST_ID, self.request_id.clone());
        }
        for h in &self.control.present_controls {
            m.remove_header(h);
        }
        m
    }

    /// Finishes the request at end of body. `body` is `None` when the request had no body at
    /// all (headers ended the stream): the result is then [`Prepared::NoBody`] and the adapter
    /// routes to a random endpoint ([`pick_random_endpoint`]) without parsing or scheduling.
    ///
    /// Otherwise the body is parsed (400 on bad input), the target model resolved with `draw`,
    /// the priority looked up, and the body re-serialised when the model changed (the client's
    /// bytes are forwarded untouched when it did not).
    pub fn prepare(self, body: Option<Bytes>, snapshot: &Snapshot, draw: u64) -> Result<Prepared, RequestError> {
        let Some(body) = body else {
            let mutations = self.base_mutations();
            return Ok(Prepared::NoBody(NoBodyRequest {
                request_id: self.request_id,
                headers: self.headers,
                mutations,
            }));
        };
        let parsed = parse_body(self.api(), &body)?;
        self.prepare_parsed(body, parsed, snapshot, draw).map(|p| Prepared::Inference(Box::new(p)))
    }

    /// [`RequestHead::prepare`] for a body the adapter has already parsed (with
    /// [`parse_body`] for this head's API), e.g. to choose the pool by its model: the body is
    /// parsed once whatever the number of pools.
    pub fn prepare_parsed(
        self,
        body: Bytes,
        parsed: ParsedBody,
        snapshot: &Snapshot,
        draw: u64,
    ) -> Result<PreparedRequest, RequestError> {
        let rewrite = resolve_target_model(&parsed.model, self.control.model_rewrite.as_deref(), snapshot, draw);
        let mut json = parsed.json;
        let (body, body_rewritten) = if rewrite.is_rewritten() {
            (Bytes::from(serialize_with_model(&mut json, &rewrite.target)?), true)
        } else {
            (body, false)
        };
        let mut mutations = self.base_mutations();
        if !body.is_empty() {
            mutations.set_header(headers::CONTENT_LENGTH, body.len().to_string());
        }
        let objective = snapshot.objective_for(self.control.objective.as_deref(), &parsed.model);
        let (priority, goals) = objective.map_or((0, Default::default()), |o| (o.priority, o.goals));
        let request = InferenceRequest {
            request_id: self.request_id,
            model: parsed.model,
            target_model: rewrite.target.clone(),
            api: parsed.api,
            prompt: parsed.prompt,
            stream: parsed.stream,
            max_tokens: parsed.max_tokens,
            cache_salt: parsed.cache_salt,
            fairness_id: self.control.fairness_id().to_string(),
            objective: self.control.objective.clone(),
            priority,
            goals,
            headers: self.headers,
            body_bytes: body.len(),
        };
        Ok(PreparedRequest { request, body, body_rewritten, rewrite, json, control: self.control, mutations })
    }
}

/// The outcome of [`RequestHead::prepare`].
#[derive(Clone, Debug, PartialEq)]
pub enum Prepared {
    /// A request without a body (e.g. `GET /v1/models`): route it to a random endpoint; no
    /// parsing, admission or scheduling.
    NoBody(NoBodyRequest),
    /// An inference request, ready for admission and scheduling.
    Inference(Box<PreparedRequest>),
}

/// A body-less request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoBodyRequest {
    /// The request id.
    pub request_id: String,
    /// The request headers (lower-case names).
    pub headers: Vec<(String, String)>,
    /// Header mutations (generated request id, control headers removed); the adapter adds the
    /// destination.
    pub mutations: HeaderMutations,
}

/// An inference request ready for admission and scheduling.
#[derive(Clone, Debug, PartialEq)]
pub struct PreparedRequest {
    /// What the scheduler sees.
    pub request: InferenceRequest,
    /// The body to forward (re-serialised with the target model if it changed).
    pub body: Bytes,
    /// True if `body` differs from what the client sent.
    pub body_rewritten: bool,
    /// How the target model was chosen.
    pub rewrite: ModelRewriteDecision,
    /// The parsed body, `model` set to the target, for plugins that read other fields.
    pub json: Map<String, Value>,
    /// The control headers (SLOs, subset header, test endpoint selection).
    pub control: ControlHeaders,
    /// Header mutations for the upstream request: request id, `content-length`, control
    /// headers removed. The adapter adds the destination with
    /// [`HeaderMutations::set_destination`] after scheduling.
    pub mutations: HeaderMutations,
}

impl PreparedRequest {
    /// A response tracker for this request (knows whether the client asked for streaming).
    pub fn response_tracker(&self) -> ResponseTracker {
        ResponseTracker::new(self.request.stream)
    }

    /// A restorer that writes the client's model name back into the response.
    pub fn model_restorer(&self) -> ModelNameRestorer {
        ModelNameRestorer::new(&self.rewrite.target, &self.rewrite.incoming)
    }
}

/// One-shot form of [`RequestHead::new`] + [`RequestHead::prepare`], for adapters that have the
/// whole request at once (the standalone proxy, the simulator).
pub fn build_request<K: AsRef<str>, V: AsRef<str>>(
    path: Option<&str>,
    headers: impl IntoIterator<Item = (K, V)>,
    body: Option<Bytes>,
    snapshot: &Snapshot,
    draws: Draws,
) -> Result<Prepared, RequestError> {
    RequestHead::new(path, headers, draws.request_id).prepare(body, snapshot, draws.pick)
}

/// The endpoints a request may be scheduled on: all of the snapshot's, or those the subset hint
/// allows (matched by IP). None left → 503 ServiceUnavailable.
pub fn candidates<'a>(
    snapshot: &'a Snapshot,
    subset: Option<&EndpointSubset>,
) -> Result<Cow<'a, [Arc<Endpoint>]>, RequestError> {
    let eps: Cow<'a, [Arc<Endpoint>]> = match subset {
        None => Cow::Borrowed(&snapshot.endpoints),
        Some(s) => Cow::Owned(snapshot.endpoints.iter().filter(|e| s.admits(e.address())).cloned().collect()),
    };
    if eps.is_empty() {
        return Err(RequestError::service_unavailable(MSG_NO_CANDIDATES));
    }
    Ok(eps)
}

/// A uniformly random endpoint for a body-less request, chosen with `draw`. No endpoints →
/// 500 Internal.
pub fn pick_random_endpoint(snapshot: &Snapshot, draw: u64) -> Result<&Arc<Endpoint>, RequestError> {
    let n = snapshot.endpoints.len() as u64;
    if n == 0 {
        return Err(RequestError::internal(MSG_NO_ENDPOINTS));
    }
    snapshot.endpoints.get((draw % n) as usize).ok_or_else(|| RequestError::internal(MSG_NO_ENDPOINTS))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use igw_core::{
        EndpointId, EndpointMeta, InferenceObjective, ModelRewrite, ObjectRef, Prompt, RewriteRule, TargetModel,
    };

    fn snap() -> Snapshot {
        let eps = ["10.0.0.1:8000", "10.0.0.1:8001", "10.0.0.2:8000"]
            .iter()
            .enumerate()
            .map(|(i, a)| Arc::new(Endpoint::new(EndpointId(i as u32), EndpointMeta::parse_addr(a).unwrap())))
            .collect();
        let objective = |name: &str, priority, legacy: Option<&str>| InferenceObjective {
            id: ObjectRef::new("ns", name),
            priority,
            legacy_model_name: legacy.map(str::to_string),
            goals: Default::default(),
        };
        Snapshot {
            endpoints: eps,
            objectives: [
                ("critical".to_string(), objective("critical", 10, None)),
                ("legacy".to_string(), objective("legacy", -1, Some("old-model"))),
            ]
            .into(),
            rewrites: vec![ModelRewrite {
                id: ObjectRef::new("ns", "rw"),
                created_unix: 0,
                rules: vec![RewriteRule {
                    matches: vec!["base".into()],
                    targets: vec![TargetModel { model: "lora-a".into(), weight: 1 }],
                }],
            }],
            ..Default::default()
        }
    }

    fn inference(p: Prepared) -> PreparedRequest {
        match p {
            Prepared::Inference(r) => *r,
            Prepared::NoBody(_) => panic!("expected an inference request"),
        }
    }

    #[test]
    fn builds_a_request_without_rewrite() {
        let body = Bytes::from_static(br#"{"model":"m","prompt":"hi","stream":true,"max_tokens":9}"#);
        let headers = [("X-Request-Id", "rid"), ("x-gateway-inference-objective", "critical"), ("Accept", "*/*")];
        let p = inference(
            build_request(Some("/v1/completions"), headers, Some(body.clone()), &snap(), Draws::default()).unwrap(),
        );
        let r = &p.request;
        assert_eq!((r.request_id.as_str(), r.model.as_str(), r.target_model.as_str()), ("rid", "m", "m"));
        assert_eq!(
            (r.priority, r.fairness_id.as_str(), r.objective.as_deref()),
            (10, "default-flow", Some("critical"))
        );
        assert_eq!((r.stream, r.max_tokens, r.body_bytes), (true, Some(9), body.len()));
        assert_eq!(r.prompt, Prompt::Text("hi".into()));
        assert_eq!(r.header("accept"), Some("*/*"));
        assert!(!p.body_rewritten);
        assert_eq!(p.body, body, "unchanged body is forwarded as sent");
        assert_eq!(p.mutations.get("content-length"), Some(body.len().to_string().as_str()));
        assert_eq!(p.mutations.get("x-request-id"), None);
        assert_eq!(p.mutations.remove, ["x-gateway-inference-objective"]);
        assert!(!p.model_restorer().is_active());
    }

    #[test]
    fn rewrites_the_body_and_generates_an_id() {
        let body = Bytes::from_static(br#"{"model":"base","messages":[{"role":"user","content":"x"}],"extra":1}"#);
        let head = RequestHead::new(
            None,
            vec![
                (":path".to_string(), "/v1/chat/completions".to_string()),
                ("x-gateway-inference-fairness-id".into(), "t1".into()),
            ],
            42,
        );
        assert!(head.request_id_generated);
        let p = inference(head.prepare(Some(body), &snap(), 7).unwrap());
        assert_eq!(p.request.api, ApiKind::ChatCompletions);
        assert_eq!((p.request.model.as_str(), p.request.target_model.as_str()), ("base", "lora-a"));
        assert_eq!(p.request.fairness_id, "t1");
        assert!(p.body_rewritten);
        let v: Value = serde_json::from_slice(&p.body).unwrap();
        assert_eq!((v["model"].as_str(), v["extra"].as_i64()), (Some("lora-a"), Some(1)));
        assert_eq!(p.json.get("model").and_then(Value::as_str), Some("lora-a"));
        assert_eq!(p.request.body_bytes, p.body.len());
        assert_eq!(p.mutations.get("content-length"), Some(p.body.len().to_string().as_str()));
        assert_eq!(p.mutations.get("x-request-id"), Some(headers::generate_request_id(42).as_str()));
        assert_eq!(p.mutations.remove, ["x-gateway-inference-fairness-id"]);
        let mut restorer = p.model_restorer();
        assert_eq!(&restorer.push(Bytes::from_static(br#"{"model":"lora-a"}"#))[..], br#"{"model":"base"}"#);
    }

    #[test]
    fn header_rewrite_and_legacy_priority() {
        let body = Bytes::from_static(br#"{"model":"old-model","prompt":"p"}"#);
        let p =
            build_request(None, [("x-gateway-model-name-rewrite", "forced")], Some(body), &snap(), Draws::default());
        let p = inference(p.unwrap());
        assert_eq!(p.request.target_model, "forced");
        assert_eq!(p.request.priority, -1, "legacy InferenceModel bound by the client's model");
        assert!(p.request.is_sheddable());
    }

    #[test]
    fn hermetic_errors() {
        let b = |s: &'static str| Some(Bytes::from_static(s.as_bytes()));
        let e = build_request(None, [("a", "b")], b("no healthy upstream"), &snap(), Draws::default()).unwrap_err();
        assert_eq!((e.code, e.http_status()), (ErrorCode::BadRequest, 400));
        assert!(e.envoy_body().starts_with("inference error: BadRequest - request body is not valid JSON"));
        let e =
            build_request(None, [("a", "b")], b(r#"{"prompt":"hello world"}"#), &snap(), Draws::default()).unwrap_err();
        assert_eq!(e.envoy_body(), "inference error: BadRequest - model not found in request body");
        // An empty body that was announced is not a body-less request.
        let e = build_request(None, [("a", "b")], b(""), &snap(), Draws::default()).unwrap_err();
        assert_eq!(e.http_status(), 400);
    }

    #[test]
    fn bodyless_requests_route_randomly() {
        let p = build_request(
            Some("/v1/models"),
            [("x-gateway-inference-objective", "x")],
            None,
            &snap(),
            Draws::default(),
        );
        let Prepared::NoBody(nb) = p.unwrap() else { panic!("expected NoBody") };
        assert_eq!(nb.mutations.remove, ["x-gateway-inference-objective"]);
        assert!(nb.mutations.get("x-request-id").is_some());
        let s = snap();
        let picks: Vec<_> = (0..3).map(|d| pick_random_endpoint(&s, d).unwrap().address().to_string()).collect();
        assert_eq!(picks, ["10.0.0.1:8000", "10.0.0.1:8001", "10.0.0.2:8000"]);
        let e = pick_random_endpoint(&Snapshot::default(), 0).unwrap_err();
        assert_eq!(e.envoy_body(), "inference error: Internal - no pods available in datastore");
    }

    #[test]
    fn candidate_filtering() {
        let s = snap();
        assert_eq!(candidates(&s, None).unwrap().len(), 3);
        let sub = EndpointSubset::from_list(["10.0.0.1:8000"]);
        assert_eq!(candidates(&s, Some(&sub)).unwrap().len(), 2, "matched by IP: both ranks stay");
        let e = candidates(&s, Some(&EndpointSubset::from_list(["192.168.1.99:8000"]))).unwrap_err();
        assert_eq!(
            e.envoy_body(),
            "inference error: ServiceUnavailable - failed to find endpoint candidates for serving the request"
        );
        assert!(candidates(&s, Some(&EndpointSubset::default())).is_err(), "empty list: no candidates");
        assert!(candidates(&Snapshot::default(), None).is_err());
        let head = RequestHead::new(None, [("x-gateway-destination-endpoint-subset", "10.0.0.2:8000")], 0);
        assert_eq!(candidates(&s, head.subset_from_header().as_ref()).unwrap().len(), 1);
    }
}
