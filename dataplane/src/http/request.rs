//! A request as the worker sees it, and its head parsed from bytes: request line, headers and
//! how its body is framed, checked against the limits.

use super::{HttpError, HttpLimits};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The request target as sent (origin form: path and query).
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Names lower-cased, values as sent.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    /// Trailer fields after a chunked body (names lower-cased).
    pub trailers: Vec<(String, Vec<u8>)>,
    /// The client takes trailers after a chunked response (`TE: trailers`).
    pub takes_trailers: bool,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The Host header without a port (and without brackets for an IPv6 literal).
    pub fn host(&self) -> Option<&str> {
        let host = std::str::from_utf8(self.header("host")?).ok()?;
        match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next(),
            None => host.split(':').next(),
        }
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("/")
    }
}

pub(super) enum Framing {
    None,
    Length(usize),
    Chunked,
}

pub(super) struct Head {
    pub(super) request: Request,
    pub(super) framing: Framing,
    pub(super) expects_continue: bool,
}

/// The request line and headers, checked; `None` until they are whole. Each rule lives in a
/// function of its own: the head's size and syntax (`parse_syntax`), the request line
/// (`check_request_line`), each header field that means something to the framing or the
/// connection (`HeadFields::take`), then the body's framing (`HeadFields::framing`).
pub(super) fn parse_head(
    buf: &[u8],
    limits: &HttpLimits,
) -> Result<Option<(Head, usize)>, HttpError> {
    // The usual header limit fits on the stack: no allocation per parse attempt.
    const ON_STACK: usize = 64;
    let mut on_stack = [httparse::EMPTY_HEADER; ON_STACK];
    let mut on_heap;
    let headers: &mut [httparse::Header] = if limits.max_headers <= ON_STACK {
        &mut on_stack[..limits.max_headers]
    } else {
        on_heap = vec![httparse::EMPTY_HEADER; limits.max_headers];
        &mut on_heap
    };
    let mut req = httparse::Request::new(headers);
    let Some(head_len) = parse_syntax(&mut req, buf, limits)? else {
        return Ok(None);
    };
    let method = req.method.unwrap_or_default();
    let target = req.path.unwrap_or("/");
    check_request_line(method, target)?;
    let minor_version = req.version.unwrap_or(1);
    let mut fields = HeadFields::new(minor_version);
    let mut owned = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        fields.take(&name, h.value)?;
        owned.push((name, h.value.to_vec()));
    }
    if minor_version == 1 && !fields.has_host {
        return Err(HttpError::BadRequest("HTTP/1.1 request without host"));
    }
    let framing = fields.framing(limits)?;
    // A body the client promised is what it waits to be asked for; none here.
    let expects_continue = fields.expects_continue && !matches!(framing, Framing::None);
    let body = match framing {
        Framing::Length(n) => Vec::with_capacity(n.min(64 << 10)),
        _ => Vec::new(),
    };
    Ok(Some((
        Head {
            request: Request {
                method: method.to_owned(),
                target: target.to_owned(),
                minor_version,
                headers: owned,
                body,
                trailers: Vec::new(),
                takes_trailers: fields.takes_trailers,
                keep_alive: !fields.connection_close,
            },
            framing,
            expects_continue,
        },
        head_len,
    )))
}

/// The head's syntax and size: its length once whole, None while partial (and within
/// `max_header_bytes`).
fn parse_syntax<'b>(
    req: &mut httparse::Request<'_, 'b>,
    buf: &'b [u8],
    limits: &HttpLimits,
) -> Result<Option<usize>, HttpError> {
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > limits.max_header_bytes {
                return Err(HttpError::HeadersTooLarge);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadersTooLarge),
        Err(httparse::Error::Version) => return Err(version_error(buf)),
        Err(_) => return Err(HttpError::BadRequest("malformed request head")),
    };
    if head_len > limits.max_header_bytes {
        return Err(HttpError::HeadersTooLarge);
    }
    Ok(Some(head_len))
}

