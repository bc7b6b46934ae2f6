//! The HTTP/1.1 client a worker sends with (hyper's): guests' subrequests and handoffs to peer
//! datacenters, over keep-alive connections from one pool per worker (`pool`). A response's
//! connection goes back to the pool when its body has been read to the end.
//!
//! Each exchange is timed apart from the connection it needed: `Timing::connect` is the TCP
//! connect of a new connection (None on a pooled one), `Timing::exchange` the time from sending
//! the request to the response's head. The placement engine reads them apart (a pooled
//! subrequest costs one round trip, a new connection one more).

pub mod oneshot;
mod pool;
pub mod retry;

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt as _, Full, combinators::UnsyncBoxBody};
use hyper::{body::Incoming, client::conn::http1::SendRequest};

pub use pool::{ConnPool, PoolConfig, PoolKey};
/// tokio's sockets as hyper reads and writes them.
pub use wasmtime_wasi_http::io::TokioIo;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type every pooled connection sends.
pub type OutBody = UnsyncBoxBody<Bytes, BoxError>;

/// A request's body as the client gets it: held whole (it can be sent again), or a stream.
pub enum Outgoing {
    Whole(Bytes),
    Stream(OutBody),
}

impl Outgoing {
    fn into_body(self) -> OutBody {
        match self {
            Outgoing::Whole(bytes) => Full::new(bytes)
                .map_err(|never: std::convert::Infallible| match never {})
                .boxed_unsync(),
            Outgoing::Stream(body) => body,
        }
    }
}

/// How long an exchange took, and the connection it needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// A new connection's TCP connect; None when a pooled one served.
    pub connect: Option<Duration>,
    /// From sending the request to the response's head.
    pub exchange: Duration,
}

/// TLS toward the other side of a connection: the client configuration, and the name to ask
/// for (SNI) and to find in its certificate.
#[derive(Clone, Debug)]
pub struct ClientTls {
    pub config: Arc<rustls::ClientConfig>,
    pub name: rustls::pki_types::ServerName<'static>,
}

/// A new connection to `addr` (with TLS when `tls` says so), its HTTP/1.1 handshake done and
/// its I/O running as a task of its own: it outlives this request in the pool.
async fn open<B>(addr: SocketAddr, tls: Option<&ClientTls>) -> Result<SendRequest<B>, ClientError>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|error| ClientError::Connect { addr, error })?;
    let _ = stream.set_nodelay(true);
    match tls {
        None => handshake(stream, addr).await,
        Some(tls) => {
            let stream = tokio_rustls::TlsConnector::from(tls.config.clone())
                .connect(tls.name.clone(), stream)
                .await
                .map_err(|error| ClientError::Tls { addr, error })?;
            handshake(stream, addr).await
        }
    }
}

async fn handshake<T, B>(io: T, addr: SocketAddr) -> Result<SendRequest<B>, ClientError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|error| ClientError::Exchange {
            addr,
            error,
            maybe_written: false,
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%addr, error = %e, "connection ended");
        }
    });
    Ok(sender)
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("TLS with {addr}: {error}")]
    Tls {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("connecting to {addr}: {error}")]
    Connect {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("no connection to {addr} within {timeout:?}")]
    ConnectTimeout { addr: SocketAddr, timeout: Duration },
    #[error("{addr}: {error}")]
    Exchange {
        addr: SocketAddr,
        error: hyper::Error,
        /// Whether any of the request may have reached the other side.
        maybe_written: bool,
    },
}

impl ClientError {
    /// Whether the request may have reached the other side (and been acted on there).
    pub fn maybe_written(&self) -> bool {
        matches!(
            self,
            ClientError::Exchange {
                maybe_written: true,
                ..
            }
        )
    }
}

/// A response whose body gives its connection back to the pool at its end.
pub struct Sent {
    pub response: http::Response<PooledBody>,
    pub timing: Timing,
}

