//! The worker's service, as a short pipeline of phases (in the spirit of pingora's `ProxyHttp`):
//! admit (`admit::admit`) -> route (`admit::route`) -> check a handoff claim
//! (`admit::handoff_claim`) -> choose where it runs (`target::choose`) -> run it elsewhere or
//! here, then finish and count (`flow::Run`). Each phase is a function of its own, with its own
//! tests; this file wires them to the worker's state.

pub mod access_log;
mod admit;
mod flow;
pub mod latency;
pub mod region;
pub mod routes;
mod target;

use std::{
    collections::{BTreeMap, HashMap},
    rc::Rc,
    sync::{Arc, Mutex},
};

use edgeplane_abi::Placement;
use tracing::warn;

use crate::{
    handoff::Handoff,
    http::{Request, Response},
    probe::ProbeKind,
    wasm::AppRuntime,
    worker::{Reply, RequestContext, Service},
};
use admit::{Admission, Gate, Route};
use flow::{Plan, Run};
use routes::lookup_host;
pub use routes::{Routes, StaticResponse};
pub use target::Target;

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
    /// Requests this worker handed to another datacenter, and those that failed (and were
    /// served here instead).
    pub handed_off: u64,
    pub handoff_failures: u64,
    /// Handoffs from other datacenters served here, and those refused (bad signature).
    pub handoffs_received: u64,
    pub handoffs_rejected: u64,
    /// Requests kept here as the holdout of an app placed elsewhere.
    pub holdouts: u64,
    /// Requests served here without trying a peer marked down.
    pub handoffs_skipped: u64,
    /// Requests sent on to the region because this worker was saturated, and because the
    /// app's code was not resident and the app is rarely requested.
    pub region_saturated: u64,
    pub region_cold: u64,
    /// Moving averages of whole-request time, handed off and held out: how the placement
    /// compares with its baseline.
    pub remote_ewma_us: f64,
    pub holdout_ewma_us: f64,
    /// Time to the response head, by placement target (`local`, `remote-dc2`, ...).
    pub latency: BTreeMap<String, latency::LatencyHistogram>,
}

impl AppCounters {
    /// Adds another worker's counts and latency histograms (the moving averages are per
    /// worker and are not summed).
    pub fn add(&mut self, other: &AppCounters) {
        let counts = [
            (&mut self.requests, other.requests),
            (&mut self.responses_2xx, other.responses_2xx),
            (&mut self.responses_3xx, other.responses_3xx),
            (&mut self.responses_4xx, other.responses_4xx),
            (&mut self.responses_5xx, other.responses_5xx),
            (&mut self.traps, other.traps),
            (&mut self.deadlines, other.deadlines),
            (&mut self.overloaded, other.overloaded),
            (&mut self.handed_off, other.handed_off),
            (&mut self.handoff_failures, other.handoff_failures),
            (&mut self.handoffs_received, other.handoffs_received),
            (&mut self.handoffs_rejected, other.handoffs_rejected),
            (&mut self.holdouts, other.holdouts),
            (&mut self.handoffs_skipped, other.handoffs_skipped),
            (&mut self.region_saturated, other.region_saturated),
            (&mut self.region_cold, other.region_cold),
        ];
        for (into, n) in counts {
            *into = into.saturating_add(n);
        }
        for (target, h) in &other.latency {
            self.latency.entry(target.clone()).or_default().merge(h);
        }
    }
}

/// Weight of the newest request in the moving averages.
const EWMA_ALPHA: f64 = 0.3;

fn ewma(avg: &mut f64, sample_us: f64) {
    *avg = if *avg == 0.0 {
        sample_us
    } else {
        *avg * (1.0 - EWMA_ALPHA) + sample_us * EWMA_ALPHA
    };
}

pub type WorkerMetrics = Arc<Mutex<BTreeMap<String, AppCounters>>>;

pub struct EdgeService {
    /// Replaced by a reload (`maintain`); a request routes on the table it found.
    pub routes: std::cell::RefCell<Rc<Routes>>,
    pub runtime: Rc<AppRuntime>,
    pub metrics: WorkerMetrics,
    /// Adds `x-edge-worker` to responses (tests and debugging).
    pub debug_headers: bool,
    /// Handing requests to other datacenters, and checking the ones they hand here.
    pub handoff: Option<Rc<Handoff>>,
    pub placement: Option<Box<dyn PlacementSource>>,
    /// The region (where REGION placements go) and when requests overflow to it.
    pub region: Option<region::RegionPolicy>,
    pub popularity: region::Popularity,
    /// Every n-th request of an app the engine placed elsewhere stays here, as the baseline its
    /// placement is judged against (0: none).
    pub holdout_every: u64,
    pub holdout_seen: std::cell::RefCell<HashMap<String, u64>>,
    /// Reloads published by the daemon (None: the apps are fixed for the worker's life).
    pub live: Option<std::cell::RefCell<crate::live::LiveSubscriber>>,
    pub access_log: Option<access_log::AccessLog>,
    /// The current generation's TLS configuration, for connections accepted from now on.
    pub tls: std::cell::RefCell<Option<Arc<crate::tls::peer::WorkerTls>>>,
}

