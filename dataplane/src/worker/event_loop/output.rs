//! What goes back to a client, and when the worker stops reading from it: the send queue,
//! flow control against clients that send more than they read, linger and close.

use std::time::Instant;

use io_uring::{opcode, types::Fd};

use super::{LINGER, Worker};
use crate::worker::{
    conn::Phase,
    ring::{Op, user_data},
    transport::Transport,
};

impl Worker {
    /// Stops reading from a client that has too much unanswered or unread: what it has sent
    /// stays in `input`, and the kernel's buffers and TCP's window hold back the rest.
    pub(super) fn pause(&mut self, idx: usize) {
        let Some(conn) = self.conns[idx].as_mut() else {
            return;
        };
        if conn.paused {
            return;
        }
        conn.paused = true;
        if conn.recv_armed {
            let recv = user_data(Op::Recv, idx, conn.generation);
            let entry = opcode::AsyncCancel::new(recv).build().user_data(user_data(
                Op::CancelRecv,
                idx,
                conn.generation,
            ));
            self.ring.push(entry);
        }
    }

    /// Reads again from a paused client once its backlog has cleared.
    pub(super) fn resume(&mut self, idx: usize) {
        let Some(conn) = self.conns[idx].as_mut() else {
            return;
        };
        if !conn.paused || conn.phase != Phase::Open || conn.backlogged() {
            return;
        }
        conn.paused = false;
        // Time spent paused was the client's not reading, not its being slow to send.
        conn.request_started = (!conn.input.is_empty()).then_some(self.now);
        self.process_input(idx);
        self.arm_recv(idx);
    }

    /// Moves finished responses into the send queue and starts a send if none is in flight.
    pub(super) fn flush(&mut self, idx: usize) {
        let Some(conn) = self.conns[idx].as_mut() else {
            return;
        };
        // Taken and put back rather than cloned: no reference count to touch per response.
        let waker = conn
            .waker
            .take()
            .unwrap_or_else(|| self.woken.waker(idx, conn.generation));
        let done = conn.collect_ready(&self.date, self.draining.is_some(), &waker);
        conn.waker = Some(waker);
        self.in_flight -= (done.settled + done.dropped) as u64;
        self.stats.served += done.answered as u64;
        let last_sent = conn.phase == Phase::CloseAfterFlush
            && conn.pending.is_empty()
            && conn.streaming.is_none()
            && conn.out.is_empty()
            && conn.tls_out.is_empty();
        if last_sent && !conn.send_in_flight {
            // A TLS client is told the end is on purpose before the FIN.
            if !conn.transport.close_notify(&mut conn.tls_out) {
                self.linger(idx);
                return;
            }
        }
        if conn.send_in_flight || (conn.out.is_empty() && conn.tls_out.is_empty()) {
            return;
        }
        if conn.tls_out.is_empty() && matches!(conn.transport, Transport::Plain) {
            // Plain HTTP: the queue becomes what is sent, no copy.
            std::mem::swap(&mut conn.sending, &mut conn.out);
            conn.out.clear();
        } else {
            conn.sending.clear();
            std::mem::swap(&mut conn.sending, &mut conn.tls_out);
            if !conn.transport.seal(&mut conn.out, &mut conn.sending) {
                self.close(idx);
                return;
            }
        }
        conn.sent = 0;
        self.send_rest(idx);
    }

    fn send_rest(&mut self, idx: usize) {
        let Some(conn) = self.conns[idx].as_mut() else {
            return;
        };
        let rest = &conn.sending[conn.sent..];
        conn.send_in_flight = true;
        conn.send_progress = self.now;
        let entry = opcode::Send::new(Fd(conn.fd), rest.as_ptr(), rest.len() as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(user_data(Op::Send, idx, conn.generation));
        self.ring.push(entry);
    }

    pub(super) fn on_send(&mut self, idx: usize, generation: u32, res: i32) {
        let now = self.now;
        let Some(conn) = self.conn_mut(idx, generation) else {
            return;
        };
        conn.send_in_flight = false;
        if res < 0 {
            self.close(idx);
        } else {
            conn.sent += res as usize;
            conn.last_activity = now;
            if conn.sent < conn.sending.len() {
                self.send_rest(idx);
            } else {
                conn.sending.clear();
                conn.sent = 0;
                self.flush(idx);
            }
            self.resume(idx);
        }
        self.maybe_free(idx);
    }

    /// FIN after the last response, then read until the peer closes (or LINGER passes).
    fn linger(&mut self, idx: usize) {
        let Some(conn) = self.conns[idx].as_mut() else {
            return;
        };
        // SAFETY: our socket.
        unsafe { libc::shutdown(conn.fd, libc::SHUT_WR) };
        conn.phase = Phase::Lingering {
            until: Instant::now() + LINGER,
        };
        if conn.paused {
            // What a paused client still sends is read now, and dropped.
            conn.paused = false;
            self.arm_recv(idx);
        }
        let Some(conn) = self.conns[idx].as_mut() else {
            return;
        };
        if !conn.recv_armed {
            self.close(idx);
        }
    }

    pub(super) fn close(&mut self, idx: usize) {
        let Some(conn) = self.conns[idx].as_mut() else {
            return;
        };
        if conn.phase == Phase::Closing {
            return;
        }
        self.in_flight -= conn.abandon_pending() as u64;
        // A stream nobody will read is dropped: its guest is stopped with it.
        if conn.streaming.take().is_some() {
            self.in_flight -= 1;
        }
        conn.phase = Phase::Closing;
        // Ends the multishot recv (it completes with 0) and any send in flight.
        // SAFETY: our socket.
        unsafe { libc::shutdown(conn.fd, libc::SHUT_RDWR) };
        self.maybe_free(idx);
    }

    pub(super) fn maybe_free(&mut self, idx: usize) {
        if let Some(conn) = self.conns[idx].as_ref()
            && conn.can_free()
        {
            // SAFETY: no operation on it is in flight any more.
            unsafe { libc::close(conn.fd) };
            self.conns[idx] = None;
            self.free.push(idx);
        }
    }
}
