//! Running `edged` as one datacenter of a namespace world, for benchmarks and tests.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;

use crate::{
    netns::Netns,
    process::{Server, spawn, wait_listening},
    world::World,
};

/// The port every datacenter's workers listen on in a world.
pub const WORKER_PORT: u16 = 8080;

/// One datacenter's edged: its pins, its config and what it serves.
pub struct DatacenterSpec<'a> {
    pub name: &'a str,
    pub pin_dir: PathBuf,
    pub scratch: &'a Path,
    /// `[[apps]]` tables, as TOML.
    pub apps: &'a str,
    /// A `[control]` table (the fleet's NATS), or nothing.
    pub control: &'a str,
    /// Leave the topology out of the file: the fleet's (published with `edgectl fleet
    /// topology`) is used.
    pub fleet_topology: bool,
    pub workers: u32,
    /// Share of engine-placed requests kept here as the baseline.
    pub holdout: f64,
    /// More `key = value` lines for the `[runtime]` and `[datacenter]` tables.
    pub runtime_extra: &'a str,
    pub datacenter_extra: &'a str,
}

impl<'a> DatacenterSpec<'a> {
    /// One worker, no holdout, apps from the file, the topology from the world's file: a
    /// datacenter as the handoff benchmark and the address tests run it.
    pub fn plain(name: &'a str, bench: &str, scratch: &'a Path, apps: &'a str) -> Self {
        Self {
            name,
            pin_dir: PathBuf::from(format!(
                "/sys/fs/bpf/edgeplane-{bench}-{}-{name}",
                std::process::id()
            )),
            scratch,
            apps,
            control: "",
            fleet_topology: false,
            workers: 1,
            holdout: 0.0,
            runtime_extra: "",
            datacenter_extra: "",
        }
    }

    pub fn config(&self) -> String {
        format!(
            r#"
pin_dir = "{pins}"
[workers]
count = {workers}
steer = false
[server]
listen = "0.0.0.0:{WORKER_PORT}"
admin = "127.0.0.1:9901"
debug_headers = true
[runtime]
cache_dir = "{cache}"
{runtime_extra}
[datacenter]
name = "{name}"
{topology}
keys = "{keys}"
holdout = {holdout}
{datacenter_extra}
{control}
{apps}
"#,
            pins = self.pin_dir.display(),
            workers = self.workers,
            cache = self.scratch.join("cache").display(),
            name = self.name,
            topology = if self.fleet_topology {
                String::new()
            } else {
                format!("topology = \"{}\"", self.topology_path().display())
            },
            keys = self.keys_path().display(),
            holdout = self.holdout,
            apps = self.apps,
            runtime_extra = self.runtime_extra,
            datacenter_extra = self.datacenter_extra,
            control = self.control,
        )
    }

    /// The world's topology file (every datacenter's addresses), shared by its datacenters.
    pub fn topology_path(&self) -> PathBuf {
        self.scratch.join("topology.toml")
    }

    /// This datacenter's handoff keys.
    pub fn keys_path(&self) -> PathBuf {
        keys_path(self.scratch, self.name)
    }

    /// Starts `edged` inside the datacenter's namespace and waits until its workers listen.
    pub fn start(&self, world: &World, edged_bin: &Path) -> anyhow::Result<Server> {
        std::fs::write(self.topology_path(), world.fleet_toml(WORKER_PORT))?;
        world.keys.write(self.name, &self.keys_path())?;
        let config = self.scratch.join(format!("{}.toml", self.name));
        std::fs::write(&config, self.config())?;
        start_with(world, self.name, &config, edged_bin)
    }
}

/// Starts `edged` with `config` in datacenter `name`'s namespace and waits until its workers
/// listen (a first start, or a restart with the same config).
pub fn start_with(
    world: &World,
    name: &str,
    config: &Path,
    edged_bin: &Path,
) -> anyhow::Result<Server> {
    let addr = SocketAddr::from((
        world
            .plan
            .links
            .iter()
            .enumerate()
            .find_map(|(i, l)| {
                let (a, b) = crate::plan::Plan::link_addrs(i);
                if l.between[0] == name {
                    Some(a)
                } else if l.between[1] == name {
                    Some(b)
                } else {
                    None
                }
            })
            .context("a datacenter without links")?,
        WORKER_PORT,
    ));
    start_in(world.ns(name), name, config, edged_bin, addr)
}

/// Where a world's datacenter `dc` keeps its handoff keys, under `scratch`.
pub fn keys_path(scratch: &Path, dc: &str) -> PathBuf {
    scratch.join(format!("{dc}.keys.toml"))
}

/// The config of an edged outside any world for a benchmark: one pinned worker on CPU 0 on
/// 127.0.0.1:`port`, its admin endpoint on `admin_port`, pins and code cache of its own, one app.
pub fn one_worker_config(
    bench: &str,
    port: u16,
    admin_port: u16,
    cache: &Path,
    app: &str,
    component: &Path,
) -> String {
    format!(
        r#"pin_dir = "/sys/fs/bpf/edgeplane-{bench}-{pid}"
[workers]
steer = false
pin = true
count = 1
[server]
listen = "127.0.0.1:{port}"
admin = "127.0.0.1:{admin_port}"
[runtime]
cache_dir = "{cache}"
[[apps]]
name = "{app}"
component = "{component}"
"#,
        pid = std::process::id(),
        cache = cache.display(),
        component = component.display(),
    )
}

/// Starts `edged` with `config` in this namespace and waits until its workers listen on
/// `addr` (two minutes: a fresh code cache compiles every component). Its pins go with it.
pub fn start_local(config: &Path, edged_bin: &Path, addr: SocketAddr) -> anyhow::Result<Server> {
    let mut server = spawn(
        "edged",
        std::process::Command::new(edged_bin)
            .arg("--config")
            .arg(config)
            .arg("--unpin-on-exit"),
    )?;
    wait_listening(&mut server, addr, Duration::from_secs(120))?;
    Ok(server)
}

/// Starts `edged` with `config` inside `ns` and waits until its workers listen on `addr`.
pub fn start_in(
    ns: &Netns,
    name: &str,
    config: &Path,
    edged_bin: &Path,
    addr: SocketAddr,
) -> anyhow::Result<Server> {
    let mut server = spawn(
        &format!("edged ({name})"),
        ns.command(edged_bin.to_str().context("utf-8 path")?)
            .arg("--config")
            .arg(config)
            .arg("--unpin-on-exit"),
    )?;
    ns.run(|| wait_listening(&mut server, addr, Duration::from_secs(120)))??;
    Ok(server)
}

/// Sets where `app` runs in the edged whose maps are pinned at `pin_dir`.
pub fn place(pin_dir: &Path, app: &str, placement: edgeplane_abi::Placement) -> anyhow::Result<()> {
    let maps = edgeplane::PinnedMaps::open(pin_dir)?;
    let id = maps.app_id(app)?;
    maps.set_placement(id, placement)?;
    Ok(())
}
