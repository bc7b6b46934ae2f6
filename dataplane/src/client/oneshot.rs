//! One request on a connection of its own, closed after it: for the occasional call off the
//! request path (a probe, the placement engine asking a peer, edgectl asking edged), where a
//! pool would only hold connections open for nothing. hyper speaks the HTTP.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Full, Limited};

/// What came back.
#[derive(Debug)]
pub struct Answer {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    /// From the start of the connect to the response's head.
    pub to_head: Duration,
}

/// A request to send once: method, origin-form target, headers, body.
pub struct Once<'a> {
    pub method: http::Method,
    pub target: &'a str,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub body: Bytes,
    /// Response bodies past this are an error (None: the body is not read).
    pub read_body: Option<usize>,
}

impl<'a> Once<'a> {
    /// A GET of `target` with `host`, reading a body of up to `limit` bytes.
    pub fn get(target: &'a str, host: &str, limit: usize) -> anyhow::Result<Self> {
        Ok(Self {
            method: http::Method::GET,
            target,
            headers: vec![(http::header::HOST, http::HeaderValue::from_str(host)?)],
            body: Bytes::new(),
            read_body: Some(limit),
        })
    }
}

/// Sends `req` to `addr` on a new connection, all within `timeout`.
pub async fn send(addr: SocketAddr, req: Once<'_>, timeout: Duration) -> anyhow::Result<Answer> {
    send_over(addr, None, req, timeout).await
}

/// As `send`, over TLS when `tls` says so.
pub async fn send_over(
    addr: SocketAddr,
    tls: Option<&super::ClientTls>,
    req: Once<'_>,
    timeout: Duration,
) -> anyhow::Result<Answer> {
    match tokio::time::timeout(timeout, exchange(addr, tls, req)).await {
        Ok(answer) => answer,
        Err(_) => Err(anyhow::Error::new(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer from {addr} within {timeout:?}"),
        ))),
    }
}

async fn exchange(
    addr: SocketAddr,
    tls: Option<&super::ClientTls>,
    req: Once<'_>,
) -> anyhow::Result<Answer> {
    let started = Instant::now();
    let mut sender =
        super::open::<http_body_util::Either<Full<Bytes>, Empty<Bytes>>>(addr, tls).await?;
    let mut request = http::Request::new(if req.body.is_empty() {
        http_body_util::Either::Right(Empty::new())
    } else {
        http_body_util::Either::Left(Full::new(req.body))
    });
    *request.method_mut() = req.method;
    *request.uri_mut() = req.target.parse()?;
    let headers = request.headers_mut();
    for (name, value) in req.headers {
        headers.append(name, value);
    }
    headers.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    let resp = sender.send_request(request).await?;
    let to_head = started.elapsed();
    let (parts, body) = resp.into_parts();
    let body = match req.read_body {
        Some(limit) => Limited::new(body, limit)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the response body: {e}"))?
            .to_bytes(),
        None => Bytes::new(),
    };
    // Dropping the sender ends the connection's task (the request said `connection: close`).
    drop(sender);
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body,
        to_head,
    })
}

/// `send` from a thread outside any tokio runtime (the placement engine's, edgectl).
pub fn send_blocking(addr: SocketAddr, req: Once<'_>, timeout: Duration) -> anyhow::Result<Answer> {
    block_on(send(addr, req, timeout))?
}

/// `send_over` from a thread outside any tokio runtime.
pub fn send_blocking_over(
    addr: SocketAddr,
    tls: Option<&super::ClientTls>,
    req: Once<'_>,
    timeout: Duration,
) -> anyhow::Result<Answer> {
    block_on(send_over(addr, tls, req, timeout))?
}

/// Runs `fut` to completion from a thread outside any tokio runtime, on a runtime of the
/// calling thread's own, made on its first call (the placement engine calls every tick).
pub fn block_on<F: std::future::Future>(fut: F) -> anyhow::Result<F::Output> {
    thread_local! {
        static RUNTIME: std::io::Result<tokio::runtime::Runtime> =
            tokio::runtime::Builder::new_current_thread().enable_all().build();
    }
    RUNTIME.with(|rt| match rt {
        Ok(rt) => Ok(rt.block_on(fut)),
        Err(e) => Err(anyhow::anyhow!("no runtime for a blocking call: {e}")),
    })
}
