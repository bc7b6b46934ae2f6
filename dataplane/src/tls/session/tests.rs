//! Real handshakes over memory: rustls' buffered client against a `TlsSession`.

use std::sync::Arc;

use rustls::{ClientConfig, ClientConnection, pki_types::ServerName};

use super::*;
use crate::tls::{CertStore, counters::Failure, server_config, testing::Ca};

fn server(ca: &Ca) -> Arc<ServerConfig> {
    let (key, _) = ca.issue(&["shop.example.test"]);
    let mut store = CertStore::default();
    store.set_default(key);
    server_config(Arc::new(store)).unwrap()
}

fn client(cfg: &Arc<ClientConfig>) -> ClientConnection {
    ClientConnection::new(
        cfg.clone(),
        ServerName::try_from("shop.example.test").unwrap(),
    )
    .unwrap()
}

/// Runs flights between `c` and `s` until both are quiet, `chunk` bytes at a time toward the
/// server; returns what the server decrypted and what it said on the way.
fn exchange(
    c: &mut ClientConnection,
    s: &mut TlsSession,
    chunk: usize,
) -> Result<(Vec<u8>, Received), rustls::Error> {
    let mut plain = Vec::new();
    let mut seen = Received::default();
    for _ in 0..50 {
        let mut wire = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut wire).unwrap();
        }
        let mut back = Vec::new();
        for piece in wire.chunks(chunk.max(1)) {
            let r = s.receive(piece, &mut plain, &mut back)?;
            seen.established = seen.established.or(r.established);
            seen.peer_closed |= r.peer_closed;
        }
        if wire.is_empty() && back.is_empty() {
            return Ok((plain, seen));
        }
        c.read_tls(&mut &back[..]).unwrap();
        c.process_new_packets()?;
    }
    panic!("no quiet after 50 flights");
}

/// Gives the client `wire` (it reads a record or so per call); returns its plaintext.
fn deliver(c: &mut ClientConnection, mut wire: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while !wire.is_empty() {
        c.read_tls(&mut wire).unwrap();
        c.process_new_packets().unwrap();
        let _ = std::io::Read::read_to_end(&mut c.reader(), &mut out);
    }
    out
}

#[test]
fn a_request_and_its_answer_cross_even_a_byte_at_a_time_and_the_next_connection_resumes() {
    let ca = Ca::new();
    let cfg = server(&ca);
    let client_cfg = ca.client();
    for (round, chunk) in [(0, 1), (1, 7), (2, 100_000)] {
        let mut c = client(&client_cfg);
        let mut s = TlsSession::new(cfg.clone()).unwrap();
        std::io::Write::write_all(&mut c.writer(), b"GET / HTTP/1.1\r\nhost: shop\r\n\r\n")
            .unwrap();
        let (plain, seen) = exchange(&mut c, &mut s, chunk).unwrap();
        assert_eq!(plain, b"GET / HTTP/1.1\r\nhost: shop\r\n\r\n");
        assert!(s.is_established());
        // The first connection is a full handshake; the client keeps its ticket, and the next
        // ones resume.
        assert_eq!(seen.established, Some(round > 0), "round {round}");

        let body = vec![b'x'; 40_000];
        let mut wire = Vec::new();
        s.encrypt(b"HTTP/1.1 200 OK\r\n\r\n", &mut wire).unwrap();
        s.encrypt(&body, &mut wire).unwrap();
        let got = deliver(&mut c, &wire);
        assert_eq!(got.len(), 19 + body.len());

        c.send_close_notify();
        let (_, seen) = exchange(&mut c, &mut s, chunk).unwrap();
        assert!(seen.peer_closed);
    }
}

#[test]
fn bytes_that_are_not_tls_or_a_flood_of_them_fail_with_a_reason_and_an_alert() {
    let ca = Ca::new();
    let cfg = server(&ca);
    let mut s = TlsSession::new(cfg.clone()).unwrap();
    let (mut plain, mut back) = (Vec::new(), Vec::new());
    let e = s
        .receive(
            b"\x16\x03\x01\x00\x08\x01\x00\x00\x04\xde\xad\xbe\xef",
            &mut plain,
            &mut back,
        )
        .unwrap_err();
    assert_eq!(Failure::of(&e), Failure::Malformed, "{e:?}");
    assert_eq!(
        back.get(..2),
        Some(&[0x15, 0x03][..]),
        "the peer is told why (an alert record)"
    );
    assert!(plain.is_empty());

    // A record header announcing more than a record may hold.
    let mut s = TlsSession::new(cfg.clone()).unwrap();
    let e = s
        .receive(b"\x16\x03\x01\xff\xff", &mut plain, &mut Vec::new())
        .unwrap_err();
    assert_eq!(Failure::of(&e), Failure::Malformed, "{e:?}");

    // Nothing buffers without bound: a peer that keeps sending a record's start fails.
    let mut s = TlsSession::new(cfg).unwrap();
    let mut failed = None;
    for _ in 0..100 {
        if let Err(e) = s.receive(&[0x16, 0x03, 0x01, 0x40, 0x00], &mut plain, &mut Vec::new()) {
            failed = Some(e);
            break;
        }
        let filler = vec![1u8; 1000];
        if let Err(e) = s.receive(&filler, &mut plain, &mut Vec::new()) {
            failed = Some(e);
            break;
        }
    }
    assert!(failed.is_some(), "a flood of bytes was buffered");
    assert!(s.incoming.len() <= MAX_BUFFERED);
}

#[test]
fn nothing_is_encrypted_before_the_handshake_and_close_notify_is_a_record() {
    let ca = Ca::new();
    let mut s = TlsSession::new(server(&ca)).unwrap();
    assert!(s.encrypt(b"early", &mut Vec::new()).is_err());
    let mut c = client(&ca.client());
    exchange(&mut c, &mut s, 1 << 20).unwrap();
    let mut wire = Vec::new();
    s.close_notify(&mut wire);
    c.read_tls(&mut &wire[..]).unwrap();
    let state = c.process_new_packets().unwrap();
    assert!(state.peer_has_closed());
}
