//! Shared pieces of edgeplane's end-to-end tests.

pub mod reference;

/// Plain HTTP/1.1 from the test side, written independently of the code under test.
pub mod http {
    use std::{
        io::{Read as _, Write as _},
        net::TcpStream,
        process::Child,
    };

    /// Sends a GET on `s` and reads the whole (Content-Length) response: status, headers
    /// (names lower-cased), body.
    pub fn get(s: &mut TcpStream, host: &str, path: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
            .unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let mut lines = head.split("\r\n");
                let status = lines
                    .next()
                    .unwrap()
                    .split(' ')
                    .nth(1)
                    .unwrap()
                    .parse()
                    .unwrap();
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(": "))
                    .map(|(a, b)| (a.to_ascii_lowercase(), b.to_owned()))
                    .collect();
                let len: usize = headers
                    .iter()
                    .find(|(n, _)| n == "content-length")
                    .map(|(_, v)| v.parse().unwrap())
                    .unwrap();
                while buf.len() < end + 4 + len {
                    let n = s.read(&mut chunk).unwrap();
                    assert!(n > 0, "connection closed mid-response");
                    buf.extend_from_slice(&chunk[..n]);
                }
                return (status, headers, buf[end + 4..end + 4 + len].to_vec());
            }
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "connection closed before a response");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
        h.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// A child process (edged) killed and reaped on drop.
    pub struct Edged(pub Child);

    impl Drop for Edged {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

use std::path::{Path, PathBuf};

use edgeplane::{Dataplane, LoadOptions};

/// True when the test may run; otherwise prints why it is skipped, loudly.
pub fn require_root(test: &str) -> bool {
    if edgeplane_bench::netns::is_root() {
        return true;
    }
    eprintln!(
        "\n!!!!! SKIPPED {test}: needs root (network namespaces, XDP, BPF maps). CI runs as root. !!!!!\n"
    );
    false
}

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

/// A binary of the `edgeplane` package (edged, edgectl), built if missing.
pub fn edgeplane_binary(name: &str) -> PathBuf {
    use std::sync::OnceLock;
    static BUILT: OnceLock<()> = OnceLock::new();
    // target/<profile>/deps/<this test> -> target/<profile>/
    let dir = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    BUILT.get_or_init(|| {
        let profile = dir
            .file_name()
            .and_then(|p| p.to_str())
            .unwrap_or("debug")
            .to_owned();
        let mut cmd =
            std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "--locked", "-p", "edgeplane", "--bins"]);
        if profile == "release" {
            cmd.arg("--release");
        }
        assert!(
            cmd.status().expect("cargo build").success(),
            "building edged/edgectl failed"
        );
    });
    dir.join(name)
}

/// The canonical multi-datacenter world with a backend and edged running at some datacenters.
pub mod canonical {
    use std::{
        net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
        path::PathBuf,
        sync::{Arc, atomic::AtomicU64},
        time::{Duration, Instant},
    };

    use edgeplane::topology::Topology;
    use edgeplane_bench::{
        backend::serve_pong,
        edged::{DatacenterSpec, WORKER_PORT},
        http::Server,
        world::World,
    };

    use crate::{TestPins, edgeplane_binary, http::get};

    pub const BACKEND_PORT: u16 = 9000;

    /// More `key = value` lines for one datacenter's `[runtime]` and `[datacenter]` tables.
    #[derive(Default)]
    pub struct Tuning {
        pub runtime: String,
        pub datacenter: String,
    }

    pub struct Canonical {
        pub topology: Topology,
        pub backend: Ipv4Addr,
        /// Requests the backend served.
        pub backend_served: Arc<AtomicU64>,
        // Drop order: edged processes, their pins, then the world.
        pub servers: Vec<Server>,
        pub pins: Vec<(String, TestPins)>,
        pub world: World,
        scratch: PathBuf,
    }

    impl Canonical {
        /// Builds the world, starts the backend, and edged at each of `datacenters` with the
        /// `[[apps]]` TOML that `apps(backend_url, backend_authority)` returns.
        pub fn start(
            test: &str,
            datacenters: &[&'static str],
            holdout: f64,
            apps: impl Fn(&str, &str) -> String,
        ) -> Self {
            Self::start_tuned(test, datacenters, holdout, apps, |_| Tuning::default())
        }

        /// As `start`, with more settings per datacenter.
        pub fn start_tuned(
            test: &str,
            datacenters: &[&'static str],
            holdout: f64,
            apps: impl Fn(&str, &str) -> String,
            tuning: impl Fn(&str) -> Tuning,
        ) -> Self {
            let topology = Topology::canonical();
            let world = World::build(&topology).unwrap();
            let backend = topology
                .hosts
                .iter()
                .find(|h| h.name == "backend")
                .and_then(|h| h.service_addr)
                .unwrap();
            let listener = world
                .ns("backend")
                .run(|| TcpListener::bind((backend, BACKEND_PORT)))
                .unwrap()
                .unwrap();
            let backend_served = serve_pong(listener);
            let scratch =
                std::env::temp_dir().join(format!("edgeplane-{test}-{}", std::process::id()));
            std::fs::create_dir_all(&scratch).unwrap();
            let apps = apps(
                &format!("http://{backend}:{BACKEND_PORT}/"),
                &format!("{backend}:{BACKEND_PORT}"),
            );
            let mut pins = Vec::new();
            let mut servers = Vec::new();
            for dc in datacenters {
                let p = TestPins::new(&format!("{test}-{dc}"));
                let tune = tuning(dc);
                servers.push(
                    DatacenterSpec {
                        name: dc,
                        topology: "canonical",
                        pin_dir: p.dir().to_path_buf(),
                        scratch: &scratch,
                        apps: &apps,
                        workers: 1,
                        holdout,
                        runtime_extra: &tune.runtime,
                        datacenter_extra: &tune.datacenter,
                    }
                    .start(&world, &edgeplane_binary("edged"))
                    .unwrap(),
                );
                pins.push((dc.to_string(), p));
            }
            Self {
                topology,
                backend,
                backend_served,
                servers,
                pins,
                world,
                scratch,
            }
        }

        pub fn pins(&self, dc: &str) -> &TestPins {
            &self.pins.iter().find(|(n, _)| n == dc).unwrap().1
        }

        /// A GET from the client through the POP: status, headers, body, time taken.
        pub fn through_pop(
            &self,
            host: &str,
            path: &str,
        ) -> (u16, Vec<(String, String)>, String, Duration) {
            let pop = SocketAddr::from((self.world.addr_of("client", "pop").unwrap(), WORKER_PORT));
            self.world
                .ns("client")
                .run(|| {
                    let mut s = TcpStream::connect_timeout(&pop, Duration::from_secs(5)).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    let started = Instant::now();
                    let (status, headers, body) = get(&mut s, host, path);
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
            let admin: SocketAddr = "127.0.0.1:9901".parse().unwrap();
            self.world
                .ns(dc)
                .run(|| {
                    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(2)).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                    String::from_utf8(get(&mut s, "admin", path).2).unwrap()
                })
                .unwrap()
        }
    }

    impl Drop for Canonical {
        fn drop(&mut self) {
            self.servers.clear();
            let _ = std::fs::remove_dir_all(&self.scratch);
        }
    }
}
