//! Responses as the worker writes them.

use super::{
    reason_phrase,
    stream::{ActiveStream, BodyStream, Framing, write_chunk},
};

#[derive(Debug, Default)]
pub struct Response {
    pub status: u16,
    /// Extra headers; content-length, transfer-encoding, connection and date are written by
    /// `write_response`.
    pub headers: Vec<(String, String)>,
    /// The whole body, or with `stream` the part of it known up front.
    pub body: Vec<u8>,
    /// The rest of the body, sent as it is produced (`super::stream`).
    pub stream: Option<BodyStream>,
}

impl Response {
    /// Body bytes as known at the head: the whole body's, or a stream's declared length.
    pub fn body_length(&self) -> Option<u64> {
        match &self.stream {
            None => Some(self.body.len() as u64),
            Some(stream) => stream.length,
        }
    }

    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.into(),
            stream: None,
        }
    }

    pub fn text(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self::new(status, body).header("content-type", "text/plain; charset=utf-8")
    }

    /// An error as clients see it: a short reason and the request id that keys the log line
    /// holding the detail.
    pub fn error(status: u16, reason: &str, request_id: &str) -> Self {
        Self::text(status, format!("{reason} (request id {request_id})\n"))
            .header("x-edge-request-id", request_id)
    }

    /// The response with its streamed part read into `body`, up to `limit` bytes in all (for a
    /// caller that needs it whole: a test, a relay that signs it).
    pub async fn into_whole(mut self, limit: usize) -> Result<Self, super::stream::StreamError> {
        if let Some(stream) = self.stream.take() {
            let rest = http_body_util::Limited::new(
                stream.into_body(),
                limit.saturating_sub(self.body.len()),
            );
            let rest = http_body_util::BodyExt::collect(rest)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            self.body.extend_from_slice(&rest.to_bytes());
        }
        Ok(self)
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// Whether a response with this status never has a body (RFC 9110, 6.4.1): whatever a guest put
/// in one is not sent, or the client would read it as the start of the next response.
pub fn status_has_no_body(status: u16) -> bool {
    (100..200).contains(&status) || status == 204 || status == 304
}

/// What the request allows its response: whether the connection stays open, whether the body
/// is left out (HEAD), and whether the client reads chunked bodies (HTTP/1.1).
#[derive(Clone, Copy, Debug)]
pub struct ResponseMode {
    pub keep_alive: bool,
    pub head_only: bool,
    pub chunked: bool,
    /// The client said it takes trailers (`TE: trailers`): a streamed body's trailers are sent
    /// (as hyper's server does; without it they are dropped).
    pub trailers: bool,
}

/// What `write_response` left to do: the rest of a streamed body, and whether the connection
/// stays open after it.
#[derive(Debug)]
pub struct Written {
    pub stream: Option<ActiveStream>,
    pub keep_alive: bool,
}

/// Appends the response's head, and its body as far as it is known, to `out`. `date` is the
/// current IMF-fixdate, formatted once a second by the caller. HEAD responses (`head_only`)
/// carry the headers of the full response but no body; 1xx, 204 and 304 responses carry neither
/// a body nor a content-length. A streamed body goes with its declared length, chunked, or (to an
/// HTTP/1.0 client) until the connection closes.
pub fn write_response(
    out: &mut Vec<u8>,
    resp: Response,
    mode: ResponseMode,
    date: &str,
) -> Written {
    write_status_and_headers(out, &resp);
    let bodiless = status_has_no_body(resp.status);
    let mut keep_alive = mode.keep_alive;
    let framing = match (&resp.stream, bodiless) {
        (_, true) => None,
        (None, false) => {
            write_content_length(out, resp.body.len() as u64);
            None
        }
        (Some(stream), false) => Some(stream_framing(
            out,
            stream.length,
            resp.body.len() as u64,
            &mode,
            &mut keep_alive,
        )),
    };
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(date.as_bytes());
    out.extend_from_slice(b"\r\n");
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if mode.head_only || bodiless {
        return Written {
            stream: None,
            keep_alive,
        };
    }
    match (framing, resp.stream) {
        (Some(framing), Some(stream)) => {
            if framing == Framing::Chunked {
                write_chunk(out, &resp.body);
            } else {
                out.extend_from_slice(&resp.body);
            }
            Written {
                stream: Some(ActiveStream::new(stream, framing).with_trailers(mode.trailers)),
                keep_alive,
            }
        }
        _ => {
            out.extend_from_slice(&resp.body);
            Written {
                stream: None,
                keep_alive,
            }
        }
    }
}

// Byte appends, not `write!`: the formatter's machinery was a visible share of a small
// response's user-space cost.

fn write_status_and_headers(out: &mut Vec<u8>, resp: &Response) {
    let mut number = itoa::Buffer::new();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(number.format(resp.status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason_phrase(resp.status).as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &resp.headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

fn write_content_length(out: &mut Vec<u8>, length: u64) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// A streamed body's framing, its header written: the declared length (when the part known
/// now fits in it), else chunked where the client reads chunks, else until the connection
/// closes (which ends keep-alive).
fn stream_framing(
    out: &mut Vec<u8>,
    declared: Option<u64>,
    known: u64,
    mode: &ResponseMode,
    keep_alive: &mut bool,
) -> Framing {
    match declared {
        Some(length) if length >= known => {
            write_content_length(out, length);
            Framing::Length {
                remaining: length - known,
            }
        }
        _ if mode.chunked => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            Framing::Chunked
        }
        _ => {
            *keep_alive = false;
            Framing::UntilClose
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(keep_alive: bool, head_only: bool) -> ResponseMode {
        ResponseMode {
            keep_alive,
            head_only,
            chunked: true,
            trailers: false,
        }
    }

    #[test]
    fn serializes_with_length_date_and_close() {
        let mut out = Vec::new();
        let r = Response::text(404, "nope\n").header("x-edge-placement", "local");
        let r2 = Response::text(404, "nope\n").header("x-edge-placement", "local");
        write_response(
            &mut out,
            r,
            mode(false, false),
            "Sun, 22 Nov 2026 14:00:00 GMT",
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 404 Not Found\r\ncontent-type: text/plain; charset=utf-8\r\nx-edge-placement: local\r\n\
             content-length: 5\r\ndate: Sun, 22 Nov 2026 14:00:00 GMT\r\nconnection: close\r\n\r\nnope\n"
        );
        let mut head = Vec::new();
        write_response(&mut head, r2, mode(true, true), "d");
        assert!(head.ends_with(b"content-length: 5\r\ndate: d\r\n\r\n"));
    }

    #[test]
    fn statuses_without_a_body_send_none_whatever_the_guest_gave() {
        for status in [101, 103, 204, 304] {
            let mut out = Vec::new();
            write_response(
                &mut out,
                Response::new(status, "stray"),
                mode(true, false),
                "d",
            );
            let text = String::from_utf8(out).unwrap();
            assert!(text.ends_with("date: d\r\n\r\n"), "{status}: {text:?}");
            assert!(!text.contains("content-length"), "{status}: {text:?}");
        }
    }
}
