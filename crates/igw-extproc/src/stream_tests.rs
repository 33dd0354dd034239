#![allow(clippy::unwrap_used)]

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue, Metadata};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::{HttpTrailers, ProtocolConfiguration};
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};
use igw_core::{Datastore, EndpointMeta};
use igw_request::Usage;

use super::*;
use crate::metadata::string_value;

use igw_testkit::{Recorder, TestPool};

const EPS: &str = "10.0.0.1:8000,10.0.0.2:8000,10.0.0.3:8000";

fn picker_with(endpoints: &str, max: usize) -> Arc<TestPool> {
    TestPool::build(igw_testkit::datastore(endpoints), "round-robin", max, Recorder::default())
}

fn failing(err: RequestError) -> Arc<TestPool> {
    TestPool::build(igw_testkit::datastore(EPS), "round-robin", 1, Recorder::failing(err))
}

/// The ends the pool's core reported.
fn ends(p: &TestPool) -> Vec<igw_testkit::End> {
    p.recorder.ends()
}

fn state(p: &Arc<TestPool>) -> StreamState {
    state_cfg(p, StreamConfig::default())
}

fn state_cfg(p: &Arc<TestPool>, cfg: StreamConfig) -> StreamState {
    StreamState::new(p.pool.clone(), Arc::new(cfg))
}

fn header_map(headers: &[(&str, &str)]) -> HeaderMap {
    HeaderMap {
        headers: headers
            .iter()
            .map(|(k, v)| HeaderValue { key: k.to_string(), value: String::new(), raw_value: v.as_bytes().to_vec() })
            .collect(),
    }
}

fn req(r: processing_request::Request) -> ProcessingRequest {
    ProcessingRequest { request: Some(r), ..Default::default() }
}

fn headers(h: &[(&str, &str)], eos: bool) -> ProcessingRequest {
    req(processing_request::Request::RequestHeaders(HttpHeaders {
        headers: Some(header_map(h)),
        end_of_stream: eos,
        ..Default::default()
    }))
}

fn post(path: &str) -> ProcessingRequest {
    headers(&[(":method", "POST"), (":path", path), ("content-type", "application/json")], false)
}

fn body(b: &[u8], eos: bool) -> ProcessingRequest {
    req(processing_request::Request::RequestBody(HttpBody {
        body: b.to_vec(),
        end_of_stream: eos,
        ..Default::default()
    }))
}

fn resp_headers(h: &[(&str, &str)], eos: bool) -> ProcessingRequest {
    req(processing_request::Request::ResponseHeaders(HttpHeaders {
        headers: Some(header_map(h)),
        end_of_stream: eos,
        ..Default::default()
    }))
}

fn resp_body(b: &[u8], eos: bool) -> ProcessingRequest {
    req(processing_request::Request::ResponseBody(HttpBody {
        body: b.to_vec(),
        end_of_stream: eos,
        ..Default::default()
    }))
}

fn with_modes(mut m: ProcessingRequest, request: BodySendMode, response: BodySendMode) -> ProcessingRequest {
    m.protocol_config = Some(ProtocolConfiguration {
        request_body_mode: request as i32,
        response_body_mode: response as i32,
        send_body_without_waiting_for_header_response: false,
    });
    m
}

fn with_metadata(mut m: ProcessingRequest, namespace: &str, key: &str, v: Value) -> ProcessingRequest {
    m.metadata_context = Some(Metadata {
        filter_metadata: [(namespace.to_string(), Struct { fields: [(key.to_string(), v)].into() })].into(),
        ..Default::default()
    });
    m
}

/// Feeds `m`, running a requested pick to completion. Panics on a gRPC failure.
fn feed(s: &mut StreamState, m: ProcessingRequest) -> Vec<ProcessingResponse> {
    match feed_step(s, m) {
        Step::Reply(out) => out,
        other => panic!("unexpected step {other:?}"),
    }
}

fn feed_step(s: &mut StreamState, m: ProcessingRequest) -> Step {
    match s.on_message(m) {
        Step::Pick(pending) => {
            let pool = s.pool.clone();
            let r = futures::executor::block_on(pool.admit(pending.prepared()));
            s.on_picked(pending, r)
        }
        other => other,
    }
}

