//! The client side of HTTP/1.1, for requests a worker sends on (handoffs to other datacenters)
//! and for edgeplane's load generator: requests out, whole responses in.

use super::{HttpError, Request, Response, chunked::decode_chunked};

/// Headers that describe one hop's connection or framing; the sender writes its own. `expect`
/// among them: the body goes out whole with the head, so nothing waits for `100 Continue`.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "content-length",
    "transfer-encoding",
    "te",
    "upgrade",
    "expect",
];

/// Whether a (lower-case) header belongs to one hop and is not forwarded.
pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.contains(&name)
}

/// Appends `req` to `out` as an HTTP/1.1 request with a Content-Length body, keep-alive.
pub fn write_request(out: &mut Vec<u8>, req: &Request) {
    out.extend_from_slice(req.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &req.headers {
        if is_hop_by_hop(name) {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("content-length: {}\r\n\r\n", req.body.len()).as_bytes());
    out.extend_from_slice(&req.body);
}

/// A whole response read from a buffer.
#[derive(Debug)]
pub struct ParsedResponse {
    /// Headers other than framing ones (content-length, transfer-encoding, connection, date).
    pub response: Response,
    /// Bytes of the buffer it took.
    pub consumed: usize,
    /// Whether the server keeps the connection open after it.
    pub keep_alive: bool,
}

/// Parses one response from the start of `buf`: `None` until it is complete. A response to a
/// HEAD request has no body whatever its headers say: pass `head`.
pub fn parse_response(
    buf: &[u8],
    head: bool,
    max_body: usize,
) -> Result<Option<ParsedResponse>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(HttpError::BadRequest("malformed response")),
    };
    let status = resp.code.unwrap_or(0);
    let mut out = Response::new(status, Vec::new());
    let (mut length, mut chunked, mut keep_alive) = (None, false, resp.version == Some(1));
    for h in resp.headers.iter() {
        let value = String::from_utf8_lossy(h.value);
        match h.name.to_ascii_lowercase().as_str() {
            "content-length" => {
                length = Some(
                    value
                        .trim()
                        .parse::<usize>()
                        .map_err(|_| HttpError::BadRequest("bad content-length in response"))?,
                )
            }
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            "connection" => keep_alive = !value.eq_ignore_ascii_case("close"),
            "date" | "keep-alive" => {}
            name => out.headers.push((name.to_owned(), value.into_owned())),
        }
    }
    let rest = &buf[head_len..];
    let no_body = head || status == 204 || status == 304 || (100..200).contains(&status);
    let (body, used) = if no_body {
        (Vec::new(), 0)
    } else if chunked {
        match decode_chunked(rest, max_body)? {
            Some(v) => v,
            None => return Ok(None),
        }
    } else if let Some(n) = length {
        if n > max_body {
            return Err(HttpError::BodyTooLarge);
        }
        if rest.len() < n {
            return Ok(None);
        }
        (rest[..n].to_vec(), n)
    } else {
        // Delimited by the server closing the connection: not something a peer we pool sends.
        return Err(HttpError::BadRequest("response without a length"));
    };
    out.body = body;
    Ok(Some(ParsedResponse {
        response: out,
        consumed: head_len + used,
        keep_alive,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{HttpLimits, ParseOutcome, parse_request};

    #[test]
    fn a_written_request_parses_back_the_same() {
        let raw = b"PUT /p?q=1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\nX-A: 1\r\nContent-Length: 3\r\n\r\nabc";
        let Ok(ParseOutcome::Complete(req, _)) = parse_request(raw, &HttpLimits::default()) else {
            panic!()
        };
        let mut out = Vec::new();
        write_request(&mut out, &req);
        let Ok(ParseOutcome::Complete(again, used)) = parse_request(&out, &HttpLimits::default())
        else {
            panic!()
        };
        assert_eq!(used, out.len());
        assert_eq!(
            (again.method.as_str(), again.target.as_str()),
            ("PUT", "/p?q=1")
        );
        assert_eq!(again.body, b"abc");
        assert!(
            again.keep_alive,
            "the hop's own Connection header is not forwarded"
        );
        assert_eq!(again.header("x-a"), Some(&b"1"[..]));
    }

    #[test]
    fn responses_complete_only_when_whole() {
        let cl = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-B: 2\r\n\r\nhelloHTTP/1.1";
        for cut in 0..cl.len() - 8 {
            assert!(
                parse_response(&cl[..cut], false, 1 << 20)
                    .unwrap()
                    .is_none(),
                "{cut}"
            );
        }
        let p = parse_response(cl, false, 1 << 20).unwrap().unwrap();
        assert_eq!(
            (p.response.status, p.response.body.as_slice()),
            (200, &b"hello"[..])
        );
        assert_eq!(p.consumed, cl.len() - 8);
        assert_eq!(p.response.headers, [("x-b".to_owned(), "2".to_owned())]);
        assert!(p.keep_alive);

        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        for cut in 0..chunked.len() {
            assert!(
                parse_response(&chunked[..cut], false, 1 << 20)
                    .unwrap()
                    .is_none()
            );
        }
        let p = parse_response(chunked, false, 1 << 20).unwrap().unwrap();
        assert_eq!(p.response.body, b"hello");
        assert!(!p.keep_alive);

        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(
            parse_response(head, true, 1 << 20)
                .unwrap()
                .unwrap()
                .consumed,
            head.len()
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", false, 4).is_err());
        assert!(parse_response(b"garbage\r\n\r\n", false, 4).is_err());
    }
}
