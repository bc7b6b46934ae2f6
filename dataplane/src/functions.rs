//! Split apps: an app made of several functions, each its own component with its own
//! placement. A function calls a sibling with outgoing wasi:http to the reserved authority
//! `http://<function>.fn.internal/...`; the host sends that call to this datacenter's own
//! workers under the sibling's internal host name, so the call takes the same path as any
//! request: the router reads the sibling's placement and serves it here or hands it to the
//! datacenter where it is placed. One path means one set of rules (placement, holdout,
//! failover, signatures) for apps and functions alike, for the price of a loopback hop.

use crate::http::Request;

/// The reserved domain of function calls.
pub const DOMAIN: &str = ".fn.internal";

/// How deep a chain of function calls has gone: set by the host on each call, one more than the
/// calling request's. A cycle (a function that ends up calling itself) would otherwise fill every
/// worker with calls waiting on each other.
pub const CALL_DEPTH_HEADER: &str = "x-edge-call-depth";
/// Calls deeper than this answer 508 (Loop Detected).
pub const MAX_CALL_DEPTH: u32 = 8;

/// The call depth of a request: 0 for a client's (whatever it sent), the header's value for a
/// function call, and past the limit for a function call whose header is malformed.
pub fn call_depth(req: &Request) -> u32 {
    if !req.host().is_some_and(is_internal) {
        return 0;
    }
    match req.header(CALL_DEPTH_HEADER) {
        None => 0,
        Some(v) => std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .unwrap_or(u32::MAX),
    }
}

/// The internal host name that routes to `function` of the split app `app`.
pub fn internal_host(app: &str, function: &str) -> String {
    format!("{function}.{app}{DOMAIN}")
}

/// The name a function runs under (its metrics, observations and PLACEMENT entry).
pub fn app_name(app: &str, function: &str) -> String {
    format!("{app}.{function}")
}

/// The function a guest calls at `host` (`db.fn.internal` -> `db`).
pub fn called(host: &str) -> Option<&str> {
    host.strip_suffix(DOMAIN)
        .filter(|f| !f.is_empty() && !f.contains('.'))
}

/// Whether `host` is reserved for function calls (clients may not use it).
pub fn is_internal(host: &str) -> bool {
    let (host, domain) = (host.as_bytes(), DOMAIN.as_bytes());
    host.len() > domain.len() && host[host.len() - domain.len()..].eq_ignore_ascii_case(domain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(internal_host("shop", "db"), "db.shop.fn.internal");
        assert_eq!(called("db.fn.internal"), Some("db"));
        assert_eq!(called("db.shop.fn.internal"), None);
        assert_eq!(called("fn.internal"), None);
        assert!(is_internal("db.shop.FN.internal"));
        assert!(!is_internal("fn.internal.example"));
        // Bytes, not chars: a multi-byte character just before the suffix's cut is no panic.
        for host in ["é", "aaaaaaaaaaé", "ééééééé", "x\u{1F600}nternal"] {
            assert!(!is_internal(host));
        }
    }
}
