//! The fleet's NATS JetStream server (a pinned nats-server 2.15 that `./x` installs) in a
//! world's namespace: the control plane the datacenters' edged and edgectl share.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;

use crate::{
    http::{Server, spawn, wait_listening},
    netns::Netns,
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
    server: Option<Server>,
}

impl Nats {
    /// Starts nats-server in `ns` on `ip`:4222, storing JetStream data under `store`.
    pub fn start(ns: &Netns, ip: Ipv4Addr, store: &Path) -> anyhow::Result<Self> {
        let mut nats = Self {
            addr: SocketAddr::from((ip, NATS_PORT)),
            store: store.to_path_buf(),
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
        let mut server = spawn(
            "nats-server",
            ns.command(bin.to_str().context("utf-8 path")?).args([
                "-js",
                "-sd",
                self.store.to_str().context("utf-8 path")?,
                "-a",
                &self.addr.ip().to_string(),
                "-p",
                &NATS_PORT.to_string(),
            ]),
        )?;
        ns.run(|| wait_listening(&mut server, self.addr, Duration::from_secs(30)))??;
        self.server = Some(server);
        Ok(())
    }
}
