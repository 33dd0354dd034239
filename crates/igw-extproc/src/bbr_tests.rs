#![allow(clippy::unwrap_used)]

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::ext_proc::v3::{ProtocolConfiguration, body_mutation};

use super::*;

fn config(streaming: bool) -> Arc<BbrConfig> {
    let mut base_models = BaseModels::default();
    base_models.add("Qwen/Qwen3-32B", ["food-review-1"]);
    Arc::new(BbrConfig { base_models, streaming, ..Default::default() })
}

fn msg(r: processing_request::Request) -> ProcessingRequest {
    ProcessingRequest { request: Some(r), ..Default::default() }
}

fn headers(eos: bool) -> ProcessingRequest {
    let h = HeaderMap {
        headers: vec![HeaderValue {
            key: ":path".into(),
            raw_value: b"/v1/chat/completions".to_vec(),
            ..Default::default()
        }],
    };
    msg(processing_request::Request::RequestHeaders(HttpHeaders {
        headers: Some(h),
        end_of_stream: eos,
        ..Default::default()
    }))
}

fn body(b: &[u8], eos: bool) -> ProcessingRequest {
    msg(processing_request::Request::RequestBody(HttpBody {
        body: b.to_vec(),
        end_of_stream: eos,
        ..Default::default()
    }))
}

fn with_modes(mut m: ProcessingRequest, mode: BodySendMode) -> ProcessingRequest {
    m.protocol_config = Some(ProtocolConfiguration {
        request_body_mode: mode as i32,
        response_body_mode: mode as i32,
        ..Default::default()
    });
    m
}

