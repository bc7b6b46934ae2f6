//! Handing a request to another datacenter: the worker sends it, signed, over a pooled
//! keep-alive connection to the peer's workers, and relays the peer's response. The peer checks
//! the signature, serves the app itself (a handed-off request is never handed off again), and
//! learns the original client's address from the signed headers.
//!
//! Each worker owns its pool (`crate::client`, shared with its guests' subrequests; no lock
//! shared between workers); a connection goes back to the pool when the peer's response has been
//! read to its end and the peer keeps it open.

pub mod auth;
mod health;
pub mod keys;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use http_body_util::BodyExt as _;

use crate::{
    client::{ClientError, ConnPool, Head, Outgoing, PoolKey, Sent},
    http::{
        Request, Response, is_hop_by_hop,
        stream::{BodyStream, PREFIX_BYTES},
    },
};
pub use auth::{AuthError, HandoffMeta, ReplayGuard};
pub use health::{HealthPolicy, PeerHealth};
pub use keys::{KeyRing, LiveKeys, PeerKeys, SecretKey};

/// The response header a datacenter serving a handoff puts its serving time in (us), so the
/// sender can tell the network's share of the exchange: the RTT on the handoff connection.
pub const SERVICE_TIME_HEADER: &str = "x-edge-service-us";

/// Another datacenter this one can hand requests to.
#[derive(Clone, Debug)]
pub struct Peer {
    pub id: u32,
    pub name: String,
    /// Its hosts' workers, as its topology entry names them (never empty): handoffs take them in
    /// turn, and a host that cannot be reached is skipped for the next one.
    pub handoff: Vec<SocketAddr>,
    /// Where the placement engine measures the RTT to it (its topology's `probe`, else
    /// `handoff`).
    pub probe: Vec<SocketAddr>,
}

#[derive(Clone, Debug)]
pub struct HandoffConfig {
    /// This datacenter's id (what `x-edge-from` says).
    pub self_id: u32,
    /// The keys shared with each peer; a reload replaces them.
    pub keys: Arc<LiveKeys>,
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
    /// Mutual TLS with the peers (None: plain TCP). When set, handoffs go over it and only
    /// handoffs that came over it are taken.
    pub tls: Option<Arc<crate::tls::peer::LivePeerTls>>,
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
    Exchange { peer: String, error: String },
    #[error("datacenter {peer} sent a malformed response: {detail}")]
    BadResponse { peer: String, detail: String },
    #[error("request not fit to hand to {peer}: {detail}")]
    BadRequest { peer: String, detail: String },
    #[error("no key to sign handoffs to {peer} with")]
    NoKey { peer: String },
}

impl HandoffError {
    /// Whether the request may have reached the peer (and its app may have run there).
    pub fn may_have_reached_peer(&self) -> bool {
        !matches!(
            self,
            HandoffError::UnknownPeer(_)
                | HandoffError::Unreachable { .. }
                | HandoffError::BadRequest { .. }
                | HandoffError::NoKey { .. }
        )
    }

    fn from_client(peer: &str, e: ClientError) -> Self {
        let peer = peer.to_owned();
        if e.maybe_written() {
            HandoffError::Exchange {
                peer,
                error: e.to_string(),
            }
        } else {
            HandoffError::Unreachable {
                peer,
                error: e.to_string(),
            }
        }
    }
}

pub use crate::client::retry::is_idempotent;

