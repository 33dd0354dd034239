//! Server-sent-event framing: the one SSE line framer the gateway and the load generators share.
//!
//! A stream arrives in chunks that split lines anywhere. [`SseFramer`] re-assembles lines across
//! chunk boundaries and hands over the payload of every `data:` line:
//! - lines end with `\n` or `\r\n`;
//! - `data:` is read with or without the one optional space, and the payload is trimmed;
//! - `event:`, `id:`, `retry:`, comment and blank lines, and empty payloads, are skipped;
//! - `[DONE]` is handed over like any other payload (the caller decides what it means);
//! - a line longer than the framer's cap keeps only its first `cap` bytes and is handed over
//!   marked [`truncated`](SseData::truncated), so one huge event cannot grow memory without bound.

/// Longest SSE line the gateway keeps in full ([`SseFramer::new`]); longer lines are truncated.
pub const MAX_SSE_LINE_BYTES: usize = 1024 * 1024;

/// One `data:` payload handed over by [`SseFramer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SseData<'a> {
    /// The trimmed payload (never empty).
    pub payload: &'a [u8],
    /// True if the line was longer than the cap and `payload` is only its start.
    pub truncated: bool,
}

/// Splits an SSE byte stream, fed in arbitrary chunks, into its `data:` payloads.
#[derive(Clone, Debug)]
pub struct SseFramer {
    line: Vec<u8>,
    overflow: bool,
    cap: usize,
}

impl Default for SseFramer {
    fn default() -> Self {
        Self::new()
    }
}

impl SseFramer {
    /// A framer that keeps lines up to [`MAX_SSE_LINE_BYTES`].
    pub fn new() -> Self {
        Self::with_cap(MAX_SSE_LINE_BYTES)
    }

    /// A framer that keeps lines up to `cap` bytes (at least 16, enough to tell a `data:` line).
    pub fn with_cap(cap: usize) -> Self {
        SseFramer { line: Vec::new(), overflow: false, cap: cap.max(16) }
    }

    /// Feeds one chunk; calls `on_data` for every `data:` line the chunk completes.
    pub fn push(&mut self, chunk: &[u8], mut on_data: impl FnMut(SseData<'_>)) {
        let mut rest = chunk;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            let (head, tail) = rest.split_at(pos);
            rest = &tail[1..];
            if self.line.is_empty() && !self.overflow && head.len() <= self.cap {
                // The common case: a whole line inside one chunk, framed without copying.
                if let Some(d) = data_of(head, false) {
                    on_data(d);
                }
            } else {
                self.append(head);
                if let Some(d) = data_of(&self.line, self.overflow) {
                    on_data(d);
                }
                self.line.clear();
                self.overflow = false;
            }
        }
        self.append(rest);
    }

    /// Ends the stream: a last line without a newline is handed over too.
    pub fn finish(&mut self, on_data: impl FnOnce(SseData<'_>)) {
        let line = std::mem::take(&mut self.line);
        let overflow = std::mem::replace(&mut self.overflow, false);
        if let Some(d) = data_of(&line, overflow) {
            on_data(d);
        }
    }

    fn append(&mut self, bytes: &[u8]) {
        if self.overflow {
            return;
        }
        if self.line.len() + bytes.len() > self.cap {
            // Keep the start (enough to tell a data line) and stop collecting.
            let room = self.cap.saturating_sub(self.line.len());
            self.line.extend_from_slice(&bytes[..room.min(bytes.len())]);
            self.overflow = true;
        } else {
            self.line.extend_from_slice(bytes);
        }
    }
}

/// The trimmed payload of a `data:` line (`None` for other lines and empty payloads).
fn data_of(line: &[u8], truncated: bool) -> Option<SseData<'_>> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let data = line.strip_prefix(b"data:")?;
    let payload = data.strip_prefix(b" ").unwrap_or(data).trim_ascii();
    (!payload.is_empty()).then_some(SseData { payload, truncated })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn frame(framer: &mut SseFramer, chunks: &[&[u8]]) -> Vec<(Vec<u8>, bool)> {
        let mut seen = Vec::new();
        for c in chunks {
            framer.push(c, |d| seen.push((d.payload.to_vec(), d.truncated)));
        }
        framer.finish(|d| seen.push((d.payload.to_vec(), d.truncated)));
        seen
    }

    #[test]
    fn data_lines_are_framed_wherever_the_stream_is_split() {
        let stream =
            b"event: x\r\ndata:{\"a\":1}\r\n\r\n: comment\ndata: \n\ndata:  [DONE] \nid: 7\nretry: 5\ndata: tail";
        let want = [(b"{\"a\":1}".to_vec(), false), (b"[DONE]".to_vec(), false), (b"tail".to_vec(), false)];
        for split in 0..=stream.len() {
            let got = frame(&mut SseFramer::new(), &[&stream[..split], &stream[split..]]);
            assert_eq!(got, want, "split at {split}");
        }
        // Byte by byte too.
        let chunks: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(frame(&mut SseFramer::new(), &chunks), want);
    }

    #[test]
    fn long_lines_are_cut_at_the_cap_and_marked() {
        let long = format!("data: {}\ndata: ok\n", "x".repeat(100));
        for split in 0..=long.len() {
            let mut f = SseFramer::with_cap(32);
            let got = frame(&mut f, &[&long.as_bytes()[..split], &long.as_bytes()[split..]]);
            assert_eq!(got.len(), 2, "split at {split}");
            assert!(got[0].1 && got[0].0.len() <= 32 && got[0].0.starts_with(b"xxx"), "split at {split}");
            assert_eq!(got[1], (b"ok".to_vec(), false), "split at {split}");
        }
        // A truncated last line without a newline is still handed over, marked.
        let mut f = SseFramer::with_cap(16);
        let got = frame(&mut f, &[format!("data: {}", "y".repeat(40)).as_bytes()]);
        assert!(got.len() == 1 && got[0].1);
    }

    #[test]
    fn a_line_exactly_at_the_cap_is_whole() {
        let line = format!("data: {}", "z".repeat(26)); // 32 bytes
        let mut f = SseFramer::with_cap(32);
        let got = frame(&mut f, &[line.as_bytes(), b"\n"]);
        assert_eq!(got, [("z".repeat(26).into_bytes(), false)]);
    }

    proptest::proptest! {
        /// Any bytes, cut anywhere, frame as they do in one piece, and no payload exceeds the cap.
        #[test]
        fn arbitrary_streams_frame_alike_however_cut(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            cuts in proptest::collection::vec(0usize..600, 0..8),
            cap in 16usize..80,
        ) {
            let whole = frame(&mut SseFramer::with_cap(cap), &[&bytes]);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut prev = 0;
            for c in cuts.into_iter().chain([bytes.len()]) {
                chunks.push(&bytes[prev..c]);
                prev = c;
            }
            let pieces = frame(&mut SseFramer::with_cap(cap), &chunks);
            proptest::prop_assert_eq!(&pieces, &whole);
            for (payload, _) in &whole {
                proptest::prop_assert!(!payload.is_empty() && payload.len() <= cap);
            }
        }
    }
}
