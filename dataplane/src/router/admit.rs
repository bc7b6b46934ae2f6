//! The first phases of a request: whether it is admitted at all (probes only from peers,
//! function hosts only from their app, call chains bounded), then which app it is for, then
//! whether a handoff it claims to be is genuine. Pure functions over what they are shown.

use std::net::SocketAddr;

use tracing::warn;

use super::{PROBE_PATH, Routes, StaticResponse, lookup_host, query_param};
use crate::{
    functions,
    handoff::auth,
    http::{Request, Response},
};

/// What admission says of a request.
#[derive(Debug)]
pub enum Admission {
    /// On to routing.
    Serve,
    /// A peer's signed probe of `dest` (with `http`, an HTTP probe with that Host).
    Probe { dest: String, http: Option<String> },
    /// Answered now, and no further.
    Refuse(Response),
}

/// What admission needs to know besides the request.
pub struct Gate<'a> {
    /// The client's address.
    pub peer: Option<SocketAddr>,
    /// Where this datacenter's workers send function calls from.
    pub functions_via: Option<SocketAddr>,
    /// Checks a request's handoff signature (Err: why not, or that there are no peers).
    pub verify: &'a dyn Fn(&Request) -> Result<(), String>,
}

pub fn admit(req: &Request, gate: &Gate<'_>) -> Admission {
    if req.path() == PROBE_PATH {
        // Only for peers: a probe must carry a handoff signature.
        if let Err(why) = (gate.verify)(req) {
            return Admission::Refuse(Response::text(403, format!("probe refused: {why}\n")));
        }
        return Admission::Probe {
            dest: query_param(&req.target, "dest").unwrap_or_default(),
            http: query_param(&req.target, "http"),
        };
    }
    // Function hosts are for a split app's own calls (from this datacenter's workers, or handed
    // off by a peer, which is verified later): no client reaches a function directly.
    let from_workers = gate.peer.is_some_and(|p| {
        p.ip().is_loopback() || gate.functions_via.is_some_and(|v| v.ip() == p.ip())
    });
    if req.host().is_some_and(functions::is_internal) && !auth::claims_handoff(req) && !from_workers
    {
        return Admission::Refuse(Response::text(
            403,
            "functions are called by their app, not by clients\n",
        ));
    }
    let depth = functions::call_depth(req);
    if depth > functions::MAX_CALL_DEPTH {
        warn!(host = ?req.host(), depth, "function call chain too deep; refused");
        return Admission::Refuse(Response::text(
            508,
            format!(
                "function calls nested deeper than {}: a cycle between functions?\n",
                functions::MAX_CALL_DEPTH
            ),
        ));
    }
    Admission::Serve
}

/// Which app a request is for.
#[derive(Debug)]
pub enum Route<'a> {
    /// A fixed response, served without wasm.
    Static(&'a StaticResponse),
    App(String),
    /// No app serves this host here.
    Unknown,
}

pub fn route<'a>(routes: &'a Routes, req: &Request) -> Route<'a> {
    let host = req.host();
    if let Some(fixed) = host.and_then(|h| lookup_host(&routes.statics, h)) {
        return Route::Static(fixed);
    }
    match routes.app_for(req) {
        Some(app) => Route::App(app.to_owned()),
        None => Route::Unknown,
    }
}

