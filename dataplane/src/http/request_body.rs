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
    time::Instant,
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
    /// The client's pace while the server waits on it.
    pace: Pace,
}

/// How a streamed body's client keeps up while the server waits on it: the reader found nothing
/// to take, or is gone and the rest of the body is read only to be dropped. Time the reader is
/// busy, or has bytes waiting for it, is the server's and is not counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pace {
    /// Since when the server has waited for the client's next bytes (None: it does not wait).
    pub waiting_since: Option<Instant>,
    /// How long it waited before that, over the whole body.
    pub waited_before: std::time::Duration,
    /// Body bytes the client has sent.
    pub received: u64,
}

impl Pace {
    fn wait(&mut self, now: Instant) {
        self.waiting_since.get_or_insert(now);
    }

    /// Bytes came: the current wait (if any) ends.
    fn bytes(&mut self, n: usize, now: Instant) {
        self.received = self.received.saturating_add(n as u64);
        if let Some(since) = self.waiting_since.take() {
            self.waited_before = self
                .waited_before
                .saturating_add(now.saturating_duration_since(since));
        }
    }

    /// The whole time the server has waited on the client, up to `now`.
    pub fn waited(&self, now: Instant) -> std::time::Duration {
        let current = self.waiting_since.map_or_else(Default::default, |since| {
            now.saturating_duration_since(since)
        });
        self.waited_before.saturating_add(current)
    }
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
        let now = Instant::now();
        pipe.pace.bytes(data.len(), now);
        if pipe.reader_gone {
            // Nobody reads them: the worker waits on the client for the rest at once.
            pipe.pace.wait(now);
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

    /// The body will never be whole: the reader gets an error, not a short body. The first
    /// reason given is the one it sees (a writer dropped after a timeout keeps the timeout's).
    pub fn fail(&self, why: &'static str) {
        let mut pipe = crate::lock(&self.0);
        if !pipe.finished && pipe.failed.is_none() {
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

    /// How the client keeps up (see `Pace`); None once the body is whole or failed.
    pub fn pace(&self) -> Option<Pace> {
        let pipe = crate::lock(&self.0);
        if pipe.finished || pipe.failed.is_some() {
            return None;
        }
        Some(pipe.pace)
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
        pipe.pace.wait(Instant::now());
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
        pipe.pace.wait(Instant::now());
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
    fn the_server_waits_on_the_client_only_while_the_reader_waits_for_bytes() {
        let waiting = |w: &BodyWriter| w.pace().unwrap().waiting_since;
        let (writer, mut reader) = pipe();
        assert_eq!(waiting(&writer), None, "the reader has not asked yet");
        writer.push(b"part".to_vec());
        assert_eq!(waiting(&writer), None, "bytes wait for the reader");
        assert!(matches!(poll(&mut reader), Poll::Ready(Some(Ok(_)))));
        assert_eq!(waiting(&writer), None, "the reader is busy with them");
        assert!(poll(&mut reader).is_pending());
        let asked = waiting(&writer).expect("the reader waits");
        assert!(poll(&mut reader).is_pending());
        assert_eq!(
            waiting(&writer),
            Some(asked),
            "asking again keeps the first time"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
        writer.push(b"more".to_vec());
        let pace = writer.pace().unwrap();
        assert_eq!((pace.waiting_since, pace.received), (None, 8));
        assert!(pace.waited_before >= std::time::Duration::from_millis(5));
        drop(reader);
        assert!(
            waiting(&writer).is_some(),
            "the rest is owed, to be dropped"
        );
        writer.push(b"dropped".to_vec());
        assert!(
            waiting(&writer).is_some(),
            "and still owed after each piece"
        );
        assert_eq!(writer.pace().unwrap().received, 15);
        writer.finish(None);
        assert_eq!(writer.pace(), None, "a whole body owes nothing");
    }

    #[test]
    fn a_writer_gone_before_the_end_fails_the_body_and_a_reader_gone_frees_the_writer() {
        let (writer, mut reader) = pipe();
        writer.push(b"part".to_vec());
        drop(writer);
        assert!(matches!(poll(&mut reader), Poll::Ready(Some(Ok(_)))));
        assert!(matches!(poll(&mut reader), Poll::Ready(Some(Err(_)))));

        // The reason a reader sees is the first: a timeout's, not the drop that follows it.
        let (writer, mut reader) = pipe();
        writer.fail("too slow");
        drop(writer);
        assert!(matches!(
            poll(&mut reader),
            Poll::Ready(Some(Err(BodyFailed("too slow"))))
        ));

        let (writer, reader) = pipe();
        writer.push(vec![0; PIPE_CAPACITY]);
        drop(reader);
        assert_eq!(writer.room(), usize::MAX, "the rest is read and dropped");
        assert!(!writer.wait_for_room(noop_waker_ref()));
    }
}
