//! The fleet's NATS JetStream server (a pinned nats-server 2.15 that `./x` installs) in a
//! world's namespace: the control plane the datacenters' edged and edgectl share.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;

use crate::{
    netns::Netns,
    process::{Server, spawn, wait_listening},
    tls::{Issued, TestCa},
};

pub const NATS_PORT: u16 = 4222;

/// The nats-server binary: `EDGEPLANE_NATS_SERVER` (what `./x` exports), else where `./x`
/// installs it. An error, not a skip, when it is missing.
pub fn server_binary() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("EDGEPLANE_NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/edgeplane-tools/venv/bin/nats-server"));
    anyhow::ensure!(
        path.exists(),
        "nats-server not found at {} (run ./x setup, which installs nats-server 2.15.1)",
        path.display()
    );
    Ok(path)
}

/// A running nats-server with JetStream, its data in a directory that outlives it (a restart
/// finds its buckets).
pub struct Nats {
    pub addr: SocketAddr,
    pub store: PathBuf,
    /// Mutual TLS (None: plain TCP).
    pub tls: Option<NatsTls>,
    server: Option<Server>,
}

/// A nats-server's mutual TLS: its certificate (naming its address), and the CA every client's
/// certificate must come from; an operator's certificate for edgectl.
pub struct NatsTls {
    /// The CA's certificate (PEM).
    pub ca: PathBuf,
    /// Issues the datacenters' certificates.
    pub authority: TestCa,
    pub server: Issued,
    pub operator: Issued,
}

impl NatsTls {
    /// The server's and an operator's certificates from `authority`.
    pub fn issue(authority: TestCa, ip: Ipv4Addr) -> anyhow::Result<Self> {
        Ok(Self {
            ca: authority.pem_path(),
            server: authority.issue("nats-server", &[&ip.to_string()], 30)?,
            operator: authority.issue("nats-operator", &["operator"], 30)?,
            authority,
        })
    }

    /// `edgectl`'s environment for this server (`EDGEPLANE_NATS_CA`, `_CERT`, `_KEY`).
    pub fn edgectl_env(&self) -> [(&'static str, &Path); 3] {
        [
            ("EDGEPLANE_NATS_CA", &self.ca),
            ("EDGEPLANE_NATS_CERT", &self.operator.cert),
            ("EDGEPLANE_NATS_KEY", &self.operator.key),
        ]
    }
}

impl Nats {
    /// Starts nats-server in `ns` on `ip`:4222, storing JetStream data under `store`.
    pub fn start(ns: &Netns, ip: Ipv4Addr, store: &Path) -> anyhow::Result<Self> {
        Self::start_with(ns, ip, store, None)
    }

    /// As `start`, requiring mutual TLS of every client when `tls` says so.
    pub fn start_with(
        ns: &Netns,
        ip: Ipv4Addr,
        store: &Path,
        tls: Option<NatsTls>,
    ) -> anyhow::Result<Self> {
        let mut nats = Self {
            addr: SocketAddr::from((ip, NATS_PORT)),
            store: store.to_path_buf(),
            tls,
            server: None,
        };
        nats.restart(ns)?;
        Ok(nats)
    }

    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Kills the server at once (SIGKILL), as a crashed host would.
    pub fn kill(&mut self) {
        if let Some(s) = self.server.take() {
            s.kill();
        }
    }

    /// Starts the server again on its store (after `kill`).
    pub fn restart(&mut self, ns: &Netns) -> anyhow::Result<()> {
        self.kill();
        std::fs::create_dir_all(&self.store)?;
        let bin = server_binary()?;
        let mut cmd = ns.command(bin.to_str().context("utf-8 path")?);
        cmd.args([
            "-js",
            "-sd",
            self.store.to_str().context("utf-8 path")?,
            "-a",
            &self.addr.ip().to_string(),
            "-p",
            &NATS_PORT.to_string(),
        ]);
        if let Some(tls) = &self.tls {
            cmd.arg("--tlsverify")
                .arg("--tlscert")
                .arg(&tls.server.cert)
                .arg("--tlskey")
                .arg(&tls.server.key)
                .arg("--tlscacert")
                .arg(&tls.ca);
        }
        let mut server = spawn("nats-server", &mut cmd)?;
        ns.run(|| wait_listening(&mut server, self.addr, Duration::from_secs(30)))??;
        self.server = Some(server);
        Ok(())
    }
}