/// What a request is, apart from its body: method, origin-form target, headers (Host included).
pub struct Head {
    pub method: http::Method,
    pub target: http::uri::PathAndQuery,
    pub headers: http::HeaderMap,
}

impl Head {
    fn request(&self, body: OutBody) -> http::Request<OutBody> {
        let mut req = http::Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = http::Uri::from(self.target.clone());
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// Sends a request to `key.addr` on a pooled connection, or a new one (opened within
/// `connect_timeout`). A pooled connection that fails before any of the request was written is
/// left for the next; one that fails after is retried on a new connection only where
/// `retry::may_retry` allows.
pub async fn send(
    pool: &Arc<ConnPool>,
    key: PoolKey,
    head: Head,
    body: Outgoing,
    connect_timeout: Duration,
    tls: Option<&ClientTls>,
) -> Result<Sent, ClientError> {
    let addr = key.addr;
    let replay = match &body {
        Outgoing::Whole(bytes) => Some(bytes.clone()),
        Outgoing::Stream(_) => None,
    };
    let mut req = head.request(body.into_body());
    while let Some(mut sender) = pool.take(&key) {
        if sender.ready().await.is_err() {
            continue;
        }
        let started = Instant::now();
        match sender.try_send_request(req).await {
            Ok(resp) => return Ok(sent(pool, key, sender, resp, None, started)),
            Err(mut e) => {
                let back = e.take_message();
                let maybe_written = back.is_none();
                if !retry::may_retry(head.method.as_str(), maybe_written, replay.is_some()) {
                    return Err(ClientError::Exchange {
                        addr,
                        error: e.into_error(),
                        maybe_written,
                    });
                }
                req = match (back, &replay) {
                    (Some(req), _) => req,
                    (None, Some(bytes)) => head.request(Outgoing::Whole(bytes.clone()).into_body()),
                    (None, None) => unreachable!("may_retry refuses a written stream"),
                };
            }
        }
    }
    let connect_started = Instant::now();
    let mut sender = match tokio::time::timeout(connect_timeout, open(addr, tls)).await {
        Ok(opened) => opened?,
        Err(_) => {
            return Err(ClientError::ConnectTimeout {
                addr,
                timeout: connect_timeout,
            });
        }
    };
    let connect = connect_started.elapsed();
    let started = Instant::now();
    match sender.try_send_request(req).await {
        Ok(resp) => Ok(sent(pool, key, sender, resp, Some(connect), started)),
        Err(mut e) => {
            let maybe_written = e.take_message().is_none();
            Err(ClientError::Exchange {
                addr,
                error: e.into_error(),
                maybe_written,
            })
        }
    }
}

fn sent(
    pool: &Arc<ConnPool>,
    key: PoolKey,
    sender: SendRequest<OutBody>,
    resp: http::Response<Incoming>,
    connect: Option<Duration>,
    started: Instant,
) -> Sent {
    let timing = Timing {
        connect,
        exchange: started.elapsed(),
    };
    let reusable = resp.version() == http::Version::HTTP_11
        && !resp
            .headers()
            .get_all(http::header::CONNECTION)
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    let (parts, inner) = resp.into_parts();
    let mut body = PooledBody {
        inner,
        back: reusable.then(|| (pool.clone(), key, sender)),
    };
    if body.inner.is_end_stream() {
        body.give_back();
    }
    Sent {
        response: http::Response::from_parts(parts, body),
        timing,
    }
}

/// A response body that returns its connection to the pool once read to the end. Dropped
/// before that, the connection is dropped with it (what is left of the body would have to be
/// read first).
pub struct PooledBody {
    inner: Incoming,
    back: Option<(Arc<ConnPool>, PoolKey, SendRequest<OutBody>)>,
}

impl PooledBody {
    fn give_back(&mut self) {
        if let Some((pool, key, sender)) = self.back.take() {
            pool.put(key, sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Err(_))) => self.back = None,
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.give_back(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
