//! Phase 4, the control plane: the placement engine (a datacenter with workers), the admin
//! endpoint (on the predecessor's listener when taking over), the fleet's measurer and agent,
//! and the daemon that reloads the configuration.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, atomic::AtomicBool, atomic::AtomicU64},
};

use anyhow::Context as _;
use edgeplane::{
    PinnedMaps,
    admin::{self, Admin, AdminState, ReloadRequest, UpgradeRequest},
    config::EdgedConfig,
    daemon::{self, Daemon},
    fleet::{
        PeerMeasurements, Targets,
        agent::{Agent, FleetHandle},
        measurer::Measurer,
    },
    server::Workers,
};
use edgeplane_placement::{EngineApps, PlacementStatus};
use tokio::sync::mpsc;
use tracing::info;

/// What the control plane is started from.
pub struct Parts {
    pub cfg: EdgedConfig,
    /// The file reloads read (None: embedded defaults).
    pub config_path: Option<PathBuf>,
    pub maps: PinnedMaps,
    pub worker_count: u32,
    /// The predecessor's admin listener, when taking over.
    pub admin_listener: Option<std::net::TcpListener>,
    pub fleet: Option<Arc<FleetHandle>>,
}

pub struct ControlPlane {
    pub admin: Admin,
    pub daemon: Arc<Mutex<Daemon>>,
    /// Set once edged stops serving (the admin endpoint reports it).
    pub stopping: Arc<AtomicBool>,
    pub reload_rx: mpsc::Receiver<ReloadRequest>,
    pub upgrade_rx: mpsc::Receiver<UpgradeRequest>,
    pub pin_dir: PathBuf,
    pub upgrade_socket: PathBuf,
}

pub fn start(parts: Parts, workers: Option<&Workers>) -> anyhow::Result<ControlPlane> {
    let Parts {
        cfg,
        config_path,
        maps,
        worker_count,
        admin_listener,
        fleet,
    } = parts;
    let engine_apps = EngineApps::default();
    let fleet_view = fleet.as_ref().map(|_| PeerMeasurements::default());
    let peer_asks = Arc::new(AtomicU64::new(0));
    let placement = match workers {
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
    let stopping = Arc::new(AtomicBool::new(false));
    let (reload_tx, reload_rx) = mpsc::channel::<ReloadRequest>(4);
    let (upgrade_tx, upgrade_rx) = mpsc::channel::<UpgradeRequest>(4);
    let admin_state = Arc::new(AdminState {
        maps: maps.clone(),
        metrics: workers.map(|w| w.metrics.clone()).unwrap_or_default(),
        observations: workers.map(|w| w.observations.clone()).unwrap_or_default(),
        residency: workers.map(|w| w.residency.clone()).unwrap_or_default(),
        placement: placement.clone(),
        workers: workers.map(|w| w.supervisor_stats()).unwrap_or_default(),
        worker_counters: workers.map(|w| w.counters.clone()).unwrap_or_default(),
        stopping: stopping.clone(),
        live: workers.map(|w| w.live.clone()),
        reload: Some(reload_tx.clone()),
        upgrade: Some(upgrade_tx),
        access_log_dropped: workers.and_then(|w| w.access_log_dropped.clone()),
        peer_asks,
        fleet_view: fleet_view.clone(),
    });
    let admin = match admin_listener {
        Some(listener) => admin::serve_on(listener, admin_state)?,
        None => admin::serve(cfg.server.admin, admin_state)?,
    };
    let (pin_dir, upgrade_socket) = (cfg.pin_dir.clone(), cfg.upgrade_socket());
    info!(pin_dir = %pin_dir.display(), interfaces = ?cfg.xdp.interfaces, admin = %admin.addr, "edged ready");
    let fleet_tasks = FleetTasks::new(
        &cfg,
        &maps,
        workers,
        fleet.as_ref(),
        fleet_view,
        placement,
        reload_tx,
    )?;
    let mut daemon = Daemon {
        config_path,
        cfg,
        maps,
        workers: worker_count,
        live: workers.map(|w| w.live.clone()),
        handoff: workers.and_then(|w| w.handoff.clone()),
        engine_apps,
        fleet,
        fleet_pins: Default::default(),
    };
    daemon.apply_fleet_pins();
    fleet_tasks.spawn();
    Ok(ControlPlane {
        admin,
        daemon: Arc::new(Mutex::new(daemon)),
        stopping,
        reload_rx,
        upgrade_rx,
        pin_dir,
        upgrade_socket,
    })
}

/// Starts the placement engine when this edged is a datacenter; its app list is `apps`, which a
/// reload replaces.
fn start_placement_engine(
    cfg: &EdgedConfig,
    maps: &PinnedMaps,
    workers: &Workers,
    apps: &EngineApps,
    fleet_view: Option<PeerMeasurements>,
    peer_asks: Arc<AtomicU64>,
) -> anyhow::Result<Option<PlacementStatus>> {
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

/// The fleet's two tasks: the measurer publishes this datacenter's measurements and heartbeat,
/// the agent applies the fleet's state.
struct FleetTasks {
    measurer: Option<Measurer>,
    agent: Option<Agent>,
}

impl FleetTasks {
    fn new(
        cfg: &EdgedConfig,
        maps: &PinnedMaps,
        workers: Option<&Workers>,
        fleet: Option<&Arc<FleetHandle>>,
        fleet_view: Option<PeerMeasurements>,
        placement: Option<PlacementStatus>,
        reload: mpsc::Sender<ReloadRequest>,
    ) -> anyhow::Result<Self> {
        let targets: Arc<Mutex<Targets>> = Arc::new(Mutex::new(
            fleet
                .map(|h| edgeplane::fleet::backends_of(&edgeplane_dataplane::lock(&h.wanted)))
                .unwrap_or_default(),
        ));
        let Some(control) = &cfg.control else {
            return Ok(Self {
                measurer: None,
                agent: None,
            });
        };
        // TLS files that do not read stop the start here, rather than every reconnect later.
        edgeplane::fleet::client::NatsTarget::of(control).context("[control] tls")?;
        let datacenter = cfg
            .datacenter
            .as_ref()
            .map_or_else(|| "standalone".to_owned(), |d| d.name.clone());
        let measurer = workers
            .and_then(|w| w.handoff.clone())
            .map(|handoff| Measurer {
                control: control.clone(),
                datacenter: datacenter.clone(),
                every: control.heartbeat,
                handoff,
                metrics: workers.map(|w| w.metrics.clone()).unwrap_or_default(),
                maps: maps.clone(),
                targets: targets.clone(),
                view: fleet_view.clone().unwrap_or_default(),
                requests_seen: Default::default(),
            });
        let agent = fleet.map(|handle| Agent {
            control: control.clone(),
            datacenter,
            handle: handle.clone(),
            cache_dir: cfg.runtime.cache_dir.clone(),
            reload,
            status: placement,
            applied: edgeplane_dataplane::lock(&handle.wanted).clone(),
            last_error: None,
            targets: targets.clone(),
            refused: None,
        });
        Ok(Self { measurer, agent })
    }

    fn spawn(self) {
        if let Some(agent) = self.agent {
            tokio::spawn(agent.run());
        }
        if let Some(measurer) = self.measurer {
            tokio::spawn(measurer.run());
        }
    }
}
