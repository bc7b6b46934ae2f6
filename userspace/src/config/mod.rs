//! `edged`'s configuration file (TOML). Every field has a default, so an empty file is valid.

mod locate;
pub mod tls;

pub use locate::Invalid;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use edgeplane_dataplane::{
    client::PoolConfig,
    http::HttpLimits,
    router::access_log::AccessLogConfig,
    wasm::{AppLimits, CacheBudget, EngineConfig},
};

use anyhow::Context as _;
use serde::Deserialize;

use crate::{
    XdpAttachMode,
    addr::{Cidr, Vip},
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgedConfig {
    pub pin_dir: PathBuf,
    pub xdp: XdpConfig,
    pub workers: WorkersConfig,
    pub rate_limit: RateLimitSection,
    pub blocklist: Vec<String>,
    pub server: ServerConfig,
    pub http: HttpLimits,
    pub runtime: RuntimeConfig,
    /// This edged as one datacenter of a topology (handoffs to and from its peers).
    pub datacenter: Option<DatacenterConfig>,
    /// JSON lines, one per request (sampled): app, target, reason, status, bytes, duration.
    pub access_log: AccessLogConfig,
    /// Take apps, blocklist, rate limit and pins from the fleet's control plane (NATS).
    pub control: Option<ControlConfig>,
    /// HTTPS on the workers' port: the certificate for names no app's certificate covers.
    pub tls: Option<tls::CertFiles>,
    pub apps: Vec<AppConfig>,
}

/// `[control]`: this edged takes its apps, blocklist, rate limit and pins from the fleet.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// The NATS server (`nats://host:4222`).
    pub nats: String,
    /// Where the last-known-good fleet state is kept (default:
    /// `<runtime.cache_dir>/fleet-snapshot.json`).
    #[serde(default)]
    pub snapshot: Option<PathBuf>,
    /// How often this datacenter publishes its heartbeat and measurements.
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub heartbeat: std::time::Duration,
    /// Mutual TLS with NATS: this datacenter's certificate and key, and the CA the server's
    /// certificate must come from (without it: plain TCP).
    #[serde(default)]
    pub tls: Option<tls::IdentityFiles>,
}

