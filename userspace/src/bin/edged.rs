//! edged: one datacenter's data plane daemon. Loads the kernel programs, pins their maps, applies
//! the configuration, attaches XDP, and detaches cleanly on SIGTERM/SIGINT. SIGHUP (or `edgectl
//! reload`) reloads the configuration while serving; SIGUSR2 (or `edgectl upgrade`) starts the
//! binary at edged's path again, which takes the listeners over (`--takeover`) while this one
//! drains and exits.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use std::sync::Arc;

use edgeplane::{
    Dataplane, LoadOptions, PinnedMaps, XdpAttachMode,
    admin::{self, AdminState, ReloadRequest, UpgradeRequest},
    config::EdgedConfig,
    daemon::{self, Daemon},
    fleet::{
        PeerMeasurements,
        agent::{Agent, FleetHandle},
        measurer::Measurer,
    },
    reconcile, reload, server,
    upgrade::{self, Handover},
};
use edgeplane_placement::EngineApps;
use tracing::{info, warn};

#[derive(Parser)]
#[command(name = "edged", version, about = "edgeplane data plane daemon")]
struct Cli {
    /// TOML configuration (defaults apply without one).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Attach XDP to this interface (repeatable; adds to the config's list).
    #[arg(long = "iface")]
    interfaces: Vec<String>,
    /// XDP attach mode (overrides the config).
    #[arg(long)]
    xdp_mode: Option<XdpAttachMode>,
    /// Pin directory (overrides the config).
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    /// Remove the pinned maps on exit (default: keep them, so counters survive a restart).
    #[arg(long)]
    unpin_on_exit: bool,
    /// Take over from the edged running with this configuration's `server.upgrade_socket`:
    /// its listening sockets, XDP links and pinned maps, without dropping a connection.
    #[arg(long)]
    takeover: bool,
    #[command(subcommand)]
    command: Option<EdgedCmd>,
}

#[derive(clap::Subcommand)]
enum EdgedCmd {
    /// Ask the running edged to start the binary installed at its path, which takes its
    /// listening sockets, XDP links and maps over while it drains; waits until the new one
    /// serves (as `edgectl upgrade` and SIGUSR2 do).
    Upgrade {
        /// The running edged's admin endpoint (default: the configuration's `server.admin`).
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
    },
}

/// `edged upgrade`: `POST /upgrade` on the running edged's admin endpoint.
async fn ask_upgrade(admin: std::net::SocketAddr) -> anyhow::Result<()> {
    use edgeplane_dataplane::client::oneshot::{Once, send};
    let mut ask = Once::get("/upgrade", "edged", 1 << 16)?;
    ask.method = http::Method::POST;
    let answer = send(admin, ask, std::time::Duration::from_secs(300))
        .await
        .with_context(|| format!("asking the edged at {admin} to upgrade"))?;
    let body = String::from_utf8_lossy(&answer.body);
    anyhow::ensure!(answer.status == 200, "{}", body.trim_end());
    println!("{}", body.trim_end());
    Ok(())
}

/// Starts the placement engine when this edged is a datacenter; its app list is `apps`, which a
/// reload replaces.
fn start_placement_engine(
    cfg: &EdgedConfig,
    maps: &PinnedMaps,
    workers: &server::Workers,
    apps: &EngineApps,
    fleet_view: Option<PeerMeasurements>,
    peer_asks: Arc<std::sync::atomic::AtomicU64>,
) -> anyhow::Result<Option<edgeplane_placement::PlacementStatus>> {
    let Some(handoff) = workers.handoff.clone() else {
        return Ok(None);
    };
    *edgeplane_dataplane::lock(apps) = daemon::engine_apps(cfg, maps, &handoff)?;
    let engine = edgeplane::placement::Engine {
        cfg: Default::default(),
        handoff,
        maps: maps.clone(),
        apps: apps.clone(),
        observations: workers.observations.clone(),
        metrics: workers.metrics.clone(),
        fleet: fleet_view.map(|view| {
            edgeplane::placement::StreamedMeasurements::new(
                view,
                cfg.control
                    .as_ref()
                    .map_or(std::time::Duration::from_secs(1), |c| c.heartbeat),
            )
        }),
        peer_asks,
    };
    Ok(Some(engine.spawn()?))
}

