//! Typed handles over the maps `edged` pins, used by `edged`, `edgectl` and the tests alike.
//! Each call opens the pin it needs, so a handle never outlives a restart of `edged`.

use std::{
    collections::BTreeMap,
    os::fd::{AsFd as _, AsRawFd},
    path::{Path, PathBuf},
};

use aya::maps::{
    Array, HashMap, Map, MapData, MapError, PerCpuArray, sock::ReusePortSockArray, xdp::CpuMap,
};
use edgeplane_abi::{
    APP_NAME_LEN, AppEntry, AppKey, AppName, AppStats, MAX_APPS, MAX_BURST, MAX_PLACEMENTS,
    MAX_RATE_PPS, MAX_WORKERS, Placement, RateLimitConfig, WorkerConfig, WorkerLoad, app_flags,
    map_names, rate_limit_flags, worker_flags,
};

use edgeplane_dataplane::shared_map::SharedMapping;

use crate::addr::{Cidr, Vip};

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("no edgeplane maps are pinned at {0}: is edged running? (or pass --pin-dir)")]
    NotPinned(PathBuf),
    #[error("unknown app {0:?} (see `edgectl app list`)")]
    UnknownApp(String),
    #[error("{vip} already belongs to app {app:?}")]
    VipTaken { vip: Vip, app: String },
    #[error("app name {0:?} must be 1..={max} bytes of [A-Za-z0-9._-]", max = APP_NAME_LEN)]
    BadAppName(String),
    #[error("app id {0} is out of range 1..{max}", max = MAX_APPS)]
    BadAppId(u32),
    #[error("app id {id} is already used by {app:?}")]
    AppIdTaken { id: u32, app: String },
    #[error("no free app id: all {max} are in use", max = MAX_APPS - 1)]
    NoFreeAppId,
    #[error("{0} is not in the blocklist")]
    NotBlocked(Cidr),
    #[error("invalid rate limit: {0}")]
    BadRateLimit(String),
    #[error("worker index {0} is out of range 0..{max}", max = MAX_WORKERS)]
    BadWorker(u32),
    #[error("duplicating the WORKER_LOAD map fd")]
    DupFd(#[source] std::io::Error),
    #[error("mapping {map} into memory")]
    Mmap {
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("target id {0} is out of range 0..{max}", max = MAX_PLACEMENTS)]
    BadTarget(u32),
    #[error("{op} on map {map}")]
    Map {
        op: &'static str,
        map: &'static str,
        #[source]
        source: MapError,
    },
}

pub(crate) fn map_err(op: &'static str, map: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |source| MapsError::Map { op, map, source }
}

/// An app as `edgectl app list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AppInfo {
    pub id: u32,
    pub name: String,
    pub vips: Vec<String>,
    pub no_steer: bool,
    pub no_rate_limit: bool,
}

/// The maps pinned under one directory.
#[derive(Clone, Debug)]
pub struct PinnedMaps {
    dir: PathBuf,
}

/// Whether the XDP program can run with `cfg`: an enabled limit needs a burst of 1..=MAX_BURST
/// and at most MAX_RATE_PPS. The config is checked with this before anything is applied.
pub fn check_rate_limit(cfg: &RateLimitConfig) -> Result<(), MapsError> {
    if cfg.flags & rate_limit_flags::ENABLED != 0 {
        if cfg.burst == 0 || cfg.burst > MAX_BURST {
            return Err(MapsError::BadRateLimit(format!(
                "burst must be 1..={MAX_BURST}"
            )));
        }
        if cfg.pps > MAX_RATE_PPS {
            return Err(MapsError::BadRateLimit(format!(
                "pps must be at most {MAX_RATE_PPS}"
            )));
        }
    }
    Ok(())
}