fn default_heartbeat() -> std::time::Duration {
    std::time::Duration::from_secs(1)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatacenterConfig {
    /// This datacenter's name in the topology.
    pub name: String,
    /// The topology file: every datacenter with its addresses (see `topology`). Relative paths
    /// here and in `keys` are relative to the config file. On the fleet (`[control]`) it may be
    /// left out: the control plane's topology is used.
    #[serde(default)]
    pub topology: Option<PathBuf>,
    /// The handoff keys this datacenter shares with each peer (see `keys`); mode 600.
    pub keys: PathBuf,
    /// Handoff or probe failures in a row that mark a peer down.
    #[serde(default = "default_down_after")]
    pub peer_down_after: u32,
    /// Probe answers in a row that bring a down peer back.
    #[serde(default = "default_up_after")]
    pub peer_up_after: u32,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(default = "default_handoff_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Share of an engine-placed app's requests served here anyway, as its baseline.
    #[serde(default = "default_holdout")]
    pub holdout: f64,
    /// Send requests on to the region when a worker already runs this many instances
    /// (default: `runtime.max_in_flight`, when it would refuse them; 0: never).
    #[serde(default)]
    pub overflow_in_flight: Option<u32>,
    /// Send requests for an app whose code is not resident here on to the region while the
    /// app gets fewer than this many requests per second at a worker (0: never).
    #[serde(default = "default_popular_rps")]
    pub popular_rps: f64,
    /// Mutual TLS with the peers: this datacenter's certificate (naming it) and key, and the
    /// fleet's CA its peers' certificates must come from. Without it, handoffs go over plain
    /// TCP, authenticated by their HMAC only.
    #[serde(default)]
    pub tls: Option<tls::IdentityFiles>,
}

fn default_down_after() -> u32 {
    edgeplane_dataplane::handoff::HealthPolicy::default().down_after
}

fn default_up_after() -> u32 {
    edgeplane_dataplane::handoff::HealthPolicy::default().up_after
}

fn default_popular_rps() -> f64 {
    1.0
}

fn default_holdout() -> f64 {
    0.01
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(1)
}

fn default_handoff_timeout() -> Duration {
    Duration::from_secs(30)
}

impl DatacenterConfig {
    pub fn load_topology(&self) -> anyhow::Result<crate::topology::Topology> {
        let path = self.topology.as_ref().with_context(|| {
            format!(
                "datacenter {}: no topology: set [datacenter] topology, or run on the fleet ([control]) after `edgectl fleet topology`",
                self.name
            )
        })?;
        crate::topology::Topology::load(path)
    }

    /// The keys shared with each peer of `topology`.
    pub fn load_keys(
        &self,
        topology: &crate::topology::Topology,
    ) -> anyhow::Result<edgeplane_dataplane::handoff::KeyRing> {
        crate::keys::load(&self.keys, topology, &self.name)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Where the workers listen (one SO_REUSEPORT group). Default: 0.0.0.0 on the port the
    /// apps' TCP VIPs share.
    pub listen: Option<SocketAddr>,
    /// Health, metrics and observations.
    pub admin: SocketAddr,
    /// Add `x-edge-worker` to responses.
    pub debug_headers: bool,
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Where a new edged takes the listening sockets over from this one (`edged --takeover`).
    /// Default: `/run/edgeplane/<pin_dir>.sock`, one per set of pins.
    pub upgrade_socket: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: None,
            admin: "127.0.0.1:9901".parse().expect("valid address"),
            debug_headers: false,
            drain_timeout: Duration::from_secs(10),
            upgrade_socket: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    pub engine: EngineConfig,
    pub cache: CacheBudget,
    /// Precompiled components, keyed by content hash.
    pub cache_dir: PathBuf,
    /// Concurrent app instances per worker before answering 503.
    pub max_in_flight: u32,
    /// Each worker's keep-alive connections for subrequests and handoffs.
    pub pool: PoolConfig,
    /// While idle, each worker keeps the next fresh instance of this many of its hottest
    /// fresh-instance apps instantiated (0: off). TUNING.md, "Large components".
    pub prepare_ahead: u32,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            engine: EngineConfig::default(),
            cache: CacheBudget::default(),
            cache_dir: PathBuf::from("/var/cache/edgeplane/code"),
            max_in_flight: 128,
            pool: PoolConfig::default(),
            prepare_ahead: 4,
        }
    }
}

impl Default for EdgedConfig {
    fn default() -> Self {
        Self {
            pin_dir: PathBuf::from(crate::DEFAULT_PIN_DIR),
            xdp: XdpConfig::default(),
            workers: WorkersConfig::default(),
            rate_limit: RateLimitSection::default(),
            blocklist: Vec::new(),
            server: ServerConfig::default(),
            http: HttpLimits::default(),
            runtime: RuntimeConfig::default(),
            datacenter: None,
            access_log: AccessLogConfig::default(),
            control: None,
            tls: None,
            apps: Vec::new(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct XdpConfig {
    /// Interfaces `classify` is attached to.
    pub interfaces: Vec<String>,
    pub mode: XdpAttachMode,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkersConfig {
    /// Workers, one per CPU from CPU 0; 0 means one per online CPU.
    pub count: u32,
    /// In-flight requests above which new connections go to the least loaded worker (0: off).
    pub load_threshold: u32,
    /// Redirect app flows to their worker's CPU through CPUMAP.
    pub steer: bool,
    /// Pin each worker thread to its CPU (see `WorkerOptions::pin`).
    pub pin: bool,
    /// CPUMAP per-CPU queue size (frames).
    pub cpumap_queue_size: u32,
}

impl Default for WorkersConfig {
    fn default() -> Self {
        Self {
            count: 0,
            load_threshold: 256,
            steer: true,
            pin: true,
            cpumap_queue_size: 2048,
        }
    }
}

#[derive(Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitSection {
    pub enabled: bool,
    pub pps: u64,
    pub burst: u64,
    /// Sources share a bucket per IPv4 /n (default 32) and per IPv6 /n (default 64: a host that
    /// rotates its address within its /64 is still one source).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub v4_prefix: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub v6_prefix: Option<u8>,
}

impl RateLimitSection {
    /// The RATE_LIMIT_CFG entry this section sets (the config's, edgectl's and the fleet's).
    pub fn map_entry(&self) -> edgeplane_abi::RateLimitConfig {
        edgeplane_abi::RateLimitConfig {
            pps: self.pps,
            burst: self.burst,
            flags: if self.enabled {
                edgeplane_abi::rate_limit_flags::ENABLED
            } else {
                0
            },
            v4_prefix: self.v4_prefix.unwrap_or(0),
            v6_prefix: self.v6_prefix.unwrap_or(0),
            _pad: 0,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    pub name: String,
    /// VIP:port/proto the XDP program classifies as this app; none for apps reached by Host only.
    #[serde(default)]
    pub vips: Vec<String>,
    #[serde(default)]
    pub id: Option<u32>,
    #[serde(default = "yes")]
    pub steer: bool,
    #[serde(default = "yes")]
    pub rate_limit: bool,
    /// The app's wasi:http component (relative paths are relative to the config file). Apps
    /// without one are classified and guarded by XDP only.
    #[serde(default)]
    pub component: Option<PathBuf>,
    /// A fixed 200 text/plain body served by the workers without wasm (static route).
    #[serde(default)]
    pub static_body: Option<String>,
    /// Host headers routed to this app.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Serve requests whose Host matches no app.
    #[serde(default)]
    pub default: bool,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `host:port` the app may call.
    #[serde(default)]
    pub allowed_backends: Vec<String>,
    #[serde(default)]
    pub limits: AppLimits,
    /// Where the app runs: `{ mode = "smart" }` lets the placement engine choose.
    #[serde(default)]
    pub placement: AppPlacement,
    /// A split app's other functions, each with its own component and placement; the app's
    /// code calls one at `http://<function>.fn.internal/`. Each runs as an app named
    /// `<app>.<function>` (see `edgeplane_dataplane::functions`).
    #[serde(default)]
    pub functions: Vec<AppConfig>,
    /// The certificate served for this app's `hosts` (by SNI) over HTTPS.
    #[serde(default)]
    pub tls: Option<tls::CertFiles>,
    /// Set for a split app and its functions when the config is read.
    #[serde(skip)]
    pub split_app: Option<String>,
    /// Where the app is in the file (`apps[2]`, `apps[2].functions[0]`), for errors.
    #[serde(skip)]
    pub at: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlacementMode {
    /// Always here (unless `edgectl placement set` says otherwise).
    #[default]
    Local,
    /// The engine places the app where it runs fastest.
    Smart,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlacementGoal {
    /// The fastest datacenter for a request.
    #[default]
    Latency,
    /// Here, unless another datacenter saves at least `min_saving` per request.
    LocalFirst,
}

/// Where an app runs. `{ mode = "smart" }` leaves it to the engine (goal `latency` or
/// `local-first`); a hint places it without waiting for traffic: `{ region = "dc2" }` at that
/// datacenter, `{ host = "10.0.0.5:5432" }` or `{ hostname = "db.example" }` at the datacenter
/// nearest to that backend.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppPlacement {
    pub mode: PlacementMode,
    pub goal: PlacementGoal,
    #[serde(with = "humantime_serde")]
    pub min_saving: Duration,
    pub region: Option<String>,
    pub host: Option<String>,
    pub hostname: Option<String>,
}

impl Default for AppPlacement {
    fn default() -> Self {
        Self {
            mode: PlacementMode::Local,
            goal: PlacementGoal::Latency,
            min_saving: Duration::from_millis(50),
            region: None,
            host: None,
            hostname: None,
        }
    }
}

impl AppPlacement {
    /// The backend a `host` or `hostname` hint names, as `host:port` (hostname: port 80).
    pub fn hinted_backend(&self) -> Option<String> {
        self.host.clone().or_else(|| {
            self.hostname.as_ref().map(|h| {
                if h.contains(':') {
                    h.clone()
                } else {
                    format!("{h}:80")
                }
            })
        })
    }

    fn check(&self, app: &str) -> Result<(), String> {
        let hints = [&self.region, &self.host, &self.hostname]
            .iter()
            .filter(|h| h.is_some())
            .count();
        if hints > 1 {
            return Err(format!(
                "app {app}: placement takes one hint (region, host or hostname), not {hints}"
            ));
        }
        if hints == 1 && self.mode != PlacementMode::Local {
            return Err(format!(
                "app {app}: a placement hint replaces mode = \"smart\"; give one or the other"
            ));
        }
        Ok(())
    }
}

fn yes() -> bool {
    true
}

impl EdgedConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        Self::read(path).map(|(cfg, _)| cfg)
    }

    /// The config at `path` and its text. An error says where: `file:line: field: why`.
    pub fn read(path: &Path) -> anyhow::Result<(Self, String)> {
        Self::read_relative_to(path, path.parent().unwrap_or(Path::new(".")))
    }

    /// As `read`, its relative paths taken from `base`: the operator's file's directory, also
    /// for the copy composed with the fleet's state, which sits beside the snapshot.
    pub fn read_relative_to(path: &Path, base: &Path) -> anyhow::Result<(Self, String)> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut cfg = Self::parse(&text).map_err(|e| located(path, &text, e))?;
        for file in cfg.file_paths_mut() {
            if file.is_relative() {
                *file = base.join(&*file);
            }
        }
        Ok((cfg, text))
    }

    /// Every file the configuration names (relative ones are relative to its file).
    fn file_paths_mut(&mut self) -> Vec<&mut PathBuf> {
        let mut files: Vec<&mut PathBuf> = Vec::new();
        if let Some(dc) = &mut self.datacenter {
            files.extend(dc.topology.as_mut());
            files.push(&mut dc.keys);
            files.extend(
                dc.tls
                    .as_mut()
                    .into_iter()
                    .flat_map(tls::IdentityFiles::paths_mut),
            );
        }
        if let Some(control) = &mut self.control {
            files.extend(
                control
                    .tls
                    .as_mut()
                    .into_iter()
                    .flat_map(tls::IdentityFiles::paths_mut),
            );
        }
        files.extend(
            self.tls
                .as_mut()
                .into_iter()
                .flat_map(tls::CertFiles::paths_mut),
        );
        for app in &mut self.apps {
            files.extend(app.component.as_mut());
            files.extend(
                app.tls
                    .as_mut()
                    .into_iter()
                    .flat_map(tls::CertFiles::paths_mut),
            );
        }
        files
    }

    /// Where successors take this edged's listeners over (see `ServerConfig::upgrade_socket`).
    pub fn upgrade_socket(&self) -> PathBuf {
        self.server.upgrade_socket.clone().unwrap_or_else(|| {
            let name: String = self
                .pin_dir
                .to_string_lossy()
                .trim_matches('/')
                .chars()
                .map(|c| if c == '/' { '-' } else { c })
                .collect();
            PathBuf::from(format!("/run/edgeplane/{name}.sock"))
        })
    }

    /// The workers' listen address: configured, or 0.0.0.0 on the port all TCP VIPs share.
    pub fn listen_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        if let Some(a) = self.server.listen {
            return Ok(Some(a));
        }
        let mut ports = std::collections::BTreeSet::new();
        for app in self
            .apps
            .iter()
            .filter(|a| a.component.is_some() || a.static_body.is_some())
        {
            for vip in &app.vips {
                let vip: Vip = vip.parse()?;
                if vip.proto == crate::addr::Protocol::Tcp {
                    ports.insert(vip.addr.port());
                }
            }
        }
        match ports.len() {
            0 => Ok(None),
            1 => Ok(Some(SocketAddr::from((
                [0, 0, 0, 0],
                *ports.first().expect("one port"),
            )))),
            _ => anyhow::bail!(
                "apps with components listen on several ports {ports:?}: workers share one listener; set server.listen"
            ),
        }
    }

    /// Turns each split app's functions into apps of their own, reachable only at their
    /// internal host names.
    fn flatten_functions(&mut self) -> anyhow::Result<()> {
        use edgeplane_dataplane::functions;
        let mut flattened = Vec::new();
        for (i, app) in self.apps.iter_mut().enumerate() {
            app.at = format!("apps[{i}]");
            for (k, h) in app.hosts.iter().enumerate() {
                if functions::is_internal(h) {
                    return Err(Invalid::error(
                        format!("{}.hosts[{k}]", app.at),
                        format!(
                            "app {}: host {h:?} is in the domain reserved for function calls ({})",
                            app.name,
                            functions::DOMAIN
                        ),
                    ));
                }
            }
            if app.functions.is_empty() {
                continue;
            }
            app.split_app = Some(app.name.clone());
            for (j, mut f) in std::mem::take(&mut app.functions).into_iter().enumerate() {
                f.at = format!("{}.functions[{j}]", app.at);
                let invalid = |field: &str, why: String| {
                    Invalid::error(format!("{}.functions[{j}]{field}", app.at), why)
                };
                if f.name.is_empty()
                    || !f
                        .name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                {
                    return Err(invalid(
                        ".name",
                        format!(
                            "app {}: function name {:?} must be a DNS label (a-z, 0-9, -)",
                            app.name, f.name
                        ),
                    ));
                }
                if !(f.vips.is_empty()
                    && f.hosts.is_empty()
                    && !f.default
                    && f.static_body.is_none()
                    && f.functions.is_empty())
                {
                    return Err(invalid(
                        "",
                        format!(
                            "app {}: function {} is reached only through its app: it takes no vips, hosts, default, static_body or functions",
                            app.name, f.name
                        ),
                    ));
                }
                if f.component.is_none() {
                    return Err(invalid(
                        ".component",
                        format!("app {}: function {} needs a component", app.name, f.name),
                    ));
                }
                f.hosts = vec![functions::internal_host(&app.name, &f.name)];
                f.name = functions::app_name(&app.name, &f.name);
                f.split_app = app.split_app.clone();
                flattened.push(f);
            }
        }
        self.apps.extend(flattened);
        Ok(())
    }

    /// Parses and checks addresses up front, so a typo fails at start-up (or a reload is
    /// refused) rather than half-applied. A check that fails is an [`Invalid`] naming its field.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut cfg: Self = toml::from_str(text)?;
        cfg.flatten_functions()?;
        // In-flight instances plus as many parked warm ones (instance reuse) must fit the pool.
        if cfg.runtime.max_in_flight.saturating_mul(2) > cfg.runtime.engine.max_instances {
            return Err(Invalid::error(
                "runtime.max_in_flight",
                format!(
                    "runtime.max_in_flight ({}) may be at most half of runtime.engine.max_instances ({})",
                    cfg.runtime.max_in_flight, cfg.runtime.engine.max_instances
                ),
            ));
        }
        for (i, cidr) in cfg.blocklist.iter().enumerate() {
            if let Err(e) = cidr.parse::<Cidr>() {
                return Err(Invalid::error(format!("blocklist[{i}]"), e));
            }
        }
        let rl = &cfg.rate_limit;
        if !rl.v4_prefix.is_none_or(|p| (1..=32).contains(&p)) {
            return Err(Invalid::error(
                "rate_limit.v4_prefix",
                "rate_limit.v4_prefix must be 1..=32",
            ));
        }
        if !rl.v6_prefix.is_none_or(|p| (1..=128).contains(&p)) {
            return Err(Invalid::error(
                "rate_limit.v6_prefix",
                "rate_limit.v6_prefix must be 1..=128",
            ));
        }
        // What the map would refuse is refused here, before any of a reload is applied.
        if let Err(e) = crate::maps::check_rate_limit(&rl.map_entry()) {
            return Err(Invalid::error("rate_limit", format!("rate_limit: {e}")));
        }
        let mut names = std::collections::HashSet::new();
        for app in &cfg.apps {
            if !names.insert(app.name.as_str()) {
                return Err(Invalid::error(
                    format!("{}.name", app.at),
                    format!("a second app named {:?}", app.name),
                ));
            }
            app.placement
                .check(&app.name)
                .map_err(|why| Invalid::error(format!("{}.placement", app.at), why))?;
            for (k, vip) in app.vips.iter().enumerate() {
                if let Err(e) = vip.parse::<Vip>() {
                    return Err(Invalid::error(
                        format!("{}.vips[{k}]", app.at),
                        format!("app {}: {e}", app.name),
                    ));
                }
            }
        }
        check_host_claims(&cfg.apps)?;
        Ok(cfg)
    }
}

/// Each host belongs to one app, and one app at most is the default: routes are keyed by host,
/// so a second claim would silently take the first app's traffic. Hosts compare as routing
/// compares them, case-insensitively (routing matches whole names: there are no wildcards to
/// overlap).
fn check_host_claims(apps: &[AppConfig]) -> anyhow::Result<()> {
    let mut owners: std::collections::HashMap<String, &str> = Default::default();
    let mut default: Option<&str> = None;
    for app in apps {
        for (k, host) in app.hosts.iter().enumerate() {
            if let Some(first) = owners.insert(host.to_ascii_lowercase(), &app.name)
                && first != app.name
            {
                return Err(Invalid::error(
                    format!("{}.hosts[{k}]", app.at),
                    format!(
                        "apps {first:?} and {:?} both claim host {host:?}: a host belongs to one app",
                        app.name
                    ),
                ));
            }
        }
        if app.default {
            if let Some(first) = default {
                return Err(Invalid::error(
                    format!("{}.default", app.at),
                    format!(
                        "apps {first:?} and {:?} are both the default: one app at most serves unknown hosts",
                        app.name
                    ),
                ));
            }
            default = Some(&app.name);
        }
    }
    Ok(())
}

/// `error` about the config at `path` (text `text`), told with its file and line.
pub fn located(path: &Path, text: &str, error: anyhow::Error) -> anyhow::Error {
    let file = path.display();
    if let Some(invalid) = error.downcast_ref::<Invalid>() {
        return match locate::line_of_field(text, &invalid.field) {
            Some(line) => anyhow::anyhow!("{file}:{line}: {invalid}"),
            None => anyhow::anyhow!("{file}: {invalid}"),
        };
    }
    if let Some(de) = error.downcast_ref::<toml::de::Error>() {
        let line = de.span().map(|s| locate::line_of(text, s.start));
        let source = line
            .and_then(|l| text.lines().nth(l - 1))
            .map(|l| format!(" (in `{}`)", l.trim()))
            .unwrap_or_default();
        return match line {
            Some(line) => anyhow::anyhow!("{file}:{line}: {}{source}", de.message().trim()),
            None => anyhow::anyhow!("{file}: {}", de.message().trim()),
        };
    }
    error.context(format!("in {file}"))
}

#[cfg(test)]
mod tests;