fn count(metrics: &WorkerMetrics, app: &str, f: impl FnOnce(&mut AppCounters)) {
    let mut m = crate::lock(metrics);
    match m.get_mut(app) {
        Some(c) => f(c),
        None => f(m.entry(app.to_owned()).or_default()),
    }
}

/// Where the placement engine runs an app, read per request (the PLACEMENT map).
pub trait PlacementSource {
    fn placement(&self, app: &str) -> Placement;
    /// A reload's app ids (app name -> PLACEMENT index).
    fn set_ids(&self, _ids: &HashMap<String, u32>) {}
}

impl EdgeService {
    /// Switches to a generation the daemon published since the last look, and says so.
    fn apply_reload(&self) {
        let Some(live) = &self.live else {
            return;
        };
        let Some(generation) = live.borrow_mut().take_new() else {
            return;
        };
        let changes = self.runtime.apply(generation.specs.clone());
        *self.routes.borrow_mut() = Rc::new(generation.routes.clone());
        *self.tls.borrow_mut() = generation.tls.clone();
        if let Some(p) = &self.placement {
            p.set_ids(&generation.app_ids);
        }
        let present: Vec<_> = generation.app_ids.keys().collect();
        self.holdout_seen
            .borrow_mut()
            .retain(|app, _| present.contains(&app));
        live.borrow().applied(generation.number);
        tracing::info!(
            generation = generation.number,
            added = ?changes.added,
            changed = ?changes.changed,
            removed = ?changes.removed,
            "worker serves the reloaded configuration"
        );
    }

    /// Checks a request's handoff signature (and that it is not a replay).
    fn verify_handoff(&self, req: &Request, over_peer_tls: bool) -> Result<(), String> {
        match &self.handoff {
            // The HMAC alone would do; the connection must be a peer's too, so that no handoff
            // (or its answer) crosses the WAN in the clear.
            Some(h) if h.requires_tls() && !over_peer_tls => {
                Err("this datacenter takes handoffs over mutual TLS only".to_owned())
            }
            Some(h) => h.verify(req).map(|_| ()).map_err(|e| e.to_string()),
            None => Err("this datacenter has no peers".to_owned()),
        }
    }

    /// Where a request for `app` runs; a handed-off request runs here.
    fn plan(&self, app: &str, handed_off: bool) -> Plan {
        let target = if handed_off {
            Target::Local
        } else {
            self.target(app)
        };
        // Where requests go when this worker is saturated: never a handed-off request.
        let overflow = self
            .reachable_region()
            .filter(|p| !handed_off && p.overflow_in_flight > 0)
            .map(|p| (p.region, p.overflow_in_flight));
        Plan {
            target,
            overflow,
            handed_off,
        }
    }

    fn target(&self, app: &str) -> Target {
        let (Some(source), Some(handoff)) = (&self.placement, &self.handoff) else {
            return Target::Local;
        };
        target::choose(
            source.placement(app),
            target::View {
                self_id: handoff.self_id(),
                region: self.region.as_ref().map(|r| r.region),
                is_peer: &|dc| handoff.peer(dc).is_some(),
                is_down: &|dc| handoff.is_down(dc),
                holdout_turn: &mut || self.holdout_turn(app),
                cold_and_rare: &mut || self.cold_and_rare(app),
            },
        )
    }

    /// Every `holdout_every`-th request of an app placed elsewhere stays here.
    fn holdout_turn(&self, app: &str) -> bool {
        if self.holdout_every == 0 {
            return false;
        }
        let mut seen = self.holdout_seen.borrow_mut();
        let n = match seen.get_mut(app) {
            Some(n) => n,
            None => seen.entry(app.to_owned()).or_default(),
        };
        *n += 1;
        *n % self.holdout_every == 0
    }

    /// Whether `app`'s code is not resident here and the app is too rarely asked for to be
    /// worth loading (counting this request).
    fn cold_and_rare(&self, app: &str) -> bool {
        let Some(policy) = &self.region else {
            return false;
        };
        let rate = self.popularity.record(app);
        policy.popular_rps > 0.0 && rate < policy.popular_rps && !self.runtime.is_resident(app)
    }

