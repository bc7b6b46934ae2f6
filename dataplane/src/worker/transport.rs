//! What a connection's bytes are: plain HTTP, or TLS the worker terminates. A worker with
//! certificates tells them apart by the first byte a client sends (a TLS record starts with
//! 0x16, which no HTTP method does), so one listener, one port and one steering program serve
//! both, and TLS begins after XDP and `select_worker` placed the connection.

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    sync::Arc,
};

use rustls::ServerConfig;
use tracing::debug;

use crate::tls::{
    counters::{Failure, TlsCounters},
    peer::{Hello, HelloReader, WorkerTls},
    session::{MAX_BUFFERED, TlsSession},
};

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

pub enum Transport {
    Plain,
    /// Nothing received yet, and the worker serves HTTPS with these configurations (the ones
    /// at accept: a reload meanwhile applies to the next connection).
    Undecided(Arc<WorkerTls>),
    /// A ClientHello arriving on a worker that also takes its peers' mutual TLS: read for its
    /// name, which picks the configuration; `seen` is replayed into the session.
    Hello {
        tls: Arc<WorkerTls>,
        reader: Box<HelloReader>,
        seen: Vec<u8>,
    },
    Tls {
        session: Box<TlsSession>,
        /// A peer datacenter, its certificate verified against the fleet's CA.
        peer: bool,
    },
    /// The TLS session is over (it failed, or close_notify went out): only what is already
    /// queued still goes.
    Done,
}

/// What `take` made of received bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// Plaintext (if any) is in the input, and records to send (if any) in `to_send`.
    Data,
    /// The peer sent close_notify: as an EOF.
    PeerClosed,
    /// The connection's TLS failed: send `to_send` (the alert) and close.
    Failed,
}

impl Transport {
    /// Takes `data` from the peer: plaintext into `input`, what TLS answers into `to_send`.
    pub fn take(
        &mut self,
        data: &[u8],
        input: &mut Vec<u8>,
        to_send: &mut Vec<u8>,
        counters: &TlsCounters,
    ) -> Taken {
        if let Transport::Undecided(tls) = self {
            *self = if data.first() != Some(&TLS_HANDSHAKE) {
                Transport::Plain
            } else if tls.peers.is_some() {
                Transport::Hello {
                    tls: tls.clone(),
                    reader: Box::default(),
                    seen: Vec::new(),
                }
            } else {
                start(tls.public.clone(), false, counters).unwrap_or(Transport::Done)
            };
        }
        let mut replay = None;
        if let Transport::Hello { tls, reader, seen } = self {
            if seen.len().saturating_add(data.len()) > MAX_BUFFERED {
                return self.fail(counters, Failure::Malformed);
            }
            seen.extend_from_slice(data);
            let sni = match catch_unwind(AssertUnwindSafe(|| reader.read(data))) {
                Ok(Hello::Partial) => return Taken::Data,
                Ok(Hello::Name(sni)) => sni,
                Ok(Hello::Invalid(e)) => {
                    debug!(error = %e, "not a ClientHello");
                    return self.fail(counters, Failure::of(&e));
                }
                Err(panic) => return self.panicked(counters, &*panic),
            };
            let (config, peer) = tls.pick(sni.as_deref());
            replay = Some(std::mem::take(seen));
            *self = start(config, peer, counters).unwrap_or(Transport::Done);
        }
        let data = replay.as_deref().unwrap_or(data);
        let session = match self {
            Transport::Plain => {
                input.extend_from_slice(data);
                return Taken::Data;
            }
            Transport::Tls { session, .. } => session,
            Transport::Undecided(_) | Transport::Hello { .. } | Transport::Done => {
                return Taken::Failed;
            }
        };
        // rustls parses what any client sends: a bug there must cost this connection only.
        match catch_unwind(AssertUnwindSafe(|| session.receive(data, input, to_send))) {
            Ok(Ok(r)) => {
                if let Some(resumed) = r.established {
                    counters.completed(resumed);
                }
                if r.peer_closed {
                    Taken::PeerClosed
                } else {
                    Taken::Data
                }
            }
            Ok(Err(e)) => {
                debug!(error = %e, "TLS failed");
                self.fail(counters, Failure::of(&e))
            }
            Err(panic) => self.panicked(counters, &*panic),
        }
    }

    /// The connection's TLS is over, for `why` (counted).
    fn fail(&mut self, counters: &TlsCounters, why: Failure) -> Taken {
        counters.failed(why);
        *self = Transport::Done;
        Taken::Failed
    }

    fn panicked(&mut self, counters: &TlsCounters, panic: &(dyn std::any::Any + Send)) -> Taken {
        tracing::error!(
            panic = crate::panic_text(panic),
            "TLS processing panicked; closing the connection"
        );
        self.fail(counters, Failure::Other)
    }

    /// Whether the connection is a peer datacenter's, over mutual TLS.
    pub fn is_peer(&self) -> bool {
        matches!(self, Transport::Tls { peer: true, .. })
    }

    /// Moves `plain` (emptied) into `sending` as what goes on the wire. False: the session
    /// cannot send (it failed), and the connection closes.
    pub fn seal(&mut self, plain: &mut Vec<u8>, sending: &mut Vec<u8>) -> bool {
        match self {
            Transport::Plain | Transport::Undecided(_) | Transport::Hello { .. } => {
                sending.append(plain);
                true
            }
            Transport::Tls { session, .. } => {
                let sealed = plain.is_empty() || session.encrypt(plain, sending).is_ok();
                plain.clear();
                sealed
            }
            Transport::Done => {
                plain.clear();
                true
            }
        }
    }

    /// Whether the connection is still to prove it can talk (a TLS handshake in progress, or
    /// nothing received yet on a worker that serves HTTPS): the handshake timeout applies.
    pub fn handshaking(&self) -> bool {
        match self {
            Transport::Undecided(_) | Transport::Hello { .. } => true,
            Transport::Tls { session, .. } => !session.is_established(),
            Transport::Plain | Transport::Done => false,
        }
    }

    /// Whether a TLS handshake has begun and not finished (a client leaving now gave up on it).
    pub fn mid_handshake(&self) -> bool {
        match self {
            Transport::Hello { .. } => true,
            Transport::Tls { session, .. } => !session.is_established(),
            Transport::Plain | Transport::Undecided(_) | Transport::Done => false,
        }
    }

    /// Appends a close_notify to `to_send`, once, on a TLS connection past its handshake.
    pub fn close_notify(&mut self, to_send: &mut Vec<u8>) -> bool {
        match self {
            Transport::Tls { session, .. } if session.is_established() => {
                session.close_notify(to_send);
                // Nothing goes out after it.
                *self = Transport::Done;
                !to_send.is_empty()
            }
            _ => false,
        }
    }
}

/// A session with `config`, or why not (counted): no configuration serves the name asked for.
fn start(
    config: Option<Arc<ServerConfig>>,
    peer: bool,
    counters: &TlsCounters,
) -> Option<Transport> {
    let Some(config) = config else {
        counters.failed(Failure::NoCertificate);
        return None;
    };
    match TlsSession::new(config) {
        Ok(session) => Some(Transport::Tls {
            session: Box::new(session),
            peer,
        }),
        Err(e) => {
            debug!(error = %e, "no TLS session");
            counters.failed(Failure::Other);
            None
        }
    }
}
