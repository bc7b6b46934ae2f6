//! Handing a request to another datacenter: the worker sends it, signed, over a pooled
//! keep-alive connection to the peer's workers, and relays the peer's response. The peer checks
//! the signature, serves the app itself (a handed-off request is never handed off again), and
//! learns the original client's address from the signed headers.
//!
//! Each worker owns its pool (no lock shared between workers); a connection goes back to the
//! pool when the peer keeps it open.

pub mod auth;
mod health;

use std::{
    cell::RefCell,
    collections::HashMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use crate::http::{Request, Response, parse_response, write_request};
pub use auth::{AuthError, HandoffMeta, ReplayGuard};
pub use health::PeerHealth;

/// The response header a datacenter serving a handoff puts its serving time in (us), so the
/// sender can tell the network's share of the exchange: the RTT on the handoff connection.
pub const SERVICE_TIME_HEADER: &str = "x-edge-service-us";

/// Another datacenter this one can hand requests to.
#[derive(Clone, Debug)]
pub struct Peer {
    pub id: u32,
    pub name: String,
    /// Its workers' listener, as reached from here.
    pub addr: SocketAddr,
}

#[derive(Clone, Debug)]
pub struct HandoffConfig {
    /// This datacenter's id (what `x-edge-from` says).
    pub self_id: u32,
    pub key: Vec<u8>,
    pub peers: Vec<Peer>,
    pub connect_timeout: Duration,
    /// For the whole exchange with the peer, its app's run included.
    pub request_timeout: Duration,
    /// Largest response body relayed.
    pub max_response_bytes: usize,
    /// Which peers are down and how far they are, shared with the other workers and the
    /// placement engine (which brings a down peer back when its probe answers).
    pub health: Arc<PeerHealth>,
    /// Handoffs this datacenter served lately, shared by its workers: replays are refused.
    pub replay: Arc<ReplayGuard>,
}

#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("no datacenter {0} among this one's peers")]
    UnknownPeer(u32),
    #[error("datacenter {peer} is unreachable: {error}")]
    Unreachable { peer: String, error: String },
    #[error("datacenter {peer} did not answer within {timeout:?}")]
    Timeout { peer: String, timeout: Duration },
    #[error("datacenter {peer}: {error}")]
    Io { peer: String, error: std::io::Error },
    #[error("datacenter {peer} sent a malformed response: {detail}")]
    BadResponse { peer: String, detail: String },
}

impl HandoffError {
    /// Whether the request may have reached the peer (and its app may have run there).
    pub fn may_have_reached_peer(&self) -> bool {
        !matches!(
            self,
            HandoffError::UnknownPeer(_) | HandoffError::Unreachable { .. }
        )
    }
}

/// Methods a client may repeat without changing the outcome (RFC 9110, 9.2.2).
pub fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS" | "TRACE"
    )
}

struct PeerPool {
    peer: Peer,
    idle: RefCell<Vec<TcpStream>>,
}

/// One worker's handoff client and verifier.
pub struct Handoff {
    cfg: HandoffConfig,
    pools: HashMap<u32, PeerPool>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Idle pooled connections kept per peer and worker.
const MAX_IDLE: usize = 32;

impl Handoff {
    pub fn new(cfg: HandoffConfig) -> Self {
        let pools = cfg
            .peers
            .iter()
            .map(|p| {
                (
                    p.id,
                    PeerPool {
                        peer: p.clone(),
                        idle: RefCell::new(Vec::new()),
                    },
                )
            })
            .collect();
        Self { cfg, pools }
    }

    /// Whether `dc` is marked down (a handoff or a probe failed, and no probe has seen it since).
    pub fn is_down(&self, dc: u32) -> bool {
        self.cfg.health.is_down(dc)
    }

    pub fn self_id(&self) -> u32 {
        self.cfg.self_id
    }

    pub fn peer(&self, id: u32) -> Option<&Peer> {
        self.pools.get(&id).map(|p| &p.peer)
    }

    /// A peer's name, or its id when it is not a peer.
    pub fn peer_name(&self, id: u32) -> String {
        self.peer(id)
            .map_or_else(|| id.to_string(), |p| p.name.clone())
    }

    /// Checks an incoming request's handoff headers, and that it is not one served before.
    pub fn verify(&self, req: &Request) -> Result<HandoffMeta, AuthError> {
        let now = unix_now();
        let meta = auth::verify(&self.cfg.key, req, now)?;
        self.cfg.replay.admit(&meta, now)?;
        Ok(meta)
    }

    /// Sends `req` to datacenter `dc` on behalf of `client` and returns its response.
    pub async fn forward(
        &self,
        dc: u32,
        mut req: Request,
        client: &str,
    ) -> Result<Response, HandoffError> {
        let pool = self.pools.get(&dc).ok_or(HandoffError::UnknownPeer(dc))?;
        auth::sign(
            &self.cfg.key,
            &mut req,
            self.cfg.self_id,
            client,
            1,
            unix_now(),
        );
        let mut wire = Vec::with_capacity(512 + req.body.len());
        write_request(&mut wire, &req);
        let head = req.method == "HEAD";
        let retry_stale = is_idempotent(&req.method);
        let timeout = self.cfg.request_timeout;
        let started = Instant::now();
        let exchange = self.exchange(pool, &wire, head, retry_stale);
        let result = match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(HandoffError::Timeout {
                peer: pool.peer.name.clone(),
                timeout,
            }),
        };
        let result = result.map(|(resp, connecting)| (resp, connecting, started.elapsed()));
        match result {
            Ok((mut resp, connecting, took)) => {
                let served_us = resp
                    .headers
                    .iter()
                    .find(|(k, _)| k == SERVICE_TIME_HEADER)
                    .and_then(|(_, v)| v.parse::<u64>().ok());
                resp.headers.retain(|(k, _)| k != SERVICE_TIME_HEADER);
                if let Some(us) = served_us {
                    let rtt = took.saturating_sub(connecting + Duration::from_micros(us));
                    self.cfg.health.record_handoff_rtt(dc, rtt);
                }
                Ok(resp)
            }
            Err(e) => {
                if self.cfg.health.mark_down(dc) {
                    tracing::warn!(peer = %pool.peer.name, error = %e, "peer marked down until a probe sees it back");
                }
                Err(e)
            }
        }
    }

