//! Accepting connections: the multishot accept, the per-worker connection cap, and the pause
//! when the process runs out of descriptors or memory (re-arming at once would spin on the same
//! error; the tick re-arms once the pause is over).

use std::{
    os::fd::{AsRawFd as _, RawFd},
    time::Instant,
};

use io_uring::{cqueue, opcode, types::Fd};
use tracing::{debug, info, warn};

use super::{ACCEPT_PAUSE, Worker};
use crate::worker::{
    WorkerCounters,
    conn::Conn,
    ring::{Op, user_data},
    transport::Transport,
};

impl Worker {
    pub(super) fn arm_accept(&mut self) {
        if self.draining.is_some() {
            return;
        }
        let entry = opcode::AcceptMulti::new(Fd(self.listener.as_raw_fd()))
            .build()
            .user_data(user_data(Op::Accept, 0, 0));
        self.ring.push(entry);
        self.accept_armed = true;
    }

    /// The multishot accept's completion: a new connection, or why none came.
    pub(super) fn on_accept_completion(&mut self, res: i32, flags: u32) {
        let out_of_resources = matches!(
            -res,
            libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM
        );
        if res >= 0 {
            self.on_accept(res);
        } else if out_of_resources {
            WorkerCounters::bump(&self.counters.accept_errors);
            if self.accept_paused_until.is_none() {
                warn!(worker = self.ctx.worker, error = %std::io::Error::from_raw_os_error(-res), pause = ?ACCEPT_PAUSE, "accept failed for want of resources; pausing accepts");
            }
            self.accept_paused_until = Some(self.now + ACCEPT_PAUSE);
        } else if res != -libc::ECANCELED {
            warn!(worker = self.ctx.worker, error = %std::io::Error::from_raw_os_error(-res), "accept failed");
        }
        if !cqueue::more(flags) {
            self.accept_armed = false;
            // After a resource error the tick re-arms, once the pause is over.
            if self.accept_paused_until.is_none() {
                self.arm_accept();
            }
        }
    }

    /// Re-arms accepting once a pause for want of resources is over.
    pub(super) fn resume_accepting(&mut self, now: Instant) {
        if let Some(until) = self.accept_paused_until
            && now >= until
        {
            self.accept_paused_until = None;
            if !self.accept_armed {
                info!(worker = self.ctx.worker, "resuming accepts");
                self.arm_accept();
            }
        }
    }

    /// A connection accepted while draining is still served (its responses say `connection:
    /// close`): in a handover the listener lives on in the next process, and a connection the
    /// kernel gave this one is this one's to answer.
    fn on_accept(&mut self, fd: RawFd) {
        let one: libc::c_int = 1;
        // SAFETY: setting an int option on our own socket.
        unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&one as *const libc::c_int).cast(),
                4,
            );
        }
        let open = self.conns.len() - self.free.len();
        if open >= self.limits.max_connections {
            WorkerCounters::bump(&self.counters.connections_refused);
            debug!(
                worker = self.ctx.worker,
                open, "connection limit reached; closing a new connection"
            );
            // SAFETY: a socket we own and will not use.
            unsafe { libc::close(fd) };
            return;
        }
        self.stats.accepted += 1;
        let generation = self.next_generation;
        self.next_generation = (self.next_generation + 1) & 0xff_ffff;
        let mut conn = Conn::new(fd, generation, self.now);
        if let Some(tls) = self.service.tls() {
            conn.transport = Transport::Undecided(tls);
            conn.handshake_deadline = Some(self.now + self.limits.handshake_timeout);
        }
        // SAFETY: fd is the socket just accepted, open for this call.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        conn.peer = socket2::SockRef::from(&borrowed)
            .peer_addr()
            .ok()
            .and_then(|a| a.as_socket());
        let idx = match self.free.pop() {
            Some(i) => {
                self.conns[i] = Some(conn);
                i
            }
            None => {
                self.conns.push(Some(conn));
                self.conns.len() - 1
            }
        };
        self.arm_recv(idx);
    }
}
