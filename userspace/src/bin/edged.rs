//! edged: one datacenter's data plane daemon. Loads the kernel programs, pins their maps, applies
//! the configuration, attaches XDP, and detaches cleanly on SIGTERM/SIGINT.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use std::sync::Arc;

use edgeplane::{
    Dataplane, LoadOptions, PinnedMaps, XdpAttachMode,
    admin::{self, AdminState, ReloadRequest},
    config::EdgedConfig,
    daemon::{self, Daemon},
    placement::EngineApps,
    reconcile, reload, server,
};
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
}

/// Starts the placement engine when this edged is a datacenter; its app list is `apps`, which a
/// reload replaces.
fn start_placement_engine(
    cfg: &EdgedConfig,
    maps: &PinnedMaps,
    workers: &server::Workers,
    apps: &EngineApps,
) -> anyhow::Result<Option<edgeplane::placement::PlacementStatus>> {
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
    cfg.xdp.interfaces.extend(cli.interfaces.iter().cloned());
    if let Some(mode) = cli.xdp_mode {
        cfg.xdp.mode = mode;
    }
    if let Some(dir) = &cli.pin_dir {
        cfg.pin_dir = dir.clone();
    }

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
    for iface in &cfg.xdp.interfaces {
        dp.attach_xdp(iface, cfg.xdp.mode)?;
    }
    let reload::Prepared { cfg, specs } = reload::prepare_config(cfg)?;
    let mut workers = server::start(&cfg, &dp, &maps, count, specs)?;
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
    let placement = match &workers {
        Some(w) => start_placement_engine(&cfg, &maps, w, &engine_apps)?,
        None => None,
    };
    let supervisor = workers
        .as_ref()
        .map(|w| w.supervisor_stats())
        .unwrap_or_default();
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping_flag = stopping.clone();
    let live = workers.as_ref().map(|w| w.live.clone());
    let (reload_tx, mut reload_rx) = tokio::sync::mpsc::channel::<ReloadRequest>(4);
    let admin_addr = cfg.server.admin;
    let pin_dir = cfg.pin_dir.clone();
    let interfaces = cfg.xdp.interfaces.clone();
    let daemon = Arc::new(std::sync::Mutex::new(Daemon {
        config_path: cli.config.clone(),
        cfg,
        maps: maps.clone(),
        workers: count,
        live: live.clone(),
        handoff: workers.as_ref().and_then(|w| w.handoff.clone()),
        engine_apps,
    }));
    let admin = admin::serve(
        admin_addr,
        Arc::new(AdminState {
            maps: maps.clone(),
            metrics,
            observations,
            residency,
            placement,
            workers: supervisor,
            worker_counters: counters,
            stopping: stopping_flag,
            live,
            reload: Some(reload_tx),
        }),
    )?;
    info!(pin_dir = %pin_dir.display(), interfaces = ?interfaces, %admin, "edged ready");
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // How soon a worker that stopped is restarted.
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: draining"); break }
            _ = tokio::signal::ctrl_c() => { info!("SIGINT: draining"); break }
            _ = tick.tick() => {
                if let Some(w) = &mut workers {
                    w.supervise();
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
        }
    }
    stopping.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(w) = workers {
        for (i, r) in w.stop().into_iter().enumerate() {
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
    dp.detach_all();
    drop(dp);
    if cli.unpin_on_exit {
        std::fs::remove_dir_all(&pin_dir)
            .with_context(|| format!("removing {}", pin_dir.display()))?;
        info!(pin_dir = %pin_dir.display(), "pins removed");
    }
    Ok(())
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
