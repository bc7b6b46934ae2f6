//! WAN delay on a namespace's link, without netem (this kernel has none).
//!
//! Netfilter hands every packet leaving the link's interface to an NFQUEUE (iptables' NFQUEUE
//! target: this kernel's nftables has no `queue` statement); a thread inside that
//! namespace holds each packet for the link's one-way delay, then accepts it. Every packet pays
//! the delay, handshakes and ACKs included, so TCP sees the RTT a real WAN link would give. A
//! link's delay is constant, so packets leave in arrival order: a FIFO is the whole scheduler.
//! Without `bypass` on the queue rule, a dead delayer drops traffic instead of silently
//! removing the delay.

use std::{
    collections::VecDeque,
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::netns::Netns;

mod nfqueue;
use nfqueue::NfQueue;

/// Delays every packet that leaves `iface` in a namespace; removed on drop.
pub struct WanDelay {
    ns_name: String,
    /// The iptables rule, as `-A`/`-D` arguments after the chain.
    rule: Vec<String>,
    stop: Arc<AtomicBool>,
    delayed: Arc<AtomicU64>,
    /// The current one-way delay in nanoseconds; changeable while running.
    one_way_ns: Arc<AtomicU64>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl WanDelay {
    /// Starts delaying packets leaving `iface` in `ns` by `one_way`, through NFQUEUE `queue`
    /// (unique per namespace).
    pub fn start(ns: &Netns, iface: &str, queue: u16, one_way: Duration) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let delayed = Arc::new(AtomicU64::new(0));
        let one_way_ns = Arc::new(AtomicU64::new(one_way.as_nanos() as u64));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let path = format!("/run/netns/{}", ns.name());
        let netns = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        let thread = {
            let (stop, delayed, one_way) = (stop.clone(), delayed.clone(), one_way_ns.clone());
            std::thread::Builder::new()
                .name(format!("wan-{iface}"))
                .spawn(move || -> anyhow::Result<()> {
                    // Timer slack (50 us by default) would add to every packet's delay.
                    // SAFETY: prctl on the calling thread with an integer argument.
                    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
                    // SAFETY: a valid netns fd; affects this thread only.
                    if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        let e = std::io::Error::last_os_error();
                        let _ = ready_tx.send(Err(format!("setns: {e}")));
                        bail!("setns: {e}");
                    }
                    let queue = match NfQueue::bind(queue, QUEUE_MAX_LEN) {
                        Ok(q) => q,
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("binding NFQUEUE {queue}: {e}")));
                            return Err(e.into());
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    run(queue, &one_way, &stop, &delayed)
                })?
        };
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("WAN delay on {iface} in {}: {e}", ns.name()),
            Err(_) => bail!("WAN delay thread for {iface} died during set-up"),
        }
        let rule: Vec<String> = [
            "-o",
            iface,
            "-j",
            "NFQUEUE",
            "--queue-num",
            &queue.to_string(),
        ]
        .map(String::from)
        .to_vec();
        let me = Self {
            ns_name: ns.name().to_owned(),
            rule,
            stop,
            delayed,
            one_way_ns,
            thread: Some(thread),
        };
        for tool in ["iptables", "ip6tables"] {
            iptables(ns.name(), tool, "-A", &me.rule)
                .with_context(|| format!("queueing {iface}'s egress"))?;
        }
        Ok(me)
    }

    /// Changes the delay for packets queued from now on (a link getting slower or faster).
    pub fn set_one_way(&self, one_way: Duration) {
        self.one_way_ns
            .store(one_way.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Packets delayed so far.
    pub fn delayed(&self) -> u64 {
        self.delayed.load(Ordering::Relaxed)
    }
}

impl Drop for WanDelay {
    fn drop(&mut self) {
        // Rules first: once they are gone nothing new is queued, then the thread releases the
        // rest.
        for tool in ["iptables", "ip6tables"] {
            let _ = iptables(&self.ns_name, tool, "-D", &self.rule);
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn iptables(ns: &str, tool: &str, op: &str, rule: &[String]) -> anyhow::Result<()> {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .args([tool, "-w", "-t", "mangle", op, "POSTROUTING"])
        .args(rule)
        .output()
        .with_context(|| format!("running {tool} (apt-get install iptables)"))?;
    if !out.status.success() {
        bail!(
            "{tool} {op} {}: {}",
            rule.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Median TCP connect time from inside `from` to `to` over `samples` connects: one RTT of the
/// path, handshake included.
pub fn median_connect_time(
    from: &Netns,
    to: std::net::SocketAddr,
    samples: usize,
) -> anyhow::Result<Duration> {
    anyhow::ensure!(samples > 0, "at least one sample");
    let mut times = from.run(|| {
        (0..samples)
            .map(|_| {
                let start = Instant::now();
                let s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5))
                    .with_context(|| format!("connecting to {to} from {}", from.name()))?;
                let took = start.elapsed();
                drop(s);
                Ok(took)
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })??;
    times.sort();
    Ok(times[samples / 2])
}

/// Packets a link may hold at once (in flight over the emulated WAN).
const QUEUE_MAX_LEN: u32 = 65_536;

/// Holds each packet for `one_way`, then accepts it; returns when `stop` is set.
fn run(
    mut queue: NfQueue,
    one_way_ns: &AtomicU64,
    stop: &AtomicBool,
    delayed: &AtomicU64,
) -> anyhow::Result<()> {
    let mut held: VecDeque<(Instant, u32)> = VecDeque::new();
    let mut ids = Vec::new();
    loop {
        queue.read_ids(&mut ids).context("reading NFQUEUE")?;
        let arrived = Instant::now();
        let one_way = Duration::from_nanos(one_way_ns.load(Ordering::Relaxed));
        held.extend(ids.drain(..).map(|id| (arrived + one_way, id)));
        let now = Instant::now();
        let stopping = stop.load(Ordering::Relaxed);
        // Every packet due by now leaves in one batch verdict (ids grow in queue order).
        let mut last_due = None;
        while let Some(&(due, id)) = held.front() {
            if due > now && !stopping {
                break;
            }
            last_due = Some(id);
            held.pop_front();
            delayed.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(id) = last_due {
            queue.accept_through(id).context("NFQUEUE verdict")?;
        }
        if stopping && held.is_empty() {
            return Ok(());
        }
        // Sleep until the next packet is due or a new one is queued; at most 20 ms, so a stop
        // request is seen.
        let wait = held
            .front()
            .map_or(Duration::from_millis(20), |(due, _)| {
                due.saturating_duration_since(Instant::now())
            })
            .min(Duration::from_millis(20));
        let ts = libc::timespec {
            tv_sec: wait.as_secs() as libc::time_t,
            tv_nsec: wait.subsec_nanos() as libc::c_long,
        };
        let mut pfd = libc::pollfd {
            fd: queue.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd and timespec on the stack.
        unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
    }
}
