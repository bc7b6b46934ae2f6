//! What edged keeps while it runs, between start and reloads: the configuration in effect, the
//! maps, the workers' live generation, and the placement engine's app list. `reload` applies a
//! new configuration file while serving, or refuses it whole.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use edgeplane_abi::{Placement, placement_flags, placement_kind};
use edgeplane_dataplane::{
    handoff::{HandoffConfig, KeyRing, Peer},
    live::LivePublisher,
    wasm::AppChanges,
};
use edgeplane_placement::{EngineApp, EngineApps, Goal};
use tracing::info;

use crate::{
    PinnedMaps,
    config::{EdgedConfig, PlacementGoal, PlacementMode},
    fleet::{
        Pin,
        agent::{FleetHandle, apply_pins},
    },
    reconcile,
    reload::{self, Prepared},
};

/// Workers for `cfg`: its count, at most one per online CPU.
pub fn worker_count(cfg: &EdgedConfig) -> u32 {
    let online = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    if cfg.workers.count == 0 {
        online
    } else {
        cfg.workers.count.min(online)
    }
}

/// The placement engine's view of `cfg`'s apps. A region hint places its app now (unless it
/// is pinned by hand), so requests go there without waiting for the engine.
pub fn engine_apps(
    cfg: &EdgedConfig,
    maps: &PinnedMaps,
    handoff: &HandoffConfig,
) -> anyhow::Result<Vec<EngineApp>> {
    let here = cfg.datacenter.as_ref().map(|d| d.name.as_str());
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
        // A region hint naming this datacenter (the same config deployed everywhere) is a no-op.
        if let Some(dc) = p.region.as_ref().filter(|dc| Some(dc.as_str()) != here) {
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
            if maps.placement(id)?.flags & placement_flags::PINNED == 0 {
                maps.set_placement(
                    id,
                    Placement {
                        kind: placement_kind::DATACENTER,
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
    Ok(apps)
}

/// A peer as the workers hand off to it, for comparing topologies.
fn peer_view(peers: &[Peer]) -> Vec<(u32, &str, &[SocketAddr], &[SocketAddr])> {
    peers
        .iter()
        .map(|p| (p.id, p.name.as_str(), &p.handoff[..], &p.probe[..]))
        .collect()
}

/// What a reload did, for the log and for `edgectl reload`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReloadReport {
    pub generation: u64,
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    /// Workers that had not switched within the wait (restarting ones switch when they start).
    pub workers_behind: Vec<usize>,
}

/// How long a reload waits for every worker to serve the new generation.
const SWITCH_WAIT: Duration = Duration::from_secs(10);

pub struct Daemon {
    /// The file reloads read (None: embedded defaults, nothing to reload).
    pub config_path: Option<PathBuf>,
    pub cfg: EdgedConfig,
    pub maps: PinnedMaps,
    pub workers: u32,
    pub live: Option<Arc<LivePublisher>>,
    pub handoff: Option<HandoffConfig>,
    pub engine_apps: EngineApps,
    /// The fleet's state to compose with the file, when `[control]` is set.
    pub fleet: Option<Arc<FleetHandle>>,
    /// The fleet's pins in effect.
    pub fleet_pins: BTreeMap<String, Pin>,
}

impl Daemon {
    /// Writes the fleet's pins (what changed since the last call) into PLACEMENT.
    pub fn apply_fleet_pins(&mut self) {
        let Some(fleet) = &self.fleet else {
            return;
        };
        let pins = edgeplane_dataplane::lock(&fleet.wanted).pins.clone();
        let peers = self.handoff.as_ref().map_or(&[][..], |h| &h.peers[..]);
        let me = self.cfg.datacenter.as_ref().map(|d| d.name.as_str());
        apply_pins(&self.maps, &pins, &self.fleet_pins, peers, me);
        self.fleet_pins = pins;
    }

    /// The handoff keys `cfg` names, read again (a rotation is a reload). Refused when the
    /// topology file changed: peers and their addresses change at the next upgrade.
    fn reload_keys(&self, cfg: &EdgedConfig) -> anyhow::Result<Option<KeyRing>> {
        let (Some(dc), Some(handoff)) = (&cfg.datacenter, &self.handoff) else {
            return Ok(None);
        };
        let topology = dc.load_topology()?;
        if peer_view(&topology.peers_of(&dc.name)) != peer_view(&handoff.peers) {
            anyhow::bail!(
                "{}: datacenter.topology: its datacenters or their addresses changed; that takes effect at `edged upgrade` or a restart",
                dc.topology
                    .as_deref()
                    .unwrap_or(std::path::Path::new("(the fleet's)"))
                    .display()
            );
        }
        dc.load_keys(&topology).map(Some)
    }

    /// Re-reads the configuration file and applies what changed, or refuses it whole (the
    /// configuration in effect stays). Blocking: compiles components and waits for workers.
    pub fn reload(&mut self) -> anyhow::Result<ReloadReport> {
        let path = self
            .config_path
            .clone()
            .context("edged runs on embedded defaults: there is no configuration file to reload")?;
        let served = self
            .live
            .as_ref()
            .map(|l| l.current().specs.clone())
            .unwrap_or_default();
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let path = match &self.fleet {
            Some(fleet) => fleet.compose_from(&path)?,
            None => path,
        };
        let Prepared { cfg, specs } = reload::prepare_reload(&path, &base, &self.cfg, &served)?;
        let keys = self.reload_keys(&cfg)?;
        // Certificates are re-read (a renewal is a reload); turning mutual TLS on or off
        // changes what every peer must do at once, so it waits for an upgrade.
        let peer_tls = crate::config::tls::peer_tls(&cfg)?;
        let live_peer_tls = self.handoff.as_ref().and_then(|h| h.tls.clone());
        anyhow::ensure!(
            peer_tls.is_some() == live_peer_tls.is_some(),
            "datacenter.tls: turning mutual TLS with the peers on or off takes an upgrade (edged upgrade)"
        );
        let plan = reconcile::plan(Some(&self.cfg), &cfg, &self.maps.list_apps()?)?;
        reconcile::apply(&self.maps, &plan, &cfg, self.workers)?;
        let mut report = ReloadReport {
            generation: 0,
            added: vec![],
            changed: vec![],
            removed: plan.remove_apps.clone(),
            workers_behind: vec![],
        };
        if let Some(live) = &self.live {
            let before = live.current();
            let changes = AppChanges::between(&before.specs, &specs);
            (report.added, report.changed) = (changes.added, changes.changed);
            let next = crate::server::generation(
                before.number + 1,
                &cfg,
                specs,
                &self.maps,
                peer_tls.as_ref(),
            )?;
            report.generation = next.number;
            live.publish(next);
            report.workers_behind = live.wait_applied(report.generation, SWITCH_WAIT);
        }
        if let Some(handoff) = &self.handoff {
            let apps = engine_apps(&cfg, &self.maps, handoff)?;
            *edgeplane_dataplane::lock(&self.engine_apps) = apps;
            if let Some(keys) = keys {
                handoff.keys.replace(keys);
            }
            if let (Some(live), Some(tls)) = (&live_peer_tls, peer_tls) {
                live.replace(tls);
            }
        }
        self.cfg = cfg;
        self.apply_fleet_pins();
        info!(
            generation = report.generation,
            added = ?report.added,
            changed = ?report.changed,
            removed = ?report.removed,
            behind = ?report.workers_behind,
            "configuration reloaded"
        );
        Ok(report)
    }
}
