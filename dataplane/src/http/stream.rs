//! Response bodies sent as they are produced: a guest's output stream, or a peer datacenter's
//! response relayed through this one. The worker asks for more only while the client has read
//! most of what was sent (`pump`'s high-water mark), so a slow client slows the producer instead
//! of filling memory.
//!
//! A body that fails, or ends at another length than it declared, is never sent as if whole:
//! `pump` says `Failed`, and the worker closes the connection without the final chunk, so the
//! client sees a cut body.

use std::{
    future::Future as _,
    panic::AssertUnwindSafe,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame};

pub type StreamError = anyhow::Error;

/// The part of a body still to come.
pub struct BodyStream {
    /// The length of the whole body (what was known up front included), when the producer
    /// declared one: sent as `content-length`, then held to.
    pub length: Option<u64>,
    body: Pin<Box<dyn Body<Data = Bytes, Error = StreamError>>>,
    /// Trailers met by `take_ready`, given out next.
    held: Option<Frame<Bytes>>,
}

impl std::fmt::Debug for BodyStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyStream")
            .field("length", &self.length)
            .finish_non_exhaustive()
    }
}

impl BodyStream {
    pub fn new(body: impl Body<Data = Bytes, Error = StreamError> + 'static) -> Self {
        Self {
            length: None,
            body: Box::pin(body),
            held: None,
        }
    }

    /// Moves what the body holds now into `into`, up to about `max` bytes: true when that was
    /// all of it (the body ended). What is still to come stays in the stream.
    pub async fn take_ready(
        &mut self,
        into: &mut Vec<u8>,
        max: usize,
    ) -> Result<bool, StreamError> {
        let taken = std::future::poll_fn(|cx| {
            Poll::Ready(take_ready(|cx| self.poll_frame(cx), into, max, cx))
        })
        .await?;
        Ok(match taken {
            Taken::Whole => true,
            Taken::Partial(held) => {
                self.held = held;
                false
            }
        })
    }

    /// The rest of the body, for a caller that reads it itself (a test, a relay that needs
    /// it whole).
    pub fn into_body(self) -> impl Body<Data = Bytes, Error = StreamError> {
        HeldFirst {
            held: self.held,
            body: self.body,
        }
    }

    pub fn with_length(mut self, length: Option<u64>) -> Self {
        self.length = length;
        self
    }

    /// The next frame; a panic in the producer is its failure, not the worker's. Polled outside
    /// tokio's cooperative budget, as the worker's replies are (`worker::wake::poll_reply` says
    /// why).
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        let body = &mut self.body;
        std::panic::catch_unwind(AssertUnwindSafe(|| {
            let next = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx));
            std::pin::pin!(tokio::task::unconstrained(next)).poll(cx)
        }))
        .unwrap_or_else(|panic| {
            Poll::Ready(Some(Err(anyhow::anyhow!(
                "body producer panicked: {}",
                crate::panic_text(&*panic)
            ))))
        })
    }
}

/// Body bytes gathered before a response goes to the worker: a body that fits and is all there
/// is sent whole with a content-length (the common small response, in one write); past it, or
/// with more still to come, the body streams.
pub const PREFIX_BYTES: usize = 64 << 10;

/// What `take_ready` found.
pub enum Taken {
    /// The body ended: all of it is in.
    Whole,
    /// More is to come; the trailers frame met, if any, to give out before it.
    Partial(Option<Frame<Bytes>>),
}

/// Moves the data frames `next_frame` has ready into `into`, up to about `max` bytes, without
/// waiting for more (the start of a response body, sent with its head).
pub fn take_ready<E>(
    mut next_frame: impl FnMut(&mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, E>>>,
    into: &mut Vec<u8>,
    max: usize,
    cx: &mut Context<'_>,
) -> Result<Taken, E> {
    while into.len() < max {
        match next_frame(cx) {
            Poll::Ready(None) => return Ok(Taken::Whole),
            Poll::Ready(Some(Err(e))) => return Err(e),
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => into.extend_from_slice(&data),
                Err(trailers) => return Ok(Taken::Partial(Some(trailers))),
            },
            Poll::Pending => return Ok(Taken::Partial(None)),
        }
    }
    Ok(Taken::Partial(None))
}

/// A body with a frame taken early put back in front.
struct HeldFirst {
    held: Option<Frame<Bytes>>,
    body: Pin<Box<dyn Body<Data = Bytes, Error = StreamError>>>,
}

