//! One connection's request decoder. A request's head is parsed once it is whole; its body is
//! then taken as it arrives, so a body trickling in over many reads is looked at once, not
//! re-parsed from its start on every read.
//!
//! A worker's decoder streams bodies (`RequestDecoder::streaming`): a request whose body is not
//! all there when its head is is handed on at once with a reader (`request_body`), and the body
//! goes into that reader as it arrives, no faster than it is read. A body that is all there goes
//! with its request, whole, as before.

use super::{
    HttpError, HttpLimits, Request,
    chunked::ChunkedDecoder,
    request::{Framing, parse_head},
    request_body::{BodyWriter, RequestBody, pipe},
};

/// What `RequestDecoder::decode` made of the input it was offered.
#[derive(Debug)]
pub enum Decoded {
    /// A whole request; `used` bytes of this input were its last.
    Complete(Request, usize),
    /// A request whose body is still arriving (streaming decoders only): its head, and the
    /// reader its body goes into. `used` bytes of the input went into it.
    Streaming {
        request: Request,
        body: RequestBody,
        used: usize,
        expects_continue: bool,
    },
    /// The request is not whole yet. `used` bytes of the input went into it (its body so far)
    /// and must not be offered again; `expects_continue` when the client waits for
    /// `100 Continue` before sending its body.
    Partial { used: usize, expects_continue: bool },
    /// A streamed body ended; `used` bytes of the input were its last. What follows is the next
    /// request.
    BodyEnd { used: usize },
    /// A streamed body's reader holds all it may: read no more until it takes some
    /// (`wait_for_room`). `used` bytes of the input went in.
    Blocked { used: usize },
}

/// A request whose head is parsed and whose body is still arriving.
#[derive(Debug)]
struct BodyInProgress {
    into: BodyDestination,
    framing: BodyFraming,
    expects_continue: bool,
}

#[derive(Debug)]
enum BodyDestination {
    /// Gathered into the request, which goes on once whole.
    Buffer(Request),
    /// Into the reader the request went on with.
    Stream(BodyWriter),
}

#[derive(Debug)]
enum BodyFraming {
    /// Bytes of a Content-Length body still to come.
    Length(usize),
    Chunked(ChunkedDecoder),
}

#[derive(Debug, Default)]
pub struct RequestDecoder {
    body: Option<BodyInProgress>,
    /// How much of the input has been searched for the end of the head without finding it.
    head_scanned: usize,
    stream_bodies: bool,
}

impl RequestDecoder {
    /// A decoder that hands requests on before their body is whole (a worker's).
    pub fn streaming() -> Self {
        Self {
            stream_bodies: true,
            ..Self::default()
        }
    }

    /// Whether no request is half-received.
    pub fn is_idle(&self) -> bool {
        self.body.is_none()
    }

    /// Whether a request went on and its body is still arriving.
    pub fn is_streaming(&self) -> bool {
        matches!(
            self.body,
            Some(BodyInProgress {
                into: BodyDestination::Stream(_),
                ..
            })
        )
    }

    /// How a streamed body's client keeps up while the server waits on it; None in a request's
    /// head or for a body gathered whole.
    pub fn body_pace(&self) -> Option<super::request_body::Pace> {
        match &self.body {
            Some(BodyInProgress {
                into: BodyDestination::Stream(writer),
                ..
            }) => writer.pace(),
            _ => None,
        }
    }

    /// Gives up the request being received (the connection is closing): a streamed body's reader
    /// gets an error, never a short body. Returns whether one was being streamed.
    pub fn abandon(&mut self, why: &'static str) -> bool {
        match self.body.take() {
            Some(BodyInProgress {
                into: BodyDestination::Stream(writer),
                ..
            }) => {
                writer.fail(why);
                true
            }
            _ => false,
        }
    }

    /// After `Decoded::Blocked`: asks for `waker` when the reader has room; false if it has
    /// room already (decode again).
    pub fn wait_for_room(&self, waker: &std::task::Waker) -> bool {
        match &self.body {
            Some(BodyInProgress {
                into: BodyDestination::Stream(writer),
                ..
            }) => writer.wait_for_room(waker),
            _ => false,
        }
    }

