//! One client connection's state inside a worker.

use std::{
    collections::VecDeque, future::Future, os::fd::RawFd, pin::Pin, task::Waker, time::Instant,
};

use crate::http::{RequestDecoder, Response, write_response};

/// Pipelined requests one connection may have unanswered before the worker stops reading from
/// it: each may hold a wasm instance, and one client must not take a worker's share of them.
pub const MAX_PIPELINED: usize = 16;
/// Response bytes queued for a client before the worker stops reading from it. A client that
/// sends and never reads is then held back by TCP's flow control, not buffered without bound.
pub const MAX_UNSENT: usize = 256 << 10;

/// A response in request order: known, or still being computed.
pub struct Slot {
    pub response: SlotResponse,
    pub keep_alive: bool,
    pub head_only: bool,
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
    /// Wakes the worker for this connection's running replies; made on the first one.
    pub waker: Option<Waker>,
}

impl Conn {
    pub fn new(fd: RawFd, generation: u32, now: Instant) -> Self {
        Self {
            fd,
            peer: None,
            generation,
            phase: Phase::Open,
            input: Vec::new(),
            decoder: RequestDecoder::default(),
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
            waker: None,
        }
    }

    /// Serializes the finished prefix of `pending` into `out`; returns how many responses moved.
    /// Serializing here rather than at dispatch lets a worker that started draining meanwhile
    /// still say `connection: close`.
    pub fn collect_ready(&mut self, date: &str, closing: bool) -> usize {
        let mut moved = 0;
        while let Some(slot) = self.pending.front() {
            if matches!(slot.response, SlotResponse::Running(_)) {
                break;
            }
            let slot = self.pending.pop_front().expect("front exists");
            let SlotResponse::Ready(resp) = slot.response else {
                unreachable!("checked above")
            };
            let keep_alive = slot.keep_alive && !closing;
            write_response(&mut self.out, &resp, keep_alive, slot.head_only, date);
            if !keep_alive {
                self.phase = Phase::CloseAfterFlush;
            }
            moved += 1;
        }
        moved
    }

    /// Whether the client has enough unanswered requests or unread responses that the worker
    /// should read no more of its requests for now.
    pub fn backlogged(&self) -> bool {
        self.pending.len() >= MAX_PIPELINED
            || self.out.len() + self.sending.len() - self.sent >= MAX_UNSENT
    }

    /// Whether nothing is queued, in flight or half-received.
    pub fn is_idle(&self) -> bool {
        self.input.is_empty()
            && self.decoder.is_idle()
            && self.pending.is_empty()
            && self.out.is_empty()
            && !self.send_in_flight
    }

    pub fn can_free(&self) -> bool {
        self.phase == Phase::Closing && !self.recv_armed && !self.send_in_flight
    }
}
