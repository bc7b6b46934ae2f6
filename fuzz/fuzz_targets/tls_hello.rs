//! The workers' TLS on anything a client sends before and during its handshake: the ClientHello
//! reader that picks a configuration by name, and a session fed the bytes in chunks of the
//! fuzzer's choosing. No panic, and no plaintext before a finished handshake.
#![no_main]

use std::sync::{Arc, OnceLock};

use edgeplane_dataplane::tls::{
    CertStore, certified_key,
    peer::{Hello, HelloReader},
    rustls::ServerConfig,
    server_config,
    session::TlsSession,
};
use libfuzzer_sys::fuzz_target;

fn config() -> Arc<ServerConfig> {
    static CONFIG: OnceLock<Arc<ServerConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec!["fuzz.test".to_owned()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            let mut store = CertStore::default();
            store.set_default(
                certified_key(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap(),
            );
            server_config(Arc::new(store)).unwrap()
        })
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, wire)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut reader = HelloReader::default();
    for piece in wire.chunks(chunk) {
        match reader.read(piece) {
            Hello::Partial => {}
            Hello::Name(_) | Hello::Invalid(_) => break,
        }
    }
    let mut session = TlsSession::new(config()).unwrap();
    let (mut plain, mut out) = (Vec::new(), Vec::new());
    for piece in wire.chunks(chunk) {
        match session.receive(piece, &mut plain, &mut out) {
            Ok(_) => {}
            Err(_) => break,
        }
        assert!(session.is_established() || plain.is_empty());
    }
    if session.is_established() {
        let _ = session.encrypt(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", &mut out);
    }
});
