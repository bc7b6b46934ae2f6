//! Shared-nothing workers: one thread per CPU, pinned, each with its own io_uring ring, its own
//! SO_REUSEPORT listener and its own service (app runtime), so the request path takes no lock
//! shared between workers.
//!
//! Why this shape: the raw `io-uring` crate with multishot accept and multishot recv into a
//! ring-mapped buffer pool served 20-25% more requests per CPU here than nginx or tokio-uring
//! (PLATFORM.md). Apps run in wasmtime-wasi-http, whose outgoing HTTP client needs a tokio runtime
//! on the thread. So each worker thread runs a current-thread tokio runtime, and the ring is one of
//! its event sources: completions signal an eventfd registered with the ring, which tokio polls
//! next to its timers and the replies' subrequests. While no reply waits on tokio, the worker sleeps
//! in the ring itself, and replies are polled in place by the worker (`wake` says why). SQPOLL is
//! off (its thread cost a third of throughput on two cores). DEFER_TASKRUN is on: the kernel runs
//! completion work when this thread enters the ring, in one batch, and still signals the eventfd
//! when such work is queued, so a worker asleep in tokio's epoll wakes for it.

mod bufring;
mod conn;
mod deadlines;
mod event_loop;
pub mod load;
mod ring;
pub mod supervisor;
mod transport;
mod wake;

use std::{
    future::Future,
    net::TcpListener,
    os::fd::OwnedFd,
    pin::Pin,
    rc::Rc,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use tracing::warn;

use crate::http::{HttpLimits, Request, Response, request_body::RequestBody};

/// What a service returns for a request: an answer now, or a future the worker runs on its
/// thread while it keeps serving other connections.
pub enum Reply {
    Now(Response),
    Later(Pin<Box<dyn Future<Output = Response>>>),
}

pub struct RequestContext {
    pub worker: u32,
    /// The client's address (the connection's peer).
    pub peer: Option<std::net::SocketAddr>,
    /// The connection is a peer datacenter's over mutual TLS (its certificate verified
    /// against the fleet's CA).
    pub peer_tls: bool,
    /// The body of a request that went on before its body arrived (`take_body`): `req.body`
    /// is then empty.
    pub body: std::cell::Cell<Option<RequestBody>>,
}

impl RequestContext {
    /// The streamed body of the request now being called, if it has one; a service that does
    /// not take it leaves it to be read and dropped.
    pub fn take_body(&self) -> Option<RequestBody> {
        self.body.take()
    }
}

/// Turns requests into replies; one instance per worker, never shared across threads.
pub trait Service {
    fn call(&self, req: Request, ctx: &RequestContext) -> Reply;
    /// Called between requests every tick (100 ms), on the worker's thread: where a service
    /// picks up a reload.
    fn maintain(&self) {}
    /// Called when the worker has nothing else to do: a service may do work ahead (an instance
    /// for the next request). Returns whether it did some; the worker then looks at its ring
    /// before asking again.
    fn prepare(&self) -> bool {
        false
    }
    /// The TLS configuration new connections get (None: plain HTTP only). Asked once per
    /// connection, at accept.
    fn tls(&self) -> Option<Arc<crate::tls::peer::WorkerTls>> {
        None
    }
}

/// Builds each worker's service on the worker's own thread.
pub type ServiceFactory = Arc<dyn Fn(u32) -> anyhow::Result<Rc<dyn Service>> + Send + Sync>;

pub struct WorkerOptions {
    /// The worker's CPU and its index in WORKER_SOCKETS / WORKER_LOAD.
    pub cpu: u32,
    /// Pin the thread to `cpu`, where XDP steers the worker's flows. Off leaves placement to
    /// the scheduler, which wins when other busy processes share the CPUs (a local load
    /// generator on a small machine).
    pub pin: bool,
    pub listener: TcpListener,
    pub limits: HttpLimits,
    /// WORKER_LOAD's map fd, to publish in-flight counts (None: do not publish).
    pub load_map: Option<OwnedFd>,
    pub ring_entries: u32,
    /// Receive buffers in the pool (a power of two) and their size.
    pub recv_buffers: u16,
    pub recv_buffer_size: usize,
    /// How long a draining worker waits for in-flight requests.
    pub drain_timeout: Duration,
    pub counters: Arc<WorkerCounters>,
    /// Set before stopping when the listener is handed to another process (see
    /// `supervisor::Supervisor::hand_over`).
    pub handover: Arc<std::sync::atomic::AtomicBool>,
}

impl WorkerOptions {
    pub fn new(cpu: u32, listener: TcpListener) -> Self {
        Self {
            cpu,
            pin: true,
            listener,
            limits: HttpLimits::default(),
            load_map: None,
            ring_entries: 1024,
            recv_buffers: 1024,
            recv_buffer_size: 4096,
            drain_timeout: Duration::from_secs(10),
            counters: Arc::default(),
            handover: Arc::default(),
        }
    }
}

/// Counters of rare events, shared with the admin endpoint while the worker runs (and kept
/// across a restart of the worker on the same CPU).
#[derive(Debug, Default)]
pub struct WorkerCounters {
    /// Requests whose handling panicked (answered 500, connection closed).
    pub panics: AtomicU64,
    /// Accepts that failed for want of descriptors or memory (EMFILE, ENFILE, ENOBUFS,
    /// ENOMEM): accepting pauses, then resumes on a timer.
    pub accept_errors: AtomicU64,
    /// Connections closed at once because the worker had `max_connections` open.
    pub connections_refused: AtomicU64,
    /// Connections closed because the client read none of its responses for `send_timeout`.
    pub slow_readers: AtomicU64,
    /// Requests answered 408 because their head was not whole within `header_timeout`.
    pub slow_heads: AtomicU64,
    /// Requests failed because the client sent none of the body its reader waited for within
    /// `body_timeout` (or was not done by an operator's `request_timeout`).
    pub slow_bodies: AtomicU64,
    pub tls: crate::tls::counters::TlsCounters,
    /// Instances prepared ahead by this worker's runtime (`wasm::prepared`).
    pub prepared: Arc<crate::wasm::PreparedCounters>,
}

impl WorkerCounters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counters a worker returns when it stops.
#[derive(Clone, Copy, Debug, Default)]
pub struct WorkerStats {
    pub accepted: u64,
    pub served: u64,
    pub bad_requests: u64,
}

/// Starts a worker thread; it runs until `shutdown` turns true, then drains.
pub fn spawn(
    opts: WorkerOptions,
    factory: ServiceFactory,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<std::thread::JoinHandle<anyhow::Result<WorkerStats>>> {
    std::thread::Builder::new()
        .name(format!("edge-worker-{}", opts.cpu))
        .spawn(move || {
            if opts.pin {
                pin_to_cpu(opts.cpu);
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async move {
                let service = factory(opts.cpu)
                    .with_context(|| format!("building worker {}'s service", opts.cpu))?;
                let worker = event_loop::Worker::new(opts, service)?;
                worker.run(shutdown).await
            })
        })
}

fn pin_to_cpu(cpu: u32) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET stays within it for cpu < CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            warn!(cpu, error = %std::io::Error::last_os_error(), "could not pin worker");
        }
    }
}