impl PinnedMaps {
    /// Fails with a clear message when nothing is pinned there.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, MapsError> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.join(map_names::APPS).exists() {
            return Err(MapsError::NotPinned(dir));
        }
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Invalidates every CPU's flow-verdict cache; called after any change to APPS or BLOCKLIST
    /// (after the change, so a packet that sees the new generation also sees the new entries).
    /// Monotonic-clock values keep two concurrent writers from landing on the same generation.
    pub fn bump_generation(&self) -> Result<(), MapsError> {
        let mut arr: Array<MapData, u64> = Array::try_from(self.map(map_names::CONFIG_GEN)?)
            .map_err(map_err("open", map_names::CONFIG_GEN))?;
        let old = arr
            .get(&0, 0)
            .map_err(map_err("lookup", map_names::CONFIG_GEN))?;
        let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
        // SAFETY: valid out pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let now = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
        arr.set(0, now.max(old + 1), 0)
            .map_err(map_err("update", map_names::CONFIG_GEN))
    }

    pub(crate) fn map(&self, name: &'static str) -> Result<Map, MapsError> {
        let data = MapData::from_pin(self.dir.join(name)).map_err(|e| match e {
            MapError::SyscallError(_) => MapsError::NotPinned(self.dir.clone()),
            other => MapsError::Map {
                op: "open",
                map: name,
                source: other,
            },
        })?;
        Map::from_map_data(data).map_err(map_err("open", name))
    }

    fn apps(&self) -> Result<HashMap<MapData, AppKey, AppEntry>, MapsError> {
        HashMap::try_from(self.map(map_names::APPS)?).map_err(map_err("open", map_names::APPS))
    }

    fn vip_addrs(&self) -> Result<HashMap<MapData, [u8; 16], AppEntry>, MapsError> {
        HashMap::try_from(self.map(map_names::VIP_ADDRS)?)
            .map_err(map_err("open", map_names::VIP_ADDRS))
    }

    /// Rebuilds VIP_ADDRS from APPS: each VIP address names the app of its lowest-id VIP there
    /// (fragments to it are guarded and counted for that app).
    fn sync_vip_addrs(&self) -> Result<(), MapsError> {
        let mut wanted: BTreeMap<[u8; 16], AppEntry> = BTreeMap::new();
        for entry in self.apps()?.iter() {
            let (key, e) = entry.map_err(map_err("iterate", map_names::APPS))?;
            let slot = wanted.entry(key.addr).or_insert(e);
            if e.app_id < slot.app_id {
                *slot = e;
            }
        }
        let mut addrs = self.vip_addrs()?;
        let stale: Vec<[u8; 16]> = addrs
            .keys()
            .filter_map(Result::ok)
            .filter(|a| !wanted.contains_key(a))
            .collect();
        for addr in stale {
            addrs
                .remove(&addr)
                .map_err(map_err("remove", map_names::VIP_ADDRS))?;
        }
        for (addr, e) in wanted {
            addrs
                .insert(addr, e, 0)
                .map_err(map_err("insert", map_names::VIP_ADDRS))?;
        }
        Ok(())
    }

    fn names(&self) -> Result<HashMap<MapData, u32, AppName>, MapsError> {
        HashMap::try_from(self.map(map_names::APP_NAMES)?)
            .map_err(map_err("open", map_names::APP_NAMES))
    }

    /// app id -> name for every app.
    pub fn app_names(&self) -> Result<BTreeMap<u32, String>, MapsError> {
        let names = self.names()?;
        let mut out = BTreeMap::new();
        for entry in names.iter() {
            let (id, name) = entry.map_err(map_err("iterate", map_names::APP_NAMES))?;
            out.insert(id, decode_name(&name));
        }
        Ok(out)
    }

    pub fn app_id(&self, name: &str) -> Result<u32, MapsError> {
        self.app_names()?
            .into_iter()
            .find_map(|(id, n)| (n == name).then_some(id))
            .ok_or_else(|| MapsError::UnknownApp(name.to_owned()))
    }

    /// Adds an app (or more VIPs to an existing one). Returns its id. `id` picks the id for a new
    /// app; by default the lowest free one.
    pub fn add_app(
        &self,
        name: &str,
        id: Option<u32>,
        vips: &[Vip],
        flags: u32,
    ) -> Result<u32, MapsError> {
        let encoded = encode_name(name)?;
        let names = self.app_names()?;
        let existing = names.iter().find_map(|(i, n)| (n == name).then_some(*i));
        let id = match (existing, id) {
            (Some(found), Some(asked)) if found != asked => {
                return Err(MapsError::AppIdTaken {
                    id: found,
                    app: name.to_owned(),
                });
            }
            (Some(found), _) => found,
            (None, Some(asked)) => {
                if asked == 0 || asked >= MAX_APPS {
                    return Err(MapsError::BadAppId(asked));
                }
                if let Some(other) = names.get(&asked) {
                    return Err(MapsError::AppIdTaken {
                        id: asked,
                        app: other.clone(),
                    });
                }
                asked
            }
            (None, None) => (1..MAX_APPS)
                .find(|i| !names.contains_key(i))
                .ok_or(MapsError::NoFreeAppId)?,
        };
        let mut apps = self.apps()?;
        for vip in vips {
            if let Ok(entry) = apps.get(&vip.key(), 0)
                && entry.app_id != id
            {
                let app = names
                    .get(&entry.app_id)
                    .cloned()
                    .unwrap_or_else(|| entry.app_id.to_string());
                return Err(MapsError::VipTaken { vip: *vip, app });
            }
        }
        self.names()?
            .insert(id, encoded, 0)
            .map_err(map_err("insert", map_names::APP_NAMES))?;
        let entry = AppEntry {
            app_id: id,
            flags: flags & app_flags::ALL,
        };
        for vip in vips {
            apps.insert(vip.key(), entry, 0)
                .map_err(map_err("insert", map_names::APPS))?;
        }
        self.sync_vip_addrs()?;
        self.bump_generation()?;
        Ok(id)
    }

    /// Removes an app: its VIPs, its name and its placement.
    pub fn remove_app(&self, name: &str) -> Result<u32, MapsError> {
        let id = self.app_id(name)?;
        let mut apps = self.apps()?;
        let keys: Vec<AppKey> = apps
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, e)| e.app_id == id)
            .map(|(k, _)| k)
            .collect();
        for key in keys {
            apps.remove(&key)
                .map_err(map_err("remove", map_names::APPS))?;
        }
        self.sync_vip_addrs()?;
        self.bump_generation()?;
        if id < MAX_PLACEMENTS {
            self.set_placement(id, Placement::default())?;
        }
        self.names()?
            .remove(&id)
            .map_err(map_err("remove", map_names::APP_NAMES))?;
        Ok(id)
    }

    /// Removes VIPs from whichever app has them (a VIP no app has is skipped).
    pub fn remove_vips(&self, vips: &[Vip]) -> Result<(), MapsError> {
        if vips.is_empty() {
            return Ok(());
        }
        let mut apps = self.apps()?;
        for vip in vips {
            match apps.remove(&vip.key()) {
                Ok(()) | Err(MapError::KeyNotFound) | Err(MapError::SyscallError(_)) => {}
                Err(e) => return Err(map_err("remove", map_names::APPS)(e)),
            }
        }
        self.sync_vip_addrs()?;
        self.bump_generation()
    }

    pub fn list_apps(&self) -> Result<Vec<AppInfo>, MapsError> {
        let names = self.app_names()?;
        let mut by_id: BTreeMap<u32, AppInfo> = names
            .iter()
            .map(|(id, name)| {
                let info = AppInfo {
                    id: *id,
                    name: name.clone(),
                    vips: Vec::new(),
                    no_steer: false,
                    no_rate_limit: false,
                };
                (*id, info)
            })
            .collect();
        for entry in self.apps()?.iter() {
            let (key, e) = entry.map_err(map_err("iterate", map_names::APPS))?;
            let info = by_id.entry(e.app_id).or_insert_with(|| AppInfo {
                id: e.app_id,
                name: format!("#{}", e.app_id),
                vips: Vec::new(),
                no_steer: false,
                no_rate_limit: false,
            });
            if let Some(vip) = Vip::from_key(&key) {
                info.vips.push(vip.to_string());
            }
            info.no_steer = e.flags & app_flags::NO_STEER != 0;
            info.no_rate_limit = e.flags & app_flags::NO_RATE_LIMIT != 0;
        }
        let mut apps: Vec<AppInfo> = by_id.into_values().collect();
        for app in &mut apps {
            app.vips.sort();
        }
        Ok(apps)
    }

    pub fn set_rate_limit(&self, cfg: RateLimitConfig) -> Result<(), MapsError> {
        check_rate_limit(&cfg)?;
        let mut arr: Array<MapData, RateLimitConfig> =
            Array::try_from(self.map(map_names::RATE_LIMIT_CFG)?)
                .map_err(map_err("open", map_names::RATE_LIMIT_CFG))?;
        arr.set(0, cfg, 0)
            .map_err(map_err("update", map_names::RATE_LIMIT_CFG))
    }

    pub fn rate_limit(&self) -> Result<RateLimitConfig, MapsError> {
        let arr: Array<MapData, RateLimitConfig> =
            Array::try_from(self.map(map_names::RATE_LIMIT_CFG)?)
                .map_err(map_err("open", map_names::RATE_LIMIT_CFG))?;
        arr.get(&0, 0)
            .map_err(map_err("lookup", map_names::RATE_LIMIT_CFG))
    }

    fn placements(&self) -> Result<Array<MapData, Placement>, MapsError> {
        Array::try_from(self.map(map_names::PLACEMENT)?)
            .map_err(map_err("open", map_names::PLACEMENT))
    }

    /// Sets where `target` runs (the default, all zero, is here), through the mapping the
    /// workers read (`PlacementTable::set` says why).
    pub fn set_placement(&self, target: u32, placement: Placement) -> Result<(), MapsError> {
        if target >= MAX_PLACEMENTS {
            return Err(MapsError::BadTarget(target));
        }
        self.placement_reader()?.set(target, placement);
        Ok(())
    }

    /// The placement of a target; an app never placed runs locally.
    pub fn placement(&self, target: u32) -> Result<Placement, MapsError> {
        if target >= MAX_PLACEMENTS {
            return Ok(Placement::default());
        }
        self.placements()?
            .get(&target, 0)
            .map_err(map_err("lookup", map_names::PLACEMENT))
    }

    /// PLACEMENT mapped into this process, for the workers: a placement is two memory loads,
    /// no bpf() call.
    pub fn placement_reader(&self) -> Result<PlacementTable, MapsError> {
        let data = MapData::from_pin(self.dir.join(map_names::PLACEMENT))
            .map_err(map_err("open", map_names::PLACEMENT))?;
        let words = MAX_PLACEMENTS as usize * PLACEMENT_WORDS;
        let mapping =
            SharedMapping::new(data.fd().as_fd(), words).map_err(|source| MapsError::Mmap {
                map: map_names::PLACEMENT,
                source,
            })?;
        Ok(PlacementTable(mapping))
    }

    /// Every target placed anywhere but here by default, by id.
    pub fn placement_list(&self) -> Result<Vec<(u32, Placement)>, MapsError> {
        let reader = self.placement_reader()?;
        Ok((0..MAX_PLACEMENTS)
            .map(|id| (id, reader.get(id)))
            .filter(|(_, p)| *p != Placement::default())
            .collect())
    }

    fn stats_map(&self) -> Result<PerCpuArray<MapData, AppStats>, MapsError> {
        PerCpuArray::try_from(self.map(map_names::APP_STATS)?)
            .map_err(map_err("open", map_names::APP_STATS))
    }

    /// A long-lived reader for callers that sample often (the differential test, `stats`).
    pub fn stats_reader(&self) -> Result<StatsReader, MapsError> {
        Ok(StatsReader {
            map: self.stats_map()?,
        })
    }

    pub fn set_worker_config(&self, cfg: WorkerConfig) -> Result<(), MapsError> {
        let mut arr: Array<MapData, WorkerConfig> =
            Array::try_from(self.map(map_names::WORKER_CONFIG)?)
                .map_err(map_err("open", map_names::WORKER_CONFIG))?;
        arr.set(0, cfg, 0)
            .map_err(map_err("update", map_names::WORKER_CONFIG))
    }

    pub fn worker_config(&self) -> Result<WorkerConfig, MapsError> {
        let arr: Array<MapData, WorkerConfig> =
            Array::try_from(self.map(map_names::WORKER_CONFIG)?)
                .map_err(map_err("open", map_names::WORKER_CONFIG))?;
        arr.get(&0, 0)
            .map_err(map_err("lookup", map_names::WORKER_CONFIG))
    }

    /// Workers publish load through an mmap of WORKER_LOAD; this syscall path is for tools/tests.
    pub fn set_worker_load(&self, worker: u32, load: WorkerLoad) -> Result<(), MapsError> {
        if worker >= MAX_WORKERS {
            return Err(MapsError::BadWorker(worker));
        }
        let mut arr: Array<MapData, WorkerLoad> =
            Array::try_from(self.map(map_names::WORKER_LOAD)?)
                .map_err(map_err("open", map_names::WORKER_LOAD))?;
        arr.set(worker, load, 0)
            .map_err(map_err("update", map_names::WORKER_LOAD))
    }

    pub fn worker_loads(&self, n: u32) -> Result<Vec<WorkerLoad>, MapsError> {
        let arr: Array<MapData, WorkerLoad> = Array::try_from(self.map(map_names::WORKER_LOAD)?)
            .map_err(map_err("open", map_names::WORKER_LOAD))?;
        (0..n.min(MAX_WORKERS))
            .map(|i| {
                arr.get(&i, 0)
                    .map_err(map_err("lookup", map_names::WORKER_LOAD))
            })
            .collect()
    }

    /// WORKER_LOAD's fd, for workers to map and publish into.
    pub fn worker_load_fd(&self) -> Result<std::os::fd::OwnedFd, MapsError> {
        let data = MapData::from_pin(self.dir.join(map_names::WORKER_LOAD))
            .map_err(map_err("open", map_names::WORKER_LOAD))?;
        data.fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(MapsError::DupFd)
    }

    /// Enables CPUMAP redirect to each of `cpus` with the given per-CPU queue size.
    pub fn set_worker_cpus(&self, cpus: &[u32], queue_size: u32) -> Result<(), MapsError> {
        let mut map: CpuMap<MapData> = CpuMap::try_from(self.map(map_names::WORKER_CPUS)?)
            .map_err(map_err("open", map_names::WORKER_CPUS))?;
        for &cpu in cpus {
            if cpu >= MAX_WORKERS {
                return Err(MapsError::BadWorker(cpu));
            }
            map.set(cpu, queue_size, None, 0)
                .map_err(|e| MapsError::Map {
                    op: "update",
                    map: map_names::WORKER_CPUS,
                    source: match e {
                        aya::maps::xdp::XdpMapError::MapError(m) => m,
                        other => MapError::InvalidName {
                            name: other.to_string(),
                        },
                    },
                })?;
        }
        Ok(())
    }

    /// Workers on CPUs `0..count`: CPUMAP entries for each, and the steering configuration that
    /// XDP and `select_worker` read.
    pub fn configure_workers(
        &self,
        count: u32,
        load_threshold: u32,
        steer: bool,
        queue_size: u32,
    ) -> Result<(), MapsError> {
        let cpus: Vec<u32> = (0..count).collect();
        self.set_worker_cpus(&cpus, queue_size)?;
        self.set_worker_config(WorkerConfig {
            n_workers: count,
            load_threshold,
            flags: if steer { worker_flags::STEER_CPUMAP } else { 0 },
            _pad: 0,
        })
    }

    /// Registers a worker's listening socket at its index for `select_worker`.
    pub fn set_worker_socket(&self, worker: u32, socket: &impl AsRawFd) -> Result<(), MapsError> {
        if worker >= MAX_WORKERS {
            return Err(MapsError::BadWorker(worker));
        }
        let mut arr: ReusePortSockArray<MapData> =
            ReusePortSockArray::try_from(self.map(map_names::WORKER_SOCKETS)?)
                .map_err(map_err("open", map_names::WORKER_SOCKETS))?;
        match arr.set(worker, socket, 0) {
            // The kernel refuses a socket that already is in a socket array: one an edged
            // handed over, in the slot it registered it in.
            Err(MapError::SyscallError(aya::sys::SyscallError { io_error, .. }))
                if io_error.raw_os_error() == Some(libc::EBUSY) =>
            {
                Ok(())
            }
            other => other.map_err(map_err("update", map_names::WORKER_SOCKETS)),
        }
    }
}