/// One worker's handoff client and verifier.
pub struct Handoff {
    cfg: HandoffConfig,
    peers: HashMap<u32, Peer>,
    /// The worker's connections (its guests' subrequests share it).
    conns: Arc<ConnPool>,
    /// Which of a peer's addresses the next handoff takes (they go in turn).
    turn: std::sync::atomic::AtomicUsize,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Handoff {
    /// Hands off over `conns`, the worker's pool.
    pub fn new(cfg: HandoffConfig, conns: Arc<ConnPool>) -> Self {
        let peers = cfg.peers.iter().map(|p| (p.id, p.clone())).collect();
        Self {
            cfg,
            peers,
            conns,
            turn: Default::default(),
        }
    }

    /// Whether `dc` is marked down (a handoff or a probe failed, and no probe has seen it since).
    pub fn is_down(&self, dc: u32) -> bool {
        self.cfg.health.is_down(dc)
    }

    /// Whether handoffs (and probe asks) travel over mutual TLS.
    pub fn requires_tls(&self) -> bool {
        self.cfg.tls.is_some()
    }

    pub fn self_id(&self) -> u32 {
        self.cfg.self_id
    }

    pub fn peer(&self, id: u32) -> Option<&Peer> {
        self.peers.get(&id)
    }

    /// A peer's name, or its id when it is not a peer.
    pub fn peer_name(&self, id: u32) -> String {
        self.peer(id)
            .map_or_else(|| id.to_string(), |p| p.name.clone())
    }

    /// Checks an incoming request's handoff headers, and that it is not one served before.
    pub fn verify(&self, req: &Request) -> Result<HandoffMeta, AuthError> {
        let now = unix_now();
        let meta = auth::verify(&self.cfg.keys.current(), req, now)?;
        self.cfg.replay.admit(&meta, now)?;
        Ok(meta)
    }

    /// Sends `req` to datacenter `dc` on behalf of `client` and returns its response, whose
    /// body streams from the peer (through this datacenter, unbuffered past what is there when
    /// its head is).
    pub async fn forward(
        &self,
        dc: u32,
        mut req: Request,
        client: &str,
    ) -> Result<Response, HandoffError> {
        let peer = self.peers.get(&dc).ok_or(HandoffError::UnknownPeer(dc))?;
        let name = &peer.name;
        let keys = self.cfg.keys.current();
        let key = keys
            .signing(dc)
            .ok_or_else(|| HandoffError::NoKey { peer: name.clone() })?;
        auth::sign(key, &mut req, self.cfg.self_id, client, 1, unix_now());
        let (head, body) = outgoing(req).map_err(|detail| HandoffError::BadRequest {
            peer: name.clone(),
            detail,
        })?;
        let timeout = self.cfg.request_timeout;
        let turn = self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let addr = *peer
            .handoff
            .get(turn % peer.handoff.len().max(1))
            .ok_or_else(|| HandoffError::Unreachable {
                peer: name.clone(),
                error: "it has no handoff address".into(),
            })?;
        let key = PoolKey::new(HANDOFF_POOL_OWNER, addr);
        let tls = match &self.cfg.tls {
            Some(tls) => Some(tls.client_to(name).map_err(|e| HandoffError::Unreachable {
                peer: name.clone(),
                error: format!("{e:#}"),
            })?),
            None => None,
        };
        let send = crate::client::send(
            &self.conns,
            key,
            head,
            body,
            self.cfg.connect_timeout,
            tls.as_ref(),
        );
        let result = match tokio::time::timeout(timeout, send).await {
            Ok(Ok(sent)) => self.relay(dc, sent).await,
            Ok(Err(e)) => Err(HandoffError::from_client(name, e)),
            Err(_) => Err(HandoffError::Timeout {
                peer: name.clone(),
                timeout,
            }),
        };
        match &result {
            Err(e) if self.cfg.health.failed(dc) => {
                tracing::warn!(peer = %name, %addr, error = %e, "peer marked down until probes see it back");
            }
            Err(e) => tracing::debug!(peer = %name, %addr, error = %e, "handoff failed"),
            Ok(_) => {
                self.cfg.health.answered(dc);
            }
        }
        result
    }

    /// The peer's response as this datacenter sends it on: its head, what its body holds
    /// already, and the rest as a stream held to `max_response_bytes`. The peer's serving time
    /// gives the network's share of the exchange: the RTT on the handoff connection.
    async fn relay(&self, dc: u32, sent: Sent) -> Result<Response, HandoffError> {
        let (parts, body) = sent.response.into_parts();
        let served_us = parts
            .headers
            .get(SERVICE_TIME_HEADER)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if let Some(us) = served_us {
            let rtt = sent
                .timing
                .exchange
                .saturating_sub(Duration::from_micros(us));
            self.cfg.health.record_handoff_rtt(dc, rtt);
        }
        let mut resp = Response::new(parts.status.as_u16(), Vec::new());
        let mut length = None;
        for (name, value) in &parts.headers {
            let name = name.as_str();
            if name == "content-length" {
                length = value.to_str().ok().and_then(|v| v.parse::<u64>().ok());
            }
            if is_hop_by_hop(name) || name == SERVICE_TIME_HEADER || name == "date" {
                continue;
            }
            resp.headers.push((
                name.to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            ));
        }
        let limit = self.cfg.max_response_bytes;
        let body = http_body_util::Limited::new(body, limit)
            .map_err(|e| anyhow::anyhow!("relaying a peer's response: {e}"));
        let mut stream = BodyStream::new(body).with_length(length);
        let whole = stream
            .take_ready(&mut resp.body, PREFIX_BYTES)
            .await
            .map_err(|e| HandoffError::BadResponse {
                peer: self.peer_name(dc),
                detail: format!("{e:#}"),
            })?;
        if !whole {
            resp.stream = Some(stream);
        }
        Ok(resp)
    }
}

/// Whose connections handoffs use in the worker's pool (apps are keyed by name; no app is named
/// this: names are checked in the config).
pub const HANDOFF_POOL_OWNER: &str = "edgeplane:handoff";

/// The signed request as the client sends it: every header the signature covers, never a
/// hop-by-hop one (its own framing is the client's).
fn outgoing(req: Request) -> Result<(Head, Outgoing), String> {
    let mut headers = http::HeaderMap::with_capacity(req.headers.len());
    for (name, value) in req.headers {
        if is_hop_by_hop(&name) {
            continue;
        }
        headers.append(
            http::HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?,
            http::HeaderValue::from_bytes(&value).map_err(|e| e.to_string())?,
        );
    }
    let head = Head {
        method: http::Method::from_bytes(req.method.as_bytes()).map_err(|e| e.to_string())?,
        target: req
            .target
            .parse()
            .map_err(|e: http::uri::InvalidUri| e.to_string())?,
        headers,
    };
    Ok((head, Outgoing::Whole(bytes::Bytes::from(req.body))))
}