fn set_headers(c: &CommonResponse) -> Vec<(String, String)> {
    c.header_mutation
        .as_ref()
        .unwrap()
        .set_headers
        .iter()
        .map(|o| {
            let h = o.header.as_ref().unwrap();
            (h.key.clone(), String::from_utf8(h.raw_value.clone()).unwrap())
        })
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn duplex_sets_model_headers_and_restreams_the_body() {
    let cfg = config(false);
    let mut s = BbrStream::new(cfg.clone());
    assert!(s.on_message(with_modes(headers(false), BodySendMode::FullDuplexStreamed)).is_empty(), "headers held");
    let b = br#"{"model":"food-review-1","messages":[{"role":"user","content":"hi"}]}"#;
    assert!(s.on_message(body(&b[..10], false)).is_empty());
    let out = s.on_message(body(&b[10..], true));
    assert_eq!(out.len(), 2, "{out:?}");
    let Some(processing_response::Response::RequestHeaders(h)) = &out[0].response else { panic!("{out:?}") };
    let common = h.response.as_ref().unwrap();
    assert!(common.clear_route_cache);
    assert_eq!(
        set_headers(common),
        pairs(&[
            (MODEL_NAME_HEADER, "food-review-1"),
            (BASE_MODEL_NAME_HEADER, "Qwen/Qwen3-32B"),
            ("content-length", &b.len().to_string()),
        ])
    );
    let Some(processing_response::Response::RequestBody(br)) = &out[1].response else { panic!("{out:?}") };
    let Some(body_mutation::Mutation::StreamedResponse(sr)) =
        &br.response.as_ref().unwrap().body_mutation.as_ref().unwrap().mutation
    else {
        panic!("{out:?}")
    };
    assert_eq!((&sr.body[..], sr.end_of_stream), (&b[..], true), "the body is forwarded unchanged");
    assert_eq!(cfg.metrics.success.with_label_values(&[] as &[&str]).get(), 1);

    // The response is echoed chunk by chunk.
    let out = s.on_message(msg(processing_request::Request::ResponseBody(HttpBody {
        body: b"data: x\n\n".to_vec(),
        end_of_stream: true,
        ..Default::default()
    })));
    assert_eq!(out.len(), 1);
    assert!(s.is_done());
}

#[test]
fn buffered_mode_answers_headers_at_once_and_mutates_on_the_body() {
    let mut s = BbrStream::new(config(true));
    let out = s.on_message(with_modes(headers(false), BodySendMode::Buffered));
    assert!(matches!(out[0].response, Some(processing_response::Response::RequestHeaders(_))));
    let out = s.on_message(body(br#"{"model":"Qwen/Qwen3-32B","prompt":"x"}"#, true));
    let Some(processing_response::Response::RequestBody(br)) = &out[0].response else { panic!("{out:?}") };
    let common = br.response.as_ref().unwrap();
    assert!(common.clear_route_cache && common.body_mutation.is_none());
    assert_eq!(
        set_headers(common),
        pairs(&[(MODEL_NAME_HEADER, "Qwen/Qwen3-32B"), (BASE_MODEL_NAME_HEADER, "Qwen/Qwen3-32B")])
    );
}

#[test]
fn missing_empty_and_unknown_models() {
    let cfg = config(true);
    let run = |b: &[u8]| {
        let mut s = BbrStream::new(cfg.clone());
        s.on_message(headers(false));
        let out = s.on_message(body(b, true));
        match &out[0].response {
            Some(processing_response::Response::RequestHeaders(h)) => Ok(set_headers(h.response.as_ref().unwrap())),
            Some(processing_response::Response::ImmediateResponse(ir)) => {
                Err((ir.status.unwrap().code, String::from_utf8(ir.body.clone()).unwrap()))
            }
            other => panic!("{other:?}"),
        }
    };
    let set = run(br#"{"prompt":"x"}"#).unwrap();
    assert_eq!(set, pairs(&[(BASE_MODEL_NAME_HEADER, ""), ("content-length", "14")]));
    assert_eq!(cfg.metrics.field_not_found.with_label_values(&["model"]).get(), 1);
    run(br#"{"model":"","prompt":"x"}"#).unwrap();
    assert_eq!(cfg.metrics.field_empty.with_label_values(&["model"]).get(), 1);
    let set = run(br#"{"model":"other"}"#).unwrap();
    assert_eq!(set[..2], pairs(&[(MODEL_NAME_HEADER, "other"), (BASE_MODEL_NAME_HEADER, "")])[..]);
    let (status, msg) = run(b"not json").unwrap_err();
    assert_eq!(status, 400);
    assert!(msg.starts_with("inference error: BadRequest - request body is not JSON"), "{msg}");
    assert_eq!(run(b"[1,2]").unwrap_err().0, 400);
}

#[test]
fn bodyless_requests_pass() {
    let mut s = BbrStream::new(config(true));
    let out = s.on_message(headers(true));
    let Some(processing_response::Response::RequestHeaders(h)) = &out[0].response else { panic!("{out:?}") };
    assert!(h.response.is_none());
}

#[test]
fn plugin_flags() {
    assert_eq!(
        BbrPlugin::parse(
            r#"body-field-to-header:model-extractor:{"fieldName":"model","headerName":"X-Gateway-Model-Name"}"#
        )
        .unwrap(),
        BbrPlugin::BodyFieldToHeader {
            name: "model-extractor".into(),
            field: "model".into(),
            header: MODEL_NAME_HEADER.into()
        }
    );
    assert_eq!(
        BbrPlugin::parse("body-field-to-header:tenant:{\"fieldName\":\"user\",\"headerName\":\"x-tenant\"}").unwrap(),
        BbrPlugin::BodyFieldToHeader { name: "tenant".into(), field: "user".into(), header: "x-tenant".into() }
    );
    assert_eq!(
        BbrPlugin::parse("base-model-to-header:base-model-mapper").unwrap(),
        BbrPlugin::BaseModelToHeader { name: "base-model-mapper".into() }
    );
    let e = BbrPlugin::parse("teleport:x").unwrap_err().to_string();
    assert!(e.contains("unknown plugin type \"teleport\""), "{e}");
    assert!(BbrPlugin::parse("body-field-to-header").unwrap_err().to_string().contains("type:name"));
    assert!(BbrPlugin::parse("body-field-to-header:x:{nope").unwrap_err().to_string().contains("not JSON"));
    assert!(
        BbrPlugin::parse("body-field-to-header:x:{\"fieldName\":3}").unwrap_err().to_string().contains("fieldName")
    );
}

#[test]
fn base_model_mapping_file() {
    let m = BaseModels::from_yaml("- baseModel: Qwen/Qwen3-32B\n  adapters: [food-review-1, food-review-2]\n- baseModel: meta-llama/Llama-3.1-8B\n")
        .unwrap();
    assert_eq!(m.base_of("food-review-2"), "Qwen/Qwen3-32B");
    assert_eq!(m.base_of("meta-llama/Llama-3.1-8B"), "meta-llama/Llama-3.1-8B");
    assert_eq!(m.base_of("unknown"), "");
    let e = BaseModels::from_yaml("- baseModel: a\n  adpaters: [x]\n").unwrap_err().to_string();
    assert!(e.contains("adpaters"), "{e}");
}

#[test]
fn metrics_render_upstream_names() {
    let cfg = config(true);
    let mut s = BbrStream::new(cfg.clone());
    s.on_message(headers(false));
    s.on_message(body(br#"{"model":"m"}"#, true));
    let mut out = String::new();
    cfg.metrics.render(&mut out);
    assert!(out.contains("bbr_success_total 1\n"), "{out}");
    assert!(out.contains("bbr_info{build_ref=\""), "{out}");
    assert!(out.contains("bbr_plugin_duration_seconds_count{extension_point=\"RequestProcessing\",plugin_name=\"model-extractor\",plugin_type=\"body-field-to-header\"} 1"), "{out}");
}
