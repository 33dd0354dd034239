//! Parsing OpenAI-style request bodies, once, from the complete body.
//!
//! The API kind comes from the request path. Each API has its own required field (`prompt`,
//! `messages`, `input`, `items`); the prompt is flattened into an [`igw_core::Prompt`] for the
//! scheduler (prefix hashing, token estimates). The whole JSON object is kept so the body can be
//! re-serialised with the target model and every other field intact.

use std::fmt::Write as _;

use igw_core::{ApiKind, ChatMessage, Prompt};
use serde_json::{Map, Value};

use crate::error::{MSG_MODEL_NOT_FOUND, RequestError};

/// A request body, parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedBody {
    /// Which API the body was validated against.
    pub api: ApiKind,
    /// The `model` the client asked for.
    pub model: String,
    /// `"stream": true`.
    pub stream: bool,
    /// `max_tokens`, else `max_completion_tokens`, else `max_output_tokens` (clamped to `u32`).
    pub max_tokens: Option<u32>,
    /// `cache_salt`, if a string.
    pub cache_salt: Option<String>,
    /// The prompt, flattened.
    pub prompt: Prompt,
    /// The whole JSON object, for re-serialisation.
    pub json: Map<String, Value>,
}

/// Parses a complete body for the API named by request `path` (see [`ApiKind::from_path`]).
pub fn parse_request_body(path: &str, body: &[u8]) -> Result<ParsedBody, RequestError> {
    parse_body(ApiKind::from_path(path), body)
}

/// Parses a complete body for `api`.
///
/// Errors (all `BadRequest`): invalid JSON; a body that is not a JSON object; the API's required
/// field missing, empty or of the wrong shape; `model` missing or not a string.
pub fn parse_body(api: ApiKind, body: &[u8]) -> Result<ParsedBody, RequestError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| RequestError::bad_request(format!("request body is not valid JSON: {e}")))?;
    let Value::Object(json) = value else {
        return Err(RequestError::bad_request("request body must be a JSON object"));
    };
    let prompt = extract_prompt(api, &json)?;
    let model = match json.get("model") {
        Some(Value::String(m)) => m.clone(),
        _ => return Err(RequestError::bad_request(MSG_MODEL_NOT_FOUND)),
    };
    Ok(ParsedBody {
        api,
        model,
        stream: json.get("stream").and_then(Value::as_bool).unwrap_or(false),
        max_tokens: ["max_tokens", "max_completion_tokens", "max_output_tokens"]
            .iter()
            .find_map(|k| json.get(*k).and_then(as_token_count)),
        cache_salt: json.get("cache_salt").and_then(Value::as_str).map(str::to_string),
        prompt,
        json,
    })
}

fn api_name(api: ApiKind) -> &'static str {
    match api {
        ApiKind::Completions => "completions",
        ApiKind::ChatCompletions => "chat completions",
        ApiKind::Embeddings => "embeddings",
        ApiKind::Responses => "responses",
        ApiKind::Conversations => "conversations",
    }
}

fn shape_error(api: ApiKind, what: impl std::fmt::Display) -> RequestError {
    RequestError::bad_request(format!("invalid {} request: {what}", api_name(api)))
}

fn missing(api: ApiKind, field: &str) -> RequestError {
    shape_error(api, format_args!("must have {field} field"))
}

fn extract_prompt(api: ApiKind, json: &Map<String, Value>) -> Result<Prompt, RequestError> {
    match api {
        ApiKind::Completions => text_input(api, json, "prompt"),
        ApiKind::Embeddings => text_input(api, json, "input"),
        ApiKind::ChatCompletions => {
            let msgs = non_empty_array(api, json, "messages")?;
            let msgs = msgs.iter().enumerate().map(|(i, m)| chat_message(api, i, m)).collect::<Result<_, _>>()?;
            Ok(Prompt::Messages(msgs))
        }
        ApiKind::Responses => {
            let instructions = json.get("instructions").and_then(Value::as_str).filter(|s| !s.is_empty());
            let mut msgs = Vec::new();
            if let Some(ins) = instructions {
                msgs.push(ChatMessage { role: "system".into(), content: ins.to_string() });
            }
            match json.get("input") {
                None | Some(Value::Null) => Err(missing(api, "input")),
                Some(Value::String(s)) if msgs.is_empty() => Ok(Prompt::Text(s.clone())),
                Some(Value::String(s)) => {
                    msgs.push(ChatMessage { role: "user".into(), content: s.clone() });
                    Ok(Prompt::Messages(msgs))
                }
                Some(Value::Array(items)) => {
                    msgs.extend(items.iter().map(item_message));
                    Ok(Prompt::Messages(msgs))
                }
                Some(_) => Err(shape_error(api, "input must be a string or an array of items")),
            }
        }
        ApiKind::Conversations => {
            let items = non_empty_array(api, json, "items")?;
            Ok(Prompt::Messages(items.iter().map(item_message).collect()))
        }
    }
}

