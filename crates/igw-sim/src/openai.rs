//! OpenAI-API request parsing and response formatting, shaped as vLLM serves them.

use std::fmt::Write;

use serde::Deserialize;
use serde_json::Value;

/// Which endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `/v1/completions`.
    Completions,
    /// `/v1/chat/completions`.
    Chat,
}

/// The prompt of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Text (a completions prompt, or chat messages rendered as text).
    Text(String),
    /// Token ids (a completions prompt given as ids).
    Ids(Vec<u32>),
}

/// The fields of a completions or chat request the simulator honours.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    /// `model`, if given.
    pub model: Option<String>,
    /// The prompt.
    pub prompt: Prompt,
    /// `max_tokens` (or `max_completion_tokens` for chat).
    pub max_tokens: Option<u32>,
    /// `min_tokens`.
    pub min_tokens: u32,
    /// `ignore_eos`: generate exactly `max_tokens`.
    pub ignore_eos: bool,
    /// `stream`.
    pub stream: bool,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize)]
struct Raw {
    model: Option<String>,
    prompt: Option<Value>,
    messages: Option<Vec<Value>>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    min_tokens: u32,
    #[serde(default)]
    ignore_eos: bool,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
}

fn content_text(v: &Value, out: &mut String) {
    match v {
        Value::String(s) => out.push_str(s),
        Value::Array(parts) => {
            for p in parts {
                if let Some(t) = p.get("text").and_then(Value::as_str) {
                    out.push_str(t);
                }
            }
        }
        _ => {}
    }
}

/// Parses a request body; the error is a message for a 400 response.
pub fn parse(api: Api, body: &[u8]) -> Result<GenerateRequest, String> {
    let raw: Raw = serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))?;
    let prompt = match api {
        Api::Completions => match raw.prompt {
            Some(Value::String(s)) => Prompt::Text(s),
            Some(Value::Array(items)) if items.iter().all(Value::is_u64) => {
                Prompt::Ids(items.iter().filter_map(Value::as_u64).map(|x| x as u32).collect())
            }
            Some(Value::Array(items)) if items.len() == 1 && items[0].is_string() => {
                Prompt::Text(items[0].as_str().unwrap_or_default().to_string())
            }
            Some(Value::Array(_)) => return Err("only a single prompt per request is supported".into()),
            Some(_) | None => return Err("`prompt` must be a string or a list of token ids".into()),
        },
        Api::Chat => {
            let msgs = raw.messages.ok_or("`messages` is required")?;
            if msgs.is_empty() {
                return Err("`messages` must not be empty".into());
            }
            let mut text = String::new();
            for m in &msgs {
                let role = m.get("role").and_then(Value::as_str).ok_or("every message needs a `role`")?;
                let _ = writeln!(text, "<|{role}|>");
                if let Some(c) = m.get("content") {
                    content_text(c, &mut text);
                }
                text.push('\n');
            }
            text.push_str("<|assistant|>\n");
            Prompt::Text(text)
        }
    };
    if let Prompt::Ids(ids) = &prompt
        && ids.is_empty()
    {
        return Err("`prompt` must not be empty".into());
    }
    let max_tokens = match api {
        Api::Chat => raw.max_completion_tokens.or(raw.max_tokens),
        Api::Completions => raw.max_tokens,
    };
    if max_tokens == Some(0) {
        return Err("max_tokens must be at least 1".into());
    }
    Ok(GenerateRequest {
        model: raw.model,
        prompt,
        max_tokens,
        min_tokens: raw.min_tokens,
        ignore_eos: raw.ignore_eos,
        stream: raw.stream,
        include_usage: raw.stream_options.is_some_and(|o| o.include_usage),
    })
}

/// Four-character words used as generated tokens (so 4-chars-per-token re-tokenises to one token each).
const WORDS: &[&str] = &[" the", " sim", " gpu", " and", " kv ", " run", " one", " for", " lot", " new"];

/// Text of output token `index`.
pub fn token_text(index: u32) -> &'static str {
    WORDS[index as usize % WORDS.len()]
}

/// Usage numbers of a finished request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt: u32,
    /// Generated tokens.
    pub completion: u32,
    /// Prompt tokens served from the prefix cache.
    pub cached: u32,
}

fn usage_json(u: Usage) -> String {
    format!(
        "{{\"prompt_tokens\":{},\"total_tokens\":{},\"completion_tokens\":{},\"prompt_tokens_details\":{{\"cached_tokens\":{}}}}}",
        u.prompt,
        u.prompt + u.completion,
        u.completion,
        u.cached
    )
}

/// Everything a response's JSON needs besides tokens. `model_json` is the JSON-encoded model name.
#[derive(Debug, Clone)]
pub struct ResponseMeta {
    /// Endpoint.
    pub api: Api,
    /// Response id (`cmpl-…` / `chatcmpl-…`).
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// The model name, already JSON-encoded (with quotes).
    pub model_json: String,
    /// Whether SSE chunks carry `"usage":null` and a final usage chunk follows.
    pub include_usage: bool,
}

impl ResponseMeta {
    fn head(&self, out: &mut String) {
        let object = match self.api {
            Api::Completions => "text_completion",
            Api::Chat => "chat.completion.chunk",
        };
        let _ = write!(
            out,
            "data: {{\"id\":\"{}\",\"object\":\"{object}\",\"created\":{},\"model\":{},\"choices\":[",
            self.id, self.created, self.model_json
        );
    }

