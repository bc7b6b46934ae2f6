//! The worker's service: Host header -> app, run in the wasm runtime, with per-app counters.

use std::{
    collections::{BTreeMap, HashMap},
    rc::Rc,
    sync::{Arc, Mutex},
};

use crate::{
    http::{Request, Response},
    wasm::AppRuntime,
    worker::{Reply, RequestContext, Service},
};

/// Which app serves which Host; `default` serves unmatched hosts (404 when None).
#[derive(Clone, Debug, Default)]
pub struct Routes {
    pub hosts: HashMap<String, String>,
    pub default: Option<String>,
    /// Fixed responses served without wasm, by host, headers included.
    pub statics: HashMap<String, (String, Response)>,
}

impl Routes {
    pub fn app_for(&self, req: &Request) -> Option<&str> {
        req.host()
            .and_then(|h| lookup_host(&self.hosts, h))
            .or(self.default.as_ref())
            .map(String::as_str)
    }

    fn static_for(&self, req: &Request) -> Option<&(String, Response)> {
        req.host().and_then(|h| lookup_host(&self.statics, h))
    }
}

/// Host names are keyed lower-case; most clients send them so, which needs no copy.
fn lookup_host<'a, V>(map: &'a HashMap<String, V>, host: &str) -> Option<&'a V> {
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        map.get(&host.to_ascii_lowercase())
    } else {
        map.get(host)
    }
}

/// Per-app request counters of one worker. Only this worker writes; the admin endpoint reads.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct AppCounters {
    pub requests: u64,
    pub responses_2xx: u64,
    pub responses_3xx: u64,
    pub responses_4xx: u64,
    pub responses_5xx: u64,
    pub traps: u64,
    pub deadlines: u64,
    pub overloaded: u64,
}

pub type WorkerMetrics = Arc<Mutex<BTreeMap<String, AppCounters>>>;

pub struct EdgeService {
    pub routes: Routes,
    pub runtime: Rc<AppRuntime>,
    pub metrics: WorkerMetrics,
    /// Adds `x-edge-worker` to responses (tests and debugging).
    pub debug_headers: bool,
}

fn count(metrics: &WorkerMetrics, app: &str, f: impl FnOnce(&mut AppCounters)) {
    if let Ok(mut m) = metrics.lock() {
        match m.get_mut(app) {
            Some(c) => f(c),
            None => f(m.entry(app.to_owned()).or_default()),
        }
    }
}

impl Service for EdgeService {
    fn call(&self, req: Request, ctx: &RequestContext) -> Reply {
        if let Some((app, resp)) = self.routes.static_for(&req) {
            count(&self.metrics, app, |c| {
                c.requests += 1;
                c.responses_2xx += 1;
            });
            return Reply::Now(resp.clone());
        }
        let Some(app) = self.routes.app_for(&req).map(str::to_owned) else {
            let host = req.host().unwrap_or("").to_owned();
            return Reply::Now(Response::text(
                404,
                format!("no app serves host {host:?} here\n"),
            ));
        };
        let (runtime, metrics, worker) = (self.runtime.clone(), self.metrics.clone(), ctx.worker);
        let debug = self.debug_headers;
        count(&metrics, &app, |c| c.requests += 1);
        Reply::Later(Box::pin(async move {
            let result = runtime.handle(&app, req).await;
            let mut resp = match result {
                Ok(r) => r,
                Err(e) => {
                    count(&metrics, &app, |c| match e.status() {
                        504 => c.deadlines += 1,
                        503 => c.overloaded += 1,
                        500 => c.traps += 1,
                        _ => {}
                    });
                    e.response()
                }
            };
            count(&metrics, &app, |c| match resp.status {
                200..=299 => c.responses_2xx += 1,
                300..=399 => c.responses_3xx += 1,
                400..=499 => c.responses_4xx += 1,
                _ => c.responses_5xx += 1,
            });
            resp.headers
                .push(("x-edge-placement".into(), "local".into()));
            if debug {
                resp.headers
                    .push(("x-edge-worker".into(), worker.to_string()));
            }
            resp
        }))
    }
}
