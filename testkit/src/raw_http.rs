//! What a client reads, parsed independently of the code under test: plain blocking sockets and
//! a response parser of its own (chunks, trailers, lengths, close-delimited bodies).

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Instant,
};

use anyhow::Context as _;

/// A response as it arrived: head, and the body's pieces with when each was read.
#[derive(Debug, Default)]
pub struct Received {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Decoded body pieces (chunks, or reads of a delimited body), each with its arrival time.
    pub pieces: Vec<(Instant, Vec<u8>)>,
    pub trailers: Vec<(String, String)>,
    /// Whether the body reached its end as framed (the last chunk, the length, or EOF for a
    /// close-delimited body); false when the connection ended first.
    pub complete: bool,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn body(&self) -> Vec<u8> {
        self.pieces.iter().flat_map(|(_, p)| p.clone()).collect()
    }
}

/// Reads bytes from the socket into `buf` until `pred` holds; false on EOF first.
pub fn fill_until(s: &mut TcpStream, buf: &mut Vec<u8>, pred: impl Fn(&[u8]) -> bool) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    while !pred(buf) {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    true
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads one response from `s` (`head_only` for a HEAD request), chunk by chunk; status 0 when
/// the connection closed before a response head.
pub fn read_response(s: &mut TcpStream, head_only: bool) -> Received {
    let mut buf = Vec::new();
    if !fill_until(s, &mut buf, |b| find(b, b"\r\n\r\n").is_some()) {
        // Closed with no response at all: status 0, nothing complete.
        return Received::default();
    }
    let end = find(&buf, b"\r\n\r\n").unwrap();
    let head = String::from_utf8(buf[..end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    buf.drain(..end + 4);
    let mut r = Received {
        status,
        headers,
        ..Default::default()
    };
    if head_only || status == 204 || status == 304 {
        r.complete = true;
        return r;
    }
    if r.header("transfer-encoding") == Some("chunked") {
        read_chunked(s, &mut buf, &mut r);
        return r;
    }
    if let Some(length) = r.header("content-length") {
        let length: usize = length.parse().unwrap();
        r.complete = fill_until(s, &mut buf, |b| b.len() >= length);
        r.pieces
            .push((Instant::now(), buf[..length.min(buf.len())].to_vec()));
        return r;
    }
    // Delimited by the connection's end.
    if !buf.is_empty() {
        r.pieces.push((Instant::now(), std::mem::take(&mut buf)));
    }
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => {
                r.complete = true;
                return r;
            }
            Ok(n) => r.pieces.push((Instant::now(), chunk[..n].to_vec())),
            Err(e) => panic!("reading a close-delimited body: {e}"),
        }
    }
}

/// A chunked body into `r`, its chunks and trailers; `r.complete` once the last chunk and the
/// empty line after the trailers arrived.
fn read_chunked(s: &mut TcpStream, buf: &mut Vec<u8>, r: &mut Received) {
    loop {
        if !fill_until(s, buf, |b| find(b, b"\r\n").is_some()) {
            return;
        }
        let line_end = find(buf, b"\r\n").unwrap();
        let size_line = String::from_utf8(buf[..line_end].to_vec()).unwrap();
        let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16)
            .expect("chunk size");
        buf.drain(..line_end + 2);
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                if !fill_until(s, buf, |b| find(b, b"\r\n").is_some()) {
                    return;
                }
                let line_end = find(buf, b"\r\n").unwrap();
                let line = String::from_utf8(buf.drain(..line_end + 2).collect()).unwrap();
                let line = line.trim_end();
                if line.is_empty() {
                    r.complete = true;
                    return;
                }
                let (k, v) = line.split_once(':').unwrap();
                r.trailers
                    .push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        if !fill_until(s, buf, |b| b.len() >= size + 2) {
            return;
        }
        r.pieces.push((Instant::now(), buf[..size].to_vec()));
        assert_eq!(&buf[size..size + 2], b"\r\n", "chunk data must end in CRLF");
        buf.drain(..size + 2);
    }
}

/// A response: status, headers (names lower-cased), body.
pub type Answer = (u16, Vec<(String, String)>, Vec<u8>);

/// Plain HTTP/1.1 from the client side, written independently of the code under test: sends
/// a GET on `s` and reads the whole (Content-Length) response: status, headers (names
/// lower-cased), body.
pub fn get(
    s: &mut (impl Read + Write),
    host: &str,
    path: &str,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    request(s, "GET", host, path, b"")
}

/// As `get`, with any method and a Content-Length body.
pub fn request(
    s: &mut (impl Read + Write),
    method: &str,
    host: &str,
    path: &str,
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    try_request(s, method, host, path, body).unwrap()
}

/// As `request`, saying what went wrong instead of panicking (for loops that count failures).
pub fn try_request(
    s: &mut (impl Read + Write),
    method: &str,
    host: &str,
    path: &str,
    body: &[u8],
) -> anyhow::Result<Answer> {
    let mut wire = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    wire.extend_from_slice(body);
    s.write_all(&wire)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let mut lines = head.split("\r\n");
            let status = lines
                .next()
                .and_then(|l| l.split(' ').nth(1))
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("no status line in {head:?}"))?;
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(": "))
                .map(|(a, b)| (a.to_ascii_lowercase(), b.to_owned()))
                .collect();
            let len: usize = headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .and_then(|(_, v)| v.parse().ok())
                .context("no content-length")?;
            let whole = (end + 4)
                .checked_add(len)
                .with_context(|| format!("content-length {len} past any response"))?;
            while buf.len() < whole {
                let n = s.read(&mut chunk)?;
                anyhow::ensure!(n > 0, "connection closed mid-response");
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok((status, headers, buf[end + 4..whole].to_vec()));
        }
        let n = s.read(&mut chunk)?;
        anyhow::ensure!(n > 0, "connection closed before a response");
        buf.extend_from_slice(&chunk[..n]);
    }
}

pub fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}
