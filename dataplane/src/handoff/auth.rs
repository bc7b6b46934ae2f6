//! Authentication of handed-off requests: an HMAC-SHA256, under the key the two datacenters share
//! (named by `x-edge-key`, see `keys`), over the request's method, target, every header the receiver sees (the handoff's own among
//! them) and a digest of its body. A peer accepts a handoff only when the MAC checks, its
//! timestamp is recent and its nonce was not seen before (`ReplayGuard`), so neither a client nor
//! anyone on the path can make a datacenter serve a forged, altered or replayed handoff.

use std::{
    collections::{HashSet, VecDeque},
    sync::Mutex,
};

use hmac::{Hmac, Mac as _};
use sha2::{Digest as _, Sha256};

use super::keys::{KeyRing, SecretKey};
use crate::http::{Request, is_hop_by_hop};

pub const HOP: &str = "x-edge-hop";
pub const FROM: &str = "x-edge-from";
pub const CLIENT: &str = "x-edge-client";
pub const TIME: &str = "x-edge-time";
pub const NONCE: &str = "x-edge-nonce";
pub const KEY_ID: &str = "x-edge-key";
pub const AUTH: &str = "x-edge-auth";

/// The headers a handoff carries; a client request carrying any of them is refused.
pub const HEADERS: [&str; 7] = [HOP, FROM, CLIENT, TIME, NONCE, KEY_ID, AUTH];

/// How far a handoff's timestamp may be from the receiver's clock.
pub const MAX_SKEW_SECS: u64 = 60;

/// What a verified handoff says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandoffMeta {
    /// The datacenter that handed the request off.
    pub from: u32,
    /// The original client's address, as the first datacenter saw it.
    pub client: String,
    pub hop: u32,
    pub time: u64,
    pub nonce: u128,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("handoff header {0} is missing or malformed")]
    Header(&'static str),
    #[error("handoff timestamp is {0} s away from this datacenter's clock")]
    Stale(u64),
    #[error("handoff from datacenter {from} names key {id}, which is not one shared with it")]
    UnknownKey { from: u32, id: u32 },
    #[error("handoff signature does not verify")]
    BadSignature,
    #[error("handoff already served (a replay)")]
    Replayed,
    #[error("too many recent handoffs to remember; refused rather than risk a replay")]
    ReplayCacheFull,
}

/// The MAC over everything the receiver acts on: method, target, each header it will see but
/// the MAC itself, in order, and the body's digest.
fn mac(key: &[u8], req: &Request) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    // Length-prefixed, so no two different field lists hash alike.
    let mut part = |bytes: &[u8]| {
        m.update(&u64::try_from(bytes.len()).unwrap_or(u64::MAX).to_be_bytes());
        m.update(bytes);
    };
    part(req.method.as_bytes());
    part(req.target.as_bytes());
    for (name, value) in &req.headers {
        if name == AUTH || is_hop_by_hop(name) {
            continue;
        }
        part(name.as_bytes());
        part(value);
    }
    part(&Sha256::digest(&req.body));
    m
}

/// Adds the handoff headers to `req` (replacing any it had), with a fresh nonce.
pub fn sign(key: &SecretKey, req: &mut Request, from: u32, client: &str, hop: u32, time: u64) {
    req.headers
        .retain(|(name, _)| !HEADERS.contains(&name.as_str()));
    let nonce: u128 = rand::random();
    for (name, value) in [
        (HOP, hop.to_string()),
        (FROM, from.to_string()),
        (CLIENT, client.to_owned()),
        (TIME, time.to_string()),
        (NONCE, format!("{nonce:032x}")),
        (KEY_ID, key.id.to_string()),
    ] {
        req.headers.push((name.to_owned(), value.into_bytes()));
    }
    let tag = hex::encode(mac(&key.secret, req).finalize().into_bytes());
    req.headers.push((AUTH.to_owned(), tag.into_bytes()));
}

/// Whether `req` claims to be a handoff (carries any handoff header).
pub fn claims_handoff(req: &Request) -> bool {
    req.headers
        .iter()
        .any(|(name, _)| HEADERS.contains(&name.as_str()))
}

