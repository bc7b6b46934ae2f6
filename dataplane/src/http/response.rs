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

    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// Appends the response to `out`. `date` is the current IMF-fixdate, formatted once a second by
/// the caller. HEAD responses (`head_only`) carry the headers of the full response but no body.
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
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(number.format(resp.body.len()).as_bytes());
    out.extend_from_slice(b"\r\ndate: ");
    out.extend_from_slice(date.as_bytes());
    out.extend_from_slice(b"\r\n");
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
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
}
