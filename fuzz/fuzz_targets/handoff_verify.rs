//! The handoff verifier, on any request a client or a peer can send: no panic, nothing forged
//! verifies, and a request signed here and then changed by the fuzzer verifies only unchanged.
#![no_main]

use edgeplane_dataplane::{
    handoff::{KeyRing, PeerKeys, SecretKey, auth},
    http::{HttpLimits, ParseOutcome, parse_request},
};
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"fuzzing key, 32 bytes long......";

fn key() -> SecretKey {
    SecretKey {
        id: 1,
        secret: SECRET.to_vec(),
    }
}

/// Accepts key 1 from datacenter 1.
fn ring() -> KeyRing {
    KeyRing::new(
        [(
            1,
            PeerKeys {
                sign: None,
                accept: vec![key()],
            },
        )]
        .into(),
    )
}

fuzz_target!(|data: &[u8]| {
    let Ok(ParseOutcome::Complete(req, _)) = parse_request(data, &HttpLimits::default()) else {
        return;
    };
    // Whatever the client wrote in the handoff headers, it does not know the key.
    let ring = ring();
    assert!(auth::verify(&ring, &req, 1_000).is_err());
    let mut signed = req.clone();
    auth::sign(&key(), &mut signed, 1, "192.0.2.1:1000", 1, 1_000);
    let meta = auth::verify(&ring, &signed, 1_000).expect("a request signed here verifies");
    assert_eq!((meta.from, meta.hop), (1, 1));
    // Any one byte of the body changed breaks it.
    if let Some(first) = signed.body.first_mut() {
        *first ^= 1;
        assert!(auth::verify(&ring, &signed, 1_000).is_err());
    }
});
