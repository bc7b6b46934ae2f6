//! edged's side of the control plane: watches the fleet's buckets, fetches the components they
//! name into the code cache, and applies each change through the live reconfiguration path. What
//! it applied is the snapshot on disk, which edged starts from (and serves) while NATS is away;
//! when NATS comes back it reads the buckets whole again and applies what changed meanwhile.
//! Every heartbeat it says where it stands (`edgectl fleet status`) and publishes its
//! measurements.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, bail};
use async_nats::jetstream::kv;
use edgeplane_abi::{Placement, placement_flags, placement_kind};
use edgeplane_dataplane::{handoff::Peer, lock};
use futures_util::StreamExt as _;
use tracing::{info, warn};

use super::{
    BLOCKLIST_KEY, ControlConfig, FleetState, Heartbeat, MAX_APPS, Pin, RATE_LIMIT_KEY,
    client::FleetClient, compose, localize_components, parse_app,
};
use edgeplane_placement::PlacementStatus;

use crate::{PinnedMaps, admin::ReloadRequest};

/// What the daemon's reload composes from: the fleet state wanted now, and where it is kept.
pub struct FleetHandle {
    pub wanted: Mutex<FleetState>,
    /// The last state applied, kept on disk.
    pub snapshot: PathBuf,
    /// The configuration composed from the file and the fleet (what edged runs, and what
    /// errors point into).
    pub effective: PathBuf,
}

impl FleetHandle {
    /// The handle for `control`, with the snapshot on disk as the state wanted (none: empty).
    pub fn open(control: &ControlConfig, cache_dir: &Path) -> anyhow::Result<Self> {
        let snapshot = control
            .snapshot
            .clone()
            .unwrap_or_else(|| cache_dir.join("fleet-snapshot.json"));
        let state = FleetState::load(&snapshot)?.unwrap_or_default();
        let effective = snapshot.with_extension("toml");
        Ok(Self {
            wanted: Mutex::new(state),
            snapshot,
            effective,
        })
    }

    /// Composes the file at `base` with the state wanted into the effective configuration
    /// file; its path.
    pub fn compose_from(&self, base: &Path) -> anyhow::Result<PathBuf> {
        let text =
            std::fs::read_to_string(base).with_context(|| format!("reading {}", base.display()))?;
        let state = lock(&self.wanted).clone();
        let topology = self.effective.with_extension("topology.toml");
        if let Some(t) = &state.topology {
            if let Some(dir) = topology.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&topology, t)
                .with_context(|| format!("writing {}", topology.display()))?;
        }
        // Relative paths stay relative to the operator's file: the effective one is read with
        // `EdgedConfig::read_relative_to` that file's directory.
        let composed = compose(&text, &state, &topology)
            .with_context(|| format!("composing {} with the fleet", base.display()))?;
        if let Some(dir) = self.effective.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&self.effective, composed)
            .with_context(|| format!("writing {}", self.effective.display()))?;
        Ok(self.effective.clone())
    }
}

/// Writes the fleet's pins into PLACEMENT (pinned: the engine leaves them), and hands apps whose
/// pin went back to the engine. A pin naming no datacenter this one knows is skipped, loudly.
pub fn apply_pins(
    maps: &PinnedMaps,
    pins: &BTreeMap<String, Pin>,
    before: &BTreeMap<String, Pin>,
    peers: &[Peer],
    me: Option<&str>,
) {
    for (app, pin) in pins {
        if before.get(app) == Some(pin)
            && maps
                .app_id(app)
                .and_then(|id| maps.placement(id))
                .is_ok_and(|p| p.flags & placement_flags::PINNED != 0)
        {
            continue;
        }
        let (kind, datacenter) = match pin.pin.as_str() {
            "local" => (placement_kind::LOCAL, 0),
            "region" => (placement_kind::REGION, 0),
            name if Some(name) == me => (placement_kind::LOCAL, 0),
            name => match peers.iter().find(|p| p.name == name) {
                Some(peer) => (placement_kind::DATACENTER, peer.id),
                None => {
                    warn!(
                        app,
                        pin = name,
                        "fleet pin names no datacenter of the topology"
                    );
                    continue;
                }
            },
        };
        let entry = Placement {
            kind,
            datacenter,
            flags: placement_flags::PINNED,
            ..Default::default()
        };
        match maps
            .app_id(app)
            .and_then(|id| maps.set_placement(id, entry))
        {
            Ok(()) => info!(app, pin = %pin.pin, "pinned fleet-wide"),
            Err(e) => warn!(app, error = %e, "fleet pin not applied"),
        }
    }
    for app in before.keys().filter(|a| !pins.contains_key(*a)) {
        if let Ok(id) = maps.app_id(app) {
            match maps.set_placement(id, Placement::default()) {
                Ok(()) => info!(app, "unpinned fleet-wide"),
                Err(e) => warn!(app, error = %e, "fleet unpin not applied"),
            }
        }
    }
}