/// u64 words per PLACEMENT entry in its mapping.
const PLACEMENT_WORDS: usize = size_of::<Placement>() / size_of::<u64>();

/// PLACEMENT as this process maps it (see [`PinnedMaps::placement_reader`]).
pub struct PlacementTable(SharedMapping);

impl PlacementTable {
    /// The placement of a target (past the table: here). `kind` and `datacenter` share the
    /// first word, written last: a placement being rewritten is read as the old one or the new
    /// one, never a kind with another's datacenter (at worst with the other's flags).
    pub fn get(&self, target: u32) -> Placement {
        use std::sync::atomic::Ordering::{Acquire, Relaxed};
        let words = self.0.words();
        let at = target as usize * PLACEMENT_WORDS;
        let (Some(first), Some(second)) = (words.get(at), words.get(at + 1)) else {
            return Placement::default();
        };
        let (first, second) = (first.load(Acquire), second.load(Relaxed));
        Placement {
            kind: first as u32,
            datacenter: (first >> 32) as u32,
            flags: second as u32,
            _reserved: (second >> 32) as u32,
        }
    }

    /// Writes where `target` runs with two atomic stores, flags first (a bpf() update copies
    /// the value with no such order).
    pub fn set(&self, target: u32, p: Placement) {
        use std::sync::atomic::Ordering::{Relaxed, Release};
        let words = self.0.words();
        let at = target as usize * PLACEMENT_WORDS;
        let (Some(first), Some(second)) = (words.get(at), words.get(at + 1)) else {
            return;
        };
        second.store(u64::from(p.flags) | (u64::from(p._reserved) << 32), Relaxed);
        first.store(u64::from(p.kind) | (u64::from(p.datacenter) << 32), Release);
    }
}