/// Checks a handoff's headers against its content, under the key its sender names if `keys`
/// accepts it from that sender; `now` is the receiver's Unix time. Replays are the caller's to
/// refuse (`ReplayGuard`), with the nonce this returns.
pub fn verify(keys: &KeyRing, req: &Request, now: u64) -> Result<HandoffMeta, AuthError> {
    let text = |name: &'static str| {
        req.header(name)
            .and_then(|v| std::str::from_utf8(v).ok())
            .ok_or(AuthError::Header(name))
    };
    let number = |name: &'static str| {
        text(name)?
            .parse::<u64>()
            .map_err(|_| AuthError::Header(name))
    };
    let hop = u32::try_from(number(HOP)?).map_err(|_| AuthError::Header(HOP))?;
    let from = u32::try_from(number(FROM)?).map_err(|_| AuthError::Header(FROM))?;
    let time = number(TIME)?;
    let nonce = u128::from_str_radix(text(NONCE)?, 16).map_err(|_| AuthError::Header(NONCE))?;
    let client = text(CLIENT)?.to_owned();
    let key_id = u32::try_from(number(KEY_ID)?).map_err(|_| AuthError::Header(KEY_ID))?;
    let tag = hex::decode(text(AUTH)?).map_err(|_| AuthError::Header(AUTH))?;
    let key = keys
        .accepted(from, key_id)
        .ok_or(AuthError::UnknownKey { from, id: key_id })?;
    mac(key, req)
        .verify_slice(&tag)
        .map_err(|_| AuthError::BadSignature)?;
    let skew = now.abs_diff(time);
    if skew > MAX_SKEW_SECS {
        return Err(AuthError::Stale(skew));
    }
    Ok(HandoffMeta {
        from,
        client,
        hop,
        time,
        nonce,
    })
}

/// Handoffs served recently, by (sender, nonce), shared by every worker of a datacenter: a
/// captured handoff sent again, to any worker, within its freshness window is refused. Only
/// handoffs whose signature verified are remembered, so only a peer fills it; entries leave once
/// their timestamp is out of the window (a replay of them is refused as stale then).
pub struct ReplayGuard {
    state: Mutex<ReplayState>,
    capacity: usize,
}

#[derive(Default)]
struct ReplayState {
    seen: HashSet<(u32, u128)>,
    /// (timestamp, sender, nonce) in arrival order; timestamps are near arrival (the skew bound).
    order: VecDeque<(u64, u32, u128)>,
}

/// Handoffs remembered at most: 2 minutes' worth at over 8,000 handoffs a second.
pub const REPLAY_CAPACITY: usize = 1 << 20;