/// For a request that claims to be a handoff from another datacenter: Ok(true) when its
/// signature holds (it is served here whatever the placement says: a handed-off request is
/// never handed off again), Ok(false) when it claims nothing, Err with why not when it does
/// not verify (refused: no client can pose as a datacenter).
pub fn handoff_claim(
    req: &Request,
    verify: &dyn Fn(&Request) -> Result<(), String>,
) -> Result<bool, String> {
    if !auth::claims_handoff(req) {
        return Ok(false);
    }
    verify(req).map(|()| true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{HttpLimits, ParseOutcome, parse_request};

    fn request(raw: &str) -> Request {
        match parse_request(raw.as_bytes(), &HttpLimits::default()).unwrap() {
            ParseOutcome::Complete(r, _) => r,
            other => panic!("{other:?}"),
        }
    }

    fn gate<'a>(peer: &str, verify: &'a dyn Fn(&Request) -> Result<(), String>) -> Gate<'a> {
        Gate {
            peer: Some(peer.parse().unwrap()),
            functions_via: Some("10.0.0.5:8080".parse().unwrap()),
            verify,
        }
    }

    const UNSIGNED: &dyn Fn(&Request) -> Result<(), String> = &|_| Err("unsigned".into());
    const SIGNED: &dyn Fn(&Request) -> Result<(), String> = &|_| Ok(());

    #[test]
    fn probes_are_for_peers_only() {
        let probe =
            request("GET /.edgeplane/probe?dest=10.1.1.1:80&http=api HTTP/1.1\r\nHost: x\r\n\r\n");
        let refused = admit(&probe, &gate("192.0.2.1:1", UNSIGNED));
        assert!(matches!(refused, Admission::Refuse(r) if r.status == 403));
        assert!(matches!(
            admit(&probe, &gate("192.0.2.1:1", SIGNED)),
            Admission::Probe { dest, http: Some(host) } if dest == "10.1.1.1:80" && host == "api"
        ));
    }

    #[test]
    fn function_hosts_only_from_this_datacenters_workers_and_call_chains_are_bounded() {
        let call = request("GET / HTTP/1.1\r\nHost: db.shop.fn.internal\r\n\r\n");
        assert!(
            matches!(admit(&call, &gate("192.0.2.1:1", UNSIGNED)), Admission::Refuse(r) if r.status == 403)
        );
        assert!(matches!(
            admit(&call, &gate("10.0.0.5:4000", UNSIGNED)),
            Admission::Serve
        ));
        assert!(matches!(
            admit(&call, &gate("127.0.0.1:4000", UNSIGNED)),
            Admission::Serve
        ));
        // Depth counts for function calls only: a client's header says nothing.
        let client = request("GET / HTTP/1.1\r\nHost: a.test\r\nx-edge-call-depth: 99\r\n\r\n");
        assert!(matches!(
            admit(&client, &gate("192.0.2.1:1", UNSIGNED)),
            Admission::Serve
        ));
        let deep =
            request("GET / HTTP/1.1\r\nHost: db.shop.fn.internal\r\nx-edge-call-depth: 9\r\n\r\n");
        assert!(
            matches!(admit(&deep, &gate("10.0.0.5:1", UNSIGNED)), Admission::Refuse(r) if r.status == 508)
        );
        let fine =
            request("GET / HTTP/1.1\r\nHost: db.shop.fn.internal\r\nx-edge-call-depth: 8\r\n\r\n");
        assert!(matches!(
            admit(&fine, &gate("10.0.0.5:1", UNSIGNED)),
            Admission::Serve
        ));
    }

    #[test]
    fn hosts_route_to_statics_then_apps_then_the_default() {
        let mut routes = Routes::default();
        routes.hosts.insert("shop.test".into(), "shop".into());
        routes.statics.insert(
            "static.test".into(),
            StaticResponse {
                app: "st".into(),
                status: 200,
                headers: vec![],
                body: b"hi".to_vec(),
            },
        );
        let get = |host: &str| request(&format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n"));
        assert!(matches!(route(&routes, &get("STATIC.test")), Route::Static(s) if s.app == "st"));
        assert!(matches!(route(&routes, &get("shop.test:8080")), Route::App(a) if a == "shop"));
        assert!(matches!(
            route(&routes, &get("nobody.test")),
            Route::Unknown
        ));
        routes.default = Some("shop".into());
        assert!(matches!(route(&routes, &get("nobody.test")), Route::App(a) if a == "shop"));
    }

    #[test]
    fn a_handoff_claim_must_verify() {
        let plain = request("GET / HTTP/1.1\r\nHost: a.test\r\n\r\n");
        assert!(matches!(handoff_claim(&plain, UNSIGNED), Ok(false)));
        let claimed = request(
            "GET / HTTP/1.1\r\nHost: a.test\r\nx-edge-hop: 1\r\nx-edge-from: 2\r\nx-edge-auth: 00\r\n\r\n",
        );
        assert!(matches!(handoff_claim(&claimed, SIGNED), Ok(true)));
        assert_eq!(
            handoff_claim(&claimed, UNSIGNED),
            Err("unsigned".to_owned())
        );
    }
}
