//! Keeps every worker running. A worker that stops while it should be serving (a panic outside
//! any one request, a ring error, a service that failed to build) is joined, its cause logged and
//! counted, and a new one started on the same CPU. The supervisor owns each CPU's listening
//! socket and lends the worker a duplicate: a restarted worker accepts from the same socket (the
//! connections queued meanwhile are not lost), and an upgrade hands the sockets to the next
//! process (`listeners`, `hand_over`).

use std::{
    net::{SocketAddr, TcpListener},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tracing::{error, info};

use super::{ServiceFactory, WorkerOptions, WorkerStats, spawn};
use crate::listener::reuseport_listener;

/// Makes worker `cpu`'s options around its new listener.
pub type OptionsFactory =
    Box<dyn Fn(u32, TcpListener) -> anyhow::Result<WorkerOptions> + Send + Sync>;
/// Registers worker `cpu`'s new listener (WORKER_SOCKETS slot, reuseport program).
pub type Register = Box<dyn Fn(u32, &TcpListener) -> anyhow::Result<()> + Send + Sync>;

/// Restarts and down-time, read by the admin endpoint.
#[derive(Debug, Default)]
pub struct SupervisorStats {
    pub restarts: AtomicU64,
    /// Workers not running right now.
    pub down: AtomicU64,
}

struct Slot {
    cpu: u32,
    listener: TcpListener,
    handle: Option<JoinHandle<anyhow::Result<WorkerStats>>>,
    /// When the last start failed, the next try is not before this.
    retry_at: Option<Instant>,
}

pub struct Supervisor {
    listen: SocketAddr,
    factory: ServiceFactory,
    options: OptionsFactory,
    register: Register,
    stop: tokio::sync::watch::Sender<bool>,
    handover: Arc<std::sync::atomic::AtomicBool>,
    slots: Vec<Slot>,
    pub stats: Arc<SupervisorStats>,
}

/// Connections a worker's listener queues before it accepts them.
const BACKLOG: i32 = 1024;
/// How long after a failed start the next is tried.
const RETRY_AFTER: Duration = Duration::from_secs(1);

impl Supervisor {
    /// Starts one worker per CPU in `cpus`, each with its own listener on `listen`.
    pub fn start(
        listen: SocketAddr,
        cpus: impl IntoIterator<Item = u32>,
        factory: ServiceFactory,
        options: OptionsFactory,
        register: Register,
    ) -> anyhow::Result<Self> {
        let listeners = cpus
            .into_iter()
            .map(|cpu| {
                reuseport_listener(listen, BACKLOG)
                    .with_context(|| format!("worker {cpu} listener"))
                    .map(|l| (cpu, l))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Self::adopt(listen, listeners, factory, options, register)
    }

    /// Starts one worker per (CPU, listener): listeners made here, or received from the
    /// process this one takes over from.
    pub fn adopt(
        listen: SocketAddr,
        listeners: Vec<(u32, TcpListener)>,
        factory: ServiceFactory,
        options: OptionsFactory,
        register: Register,
    ) -> anyhow::Result<Self> {
        let (stop, _) = tokio::sync::watch::channel(false);
        let mut me = Self {
            listen,
            factory,
            options,
            register,
            stop,
            handover: Arc::default(),
            slots: Vec::new(),
            stats: Arc::default(),
        };
        for (cpu, listener) in listeners {
            let handle = me.start_one(cpu, &listener)?;
            me.slots.push(Slot {
                cpu,
                listener,
                handle: Some(handle),
                retry_at: None,
            });
        }
        Ok(me)
    }

    /// The address the workers listen on.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// Each worker's CPU and listening socket, to pass to the next process.
    pub fn listeners(&self) -> Vec<(u32, std::os::fd::BorrowedFd<'_>)> {
        use std::os::fd::AsFd as _;
        self.slots
            .iter()
            .map(|s| (s.cpu, s.listener.as_fd()))
            .collect()
    }

    fn start_one(
        &self,
        cpu: u32,
        listener: &TcpListener,
    ) -> anyhow::Result<JoinHandle<anyhow::Result<WorkerStats>>> {
        (self.register)(cpu, listener).with_context(|| format!("registering worker {cpu}"))?;
        let lent = listener
            .try_clone()
            .with_context(|| format!("duplicating worker {cpu}'s listener"))?;
        let mut opts = (self.options)(cpu, lent)?;
        opts.handover = self.handover.clone();
        spawn(opts, self.factory.clone(), self.stop.subscribe())
            .with_context(|| format!("starting worker {cpu}"))
    }

    /// Restarts the workers that stopped; returns how many are down after this pass. Call it
    /// every second or so.
    pub fn check(&mut self) -> usize {
        if *self.stop.borrow() {
            return 0;
        }
        let now = Instant::now();
        for i in 0..self.slots.len() {
            let cpu = self.slots[i].cpu;
            if let Some(h) = self.slots[i].handle.take_if(|h| h.is_finished()) {
                let cause = match h.join() {
                    Ok(Ok(_)) => "stopped without being asked".to_owned(),
                    Ok(Err(e)) => format!("{e:#}"),
                    Err(panic) => format!("panicked: {}", crate::panic_text(&*panic)),
                };
                error!(worker = cpu, cause = %cause, "worker stopped; restarting it");
            }
            let slot = &mut self.slots[i];
            if slot.handle.is_some() || slot.retry_at.is_some_and(|t| now < t) {
                continue;
            }
            match self.start_one(cpu, &self.slots[i].listener) {
                Ok(h) => {
                    let slot = &mut self.slots[i];
                    slot.handle = Some(h);
                    slot.retry_at = None;
                    self.stats.restarts.fetch_add(1, Ordering::Relaxed);
                    info!(worker = cpu, "worker restarted");
                }
                Err(e) => {
                    error!(worker = cpu, error = %format!("{e:#}"), "restarting worker failed; will retry");
                    self.slots[i].retry_at = Some(now + RETRY_AFTER);
                }
            }
        }
        let down = self.slots.iter().filter(|s| s.handle.is_none()).count();
        self.stats.down.store(down as u64, Ordering::Relaxed);
        down
    }

    /// Drains every worker after another process took their listeners over: they stop
    /// accepting (the sockets stay open for the new process), finish what they have, and close.
    pub fn hand_over(self) -> Vec<anyhow::Result<WorkerStats>> {
        self.handover
            .store(true, std::sync::atomic::Ordering::Release);
        self.stop()
    }

    /// Drains every worker (in-flight requests finish) and waits for them.
    pub fn stop(self) -> Vec<anyhow::Result<WorkerStats>> {
        let _ = self.stop.send(true);
        self.slots
            .into_iter()
            .filter_map(|s| s.handle)
            .map(|h| {
                h.join().unwrap_or_else(|panic| {
                    Err(anyhow::anyhow!(
                        "worker panicked: {}",
                        crate::panic_text(&*panic)
                    ))
                })
            })
            .collect()
    }
}
