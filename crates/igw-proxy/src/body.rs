//! A response body that forwards upstream frames unchanged in timing (no re-buffering) while an
//! observer sees every data chunk and learns, exactly once, how the response ended.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// How a proxied response ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream body reached its end and every byte was handed to the client side.
    Completed,
    /// The upstream body failed mid-stream.
    UpstreamError(String),
    /// The body was dropped before its end: the client went away (or the server shut down).
    ClientGone,
}

/// Watches a response body as it streams.
pub trait ResponseObserver: Send + 'static {
    /// Sees one data chunk and returns the bytes to forward (usually the same chunk).
    fn on_data(&mut self, chunk: Bytes) -> Bytes;
    /// Called when the upstream body has ended, before [`on_end`](Self::on_end): bytes the
    /// observer held back (e.g. a partial match of a rewrite pattern) to send as a last frame.
    fn flush(&mut self) -> Option<Bytes> {
        None
    }
    /// Called exactly once when the response ends, however it ends.
    fn on_end(&mut self, outcome: Outcome);
}

/// A body adapter: frames pass through as they arrive; data frames go through the observer.
pub struct ObservedBody<B> {
    inner: B,
    observer: Option<Box<dyn ResponseObserver>>,
}

impl<B> ObservedBody<B> {
    /// Wraps `inner`, reporting to `observer`.
    pub fn new(inner: B, observer: Box<dyn ResponseObserver>) -> Self {
        ObservedBody { inner, observer: Some(observer) }
    }

    fn finish(&mut self, outcome: Outcome) {
        if let Some(mut o) = self.observer.take() {
            o.on_end(outcome);
        }
    }
}

impl<B> Drop for ObservedBody<B> {
    fn drop(&mut self) {
        self.finish(Outcome::ClientGone);
    }
}

impl<B> Body for ObservedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                if let Some(tail) = this.observer.as_mut().and_then(|o| o.flush()).filter(|b| !b.is_empty()) {
                    this.finish(Outcome::Completed);
                    return Poll::Ready(Some(Ok(Frame::data(tail))));
                }
                this.finish(Outcome::Completed);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish(Outcome::UpstreamError(e.to_string()));
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    let data = match this.observer.as_mut() {
                        Some(o) => o.on_data(data),
                        None => data,
                    };
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        // Only once the observer has been told: hyper drops a body that reports its end, and
        // the end must be observed as a completion, not as a client going away.
        self.observer.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        // The observer may change lengths (model-name rewrite-back), so promise nothing exact.
        let mut h = SizeHint::new();
        h.set_lower(0);
        h
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Log {
        chunks: Vec<Bytes>,
        ends: Vec<Outcome>,
    }

    struct Obs(Arc<Mutex<Log>>);

    impl ResponseObserver for Obs {
        fn on_data(&mut self, chunk: Bytes) -> Bytes {
            self.0.lock().unwrap().chunks.push(chunk.clone());
            Bytes::from(chunk.to_ascii_uppercase())
        }
        fn on_end(&mut self, outcome: Outcome) {
            self.0.lock().unwrap().ends.push(outcome);
        }
    }

    /// A body that yields scripted frames.
    struct Script(std::collections::VecDeque<Result<&'static str, &'static str>>);

    impl Body for Script {
        type Data = Bytes;
        type Error = String;
        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, String>>> {
            Poll::Ready(self.0.pop_front().map(|r| r.map(|s| Frame::data(Bytes::from(s))).map_err(str::to_string)))
        }
    }

    fn stream(parts: Vec<Result<&'static str, &'static str>>) -> Script {
        Script(parts.into())
    }

    #[tokio::test]
    async fn passes_frames_and_reports_completion_once() {
        let log = Arc::new(Mutex::new(Log::default()));
        let body = ObservedBody::new(stream(vec![Ok("ab"), Ok("cd")]), Box::new(Obs(log.clone())));
        let out = body.collect().await.unwrap().to_bytes();
        assert_eq!(&out[..], b"ABCD");
        let log = log.lock().unwrap();
        assert_eq!(log.chunks.len(), 2);
        assert_eq!(log.ends, vec![Outcome::Completed]);
    }

    #[tokio::test]
    async fn reports_upstream_error_and_client_drop() {
        let log = Arc::new(Mutex::new(Log::default()));
        let body = ObservedBody::new(stream(vec![Ok("ab"), Err("reset")]), Box::new(Obs(log.clone())));
        assert!(body.collect().await.is_err());
        assert_eq!(log.lock().unwrap().ends, vec![Outcome::UpstreamError("reset".into())]);

        let log = Arc::new(Mutex::new(Log::default()));
        let mut body = ObservedBody::new(stream(vec![Ok("ab"), Ok("cd")]), Box::new(Obs(log.clone())));
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"AB"));
        drop(body);
        assert_eq!(log.lock().unwrap().ends, vec![Outcome::ClientGone]);
    }
}
