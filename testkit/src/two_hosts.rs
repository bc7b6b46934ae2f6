//! Two hosts joined by one veth, XDP on the server's side: the world of the single-datacenter
//! end-to-end tests, with edged started in it and read through its admin endpoint.

use std::path::Path;

use edgeplane::Dataplane;

use crate::{pins::TestPins, process::Server};

/// An edged killed (SIGKILL: no drain) and reaped on drop.
pub struct Edged(pub Server);

impl Drop for Edged {
    fn drop(&mut self) {
        self.0.kill();
    }
}

/// Two hosts joined by one veth: `client` (veth0) and `server` (veth1, where XDP goes).
pub struct TwoHosts {
    pub client: crate::netns::Netns,
    pub server: crate::netns::Netns,
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
        use crate::netns::{LinkEnd, Netns, veth_pair};
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
    pub fn start_edged(&self, config: &Path, admin: std::net::SocketAddr) -> anyhow::Result<Edged> {
        let mut server = crate::process::spawn(
            "edged",
            self.server
                .command(crate::edgeplane_binary("edged").to_str().unwrap_or("edged"))
                .arg("--config")
                .arg(config),
        )?;
        crate::process::wait_until(
            &mut server,
            std::time::Duration::from_secs(120),
            "become healthy",
            || self.admin(admin, "/healthz").map(|(s, _)| s) == Some(200),
        )?;
        Ok(Edged(server))
    }

    /// Writes `config` and starts edged with it, as `start_edged` does.
    pub fn start(&self, config: &crate::config::Config) -> anyhow::Result<Edged> {
        let path = config.write()?;
        self.start_edged(&path, config.admin_addr())
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
                let (status, _, body) = crate::raw_http::get(&mut s, "admin", path);
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
        let families = crate::openmetrics::parse(&text);
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
