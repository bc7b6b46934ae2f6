//! Mutual TLS between datacenters. Each datacenter has a certificate naming it (its name in
//! the topology) from the fleet's CA. Peers reach it on its workers' port with that name as
//! SNI: those handshakes get the peer configuration, which presents the datacenter's own
//! certificate and requires the peer's, verified against the fleet's CA (expiry included).
//! Public clients never see a certificate request. Handoffs keep their HMAC as well: it binds
//! each request to the pair's key and its replay window, whatever carried it.

use std::sync::Arc;

use anyhow::{Context as _, bail};
use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _},
    server::{Acceptor, ServerSessionMemoryCache, WebPkiClientVerifier},
};

use super::{SESSION_CACHE, identity, provider};

/// A datacenter's TLS toward its peers: as a client (handoffs, probe asks) and as a server.
#[derive(Debug)]
pub struct PeerTls {
    /// This datacenter's name: the SNI its peers reach it with.
    pub name: String,
    /// Its certificate chain (DER, leaf first).
    pub chain: Vec<Vec<u8>>,
    pub client: Arc<ClientConfig>,
    pub server: Arc<ServerConfig>,
}

impl PeerTls {
    /// From PEM: this datacenter's certificate chain and key, and the fleet's CA.
    pub fn new(name: &str, cert_pem: &[u8], key_pem: &[u8], ca_pem: &[u8]) -> anyhow::Result<Self> {
        let (chain, key) = identity(cert_pem, key_pem)?;
        let roots = roots(ca_pem)?;
        ServerName::try_from(name.to_owned())
            .with_context(|| format!("{name:?} is not a name a certificate can carry"))?;
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .context("the peer certificate verifier")?;
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("TLS versions")?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .context("the datacenter's certificate and key do not belong together")?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        server.ticketer = rustls::crypto::ring::Ticketer::new().context("session tickets")?;
        server.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
        let mut client = mutual_client(roots, chain.clone(), key)?;
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            name: name.to_owned(),
            chain: chain.iter().map(|c| c.to_vec()).collect(),
            client: Arc::new(client),
            server: Arc::new(server),
        })
    }

    /// The name a handshake to `peer` asks for (and its certificate must carry).
    pub fn server_name(peer: &str) -> anyhow::Result<ServerName<'static>> {
        ServerName::try_from(peer.to_owned())
            .with_context(|| format!("{peer:?} is not a name a certificate can carry"))
    }
}

/// The CA certificates in `ca_pem`, the only ones trusted.
fn roots(ca_pem: &[u8]) -> anyhow::Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem) {
        roots
            .add(ca.context("reading the CA (PEM)")?)
            .context("the CA")?;
    }
    if roots.is_empty() {
        bail!("no certificate in the CA file");
    }
    Ok(Arc::new(roots))
}

/// TLS 1.3 trusting `roots` only, presenting `chain`.
fn mutual_client(
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<ClientConfig> {
    ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .context("the client certificate and key do not belong together")
}

/// A client for the fleet's NATS: trusting the CA in `ca_pem` only, presenting the certificate
/// and key in `cert_pem`, `key_pem` (the datacenter's, or an operator's for edgectl).
pub fn nats_client(cert_pem: &[u8], key_pem: &[u8], ca_pem: &[u8]) -> anyhow::Result<ClientConfig> {
    let (chain, key) = identity(cert_pem, key_pem)?;
    mutual_client(roots(ca_pem)?, chain, key)
}

/// A datacenter's peer TLS, replaced whole by a reload (new certificates): a connection opened
/// before keeps what it was opened with.
#[derive(Debug)]
pub struct LivePeerTls(std::sync::Mutex<Arc<PeerTls>>);

impl LivePeerTls {
    pub fn new(tls: PeerTls) -> Self {
        Self(std::sync::Mutex::new(Arc::new(tls)))
    }

    pub fn current(&self) -> Arc<PeerTls> {
        crate::lock(&self.0).clone()
    }

    pub fn replace(&self, tls: PeerTls) {
        *crate::lock(&self.0) = Arc::new(tls);
    }

    /// TLS toward `peer` (by its name in the topology).
    pub fn client_to(&self, peer: &str) -> anyhow::Result<crate::client::ClientTls> {
        Ok(crate::client::ClientTls {
            config: self.current().client.clone(),
            name: PeerTls::server_name(peer)?,
        })
    }
}

/// The configurations a worker terminates TLS with: its apps' (public clients), and, on a
/// datacenter with peers over mutual TLS, the peers'.
#[derive(Debug, Default)]
pub struct WorkerTls {
    pub public: Option<Arc<ServerConfig>>,
    pub peers: Option<PeerServer>,
    /// What these present (for `edgectl certs` and the expiry metric).
    pub certificates: Vec<super::ServedCert>,
}

/// The peers' side of a worker: the SNI they use and what their handshakes get.
#[derive(Debug)]
pub struct PeerServer {
    pub name: String,
    pub config: Arc<ServerConfig>,
}

/// What a ClientHello read so far says.
pub enum Hello {
    /// Not all of it yet.
    Partial,
    /// The name it asks for (SNI), if any.
    Name(Option<String>),
    /// Not a ClientHello.
    Invalid(rustls::Error),
}

/// Reads a ClientHello as it arrives, for its SNI (which configuration the handshake gets);
/// the bytes are then replayed into the session.
#[derive(Default)]
pub struct HelloReader {
    acceptor: Acceptor,
}

impl HelloReader {
    pub fn read(&mut self, mut data: &[u8]) -> Hello {
        while !data.is_empty() {
            match self.acceptor.read_tls(&mut data) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Hello::Invalid(rustls::Error::General(e.to_string())),
            }
        }
        match self.acceptor.accept() {
            Ok(None) => Hello::Partial,
            Ok(Some(accepted)) => {
                Hello::Name(accepted.client_hello().server_name().map(str::to_owned))
            }
            Err((e, _)) => Hello::Invalid(e),
        }
    }
}

