//! Shared pieces of edgeplane's end-to-end tests.

pub mod reference;

/// Plain HTTP/1.1 from the test side, written independently of the code under test.
pub mod http {
    pub use edgeplane_bench::http::{Server, get, header};

    /// An edged killed (SIGKILL: no drain) and reaped on drop.
    pub struct Edged(pub Server);

    impl Drop for Edged {
        fn drop(&mut self) {
            self.0.kill();
        }
    }
}

use std::path::{Path, PathBuf};

use edgeplane::{Dataplane, LoadOptions};

pub use edgeplane::root_gate::{require_feature, require_root};

/// A private pin directory per test, removed on drop, so tests run in parallel without sharing maps.
pub struct TestPins {
    dir: PathBuf,
}

impl TestPins {
    pub fn new(test: &str) -> Self {
        let dir = PathBuf::from(format!(
            "/sys/fs/bpf/edgeplane-test-{test}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        Self { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn load(&self) -> anyhow::Result<Dataplane> {
        Dataplane::load(&LoadOptions {
            pin_dir: self.dir.clone(),
        })
    }
}

impl Drop for TestPins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Two hosts joined by one veth: `client` (veth0) and `server` (veth1, where XDP goes).
pub struct TwoHosts {
    pub client: edgeplane_bench::netns::Netns,
    pub server: edgeplane_bench::netns::Netns,
}

impl TwoHosts {
    pub const CLIENT_IF: &str = "veth0";
    pub const SERVER_IF: &str = "veth1";
    pub const CLIENT_V4: &str = "10.77.0.1";
    /// A second client address, for "another source" cases.
    pub const CLIENT2_V4: &str = "10.77.0.3";
    pub const SERVER_V4: &str = "10.77.0.2";
    pub const CLIENT_V6: &str = "fd77::1";
    pub const SERVER_V6: &str = "fd77::2";

    pub fn new() -> anyhow::Result<Self> {
        use edgeplane_bench::netns::{LinkEnd, Netns, veth_pair};
        let client = Netns::new("ep-cli")?;
        let server = Netns::new("ep-srv")?;
        veth_pair(
            &LinkEnd {
                ns: &client,
                iface: Self::CLIENT_IF,
                addrs: &["10.77.0.1/24", "10.77.0.3/24", "fd77::1/64"],
            },
            &LinkEnd {
                ns: &server,
                iface: Self::SERVER_IF,
                addrs: &["10.77.0.2/24", "fd77::2/64"],
            },
        )?;
        Ok(Self { client, server })
    }

    /// Starts `edged --config <config>` in the server's namespace and waits (up to 2 minutes:
    /// a fresh code cache compiles every component) until its admin endpoint at `admin` says
    /// healthy; past that, or if it exits, the error quotes the end of its log.
    pub fn start_edged(
        &self,
        config: &Path,
        admin: std::net::SocketAddr,
    ) -> anyhow::Result<http::Edged> {
        let mut server = edgeplane_bench::http::spawn(
            "edged",
            self.server
                .command(edgeplane_binary("edged").to_str().unwrap_or("edged"))
                .arg("--config")
                .arg(config),
        )?;
        edgeplane_bench::http::wait_until(
            &mut server,
            std::time::Duration::from_secs(120),
            "become healthy",
            || self.admin(admin, "/healthz").map(|(s, _)| s) == Some(200),
        )?;
        Ok(http::Edged(server))
    }

    /// A GET on the server's admin endpoint at `admin`: status and body, None if it does not
    /// answer.
    pub fn admin(&self, admin: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
        use std::time::Duration;
        self.server
            .run(|| {
                let mut s =
                    std::net::TcpStream::connect_timeout(&admin, Duration::from_millis(300))
                        .ok()?;
                s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
                let (status, _, body) = http::get(&mut s, "admin", path);
                Some((status, String::from_utf8_lossy(&body).into_owned()))
            })
            .ok()
            .flatten()
    }

    /// A counter family's value at `admin`, summed over its samples (those whose label `label`
    /// has the given value, when one is given), as the reference OpenMetrics parser reads it.
    pub fn metric(
        &self,
        admin: std::net::SocketAddr,
        name: &str,
        label: Option<(&str, &str)>,
    ) -> u64 {
        let (_, text) = self.admin(admin, "/metrics").expect("metrics");
        let families = parse_openmetrics(&text);
        let family = families
            .as_array()
            .and_then(|f| f.iter().find(|f| f["name"] == name))
            .unwrap_or_else(|| panic!("no {name} in /metrics"));
        family["samples"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| label.is_none_or(|(key, want)| s["labels"][key] == want))
            .map(|s| s["value"].as_f64().unwrap_or(0.0) as u64)
            .sum()
    }

    /// A connection to `server` from the client's address and `port` (call it in the client's
    /// namespace): the source port picks the worker the flow hash sends it to.
    pub fn connect_from(
        port: u16,
        server: std::net::SocketAddr,
    ) -> anyhow::Result<std::net::TcpStream> {
        use std::time::Duration;
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        sock.set_reuse_address(true)?;
        let client = std::net::SocketAddr::new(Self::CLIENT_V4.parse()?, port);
        sock.bind(&client.into())?;
        sock.connect_timeout(&server.into(), Duration::from_secs(3))?;
        let s: std::net::TcpStream = sock.into();
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(s)
    }

    /// Loads the programs and attaches `classify` to the server's veth in the given mode.
    pub fn attach(
        &self,
        pins: &TestPins,
        mode: edgeplane::XdpAttachMode,
    ) -> anyhow::Result<Dataplane> {
        let mut dp = pins.load()?;
        self.server.run(|| dp.attach_xdp(Self::SERVER_IF, mode))??;
        Ok(dp)
    }
}

/// The worker `select_worker` (and XDP steering) picks for a TCP flow, by the shared flow hash.
pub fn expected_worker(
    client: std::net::SocketAddr,
    server: std::net::SocketAddr,
    workers: u32,
) -> u32 {
    use edgeplane_abi::{IPPROTO_TCP, addr_words, flow_hash, worker_for_hash};
    let words = |ip| addr_words(&edgeplane::addr::to_mapped(ip));
    let h = flow_hash(
        &words(client.ip()),
        &words(server.ip()),
        client.port(),
        server.port(),
        IPPROTO_TCP,
    );
    worker_for_hash(h, workers)
}

/// A binary of the `edgeplane` package (edged, edgectl): the release build, whatever profile
/// the tests were built in (a debug edged's wasmtime compiles large components too slowly for a
/// test to wait on). Built once per test binary; a no-op when up to date.
pub fn edgeplane_binary(name: &str) -> PathBuf {
    use std::sync::OnceLock;
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let release = BUILT.get_or_init(|| {
        // target/<profile>/deps/<this test> -> target/
        let target = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
            .expect("the test executable lives in target/<profile>/deps");
        let mut cargo =
            std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        // As the workspace's own build saw the environment: this test's package variables would
        // make ring's build script run again, and edged be rebuilt, for every test binary.
        let status = edgeplane_bench::guest_apps::clean_cargo_env(&mut cargo)
            .args([
                "build",
                "--locked",
                "--release",
                "-p",
                "edgeplane",
                "--bins",
            ])
            .env("CARGO_TARGET_DIR", &target)
            .status()
            .expect("cargo build");
        assert!(status.success(), "building edged/edgectl (release) failed");
        target.join("release")
    });
    release.join(name)
}

/// The canonical multi-datacenter world (see `edgeplane_bench::canonical`), with this test
/// build's `edged`.
pub mod canonical {
    pub use edgeplane_bench::canonical::{BACKEND_PORT, Canonical, Tuning};

    use crate::edgeplane_binary;

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
            &edgeplane_binary("edged"),
            apps,
            tuning,
        )
        .unwrap()
    }
}

/// `text` parsed by the reference OpenMetrics parser (the Python `prometheus_client`, in the
/// venv `./x setup` makes): each family's name, type and samples (name, labels, value), as
/// JSON. Panics when the parser is missing or refuses the text.
pub fn parse_openmetrics(text: &str) -> serde_json::Value {
    use std::io::Write as _;
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for f in text_string_to_metric_families(sys.stdin.read()):
    out.append({"name": f.name, "type": f.type,
                "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]})
print(json.dumps(out))
"#;
    let python = std::env::var("EDGEPLANE_PYTHON")
        .unwrap_or_else(|_| "/var/tmp/edgeplane-tools/venv/bin/python3".to_owned());
    let mut child = std::process::Command::new(&python)
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{python}: {e}: run ./x setup (it makes the Python venv)"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused the text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
