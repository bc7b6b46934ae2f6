//! Phase 1, configure: the file (or the embedded defaults); on the fleet, the file composed with
//! the fleet's last state (its snapshot, or the fleet itself when there is none yet), so edged
//! serves what it served before even when NATS is away; then the command line's overrides.

use std::sync::Arc;

use edgeplane::{config::EdgedConfig, fleet::agent::FleetHandle};

use crate::Cli;

pub struct Configured {
    pub cfg: EdgedConfig,
    /// The fleet's state, when `[control]` is set.
    pub fleet: Option<Arc<FleetHandle>>,
}

pub async fn configure(cli: &Cli) -> anyhow::Result<Configured> {
    let mut cfg = match &cli.config {
        Some(path) => EdgedConfig::load(path)?,
        None => EdgedConfig::default(),
    };
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
    Ok(Configured { cfg, fleet })
}