impl Body for HeldFirst {
    type Data = Bytes;
    type Error = StreamError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        match self.held.take() {
            Some(frame) => Poll::Ready(Some(Ok(frame))),
            None => self.body.as_mut().poll_frame(cx),
        }
    }
}

/// How a streamed body is delimited on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// `transfer-encoding: chunked` (HTTP/1.1 clients, no declared length).
    Chunked,
    /// `content-length`: this many bytes are still owed.
    Length { remaining: u64 },
    /// An HTTP/1.0 client and no declared length: the body ends when the connection does.
    UntilClose,
}

/// What one `pump` did.
#[derive(Debug)]
pub enum Pumped {
    /// The producer has nothing yet (it will wake the worker), or the client has enough unread.
    Waiting,
    /// The body is whole and its end is written.
    Finished,
    /// The body failed or broke its declared length; the connection must close without
    /// writing an end.
    Failed(StreamError),
}

/// A body being streamed to one client.
#[derive(Debug)]
pub struct ActiveStream {
    body: BodyStream,
    framing: Framing,
    trailers: Option<http::HeaderMap>,
    /// Whether the client takes trailers (chunked framing only).
    send_trailers: bool,
}

impl ActiveStream {
    pub fn new(body: BodyStream, framing: Framing) -> Self {
        Self {
            body,
            framing,
            trailers: None,
            send_trailers: true,
        }
    }

    pub fn with_trailers(mut self, send: bool) -> Self {
        self.send_trailers = send;
        self
    }

    /// Appends what the producer has ready to `out`, framed, while `out` (plus `unsent`, what
    /// is queued elsewhere) stays under `high_water`.
    pub fn pump(
        &mut self,
        out: &mut Vec<u8>,
        unsent: usize,
        high_water: usize,
        cx: &mut Context<'_>,
    ) -> Pumped {
        while out.len() + unsent < high_water {
            match self.body.poll_frame(cx) {
                Poll::Pending => return Pumped::Waiting,
                Poll::Ready(Some(Err(e))) => return Pumped::Failed(e),
                Poll::Ready(Some(Ok(frame))) => {
                    let frame = match frame.into_data() {
                        Ok(data) => {
                            if let Err(e) = self.write_data(out, &data) {
                                return Pumped::Failed(e);
                            }
                            continue;
                        }
                        Err(frame) => frame,
                    };
                    if let Ok(trailers) = frame.into_trailers() {
                        self.trailers
                            .get_or_insert_with(http::HeaderMap::new)
                            .extend(trailers);
                    }
                }
                Poll::Ready(None) => {
                    return match self.finish(out) {
                        Ok(()) => Pumped::Finished,
                        Err(e) => Pumped::Failed(e),
                    };
                }
            }
        }
        Pumped::Waiting
    }

    fn write_data(&mut self, out: &mut Vec<u8>, data: &[u8]) -> Result<(), StreamError> {
        if data.is_empty() {
            return Ok(());
        }
        match &mut self.framing {
            Framing::Chunked => write_chunk(out, data),
            Framing::Length { remaining } => {
                let len = data.len() as u64;
                anyhow::ensure!(
                    len <= *remaining,
                    "body longer than its declared content-length"
                );
                *remaining -= len;
                out.extend_from_slice(data);
            }
            Framing::UntilClose => out.extend_from_slice(data),
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), StreamError> {
        match self.framing {
            Framing::Chunked => {
                out.extend_from_slice(b"0\r\n");
                if let (Some(trailers), true) = (&self.trailers, self.send_trailers) {
                    write_trailers(out, trailers);
                }
                out.extend_from_slice(b"\r\n");
            }
            Framing::Length { remaining: 0 } | Framing::UntilClose => {}
            Framing::Length { remaining } => {
                anyhow::bail!("body ended {remaining} bytes short of its declared content-length")
            }
        }
        Ok(())
    }
}

/// One chunk of a chunked body (an empty one would end the body, so none is written).
pub fn write_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Fields that must not come after a body (RFC 9110, 6.5.1): framing, routing, and what a
/// client needs before the body to read it; and the ones only edgeplane sets.
pub fn is_forbidden_trailer(name: &str) -> bool {
    super::is_hop_by_hop(name)
        || name.starts_with("x-edge-")
        || matches!(
            name,
            "host"
                | "trailer"
                | "content-type"
                | "content-encoding"
                | "content-range"
                | "authorization"
                | "set-cookie"
                | "cache-control"
        )
}

fn write_trailers(out: &mut Vec<u8>, trailers: &http::HeaderMap) {
    for (name, value) in trailers {
        if is_forbidden_trailer(name.as_str()) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::task::noop_waker_ref;

    /// A body that gives `frames` in turn, `Pending` for each `None`.
    struct Script(std::collections::VecDeque<Option<Result<Frame<Bytes>, StreamError>>>);

    impl Body for Script {
        type Data = Bytes;
        type Error = StreamError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
            match self.0.pop_front() {
                None => Poll::Ready(None),
                Some(None) => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                Some(Some(frame)) => Poll::Ready(Some(frame)),
            }
        }
    }

    fn data(s: &str) -> Option<Result<Frame<Bytes>, StreamError>> {
        Some(Ok(Frame::data(Bytes::copy_from_slice(s.as_bytes()))))
    }

    fn stream(
        frames: Vec<Option<Result<Frame<Bytes>, StreamError>>>,
        framing: Framing,
    ) -> ActiveStream {
        ActiveStream::new(BodyStream::new(Script(frames.into())), framing)
    }

    fn cx() -> Context<'static> {
        Context::from_waker(noop_waker_ref())
    }