/// `prompt` (completions) or `input` (embeddings): a non-empty string, or a non-empty array of
/// strings, token ids or token-id arrays.
fn text_input(api: ApiKind, json: &Map<String, Value>, field: &str) -> Result<Prompt, RequestError> {
    match json.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(Prompt::Text(s.clone())),
        Some(v @ Value::Array(a)) if !a.is_empty() => {
            let mut text = String::new();
            append_input_text(v, &mut text);
            Ok(Prompt::Text(text))
        }
        None | Some(Value::Null) | Some(Value::String(_)) | Some(Value::Array(_)) => Err(missing(api, field)),
        Some(_) => Err(shape_error(api, format_args!("{field} must be a string or an array"))),
    }
}

/// A text form of a prompt given as strings and/or token ids. Strings in an array are joined
/// with `\n`; a token id is written as its number followed by a space, so that one token
/// sequence is a prefix of another exactly when its text form is.
fn append_input_text(v: &Value, out: &mut String) {
    match v {
        Value::String(s) => out.push_str(s),
        Value::Number(n) => {
            let _ = write!(out, "{n} ");
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                if i > 0 && !item.is_number() {
                    out.push('\n');
                }
                append_input_text(item, out);
            }
        }
        _ => {}
    }
}

fn non_empty_array<'a>(api: ApiKind, json: &'a Map<String, Value>, field: &str) -> Result<&'a [Value], RequestError> {
    match json.get(field) {
        Some(Value::Array(a)) if !a.is_empty() => Ok(a),
        None | Some(Value::Null) | Some(Value::Array(_)) => Err(missing(api, field)),
        Some(_) => Err(shape_error(api, format_args!("{field} must be an array"))),
    }
}

fn chat_message(api: ApiKind, i: usize, m: &Value) -> Result<ChatMessage, RequestError> {
    let Value::Object(m) = m else {
        return Err(shape_error(api, format_args!("messages[{i}] must be an object")));
    };
    let role = m.get("role").and_then(Value::as_str).unwrap_or_default().to_string();
    let content = content_text(m.get("content")).ok_or_else(|| {
        shape_error(api, format_args!("messages[{i}].content must be a string or an array of content parts"))
    })?;
    Ok(ChatMessage { role, content })
}

/// Message content: a string, null/absent (e.g. an assistant turn with only tool calls), or an
/// array of content parts whose `text` fields are joined with `\n` (images and audio carry no
/// text and are skipped). `None` for any other shape.
fn content_text(v: Option<&Value>) -> Option<String> {
    match v {
        None | Some(Value::Null) => Some(String::new()),
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(parts)) => {
            let mut out = String::new();
            let texts = parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str));
            for (i, t) in texts.enumerate() {
                if i > 0 {
                    out.push('\n');
                }
                out.push_str(t);
            }
            Some(out)
        }
        Some(_) => None,
    }
}

/// One Responses/Conversations item as a message. Message items keep their role (default
/// `user`) and text; tool outputs become `tool` messages; any other item is kept as its compact
/// JSON under its `type`, so the flattened prompt stays deterministic.
fn item_message(item: &Value) -> ChatMessage {
    let role_of = |default: &str| item.get("role").and_then(Value::as_str).unwrap_or(default).to_string();
    match item {
        Value::String(s) => ChatMessage { role: "user".into(), content: s.clone() },
        Value::Object(o) if o.contains_key("content") => {
            let content = content_text(o.get("content")).unwrap_or_else(|| compact(o.get("content")));
            ChatMessage { role: role_of("user"), content }
        }
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function_call_output") => {
            let content = match o.get("output") {
                Some(Value::String(s)) => s.clone(),
                other => compact(other),
            };
            ChatMessage { role: "tool".into(), content }
        }
        Value::Object(o) => ChatMessage {
            role: o.get("type").and_then(Value::as_str).unwrap_or("item").to_string(),
            content: compact(Some(item)),
        },
        other => ChatMessage { role: "item".into(), content: compact(Some(other)) },
    }
}

fn compact(v: Option<&Value>) -> String {
    v.map(Value::to_string).unwrap_or_default()
}

