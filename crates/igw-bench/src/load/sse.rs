//! Token timing of a streamed (SSE) completion at the client.
//!
//! [`SseTimer`] frames the stream with the gateway's own framer ([`igw_request::SseFramer`]), so
//! the load generators read an SSE stream exactly as the gateway does: one framing for
//! production and measurement.

use igw_request::{SseData, SseFramer};

/// Times the token events of an SSE completion stream whose chunks may split events anywhere.
///
/// A token event is a `data:` JSON object with a choice carrying non-empty `text` (completions)
/// or `delta.content` (chat). The last `usage.completion_tokens` seen is kept as the output
/// length.
#[derive(Debug, Default)]
pub struct SseTimer {
    lines: SseFramer,
    /// Seconds to the first token event.
    pub first: Option<f64>,
    last: f64,
    /// Gaps between consecutive token events (s).
    pub itls: Vec<f64>,
    /// Token events seen.
    pub events: u64,
    /// `usage.completion_tokens` of the final usage event, if one came.
    pub usage_tokens: Option<u64>,
}

impl SseTimer {
    /// Feeds a chunk that arrived `at` seconds after the request was sent.
    pub fn push(&mut self, chunk: &[u8], at: f64) {
        let mut lines = std::mem::take(&mut self.lines);
        lines.push(chunk, |d| self.event(d, at));
        self.lines = lines;
    }

    /// Ends the stream `at` seconds after the request was sent (a last line without a newline
    /// still counts).
    pub fn finish(&mut self, at: f64) {
        let mut lines = std::mem::take(&mut self.lines);
        lines.finish(|d| self.event(d, at));
    }

    fn event(&mut self, d: SseData<'_>, at: f64) {
        if d.payload == b"[DONE]" {
            return;
        }
        if d.truncated {
            // Longer than the framer keeps: surely text, as the gateway counts it.
            self.token(at);
            return;
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(d.payload) else { return };
        if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
            self.usage_tokens = Some(n);
        }
        let has_token = v["choices"].as_array().is_some_and(|c| {
            c.iter().any(|c| {
                c["text"].as_str().is_some_and(|t| !t.is_empty())
                    || c["delta"]["content"].as_str().is_some_and(|t| !t.is_empty())
            })
        });
        if has_token {
            self.token(at);
        }
    }

    fn token(&mut self, at: f64) {
        self.events += 1;
        match self.first {
            None => self.first = Some(at),
            Some(_) => self.itls.push(at - self.last),
        }
        self.last = at;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const STREAM: &[u8] = b"data: {\"choices\":[{\"text\":\"a\"}]}\n\ndata: {\"choices\":[{\"text\":\"b\"}]}\n\ndata: {\"choices\":[],\"usage\":{\"completion_tokens\":2}}\n\ndata: [DONE]\n\n";

    #[test]
    fn sse_events_split_anywhere_are_timed_once() {
        for split in 1..STREAM.len() {
            let mut t = SseTimer::default();
            t.push(&STREAM[..split], 0.1);
            t.push(&STREAM[split..], 0.3);
            t.finish(0.3);
            assert_eq!((t.events, t.usage_tokens), (2, Some(2)), "split at {split}");
            assert!(t.first.is_some());
            assert_eq!(t.itls.len(), 1);
        }
    }

    #[test]
    fn crlf_streams_and_chat_deltas_are_timed() {
        let stream = b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\r\n\r\n\
            data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\r\n\r\n\
            data: {\"choices\":[{\"delta\":{\"content\":\"!\"}}]}\r\n\r\n";
        let mut t = SseTimer::default();
        for (i, c) in stream.chunks(9).enumerate() {
            t.push(c, i as f64);
        }
        t.finish(99.0);
        assert_eq!((t.events, t.usage_tokens, t.itls.len()), (2, None, 1));
        assert!(t.first.unwrap() < 99.0);
    }
}