/// The fleet's state read once at start, within `timeout`, for an edged that has no snapshot
/// yet (its first start): it then starts with the fleet's apps and topology. None when NATS does
/// not answer in time (it starts from the file, and the agent catches up).
pub async fn first_state(
    control: &ControlConfig,
    cache_dir: &Path,
    timeout: Duration,
) -> Option<FleetState> {
    let read = async {
        let client = FleetClient::connect_as(control, timeout).await?;
        let buckets = buckets(&client).await?;
        read_state(&client, &buckets, cache_dir).await
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(state)) => Some(state),
        Ok(Err(e)) => {
            warn!(error = %format!("{e:#}"), "fleet not read at start; starting from the file");
            None
        }
        Err(_) => {
            warn!("fleet not read within {timeout:?} at start; starting from the file");
            None
        }
    }
}

/// The control task of one edged.
pub struct Agent {
    pub control: ControlConfig,
    pub datacenter: String,
    pub handle: Arc<FleetHandle>,
    pub cache_dir: PathBuf,
    /// Where a change is applied (the daemon's reload).
    pub reload: tokio::sync::mpsc::Sender<ReloadRequest>,
    pub status: Option<PlacementStatus>,
    /// What was applied last (the snapshot's content).
    pub applied: FleetState,
    pub last_error: Option<String>,
    /// What the measurer probes: the backends of the apps applied.
    pub targets: Arc<Mutex<super::Targets>>,
    /// The last state refused, not tried again until the fleet changes.
    pub refused: Option<FleetState>,
}

impl Agent {
    /// Runs forever: connects, syncs, watches; on any failure waits a second and starts over.
    pub async fn run(mut self) {
        // Started from the fleet read at start (no snapshot yet): that is the snapshot now.
        if !self.handle.snapshot.exists()
            && self.applied != FleetState::default()
            && let Err(e) = self.applied.save(&self.handle.snapshot)
        {
            warn!(error = %format!("{e:#}"), "fleet snapshot not written");
        }
        let mut quiet = false;
        loop {
            match FleetClient::connect_as(&self.control, Duration::from_secs(2)).await {
                Ok(client) => {
                    quiet = false;
                    if let Err(e) = self.session(&client).await {
                        warn!(error = %format!("{e:#}"), "fleet control plane lost; serving the last configuration applied");
                    }
                }
                Err(e) if !quiet => {
                    warn!(error = %format!("{e:#}"), "fleet control plane unreachable; serving the snapshot");
                    quiet = true;
                }
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn session(&mut self, client: &FleetClient) -> anyhow::Result<()> {
        let buckets = buckets(client).await?;
        let mut watches = Vec::new();
        for b in &buckets {
            watches.push(b.watch_all().await?);
        }
        let mut changes = futures_util::stream::select_all(watches);
        info!(nats = %self.control.nats, "fleet control plane connected");
        self.sync(client, &buckets).await;
        let mut beat = tokio::time::interval(self.control.heartbeat);
        // A full read every half minute as well: nothing missed stays missed.
        let mut resync = tokio::time::interval(Duration::from_secs(30));
        loop {
            tokio::select! {
                change = changes.next() => match change {
                    Some(Ok(_)) => {
                        // A deploy writes several keys: take what came with it, then read once.
                        while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_millis(5), changes.next()).await {}
                        self.sync(client, &buckets).await;
                    }
                    Some(Err(e)) => bail!("watching the fleet: {e}"),
                    None => bail!("the fleet's watches ended"),
                },
                _ = resync.tick() => self.sync(client, &buckets).await,
                _ = beat.tick() => self.heartbeat(client).await?,
            }
        }
    }

    /// Reads the buckets whole and applies what differs from what is applied.
    async fn sync(&mut self, client: &FleetClient, buckets: &[kv::Store; 4]) {
        let state = match read_state(client, buckets, &self.cache_dir).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %format!("{e:#}"), "reading the fleet");
                self.last_error = Some(format!("{e:#}"));
                return;
            }
        };
        let same_content = FleetState {
            revisions: BTreeMap::new(),
            ..state.clone()
        } == FleetState {
            revisions: BTreeMap::new(),
            ..self.applied.clone()
        };
        if self.refused.as_ref() == Some(&state) {
            return;
        }
        if same_content {
            if state.revisions != self.applied.revisions {
                self.applied.revisions = state.revisions;
                let _ = self.applied.save(&self.handle.snapshot);
            }
            return;
        }
        *lock(&self.handle.wanted) = state.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let outcome = match self.reload.send(tx).await {
            Ok(()) => rx
                .await
                .unwrap_or_else(|_| Err("the daemon dropped the reload".into())),
            Err(_) => Err("the daemon is not taking reloads".into()),
        };
        match outcome {
            Ok(report) => {
                info!(
                    revision = state.revision(),
                    generation = report.generation,
                    "fleet change applied"
                );
                self.applied = state;
                self.last_error = None;
                self.refused = None;
                *lock(&self.targets) = super::backends_of(&self.applied);
                if let Err(e) = self.applied.save(&self.handle.snapshot) {
                    warn!(error = %format!("{e:#}"), "fleet snapshot not written");
                }
            }
            Err(e) => {
                warn!(error = %e, revision = state.revision(), "fleet change refused; the configuration in effect stays");
                *lock(&self.handle.wanted) = self.applied.clone();
                self.last_error = Some(e);
                self.refused = Some(state);
            }
        }
    }

    async fn heartbeat(&self, client: &FleetClient) -> anyhow::Result<()> {
        let beat = Heartbeat {
            datacenter: self.datacenter.clone(),
            at_ms: super::unix_ms(),
            revision: self.applied.revision(),
            error: self.last_error.clone(),
            apps: self
                .status
                .as_ref()
                .map(|s| lock(s).clone())
                .unwrap_or_default(),
        };
        client
            .heartbeats()
            .await?
            .put(&self.datacenter, serde_json::to_vec(&beat)?.into())
            .await
            .context("heartbeat")?;
        Ok(())
    }
}

