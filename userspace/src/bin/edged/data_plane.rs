//! Phase 2, the data plane: a predecessor's listeners when taking over (first, so nothing here
//! binds what it holds), the kernel programs and their pinned maps, the maps set to the
//! configuration, every app compiled (or loaded from the code cache) before XDP changes hands,
//! then XDP attached.

use edgeplane::{
    Dataplane, LoadOptions, PinnedMaps,
    config::EdgedConfig,
    daemon, reconcile, reload,
    upgrade::{self, Handover, Inherited},
};
use edgeplane_dataplane::wasm::AppSpec;
use tracing::info;

pub struct DataPlane {
    pub cfg: EdgedConfig,
    pub dp: Dataplane,
    pub maps: PinnedMaps,
    /// How many workers serve (one per CPU at most).
    pub workers: u32,
    /// The apps compiled for the workers (taken by `server::start`).
    pub specs: Vec<AppSpec>,
    /// What the edged this one takes over from handed it.
    pub inherited: Option<Inherited>,
    /// Where a successor will ask for this edged's listeners.
    pub handover: Handover,
}

pub fn start(cfg: EdgedConfig, takeover: bool) -> anyhow::Result<DataPlane> {
    let inherited = match takeover {
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
    let workers = daemon::worker_count(&cfg);
    let plan = reconcile::plan(None, &cfg, &maps.list_apps()?)?;
    reconcile::apply(&maps, &plan, &cfg, workers)?;
    info!(workers, steer = cfg.workers.steer, "maps configured");
    let reload::Prepared { cfg, specs } = reload::prepare_config(cfg)?;
    for iface in &cfg.xdp.interfaces {
        dp.attach_xdp(iface, cfg.xdp.mode)?;
    }
    Ok(DataPlane {
        cfg,
        dp,
        maps,
        workers,
        specs,
        inherited,
        handover,
    })
}