impl std::fmt::Debug for ReplayGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayGuard")
            .field("remembered", &crate::lock(&self.state).seen.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl Default for ReplayGuard {
    fn default() -> Self {
        Self::with_capacity(REPLAY_CAPACITY)
    }
}

impl ReplayGuard {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            state: Mutex::default(),
            capacity,
        }
    }

    /// Records a verified handoff; refuses one seen before. `now` is the receiver's Unix time.
    pub fn admit(&self, meta: &HandoffMeta, now: u64) -> Result<(), AuthError> {
        let mut s = crate::lock(&self.state);
        // Anything stamped before the window's start would be refused as stale anyway. Arrival
        // order is nearly timestamp order, so the front holds the oldest; a late straggler
        // (stamped early, arrived late) only stays a little longer.
        let window_start = now.saturating_sub(MAX_SKEW_SECS);
        while let Some(&(time, from, nonce)) = s.order.front() {
            if time >= window_start {
                break;
            }
            s.order.pop_front();
            s.seen.remove(&(from, nonce));
        }
        if s.seen.contains(&(meta.from, meta.nonce)) {
            return Err(AuthError::Replayed);
        }
        if s.seen.len() >= self.capacity {
            return Err(AuthError::ReplayCacheFull);
        }
        s.seen.insert((meta.from, meta.nonce));
        s.order.push_back((meta.time, meta.from, meta.nonce));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{HttpLimits, ParseOutcome, parse_request};

    fn request(raw: &str) -> Request {
        match parse_request(raw.as_bytes(), &HttpLimits::default()) {
            Ok(ParseOutcome::Complete(r, _)) => r,
            other => panic!("{other:?}"),
        }
    }

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn key() -> SecretKey {
        SecretKey {
            id: 1,
            secret: SECRET.to_vec(),
        }
    }

    /// Accepts key 1 from datacenters 1 and 2 with `secret`.
    fn ring_with(secret: &[u8]) -> KeyRing {
        let keys = super::super::keys::PeerKeys {
            sign: None,
            accept: vec![SecretKey {
                id: 1,
                secret: secret.to_vec(),
            }],
        };
        KeyRing::new([(1, keys.clone()), (2, keys)].into())
    }

    fn ring() -> KeyRing {
        ring_with(SECRET)
    }

    /// A POST signed by datacenter 1 for client 10.0.0.9:41000, at time 1,000.
    fn signed() -> Request {
        let mut req =
            request("POST /x?y=1 HTTP/1.1\r\nHost: app.test\r\nContent-Length: 4\r\n\r\nbody");
        sign(&key(), &mut req, 1, "10.0.0.9:41000", 1, 1_000);
        req
    }

    #[test]
    fn a_signed_request_verifies_under_the_shared_key_only_and_in_time() {
        let req = signed();
        assert!(claims_handoff(&req));
        let meta = verify(&ring(), &req, 1_010).unwrap();
        assert_eq!(
            (meta.from, meta.client.as_str(), meta.hop, meta.time),
            (1, "10.0.0.9:41000", 1, 1_000)
        );
        assert_eq!(
            verify(&ring_with(b"another key"), &req, 1_010),
            Err(AuthError::BadSignature)
        );
        assert_eq!(verify(&ring(), &req, 2_000), Err(AuthError::Stale(1_000)));
        // Signed by datacenter 1 under a key it does not share with this one.
        let mut other = req.clone();
        sign(
            &SecretKey {
                id: 9,
                secret: SECRET.to_vec(),
            },
            &mut other,
            1,
            "10.0.0.9:41000",
            1,
            1_000,
        );
        assert_eq!(
            verify(&ring(), &other, 1_010),
            Err(AuthError::UnknownKey { from: 1, id: 9 })
        );
        // A sender that is not a peer has no key here.
        let mut stranger = req.clone();
        sign(&key(), &mut stranger, 5, "10.0.0.9:41000", 1, 1_000);
        assert_eq!(
            verify(&ring(), &stranger, 1_010),
            Err(AuthError::UnknownKey { from: 5, id: 1 })
        );
    }

    #[test]
    fn any_change_to_a_signed_request_breaks_it_but_a_hops_framing_does_not() {
        let req = signed();
        let set = |name: &'static str, to: Vec<u8>| {
            move |r: &mut Request| {
                for (n, v) in r.headers.iter_mut() {
                    if n == name {
                        *v = to.clone();
                    }
                }
            }
        };
        type Change = Box<dyn Fn(&mut Request)>;
        let changes: Vec<(&str, Change)> = vec![
            ("the body", Box::new(|r| r.body = b"evil".to_vec())),
            ("the target", Box::new(|r| r.target = "/admin".into())),
            ("the hop count", Box::new(set(HOP, b"0".to_vec()))),
            // Every header the peer's app sees is covered, not only the handoff's own.
            (
                "a header added",
                Box::new(|r| r.headers.push(("x-user".into(), b"admin".to_vec()))),
            ),
            (
                "the nonce",
                Box::new(set(NONCE, format!("{:032x}", 7).into_bytes())),
            ),
        ];
        for (what, change) in changes {
            let mut tampered = req.clone();
            change(&mut tampered);
            assert_eq!(
                verify(&ring(), &tampered, 1_010),
                Err(AuthError::BadSignature),
                "{what} changed"
            );
        }
        // What a hop writes for itself (framing) is not part of the signature.
        let mut reframed = req.clone();
        reframed
            .headers
            .push(("content-length".into(), b"4".to_vec()));
        assert!(verify(&ring(), &reframed, 1_010).is_ok());
    }

    #[test]
    fn a_replayed_handoff_is_refused_within_its_window_and_forgotten_after() {
        let mut req = request("POST /pay HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1\r\n\r\nx");
        sign(&key(), &mut req, 2, "10.0.0.9:41000", 1, 1_000);
        let guard = ReplayGuard::with_capacity(2);
        let meta = verify(&ring(), &req, 1_000).unwrap();
        assert_eq!(guard.admit(&meta, 1_000), Ok(()));
        assert_eq!(guard.admit(&meta, 1_030), Err(AuthError::Replayed));
        // The same request signed again is a new handoff (a new nonce).
        let mut again = req.clone();
        sign(&key(), &mut again, 2, "10.0.0.9:41000", 1, 1_001);
        let second = verify(&ring(), &again, 1_001).unwrap();
        assert_ne!(second.nonce, meta.nonce);
        assert_eq!(guard.admit(&second, 1_001), Ok(()));
        // Full: refused rather than forgetting something still fresh.
        let mut third = req.clone();
        sign(&key(), &mut third, 2, "10.0.0.9:41000", 1, 1_002);
        let third = verify(&ring(), &third, 1_002).unwrap();
        assert_eq!(guard.admit(&third, 1_002), Err(AuthError::ReplayCacheFull));
        // Past the window the old entries go (a replay of them is stale by then).
        assert_eq!(guard.admit(&third, 1_062), Ok(()));
        assert_eq!(verify(&ring(), &req, 1_062), Err(AuthError::Stale(62)));
    }

    #[test]
    fn malformed_handoff_headers_are_refused_by_name_never_a_panic() {
        let base = [
            ("x-edge-hop", "1"),
            ("x-edge-from", "2"),
            ("x-edge-client", "1.2.3.4:5"),
            ("x-edge-time", "100"),
            ("x-edge-nonce", "ff"),
            ("x-edge-key", "1"),
            ("x-edge-auth", "00"),
        ];
        let worst = [
            ("x-edge-hop", "4294967296"),
            ("x-edge-from", "18446744073709551616"),
            ("x-edge-time", "99999999999999999999999999"),
            ("x-edge-time", "-1"),
            ("x-edge-nonce", "1ffffffffffffffffffffffffffffffff"),
            ("x-edge-nonce", "\u{e9}\u{e9}"),
            ("x-edge-client", "\u{1F600}"),
            ("x-edge-key", "4294967296"),
            ("x-edge-key", "18446744073709551616"),
            ("x-edge-key", ""),
            ("x-edge-key", "\u{e9}1"),
            ("x-edge-auth", "zz\u{e9}"),
        ];
        for (name, value) in worst {
            let mut raw = "GET / HTTP/1.1\r\nHost: a\r\n".to_owned();
            for (n, v) in base {
                raw.push_str(&format!("{n}: {}\r\n", if n == name { value } else { v }));
            }
            raw.push_str("\r\n");
            let got = verify(&ring(), &request(&raw), 100);
            // The client header is free text (only the MAC can refuse it); the others are
            // refused for being malformed.
            let want = if name == CLIENT {
                Err(AuthError::BadSignature)
            } else {
                Err(AuthError::Header(
                    HEADERS.iter().copied().find(|h| *h == name).unwrap(),
                ))
            };
            assert_eq!(got, want, "{name}: {value}");
        }
    }

    #[test]
    fn a_client_cannot_pass_for_a_datacenter() {
        let plain = request("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(!claims_handoff(&plain));
        assert_eq!(verify(&ring(), &plain, 0), Err(AuthError::Header(HOP)));
        let forged = request(
            "GET / HTTP/1.1\r\nHost: a\r\nx-edge-hop: 1\r\nx-edge-from: 2\r\nx-edge-client: 1.2.3.4:5\r\n\
             x-edge-time: 100\r\nx-edge-nonce: 1\r\nx-edge-key: 1\r\nx-edge-auth: 00ff\r\n\r\n",
        );
        assert!(claims_handoff(&forged));
        assert_eq!(verify(&ring(), &forged, 100), Err(AuthError::BadSignature));
    }
}
