//! Authentication of handed-off requests: an HMAC-SHA256, under the key the datacenters share,
//! over the request's metadata and a digest of its body. A peer accepts a handoff only when the
//! MAC checks and its timestamp is recent, so neither a client nor anyone on the path can make a
//! datacenter serve a forged handoff, and a captured one expires.

use hmac::{Hmac, Mac as _};
use sha2::{Digest as _, Sha256};

use crate::http::Request;

pub const HOP: &str = "x-edge-hop";
pub const FROM: &str = "x-edge-from";
pub const CLIENT: &str = "x-edge-client";
pub const TIME: &str = "x-edge-time";
pub const AUTH: &str = "x-edge-auth";

/// The headers a handoff carries; a client request carrying any of them is refused.
pub const HEADERS: [&str; 5] = [HOP, FROM, CLIENT, TIME, AUTH];

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
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("handoff header {0} is missing or malformed")]
    Header(&'static str),
    #[error("handoff timestamp is {0} s away from this datacenter's clock")]
    Stale(u64),
    #[error("handoff signature does not verify")]
    BadSignature,
}

fn mac(key: &[u8], req: &Request, from: u32, client: &str, hop: u32, time: u64) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    let body = Sha256::digest(&req.body);
    for part in [
        req.method.as_bytes(),
        req.host().unwrap_or("").as_bytes(),
        req.target.as_bytes(),
        from.to_string().as_bytes(),
        client.as_bytes(),
        hop.to_string().as_bytes(),
        time.to_string().as_bytes(),
        &body[..],
    ] {
        // Length-prefixed, so no two different field lists hash alike.
        m.update(&(part.len() as u32).to_be_bytes());
        m.update(part);
    }
    m
}

/// Adds the handoff headers to `req` (replacing any it had).
pub fn sign(key: &[u8], req: &mut Request, from: u32, client: &str, hop: u32, time: u64) {
    req.headers
        .retain(|(name, _)| !HEADERS.contains(&name.as_str()));
    let tag = hex::encode(
        mac(key, req, from, client, hop, time)
            .finalize()
            .into_bytes(),
    );
    for (name, value) in [
        (HOP, hop.to_string()),
        (FROM, from.to_string()),
        (CLIENT, client.to_owned()),
        (TIME, time.to_string()),
        (AUTH, tag),
    ] {
        req.headers.push((name.to_owned(), value.into_bytes()));
    }
}

/// Whether `req` claims to be a handoff (carries any handoff header).
pub fn claims_handoff(req: &Request) -> bool {
    req.headers
        .iter()
        .any(|(name, _)| HEADERS.contains(&name.as_str()))
}

/// Checks a handoff's headers against its content; `now` is the receiver's Unix time.
pub fn verify(key: &[u8], req: &Request, now: u64) -> Result<HandoffMeta, AuthError> {
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
    let client = text(CLIENT)?.to_owned();
    let tag = hex::decode(text(AUTH)?).map_err(|_| AuthError::Header(AUTH))?;
    mac(key, req, from, &client, hop, time)
        .verify_slice(&tag)
        .map_err(|_| AuthError::BadSignature)?;
    let skew = now.abs_diff(time);
    if skew > MAX_SKEW_SECS {
        return Err(AuthError::Stale(skew));
    }
    Ok(HandoffMeta { from, client, hop })
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

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn a_signed_request_verifies_and_any_change_breaks_it() {
        let mut req =
            request("POST /x?y=1 HTTP/1.1\r\nHost: app.test\r\nContent-Length: 4\r\n\r\nbody");
        sign(KEY, &mut req, 1, "10.0.0.9:41000", 1, 1_000);
        assert!(claims_handoff(&req));
        assert_eq!(
            verify(KEY, &req, 1_010),
            Ok(HandoffMeta {
                from: 1,
                client: "10.0.0.9:41000".into(),
                hop: 1
            })
        );
        assert_eq!(
            verify(b"another key", &req, 1_010),
            Err(AuthError::BadSignature)
        );
        assert_eq!(verify(KEY, &req, 2_000), Err(AuthError::Stale(1_000)));

        let mut tampered = req.clone();
        tampered.body = b"evil".to_vec();
        assert_eq!(verify(KEY, &tampered, 1_010), Err(AuthError::BadSignature));
        let mut tampered = req.clone();
        tampered.target = "/admin".into();
        assert_eq!(verify(KEY, &tampered, 1_010), Err(AuthError::BadSignature));
        let mut tampered = req.clone();
        for (name, value) in tampered.headers.iter_mut() {
            if name == HOP {
                *value = b"0".to_vec();
            }
        }
        assert_eq!(verify(KEY, &tampered, 1_010), Err(AuthError::BadSignature));
    }

    #[test]
    fn a_client_cannot_pass_for_a_datacenter() {
        let plain = request("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(!claims_handoff(&plain));
        assert_eq!(verify(KEY, &plain, 0), Err(AuthError::Header(HOP)));
        let forged = request(
            "GET / HTTP/1.1\r\nHost: a\r\nx-edge-hop: 1\r\nx-edge-from: 2\r\nx-edge-client: 1.2.3.4:5\r\n\
             x-edge-time: 100\r\nx-edge-auth: 00ff\r\n\r\n",
        );
        assert!(claims_handoff(&forged));
        assert_eq!(verify(KEY, &forged, 100), Err(AuthError::BadSignature));
    }
}