/// The common response of a request-headers response, and its dynamic metadata destination.
fn request_headers_of(r: &ProcessingResponse) -> (&CommonResponse, Option<String>) {
    let Some(processing_response::Response::RequestHeaders(h)) = &r.response else { panic!("not headers: {r:?}") };
    (h.response.as_ref().unwrap(), metadata_destination(r))
}

fn metadata_destination(r: &ProcessingResponse) -> Option<String> {
    let lb = r.dynamic_metadata.as_ref()?.fields.get("envoy.lb")?;
    let Some(Kind::StructValue(s)) = &lb.kind else { return None };
    match &s.fields.get(DESTINATION_ENDPOINT)?.kind {
        Some(Kind::StringValue(v)) => Some(v.clone()),
        _ => None,
    }
}

fn set_headers(c: &CommonResponse) -> Vec<(String, String)> {
    c.header_mutation
        .as_ref()
        .map(|m| {
            m.set_headers
                .iter()
                .map(|o| {
                    let h = o.header.as_ref().unwrap();
                    (h.key.clone(), String::from_utf8(h.raw_value.clone()).unwrap())
                })
                .collect()
        })
        .unwrap_or_default()
}

fn get<'a>(set: &'a [(String, String)], k: &str) -> Option<&'a str> {
    set.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

/// The streamed chunks of body responses: (bytes, end_of_stream).
fn streamed_of(rs: &[ProcessingResponse]) -> Vec<(Vec<u8>, bool)> {
    rs.iter()
        .map(|r| {
            let br = match &r.response {
                Some(
                    processing_response::Response::RequestBody(b) | processing_response::Response::ResponseBody(b),
                ) => b,
                other => panic!("not a body response: {other:?}"),
            };
            let m = br.response.as_ref().unwrap().body_mutation.as_ref().unwrap().mutation.as_ref().unwrap();
            let body_mutation::Mutation::StreamedResponse(s) = m else { panic!("not streamed: {m:?}") };
            (s.body.clone(), s.end_of_stream)
        })
        .collect()
}

fn immediate(rs: &[ProcessingResponse]) -> (i32, String) {
    assert_eq!(rs.len(), 1, "{rs:?}");
    let Some(processing_response::Response::ImmediateResponse(ir)) = &rs[0].response else { panic!("{rs:?}") };
    (ir.status.unwrap().code, String::from_utf8(ir.body.clone()).unwrap())
}

const BODY: &[u8] = br#"{"model":"m","prompt":"hello"}"#;

#[test]
fn duplex_body_split_across_chunks() {
    let p = picker_with(EPS, 1);
    let mut s = state(&p);
    assert!(feed(&mut s, post("/v1/completions")).is_empty(), "headers are held");
    assert!(feed(&mut s, body(&BODY[..13], false)).is_empty());
    assert!(feed(&mut s, body(&BODY[13..], true)).len() == 2);
    // A fresh round-robin pool: its first pick is the first endpoint.
    let p = picker_with(EPS, 1);
    let mut s = state(&p);
    feed(&mut s, post("/v1/completions"));
    feed(&mut s, body(&BODY[..5], false));
    feed(&mut s, body(&BODY[5..20], false));
    let out = feed(&mut s, body(&BODY[20..], true));
    assert_eq!(out.len(), 2);
    let (common, md) = request_headers_of(&out[0]);
    assert!(common.clear_route_cache);
    let set = set_headers(common);
    assert_eq!(set[0], (DESTINATION_ENDPOINT.to_string(), "10.0.0.1:8000".to_string()), "destination first");
    assert_eq!(md.as_deref(), Some("10.0.0.1:8000"), "metadata carries the identical string");
    assert_eq!(get(&set, "content-length"), Some(BODY.len().to_string().as_str()));
    assert!(get(&set, "x-request-id").is_some(), "generated request id is set upstream");
    let opt = &common.header_mutation.as_ref().unwrap().set_headers[0];
    assert_eq!(opt.append_action, 2, "OVERWRITE_IF_EXISTS_OR_ADD");
    assert_eq!(streamed_of(&out[1..]), vec![(BODY.to_vec(), true)]);
    assert!(!s.is_done(), "the response is still to come");
}

