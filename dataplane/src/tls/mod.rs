//! HTTPS at the edge: each app's certificate chosen by SNI (an exact name, then a wildcard one
//! level up, then the default), and the server configuration the workers terminate TLS with:
//! TLS 1.3 and 1.2, ALPN `http/1.1` (room for `h2`), session resumption by rotating tickets and
//! a bounded cache. The store is immutable: a reload builds a new one, so a handshake in
//! progress keeps the one it started with. `session` is one connection's TLS over the worker's
//! own buffers (rustls' unbuffered API); `counters` what `/metrics` says of handshakes.

pub mod counters;
pub mod peer;
pub mod session;

/// The one rustls the workers, the handoff client and userspace share.
pub use rustls;

use std::{collections::HashMap, sync::Arc};

use anyhow::{Context as _, bail};
use rustls::{
    ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache},
    sign::CertifiedKey,
};

/// The one crypto provider (ring: what wasmtime-wasi-http's rustls already links), with the
/// AES-128-GCM suites first: SHA-256 for their key schedule, not ring's SHA-384/512, which was
/// 6% of a resumed-connection workload's CPU (bench/README.md, issue J).
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::{cipher_suite as cs, default_provider};
    let mut provider = default_provider();
    provider.cipher_suites = vec![
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(provider)
}

/// A certificate chain (leaf first) and its key, from PEM.
fn identity(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .context("reading the certificate chain (PEM)")?;
    if chain.is_empty() {
        bail!("no certificate in the PEM");
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).context("reading the private key (PEM)")?;
    Ok((chain, key))
}

/// A certificate chain and its key from PEM, checked to belong together.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<Arc<CertifiedKey>> {
    let (chain, key) = identity(cert_pem, key_pem)?;
    let certified = CertifiedKey::from_der(chain, key, &provider())
        .context("the certificate and the key do not belong together")?;
    Ok(Arc::new(certified))
}

/// Whose a served certificate is.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "role", content = "app", rename_all = "snake_case")]
pub enum CertRole {
    /// `[tls]`: names no app's certificate covers.
    Default,
    /// An app's, for its hosts.
    App(String),
    /// This datacenter's own, toward its peers.
    Datacenter,
}

/// A certificate the workers present: whose, for which names, its chain (DER, leaf first).
#[derive(Clone, Debug)]
pub struct ServedCert {
    pub role: CertRole,
    pub names: Vec<String>,
    pub chain: Vec<Vec<u8>>,
}

/// Certificates by the names they serve; what a handshake's SNI picks.
#[derive(Debug, Default)]
pub struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` as `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl CertStore {
    /// Serves `key` for each of `names` (`*.example.com` for every name one label below).
    pub fn add(&mut self, names: &[String], key: Arc<CertifiedKey>) -> anyhow::Result<()> {
        for name in names {
            let name = name.to_ascii_lowercase();
            let (table, key_name) = match name.strip_prefix("*.") {
                Some(parent) => (&mut self.wildcard, parent.to_owned()),
                None => (&mut self.exact, name.clone()),
            };
            if table.insert(key_name, key.clone()).is_some() {
                bail!("two certificates for {name}");
            }
        }
        Ok(())
    }

    /// What a handshake naming no served name (or none at all) gets; none: it is refused.
    pub fn set_default(&mut self, key: Arc<CertifiedKey>) {
        self.default = Some(key);
    }

    /// The certificate for `sni`: its exact name, a wildcard one level up, or the default.
    pub fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = sni.map(str::to_ascii_lowercase) else {
            return self.default.clone();
        };
        self.exact
            .get(&name)
            .or_else(|| {
                let (_, parent) = name.split_once('.')?;
                self.wildcard.get(parent)
            })
            .or(self.default.as_ref())
            .cloned()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

/// Resumed sessions remembered per worker (tickets need none; this serves clients that ask for
/// session ids).
pub const SESSION_CACHE: usize = 4096;

/// The workers' TLS configuration over `store`.
pub fn server_config(store: Arc<CertStore>) -> anyhow::Result<Arc<ServerConfig>> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS versions")?
        .with_no_client_auth()
        .with_cert_resolver(store);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    // The suites in `provider`'s order, whatever the client lists first.
    cfg.ignore_client_order = true;
    // Ticket keys rotate on their own (every 6 hours, the previous one still accepted).
    cfg.ticketer = rustls::crypto::ring::Ticketer::new().context("session tickets")?;
    cfg.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
    Ok(Arc::new(cfg))
}