    #[test]
    fn chunks_as_produced_then_trailers_and_the_end() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-checksum", "abc".parse().unwrap());
        trailers.insert("x-edge-placement", "forged".parse().unwrap());
        trailers.insert("content-length", "1".parse().unwrap());
        let mut s = stream(
            vec![
                data("hello "),
                None,
                data(""),
                data("world"),
                Some(Ok(Frame::trailers(trailers))),
            ],
            Framing::Chunked,
        );
        let mut out = Vec::new();
        assert!(matches!(
            s.pump(&mut out, 0, 1 << 16, &mut cx()),
            Pumped::Waiting
        ));
        assert_eq!(out, b"6\r\nhello \r\n");
        assert!(matches!(
            s.pump(&mut out, 0, 1 << 16, &mut cx()),
            Pumped::Finished
        ));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "6\r\nhello \r\n5\r\nworld\r\n0\r\nx-checksum: abc\r\n\r\n"
        );
    }

    #[test]
    fn stops_at_the_high_water_mark_until_the_client_reads() {
        let mut s = stream(
            vec![data("aaaa"), data("bbbb"), data("cccc")],
            Framing::UntilClose,
        );
        let mut out = Vec::new();
        // 6 bytes unread elsewhere and a mark of 10: room for one frame.
        assert!(matches!(
            s.pump(&mut out, 6, 10, &mut cx()),
            Pumped::Waiting
        ));
        assert_eq!(out, b"aaaa");
        out.clear();
        assert!(matches!(
            s.pump(&mut out, 0, 10, &mut cx()),
            Pumped::Finished
        ));
        assert_eq!(out, b"bbbbcccc");
    }

    #[test]
    fn a_declared_length_is_held_to_both_ways() {
        let mut long = stream(vec![data("12345")], Framing::Length { remaining: 4 });
        assert!(matches!(
            long.pump(&mut Vec::new(), 0, 1 << 16, &mut cx()),
            Pumped::Failed(_)
        ));
        let mut short = stream(vec![data("123")], Framing::Length { remaining: 4 });
        let mut out = Vec::new();
        assert!(matches!(
            short.pump(&mut out, 0, 1 << 16, &mut cx()),
            Pumped::Failed(_)
        ));
        let mut exact = stream(
            vec![data("12"), data("34")],
            Framing::Length { remaining: 4 },
        );
        out.clear();
        assert!(matches!(
            exact.pump(&mut out, 0, 1 << 16, &mut cx()),
            Pumped::Finished
        ));
        assert_eq!(out, b"1234");
    }

    #[test]
    fn a_failure_mid_body_writes_no_end() {
        let mut s = stream(
            vec![data("part"), Some(Err(anyhow::anyhow!("guest trapped")))],
            Framing::Chunked,
        );
        let mut out = Vec::new();
        assert!(matches!(
            s.pump(&mut out, 0, 1 << 16, &mut cx()),
            Pumped::Failed(_)
        ));
        assert_eq!(out, b"4\r\npart\r\n", "no 0-chunk after a failure");
    }

    #[test]
    fn a_producer_that_panics_fails_its_stream_only() {
        struct Panics;
        impl Body for Panics {
            type Data = Bytes;
            type Error = StreamError;
            fn poll_frame(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
                panic!("bug in a producer")
            }
        }
        let mut s = ActiveStream::new(BodyStream::new(Panics), Framing::Chunked);
        assert!(matches!(
            s.pump(&mut Vec::new(), 0, 1 << 16, &mut cx()),
            Pumped::Failed(_)
        ));
    }
}
