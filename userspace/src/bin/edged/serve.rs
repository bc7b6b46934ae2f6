//! Phase 5, serve: the listeners offered to a successor, the predecessor told to drain, systemd
//! told edged is ready; then, until SIGTERM, SIGINT or a successor takes over: workers that
//! stopped are restarted, SIGHUP and `POST /reload` reload, SIGUSR2 and `POST /upgrade` start a
//! successor.

use std::sync::{Arc, Mutex, atomic::Ordering};

use anyhow::Context as _;
use edgeplane::{
    Dataplane,
    daemon::{self, Daemon},
    server::Workers,
    upgrade::{self, Handover, Inherited},
};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
};
use tracing::{info, warn};

use crate::control_plane::ControlPlane;

/// How soon a worker that stopped is restarted.
const SUPERVISE_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

pub struct Running {
    pub dp: Dataplane,
    pub workers: Option<Workers>,
    pub control: ControlPlane,
    /// Where a successor that took the listeners says so (its pid).
    handed_rx: mpsc::Receiver<u32>,
}

/// Callers of `POST /upgrade` waiting for the successor's outcome.
type Waiting = Vec<oneshot::Sender<Result<upgrade::Upgraded, String>>>;

impl Running {
    /// Offers the listeners to successors, finishes a takeover (the predecessor drains and this
    /// edged's upgrade socket takes the usual path) and tells systemd edged is ready.
    pub fn announce(
        dp: Dataplane,
        workers: Option<Workers>,
        control: ControlPlane,
        inherited: Option<Inherited>,
        handover: Handover,
    ) -> anyhow::Result<Self> {
        let (handed_tx, handed_rx) = mpsc::channel::<u32>(1);
        // What a successor receives: each worker's listener, then the admin listener (none
        // without workers: there is nothing to take over).
        let offer = match &workers {
            Some(w) => {
                let (cpus, mut fds): (Vec<u32>, Vec<_>) = w.listeners()?.into_iter().unzip();
                fds.push(control.admin.listener()?);
                let offer = upgrade::Offer {
                    pid: std::process::id(),
                    listen: w.listen,
                    cpus,
                    admin: true,
                };
                Some((offer, fds))
            }
            None => None,
        };
        if let Some(inherited) = inherited {
            let from = inherited.offer.pid;
            inherited.ready()?;
            let socket = &control.upgrade_socket;
            std::fs::rename(handover.path(), socket)
                .with_context(|| format!("taking over {}", socket.display()))?;
            info!(from, "took over; the old edged drains");
        }
        upgrade::notify_systemd_ready();
        handover.serve(offer, handed_tx)?;
        Ok(Self {
            dp,
            workers,
            control,
            handed_rx,
        })
    }

    /// Serves until told to stop (None) or until a successor took the listeners (its pid).
    /// Either way the admin endpoint reports stopping from then on.
    pub async fn serve(&mut self) -> anyhow::Result<Option<u32>> {
        let mut term = signal(SignalKind::terminate())?;
        let mut hangup = signal(SignalKind::hangup())?;
        let mut usr2 = signal(SignalKind::user_defined2())?;
        let mut tick = tokio::time::interval(SUPERVISE_EVERY);
        let mut successor: Option<upgrade::Successor> = None;
        let mut waiting: Waiting = vec![];
        let daemon = self.control.daemon.clone();
        let handed_to = loop {
            tokio::select! {
                _ = term.recv() => { info!("SIGTERM: draining"); break None }
                _ = tokio::signal::ctrl_c() => { info!("SIGINT: draining"); break None }
                _ = tick.tick() => {
                    if let Some(w) = &mut self.workers {
                        w.supervise();
                    }
                    check_successor(&mut successor, &mut waiting);
                }
                _ = hangup.recv() => {
                    info!("SIGHUP: reloading the configuration");
                    // The outcome is logged by the reload itself, or here when refused.
                    let _ = run_reload(&daemon).await;
                }
                Some(reply) = self.control.reload_rx.recv() => {
                    let outcome = run_reload(&daemon).await;
                    let _ = reply.send(outcome.map_err(|e| format!("{e:#}")));
                }
                _ = usr2.recv() => {
                    info!("SIGUSR2: upgrading");
                    start_successor(&mut successor);
                }
                Some(reply) = self.control.upgrade_rx.recv() => {
                    if start_successor(&mut successor) {
                        waiting.push(reply);
                    } else {
                        let _ = reply.send(Err("could not start the new edged; see its log".into()));
                    }
                }
                Some(pid) = self.handed_rx.recv() => break Some(pid),
            }
        };
        self.control.stopping.store(true, Ordering::Relaxed);
        if let Some(pid) = handed_to {
            for reply in waiting.drain(..) {
                let _ = reply.send(Ok(upgrade::Upgraded {
                    old_pid: std::process::id(),
                    new_pid: pid,
                }));
            }
            self.control.admin.stop();
        }
        Ok(handed_to)
    }
}

/// A successor that failed to start is forgotten (this edged keeps serving) and its waiting
/// callers told why.
fn check_successor(successor: &mut Option<upgrade::Successor>, waiting: &mut Waiting) {
    if let Some(s) = successor
        && let Some(why) = s.failed()
    {
        warn!(error = %why, "upgrade failed; still serving");
        for reply in waiting.drain(..) {
            let _ = reply.send(Err(why.clone()));
        }
        *successor = None;
    }
}

/// Starts the successor unless one is starting; whether one is starting now.
fn start_successor(successor: &mut Option<upgrade::Successor>) -> bool {
    if successor.is_some() {
        return true;
    }
    match upgrade::Successor::spawn() {
        Ok(s) => {
            *successor = Some(s);
            true
        }
        Err(e) => {
            warn!(error = %format!("{e:#}"), "could not start the new edged");
            false
        }
    }
}

/// One reload at a time, off the main task (it compiles and waits for the workers).
async fn run_reload(daemon: &Arc<Mutex<Daemon>>) -> anyhow::Result<daemon::ReloadReport> {
    let daemon = daemon.clone();
    let outcome = tokio::task::spawn_blocking(move || edgeplane_dataplane::lock(&daemon).reload())
        .await
        .map_err(|e| anyhow::anyhow!("reload task: {e}"))
        .and_then(|r| r);
    if let Err(e) = &outcome {
        warn!(error = %format!("{e:#}"), "reload refused; the configuration in effect stays");
    }
    outcome
}