/// The buckets edged reads, in `read_state`'s order.
async fn buckets(client: &FleetClient) -> anyhow::Result<[kv::Store; 4]> {
    Ok([
        client.apps().await?,
        client.placement().await?,
        client.guard().await?,
        client.topology().await?,
    ])
}

/// The value of `key`, if it is set (not deleted).
async fn value(store: &kv::Store, key: &str) -> anyhow::Result<Option<bytes::Bytes>> {
    Ok(store
        .entry(key)
        .await?
        .filter(|e| e.operation == kv::Operation::Put)
        .map(|e| e.value))
}

async fn keys(store: &kv::Store) -> anyhow::Result<Vec<String>> {
    let mut keys = Vec::new();
    let mut list = store.keys().await?;
    while let Some(k) = list.next().await {
        keys.push(k?);
        if keys.len() > MAX_APPS {
            bail!("more than {MAX_APPS} keys in a bucket");
        }
    }
    Ok(keys)
}

/// The fleet as the buckets hold it now, every component it names staged in the code cache.
pub async fn read_state(
    client: &FleetClient,
    [apps, placement, guard, topology]: &[kv::Store; 4],
    cache_dir: &Path,
) -> anyhow::Result<FleetState> {
    let mut state = FleetState::default();
    // Each bucket's last sequence, read first: deletes count, and a change made while this
    // reads shows as a later revision than the one recorded.
    for name in [super::APPS, super::PLACEMENT, super::GUARD, super::TOPOLOGY] {
        state
            .revisions
            .insert(name.to_owned(), client.revision(name).await?);
    }
    for key in keys(apps).await? {
        let Some(bytes) = value(apps, &key).await? else {
            continue;
        };
        let text = std::str::from_utf8(&bytes).with_context(|| format!("app {key}: not UTF-8"))?;
        let (name, table) = parse_app(text).with_context(|| format!("app {key}"))?;
        anyhow::ensure!(name == key, "app {key}: its table names {name:?}");
        let mut paths = BTreeMap::new();
        for digest in super::component_refs(&table) {
            let staged = cache_dir.join("components").join(format!("{digest}.wasm"));
            if !staged.exists() {
                let wasm = client.fetch_component(&digest).await?;
                crate::reload::stage_bytes(&wasm, cache_dir)?;
            }
            paths.insert(digest, staged);
        }
        let table = localize_components(table, |d| paths[d].clone());
        state.apps.insert(name, table);
    }
    for key in keys(placement).await? {
        let Some(bytes) = value(placement, &key).await? else {
            continue;
        };
        let pin: Pin = serde_json::from_slice(&bytes).with_context(|| format!("pin of {key}"))?;
        state.pins.insert(key, pin);
    }
    if let Some(bytes) = value(guard, BLOCKLIST_KEY).await? {
        state.blocklist = Some(serde_json::from_slice(&bytes).context("the fleet's blocklist")?);
    }
    if let Some(bytes) = value(topology, super::TOPOLOGY_KEY).await? {
        let text = std::str::from_utf8(&bytes).context("the fleet's topology: not UTF-8")?;
        crate::topology::Topology::parse(text).context("the fleet's topology")?;
        state.topology = Some(text.to_owned());
    }
    if let Some(bytes) = value(guard, RATE_LIMIT_KEY).await? {
        state.rate_limit = Some(serde_json::from_slice(&bytes).context("the fleet's rate limit")?);
    }
    Ok(state)
}