/// CONNECT is not served (no tunnels); the target must be in origin form (or `*`).
fn check_request_line(method: &str, target: &str) -> Result<(), HttpError> {
    if method == "CONNECT" {
        return Err(HttpError::NotImplemented("CONNECT"));
    }
    if !target.starts_with('/') && target != "*" {
        return Err(HttpError::BadRequest(
            "request target must be in origin form",
        ));
    }
    Ok(())
}

/// What the header fields say about the body's framing and the connection, gathered field by
/// field.
struct HeadFields {
    minor_version: u8,
    chunked: bool,
    content_length: Option<usize>,
    has_host: bool,
    connection_close: bool,
    expects_continue: bool,
    takes_trailers: bool,
}

impl HeadFields {
    fn new(minor_version: u8) -> Self {
        Self {
            minor_version,
            chunked: false,
            content_length: None,
            has_host: false,
            connection_close: minor_version == 0,
            expects_continue: false,
            takes_trailers: false,
        }
    }

    /// One field (`name` lower-cased).
    fn take(&mut self, name: &str, value: &[u8]) -> Result<(), HttpError> {
        match name {
            "content-length" => {
                let n = content_length(value)?;
                if self.content_length.is_some_and(|c| c != n) {
                    return Err(HttpError::BadRequest("conflicting content-length headers"));
                }
                self.content_length = Some(n);
            }
            "transfer-encoding" => {
                if self.chunked {
                    // Two fields may be read as one list by one hop and not by the next.
                    return Err(HttpError::BadRequest("repeated transfer-encoding"));
                }
                check_transfer_encoding(value)?;
                self.chunked = true;
            }
            "host" => {
                if self.has_host {
                    return Err(HttpError::BadRequest("more than one host header"));
                }
                self.has_host = true;
            }
            "connection" => self.connection(value),
            "te" => {
                self.takes_trailers |= value
                    .split(|b| *b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"));
            }
            "expect" => {
                if !value.eq_ignore_ascii_case(b"100-continue") {
                    return Err(HttpError::ExpectationFailed);
                }
                // RFC 9110, 10.1.1: an HTTP/1.0 client does not know 100 Continue; it sends its
                // body without waiting.
                self.expects_continue = self.minor_version >= 1;
            }
            _ => {}
        }
        Ok(())
    }

    /// `close` ends the connection after the response; an HTTP/1.0 client keeps it with
    /// `keep-alive`.
    fn connection(&mut self, value: &[u8]) {
        let value = String::from_utf8_lossy(value).to_ascii_lowercase();
        for token in value.split(',').map(str::trim) {
            match token {
                "close" => self.connection_close = true,
                "keep-alive" if self.minor_version == 0 => self.connection_close = false,
                _ => {}
            }
        }
    }

    /// The body's framing: chunked, a length within `max_body_bytes`, or none.
    fn framing(&self, limits: &HttpLimits) -> Result<Framing, HttpError> {
        match (self.chunked, self.content_length) {
            // Both framings at once is how requests are smuggled past proxies.
            (true, Some(_)) => Err(HttpError::BadRequest("both content-length and chunked")),
            (true, None) => Ok(Framing::Chunked),
            (false, Some(n)) if n > limits.max_body_bytes => Err(HttpError::BodyTooLarge),
            (false, Some(0) | None) => Ok(Framing::None),
            (false, Some(n)) => Ok(Framing::Length(n)),
        }
    }
}

/// A content-length: ASCII digits only (no sign, no spaces, no list), fitting a usize.
fn content_length(value: &[u8]) -> Result<usize, HttpError> {
    std::str::from_utf8(value)
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<usize>().ok())
        .ok_or(HttpError::BadRequest("invalid content-length"))
}

