//! TLS for the test worlds and benchmarks: a throwaway CA issuing certificates as PEM files
//! (rcgen), and a client (rustls, written against the protocol rather than edged's code) that
//! reports which certificate it was shown and whether its session resumed.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use edgeplane_dataplane::tls::rustls::{
    self, ClientConfig, ClientConnection, HandshakeKind, RootCertStore, StreamOwned,
    pki_types::{CertificateDer, ServerName},
};

/// A CA whose certificates live as PEM files under `dir`.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    dir: PathBuf,
}

/// An issued certificate: its files, and its DER (what a client is shown).
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: Vec<u8>,
}

impl TestCa {
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "edgeplane test CA");
        let cert = params.self_signed(&key)?;
        std::fs::write(dir.join("ca.pem"), cert.pem())?;
        Ok(Self {
            cert,
            key,
            dir: dir.to_owned(),
        })
    }

    pub fn pem_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate for `names`, valid from now for `days` (negative: expired), written as
    /// `<file>.pem` and `<file>.key`.
    pub fn issue(&self, file: &str, names: &[&str], days: i64) -> anyhow::Result<Issued> {
        let key = rcgen::KeyPair::generate()?;
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        if let Some(first) = names.first() {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, *first);
        }
        let now = std::time::SystemTime::now();
        let day = Duration::from_secs(86_400);
        let (from, until) = if days >= 0 {
            (now - day, now + day * days as u32)
        } else {
            (now - day * (1 - days) as u32, now - day)
        };
        params.not_before = from.into();
        params.not_after = until.into();
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        let issued = Issued {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}.key")),
            der: cert.der().to_vec(),
        };
        std::fs::write(&issued.cert, cert.pem())?;
        std::fs::write(&issued.key, key.serialize_pem())?;
        Ok(issued)
    }

    /// `[datacenter]`'s `tls = {...}` line for datacenter `dc`: a certificate naming it from
    /// this CA (valid `days`; negative: expired), its key, and this CA as the fleet's.
    pub fn datacenter_tls(&self, dc: &str, days: i64) -> anyhow::Result<String> {
        let issued = self.issue(&format!("dc-{dc}"), &[dc], days)?;
        Ok(format!(
            "tls = {{ cert = \"{}\", key = \"{}\", ca = \"{}\" }}",
            issued.cert.display(),
            issued.key.display(),
            self.pem_path().display()
        ))
    }

    /// A client trusting this CA only, offering ALPN http/1.1, keeping session tickets.
    pub fn client(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.cert.der().to_vec()))
            .expect("the CA's own certificate");
        let mut cfg = ClientConfig::builder_with_provider(edgeplane_dataplane::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("default versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(cfg)
    }
}

/// A TLS connection over `tcp` for `sni`, its handshake done.
pub struct Https {
    pub stream: StreamOwned<ClientConnection, TcpStream>,
}

impl Https {
    pub fn connect(tcp: TcpStream, cfg: &Arc<ClientConfig>, sni: &str) -> anyhow::Result<Self> {
        let name = ServerName::try_from(sni.to_owned()).context("server name")?;
        let conn = ClientConnection::new(cfg.clone(), name)?;
        let mut stream = StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .context("TLS handshake")?;
        }
        Ok(Self { stream })
    }

    /// The leaf certificate the server presented (DER).
    pub fn presented(&self) -> Vec<u8> {
        self.stream
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .unwrap_or_default()
    }

    pub fn resumed(&self) -> bool {
        self.stream.conn.handshake_kind() == Some(HandshakeKind::Resumed)
    }

    pub fn alpn(&self) -> Option<Vec<u8>> {
        self.stream.conn.alpn_protocol().map(<[u8]>::to_vec)
    }
}

impl Read for Https {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.stream.read(buf)
    }
}

impl Write for Https {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.stream.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}

pub use rustls::Error as TlsError;
