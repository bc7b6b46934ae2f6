//! Which app serves which Host, and the fixed responses served without wasm.

use std::collections::HashMap;

use crate::http::{Request, Response};

/// Which app serves which Host; `default` serves unmatched hosts (404 when None).
#[derive(Clone, Debug, Default)]
pub struct Routes {
    pub hosts: HashMap<String, String>,
    pub default: Option<String>,
    /// Fixed responses served without wasm, by host.
    pub statics: HashMap<String, StaticResponse>,
}

/// A fixed response an app serves without wasm, headers included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticResponse {
    pub app: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl StaticResponse {
    pub fn response(&self) -> Response {
        let mut resp = Response::new(self.status, self.body.clone());
        resp.headers.clone_from(&self.headers);
        resp
    }
}

impl Routes {
    pub fn app_for(&self, req: &Request) -> Option<&str> {
        req.host()
            .and_then(|h| lookup_host(&self.hosts, h))
            .or(self.default.as_ref())
            .map(String::as_str)
    }
}

/// Host names are keyed lower-case; most clients send them so, which needs no copy.
pub(super) fn lookup_host<'a, V>(map: &'a HashMap<String, V>, host: &str) -> Option<&'a V> {
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        map.get(&host.to_ascii_lowercase())
    } else {
        map.get(host)
    }
}