// A wasm request makes about 60 allocations (most inside wasmtime-wasi-http), two of them past
// glibc's per-thread cache (the reply's future, about 2.4 KB, and a 1 KB block), and freeing those
// sends glibc through malloc_consolidate. With mimalloc, reused-instance requests per CPU-second
// rose 7.8% (6 interleaved pairs, bench/README.md); static routes did not change.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    upgrade::record_invocation();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let mut cfg = match &cli.config {
        Some(path) => EdgedConfig::load(path)?,
        None => EdgedConfig::default(),
    };
    // On the fleet: the file composed with the fleet's last state applied (the snapshot), so
    // edged serves what it served before even when NATS is away.
    let fleet = match (&cfg.control, &cli.config) {
        (Some(control), Some(path)) => {
            let handle = FleetHandle::open(control, &cfg.runtime.cache_dir)?;
            if !handle.snapshot.exists()
                && let Some(state) = edgeplane::fleet::agent::first_state(
                    control,
                    &cfg.runtime.cache_dir,
                    std::time::Duration::from_secs(5),
                )
                .await
            {
                *edgeplane_dataplane::lock(&handle.wanted) = state;
            }
            let base = path.parent().unwrap_or(std::path::Path::new("."));
            cfg = EdgedConfig::read_relative_to(&handle.compose_from(path)?, base)?.0;
            Some(Arc::new(handle))
        }
        _ => None,
    };
    cfg.xdp.interfaces.extend(cli.interfaces.iter().cloned());
    if let Some(mode) = cli.xdp_mode {
        cfg.xdp.mode = mode;
    }
    if let Some(dir) = &cli.pin_dir {
        cfg.pin_dir = dir.clone();
    }
    if let Some(EdgedCmd::Upgrade { admin }) = cli.command {
        return ask_upgrade(admin.unwrap_or(cfg.server.admin)).await;
    }

    // Taking over: the old edged's listeners first, so nothing here binds what it holds.
    let mut inherited = match cli.takeover {
        true => Some(upgrade::take_over(&cfg.upgrade_socket())?),
        false => None,
    };
    let handover = Handover::bind(&match &inherited {
        // Renamed over the old one's path once this edged serves.
        Some(_) => cfg
            .upgrade_socket()
            .with_extension(format!("{}", std::process::id())),
        None => cfg.upgrade_socket(),
    })?;

    let mut dp = Dataplane::load(&LoadOptions {
        pin_dir: cfg.pin_dir.clone(),
    })?;
    let maps = dp.maps()?;
    let count = daemon::worker_count(&cfg);
    let plan = reconcile::plan(None, &cfg, &maps.list_apps()?)?;
    reconcile::apply(&maps, &plan, &cfg, count)?;
    info!(
        workers = count,
        steer = cfg.workers.steer,
        "maps configured"
    );
    // Compiled (or loaded from the code cache) before XDP changes hands.
    let reload::Prepared { cfg, specs } = reload::prepare_config(cfg)?;
    for iface in &cfg.xdp.interfaces {
        dp.attach_xdp(iface, cfg.xdp.mode)?;
    }
    let listeners = inherited.as_mut().map(|i| std::mem::take(&mut i.listeners));
    let mut workers = server::start(&cfg, &dp, &maps, count, specs, listeners)?;
    let (metrics, observations, residency, counters) = match &workers {
        Some(w) => (
            w.metrics.clone(),
            w.observations.clone(),
            w.residency.clone(),
            w.counters.clone(),
        ),
        None => (vec![], vec![], vec![], vec![]),
    };
    let engine_apps = EngineApps::default();
    let fleet_view = fleet.as_ref().map(|_| PeerMeasurements::default());
    let peer_asks = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let placement = match &workers {
        Some(w) => start_placement_engine(
            &cfg,
            &maps,
            w,
            &engine_apps,
            fleet_view.clone(),
            peer_asks.clone(),
        )?,
        None => None,
    };
    let supervisor = workers
        .as_ref()
        .map(|w| w.supervisor_stats())
        .unwrap_or_default();
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let live = workers.as_ref().map(|w| w.live.clone());
    let (reload_tx, mut reload_rx) = tokio::sync::mpsc::channel::<ReloadRequest>(4);
    let (upgrade_tx, mut upgrade_rx) = tokio::sync::mpsc::channel::<UpgradeRequest>(4);
    let admin_state = Arc::new(AdminState {
        maps: maps.clone(),
        metrics,
        observations,
        residency,
        placement: placement.clone(),
        workers: supervisor,
        worker_counters: counters,
        stopping: stopping.clone(),
        live: live.clone(),
        reload: Some(reload_tx.clone()),
        upgrade: Some(upgrade_tx),
        access_log_dropped: workers.as_ref().and_then(|w| w.access_log_dropped.clone()),
        peer_asks,
        fleet_view: fleet_view.clone(),
    });
    let admin = match inherited.as_mut().and_then(|i| i.admin.take()) {
        Some(listener) => admin::serve_on(listener, admin_state)?,
        None => admin::serve(cfg.server.admin, admin_state)?,
    };
    let pin_dir = cfg.pin_dir.clone();
    let upgrade_socket = cfg.upgrade_socket();
    info!(pin_dir = %pin_dir.display(), interfaces = ?cfg.xdp.interfaces, admin = %admin.addr, "edged ready");
    let targets = Arc::new(std::sync::Mutex::new(
        fleet
            .as_ref()
            .map(|h| edgeplane::fleet::backends_of(&edgeplane_dataplane::lock(&h.wanted)))
            .unwrap_or_default(),
    ));
    if let Some(control) = &cfg.control {
        // TLS files that do not read stop the start here, rather than every reconnect later.
        edgeplane::fleet::client::NatsTarget::of(control).context("[control] tls")?;
    }
    let measurer = match (
        &cfg.control,
        workers.as_ref().and_then(|w| w.handoff.clone()),
    ) {
        (Some(control), Some(handoff)) => Some(Measurer {
            control: control.clone(),
            datacenter: cfg
                .datacenter
                .as_ref()
                .map_or_else(|| "standalone".to_owned(), |d| d.name.clone()),
            every: control.heartbeat,
            handoff,
            metrics: workers
                .as_ref()
                .map(|w| w.metrics.clone())
                .unwrap_or_default(),
            maps: maps.clone(),
            targets: targets.clone(),
            view: fleet_view.clone().unwrap_or_default(),
            requests_seen: Default::default(),
        }),
        _ => None,
    };
    let agent = match (&fleet, &cfg.control) {
        (Some(handle), Some(control)) => Some(Agent {
            control: control.clone(),
            datacenter: cfg
                .datacenter
                .as_ref()
                .map_or_else(|| "standalone".to_owned(), |d| d.name.clone()),
            handle: handle.clone(),
            cache_dir: cfg.runtime.cache_dir.clone(),
            reload: reload_tx.clone(),
            status: placement.clone(),
            applied: edgeplane_dataplane::lock(&handle.wanted).clone(),
            last_error: None,
            targets: targets.clone(),
            refused: None,
        }),
        _ => None,
    };
    let mut daemon = Daemon {
        config_path: cli.config.clone(),
        cfg,
        maps: maps.clone(),
        workers: count,
        live,
        handoff: workers.as_ref().and_then(|w| w.handoff.clone()),
        engine_apps,
        fleet,
        fleet_pins: Default::default(),
    };
    daemon.apply_fleet_pins();
    let daemon = Arc::new(std::sync::Mutex::new(daemon));
    if let Some(agent) = agent {
        tokio::spawn(agent.run());
    }
    if let Some(measurer) = measurer {
        tokio::spawn(measurer.run());
    }

    // Successors take the listeners from here.
    let (handed_tx, mut handed_rx) = tokio::sync::mpsc::channel::<u32>(1);
    // What a successor receives: each worker's listener, then the admin listener (none
    // without workers: there is nothing to take over).
    let offer = match &workers {
        Some(w) => {
            let (cpus, mut fds): (Vec<u32>, Vec<_>) = w.listeners()?.into_iter().unzip();
            fds.push(admin.listener()?);
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
        std::fs::rename(handover.path(), &upgrade_socket)
            .with_context(|| format!("taking over {}", upgrade_socket.display()))?;
        info!(from, "took over; the old edged drains");
    }
    upgrade::notify_systemd_ready();
    handover.serve(offer, handed_tx)?;

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut usr2 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2())?;
    // How soon a worker that stopped is restarted.
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
    let mut successor: Option<upgrade::Successor> = None;
    let mut waiting: Vec<tokio::sync::oneshot::Sender<Result<upgrade::Upgraded, String>>> = vec![];
    let handed_to = loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: draining"); break None }
            _ = tokio::signal::ctrl_c() => { info!("SIGINT: draining"); break None }
            _ = tick.tick() => {
                if let Some(w) = &mut workers {
                    w.supervise();
                }
                if let Some(s) = &mut successor
                    && let Some(why) = s.failed()
                {
                    warn!(error = %why, "upgrade failed; still serving");
                    for reply in waiting.drain(..) {
                        let _ = reply.send(Err(why.clone()));
                    }
                    successor = None;
                }
            }
            _ = hangup.recv() => {
                info!("SIGHUP: reloading the configuration");
                // The outcome is logged by the reload itself, or here when refused.
                let _ = run_reload(&daemon).await;
            }
            Some(reply) = reload_rx.recv() => {
                let outcome = run_reload(&daemon).await;
                let _ = reply.send(outcome.map_err(|e| format!("{e:#}")));
            }
            _ = usr2.recv() => {
                info!("SIGUSR2: upgrading");
                start_successor(&mut successor);
            }
            Some(reply) = upgrade_rx.recv() => {
                if start_successor(&mut successor) {
                    waiting.push(reply);
                } else {
                    let _ = reply.send(Err("could not start the new edged; see its log".into()));
                }
            }
            Some(pid) = handed_rx.recv() => break Some(pid),
        }
    };
    stopping.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(pid) = handed_to {
        for reply in waiting.drain(..) {
            let _ = reply.send(Ok(upgrade::Upgraded {
                old_pid: std::process::id(),
                new_pid: pid,
            }));
        }
        admin.stop();
    }
    if let Some(w) = workers {
        let results = match handed_to {
            Some(_) => w.hand_over(),
            None => w.stop(),
        };
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(s) => info!(
                    worker = i,
                    accepted = s.accepted,
                    served = s.served,
                    "worker stopped"
                ),
                Err(e) => tracing::error!(worker = i, error = %format!("{e:#}"), "worker failed"),
            }
        }
    }
    if handed_to.is_some() {
        // The links, pins and the upgrade socket's path are the successor's now.
        dp.leave_attached();
        info!("handed over; exiting");
        return Ok(());
    }
    dp.detach_all();
    drop(dp);
    let _ = std::fs::remove_file(&upgrade_socket);
    if cli.unpin_on_exit {
        std::fs::remove_dir_all(&pin_dir)
            .with_context(|| format!("removing {}", pin_dir.display()))?;
        info!(pin_dir = %pin_dir.display(), "pins removed");
    }
    Ok(())
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
async fn run_reload(
    daemon: &Arc<std::sync::Mutex<Daemon>>,
) -> anyhow::Result<daemon::ReloadReport> {
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
