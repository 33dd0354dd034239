//! Response accounting: token usage from JSON bodies and from SSE streams, streaming detection,
//! first-token detection and model-server errors.
//!
//! SSE streams are parsed incrementally: lines are re-assembled across chunk boundaries, so a
//! usage event split over two chunks is still counted (upstream loses it).

use serde_json::Value;

use crate::headers::{CONTENT_TYPE, STATUS};
pub use crate::sse::MAX_SSE_LINE_BYTES;
use crate::sse::{SseData, SseFramer};
/// Largest non-streamed response body buffered to read its usage.
pub const MAX_JSON_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Token usage reported by a model server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt (input) tokens.
    pub prompt_tokens: u64,
    /// Completion (output) tokens.
    pub completion_tokens: u64,
    /// Total tokens (prompt + completion when the server did not say).
    pub total_tokens: u64,
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: u64,
}

/// Which field names a usage object uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Naming {
    /// `input_tokens` / `output_tokens` (Responses, Conversations).
    InputOutput,
    /// `prompt_tokens` / `completion_tokens` (chat, completions).
    PromptCompletion,
    /// Unknown object: input/output names first, then prompt/completion.
    Either,
}

impl Naming {
    fn for_object(object: &str) -> Self {
        if object.starts_with("response") || object.starts_with("conversation") {
            Naming::InputOutput
        } else if matches!(object, "chat.completion" | "chat.completion.chunk" | "text_completion") {
            Naming::PromptCompletion
        } else {
            Naming::Either
        }
    }
}

fn count(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

fn read_usage(u: &Value, naming: Naming) -> Usage {
    let io = (count(u, "input_tokens"), count(u, "output_tokens"));
    let pc = (count(u, "prompt_tokens"), count(u, "completion_tokens"));
    let (prompt, completion) = match naming {
        Naming::InputOutput => io,
        Naming::PromptCompletion => pc,
        Naming::Either => (io.0.or(pc.0), io.1.or(pc.1)),
    };
    let (prompt, completion) = (prompt.unwrap_or(0), completion.unwrap_or(0));
    // Both spellings seen upstream, plus the Responses API's.
    let cached = ["prompt_tokens_details", "prompt_token_details", "input_tokens_details"]
        .iter()
        .find_map(|k| u.get(*k).and_then(|d| count(d, "cached_tokens")))
        .unwrap_or(0);
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: count(u, "total_tokens").unwrap_or(prompt.saturating_add(completion)),
        cached_tokens: cached,
    }
}

/// Usage from a decoded response object: its `usage` member, with field names chosen by the
/// top-level `object` (`response*`/`conversation*` → input/output tokens; `chat.completion`,
/// `chat.completion.chunk`, `text_completion` → prompt/completion tokens; otherwise either).
pub fn usage_from_value(v: &Value) -> Option<Usage> {
    let u = v.get("usage").filter(|u| u.is_object())?;
    let object = v.get("object").and_then(Value::as_str).unwrap_or_default();
    Some(read_usage(u, Naming::for_object(object)))
}

/// Usage from a complete non-streamed JSON response body; `None` if it is not JSON or carries
/// no usage.
pub fn usage_from_json(body: &[u8]) -> Option<Usage> {
    if body.is_empty() {
        return None;
    }
    serde_json::from_slice::<Value>(body).ok().as_ref().and_then(usage_from_value)
}

/// Usage from one SSE event: a `usage` member, or a Responses API `response.completed` event's
/// `response.usage`.
fn usage_from_event(v: &Value) -> Option<Usage> {
    if let Some(u) = usage_from_value(v) {
        return Some(u);
    }
    if v.get("type").and_then(Value::as_str) == Some("response.completed") {
        let u = v.get("response")?.get("usage").filter(|u| u.is_object())?;
        return Some(read_usage(u, Naming::InputOutput));
    }
    None
}

fn non_empty_str(v: Option<&Value>) -> bool {
    v.and_then(Value::as_str).is_some_and(|s| !s.is_empty())
}

