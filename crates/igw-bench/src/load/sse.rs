//! Token timing of a streamed (SSE) completion at the client.
//!
//! [`DataLines`] is the load generators' one SSE framing: it re-assembles lines across chunk
//! boundaries exactly as the production parser (`igw_request::SseUsageParser`) does — lines end
//! with `\n` or `\r\n`, `data:` is read with or without the space, the payload is trimmed — and
//! hands over each `data:` payload. [`SseTimer`] is built on it. The production parser does not
//! expose the payloads it frames (it only reports the first content event and the usage), so
//! the two cannot share one framer yet.

/// Splits an SSE byte stream, fed in arbitrary chunks, into its `data:` payloads.
///
/// `event:`, `id:`, comment and blank lines are skipped; `data: [DONE]` is handed over like any
/// other payload (the caller decides what it means).
#[derive(Debug, Default, Clone)]
pub struct DataLines {
    line: Vec<u8>,
}

impl DataLines {
    /// Feeds one chunk; calls `on_data` with the payload of every `data:` line the chunk completes.
    pub fn push(&mut self, chunk: &[u8], mut on_data: impl FnMut(&[u8])) {
        let mut rest = chunk;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            let (head, tail) = rest.split_at(pos);
            rest = &tail[1..];
            if self.line.is_empty() {
                if let Some(data) = data_of(head) {
                    on_data(data);
                }
            } else {
                self.line.extend_from_slice(head);
                if let Some(data) = data_of(&self.line) {
                    on_data(data);
                }
                self.line.clear();
            }
        }
        self.line.extend_from_slice(rest);
    }

    /// Ends the stream: a last line without a newline is handed over too.
    pub fn finish(&mut self, on_data: impl FnOnce(&[u8])) {
        let line = std::mem::take(&mut self.line);
        if let Some(data) = data_of(&line) {
            on_data(data);
        }
    }
}

/// The trimmed payload of a `data:` line (`None` for other lines and empty payloads).
fn data_of(line: &[u8]) -> Option<&[u8]> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let data = line.strip_prefix(b"data:")?;
    let data = data.strip_prefix(b" ").unwrap_or(data).trim_ascii();
    (!data.is_empty()).then_some(data)
}

/// Times the token events of an SSE completion stream whose chunks may split events anywhere.
///
/// A token event is a `data:` JSON object with a choice carrying non-empty `text` (completions)
/// or `delta.content` (chat). The last `usage.completion_tokens` seen is kept as the output
/// length.
#[derive(Debug, Default)]
pub struct SseTimer {
    lines: DataLines,
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
        lines.push(chunk, |data| self.event(data, at));
        self.lines = lines;
    }

    /// Ends the stream `at` seconds after the request was sent (a last line without a newline
    /// still counts).
    pub fn finish(&mut self, at: f64) {
        let mut lines = std::mem::take(&mut self.lines);
        lines.finish(|data| self.event(data, at));
    }

    fn event(&mut self, data: &[u8], at: f64) {
        if data == b"[DONE]" {
            return;
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return };
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
            self.events += 1;
            match self.first {
                None => self.first = Some(at),
                Some(_) => self.itls.push(at - self.last),
            }
            self.last = at;
        }
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
    fn lines_are_framed_as_the_production_parser_frames_them() {
        let stream = b"event: x\r\ndata:{\"a\":1}\r\n\r\n: comment\ndata: \n\ndata:  [DONE] \nid: 7\ndata: tail";
        for split in 0..=stream.len() {
            let mut seen: Vec<Vec<u8>> = Vec::new();
            let mut lines = DataLines::default();
            lines.push(&stream[..split], |d| seen.push(d.to_vec()));
            lines.push(&stream[split..], |d| seen.push(d.to_vec()));
            lines.finish(|d| seen.push(d.to_vec()));
            assert_eq!(seen, [&b"{\"a\":1}"[..], b"[DONE]", b"tail"], "split at {split}");
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
