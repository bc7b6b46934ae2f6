//! How far a destination is from here: the placement engine probes from this datacenter, and
//! peers ask this datacenter's workers to probe from theirs (`router::PROBE_PATH`), with the
//! same code, so the figures compare.

use std::{net::SocketAddr, time::Duration};

use crate::client::oneshot::{self, Once};

/// What a probe measures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    /// TCP connect time: one RTT (`host` hints, peers).
    Connect,
    /// A `HEAD /` on a fresh connection, until the response's headers arrive: what an HTTP
    /// subrequest to this host costs (`hostname` hints). The string is the Host header.
    Http(String),
}

/// Measures `dest` once, within `timeout`.
pub async fn measure(
    dest: SocketAddr,
    kind: &ProbeKind,
    timeout: Duration,
) -> std::io::Result<Duration> {
    let host = match kind {
        ProbeKind::Connect => {
            let started = std::time::Instant::now();
            return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(dest)).await {
                Ok(Ok(_)) => Ok(started.elapsed()),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(timed_out(dest, timeout)),
            };
        }
        ProbeKind::Http(host) => host,
    };
    let head = Once {
        method: http::Method::HEAD,
        target: "/",
        headers: vec![
            (
                http::header::HOST,
                http::HeaderValue::from_str(host).map_err(std::io::Error::other)?,
            ),
            (
                http::header::USER_AGENT,
                http::HeaderValue::from_static("edgeplane-probe"),
            ),
        ],
        body: bytes::Bytes::new(),
        read_body: None,
    };
    match oneshot::send(dest, head, timeout).await {
        Ok(answer) => Ok(answer.to_head),
        Err(e) => Err(match e.downcast::<std::io::Error>() {
            Ok(io) => io,
            Err(other) => std::io::Error::other(format!("{other:#}")),
        }),
    }
}

fn timed_out(dest: SocketAddr, timeout: Duration) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no answer from {dest} within {timeout:?}"),
    )
}

/// Runs `measure` from a thread outside any tokio runtime (the placement engine's).
pub fn measure_blocking(
    dest: SocketAddr,
    kind: &ProbeKind,
    timeout: Duration,
) -> std::io::Result<Duration> {
    oneshot::block_on(measure(dest, kind, timeout))
        .unwrap_or_else(|e| Err(std::io::Error::other(format!("{e:#}"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_probe_waits_for_the_headers_and_connect_probe_does_not() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            use std::io::{Read as _, Write as _};
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).unwrap();
            let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
            assert!(head.starts_with("head / http/1.1\r\n"), "{head}");
            assert!(head.contains("\r\nhost: api.test\r\n"), "{head}");
            std::thread::sleep(Duration::from_millis(50));
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .unwrap();
        });
        let http = measure_blocking(
            addr,
            &ProbeKind::Http("api.test".into()),
            Duration::from_secs(5),
        )
        .unwrap();
        server.join().unwrap();
        assert!(http >= Duration::from_millis(50), "{http:?}");

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        measure_blocking(addr, &ProbeKind::Connect, Duration::from_secs(5)).unwrap();
        drop(listener);
        assert!(measure_blocking(addr, &ProbeKind::Connect, Duration::from_secs(5)).is_err());
    }
}