/// True if a decoded SSE event carries generated output (text, reasoning or tool calls).
fn has_content(v: &Value) -> bool {
    if let Some(choices) = v.get("choices").and_then(Value::as_array) {
        return choices.iter().any(|c| {
            non_empty_str(c.get("text"))
                || c.get("delta").is_some_and(|d| {
                    non_empty_str(d.get("content"))
                        || non_empty_str(d.get("reasoning_content"))
                        || non_empty_str(d.get("reasoning"))
                        || d.get("tool_calls").and_then(Value::as_array).is_some_and(|t| !t.is_empty())
                })
        });
    }
    // Responses API: `response.output_text.delta` and friends.
    v.get("type").and_then(Value::as_str).is_some_and(|t| t.ends_with(".delta")) && non_empty_str(v.get("delta"))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Reads usage and progress from an SSE stream fed in arbitrary chunks.
///
/// Lines end with `\n` or `\r\n`; `data:` lines are read with or without the space; `[DONE]`
/// is noted; `event:`, `id:` and comment lines are ignored. When several events carry usage (a
/// server reporting running totals), the last one wins. Only events that may matter are
/// decoded: every event until the first content, afterwards only those mentioning `usage`.
#[derive(Clone, Debug, Default)]
pub struct SseUsageParser {
    framer: SseFramer,
    events: SseEvents,
}

/// What the data events of a stream have said so far.
#[derive(Clone, Debug, Default)]
struct SseEvents {
    usage: Option<Usage>,
    data_events: u64,
    first_content: bool,
    done: bool,
}

impl SseUsageParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one chunk. Returns true if this chunk completed the first event carrying content
    /// (the adapter's time-to-first-token moment).
    pub fn push(&mut self, chunk: &[u8]) -> bool {
        let mut first = false;
        let events = &mut self.events;
        self.framer.push(chunk, |d| first |= events.data(d));
        first
    }

    /// Ends the stream, processing a last line that had no newline. Returns true if that line
    /// was the first content.
    pub fn finish(&mut self) -> bool {
        let mut first = false;
        let events = &mut self.events;
        self.framer.finish(|d| first = events.data(d));
        first
    }

    /// The usage seen so far (the last event that carried one).
    pub fn usage(&self) -> Option<Usage> {
        self.events.usage
    }

    /// `data:` events seen, excluding `[DONE]`: about one per generated token for vLLM.
    pub fn data_events(&self) -> u64 {
        self.events.data_events
    }

    /// True once an event with content has been seen.
    pub fn saw_content(&self) -> bool {
        self.events.first_content
    }

    /// True once `data: [DONE]` has been seen.
    pub fn saw_done(&self) -> bool {
        self.events.done
    }
}

impl SseEvents {
    /// Reads one data event; true if it was the stream's first content.
    fn data(&mut self, d: SseData<'_>) -> bool {
        let data = d.payload;
        if data == b"[DONE]" {
            self.done = true;
            return false;
        }
        self.data_events += 1;
        let need_content = !self.first_content;
        if d.truncated {
            // Too long to decode: surely content, never just usage.
            self.first_content = true;
            return need_content;
        }
        if !need_content && !contains(data, b"usage") {
            return false;
        }
        let event = serde_json::from_slice::<Value>(data).ok();
        if let Some(u) = event.as_ref().and_then(usage_from_event) {
            self.usage = Some(u);
        }
        // An undecodable data event is counted as content: some output arrived.
        if need_content && event.as_ref().is_none_or(has_content) {
            self.first_content = true;
            return true;
        }
        false
    }
}

/// What a finished response amounted to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResponseSummary {
    /// The HTTP status, if the headers carried one.
    pub status: Option<u16>,
    /// True for a streamed response (`text/event-stream`, or the client asked for a stream).
    pub streaming: bool,
    /// True if the model server answered with a non-2xx status.
    pub model_server_error: bool,
    /// Token usage, if the server reported it.
    pub usage: Option<Usage>,
    /// Response body bytes seen.
    pub response_bytes: u64,
    /// SSE data events seen (0 for non-streamed responses).
    pub data_events: u64,
}

/// Follows one response: headers, then body chunks, then [`finish`](Self::finish).
#[derive(Clone, Debug, Default)]
pub struct ResponseTracker {
    request_stream: bool,
    status: Option<u16>,
    event_stream: Option<bool>,
    sse: SseUsageParser,
    json: Vec<u8>,
    json_overflow: bool,
    bytes: u64,
    first_output: bool,
}

impl ResponseTracker {
    /// A tracker for a request that did (`request_stream`) or did not ask for a stream.
    pub fn new(request_stream: bool) -> Self {
        ResponseTracker { request_stream, ..Default::default() }
    }