impl WorkerTls {
    /// The configuration a handshake asking for `sni` gets (None: none serves it), and whether
    /// it is the peers' (a datacenter's certificate, required and verified).
    pub fn pick(&self, sni: Option<&str>) -> (Option<Arc<ServerConfig>>, bool) {
        match &self.peers {
            Some(p) if sni.is_some_and(|s| s.eq_ignore_ascii_case(&p.name)) => {
                (Some(p.config.clone()), true)
            }
            _ => (self.public.clone(), false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::testing::Ca;
    use rustls::ClientConnection;

    fn peer(ca: &Ca, name: &str, expired: bool, trust: &Ca) -> PeerTls {
        let (cert, key) = ca.issue_pem(&[name], expired);
        PeerTls::new(name, &cert, &key, &trust.pem()).unwrap()
    }

    /// A real handshake over memory, from `from` to the datacenter `to` (by name).
    fn handshake(
        from: &PeerTls,
        to_server: &Arc<ServerConfig>,
        to: &str,
    ) -> Result<(), rustls::Error> {
        crate::tls::testing::handshake(to_server, &from.client, PeerTls::server_name(to).unwrap())
            .map(drop)
    }

    fn assert_expired(e: rustls::Error) {
        use rustls::CertificateError::{Expired, ExpiredContext};
        assert!(
            matches!(
                e,
                rustls::Error::InvalidCertificate(Expired | ExpiredContext { .. })
            ),
            "{e:?}"
        );
    }

    #[test]
    fn peers_of_one_fleet_handshake_and_strangers_or_expired_certificates_are_refused() {
        let fleet = Ca::new();
        let pop = peer(&fleet, "pop", false, &fleet);
        let dc2 = peer(&fleet, "dc2", false, &fleet);
        handshake(&pop, &dc2.server, "dc2").expect("two datacenters of one fleet");
        // The name asked for must be the one the certificate carries.
        assert!(handshake(&pop, &dc2.server, "dc3").is_err());

        // A certificate from another CA, either way.
        let other = Ca::new();
        let stranger = peer(&other, "pop", false, &fleet);
        let e = handshake(&stranger, &dc2.server, "dc2").unwrap_err();
        assert!(matches!(e, rustls::Error::InvalidCertificate(_)), "{e:?}");
        let fake_dc2 = peer(&other, "dc2", false, &fleet);
        let e = handshake(&pop, &fake_dc2.server, "dc2").unwrap_err();
        assert!(matches!(e, rustls::Error::InvalidCertificate(_)), "{e:?}");

        // An expired certificate, either way.
        let old_pop = peer(&fleet, "pop", true, &fleet);
        assert_expired(handshake(&old_pop, &dc2.server, "dc2").unwrap_err());
        let old_dc2 = peer(&fleet, "dc2", true, &fleet);
        assert_expired(handshake(&pop, &old_dc2.server, "dc2").unwrap_err());
        // A client without a certificate gets no peer handshake.
        let anonymous = fleet.client();
        assert!(
            crate::tls::testing::handshake(
                &dc2.server,
                &anonymous,
                PeerTls::server_name("dc2").unwrap()
            )
            .is_err(),
            "a client without a certificate was let in"
        );
    }

    #[test]
    fn the_hello_s_name_picks_the_peer_configuration_and_others_get_the_public_one() {
        let fleet = Ca::new();
        let dc2 = peer(&fleet, "dc2", false, &fleet);
        let (public_key, _) = fleet.issue(&["shop.example.test"]);
        let mut store = crate::tls::CertStore::default();
        store.set_default(public_key);
        let public = crate::tls::server_config(Arc::new(store)).unwrap();
        let worker = WorkerTls {
            certificates: Vec::new(),
            public: Some(public.clone()),
            peers: Some(PeerServer {
                name: "dc2".into(),
                config: dc2.server.clone(),
            }),
        };
        for (sni, peer_config) in [("dc2", true), ("DC2", true), ("shop.example.test", false)] {
            let mut c =
                ClientConnection::new(fleet.client(), PeerTls::server_name(sni).unwrap()).unwrap();
            let mut hello = Vec::new();
            c.write_tls(&mut hello).unwrap();
            // A byte at a time: partial until the whole ClientHello is there.
            let mut reader = HelloReader::default();
            let (last, rest) = hello.split_last().unwrap();
            for b in rest {
                assert!(matches!(
                    reader.read(std::slice::from_ref(b)),
                    Hello::Partial
                ));
            }
            let Hello::Name(name) = reader.read(std::slice::from_ref(last)) else {
                panic!("no name read");
            };
            let (picked, is_peer) = worker.pick(name.as_deref());
            let picked = picked.unwrap();
            assert_eq!(is_peer, peer_config, "{sni}");
            assert_eq!(Arc::ptr_eq(&picked, &dc2.server), peer_config, "{sni}");
            assert_eq!(Arc::ptr_eq(&picked, &public), !peer_config, "{sni}");
        }
        let mut reader = HelloReader::default();
        assert!(matches!(
            reader.read(b"GET / HTTP/1.1\r\n\r\n"),
            Hello::Invalid(_)
        ));
    }
}
