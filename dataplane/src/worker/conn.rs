//! One client connection's state inside a worker.

use std::{
    collections::VecDeque,
    future::Future,
    os::fd::RawFd,
    pin::Pin,
    task::{Context, Waker},
    time::Instant,
};

use super::transport::Transport;
use crate::http::{
    RequestDecoder, Response, ResponseMode,
    stream::{ActiveStream, Pumped},
    write_response,
};

/// Pipelined requests one connection may have unanswered before the worker stops reading from
/// it: each may hold a wasm instance, and one client must not take a worker's share of them.
pub const MAX_PIPELINED: usize = 16;
/// Response bytes queued for a client before the worker stops reading from it. A client that
/// sends and never reads is then held back by TCP's flow control, not buffered without bound.
pub const MAX_UNSENT: usize = 256 << 10;
/// A streamed body is asked for more only while less than this is queued for the client: what
/// a client has not read holds its producer back (a guest's writes wait), bounding the memory
/// one stream takes.
pub const STREAM_HIGH_WATER: usize = 64 << 10;

/// A response in request order: known, or still being computed.
pub struct Slot {
    pub response: SlotResponse,
    pub mode: ResponseMode,
}

pub enum SlotResponse {
    Ready(Response),
    /// Polled by the worker (`super::wake`) until it gives the response.
    Running(Pin<Box<dyn Future<Output = Response>>>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Open,
    /// The last response is queued; after it is sent, FIN and drain the peer until it closes.
    CloseAfterFlush,
    /// FIN sent; reading and discarding until EOF or `until`, so the peer gets our last response
    /// instead of an RST for data it was still sending.
    Lingering {
        until: Instant,
    },
    /// Shut down both ways; freed once no operation is in flight.
    Closing,
}

pub struct Conn {
    pub fd: RawFd,
    pub peer: Option<std::net::SocketAddr>,
    pub generation: u32,
    pub phase: Phase,
    pub input: Vec<u8>,
    /// The request being received, past what `input` still holds.
    pub decoder: RequestDecoder,
    pub pending: VecDeque<Slot>,
    /// Bytes queued to send after the current send completes.
    pub out: Vec<u8>,
    /// The buffer the kernel is sending from; untouched while a send is in flight.
    pub sending: Vec<u8>,
    pub sent: usize,
    pub send_in_flight: bool,
    /// When the send in flight started or last moved bytes.
    pub send_progress: Instant,
    pub recv_armed: bool,
    /// Not reading: the client has too much unanswered or unread (see `backlogged`).
    pub paused: bool,
    pub last_activity: Instant,
    /// When the request now being received started arriving.
    pub request_started: Option<Instant>,
    pub sent_continue: bool,
    /// The request whose body is streaming in is the connection's last: close once that body
    /// has been read.
    pub close_after_body: bool,
    /// Wakes the worker for this connection's running replies and its stream; made on the
    /// first one.
    pub waker: Option<Waker>,
    /// The body being streamed to the client (its head is sent); the responses in `pending`
    /// wait behind it.
    pub streaming: Option<Streaming>,
    /// Plain HTTP, or TLS (`out` is then plaintext, sealed into `sending`).
    pub transport: Transport,
    /// TLS records to send before what `out` holds (handshake, alerts).
    pub tls_out: Vec<u8>,
    /// While `transport` is handshaking, it must be done by then (None: a plain-only worker).
    pub handshake_deadline: Option<Instant>,
}

/// A response whose head went out and whose body is still being produced.
pub struct Streaming {
    pub body: ActiveStream,
    pub keep_alive: bool,
}

/// What `collect_ready` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Collected {
    /// Responses whose head went into `out` (their requests are answered).
    pub answered: usize,
    /// Requests now wholly done: answered with a whole body, or their streamed body ended
    /// (a streaming request stays in flight: its guest is still running).
    pub settled: usize,
    /// Requests left unanswered because a streamed body before them failed and the connection
    /// closes.
    pub dropped: usize,
}

