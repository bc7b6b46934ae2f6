//! Split apps: an app made of several functions, each its own component with its own
//! placement. A function calls a sibling with outgoing wasi:http to the reserved authority
//! `http://<function>.fn.internal/...`; the host sends that call to this datacenter's own
//! workers under the sibling's internal host name, so the call takes the same path as any
//! request: the router reads the sibling's placement and serves it here or hands it to the
//! datacenter where it is placed. One path means one set of rules (placement, holdout,
//! failover, signatures) for apps and functions alike, for the price of a loopback hop.

/// The reserved domain of function calls.
pub const DOMAIN: &str = ".fn.internal";

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
    host.len() > DOMAIN.len() && host[host.len() - DOMAIN.len()..].eq_ignore_ascii_case(DOMAIN)
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
    }
}
