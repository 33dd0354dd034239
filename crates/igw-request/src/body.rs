//! Request body accumulation.
//!
//! Bodies arrive in any number of chunks, split anywhere (mid-token, mid-UTF-8 sequence). The
//! buffer only appends; parsing happens once, at the end of the body.

use bytes::Bytes;
use thiserror::Error;

use crate::error::{ErrorCode, RequestError};

/// The default request body limit: 32 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// The largest body chunk sent back to Envoy in one streamed message (some Envoy builds cap a
/// streamed chunk at 64 KiB).
pub const MAX_STREAMED_CHUNK_BYTES: usize = 62_000;

/// Why a body could not be accumulated.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum BodyError {
    /// The body grew past the limit.
    #[error("request body is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
}

impl From<BodyError> for RequestError {
    fn from(e: BodyError) -> Self {
        RequestError::new(ErrorCode::PayloadTooLarge, e.to_string())
    }
}

/// Accumulates a request body up to a size limit.
#[derive(Debug)]
pub struct BodyBuffer {
    buf: Vec<u8>,
    limit: usize,
    overflowed: bool,
}

impl Default for BodyBuffer {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_BODY_BYTES)
    }
}

impl BodyBuffer {
    /// An empty buffer accepting at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        BodyBuffer { buf: Vec::new(), limit, overflowed: false }
    }

    /// Appends a chunk. Fails (and drops what was buffered) once the body exceeds the limit;
    /// every later push fails too.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), BodyError> {
        if self.overflowed || self.buf.len().saturating_add(chunk.len()) > self.limit {
            self.overflowed = true;
            self.buf = Vec::new();
            return Err(BodyError::TooLarge { limit: self.limit });
        }
        self.buf.extend_from_slice(chunk);
        Ok(())
    }

    /// Bytes buffered so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True if nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The limit in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// True once a push exceeded the limit.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// The bytes buffered so far.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf
    }

    /// Takes the complete body out (no copy), leaving the buffer empty.
    pub fn take(&mut self) -> Bytes {
        Bytes::from(std::mem::take(&mut self.buf))
    }
}

/// Splits a body into the chunks sent back to Envoy: at most [`MAX_STREAMED_CHUNK_BYTES`] each,
/// without copying. An empty body yields exactly one empty chunk (it still carries end-of-stream).
pub fn streamed_chunks(body: &Bytes) -> impl Iterator<Item = Bytes> + '_ {
    let n = body.len().div_ceil(MAX_STREAMED_CHUNK_BYTES).max(1);
    (0..n).map(move |i| {
        let start = i * MAX_STREAMED_CHUNK_BYTES;
        body.slice(start..(start + MAX_STREAMED_CHUNK_BYTES).min(body.len()))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn accumulates_until_limit() {
        let mut b = BodyBuffer::new(10);
        b.push(b"hello").unwrap();
        b.push(b"").unwrap();
        b.push(b"world").unwrap();
        assert_eq!(b.as_slice(), b"helloworld");
        assert_eq!(b.push(b"!"), Err(BodyError::TooLarge { limit: 10 }));
        assert!(b.overflowed() && b.is_empty());
        assert!(b.push(b"").is_err(), "stays failed");
        let e: RequestError = BodyError::TooLarge { limit: 10 }.into();
        assert_eq!(e.http_status(), 413);
    }

    #[test]
    fn take_empties_the_buffer() {
        let mut b = BodyBuffer::default();
        b.push(b"{}").unwrap();
        assert_eq!(&b.take()[..], b"{}");
        assert_eq!(b.len(), 0);
    }

    #[test]
    fn envoy_chunking() {
        let empty = Bytes::new();
        let c: Vec<_> = streamed_chunks(&empty).collect();
        assert_eq!(c.len(), 1);
        assert!(c[0].is_empty());
        let body = Bytes::from(vec![7u8; MAX_STREAMED_CHUNK_BYTES * 2 + 5]);
        let c: Vec<_> = streamed_chunks(&body).collect();
        assert_eq!(
            c.iter().map(Bytes::len).collect::<Vec<_>>(),
            [MAX_STREAMED_CHUNK_BYTES, MAX_STREAMED_CHUNK_BYTES, 5]
        );
        let exact = Bytes::from(vec![1u8; MAX_STREAMED_CHUNK_BYTES]);
        assert_eq!(streamed_chunks(&exact).count(), 1);
    }
}