    /// The SSE event for one token; `finish` is set on the last one.
    pub fn token_event(&self, out: &mut String, index: u32, finish: Option<&str>) {
        self.head(out);
        let fin = finish.map_or_else(|| "null".to_string(), |f| format!("\"{f}\""));
        let text = token_text(index);
        match self.api {
            Api::Completions => {
                let _ = write!(
                    out,
                    "{{\"index\":0,\"text\":\"{text}\",\"logprobs\":null,\"finish_reason\":{fin},\"stop_reason\":null}}]"
                );
            }
            Api::Chat => {
                let _ = write!(
                    out,
                    "{{\"index\":0,\"delta\":{{\"content\":\"{text}\"}},\"logprobs\":null,\"finish_reason\":{fin},\"stop_reason\":null}}]"
                );
            }
        }
        if self.include_usage {
            out.push_str(",\"usage\":null");
        }
        out.push_str("}\n\n");
    }

    /// The first chat SSE event (role, empty content); none for completions.
    pub fn role_event(&self, out: &mut String) {
        if self.api == Api::Chat {
            self.head(out);
            out.push_str(
                "{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]",
            );
            if self.include_usage {
                out.push_str(",\"usage\":null");
            }
            out.push_str("}\n\n");
        }
    }

    /// The final events: a usage chunk (if asked for) and `data: [DONE]`.
    pub fn tail_events(&self, out: &mut String, usage: Usage) {
        if self.include_usage {
            self.head(out);
            let _ = write!(out, "],\"usage\":{}}}\n\n", usage_json(usage));
        }
        out.push_str("data: [DONE]\n\n");
    }

    /// A non-streaming response body.
    pub fn full_response(&self, completion: u32, finish: &str, usage: Usage) -> String {
        let mut text = String::with_capacity(completion as usize * 4);
        for i in 0..completion {
            text.push_str(token_text(i));
        }
        match self.api {
            Api::Completions => format!(
                "{{\"id\":\"{}\",\"object\":\"text_completion\",\"created\":{},\"model\":{},\"choices\":[{{\"index\":0,\"text\":\"{text}\",\"logprobs\":null,\"finish_reason\":\"{finish}\",\"stop_reason\":null,\"prompt_logprobs\":null}}],\"usage\":{}}}",
                self.id,
                self.created,
                self.model_json,
                usage_json(usage)
            ),
            Api::Chat => format!(
                "{{\"id\":\"{}\",\"object\":\"chat.completion\",\"created\":{},\"model\":{},\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":\"{text}\",\"tool_calls\":[]}},\"logprobs\":null,\"finish_reason\":\"{finish}\",\"stop_reason\":null}}],\"usage\":{}}}",
                self.id,
                self.created,
                self.model_json,
                usage_json(usage)
            ),
        }
    }
}

/// vLLM's error body: `{"error":{"message","type","param","code"}}`.
pub fn error_body(message: &str, kind: &str, code: u16) -> String {
    serde_json::json!({"error": {"message": message, "type": kind, "param": null, "code": code}}).to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_completions_and_chat() {
        let r = parse(Api::Completions, br#"{"model":"m","prompt":"hello","max_tokens":5,"ignore_eos":true,"stream":true,"stream_options":{"include_usage":true}}"#).unwrap();
        assert_eq!(r.prompt, Prompt::Text("hello".into()));
        assert_eq!((r.max_tokens, r.ignore_eos, r.stream, r.include_usage), (Some(5), true, true, true));
        let r = parse(Api::Completions, br#"{"prompt":[1,2,3]}"#).unwrap();
        assert_eq!(r.prompt, Prompt::Ids(vec![1, 2, 3]));
        let r = parse(
            Api::Chat,
            br#"{"messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],"max_completion_tokens":3}"#,
        )
        .unwrap();
        assert_eq!(r.max_tokens, Some(3));
        assert!(matches!(r.prompt, Prompt::Text(t) if t.contains("hi")));
        assert!(parse(Api::Chat, b"{").is_err());
        assert!(parse(Api::Chat, br#"{"messages":[]}"#).is_err());
        assert!(parse(Api::Completions, br#"{"prompt":5}"#).is_err());
    }

    #[test]
    fn sse_events_are_valid_json() {
        let meta = ResponseMeta {
            api: Api::Chat,
            id: "chatcmpl-1".into(),
            created: 1,
            model_json: "\"m\"".into(),
            include_usage: true,
        };
        let mut s = String::new();
        meta.role_event(&mut s);
        meta.token_event(&mut s, 0, Some("length"));
        meta.tail_events(&mut s, Usage { prompt: 3, completion: 1, cached: 0 });
        let events: Vec<&str> = s.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.len(), 4);
        for e in &events[..3] {
            let v: Value = serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(v["id"], "chatcmpl-1");
        }
        assert_eq!(events[3], "data: [DONE]");
        let body: Value =
            serde_json::from_str(&meta.full_response(2, "stop", Usage { prompt: 3, completion: 2, cached: 0 }))
                .unwrap();
        assert_eq!(body["usage"]["total_tokens"], 5);
    }
}
