//! edged: one datacenter's data plane daemon. Loads the kernel programs, pins their maps, applies
//! the configuration, attaches XDP, and detaches cleanly on SIGTERM/SIGINT.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use std::sync::Arc;

use edgeplane::{
    Dataplane, LoadOptions, PinnedMaps, XdpAttachMode,
    addr::{Cidr, Vip},
    admin::{self, AdminState},
    config::EdgedConfig,
    server,
};
use edgeplane_abi::{RateLimitConfig, app_flags, rate_limit_flags};
use tracing::info;

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

/// Writes the configuration into the maps; returns the worker count.
fn apply(maps: &PinnedMaps, cfg: &EdgedConfig) -> anyhow::Result<u32> {
    let online = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let count = if cfg.workers.count == 0 {
        online
    } else {
        cfg.workers.count.min(online)
    };
    let w = &cfg.workers;
    maps.configure_workers(count, w.load_threshold, w.steer, w.cpumap_queue_size)?;
    let rl = &cfg.rate_limit;
    maps.set_rate_limit(RateLimitConfig {
        pps: rl.pps,
        burst: rl.burst,
        flags: if rl.enabled {
            rate_limit_flags::ENABLED
        } else {
            0
        },
        v4_prefix: rl.v4_prefix.unwrap_or(0),
        v6_prefix: rl.v6_prefix.unwrap_or(0),
        _pad: 0,
    })?;
    for cidr in &cfg.blocklist {
        maps.block_add(cidr.parse::<Cidr>()?)?;
    }
    // Pins from an older edged may hold a blocklist without its IPv4 summary.
    maps.sync_block_v4()?;
    for app in &cfg.apps {
        let vips = app
            .vips
            .iter()
            .map(|v| v.parse::<Vip>())
            .collect::<Result<Vec<_>, _>>()?;
        let flags = if app.steer { 0 } else { app_flags::NO_STEER }
            | if app.rate_limit {
                0
            } else {
                app_flags::NO_RATE_LIMIT
            };
        let id = maps
            .add_app(&app.name, app.id, &vips, flags)
            .with_context(|| format!("app {}", app.name))?;
        info!(app = %app.name, id, vips = ?app.vips, "app configured");
    }
    info!(
        workers = count,
        steer = cfg.workers.steer,
        "workers configured"
    );
    Ok(count)
}

/// Starts the placement engine for the apps in `smart` mode, when this edged is a datacenter.
fn start_placement_engine(
    cfg: &EdgedConfig,
    maps: &PinnedMaps,
    workers: &server::Workers,
) -> anyhow::Result<Option<edgeplane::placement::PlacementStatus>> {
    let Some(handoff) = workers.handoff.clone() else {
        return Ok(None);
    };
    use edgeplane::{
        config::{PlacementGoal, PlacementMode},
        placement::{EngineApp, Goal},
    };
    let mut apps = Vec::new();
    for a in &cfg.apps {
        let id = maps.app_id(&a.name)?;
        let p = &a.placement;
        let goal = if let Some(backend) = p.hinted_backend() {
            // A hostname hint is probed over HTTP, by that name.
            let http_host = p.hostname.as_ref().map(|h| {
                h.rsplit_once(':')
                    .map_or(h.as_str(), |(name, _)| name)
                    .to_owned()
            });
            Some(Goal::NearBackend { backend, http_host })
        } else if p.mode == PlacementMode::Smart {
            Some(match p.goal {
                PlacementGoal::Latency => Goal::Latency,
                PlacementGoal::LocalFirst => Goal::LocalFirst {
                    min_saving: p.min_saving,
                },
            })
        } else {
            None
        };
        let here = cfg.datacenter.as_ref().map(|d| d.name.as_str());
        // A region hint naming this datacenter (the same config deployed everywhere) is a no-op.
        if let Some(dc) = p.region.as_ref().filter(|dc| Some(dc.as_str()) != here) {
            // A region hint places the app once, at start; pins by hand still win.
            let target = handoff
                .peers
                .iter()
                .find(|peer| &peer.name == dc)
                .map(|peer| peer.id)
                .with_context(|| {
                    format!(
                        "app {}: placement region {dc:?} is not a peer of this datacenter",
                        a.name
                    )
                })?;
            if maps.placement(id)?.flags & edgeplane_abi::placement_flags::PINNED == 0 {
                maps.set_placement(
                    id,
                    edgeplane_abi::Placement {
                        kind: edgeplane_abi::placement_kind::DATACENTER,
                        datacenter: target,
                        ..Default::default()
                    },
                )?;
            }
        }
        apps.push(EngineApp {
            name: a.name.clone(),
            id,
            goal,
        });
    }
    let engine = edgeplane::placement::Engine {
        cfg: Default::default(),
        handoff,
        maps: maps.clone(),
        apps,
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
    let count = apply(&maps, &cfg)?;
    for iface in &cfg.xdp.interfaces {
        dp.attach_xdp(iface, cfg.xdp.mode)?;
    }
    let mut workers = server::start(&cfg, &dp, &maps, count)?;
    let (metrics, observations, residency, counters) = match &workers {
        Some(w) => (
            w.metrics.clone(),
            w.observations.clone(),
            w.residency.clone(),
            w.counters.clone(),
        ),
        None => (vec![], vec![], vec![], vec![]),
    };
    let placement = match &workers {
        Some(w) => start_placement_engine(&cfg, &maps, w)?,
        None => None,
    };
    let supervisor = workers
        .as_ref()
        .map(|w| w.supervisor_stats())
        .unwrap_or_default();
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping_flag = stopping.clone();
    let admin = admin::serve(
        cfg.server.admin,
        Arc::new(AdminState {
            maps: maps.clone(),
            metrics,
            observations,
            residency,
            placement,
            workers: supervisor,
            worker_counters: counters,
            stopping: stopping_flag,
        }),
    )?;
    info!(pin_dir = %cfg.pin_dir.display(), interfaces = ?cfg.xdp.interfaces, %admin, "edged ready");

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
        std::fs::remove_dir_all(&cfg.pin_dir)
            .with_context(|| format!("removing {}", cfg.pin_dir.display()))?;
        info!(pin_dir = %cfg.pin_dir.display(), "pins removed");
    }
    Ok(())
}