/// Reads APP_STATS summed over CPUs.
pub struct StatsReader {
    map: PerCpuArray<MapData, AppStats>,
}

impl StatsReader {
    pub fn app(&self, app_id: u32) -> Result<AppStats, MapsError> {
        let per_cpu = self
            .map
            .get(&app_id, 0)
            .map_err(map_err("lookup", map_names::APP_STATS))?;
        let mut sum = AppStats::default();
        for s in per_cpu.iter() {
            sum.add(s);
        }
        Ok(sum)
    }

    /// Every slot with any count (slot 0 holds drops of packets no app could be told for).
    pub fn all(&self) -> Result<BTreeMap<u32, AppStats>, MapsError> {
        let mut out = BTreeMap::new();
        for (id, per_cpu) in self.map.iter().enumerate() {
            let per_cpu = per_cpu.map_err(map_err("iterate", map_names::APP_STATS))?;
            let mut sum = AppStats::default();
            for s in per_cpu.iter() {
                sum.add(s);
            }
            if sum != AppStats::default() {
                out.insert(id as u32, sum);
            }
        }
        Ok(out)
    }
}

fn encode_name(name: &str) -> Result<AppName, MapsError> {
    let ok = !name.is_empty()
        && name.len() <= APP_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        return Err(MapsError::BadAppName(name.to_owned()));
    }
    let mut bytes = [0u8; APP_NAME_LEN];
    bytes[..name.len()].copy_from_slice(name.as_bytes());
    Ok(AppName { bytes })
}

fn decode_name(name: &AppName) -> String {
    let end = name
        .bytes
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(APP_NAME_LEN);
    String::from_utf8_lossy(&name.bytes[..end]).into_owned()
}