impl Conn {
    pub fn new(fd: RawFd, generation: u32, now: Instant) -> Self {
        Self {
            fd,
            peer: None,
            generation,
            phase: Phase::Open,
            input: Vec::new(),
            decoder: RequestDecoder::streaming(),
            pending: VecDeque::new(),
            out: Vec::new(),
            sending: Vec::new(),
            sent: 0,
            send_in_flight: false,
            send_progress: now,
            recv_armed: false,
            paused: false,
            last_activity: now,
            request_started: None,
            sent_continue: false,
            close_after_body: false,
            waker: None,
            streaming: None,
            transport: Transport::Plain,
            tls_out: Vec::new(),
            handshake_deadline: None,
        }
    }

    /// Serializes the finished prefix of `pending` into `out`, and what a streamed body has
    /// ready while the client keeps up. Serializing here rather than at dispatch lets a worker
    /// that started draining meanwhile still say `connection: close`. `waker` is the
    /// connection's, for a stream that has nothing yet.
    pub fn collect_ready(&mut self, date: &str, closing: bool, waker: &Waker) -> Collected {
        let mut done = Collected::default();
        loop {
            if let Some(streaming) = &mut self.streaming {
                let unsent = self.sending.len() - self.sent;
                let mut cx = Context::from_waker(waker);
                match streaming
                    .body
                    .pump(&mut self.out, unsent, STREAM_HIGH_WATER, &mut cx)
                {
                    Pumped::Waiting => return done,
                    Pumped::Finished => {
                        if !streaming.keep_alive {
                            self.phase = Phase::CloseAfterFlush;
                        }
                        self.streaming = None;
                        done.settled += 1;
                    }
                    Pumped::Failed(error) => {
                        tracing::warn!(peer = ?self.peer, error = %format!("{error:#}"), "response body failed mid-stream; closing the connection");
                        self.streaming = None;
                        done.settled += 1;
                        done.dropped += self.abandon_pending();
                        self.phase = Phase::CloseAfterFlush;
                        return done;
                    }
                }
            }
            let Some(slot) = self.pending.front() else {
                return done;
            };
            if matches!(slot.response, SlotResponse::Running(_)) {
                return done;
            }
            let slot = self.pending.pop_front().expect("front exists");
            let SlotResponse::Ready(resp) = slot.response else {
                unreachable!("checked above")
            };
            let mode = ResponseMode {
                keep_alive: slot.mode.keep_alive && !closing,
                ..slot.mode
            };
            let written = write_response(&mut self.out, resp, mode, date);
            done.answered += 1;
            match written.stream {
                Some(body) => {
                    self.streaming = Some(Streaming {
                        body,
                        keep_alive: written.keep_alive,
                    })
                }
                None => {
                    done.settled += 1;
                    if !written.keep_alive {
                        self.phase = Phase::CloseAfterFlush;
                    }
                }
            }
        }
    }

    /// Drops the requests still waiting for an answer (the connection is closing); a running
    /// reply is left to finish on its own (its app completes what it started: subrequests,
    /// observations, its in-flight count). Returns how many there were.
    pub fn abandon_pending(&mut self) -> usize {
        let dropped = self.pending.len();
        for slot in self.pending.drain(..) {
            if let SlotResponse::Running(reply) = slot.response {
                tokio::task::spawn_local(reply);
            }
        }
        dropped
    }

    /// Whether the client has enough unanswered requests or unread responses that the worker
    /// should read no more of its requests for now.
    pub fn backlogged(&self) -> bool {
        self.pending.len() >= MAX_PIPELINED
            || self.out.len() + self.tls_out.len() + self.sending.len() - self.sent >= MAX_UNSENT
    }

    /// Whether nothing is queued, in flight or half-received.
    pub fn is_idle(&self) -> bool {
        self.input.is_empty()
            && self.decoder.is_idle()
            && self.pending.is_empty()
            && self.streaming.is_none()
            && self.out.is_empty()
            && self.tls_out.is_empty()
            && !self.send_in_flight
    }

    pub fn can_free(&self) -> bool {
        self.phase == Phase::Closing && !self.recv_armed && !self.send_in_flight
    }
}
