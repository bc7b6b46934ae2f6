//! The canonical multi-datacenter world (`testkit/topologies/canonical.toml`) with a backend
//! and `edged` running at some of its datacenters: what the end-to-end tests, the benchmarks and
//! the demo stand on. Dropping it stops the daemons, removes their pins and the namespaces.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{Arc, atomic::AtomicU64},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use edgeplane_placement::{AppStatus, StatusTable};

use crate::{
    backend::serve_pong,
    edged::{DatacenterSpec, WORKER_PORT},
    nats::{Nats, NatsTls},
    plan::Plan,
    process::Server,
    tls::TestCa,
    world::World,
};

pub const BACKEND_PORT: u16 = 9000;

/// More `key = value` lines for one datacenter's `[runtime]` and `[datacenter]` tables.
#[derive(Default)]
pub struct Tuning {
    pub runtime: String,
    pub datacenter: String,
}

/// How the world's edged get their apps.
enum Apps {
    /// `[[apps]]` tables in each datacenter's file (`apps(backend_url, backend_authority)`).
    Files(String),
    /// From the fleet's control plane: a nats-server in the `nats` namespace, and every edged
    /// with `[control]`; with `true`, over mutual TLS from a CA of the world's.
    Fleet(bool),
}

/// A BPF pin directory, removed on drop.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Canonical {
    pub plan: Plan,
    pub backend: Ipv4Addr,
    /// Requests the backend served.
    pub backend_served: Arc<AtomicU64>,
    // Drop order: edged processes, their pins, the control plane, then the world.
    pub servers: Vec<Server>,
    pins: Vec<(String, Pins)>,
    /// The fleet's NATS, for a world started with `start_fleet`.
    pub nats: Option<Nats>,
    pub world: World,
    scratch: PathBuf,
    edged: PathBuf,
}