    /// The peer's response, and the time spent opening a connection for it (zero on a pooled
    /// one).
    ///
    /// A pooled connection may have been closed by the peer while idle. One seen closed before
    /// anything is written is dropped for the next. One that fails after the request was written
    /// is retried on a new connection only for an idempotent request (`retry_stale`): the peer
    /// may have received it and run the app, and a POST must never run twice. A fresh
    /// connection's failure is final.
    async fn exchange(
        &self,
        pool: &PeerPool,
        wire: &[u8],
        head: bool,
        retry_stale: bool,
    ) -> Result<(Response, Duration), HandoffError> {
        let io = |error| HandoffError::Io {
            peer: pool.peer.name.clone(),
            error,
        };
        loop {
            let Some(stream) = pool.idle.borrow_mut().pop() else {
                break;
            };
            if !still_open(&stream) {
                continue;
            }
            match self.send_on(pool, stream, wire, head).await {
                Ok(resp) => return Ok((resp, Duration::ZERO)),
                Err(SendError::Stale) if retry_stale => break,
                Err(SendError::Stale) => {
                    return Err(io(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "pooled connection closed after the request was sent; not retried",
                    )));
                }
                Err(SendError::Failed(e)) => return Err(e),
            }
        }
        let unreachable = |error: String| HandoffError::Unreachable {
            peer: pool.peer.name.clone(),
            error,
        };
        let connect_started = Instant::now();
        let stream =
            tokio::time::timeout(self.cfg.connect_timeout, TcpStream::connect(pool.peer.addr))
                .await
                .map_err(|_| {
                    unreachable(format!(
                        "no connection within {:?}",
                        self.cfg.connect_timeout
                    ))
                })?
                .map_err(|e| unreachable(e.to_string()))?;
        let connecting = connect_started.elapsed();
        let _ = stream.set_nodelay(true);
        match self.send_on(pool, stream, wire, head).await {
            Ok(resp) => Ok((resp, connecting)),
            Err(SendError::Stale) => Err(io(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "closed before answering",
            ))),
            Err(SendError::Failed(e)) => Err(e),
        }
    }

    async fn send_on(
        &self,
        pool: &PeerPool,
        mut stream: TcpStream,
        wire: &[u8],
        head: bool,
    ) -> Result<Response, SendError> {
        let peer = &pool.peer.name;
        let failed = |error| {
            SendError::Failed(HandoffError::Io {
                peer: peer.clone(),
                error,
            })
        };
        if stream.write_all(wire).await.is_err() {
            return Err(SendError::Stale);
        }
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = vec![0u8; 16 * 1024];
        // Whether the peer sent anything: after that, a close is a failure, not a stale socket.
        let mut heard = false;
        loop {
            let n = match stream.read(&mut chunk).await {
                Ok(0) if !heard => return Err(SendError::Stale),
                Ok(0) => {
                    return Err(failed(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "closed mid-response",
                    )));
                }
                Ok(n) => n,
                Err(_) if !heard => return Err(SendError::Stale),
                Err(e) => return Err(failed(e)),
            };
            heard = true;
            buf.extend_from_slice(&chunk[..n]);
            // Interim (1xx) responses come before the final one: never taken for it, and never
            // left on a pooled connection for the next request to read.
            let parsed = loop {
                match parse_response(&buf, head, self.cfg.max_response_bytes) {
                    Ok(Some(p)) if is_interim(p.response.status) => {
                        buf.drain(..p.consumed.min(buf.len()));
                    }
                    other => break other,
                }
            };
            match parsed {
                Ok(None) => continue,
                Ok(Some(parsed)) => {
                    let mut idle = pool.idle.borrow_mut();
                    if parsed.keep_alive && parsed.consumed == buf.len() && idle.len() < MAX_IDLE {
                        idle.push(stream);
                    }
                    return Ok(parsed.response);
                }
                Err(e) => {
                    return Err(SendError::Failed(HandoffError::BadResponse {
                        peer: peer.clone(),
                        detail: e.to_string(),
                    }));
                }
            }
        }
    }
}

/// 1xx other than 101 (edgeplane never asks to switch protocols, so a 101 is a bad answer).
fn is_interim(status: u16) -> bool {
    (100..200).contains(&status) && status != 101
}

/// Whether an idle pooled connection is still open: the peer has neither closed it nor sent
/// anything unasked (which would be read as the next request's response).
fn still_open(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

enum SendError {
    /// The connection was dead before the peer answered anything.
    Stale,
    Failed(HandoffError),
}
