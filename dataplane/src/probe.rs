//! How far a destination is from here: the placement engine probes from this datacenter, and
//! peers ask this datacenter's workers to probe from theirs (`router::PROBE_PATH`), with the
//! same code, so the figures compare.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

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
    let started = std::time::Instant::now();
    let run = async {
        let mut stream = TcpStream::connect(dest).await?;
        let ProbeKind::Http(host) = kind else {
            return Ok(());
        };
        let _ = stream.set_nodelay(true);
        stream
            .write_all(
                format!(
                    "HEAD / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: edgeplane-probe\r\nConnection: close\r\n\r\n"
                )
                .as_bytes(),
            )
            .await?;
        let mut head = Vec::with_capacity(512);
        let mut chunk = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed before the response's headers",
                ));
            }
            head.extend_from_slice(&chunk[..n]);
            if head.len() > 64 * 1024 {
                return Err(std::io::Error::other("response headers over 64 KiB"));
            }
        }
        if !head.starts_with(b"HTTP/1.") {
            return Err(std::io::Error::other("not an HTTP/1 response"));
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok(())) => Ok(started.elapsed()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer from {dest} within {timeout:?}"),
        )),
    }
}

/// Runs `measure` from a thread outside any tokio runtime (the placement engine's).
pub fn measure_blocking(
    dest: SocketAddr,
    kind: &ProbeKind,
    timeout: Duration,
) -> std::io::Result<Duration> {
    // One runtime per calling thread, made on its first probe: the engine probes every tick.
    thread_local! {
        static RUNTIME: std::io::Result<tokio::runtime::Runtime> =
            tokio::runtime::Builder::new_current_thread().enable_all().build();
    }
    RUNTIME.with(|rt| match rt {
        Ok(rt) => rt.block_on(measure(dest, kind, timeout)),
        Err(e) => Err(std::io::Error::new(e.kind(), format!("probe runtime: {e}"))),
    })
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
            assert!(
                String::from_utf8_lossy(&buf[..n])
                    .starts_with("HEAD / HTTP/1.1\r\nHost: api.test\r\n")
            );
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