    /// Reads the response headers: `:status` (or `status`) and `content-type`.
    pub fn on_headers<'a>(&mut self, headers: impl IntoIterator<Item = (&'a str, &'a str)>) {
        for (name, value) in headers {
            if name == STATUS || name.eq_ignore_ascii_case("status") {
                if let Ok(s) = value.trim().parse() {
                    self.status = Some(s);
                }
            } else if name.eq_ignore_ascii_case(CONTENT_TYPE) {
                let sse = value.to_ascii_lowercase().contains("text/event-stream");
                self.event_stream = Some(self.event_stream.unwrap_or(false) || sse);
            }
        }
    }

    /// Sets the status directly (adapters that get it outside the header list).
    pub fn set_status(&mut self, status: u16) {
        self.status = Some(status);
    }

    /// True if the response is treated as a stream.
    pub fn is_streaming(&self) -> bool {
        self.request_stream || self.event_stream == Some(true)
    }

    /// True if the status is known and not 2xx.
    pub fn is_model_server_error(&self) -> bool {
        self.status.is_some_and(|s| !(200..300).contains(&s))
    }

    /// Whether bodies are parsed as SSE: by content type, else by the request's stream flag.
    fn parse_as_sse(&self) -> bool {
        self.event_stream.unwrap_or(self.request_stream)
    }

    /// Feeds one body chunk. Returns true if this chunk brought the first output: the first
    /// content event of a stream, or the first bytes of a non-streamed body.
    pub fn on_body(&mut self, chunk: &[u8]) -> bool {
        self.bytes += chunk.len() as u64;
        if chunk.is_empty() {
            return false;
        }
        if self.parse_as_sse() {
            let first = self.sse.push(chunk);
            self.first_output |= first;
            return first;
        }
        if !self.json_overflow {
            if self.json.len() + chunk.len() > MAX_JSON_BODY_BYTES {
                self.json_overflow = true;
                self.json = Vec::new();
            } else {
                self.json.extend_from_slice(chunk);
            }
        }
        !std::mem::replace(&mut self.first_output, true)
    }

    /// Ends the response and sums it up.
    pub fn finish(&mut self) -> ResponseSummary {
        let (usage, data_events) = if self.parse_as_sse() {
            self.sse.finish();
            (self.sse.usage(), self.sse.data_events())
        } else {
            (usage_from_json(&self.json), 0)
        };
        ResponseSummary {
            status: self.status,
            streaming: self.is_streaming(),
            model_server_error: self.is_model_server_error(),
            usage,
            response_bytes: self.bytes,
            data_events,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn u(p: u64, c: u64, t: u64, cached: u64) -> Option<Usage> {
        Some(Usage { prompt_tokens: p, completion_tokens: c, total_tokens: t, cached_tokens: cached })
    }

    #[test]
    fn json_usage_by_object_type() {
        let chat = br#"{"object":"chat.completion","usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,"input_tokens":99}}"#;
        assert_eq!(usage_from_json(chat), u(10, 5, 15, 0));
        let text = br#"{"object":"text_completion","usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7,"prompt_tokens_details":{"cached_tokens":2}}}"#;
        assert_eq!(usage_from_json(text), u(3, 4, 7, 2));
        let resp = br#"{"object":"response","usage":{"input_tokens":8,"output_tokens":2,"total_tokens":10,"prompt_tokens":99,"input_tokens_details":{"cached_tokens":4}}}"#;
        assert_eq!(usage_from_json(resp), u(8, 2, 10, 4));
        let conv = br#"{"object":"conversation.item","usage":{"input_tokens":1,"output_tokens":1}}"#;
        assert_eq!(usage_from_json(conv), u(1, 1, 2, 0), "total defaults to the sum");
        let emb = br#"{"object":"list","usage":{"prompt_tokens":6,"total_tokens":6,"prompt_token_details":{"cached_tokens":1}}}"#;
        assert_eq!(usage_from_json(emb), u(6, 0, 6, 1), "unknown object: either naming; both detail spellings");
        let other = br#"{"usage":{"input_tokens":2,"prompt_tokens":9,"completion_tokens":3}}"#;
        assert_eq!(usage_from_json(other), u(2, 3, 5, 0), "input/output names first");
        assert_eq!(usage_from_json(br#"{"usage":null}"#), None);
        assert_eq!(usage_from_json(b""), None);
        assert_eq!(usage_from_json(b"not json"), None);
    }

    const CHAT_STREAM: &str = "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}],\"usage\":null}\n\n\
        data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n\
        data:{\"object\":\"chat.completion.chunk\",\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\r\n\r\n\
        : keep-alive comment\n\
        data: {\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2,\"total_tokens\":9,\"prompt_tokens_details\":{\"cached_tokens\":4}}}\n\n\
        data: [DONE]\n\n";

    #[test]
    fn sse_usage_and_first_content() {
        let mut p = SseUsageParser::new();
        let firsts: Vec<bool> = CHAT_STREAM.split_inclusive("\n\n").map(|c| p.push(c.as_bytes())).collect();
        assert_eq!(firsts, [false, true, false, false], "first content is the second event");
        assert!(!p.finish());
        assert_eq!(p.usage(), u(7, 2, 9, 4));
        assert_eq!(p.data_events(), 4);
        assert!(p.saw_done() && p.saw_content());
    }

    #[test]
    fn sse_responses_api() {
        let stream = "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"usage\":null}}\n\n\
            event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\n\
            event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"object\":\"response\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1,\"total_tokens\":6}}}";
        let mut p = SseUsageParser::new();
        assert!(p.push(stream.as_bytes()));
        assert_eq!(p.usage(), None, "the last line has no newline yet");
        p.finish();
        assert_eq!(p.usage(), u(5, 1, 6, 0));
        assert!(!p.saw_done());
    }

    #[test]
    fn sse_usage_split_at_every_byte() {
        let bytes = CHAT_STREAM.as_bytes();
        for i in 0..=bytes.len() {
            let mut p = SseUsageParser::new();
            let firsts = usize::from(p.push(&bytes[..i])) + usize::from(p.push(&bytes[i..])) + usize::from(p.finish());
            assert_eq!((p.usage(), p.data_events(), firsts), (u(7, 2, 9, 4), 4, 1), "split at {i}");
        }
    }

    #[test]
    fn oversized_lines_are_counted_not_decoded() {
        let mut p = SseUsageParser::new();
        let big = format!("data: {{\"choices\":[{{\"text\":\"{}\"}}]}}\n", "x".repeat(MAX_SSE_LINE_BYTES));
        assert!(!p.push(&big.as_bytes()[..big.len() - 1]));
        assert!(p.push(b"\n"));
        assert_eq!(p.data_events(), 1);
        p.push(b"data: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n");
        assert_eq!(p.usage(), u(1, 1, 2, 0));
    }

    #[test]
    fn tracker_streaming_and_errors() {
        let mut t = ResponseTracker::new(false);
        t.on_headers([(":status", "200"), ("Content-Type", "text/event-stream; charset=utf-8")]);
        assert!(t.is_streaming());
        let bytes = CHAT_STREAM.as_bytes();
        let firsts: usize = bytes.chunks(7).map(|c| usize::from(t.on_body(c))).sum();
        assert_eq!(firsts, 1);
        let s = t.finish();
        assert_eq!((s.streaming, s.model_server_error, s.usage), (true, false, u(7, 2, 9, 4)));
        assert_eq!((s.response_bytes, s.data_events, s.status), (bytes.len() as u64, 4, Some(200)));

        // Client asked for a stream, server answered with a JSON error.
        let mut t = ResponseTracker::new(true);
        t.on_headers([(":status", "503"), ("content-type", "application/json")]);
        assert!(t.on_body(br#"{"error":"#));
        assert!(!t.on_body(br#""overloaded"}"#));
        let s = t.finish();
        assert_eq!((s.streaming, s.model_server_error, s.usage, s.status), (true, true, None, Some(503)));
    }

    #[test]
    fn tracker_json_body() {
        let mut t = ResponseTracker::new(false);
        t.set_status(200);
        t.on_headers([("content-type", "application/json")]);
        let body =
            br#"{"object":"chat.completion","usage":{"prompt_tokens":2,"completion_tokens":3,"total_tokens":5}}"#;
        let (a, b) = body.split_at(20);
        assert!(t.on_body(a));
        assert!(!t.on_body(b""));
        assert!(!t.on_body(b));
        let s = t.finish();
        assert_eq!((s.streaming, s.model_server_error, s.usage, s.data_events), (false, false, u(2, 3, 5, 0), 0));
        // No headers at all: a streamed request is parsed as SSE.
        let mut t = ResponseTracker::new(true);
        t.on_body(CHAT_STREAM.as_bytes());
        assert_eq!(t.finish().usage, u(7, 2, 9, 4));
    }

    proptest! {
        #[test]
        fn any_split_gives_the_same_result(cuts in proptest::collection::vec(0usize..2000, 0..8)) {
            let bytes = CHAT_STREAM.as_bytes();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort_unstable();
            let mut p = SseUsageParser::new();
            let mut firsts = 0;
            let mut prev = 0;
            for c in cuts.into_iter().chain([bytes.len()]) {
                firsts += usize::from(p.push(&bytes[prev..c]));
                prev = c;
            }
            firsts += usize::from(p.finish());
            prop_assert_eq!((p.usage(), p.data_events(), firsts), (u(7, 2, 9, 4), 4, 1));
        }

        #[test]
        fn garbage_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8),
                                sse in any::<bool>()) {
            let mut t = ResponseTracker::new(sse);
            for c in &chunks {
                t.on_body(c);
            }
            let s = t.finish();
            prop_assert_eq!(s.response_bytes, chunks.iter().map(|c| c.len() as u64).sum::<u64>());
        }

        #[test]
        fn data_lines_never_panic(lines in proptest::collection::vec("data: ?[\\{\\}\\[\\]\":,a-z0-9 ]{0,40}\r?\n", 0..10)) {
            let mut p = SseUsageParser::new();
            for l in &lines {
                p.push(l.as_bytes());
            }
            p.finish();
        }
    }
}