fn as_token_count(v: &Value) -> Option<u32> {
    if let Some(u) = v.as_u64() {
        return Some(u32::try_from(u).unwrap_or(u32::MAX));
    }
    let f = v.as_f64()?;
    (f.is_finite() && f >= 0.0 && f.fract() == 0.0).then(|| f.min(f64::from(u32::MAX)) as u32)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::body::BodyBuffer;
    use crate::error::ErrorCode;
    use proptest::prelude::*;

    fn parse(path: &str, body: &str) -> Result<ParsedBody, RequestError> {
        parse_request_body(path, body.as_bytes())
    }

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage { role: role.into(), content: content.into() }
    }

    #[test]
    fn invalid_json_is_a_bad_request() {
        let e = parse("/v1/completions", "no healthy upstream").unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert_eq!(e.http_status(), 400);
        assert!(e.message.contains("not valid JSON"), "{e}");
        assert!(parse("/v1/completions", "").unwrap_err().message.contains("JSON"));
        let e = parse("/v1/completions", "[1,2]").unwrap_err();
        assert_eq!(e.message, "request body must be a JSON object");
    }

    #[test]
    fn missing_model() {
        let e = parse("/v1/completions", r#"{"prompt":"hello world"}"#).unwrap_err();
        assert_eq!(e.envoy_body(), "inference error: BadRequest - model not found in request body");
        let e = parse("/v1/completions", r#"{"prompt":"hi","model":7}"#).unwrap_err();
        assert_eq!(e.message, MSG_MODEL_NOT_FOUND);
    }

    #[test]
    fn completions() {
        let p = parse(
            "/v1/completions",
            r#"{"model":"m","prompt":"hello","stream":true,"max_tokens":16,"cache_salt":"s","n":1}"#,
        )
        .unwrap();
        assert_eq!(p.api, ApiKind::Completions);
        assert_eq!((p.model.as_str(), p.stream, p.max_tokens), ("m", true, Some(16)));
        assert_eq!(p.cache_salt.as_deref(), Some("s"));
        assert_eq!(p.prompt, Prompt::Text("hello".into()));
        assert_eq!(p.json.len(), 6, "every field is kept");

        let p = parse("/v1/completions", r#"{"model":"m","prompt":["a","b"]}"#).unwrap();
        assert_eq!(p.prompt, Prompt::Text("a\nb".into()));
        let p = parse("/v1/completions", r#"{"model":"m","prompt":[1,2,30]}"#).unwrap();
        assert_eq!(p.prompt, Prompt::Text("1 2 30 ".into()));
        let p = parse("/v1/completions", r#"{"model":"m","prompt":[[1,2],[3]]}"#).unwrap();
        assert_eq!(p.prompt, Prompt::Text("1 2 \n3 ".into()));

        for bad in [r#"{"model":"m"}"#, r#"{"model":"m","prompt":""}"#, r#"{"model":"m","prompt":[]}"#] {
            assert_eq!(
                parse("/v1/completions", bad).unwrap_err().message,
                "invalid completions request: must have prompt field"
            );
        }
        let e = parse("/v1/completions", r#"{"model":"m","prompt":5}"#).unwrap_err();
        assert_eq!(e.message, "invalid completions request: prompt must be a string or an array");
        // Unknown paths are completions.
        assert_eq!(parse("/foo", r#"{"model":"m","prompt":"x"}"#).unwrap().api, ApiKind::Completions);
    }

    #[test]
    fn chat_completions_with_content_parts() {
        let body = r#"{"model":"m","max_completion_tokens":8,"messages":[
            {"role":"system","content":"be brief"},
            {"role":"user","content":[{"type":"text","text":"look"},{"type":"image_url","image_url":{"url":"data:x"}},{"type":"text","text":"here"}]},
            {"role":"assistant","content":null,"tool_calls":[]}
        ]}"#;
        let p = parse("/v1/chat/completions", body).unwrap();
        assert_eq!(p.api, ApiKind::ChatCompletions);
        assert_eq!(p.max_tokens, Some(8));
        assert_eq!(
            p.prompt,
            Prompt::Messages(vec![msg("system", "be brief"), msg("user", "look\nhere"), msg("assistant", "")])
        );

        let e = parse("/v1/chat/completions", r#"{"model":"m","messages":[]}"#).unwrap_err();
        assert_eq!(e.message, "invalid chat completions request: must have messages field");
        let e = parse("/v1/chat/completions", r#"{"model":"m","prompt":"x"}"#).unwrap_err();
        assert_eq!(e.message, "invalid chat completions request: must have messages field");
        let e = parse("/v1/chat/completions", r#"{"model":"m","messages":["hi"]}"#).unwrap_err();
        assert_eq!(e.message, "invalid chat completions request: messages[0] must be an object");
        let e = parse("/v1/chat/completions", r#"{"model":"m","messages":[{"role":"user","content":3}]}"#).unwrap_err();
        assert!(e.message.contains("messages[0].content"));
    }

    #[test]
    fn embeddings() {
        let p = parse("/v1/embeddings", r#"{"model":"e","input":["x","y"]}"#).unwrap();
        assert_eq!((p.api, p.prompt), (ApiKind::Embeddings, Prompt::Text("x\ny".into())));
        let e = parse("/v1/embeddings", r#"{"model":"e","input":""}"#).unwrap_err();
        assert_eq!(e.message, "invalid embeddings request: must have input field");
    }

    #[test]
    fn responses() {
        let p = parse("/v1/responses", r#"{"model":"m","input":"hi","max_output_tokens":5}"#).unwrap();
        assert_eq!((p.api, p.prompt, p.max_tokens), (ApiKind::Responses, Prompt::Text("hi".into()), Some(5)));
        let p = parse("/v1/responses", r#"{"model":"m","input":"hi","instructions":"be nice"}"#).unwrap();
        assert_eq!(p.prompt, Prompt::Messages(vec![msg("system", "be nice"), msg("user", "hi")]));
        let body = r#"{"model":"m","input":[
            {"role":"user","content":[{"type":"input_text","text":"q"}]},
            {"type":"function_call_output","call_id":"c","output":"42"},
            {"type":"reasoning"}
        ]}"#;
        let p = parse("/v1/responses", body).unwrap();
        assert_eq!(
            p.prompt,
            Prompt::Messages(vec![msg("user", "q"), msg("tool", "42"), msg("reasoning", r#"{"type":"reasoning"}"#)])
        );
        let e = parse("/v1/responses", r#"{"model":"m"}"#).unwrap_err();
        assert_eq!(e.message, "invalid responses request: must have input field");
        let e = parse("/v1/responses", r#"{"model":"m","input":1}"#).unwrap_err();
        assert_eq!(e.message, "invalid responses request: input must be a string or an array of items");
    }

    #[test]
    fn conversations() {
        let p =
            parse("/v1/conversations", r#"{"model":"m","items":[{"type":"message","role":"user","content":"hey"}]}"#)
                .unwrap();
        assert_eq!((p.api, p.prompt), (ApiKind::Conversations, Prompt::Messages(vec![msg("user", "hey")])));
        let e = parse("/v1/conversations", r#"{"model":"m","items":[]}"#).unwrap_err();
        assert_eq!(e.message, "invalid conversations request: must have items field");
    }

    #[test]
    fn max_tokens_forms() {
        let mt = |v: &str| {
            parse("/v1/completions", &format!(r#"{{"model":"m","prompt":"x","max_tokens":{v}}}"#)).unwrap().max_tokens
        };
        assert_eq!(mt("10"), Some(10));
        assert_eq!(mt("10.0"), Some(10));
        assert_eq!(mt("10.5"), None);
        assert_eq!(mt("-1"), None);
        assert_eq!(mt("null"), None);
        assert_eq!(mt("99999999999"), Some(u32::MAX));
        let p = parse("/v1/completions", r#"{"model":"m","prompt":"x","stream":"yes"}"#).unwrap();
        assert!(!p.stream);
    }

    #[test]
    fn split_body_across_chunks() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"h\u00e9llo \u2603"}]}"#;
        let whole = parse_request_body("/v1/chat/completions", body).unwrap();
        for cut in 0..=body.len() {
            let mut buf = BodyBuffer::default();
            buf.push(&body[..cut]).unwrap();
            buf.push(&body[cut..]).unwrap();
            assert_eq!(parse_request_body("/v1/chat/completions", &buf.take()).unwrap(), whole);
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!(r#"{{"model":"m","prompt":{}1{}}}"#, "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(parse("/v1/completions", &deep).unwrap_err().code, ErrorCode::BadRequest);
        let ok = format!(r#"{{"model":"m","prompt":{}1{}}}"#, "[".repeat(100), "]".repeat(100));
        assert_eq!(parse("/v1/completions", &ok).unwrap().prompt, Prompt::Text("1 ".into()));
    }

    proptest! {
        #[test]
        fn never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256), kind in 0usize..5) {
            let path = ["/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/responses", "/v1/conversations"][kind];
            let _ = parse_request_body(path, &bytes);
        }

        #[test]
        fn never_panics_on_json_like(s in r#"[\{\}\[\]",:a-z0-9 ]{0,64}"#) {
            let _ = parse_request_body("/v1/chat/completions", format!(r#"{{"model":"m","messages":{s}"#).as_bytes());
            let _ = parse_request_body("/v1/responses", format!(r#"{{"model":"m","input":[{s}]}}"#).as_bytes());
        }

        #[test]
        fn split_independent(cuts in proptest::collection::vec(0usize..200, 0..6), text in "\\PC{0,40}") {
            let body = serde_json::json!({"model": "m", "prompt": text, "max_tokens": 3}).to_string();
            let bytes = body.as_bytes();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort_unstable();
            let mut buf = BodyBuffer::default();
            let mut prev = 0;
            for c in cuts.into_iter().chain([bytes.len()]) {
                buf.push(&bytes[prev..c]).unwrap();
                prev = c;
            }
            let got = parse_request_body("/v1/completions", &buf.take());
            prop_assert_eq!(got, parse_request_body("/v1/completions", bytes));
        }
    }
}