    /// The region, when requests can be sent on to it from here (it is not this datacenter
    /// and not marked down).
    fn reachable_region(&self) -> Option<&region::RegionPolicy> {
        let (policy, handoff) = (self.region.as_ref()?, self.handoff.as_ref()?);
        (policy.region != handoff.self_id() && !handoff.is_down(policy.region)).then_some(policy)
    }
}

/// A new request id for an error: what a client reports, and the key to the log line that says
/// what happened.
pub fn new_request_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Whether a (lower-case) response header is one only edgeplane may set.
pub fn is_platform_header(name: &str) -> bool {
    name.starts_with("x-edge-")
}

/// Peers' placement engines ask here how far this datacenter is from a destination.
pub const PROBE_PATH: &str = "/.edgeplane/probe";

/// A probe from here to `dest` (`ip:port`): TCP connect time, or with `http` (a Host header)
/// the time of an HTTP `HEAD /` (see `probe::ProbeKind`).
async fn probe(dest: String, http: Option<String>) -> Response {
    let Ok(addr) = dest.parse::<std::net::SocketAddr>() else {
        return Response::text(400, format!("probe: {dest:?} is not an ip:port\n"));
    };
    let kind = http.map_or(ProbeKind::Connect, ProbeKind::Http);
    match crate::probe::measure(addr, &kind, std::time::Duration::from_secs(3)).await {
        Ok(took) => Response::new(
            200,
            format!(
                "{{\"destination\":\"{dest}\",\"kind\":\"{}\",\"probe_us\":{}}}\n",
                if kind == ProbeKind::Connect {
                    "connect"
                } else {
                    "http"
                },
                took.as_micros()
            ),
        )
        .header("content-type", "application/json"),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            Response::text(504, format!("probe {dest}: {e}\n"))
        }
        Err(e) => Response::text(502, format!("probe {dest}: {e}\n")),
    }
}

/// A query parameter's value (no percent-decoding: probes carry plain host names).
fn query_param(target: &str, name: &str) -> Option<String> {
    target
        .split_once('?')?
        .1
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .map(str::to_owned)
}

impl Service for EdgeService {
    fn call(&self, req: Request, ctx: &RequestContext) -> Reply {
        let verify = |r: &Request| self.verify_handoff(r, ctx.peer_tls);
        let gate = Gate {
            peer: ctx.peer,
            functions_via: self.runtime.functions_via(),
            verify: &verify,
        };
        match admit::admit(&req, &gate) {
            Admission::Serve => {}
            Admission::Probe { dest, http } => return Reply::Later(Box::pin(probe(dest, http))),
            Admission::Refuse(resp) => return Reply::Now(resp),
        }
        let routes = self.routes.borrow().clone();
        let app = match admit::route(&routes, &req) {
            Route::App(app) => app,
            Route::Static(fixed) => {
                count(&self.metrics, &fixed.app, |c| {
                    c.requests += 1;
                    c.responses_2xx += 1;
                });
                return Reply::Now(fixed.response());
            }
            Route::Unknown => {
                let host = req.host().unwrap_or("");
                return Reply::Now(Response::text(
                    404,
                    format!("no app serves host {host:?} here\n"),
                ));
            }
        };
        let handed_off = match admit::handoff_claim(&req, &verify) {
            Ok(handed_off) => handed_off,
            Err(why) => {
                count(&self.metrics, &app, |c| c.handoffs_rejected += 1);
                warn!(app = %app, peer = ?ctx.peer, reason = %why, "handoff rejected");
                return Reply::Now(Response::text(403, format!("handoff rejected: {why}\n")));
            }
        };
        count(&self.metrics, &app, |c| {
            c.requests += 1;
            c.handoffs_received += u64::from(handed_off);
        });
        let run = Run {
            plan: self.plan(&app, handed_off),
            runtime: self.runtime.clone(),
            metrics: self.metrics.clone(),
            handoff: self.handoff.clone(),
            app,
            client: ctx.peer,
            worker: ctx.worker,
            debug_headers: self.debug_headers,
            body: ctx.take_body(),
            access_log: self.access_log.clone(),
        };
        Reply::Later(Box::pin(run.execute(req)))
    }

    fn maintain(&self) {
        self.apply_reload();
        self.runtime.age_heat();
    }

    fn prepare(&self) -> bool {
        self.runtime.prepare_ahead()
    }

    fn tls(&self) -> Option<Arc<crate::tls::peer::WorkerTls>> {
        self.tls.borrow().clone()
    }
}