    /// Decodes from `input`, which holds what arrived and was not `used` before.
    pub fn decode(&mut self, input: &[u8], limits: &HttpLimits) -> Result<Decoded, HttpError> {
        if self.body.is_some() {
            return self.decode_body(input);
        }
        if !self.head_may_be_complete(input) {
            if input.len() > limits.max_header_bytes {
                return Err(HttpError::HeadersTooLarge);
            }
            return Ok(Decoded::Partial {
                used: 0,
                expects_continue: false,
            });
        }
        let Some((head, head_len)) = parse_head(input, limits)? else {
            return Ok(Decoded::Partial {
                used: 0,
                expects_continue: false,
            });
        };
        self.head_scanned = 0;
        let framing = match head.framing {
            Framing::None => return Ok(Decoded::Complete(head.request, head_len)),
            Framing::Length(n) => BodyFraming::Length(n),
            Framing::Chunked => BodyFraming::Chunked(ChunkedDecoder::new(limits.max_body_bytes)),
        };
        self.body = Some(BodyInProgress {
            into: BodyDestination::Buffer(head.request),
            framing,
            expects_continue: head.expects_continue,
        });
        match self.decode_body(&input[head_len..])? {
            Decoded::Complete(req, used) => Ok(Decoded::Complete(req, head_len + used)),
            Decoded::Partial {
                used,
                expects_continue,
            } if self.stream_bodies => Ok(self.start_stream(head_len + used, expects_continue)),
            Decoded::Partial {
                used,
                expects_continue,
            } => Ok(Decoded::Partial {
                used: head_len + used,
                expects_continue,
            }),
            other => Err(unexpected(other)),
        }
    }

    /// The request goes on now; what its body holds so far is the reader's first piece.
    fn start_stream(&mut self, used: usize, expects_continue: bool) -> Decoded {
        let (writer, body) = pipe();
        let progress = self.body.as_mut().expect("a body is in progress");
        let BodyDestination::Buffer(mut request) =
            std::mem::replace(&mut progress.into, BodyDestination::Stream(writer))
        else {
            unreachable!("a request is streamed once")
        };
        if let BodyDestination::Stream(writer) = &progress.into {
            writer.push(std::mem::take(&mut request.body));
        }
        Decoded::Streaming {
            request,
            body,
            used,
            expects_continue,
        }
    }

    fn decode_body(&mut self, input: &[u8]) -> Result<Decoded, HttpError> {
        let Some(progress) = self.body.as_mut() else {
            return Err(HttpError::BadRequest("no request in progress"));
        };
        // A streamed body takes no more than its reader has room for.
        let room = match &progress.into {
            BodyDestination::Stream(writer) => writer.room(),
            BodyDestination::Buffer(_) => usize::MAX,
        };
        if room == 0 {
            return Ok(Decoded::Blocked { used: 0 });
        }
        let offered = &input[..input.len().min(room)];
        let mut streamed = Vec::new();
        let sink = match &mut progress.into {
            BodyDestination::Buffer(request) => &mut request.body,
            BodyDestination::Stream(_) => &mut streamed,
        };
        let (used, done) = match &mut progress.framing {
            BodyFraming::Length(remaining) => {
                let take = (*remaining).min(offered.len());
                sink.extend_from_slice(&offered[..take]);
                *remaining -= take;
                (take, *remaining == 0)
            }
            BodyFraming::Chunked(decoder) => match decoder.feed(offered, sink) {
                Ok(used) => (used, decoder.is_done()),
                Err(e) => {
                    self.abandon("the body broke its framing or a limit");
                    return Err(e);
                }
            },
        };
        if let BodyDestination::Stream(writer) = &progress.into {
            writer.push(streamed);
        }
        if done {
            return self.finish_body(used);
        }
        if used < input.len() {
            return Ok(Decoded::Blocked { used });
        }
        // The client waits for `100 Continue` only until its body starts.
        let expects_continue = progress.expects_continue
            && matches!(&progress.into, BodyDestination::Buffer(r) if r.body.is_empty());
        Ok(Decoded::Partial {
            used,
            expects_continue,
        })
    }