/// Only `chunked`, once and last: any other coding is refused (the worker decodes none).
fn check_transfer_encoding(value: &[u8]) -> Result<(), HttpError> {
    let value = String::from_utf8_lossy(value).to_ascii_lowercase();
    let last = value.rsplit(',').next().unwrap_or("").trim();
    if last != "chunked" || value.split(',').filter(|c| c.trim() == "chunked").count() > 1 {
        return Err(HttpError::NotImplemented(
            "transfer-encoding other than chunked",
        ));
    }
    if value.split(',').any(|c| c.trim() != "chunked") {
        return Err(HttpError::NotImplemented(
            "transfer codings other than chunked",
        ));
    }
    Ok(())
}

/// httparse reports any version it does not parse; tell an HTTP/2+ or 0.9 request (505) from garbage (400).
fn version_error(buf: &[u8]) -> HttpError {
    let line_end = buf
        .iter()
        .position(|b| *b == b'\r' || *b == b'\n')
        .unwrap_or(buf.len());
    let line = &buf[..line_end];
    match line.rsplit(|b| *b == b' ').next() {
        Some(v) if v.len() > 5 && v.starts_with(b"HTTP/") && v[5].is_ascii_digit() => {
            HttpError::VersionNotSupported
        }
        _ => HttpError::BadRequest("malformed request line"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{Decoded, ParseOutcome, RequestDecoder, parse_request};

    fn parse(s: &[u8]) -> Result<ParseOutcome, HttpError> {
        parse_request(s, &HttpLimits::default())
    }

    fn complete(s: &[u8]) -> (Request, usize) {
        match parse(s) {
            Ok(ParseOutcome::Complete(r, n)) => (r, n),
            other => panic!("expected a complete request, got {other:?}"),
        }
    }

    #[test]
    fn simple_get_and_pipelined_requests() {
        let two = b"GET /a?x=1 HTTP/1.1\r\nHost: h:8080\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
        let (a, n) = complete(two);
        assert_eq!(
            (a.method.as_str(), a.target.as_str(), a.path(), a.host()),
            ("GET", "/a?x=1", "/a", Some("h"))
        );
        assert!(a.keep_alive);
        let (b, m) = complete(&two[n..]);
        assert_eq!(b.target, "/b");
        assert!(!b.keep_alive);
        assert_eq!(n + m, two.len());
    }

    #[test]
    fn http10_defaults_to_close() {
        assert!(!complete(b"GET / HTTP/1.0\r\n\r\n").0.keep_alive);
        assert!(
            complete(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .0
                .keep_alive
        );
    }

    #[test]
    fn content_length_body_arrives_in_pieces() {
        let full = b"POST /e HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello";
        for cut in 0..full.len() {
            assert!(
                matches!(parse(&full[..cut]), Ok(ParseOutcome::Partial { .. })),
                "cut at {cut}"
            );
        }
        let (r, n) = complete(full);
        assert_eq!((r.body.as_slice(), n), (&b"hello"[..], full.len()));
    }

    #[test]
    fn chunked_body_with_extension_and_trailer() {
        let full = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: y\r\n\r\nGET";
        let (r, n) = complete(full);
        assert_eq!(r.body, b"hello world");
        assert_eq!(&full[n..], b"GET");
        for cut in 60..n {
            assert!(
                matches!(parse(&full[..cut]), Ok(ParseOutcome::Partial { .. })),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn errors_map_to_their_statuses() {
        let cases: &[(&[u8], u16)] = &[
            (b"GET / HTTP/1.1\r\n\r\n", 400),                                         // no host
            (b"G@T / HTTP/1.1\r\nHost: h\r\n\r\n", 400),                              // bad method token
            (b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 5x\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
            (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
            (b"CONNECT h:443 HTTP/1.1\r\nHost: h\r\n\r\n", 501),
            (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505),
            (b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 2000000\r\n\r\n", 413),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            (b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n", 400),
            (b"PUT / HTTP/1.1\r\nHost: h\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\n", 417),
            (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffff0\r\n", 413),
            (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n", 413),
            (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400),
            (b"GET / HTTP/\r\nHost: h\r\n\r\n", 400),
        ];
        for (req, status) in cases {
            let got = parse(req).map(|_| 0).unwrap_or_else(|e| e.status());
            assert_eq!(got, *status, "{}", String::from_utf8_lossy(req));
        }
    }

    #[test]
    fn header_limits() {
        let limits = HttpLimits {
            max_headers: 4,
            max_header_bytes: 256,
            ..Default::default()
        };
        let many = b"GET / HTTP/1.1\r\nHost: h\r\na: 1\r\nb: 2\r\nc: 3\r\nd: 4\r\n\r\n";
        assert_eq!(
            parse_request(many, &limits).unwrap_err(),
            HttpError::HeadersTooLarge
        );
        let mut big = b"GET / HTTP/1.1\r\nHost: h\r\nx: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 300));
        // Not even complete yet, but already over the limit.
        assert_eq!(
            parse_request(&big, &limits).unwrap_err(),
            HttpError::HeadersTooLarge
        );
    }

    #[test]
    fn chunked_body_over_the_limit() {
        let limits = HttpLimits {
            max_body_bytes: 8,
            ..Default::default()
        };
        let req = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n";
        assert_eq!(
            parse_request(req, &limits).unwrap_err(),
            HttpError::BodyTooLarge
        );
    }

    #[test]
    fn expect_continue_is_reported_while_the_body_is_missing() {
        let head =
            b"PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n";
        assert_eq!(
            parse(head),
            Ok(ParseOutcome::Partial {
                expects_continue: true
            })
        );
    }

    #[test]
    fn expect_continue_only_for_http11_and_only_while_a_body_is_owed() {
        let http10 = b"PUT / HTTP/1.0\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n";
        assert_eq!(
            parse(http10),
            Ok(ParseOutcome::Partial {
                expects_continue: false
            })
        );
        let no_body = b"GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n";
        assert!(matches!(parse(no_body), Ok(ParseOutcome::Complete(..))));
        // Once the body has started, the client is no longer waiting.
        let mut decoder = RequestDecoder::default();
        let head =
            b"PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\na";
        assert!(matches!(
            decoder.decode(head, &HttpLimits::default()),
            Ok(Decoded::Partial {
                used,
                expects_continue: false
            }) if used == head.len()
        ));
    }

    #[test]
    fn a_body_trickling_in_is_taken_once_whatever_the_cuts() {
        let full = b"POST /u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nt: 1\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n";
        let first_len = full.len() - "GET / HTTP/1.1\r\nHost: h\r\n\r\n".len();
        for step in 1..8 {
            let mut decoder = RequestDecoder::default();
            let mut input = Vec::new();
            let mut offered = 0;
            let mut taken = 0;
            let req = loop {
                let next = (offered + step).min(full.len());
                input.extend_from_slice(&full[offered..next]);
                offered = next;
                match decoder.decode(&input, &HttpLimits::default()).unwrap() {
                    Decoded::Complete(req, used) => {
                        taken += used;
                        break req;
                    }
                    Decoded::Partial { used, .. } => {
                        taken += used;
                        input.drain(..used);
                    }
                    other => panic!("a decoder that does not stream gave {other:?}"),
                }
            };
            assert_eq!((req.body.as_slice(), taken), (&b"abcde"[..], first_len));
            assert!(decoder.is_idle());
        }
    }

    #[test]
    fn hosts_with_multibyte_characters_do_not_panic() {
        for host in ["é", "xé", "aé.fn.internal", "\u{1F600}:80", "[é]", "[::1"] {
            let raw = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
            let (req, _) = complete(raw.as_bytes());
            let _ = req.host();
            let _ = req.path();
        }
    }

    #[test]
    fn host_forms() {
        let host = |h: &str| {
            let req = format!("GET / HTTP/1.1\r\nHost: {h}\r\n\r\n");
            complete(req.as_bytes()).0.host().map(str::to_owned)
        };
        assert_eq!(host("example.com").as_deref(), Some("example.com"));
        assert_eq!(host("example.com:8080").as_deref(), Some("example.com"));
        assert_eq!(host("[::1]:443").as_deref(), Some("::1"));
        assert_eq!(host("[::1]").as_deref(), Some("::1"));
    }
}
