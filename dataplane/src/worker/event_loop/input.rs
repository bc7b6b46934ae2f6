//! What a client sends: decoding its requests as they arrive, handing each to the service (with
//! its body streaming in when it is not all there yet), and refusing what cannot be served.

use std::panic::{AssertUnwindSafe, catch_unwind};

use tracing::{debug, error};

use super::Worker;
use crate::{
    http::{Decoded, HttpError, Request, Response, ResponseMode, request_body::RequestBody},
    worker::{
        Reply, WorkerCounters,
        conn::{Conn, Phase, Slot, SlotResponse},
    },
};

impl Worker {
    pub(super) fn process_input(&mut self, idx: usize) {
        loop {
            match self.input_step(idx) {
                Step::Again => {}
                Step::Stop => break,
                Step::Gone => return,
            }
        }
        self.flush(idx);
    }

    /// One step over what the client sent: wait out a backlog, or decode the next piece and act
    /// on it.
    fn input_step(&mut self, idx: usize) -> Step {
        let Some(conn) = self.conns[idx].as_mut() else {
            return Step::Gone;
        };
        if conn.phase != Phase::Open || conn.input.is_empty() {
            return Step::Stop;
        }
        if conn.backlogged() {
            // Answers that are ready may clear the backlog once they are queued to send.
            self.flush(idx);
            if self.conns[idx].as_ref().is_some_and(Conn::backlogged) {
                self.pause(idx);
                return Step::Stop;
            }
            return Step::Again;
        }
        let was_streaming = conn.decoder.is_streaming();
        let decoded = catch_unwind(AssertUnwindSafe(|| {
            conn.decoder.decode(&conn.input, &self.limits)
        }))
        .unwrap_or_else(|panic| {
            error!(
                worker = self.ctx.worker,
                panic = crate::panic_text(&*panic),
                "request parser panicked; closing the connection"
            );
            Err(HttpError::BadRequest("unparsable request"))
        });
        match decoded {
            Ok(decoded) => self.on_decoded(idx, decoded),
            Err(e) => {
                self.on_bad_input(idx, e, was_streaming);
                Step::Stop
            }
        }
    }

    /// Acts on one decoded piece: a request to dispatch (whole, or with its body streaming), the
    /// end of a streamed body, a body whose reader is full, or a head not whole yet.
    fn on_decoded(&mut self, idx: usize, decoded: Decoded) -> Step {
        let now = self.now;
        let Some(conn) = self.conns[idx].as_mut() else {
            return Step::Gone;
        };
        match decoded {
            Decoded::Complete(req, used) => {
                conn.input.drain(..used);
                conn.sent_continue = false;
                conn.request_started = (!conn.input.is_empty()).then_some(now);
                self.dispatch(idx, req, None);
            }
            Decoded::Streaming {
                request,
                body,
                used,
                expects_continue,
            } => {
                conn.input.drain(..used);
                conn.sent_continue = false;
                // The head is whole; from here `body_timeout` watches the client, and a
                // `request_timeout` counts from the head's first byte.
                conn.request_started.get_or_insert(now);
                self.dispatch(idx, request, Some(body));
                if expects_continue {
                    self.send_continue(idx, true);
                }
            }
            Decoded::BodyEnd { used } => {
                conn.input.drain(..used);
                conn.request_started = (!conn.input.is_empty()).then_some(now);
                if std::mem::take(&mut conn.close_after_body) {
                    conn.input.clear();
                    conn.request_started = None;
                    conn.phase = Phase::CloseAfterFlush;
                    return Step::Stop;
                }
            }
            Decoded::Blocked { used } => {
                conn.input.drain(..used);
                // The body's reader is full: read on once it takes some (its waker is this
                // connection's).
                let waker = conn
                    .waker
                    .get_or_insert_with(|| self.woken.waker(idx, conn.generation));
                if conn.decoder.wait_for_room(waker) {
                    self.pause(idx);
                    return Step::Stop;
                }
            }
            Decoded::Partial {
                used,
                expects_continue,
            } => {
                conn.input.drain(..used);
                if conn.request_started.is_none() {
                    conn.request_started = Some(now);
                }
                if expects_continue {
                    self.send_continue(idx, false);
                }
                return Step::Stop;
            }
        }
        Step::Again
    }