    fn finish_body(&mut self, used: usize) -> Result<Decoded, HttpError> {
        let Some(mut finished) = self.body.take() else {
            return Err(HttpError::BadRequest("no request in progress"));
        };
        let trailers = match &mut finished.framing {
            BodyFraming::Chunked(decoder) => decoder.take_trailers()?,
            BodyFraming::Length(_) => Vec::new(),
        };
        match finished.into {
            BodyDestination::Buffer(mut request) => {
                request.trailers = trailers;
                Ok(Decoded::Complete(request, used))
            }
            BodyDestination::Stream(writer) => {
                writer.finish(header_map(trailers));
                Ok(Decoded::BodyEnd { used })
            }
        }
    }

    /// Whether `input` may hold a whole head: it has an empty line, or is new (so a request line
    /// that is garbage is refused at once). Each byte is searched once across calls.
    fn head_may_be_complete(&mut self, input: &[u8]) -> bool {
        if input.len() < self.head_scanned {
            self.head_scanned = 0;
        }
        let fresh = self.head_scanned == 0;
        // Back up three bytes: the end marker may straddle the previous read.
        let from = self.head_scanned.saturating_sub(3);
        let found = input[from..]
            .windows(2)
            .any(|w| w == b"\n\n" || w == b"\n\r");
        self.head_scanned = input.len();
        found || fresh
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum ParseOutcome {
    /// A request, and the number of input bytes it took.
    Complete(Request, usize),
    /// More input is needed; `expects_continue` when the client waits for `100 Continue`.
    Partial { expects_continue: bool },
}

/// Parses one whole request from the start of `buf` (a caller that has all of it at once).
pub fn parse_request(buf: &[u8], limits: &HttpLimits) -> Result<ParseOutcome, HttpError> {
    match RequestDecoder::default().decode(buf, limits)? {
        Decoded::Complete(req, used) => Ok(ParseOutcome::Complete(req, used)),
        Decoded::Partial {
            expects_continue, ..
        } => Ok(ParseOutcome::Partial { expects_continue }),
        // A decoder that does not stream bodies hands on whole requests only.
        Decoded::Streaming { .. } | Decoded::BodyEnd { .. } | Decoded::Blocked { .. } => {
            Err(HttpError::BadRequest("unparsable request"))
        }
    }
}

fn unexpected(outcome: Decoded) -> HttpError {
    tracing::error!(
        ?outcome,
        "request decoder: unexpected outcome for a new body"
    );
    HttpError::BadRequest("unparsable request")
}

/// Trailer fields as the reader sees them; fields whose name or value http refuses are dropped.
fn header_map(fields: Vec<(String, Vec<u8>)>) -> Option<http::HeaderMap> {
    if fields.is_empty() {
        return None;
    }
    let mut map = http::HeaderMap::new();
    for (name, value) in fields {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_bytes(&value),
        ) {
            map.append(name, value);
        }
    }
    Some(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use std::{pin::Pin, task::Context};

    fn next(body: &mut RequestBody) -> Option<Vec<u8>> {
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        match Pin::new(body).poll_frame(&mut cx) {
            std::task::Poll::Ready(Some(Ok(f))) => f.into_data().ok().map(|d| d.to_vec()),
            _ => None,
        }
    }

    /// Takes every frame the reader has now.
    fn drain(body: &mut RequestBody, data: &mut Vec<u8>, trailers: &mut Option<http::HeaderMap>) {
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        while let std::task::Poll::Ready(Some(Ok(frame))) = Pin::new(&mut *body).poll_frame(&mut cx)
        {
            match frame.into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(f) => *trailers = f.into_trailers().ok(),
            }
        }
    }

    #[test]
    fn a_body_not_all_there_streams_and_the_next_request_follows_it() {
        let limits = HttpLimits::default();
        let mut d = RequestDecoder::streaming();
        let head = b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc";
        let Ok(Decoded::Streaming {
            request,
            mut body,
            used,
            ..
        }) = d.decode(head, &limits)
        else {
            panic!("a body still arriving streams")
        };
        assert_eq!((request.target.as_str(), used), ("/up", head.len()));
        assert_eq!(next(&mut body).as_deref(), Some(&b"abc"[..]));
        assert!(d.is_streaming());
        let rest = b"defghijGET / HTTP/1.1\r\nHost: h\r\n\r\n";
        match d.decode(rest, &limits) {
            Ok(Decoded::BodyEnd { used }) => assert_eq!(used, 7),
            other => panic!("{other:?}"),
        }
        assert_eq!(next(&mut body).as_deref(), Some(&b"defghij"[..]));
        assert!(d.is_idle());
        assert!(matches!(
            d.decode(&rest[7..], &limits),
            Ok(Decoded::Complete(_, _))
        ));
    }

    #[test]
    fn a_body_all_there_goes_whole_and_a_full_reader_blocks_the_decoder() {
        let limits = HttpLimits {
            max_body_bytes: 1 << 20,
            ..Default::default()
        };
        let mut d = RequestDecoder::streaming();
        let whole = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc";
        assert!(
            matches!(d.decode(whole, &limits), Ok(Decoded::Complete(r, _)) if r.body == b"abc")
        );

        let big = super::super::request_body::PIPE_CAPACITY + 100;
        let head = format!("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: {big}\r\n\r\n");
        let Ok(Decoded::Streaming { mut body, .. }) = d.decode(head.as_bytes(), &limits) else {
            panic!("streams")
        };
        let data = vec![7u8; big];
        let Ok(Decoded::Blocked { used }) = d.decode(&data, &limits) else {
            panic!("the reader's room is the limit")
        };
        assert_eq!(used, super::super::request_body::PIPE_CAPACITY);
        assert!(d.wait_for_room(futures_util::task::noop_waker_ref()));
        assert_eq!(next(&mut body).map(|b| b.len()), Some(used));
        assert!(matches!(
            d.decode(&data[used..], &limits),
            Ok(Decoded::BodyEnd { used: 100 })
        ));
    }

    #[test]
    fn a_streamed_body_cut_anywhere_reaches_its_reader_whole_with_its_trailers() {
        let full = b"POST /u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nt: 1\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n";
        let limits = HttpLimits::default();
        for step in 1..full.len() {
            let mut d = RequestDecoder::streaming();
            let (mut input, mut offered) = (Vec::new(), 0);
            let mut reader = None;
            let (mut got, mut trailers) = (Vec::new(), None);
            let next_request = loop {
                let upto = (offered + step).min(full.len());
                input.extend_from_slice(&full[offered..upto]);
                offered = upto;
                let used = match d.decode(&input, &limits).unwrap() {
                    Decoded::Complete(req, used) if reader.is_some() => {
                        input.drain(..used);
                        break req;
                    }
                    Decoded::Complete(req, _) => {
                        // Cut after the whole body: it came whole with its head.
                        assert_eq!(req.body, b"abcde");
                        assert_eq!(req.trailers, [("t".to_owned(), b"1".to_vec())]);
                        break req;
                    }
                    Decoded::Streaming { body, used, .. } => {
                        reader = Some(body);
                        used
                    }
                    Decoded::Partial { used, .. } | Decoded::BodyEnd { used } => used,
                    Decoded::Blocked { .. } => panic!("a reader with room never blocks"),
                };
                input.drain(..used);
                if let Some(r) = reader.as_mut() {
                    drain(r, &mut got, &mut trailers);
                }
            };
            if let Some(mut r) = reader {
                drain(&mut r, &mut got, &mut trailers);
                assert_eq!(got, b"abcde", "cut every {step} bytes");
                assert_eq!(
                    trailers.as_ref().map(|t| &t["t"]),
                    Some(&"1".parse().unwrap())
                );
                assert_eq!(
                    next_request.target, "/",
                    "the next request follows the body"
                );
            } else {
                assert_eq!(next_request.target, "/u");
            }
        }
    }

    #[test]
    fn a_streamed_chunked_body_that_breaks_its_framing_fails_its_reader() {
        let limits = HttpLimits::default();
        let mut d = RequestDecoder::streaming();
        let head = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n";
        let Ok(Decoded::Streaming { mut body, .. }) = d.decode(head, &limits) else {
            panic!("streams")
        };
        assert!(d.decode(b"zz\r\n", &limits).is_err());
        assert_eq!(next(&mut body).as_deref(), Some(&b"abc"[..]));
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        assert!(matches!(
            Pin::new(&mut body).poll_frame(&mut cx),
            std::task::Poll::Ready(Some(Err(_)))
        ));
    }
}
