//! HTTPS settings: `[tls]` (the default certificate) and each app's `tls = { cert, key }`.
//! Files are read when a generation is built (at start and on every reload), so renewing a
//! certificate is replacing its files and reloading.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context as _;
use edgeplane_dataplane::tls::{
    CertRole, CertStore, ServedCert, certified_key,
    peer::{PeerServer, PeerTls, WorkerTls},
    rustls, server_config,
};
use serde::Deserialize;

use super::EdgedConfig;

/// A certificate chain and its private key, PEM files.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    pub fn paths_mut(&mut self) -> [&mut PathBuf; 2] {
        [&mut self.cert, &mut self.key]
    }

    pub fn read(&self) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
        Ok((read(&self.cert)?, read(&self.key)?))
    }
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// `[datacenter] tls` and `[control] tls`: this datacenter's certificate and key, and the
/// fleet's CA (what its peers' and its NATS server's certificates must come from).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl IdentityFiles {
    pub fn paths_mut(&mut self) -> [&mut PathBuf; 3] {
        [&mut self.cert, &mut self.key, &mut self.ca]
    }

    /// A client of the fleet's NATS with these files.
    pub fn nats_client(&self) -> anyhow::Result<rustls::ClientConfig> {
        edgeplane_dataplane::tls::peer::nats_client(
            &read(&self.cert)?,
            &read(&self.key)?,
            &read(&self.ca)?,
        )
    }

    /// The datacenter `name`'s peer TLS from these files.
    pub fn load(&self, name: &str) -> anyhow::Result<PeerTls> {
        PeerTls::new(
            name,
            &read(&self.cert)?,
            &read(&self.key)?,
            &read(&self.ca)?,
        )
        .with_context(|| format!("datacenter.tls ({})", self.cert.display()))
    }
}

/// This datacenter's peer TLS, when `[datacenter] tls` is set.
pub fn peer_tls(cfg: &EdgedConfig) -> anyhow::Result<Option<PeerTls>> {
    match &cfg.datacenter {
        Some(dc) => dc
            .tls
            .as_ref()
            .map(|files| files.load(&dc.name))
            .transpose(),
        None => Ok(None),
    }
}

/// What the workers terminate TLS with: the apps' certificates and, with peers over mutual
/// TLS, the peers' configuration (None: plain HTTP only).
pub fn worker_tls(
    cfg: &EdgedConfig,
    peer: Option<&PeerTls>,
) -> anyhow::Result<Option<Arc<WorkerTls>>> {
    let (public, mut certificates) = public_tls(cfg)?;
    let peers = peer.map(|p| {
        certificates.push(ServedCert {
            role: CertRole::Datacenter,
            names: vec![p.name.clone()],
            chain: p.chain.clone(),
        });
        PeerServer {
            name: p.name.clone(),
            config: p.server.clone(),
        }
    });
    if public.is_none() && peers.is_none() {
        return Ok(None);
    }
    Ok(Some(Arc::new(WorkerTls {
        public,
        peers,
        certificates,
    })))
}

/// The configuration public clients' handshakes get, from `cfg`'s certificates (None: no
/// `[tls]` and no app with `tls`), and what each certificate is.
fn public_tls(
    cfg: &EdgedConfig,
) -> anyhow::Result<(Option<Arc<rustls::ServerConfig>>, Vec<ServedCert>)> {
    let mut store = CertStore::default();
    let mut served = Vec::new();
    if let Some(files) = &cfg.tls {
        let key = load(files).context("tls: the default certificate")?;
        served.push(ServedCert {
            role: CertRole::Default,
            names: Vec::new(),
            chain: key.cert.iter().map(|c| c.to_vec()).collect(),
        });
        store.set_default(key);
    }
    for app in &cfg.apps {
        let Some(files) = &app.tls else { continue };
        let key = load(files).with_context(|| format!("app {}: tls", app.name))?;
        anyhow::ensure!(
            !app.hosts.is_empty(),
            "app {}: tls needs hosts (the names its certificate is chosen by)",
            app.name
        );
        store
            .add(&app.hosts, key.clone())
            .with_context(|| format!("app {}: tls", app.name))?;
        served.push(ServedCert {
            role: CertRole::App(app.name.clone()),
            names: app.hosts.clone(),
            chain: key.cert.iter().map(|c| c.to_vec()).collect(),
        });
    }
    if served.is_empty() {
        return Ok((None, served));
    }
    Ok((Some(server_config(Arc::new(store))?), served))
}

fn load(files: &CertFiles) -> anyhow::Result<Arc<rustls::sign::CertifiedKey>> {
    let (cert, key) = files.read()?;
    certified_key(&cert, &key)
        .with_context(|| format!("{} and {}", files.cert.display(), files.key.display()))
}
