//! The worker's event loop: connections (accept, receive, reply), replies that wait on something
//! (`wake`), and timers, over the ring in `ring`. What the client sends (decoding, dispatch) is in
//! `input`; what goes back to it, flow control, linger and close in `output`.

use std::{
    net::TcpListener,
    os::fd::{AsRawFd as _, OwnedFd},
    rc::Rc,
    sync::Arc,
    task::Poll,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use io_uring::{cqueue, opcode, types::Fd};
use tokio::io::unix::AsyncFd;
use tracing::{debug, info};

use super::{
    RequestContext, Service, WorkerCounters, WorkerOptions, WorkerStats,
    bufring::BufRing,
    conn::{Conn, Phase, SlotResponse},
    deadlines::{ClientState, Late, client_late},
    load::LoadPublisher,
    ring::{Op, Ring, split_user_data, user_data},
    transport::Taken,
    wake::{WokenConns, poll_reply},
};
use crate::{
    http::{HttpError, HttpLimits},
    tls::counters::Failure,
};

mod accept;
mod input;
mod output;

const BUFFER_GROUP: u16 = 1;
const LINGER: Duration = Duration::from_secs(2);
/// Timeouts, idle connections and the Date header are looked at this often.
const TICK: Duration = Duration::from_millis(100);
/// Longest tokio goes unpolled while the worker waits in its ring.
const TOKIO_PASS: Duration = Duration::from_millis(20);
/// Rounds of completions and woken replies one `pump` handles before the loop moves on, so a
/// reply that keeps waking itself cannot keep the worker from its timers and tokio.
const PUMP_ROUNDS: usize = 64;
/// While handing over, a keep-alive connection idle this long is closed. Busier ones close
/// after their next response (which says `connection: close`), so no request races the close.
const DRAIN_IDLE_GRACE: Duration = Duration::from_secs(1);
/// How long accepting pauses after it failed for want of descriptors or memory.
pub(super) const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

pub(super) struct Worker {
    // Field order is drop order: the ring goes first, releasing the kernel's hold on the
    // buffer pool before its memory is freed.
    ring: Ring,
    bufs: BufRing,
    listener: TcpListener,
    service: Rc<dyn Service>,
    ctx: RequestContext,
    limits: HttpLimits,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    next_generation: u32,
    woken: Arc<WokenConns>,
    /// `woken`'s list, taken (kept to reuse its allocation).
    woken_batch: Vec<(usize, u32)>,
    load: Option<LoadPublisher>,
    in_flight: u64,
    published: (u64, u64),
    stats: WorkerStats,
    date: String,
    date_at: Instant,
    draining: Option<Instant>,
    drain_timeout: Duration,
    /// Set when the listener goes on in another process (an upgrade): draining then stops
    /// accepting without shutting the listening socket down.
    handover: Arc<std::sync::atomic::AtomicBool>,
    accept_armed: bool,
    /// Accepting is paused until then: the last accept failed for want of descriptors or
    /// memory, and re-arming at once would spin on the same error.
    accept_paused_until: Option<Instant>,
    counters: Arc<WorkerCounters>,
    /// The time as of this round of completions: what activity and send progress are stamped
    /// with, a clock read per round rather than several per request.
    now: Instant,
}

impl Worker {
    pub(super) fn new(opts: WorkerOptions, service: Rc<dyn Service>) -> anyhow::Result<Self> {
        let ring = Ring::new(opts.ring_entries)?;
        let bufs = BufRing::register(
            ring.uring(),
            BUFFER_GROUP,
            opts.recv_buffers,
            opts.recv_buffer_size,
        )
        .context("registering the receive buffer ring")?;
        let load = match &opts.load_map {
            Some(fd) => Some(
                LoadPublisher::new(std::os::fd::AsFd::as_fd(fd), opts.cpu)
                    .context("mapping WORKER_LOAD")?,
            ),
            None => None,
        };
        Ok(Self {
            ring,
            bufs,
            listener: opts.listener,
            service,
            ctx: RequestContext {
                worker: opts.cpu,
                peer: None,
                peer_tls: false,
                body: Default::default(),
            },
            limits: opts.limits,
            conns: Vec::new(),
            free: Vec::new(),
            next_generation: 1,
            woken: Arc::new(WokenConns::default()),
            woken_batch: Vec::new(),
            load,
            in_flight: 0,
            published: (u64::MAX, u64::MAX),
            stats: WorkerStats::default(),
            date: httpdate::fmt_http_date(SystemTime::now()),
            date_at: Instant::now(),
            draining: None,
            drain_timeout: opts.drain_timeout,
            handover: opts.handover.clone(),
            accept_armed: false,
            accept_paused_until: None,
            counters: opts.counters,
            now: Instant::now(),
        })
    }

    pub(super) async fn run(
        mut self,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<WorkerStats> {
        let efd = self.ring_eventfd()?;
        let woken = self.woken.clone();
        let mut next_tick = Instant::now() + TICK;
        let mut tokio_pass = Instant::now();
        self.arm_accept();
        info!(worker = self.ctx.worker, "worker serving");
        loop {
            self.pump()?;
            if self.drained() {
                break;
            }
            let now = Instant::now();
            if now >= next_tick {
                self.on_tick();
                next_tick = now + TICK;
            }
            // With no reply of ours waiting on tokio (static routes, parked keep-alive
            // connections), wait in the ring itself: going through tokio's epoll costs an
            // epoll_wait and an eventfd read per wake-up.
            if self.in_flight == 0 && self.draining.is_none() {
                self.wait_idle(&mut shutdown, &mut tokio_pass, now, next_tick)
                    .await?;
                continue;
            }
            tokio_pass = now;
            self.ring.submit_pending()?;
            tokio::select! {
                ready = efd.readable() => {
                    let mut guard = ready?;
                    let mut count = [0u8; 8];
                    // SAFETY: reading the 8-byte eventfd counter into a local buffer.
                    unsafe { libc::read(efd.get_ref().as_raw_fd(), count.as_mut_ptr().cast(), 8) };
                    guard.clear_ready();
                }
                _ = woken.notify.notified() => {}
                _ = tokio::time::sleep_until(next_tick.into()) => {}
                changed = shutdown.changed(), if self.draining.is_none() => {
                    if changed.is_err() || *shutdown.borrow() {
                        self.start_drain();
                    }
                }
            }
        }
        self.bufs.unregister(self.ring.uring());
        Ok(self.stats)
    }

    /// An eventfd the ring signals on each completion, registered with tokio: while replies
    /// wait on tokio, the worker waits there for both.
    fn ring_eventfd(&self) -> anyhow::Result<AsyncFd<OwnedFd>> {
        // SAFETY: eventfd has no memory preconditions; the fd is owned right away.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        anyhow::ensure!(efd >= 0, "eventfd: {}", std::io::Error::last_os_error());
        // SAFETY: just created and owned by nobody else.
        let efd: OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(efd) };
        self.ring.register_eventfd(efd.as_raw_fd())?;
        // SAFETY: the eventfd is owned here and registered with no other reactor.
        unsafe { AsyncFd::register(efd) }
            .map_err(|e| anyhow::anyhow!("registering the eventfd with tokio: {e}"))
    }

    /// Draining, and every connection closed (or the drain timed out).
    fn drained(&self) -> bool {
        let Some(since) = self.draining else {
            return false;
        };
        let live = self.conns.iter().flatten().count();
        let done = live == 0 || since.elapsed() > self.drain_timeout;
        if done {
            info!(worker = self.ctx.worker, left = live, "worker drained");
        }
        done
    }

    /// With nothing in flight: start draining when told to, give tokio a pass now and then for
    /// work of its own (a subrequest connection closing after its response), work ahead (an
    /// instance for the next request, one piece at a time so that what arrives meanwhile is
    /// looked at first, after the replies queued so far are on their way), else wait in the
    /// ring until the next tick.
    async fn wait_idle(
        &mut self,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
        tokio_pass: &mut Instant,
        now: Instant,
        next_tick: Instant,
    ) -> anyhow::Result<()> {
        if shutdown.has_changed().unwrap_or(true) {
            let stop = shutdown.has_changed().is_err() || *shutdown.borrow_and_update();
            if stop {
                self.start_drain();
                return Ok(());
            }
        }
        if now.duration_since(*tokio_pass) >= TOKIO_PASS {
            tokio::task::yield_now().await;
            *tokio_pass = Instant::now();
        }
        if self.ring.has_queued() {
            self.ring.submit_pending()?;
        }
        if self.service.prepare() {
            return Ok(());
        }
        self.ring.wait(next_tick.saturating_duration_since(now))?;
        Ok(())
    }

    /// Handles every completion and woken reply. What this queues is submitted by the
    /// caller's next wait (`Ring::wait` or `Ring::submit_pending`): under load one
    /// `io_uring_enter` per loop both sends the replies and collects the next requests.
    fn pump(&mut self) -> anyhow::Result<()> {
        for _ in 0..PUMP_ROUNDS {
            let mut batch = self.ring.completions()?;
            self.now = Instant::now();
            let mut woken = std::mem::take(&mut self.woken_batch);
            self.woken.take(&mut woken);
            let idle = batch.is_empty() && woken.is_empty();
            for cqe in batch.drain(..) {
                self.on_completion(cqe);
            }
            self.ring.recycle(batch);
            for &(idx, generation) in &woken {
                if self.conn_mut(idx, generation).is_some() {
                    self.poll_replies(idx, 0);
                    self.flush(idx);
                    self.resume(idx);
                }
            }
            self.woken_batch = woken;
            if idle {
                break;
            }
        }
        self.publish_load();
        Ok(())
    }

    /// Polls connection `idx`'s running replies from its `from`-th pending slot on.
    fn poll_replies(&mut self, idx: usize, from: usize) {
        let Some(conn) = self.conns[idx].as_mut() else {
            return;
        };
        let waker = conn
            .waker
            .get_or_insert_with(|| self.woken.waker(idx, conn.generation));
        for slot in conn.pending.iter_mut().skip(from) {
            if let SlotResponse::Running(reply) = &mut slot.response
                && let Poll::Ready(resp) = poll_reply(reply, waker)
            {
                slot.response = SlotResponse::Ready(resp);
            }
        }
    }

    fn publish_load(&mut self) {
        let now = (self.in_flight, self.stats.served);
        if let Some(load) = &self.load
            && now != self.published
        {
            load.publish(now.0, now.1);
            self.published = now;
        }
    }

    fn arm_recv(&mut self, idx: usize) {
        let Some(conn) = self.conns[idx].as_mut() else {
            return;
        };
        if conn.recv_armed || conn.phase == Phase::Closing || conn.paused {
            return;
        }
        conn.recv_armed = true;
        let entry = opcode::RecvMulti::new(Fd(conn.fd), self.bufs.group())
            .build()
            .user_data(user_data(Op::Recv, idx, conn.generation));
        self.ring.push(entry);
    }

    fn conn_mut(&mut self, idx: usize, generation: u32) -> Option<&mut Conn> {
        self.conns
            .get_mut(idx)?
            .as_mut()
            .filter(|c| c.generation == generation)
    }

    fn on_completion(&mut self, cqe: cqueue::Entry) {
        let Some((op, idx, generation)) = split_user_data(cqe.user_data()) else {
            return;
        };
        let (res, flags) = (cqe.result(), cqe.flags());
        match op {
            Op::Accept => self.on_accept_completion(res, flags),
            Op::Recv => self.on_recv(idx, generation, res, flags),
            Op::Send => self.on_send(idx, generation, res),
            // The recv's own completion (-ECANCELED) is what counts; this one says nothing new.
            Op::CancelRecv => {}
        }
    }

    fn on_recv(&mut self, idx: usize, generation: u32, res: i32, flags: u32) {
        let more = cqueue::more(flags);
        let bid = cqueue::buffer_select(flags);
        let received = bid.is_some() && res > 0;
        let live = self
            .conns
            .get_mut(idx)
            .and_then(Option::as_mut)
            .filter(|c| c.generation == generation);
        let mut taken = Taken::Data;
        if let (Some(conn), Some(bid)) = (live, bid) {
            // Straight from the ring's buffer into the connection's input (one copy), or
            // through its TLS session.
            if received && conn.phase == Phase::Open {
                let data = self.bufs.data(bid, res as usize);
                taken = conn.transport.take(
                    data,
                    &mut conn.input,
                    &mut conn.tls_out,
                    &self.counters.tls,
                );
            }
        }
        if let Some(bid) = bid {
            self.bufs.recycle(bid);
        }
        let now = self.now;
        let Some(conn) = self.conn_mut(idx, generation) else {
            return;
        };
        if !more {
            conn.recv_armed = false;
        }
        match taken {
            Taken::Data => {}
            Taken::PeerClosed => {
                self.on_peer_closed(idx);
                self.maybe_free(idx);
                return;
            }
            Taken::Failed => {
                self.on_tls_failed(idx);
                self.maybe_free(idx);
                return;
            }
        }
        let Some(conn) = self.conn_mut(idx, generation) else {
            return;
        };
        match (res, received) {
            (_, true) => {
                conn.last_activity = now;
                match conn.phase {
                    Phase::Open => self.process_input(idx),
                    // After our final response, what the peer still sends is dropped.
                    Phase::CloseAfterFlush | Phase::Lingering { .. } | Phase::Closing => {}
                }
                if !more {
                    self.arm_recv(idx);
                }
            }
            // Cancelled by `pause`. If the client caught up before the cancel landed, `resume`
            // found the recv still armed, so it is re-armed here (a no-op while still paused).
            (n, false) if n == -libc::ECANCELED => self.arm_recv(idx),
            (n, false) if n == -libc::ENOBUFS => {
                // The pool ran dry; buffers come back as other connections are served.
                self.arm_recv(idx);
            }
            (0, false) => {
                if conn.transport.mid_handshake() {
                    // A client that gave up on its handshake.
                    self.counters.tls.failed(Failure::Closed);
                }
                self.on_peer_closed(idx);
            }
            _ => self.close(idx),
        }
        self.maybe_free(idx);
    }

    /// EOF, or TLS's close_notify. A body still streaming will not be whole: its reader is
    /// told. A half-closed client still gets the responses it asked for.
    fn on_peer_closed(&mut self, idx: usize) {
        let Some(conn) = self.conns[idx].as_mut() else {
            return;
        };
        conn.decoder
            .abandon("the client closed before its body ended");
        if conn.pending.is_empty() && conn.out.is_empty() && !conn.send_in_flight {
            self.close(idx);
        } else if conn.phase == Phase::Open {
            conn.phase = Phase::CloseAfterFlush;
        }
    }

    /// The connection's TLS failed (counted by reason in `Transport::take`). Mid-handshake
    /// nothing was asked yet: the alert goes out, then the connection closes. Past it, requests
    /// may be running: closed at once, as for a reset.
    fn on_tls_failed(&mut self, idx: usize) {
        let Some(conn) = self.conns[idx].as_mut() else {
            return;
        };
        if conn.pending.is_empty() && conn.streaming.is_none() && conn.out.is_empty() {
            conn.input.clear();
            conn.phase = Phase::CloseAfterFlush;
            self.flush(idx);
        } else {
            self.close(idx);
        }
    }

    fn on_tick(&mut self) {
        self.service.maintain();
        let now = Instant::now();
        self.resume_accepting(now);
        if now.duration_since(self.date_at) >= Duration::from_millis(500) {
            self.date = httpdate::fmt_http_date(SystemTime::now());
            self.date_at = now;
        }
        for idx in 0..self.conns.len() {
            let Some(conn) = self.conns[idx].as_ref() else {
                continue;
            };
            if conn.send_in_flight
                && conn.phase != Phase::Closing
                && now.duration_since(conn.send_progress) > self.limits.send_timeout
            {
                debug!(worker = self.ctx.worker, peer = ?conn.peer, "client read nothing for the send timeout; closing");
                WorkerCounters::bump(&self.counters.slow_readers);
                self.close(idx);
                continue;
            }
            if let Some(deadline) = conn.handshake_deadline
                && now > deadline
                && conn.transport.handshaking()
            {
                debug!(worker = self.ctx.worker, peer = ?conn.peer, "TLS handshake timed out; closing");
                self.counters.tls.failed(Failure::Timeout);
                self.close(idx);
                continue;
            }
            match conn.phase {
                Phase::Open => {
                    let late = client_late(
                        &self.limits,
                        &ClientState {
                            paused: conn.paused,
                            request_started: conn.request_started,
                            in_head: conn.decoder.is_idle(),
                            body: conn.decoder.body_pace(),
                        },
                        now,
                    );
                    if let Some(late) = late {
                        debug!(worker = self.ctx.worker, peer = ?conn.peer, ?late, "client too slow; 408");
                        let counter = match late {
                            Late::Head => &self.counters.slow_heads,
                            Late::Body | Late::BodyRate | Late::Request => {
                                &self.counters.slow_bodies
                            }
                        };
                        WorkerCounters::bump(counter);
                        self.fail_with(idx, HttpError::Timeout, late.why());
                        self.flush(idx);
                    } else if conn.is_idle()
                        && now.duration_since(conn.last_activity) > self.idle_limit()
                    {
                        self.close(idx);
                    }
                }
                Phase::Lingering { until } if now > until => self.close(idx),
                _ => {}
            }
        }
    }

    /// How long an idle connection stays open: while handing over, a keep-alive connection
    /// idle for `DRAIN_IDLE_GRACE` (a busy one closes after its next response); while stopping,
    /// none (its client has nowhere else to go on this host, and waiting only delays the stop).
    fn idle_limit(&self) -> Duration {
        match self.draining {
            None => self.limits.idle_timeout,
            Some(_) if self.handover.load(std::sync::atomic::Ordering::Relaxed) => {
                DRAIN_IDLE_GRACE.min(self.limits.idle_timeout)
            }
            Some(_) => Duration::ZERO,
        }
    }

    fn start_drain(&mut self) {
        let handover = self.handover.load(std::sync::atomic::Ordering::Acquire);
        info!(worker = self.ctx.worker, handover, "draining");
        self.draining = Some(Instant::now());
        if handover {
            // The next process accepts from this same socket: only stop our own accepts.
            if self.accept_armed {
                let entry = opcode::AsyncCancel::new(user_data(Op::Accept, 0, 0))
                    .build()
                    .user_data(user_data(Op::CancelRecv, 0, 0));
                self.ring.push(entry);
            }
        } else {
            // Stop accepting: shutting our listener down removes it from the reuseport group,
            // and the armed multishot accept completes with an error.
            // SAFETY: shutting down our own listening socket.
            unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
            for idx in 0..self.conns.len() {
                if self.conns[idx]
                    .as_ref()
                    .is_some_and(|c| c.phase == Phase::Open && c.is_idle())
                {
                    self.close(idx);
                }
            }
        }
    }
}
