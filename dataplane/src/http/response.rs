//! Responses as the worker writes them.

use super::reason_phrase;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Extra headers; content-length, connection and date are written by `write_response`.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.into(),
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

/// Appends the response to `out`. `date` is the current IMF-fixdate, formatted once a second by
/// the caller. HEAD responses (`head_only`) carry the headers of the full response but no body;
/// 1xx, 204 and 304 responses carry neither a body nor a content-length.
pub fn write_response(
    out: &mut Vec<u8>,
    resp: &Response,
    keep_alive: bool,
    head_only: bool,
    date: &str,
) {
    // Byte appends, not `write!`: the formatter's machinery was a visible share of a small
    // response's user-space cost.
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
    let bodiless = status_has_no_body(resp.status);
    if !bodiless {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(number.format(resp.body.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(date.as_bytes());
    out.extend_from_slice(b"\r\n");
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only && !bodiless {
        out.extend_from_slice(&resp.body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_with_length_date_and_close() {
        let mut out = Vec::new();
        let r = Response::text(404, "nope\n").header("x-edge-placement", "local");
        write_response(&mut out, &r, false, false, "Sun, 22 Nov 2026 14:00:00 GMT");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 404 Not Found\r\ncontent-type: text/plain; charset=utf-8\r\nx-edge-placement: local\r\n\
             content-length: 5\r\ndate: Sun, 22 Nov 2026 14:00:00 GMT\r\nconnection: close\r\n\r\nnope\n"
        );
        let mut head = Vec::new();
        write_response(&mut head, &r, true, true, "d");
        assert!(head.ends_with(b"content-length: 5\r\ndate: d\r\n\r\n"));
    }

    #[test]
    fn statuses_without_a_body_send_none_whatever_the_guest_gave() {
        for status in [101, 103, 204, 304] {
            let mut out = Vec::new();
            write_response(&mut out, &Response::new(status, "stray"), true, false, "d");
            let text = String::from_utf8(out).unwrap();
            assert!(text.ends_with("date: d\r\n\r\n"), "{status}: {text:?}");
            assert!(!text.contains("content-length"), "{status}: {text:?}");
        }
    }
}