    /// Input that does not decode. A request that went on already (its body streaming) has its
    /// answer coming: its body's reader gets the error, and the connection closes after that
    /// answer. Otherwise the client is answered with the error.
    fn on_bad_input(&mut self, idx: usize, e: HttpError, was_streaming: bool) {
        self.stats.bad_requests += 1;
        if !was_streaming {
            debug!(worker = self.ctx.worker, error = %e, "bad request");
            self.fail(idx, e);
            return;
        }
        debug!(worker = self.ctx.worker, error = %e, "bad request body mid-stream");
        if let Some(conn) = self.conns[idx].as_mut() {
            conn.decoder.abandon("the request body failed");
            conn.input.clear();
            conn.request_started = None;
            conn.phase = Phase::CloseAfterFlush;
        }
    }

    /// Sends `100 Continue` to a client waiting for it before its body, once per request, when
    /// no earlier response is still to come (it must not land inside one). `dispatched`: the
    /// request already has its slot in `pending`.
    fn send_continue(&mut self, idx: usize, dispatched: bool) {
        let Some(conn) = self.conns[idx].as_mut() else {
            return;
        };
        let nothing_before =
            conn.pending.len() == usize::from(dispatched) && conn.streaming.is_none();
        if !conn.sent_continue && nothing_before {
            conn.sent_continue = true;
            conn.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
    }

    /// Answers with an error status and closes after it. A request whose body was streaming
    /// has its answer coming already: its body's reader gets the error, and the connection
    /// closes after that answer.
    pub(super) fn fail(&mut self, idx: usize, e: HttpError) {
        self.fail_with(idx, e, "the request body failed");
    }

    /// `fail`, telling a reader of a streamed body `why` it will not end.
    pub(super) fn fail_with(&mut self, idx: usize, e: HttpError, why: &'static str) {
        let Some(conn) = self.conns[idx].as_mut() else {
            return;
        };
        conn.input.clear();
        conn.request_started = None;
        if conn.decoder.abandon(why) {
            conn.phase = Phase::CloseAfterFlush;
            return;
        }
        conn.pending.push_back(Slot {
            response: SlotResponse::Ready(e.response()),
            mode: ResponseMode {
                keep_alive: false,
                head_only: false,
                chunked: false,
                trailers: false,
            },
        });
        conn.phase = Phase::CloseAfterFlush;
        self.in_flight += 1;
    }

    fn dispatch(&mut self, idx: usize, req: Request, body: Option<RequestBody>) {
        let mut keep_alive = req.keep_alive && self.draining.is_none();
        let head_only = req.method == "HEAD";
        let chunked = req.minor_version >= 1;
        let trailers = req.takes_trailers;
        self.in_flight += 1;
        self.ctx.peer = self.conns[idx].as_ref().and_then(|c| c.peer);
        self.ctx.peer_tls = self.conns[idx]
            .as_ref()
            .is_some_and(|c| c.transport.is_peer());
        // A bug the request reaches must cost that request, not the worker's other connections.
        self.ctx.body.set(body);
        let (service, ctx) = (&self.service, &self.ctx);
        let reply = catch_unwind(AssertUnwindSafe(|| service.call(req, ctx)));
        // A body the service did not take is read and dropped as it arrives.
        drop(self.ctx.body.take());
        let reply = reply.unwrap_or_else(
            |panic| {
                WorkerCounters::bump(&self.counters.panics);
                error!(worker = self.ctx.worker, peer = ?self.ctx.peer, panic = crate::panic_text(&*panic), "request handling panicked; answering 500 and closing the connection");
                keep_alive = false;
                Reply::Now(Response::text(500, "internal error\n"))
            },
        );
        let Some(conn) = self.conns[idx].as_mut() else {
            return;
        };
        let (response, running) = match reply {
            Reply::Now(resp) => (SlotResponse::Ready(resp), false),
            Reply::Later(fut) => (SlotResponse::Running(fut), true),
        };
        conn.pending.push_back(Slot {
            response,
            mode: ResponseMode {
                keep_alive,
                head_only,
                chunked,
                trailers,
            },
        });
        if !keep_alive {
            if conn.decoder.is_streaming() {
                // Its body is still to be read (and given to the service) first.
                conn.close_after_body = true;
            } else {
                conn.phase = Phase::CloseAfterFlush;
            }
        }
        if running {
            let newest = conn.pending.len() - 1;
            self.poll_replies(idx, newest);
        }
    }
}

/// What `process_input` does after a step.
enum Step {
    /// Decode on.
    Again,
    /// Stop reading for now; what is queued is sent.
    Stop,
    /// The connection is gone.
    Gone,
}
