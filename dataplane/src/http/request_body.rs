//! A request body that streams: the worker's decoder writes what arrives from the client, the
//! service (a guest's incoming body) reads it as it comes. At most `PIPE_CAPACITY` bytes wait in
//! between: past that the worker stops reading the client until the reader takes some, so an
//! upload larger than memory flows at the speed its reader consumes it.
//!
//! A reader that is dropped (the guest answered without reading the body) leaves the worker to
//! read the rest and discard it, within the same limits, so the connection can carry the next
//! request.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, Waker},
};

use bytes::Bytes;
use http_body::{Body, Frame};

/// Body bytes queued for a reader before the worker stops reading the client.
pub const PIPE_CAPACITY: usize = 256 << 10;

#[derive(Debug, Default)]
struct Pipe {
    chunks: VecDeque<Bytes>,
    queued: usize,
    /// The body ended; its trailers, if any, come after the last chunk.
    finished: bool,
    trailers: Option<http::HeaderMap>,
    /// Why the body will never end (the client's bytes broke a limit or the framing, or the
    /// connection ended).
    failed: Option<&'static str>,
    reader_gone: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

/// The writing end, held by the connection's decoder.
#[derive(Debug)]
pub struct BodyWriter(Arc<Mutex<Pipe>>);

/// The reading end, handed to the service with the request's head.
#[derive(Debug)]
pub struct RequestBody(Arc<Mutex<Pipe>>);

/// A new pipe.
pub fn pipe() -> (BodyWriter, RequestBody) {
    let shared = Arc::new(Mutex::new(Pipe::default()));
    (BodyWriter(shared.clone()), RequestBody(shared))
}

impl BodyWriter {
    /// Bytes the reader can take now; `usize::MAX` once it is gone (what arrives is dropped).
    pub fn room(&self) -> usize {
        let pipe = crate::lock(&self.0);
        if pipe.reader_gone {
            usize::MAX
        } else {
            PIPE_CAPACITY.saturating_sub(pipe.queued)
        }
    }

    /// Queues `data` (dropped if the reader is gone).
    pub fn push(&self, data: Vec<u8>) {
        if data.is_empty() {
            return;
        }
        let mut pipe = crate::lock(&self.0);
        if pipe.reader_gone {
            return;
        }
        pipe.queued += data.len();
        pipe.chunks.push_back(Bytes::from(data));
        if let Some(reader) = pipe.reader.take() {
            reader.wake();
        }
    }

    /// The body is whole.
    pub fn finish(&self, trailers: Option<http::HeaderMap>) {
        let mut pipe = crate::lock(&self.0);
        pipe.finished = true;
        pipe.trailers = trailers;
        if let Some(reader) = pipe.reader.take() {
            reader.wake();
        }
    }

    /// The body will never be whole: the reader gets an error, not a short body.
    pub fn fail(&self, why: &'static str) {
        let mut pipe = crate::lock(&self.0);
        if !pipe.finished {
            pipe.failed = Some(why);
        }
        if let Some(reader) = pipe.reader.take() {
            reader.wake();
        }
    }

    /// Asks to be woken when the reader takes something (or goes); false if it already has room.
    pub fn wait_for_room(&self, waker: &Waker) -> bool {
        let mut pipe = crate::lock(&self.0);
        if pipe.reader_gone || pipe.queued < PIPE_CAPACITY {
            return false;
        }
        pipe.writer = Some(waker.clone());
        true
    }
}

impl Drop for BodyWriter {
    fn drop(&mut self) {
        // A writer dropped before `finish` (the connection closed) leaves a failed body.
        self.fail("the client's connection ended before the body did");
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        let mut pipe = crate::lock(&self.0);
        pipe.reader_gone = true;
        pipe.chunks.clear();
        pipe.queued = 0;
        if let Some(writer) = pipe.writer.take() {
            writer.wake();
        }
    }
}

/// Why a streamed request body failed.
#[derive(Debug, thiserror::Error)]
#[error("request body: {0}")]
pub struct BodyFailed(pub &'static str);

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyFailed;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyFailed>>> {
        let mut pipe = crate::lock(&self.0);
        if let Some(chunk) = pipe.chunks.pop_front() {
            pipe.queued -= chunk.len();
            if let Some(writer) = pipe.writer.take() {
                writer.wake();
            }
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if let Some(why) = pipe.failed {
            return Poll::Ready(Some(Err(BodyFailed(why))));
        }
        if pipe.finished {
            return Poll::Ready(pipe.trailers.take().map(|t| Ok(Frame::trailers(t))));
        }
        pipe.reader = Some(cx.waker().clone());
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        let pipe = crate::lock(&self.0);
        pipe.finished && pipe.chunks.is_empty() && pipe.trailers.is_none()
    }
}

impl RequestBody {
    /// The whole body, for a caller that needs it at once (a handoff signs its digest); more
    /// than `limit` bytes is an error.
    pub async fn read_all(
        mut self,
        limit: usize,
    ) -> Result<(Vec<u8>, Option<http::HeaderMap>), BodyFailed> {
        let mut body = Vec::new();
        let mut trailers = None;
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut self).poll_frame(cx)).await
        {
            let frame = frame?;
            match frame.into_data() {
                Ok(data) => {
                    if body.len() + data.len() > limit {
                        return Err(BodyFailed("larger than the limit"));
                    }
                    body.extend_from_slice(&data);
                }
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
        }
        Ok((body, trailers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::task::noop_waker_ref;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct CountWakes(AtomicUsize);
    impl std::task::Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll(body: &mut RequestBody) -> Poll<Option<Result<Frame<Bytes>, BodyFailed>>> {
        Pin::new(body).poll_frame(&mut Context::from_waker(noop_waker_ref()))
    }

    #[test]
    fn a_full_pipe_holds_the_writer_until_the_reader_takes_some() {
        let (writer, mut reader) = pipe();
        writer.push(vec![1; PIPE_CAPACITY]);
        assert_eq!(writer.room(), 0);
        let wakes = Arc::new(CountWakes(AtomicUsize::new(0)));
        assert!(writer.wait_for_room(&Waker::from(wakes.clone())));
        assert!(matches!(poll(&mut reader), Poll::Ready(Some(Ok(_)))));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "the writer is woken");
        assert_eq!(writer.room(), PIPE_CAPACITY);
        assert!(poll(&mut reader).is_pending());
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-sum", "1".parse().unwrap());
        writer.finish(Some(trailers));
        assert!(matches!(poll(&mut reader), Poll::Ready(Some(Ok(f))) if f.is_trailers()));
        assert!(matches!(poll(&mut reader), Poll::Ready(None)));
    }

    #[test]
    fn a_writer_gone_before_the_end_fails_the_body_and_a_reader_gone_frees_the_writer() {
        let (writer, mut reader) = pipe();
        writer.push(b"part".to_vec());
        drop(writer);
        assert!(matches!(poll(&mut reader), Poll::Ready(Some(Ok(_)))));
        assert!(matches!(poll(&mut reader), Poll::Ready(Some(Err(_)))));

        let (writer, reader) = pipe();
        writer.push(vec![0; PIPE_CAPACITY]);
        drop(reader);
        assert_eq!(writer.room(), usize::MAX, "the rest is read and dropped");
        assert!(!writer.wait_for_room(noop_waker_ref()));
    }
}