/// A test CA (rcgen), for the handshake tests here and in `session`.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use rustls::{ClientConfig, RootCertStore};

    /// A CA and a way to issue certificates for names under it, as PEM.
    pub struct Ca {
        cert: rcgen::Certificate,
        key: rcgen::KeyPair,
    }

    impl Ca {
        pub fn new() -> Self {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let cert = params.self_signed(&key).unwrap();
            Self { cert, key }
        }

        pub fn issue(&self, names: &[&str]) -> (Arc<CertifiedKey>, Vec<u8>) {
            let key = rcgen::KeyPair::generate().unwrap();
            let params = rcgen::CertificateParams::new(
                names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            )
            .unwrap();
            let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
            let certified =
                certified_key(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap();
            (certified, cert.der().to_vec())
        }

        /// PEM of a certificate for `names` and its key; `expired`: its validity ended
        /// yesterday.
        pub fn issue_pem(&self, names: &[&str], expired: bool) -> (Vec<u8>, Vec<u8>) {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(
                names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            )
            .unwrap();
            if expired {
                let day = std::time::Duration::from_secs(86_400);
                let now = std::time::SystemTime::now();
                params.not_before = (now - day * 10).into();
                params.not_after = (now - day).into();
            }
            let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
            (cert.pem().into_bytes(), key.serialize_pem().into_bytes())
        }

        pub fn pem(&self) -> Vec<u8> {
            self.cert.pem().into_bytes()
        }

        pub fn client(&self) -> Arc<ClientConfig> {
            let mut roots = RootCertStore::empty();
            roots.add(self.cert.der().clone()).unwrap();
            let mut cfg = ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(cfg)
        }
    }

    /// A real handshake over memory between `client` (asking for `name`) and `server`; the
    /// client's side, done.
    pub fn handshake(
        server: &Arc<ServerConfig>,
        client: &Arc<ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
    ) -> Result<rustls::ClientConnection, rustls::Error> {
        let mut s = rustls::ServerConnection::new(server.clone())?;
        let mut c = rustls::ClientConnection::new(client.clone(), name)?;
        for _ in 0..20 {
            let mut wire = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut wire).unwrap();
            }
            s.read_tls(&mut &wire[..]).unwrap();
            s.process_new_packets()?;
            let mut back = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut back).unwrap();
            }
            c.read_tls(&mut &back[..]).unwrap();
            c.process_new_packets()?;
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(c);
            }
        }
        panic!("no handshake in 20 flights");
    }
}

#[cfg(test)]
mod tests {
    use super::{testing::Ca, *};
    use rustls::{ClientConfig, pki_types::ServerName};

    /// A real handshake over memory: the certificate the server presented (DER) and ALPN.
    fn handshake(
        server: &Arc<ServerConfig>,
        client: &Arc<ClientConfig>,
        sni: &str,
    ) -> Result<(Vec<u8>, Option<Vec<u8>>), rustls::Error> {
        let c = testing::handshake(
            server,
            client,
            ServerName::try_from(sni.to_owned()).unwrap(),
        )?;
        let presented = c.peer_certificates().unwrap()[0].to_vec();
        Ok((presented, c.alpn_protocol().map(<[u8]>::to_vec)))
    }

    #[test]
    fn sni_picks_the_apps_certificate_a_wildcard_or_the_default() {
        let ca = Ca::new();
        let (shop, shop_der) = ca.issue(&["shop.example.test"]);
        let (wild, wild_der) = ca.issue(&["*.wild.example.test"]);
        let (fallback, fallback_der) = ca.issue(&["*.example.test"]);
        let mut store = CertStore::default();
        store
            .add(&["Shop.Example.Test".into()], shop.clone())
            .unwrap();
        store.add(&["*.wild.example.test".into()], wild).unwrap();
        store.set_default(fallback);
        assert!(
            store.add(&["shop.example.test".into()], shop).is_err(),
            "two certificates for one name"
        );
        let server = server_config(Arc::new(store)).unwrap();
        let client = ca.client();

        let (presented, alpn) = handshake(&server, &client, "shop.example.test").unwrap();
        assert_eq!(
            presented, shop_der,
            "the app's own certificate, names matched without case"
        );
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
        assert_eq!(
            handshake(&server, &client, "a.wild.example.test")
                .unwrap()
                .0,
            wild_der
        );
        assert_eq!(
            handshake(&server, &client, "other.example.test").unwrap().0,
            fallback_der,
            "a name no app serves gets the default"
        );
        // A wildcard covers one label, as certificates do: two levels down is the default's,
        // which does not cover it either, so the client refuses.
        assert!(handshake(&server, &client, "a.b.wild.example.test").is_err());
    }

    #[test]
    fn without_a_default_an_unknown_name_is_refused_and_a_mismatched_key_never_loads() {
        let ca = Ca::new();
        let (shop, _) = ca.issue(&["shop.test"]);
        let mut store = CertStore::default();
        store.add(&["shop.test".into()], shop).unwrap();
        let server = server_config(Arc::new(store)).unwrap();
        assert!(handshake(&server, &ca.client(), "other.test").is_err());

        let a = rcgen::KeyPair::generate().unwrap();
        let b = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x.test".to_owned()])
            .unwrap()
            .self_signed(&a)
            .unwrap();
        let e = certified_key(cert.pem().as_bytes(), b.serialize_pem().as_bytes()).unwrap_err();
        assert!(format!("{e:#}").contains("do not belong together"), "{e:#}");
        assert!(certified_key(b"not pem", a.serialize_pem().as_bytes()).is_err());
    }
}