#[test]
fn large_body_is_rechunked() {
    let p = picker_with(EPS, 1);
    let mut s = state(&p);
    let prompt = "x".repeat(1_000_000);
    let b = format!(r#"{{"model":"m","prompt":"{prompt}"}}"#).into_bytes();
    feed(&mut s, post("/v1/completions"));
    for c in b[..b.len() - 1].chunks(16_384) {
        assert!(feed(&mut s, body(c, false)).is_empty());
    }
    let out = feed(&mut s, body(&b[b.len() - 1..], true));
    let chunks = streamed_of(&out[1..]);
    assert_eq!(chunks.len(), b.len().div_ceil(62_000));
    assert!(chunks.iter().all(|(c, _)| c.len() <= 62_000));
    assert!(chunks[..chunks.len() - 1].iter().all(|(_, eos)| !eos));
    assert!(chunks.last().unwrap().1);
    assert_eq!(chunks.into_iter().flat_map(|(c, _)| c).collect::<Vec<_>>(), b);
}

#[test]
fn bad_json_and_missing_model_are_400() {
    let p = picker_with(EPS, 1);
    let mut s = state(&p);
    feed(&mut s, post("/v1/completions"));
    let (code, msg) = immediate(&feed(&mut s, body(b"no healthy upstream", true)));
    assert_eq!(code, 400);
    assert!(msg.starts_with("inference error: BadRequest - "), "{msg}");
    assert!(s.is_done());
    let mut s = state(&p);
    feed(&mut s, post("/v1/completions"));
    let out = feed(&mut s, body(br#"{"prompt":"hello world"}"#, true));
    assert_eq!(immediate(&out), (400, "inference error: BadRequest - model not found in request body".into()));
    drop(s);
    assert!(ends(&p).is_empty(), "nothing was picked");
}

#[test]
fn no_endpoints_is_503() {
    let p = picker_with("", 1);
    let mut s = state(&p);
    feed(&mut s, post("/v1/completions"));
    let out = feed(&mut s, body(BODY, true));
    assert_eq!(
        immediate(&out),
        (
            503,
            "inference error: ServiceUnavailable - failed to find endpoint candidates for serving the request".into()
        )
    );
}

#[test]
fn body_too_large_is_413() {
    let p = picker_with(EPS, 1);
    let mut s = state_cfg(&p, StreamConfig { max_body_bytes: 10, ..Default::default() });
    feed(&mut s, post("/v1/completions"));
    assert_eq!(immediate(&feed(&mut s, body(BODY, false))).0, 413);
    assert!(s.is_done());
}

#[test]
fn bodyless_get_routes_at_once() {
    let p = picker_with(EPS, 1);
    let mut s = state(&p);
    let out = feed(&mut s, headers(&[(":method", "GET"), (":path", "/v1/models")], true));
    assert_eq!(out.len(), 1);
    let (common, md) = request_headers_of(&out[0]);
    let set = set_headers(common);
    let dest = get(&set, DESTINATION_ENDPOINT).unwrap();
    assert!(EPS.split(',').any(|e| e == dest), "{dest}");
    assert_eq!(md.as_deref(), Some(dest));
    assert_eq!(get(&set, "content-length"), None);
    // The response still flows through and is echoed.
    let out = feed(&mut s, resp_headers(&[(":status", "200")], false));
    assert!(matches!(out[0].response, Some(processing_response::Response::ResponseHeaders(_))));
    let out = feed(&mut s, resp_body(b"{\"data\":[]}", true));
    assert_eq!(streamed_of(&out), vec![(b"{\"data\":[]}".to_vec(), true)]);
    assert!(s.is_done());
    assert!(ends(&p).is_empty(), "body-less requests are not picks");

    let empty = picker_with("", 1);
    let mut s = state(&empty);
    let out = feed(&mut s, headers(&[(":method", "GET"), (":path", "/v1/models")], true));
    assert_eq!(immediate(&out), (500, "inference error: Internal - no pods available in datastore".into()));
}

fn subset_list(items: &[&str]) -> Value {
    Value { kind: Some(Kind::ListValue(ListValue { values: items.iter().map(|s| string_value(*s)).collect() })) }
}

fn destination_with_subset(p: &Arc<TestPool>, v: Value) -> Result<String, (i32, String)> {
    let mut s = state(p);
    feed(
        &mut s,
        with_metadata(post("/v1/completions"), "envoy.lb.subset_hint", "x-gateway-destination-endpoint-subset", v),
    );
    let out = feed(&mut s, body(BODY, true));
    match &out[0].response {
        Some(processing_response::Response::ImmediateResponse(_)) => Err(immediate(&out)),
        _ => Ok(request_headers_of(&out[0]).1.unwrap()),
    }
}

#[test]
fn subset_hint_confines_the_pick() {
    let p = picker_with(EPS, 1);
    assert_eq!(destination_with_subset(&p, subset_list(&["10.0.0.2:8000"])).unwrap(), "10.0.0.2:8000");
    assert_eq!(destination_with_subset(&p, string_value("10.0.0.9:1, 10.0.0.3:8000")).unwrap(), "10.0.0.3:8000");
    let e = destination_with_subset(&p, subset_list(&[])).unwrap_err();
    assert_eq!(e.0, 503);
    let e = destination_with_subset(&p, subset_list(&["192.168.1.99:8000"])).unwrap_err();
    assert_eq!(
        e,
        (
            503,
            "inference error: ServiceUnavailable - failed to find endpoint candidates for serving the request".into()
        )
    );
    // Ignored when the filter is disabled (a fresh round-robin pool picks the first endpoint).
    let p = picker_with(EPS, 1);
    let mut s = state_cfg(&p, StreamConfig { disable_subset_filter: true, ..Default::default() });
    let m = with_metadata(post("/"), "envoy.lb.subset_hint", "x-gateway-destination-endpoint-subset", subset_list(&[]));
    feed(&mut s, m);
    assert_eq!(request_headers_of(&feed(&mut s, body(BODY, true))[0]).1.as_deref(), Some("10.0.0.1:8000"));
}

#[test]
fn fallback_list_when_configured() {
    let p = picker_with(EPS, 5);
    let mut s = state_cfg(&p, StreamConfig { max_endpoints: 2, ..Default::default() });
    feed(&mut s, post("/v1/completions"));
    let out = feed(&mut s, body(BODY, true));
    let (common, md) = request_headers_of(&out[0]);
    assert_eq!(get(&set_headers(common), DESTINATION_ENDPOINT), Some("10.0.0.1:8000,10.0.0.2:8000"));
    assert_eq!(md.as_deref(), Some("10.0.0.1:8000,10.0.0.2:8000"));
}

#[test]
fn client_destination_overwritten_and_control_headers_removed() {
    let p = picker_with(EPS, 1);
    let mut s = state(&p);
    feed(
        &mut s,
        headers(
            &[
                (":path", "/v1/completions"),
                ("x-gateway-destination-endpoint", "6.6.6.6:80"),
                ("x-gateway-destination-endpoint-served", "6.6.6.6:80"),
                ("x-gateway-inference-objective", "critical"),
                ("x-gateway-inference-fairness-id", "tenant"),
                ("x-request-id", "rid-1"),
            ],
            false,
        ),
    );
    let out = feed(&mut s, body(BODY, true));
    let (common, _) = request_headers_of(&out[0]);
    let set = set_headers(common);
    assert_eq!(set.iter().filter(|(k, _)| k == DESTINATION_ENDPOINT).count(), 1);
    assert_eq!(get(&set, DESTINATION_ENDPOINT), Some("10.0.0.1:8000"));
    assert_eq!(get(&set, "x-request-id"), None, "the client's id is kept as is");
    let removed = &common.header_mutation.as_ref().unwrap().remove_headers;
    for h in ["x-gateway-inference-objective", "x-gateway-inference-fairness-id", DESTINATION_ENDPOINT_SERVED] {
        assert!(removed.iter().any(|r| r == h), "{h} not removed: {removed:?}");
    }
}

#[test]
fn buffered_mode() {
    let p = picker_with(EPS, 1);
    let mut s = state(&p);
    let h = headers(&[(":path", "/v1/completions"), ("x-gateway-model-name-rewrite", "target")], false);
    let out = feed(&mut s, with_modes(h, BodySendMode::Buffered, BodySendMode::Streamed));
    assert_eq!(out.len(), 1, "headers answered at once");
    let Some(processing_response::Response::RequestHeaders(hr)) = &out[0].response else { panic!() };
    assert!(hr.response.as_ref().is_none_or(|c| c.header_mutation.is_none()));
    let out = feed(&mut s, body(BODY, true));
    assert_eq!(out.len(), 1);
    let Some(processing_response::Response::RequestBody(br)) = &out[0].response else { panic!("{out:?}") };
    let common = br.response.as_ref().unwrap();
    assert!(common.clear_route_cache);
    let set = set_headers(common);
    assert_eq!(get(&set, DESTINATION_ENDPOINT), Some("10.0.0.1:8000"));
    assert_eq!(metadata_destination(&out[0]).as_deref(), Some("10.0.0.1:8000"));
    let Some(body_mutation::Mutation::Body(new_body)) = &common.body_mutation.as_ref().unwrap().mutation else {
        panic!()
    };
    let v: serde_json::Value = serde_json::from_slice(new_body).unwrap();
    assert_eq!(v["model"], "target");
    assert_eq!(get(&set, "content-length"), Some(new_body.len().to_string().as_str()));

    // Response (STREAMED): chunks needing no rewrite pass unmodified; the model is written back.
    feed(&mut s, resp_headers(&[(":status", "200"), ("content-type", "application/json")], false));
    let out = feed(&mut s, resp_body(b"{\"id\":1,", false));
    let Some(processing_response::Response::ResponseBody(br)) = &out[0].response else { panic!() };
    assert!(br.response.is_none(), "unchanged chunk: no mutation");
    let out = feed(&mut s, resp_body(br#""model":"target"}"#, true));
    let Some(processing_response::Response::ResponseBody(br)) = &out[0].response else { panic!() };
    let Some(body_mutation::Mutation::Body(b)) =
        &br.response.as_ref().unwrap().body_mutation.as_ref().unwrap().mutation
    else {
        panic!()
    };
    assert_eq!(b, br#""model":"m"}"#);
    assert!(s.is_done());
    assert_eq!(ends(&p).len(), 1);
}

#[test]
fn buffered_bodyless_and_unrewritten() {
    let p = picker_with(EPS, 1);
    let mut s = state(&p);
    let out = feed(&mut s, with_modes(post("/v1/completions"), BodySendMode::Buffered, BodySendMode::None));
    assert_eq!(out.len(), 1);
    let out = feed(&mut s, body(BODY, true));
    let Some(processing_response::Response::RequestBody(br)) = &out[0].response else { panic!() };
    assert!(br.response.as_ref().unwrap().body_mutation.is_none(), "body forwarded as sent");
    // No response body messages in NONE mode: the response ends with its headers.
    feed(&mut s, resp_headers(&[(":status", "200")], false));
    assert!(s.is_done());
    assert_eq!(ends(&p).len(), 1);
}

#[test]
fn response_model_name_written_back_across_chunks() {
    let p = picker_with(EPS, 1);
    let mut s = state(&p);
    feed(&mut s, headers(&[(":path", "/v1/completions"), ("x-gateway-model-name-rewrite", "lora-x")], false));
    let out = feed(&mut s, body(BODY, true));
    let sent: Vec<u8> = streamed_of(&out[1..]).into_iter().flat_map(|(c, _)| c).collect();
    let v: serde_json::Value = serde_json::from_slice(&sent).unwrap();
    assert_eq!(v["model"], "lora-x", "upstream sees the target model");
    feed(&mut s, resp_headers(&[(":status", "200"), ("content-type", "application/json")], false));
    let whole = br#"{"id":"x","model":"lora-x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#;
    let mut echoed = Vec::new();
    for (i, c) in whole.chunks(7).enumerate() {
        let eos = (i + 1) * 7 >= whole.len();
        for (b, e) in streamed_of(&feed(&mut s, resp_body(c, eos))) {
            assert_eq!(e, eos);
            echoed.extend(b);
        }
    }
    let v: serde_json::Value = serde_json::from_slice(&echoed).unwrap();
    assert_eq!(v["model"], "m");
    let f = ends(&p);
    assert_eq!(f.len(), 1);
    let summary = f[0].0.unwrap();
    assert_eq!(summary.usage.map(|u| u.total_tokens), Some(7));
    assert!(!summary.streaming);
}

#[test]
fn sse_usage_reaches_finished() {
    let p = picker_with(EPS, 1);
    let mut s = state(&p);
    feed(&mut s, post("/v1/chat/completions"));
    let b = br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
    feed(&mut s, body(b, true));
    let served = with_metadata(
        resp_headers(&[(":status", "200"), ("content-type", "text/event-stream")], false),
        "envoy.lb",
        DESTINATION_ENDPOINT_SERVED,
        string_value("10.0.0.1:8000"),
    );
    feed(&mut s, served);
    let events = [
        "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\ndata: [DONE]\n\n",
    ];
    assert_eq!(streamed_of(&feed(&mut s, resp_body(events[0].as_bytes(), false))).len(), 1, "echoed at once");
    feed(&mut s, resp_body(events[1].as_bytes(), false));
    assert_eq!(streamed_of(&feed(&mut s, resp_body(b"", true))), vec![(Vec::new(), true)]);
    drop(s);
    let f = ends(&p);
    assert_eq!(f.len(), 1, "exactly once");
    let (summary, served) = &f[0];
    let summary = summary.unwrap();
    assert!(summary.streaming);
    assert_eq!(
        summary.usage,
        Some(Usage { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7, cached_tokens: 0 })
    );
    assert_eq!(*served, Some("10.0.0.1:8000".parse().unwrap()));
}

#[test]
fn finished_once_on_abort() {
    let p = picker_with(EPS, 1);
    let mut s = state(&p);
    feed(&mut s, post("/v1/completions"));
    feed(&mut s, body(BODY, true));
    feed(&mut s, resp_headers(&[(":status", "200")], false));
    drop(s);
    assert_eq!(ends(&p).len(), 1);
    assert!(ends(&p)[0].0.is_none(), "no summary on abort");
    assert_eq!(p.in_flight(), 0);
    // Aborted before the pick: nothing to finish.
    let mut s = state(&p);
    feed(&mut s, post("/v1/completions"));
    drop(s);
    assert_eq!(ends(&p).len(), 1);
}

#[test]
fn server_errors_and_statuses() {
    let p = picker_with(EPS, 1);
    let mut s = state(&p);
    feed(&mut s, post("/v1/completions"));
    feed(&mut s, body(BODY, true));
    feed(&mut s, resp_headers(&[(":status", "503")], false));
    feed(&mut s, resp_body(b"overloaded", true));
    assert!(ends(&p)[0].0.unwrap().model_server_error);

    for (err, code) in [
        (RequestError::new(ErrorCode::ModelServerError, "x"), tonic::Code::Internal),
        (RequestError::new(ErrorCode::Unknown, "x"), tonic::Code::Unknown),
    ] {
        let p = failing(err);
        let mut s = state(&p);
        feed(&mut s, post("/v1/completions"));
        match feed_step(&mut s, body(BODY, true)) {
            Step::Fail(status) => assert_eq!(status.code(), code),
            other => panic!("{other:?}"),
        }
        assert!(s.is_done());
    }
    let p = failing(RequestError::resource_exhausted("system saturated, sheddable request dropped"));
    let mut s = state(&p);
    feed(&mut s, post("/v1/completions"));
    assert_eq!(
        immediate(&feed(&mut s, body(BODY, true))),
        (429, "inference error: ResourceExhausted - system saturated, sheddable request dropped".into())
    );
}

#[test]
fn request_trailers_end_the_body() {
    let p = picker_with(EPS, 1);
    let mut s = state(&p);
    feed(&mut s, post("/v1/completions"));
    feed(&mut s, body(BODY, false));
    let out = feed(&mut s, req(processing_request::Request::RequestTrailers(HttpTrailers::default())));
    assert_eq!(out.len(), 3, "{out:?}");
    assert_eq!(streamed_of(&out[1..2]), vec![(BODY.to_vec(), false)]);
    assert!(matches!(out[2].response, Some(processing_response::Response::RequestTrailers(_))));
    // Response trailers end the response.
    feed(&mut s, resp_headers(&[(":status", "200")], false));
    feed(&mut s, resp_body(b"{}", false));
    let out = feed(&mut s, req(processing_request::Request::ResponseTrailers(HttpTrailers::default())));
    assert!(matches!(out.last().unwrap().response, Some(processing_response::Response::ResponseTrailers(_))));
    assert!(s.is_done());
    assert_eq!(ends(&p).len(), 1);
}

#[test]
fn protocol_violations_fail_the_stream() {
    let p = picker_with(EPS, 1);
    let mut s = state(&p);
    assert!(matches!(feed_step(&mut s, body(BODY, true)), Step::Fail(_)));
    let mut s = state(&p);
    feed(&mut s, post("/"));
    assert!(matches!(feed_step(&mut s, resp_headers(&[], false)), Step::Fail(_)));
}

fn conformance() -> StreamConfig {
    StreamConfig {
        test_endpoint_selection: true,
        served_endpoint_verifier: true,
        pool: Some("default/pool-a".into()),
        ..Default::default()
    }
}

fn steered_post(selection: &str) -> ProcessingRequest {
    headers(&[(":method", "POST"), (":path", "/v1/completions"), (TEST_ENDPOINT_SELECTION, selection)], false)
}

/// The destination of a steered request, or its immediate error status.
fn steered_destination(p: &Arc<TestPool>, cfg: StreamConfig, selection: &str) -> Result<String, i32> {
    let mut s = state_cfg(p, cfg);
    feed(&mut s, steered_post(selection));
    let out = feed(&mut s, body(BODY, true));
    match &out[0].response {
        Some(processing_response::Response::ImmediateResponse(_)) => Err(immediate(&out).0),
        _ => Ok(request_headers_of(&out[0]).1.unwrap()),
    }
}

#[test]
fn conformance_steering_header_confines_the_pick() {
    // Two ranks on one pod: an ip:port entry picks exactly that rank, a bare IP any of them.
    let p = picker_with("10.0.0.1:8000,10.0.0.1:8001,10.0.0.2:8000", 1);
    assert_eq!(steered_destination(&p, conformance(), "10.0.0.1:8001").unwrap(), "10.0.0.1:8001");
    assert_eq!(steered_destination(&p, conformance(), "10.0.0.2").unwrap(), "10.0.0.2:8000");
    // Addresses outside the pool are ignored; nothing left is a 503.
    assert_eq!(steered_destination(&p, conformance(), "192.168.9.9, 10.0.0.2:8000").unwrap(), "10.0.0.2:8000");
    assert_eq!(steered_destination(&p, conformance(), "192.168.9.9"), Err(503));
    // Without test mode the header is an ordinary header: the picker's first choice wins.
    assert_eq!(steered_destination(&p, StreamConfig::default(), "10.0.0.2").unwrap(), "10.0.0.1:8000");
    // Body-less requests are steered too.
    let mut s = state_cfg(&p, conformance());
    let out = feed(&mut s, headers(&[(":method", "GET"), (TEST_ENDPOINT_SELECTION, "10.0.0.1:8001")], true));
    assert_eq!(request_headers_of(&out[0]).1.as_deref(), Some("10.0.0.1:8001"));
}

#[test]
fn conformance_verifier_reports_the_served_endpoint() {
    let p = picker_with(EPS, 1);
    let verifier_headers = |s: &mut StreamState, m: ProcessingRequest| {
        let out = feed(s, m);
        let Some(processing_response::Response::ResponseHeaders(h)) = &out[0].response else { panic!("{out:?}") };
        set_headers(h.response.as_ref().unwrap())
    };
    // The gateway reports the served endpoint in envoy.lb metadata.
    let mut s = state_cfg(&p, conformance());
    feed(&mut s, steered_post("10.0.0.3"));
    let out = feed(&mut s, body(BODY, true));
    let set = set_headers(request_headers_of(&out[0]).0);
    assert_eq!(get(&set, ECHO_SET_HEADER), Some("x-conformance-test-served-endpoint:10.0.0.3:8000"));
    let m = with_metadata(resp_headers(&[(":status", "200")], false), "envoy.lb", DESTINATION_ENDPOINT_SERVED, {
        string_value("10.0.0.3:8000")
    });
    let set = verifier_headers(&mut s, m);
    assert_eq!(get(&set, CONFORMANCE_SERVED_ENDPOINT), Some("10.0.0.3:8000"));
    assert_eq!(get(&set, CONFORMANCE_SELECTED_ENDPOINT), Some("10.0.0.3:8000"));
    assert_eq!(get(&set, CONFORMANCE_EPP_POOL), Some("default/pool-a"));

    // No envoy.lb metadata at all, or the namespace without the key: the reason is reported.
    let mut s = state_cfg(&p, conformance());
    feed(&mut s, post("/v1/completions"));
    feed(&mut s, body(BODY, true));
    let set = verifier_headers(&mut s, resp_headers(&[(":status", "200")], false));
    assert_eq!(get(&set, CONFORMANCE_SERVED_ENDPOINT), Some("fail: missing envoy lb metadata"));
    let mut s = state_cfg(&p, conformance());
    feed(&mut s, post("/v1/completions"));
    feed(&mut s, body(BODY, true));
    let m = with_metadata(resp_headers(&[(":status", "200")], false), "envoy.lb", "other", string_value("x"));
    let set = verifier_headers(&mut s, m);
    assert_eq!(get(&set, CONFORMANCE_SERVED_ENDPOINT), Some("fail: missing destination endpoint served metadata"));

    // Off by default: no extra headers either way.
    let mut s = state(&p);
    feed(&mut s, post("/v1/completions"));
    let out = feed(&mut s, body(BODY, true));
    assert_eq!(get(&set_headers(request_headers_of(&out[0]).0), ECHO_SET_HEADER), None);
    let out = feed(&mut s, resp_headers(&[(":status", "200")], false));
    let Some(processing_response::Response::ResponseHeaders(h)) = &out[0].response else { panic!("{out:?}") };
    assert!(h.response.is_none());
}

/// With a tracer provider installed, a request continues the caller's trace: `gateway.request`
/// is a child of the incoming `traceparent`, `gateway.request_orchestration` a child of it, and
/// the upstream request carries the request span's context.
#[cfg(feature = "otel")]
#[test]
fn otel_spans_continue_the_callers_trace() {
    use opentelemetry::trace::TraceContextExt as _;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};

    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    let _ = opentelemetry::Context::current().span();

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let p = picker_with(EPS, 1);
    let mut s = state(&p);
    let traceparent = format!("00-{trace_id}-{caller_span}-01");
    feed(&mut s, headers(&[(":method", "POST"), (":path", "/v1/completions"), ("traceparent", &traceparent)], false));
    let out = feed(&mut s, body(BODY, true));
    let set = set_headers(request_headers_of(&out[0]).0);
    let injected = get(&set, "traceparent").expect("trace context injected upstream").to_string();
    feed(&mut s, resp_headers(&[(":status", "200")], true));
    drop(s);
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let request = spans.iter().find(|s| s.name == "gateway.request").expect("request span");
    let orch = spans.iter().find(|s| s.name == "gateway.request_orchestration").expect("orchestration span");
    assert_eq!(request.span_context.trace_id().to_string(), trace_id);
    assert_eq!(request.parent_span_id.to_string(), caller_span);
    assert_eq!(orch.parent_span_id, request.span_context.span_id());
    assert_eq!(injected, format!("00-{trace_id}-{}-01", request.span_context.span_id()));
    assert!(
        request
            .attributes
            .iter()
            .any(|kv| kv.key.as_str() == "gateway.destination_endpoint" && kv.value.as_str() == "10.0.0.1:8000"),
        "{:?}",
        request.attributes
    );
}

/// The core's response headers (here the session token) reach the client's response.
#[test]
fn session_token_is_written_on_the_response() {
    let ds = Arc::new(Datastore::with_endpoints(EndpointMeta::parse_list(EPS).unwrap()));
    let sched = igw_sched::config::scheduler_from_yaml("plugins:\n- type: session-affinity-scorer\n").unwrap();
    let p = TestPool::with_scheduler(ds, sched, 1, Recorder::default());
    let mut s = state(&p);
    let token = igw_sched::session::encode_token("default", "10.0.0.2:8000");
    feed(&mut s, headers(&[(":method", "POST"), (":path", "/v1/completions"), ("x-session-token", &token)], false));
    let out = feed(&mut s, body(BODY, true));
    assert_eq!(request_headers_of(&out[0]).1.as_deref(), Some("10.0.0.2:8000"), "the token's pod is picked");
    let out = feed(&mut s, resp_headers(&[(":status", "200")], false));
    let Some(processing_response::Response::ResponseHeaders(h)) = &out[0].response else { panic!("{out:?}") };
    assert_eq!(get(&set_headers(h.response.as_ref().unwrap()), "x-session-token"), Some(token.as_str()));
}