impl Canonical {
    /// Builds the world, starts the backend, and `edged` (the binary at `edged`) at each of
    /// `datacenters` with the `[[apps]]` TOML that `apps(backend_url, backend_authority)`
    /// returns, tuned per datacenter by `tuning`. `name` keeps pins and files apart.
    pub fn start(
        name: &str,
        datacenters: &[&'static str],
        holdout: f64,
        edged: &Path,
        apps: impl Fn(&str, &str) -> String,
        tuning: impl Fn(&str) -> Tuning,
    ) -> anyhow::Result<Self> {
        let (url, authority) = Self::backend_urls()?;
        let apps = Apps::Files(apps(&url, &authority));
        Self::start_with(name, datacenters, holdout, edged, apps, tuning)
    }

    /// As `start`, with no apps in any file: a nats-server runs in the `nats` namespace and
    /// every edged takes its apps from it (`[control]`); deploy with `edgectl --nats`.
    pub fn start_fleet(
        name: &str,
        datacenters: &[&'static str],
        holdout: f64,
        edged: &Path,
        tuning: impl Fn(&str) -> Tuning,
    ) -> anyhow::Result<Self> {
        Self::start_with(
            name,
            datacenters,
            holdout,
            edged,
            Apps::Fleet(false),
            tuning,
        )
    }

    /// As `start_fleet`, the fleet's NATS requiring mutual TLS: its certificate, every
    /// datacenter's and edgectl's come from a CA of the world's (`Nats::tls`).
    pub fn start_fleet_tls(
        name: &str,
        datacenters: &[&'static str],
        holdout: f64,
        edged: &Path,
        tuning: impl Fn(&str) -> Tuning,
    ) -> anyhow::Result<Self> {
        Self::start_with(name, datacenters, holdout, edged, Apps::Fleet(true), tuning)
    }

    /// The backend's URL and authority, as apps call it.
    pub fn backend_urls() -> anyhow::Result<(String, String)> {
        let backend = Plan::canonical()
            .hosts
            .iter()
            .find(|h| h.name == "backend")
            .and_then(|h| h.service_addr)
            .context("the canonical plan has a backend with a service address")?;
        Ok((
            format!("http://{backend}:{BACKEND_PORT}/"),
            format!("{backend}:{BACKEND_PORT}"),
        ))
    }

    fn start_with(
        name: &str,
        datacenters: &[&'static str],
        holdout: f64,
        edged: &Path,
        apps: Apps,
        tuning: impl Fn(&str) -> Tuning,
    ) -> anyhow::Result<Self> {
        let plan = Plan::canonical();
        let world = World::build(&plan)?;
        let backend = plan
            .hosts
            .iter()
            .find(|h| h.name == "backend")
            .and_then(|h| h.service_addr)
            .context("the canonical topology has a backend with a service address")?;
        let listener = world
            .ns("backend")
            .run(|| TcpListener::bind((backend, BACKEND_PORT)))??;
        let backend_served = serve_pong(listener);
        let scratch = std::env::temp_dir().join(format!("edgeplane-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&scratch)?;
        let nats = start_nats(&plan, &world, &scratch, &apps)?;
        let mut world = Self {
            plan,
            backend,
            backend_served,
            servers: Vec::new(),
            pins: Vec::new(),
            nats,
            world,
            scratch,
            edged: edged.to_path_buf(),
        };
        if let Some(nats) = &world.nats {
            world.publish_topology(&nats.url())?;
        }
        for dc in datacenters {
            world.start_datacenter(name, dc, holdout, &apps, &tuning(dc))?;
        }
        Ok(world)
    }

    /// edged at datacenter `dc`: its pins, its apps (from the file, or the fleet's NATS) and its
    /// tuning.
    fn start_datacenter(
        &mut self,
        name: &str,
        dc: &str,
        holdout: f64,
        apps: &Apps,
        tune: &Tuning,
    ) -> anyhow::Result<()> {
        let pins = Pins(PathBuf::from(format!(
            "/sys/fs/bpf/edgeplane-{name}-{dc}-{}",
            std::process::id()
        )));
        let _ = std::fs::remove_dir_all(&pins.0);
        let (apps, control) = match (apps, &self.nats) {
            (Apps::Files(apps), _) => (apps.as_str(), String::new()),
            (Apps::Fleet(_), Some(nats)) => (
                "",
                format!(
                    "[control]\nnats = \"{}\"\nsnapshot = \"{}\"\n{}",
                    nats.url(),
                    self.scratch.join(format!("{dc}-fleet.json")).display(),
                    control_tls(nats, dc)?
                ),
            ),
            (Apps::Fleet(_), None) => unreachable!("a fleet world starts its nats"),
        };
        let server = DatacenterSpec {
            name: dc,
            pin_dir: pins.0.clone(),
            scratch: &self.scratch,
            apps,
            control: &control,
            fleet_topology: self.nats.is_some(),
            workers: 1,
            holdout,
            runtime_extra: &tune.runtime,
            datacenter_extra: &tune.datacenter,
        }
        .start(&self.world, &self.edged)
        .with_context(|| format!("starting edged at {dc}"))?;
        self.pins.push((dc.to_string(), pins));
        self.servers.push(server);
        Ok(())
    }

    /// Publishes this world's topology to the fleet (`edgectl fleet topology`, from the POP's
    /// namespace): its datacenters' edged read it there, not from a file.
    fn publish_topology(&self, url: &str) -> anyhow::Result<()> {
        let file = self.scratch.join("fleet-topology.toml");
        std::fs::write(&file, self.world.fleet_toml(WORKER_PORT))?;
        let edgectl = self.edged.with_file_name("edgectl");
        let mut cmd = self
            .world
            .ns("pop")
            .command(edgectl.to_str().context("utf-8 path")?);
        if let Some(tls) = self.nats.as_ref().and_then(|n| n.tls.as_ref()) {
            cmd.envs(tls.edgectl_env());
        }
        let done = cmd
            .args(["--nats", url, "fleet", "topology"])
            .arg(&file)
            .output()?;
        anyhow::ensure!(
            done.status.success(),
            "edgectl fleet topology: {}",
            String::from_utf8_lossy(&done.stderr)
        );
        Ok(())
    }

    /// Starts `dc`'s edged again with the same config (after `Server::kill`, say): its maps
    /// are unpinned and made anew.
    pub fn restart(&mut self, dc: &str) -> anyhow::Result<()> {
        let name = format!("edged ({dc})");
        self.servers.retain(|s| s.name != name);
        let config = self.scratch.join(format!("{dc}.toml"));
        let server = crate::edged::start_with(&self.world, dc, &config, &self.edged)?;
        self.servers.push(server);
        Ok(())
    }

    /// Where `dc`'s edged pinned its maps.
    pub fn pins(&self, dc: &str) -> &Path {
        &self
            .pins
            .iter()
            .find(|(n, _)| n == dc)
            .expect("a datacenter this world started")
            .1
            .0
    }

    /// The POP's workers, as the client reaches them.
    pub fn pop_addr(&self) -> SocketAddr {
        SocketAddr::from((
            self.world
                .addr_of("client", "pop")
                .expect("the canonical world links client and pop"),
            WORKER_PORT,
        ))
    }

    /// A GET from the client through the POP: status, headers, body, time taken.
    pub fn through_pop(
        &self,
        host: &str,
        path: &str,
    ) -> (u16, Vec<(String, String)>, String, Duration) {
        self.through_pop_with("GET", host, path, b"")
    }

    /// As `through_pop`, with any method and body.
    pub fn through_pop_with(
        &self,
        method: &str,
        host: &str,
        path: &str,
        body: &[u8],
    ) -> (u16, Vec<(String, String)>, String, Duration) {
        let pop = self.pop_addr();
        self.world
            .ns("client")
            .run(|| {
                let mut s = TcpStream::connect_timeout(&pop, Duration::from_secs(5)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let started = Instant::now();
                let (status, headers, body) =
                    crate::raw_http::request(&mut s, method, host, path, body);
                (
                    status,
                    headers,
                    String::from_utf8_lossy(&body).into_owned(),
                    started.elapsed(),
                )
            })
            .unwrap()
    }

    /// A GET on `dc`'s admin endpoint, from inside its namespace.
    pub fn admin(&self, dc: &str, path: &str) -> String {
        let admin: SocketAddr = "127.0.0.1:9901".parse().expect("valid address");
        self.world
            .ns(dc)
            .run(|| {
                let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(2)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                String::from_utf8(crate::raw_http::get(&mut s, "admin", path).2).unwrap()
            })
            .unwrap()
    }

    /// Asks `dc`'s edged to reload its configuration (admin `POST /reload`): status and body.
    pub fn reload(&self, dc: &str) -> (u16, String) {
        let admin: SocketAddr = "127.0.0.1:9901".parse().expect("valid address");
        self.world
            .ns(dc)
            .run(|| {
                let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(2)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let (status, _, body) =
                    crate::raw_http::request(&mut s, "POST", "admin", "/reload", b"");
                (status, String::from_utf8_lossy(&body).into_owned())
            })
            .unwrap()
    }

    /// `dc`'s handoff keys file (what its edged's `[datacenter] keys` names).
    pub fn keys_path(&self, dc: &str) -> PathBuf {
        crate::edged::keys_path(&self.scratch, dc)
    }

    /// The sum of a Prometheus counter at `dc` over the series whose labels contain every one
    /// of `labels` (each `key="value"`).
    pub fn metric(&self, dc: &str, name: &str, labels: &[&str]) -> u64 {
        self.admin(dc, "/metrics")
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .filter(|l| labels.iter().all(|label| l.contains(label)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// Polls the POP's placement status until `app`'s contains `needle`; returns it, or the
    /// whole table in the error after `timeout`.
    pub fn wait_status(
        &self,
        app: &str,
        what: &str,
        wanted: impl Fn(&AppStatus) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<AppStatus> {
        let started = Instant::now();
        loop {
            let table = self.placement_status();
            if let Some(status) = table.get(app).filter(|s| wanted(s)) {
                return Ok(status.clone());
            }
            anyhow::ensure!(
                started.elapsed() < timeout,
                "{app}: not {what} within {timeout:?}: {table:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The POP's placement engine's verdict per app.
    pub fn placement_status(&self) -> StatusTable {
        serde_json::from_str(&self.admin("pop", "/placement")).unwrap_or_default()
    }
}

impl Drop for Canonical {
    fn drop(&mut self) {
        self.servers.clear();
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// `[control]`'s `tls = {...}` line for datacenter `dc` when the fleet's NATS requires mutual
/// TLS: a certificate naming `dc` from the world's CA (nothing for a plain NATS).
fn control_tls(nats: &Nats, dc: &str) -> anyhow::Result<String> {
    let Some(tls) = &nats.tls else {
        return Ok(String::new());
    };
    let issued = tls
        .authority
        .issue(&format!("nats-client-{dc}"), &[dc], 30)?;
    Ok(format!(
        "tls = {{ cert = \"{}\", key = \"{}\", ca = \"{}\" }}\n",
        issued.cert.display(),
        issued.key.display(),
        tls.ca.display()
    ))
}

/// Builds the world, starts the backend, and edged at each of `datacenters` with the
/// `[[apps]]` TOML that `apps(backend_url, backend_authority)` returns.
pub fn start(
    test: &str,
    datacenters: &[&'static str],
    holdout: f64,
    apps: impl Fn(&str, &str) -> String,
) -> Canonical {
    start_tuned(test, datacenters, holdout, apps, |_| Tuning::default())
}

/// As `start`, with more settings per datacenter.
pub fn start_tuned(
    test: &str,
    datacenters: &[&'static str],
    holdout: f64,
    apps: impl Fn(&str, &str) -> String,
    tuning: impl Fn(&str) -> Tuning,
) -> Canonical {
    Canonical::start(
        test,
        datacenters,
        holdout,
        &crate::edgeplane_binary("edged"),
        apps,
        tuning,
    )
    .unwrap()
}

/// The fleet's nats-server (over mutual TLS when asked) in a world whose apps come from the
/// fleet; None when they come from files.
fn start_nats(
    plan: &Plan,
    world: &World,
    scratch: &Path,
    apps: &Apps,
) -> anyhow::Result<Option<Nats>> {
    Ok(match apps {
        Apps::Fleet(tls) => {
            let ip = plan
                .hosts
                .iter()
                .find(|h| h.name == "nats")
                .and_then(|h| h.service_addr)
                .context("the canonical plan has a nats host")?;
            let tls = match tls {
                true => Some(NatsTls::issue(TestCa::new(&scratch.join("fleet-ca"))?, ip)?),
                false => None,
            };
            Some(Nats::start_with(
                world.ns("nats"),
                ip,
                &scratch.join("nats"),
                tls,
            )?)
        }
        Apps::Files(_) => None,
    })
}
