//! The worker's service: Host header -> app, run in the wasm runtime, with per-app counters.

pub mod region;

use std::{
    collections::{BTreeMap, HashMap},
    rc::Rc,
    sync::{Arc, Mutex},
};

use edgeplane_abi::{Placement, placement_flags, placement_kind};
use tracing::warn;

use crate::{
    functions,
    handoff::{Handoff, SERVICE_TIME_HEADER, auth, is_idempotent},
    http::{Request, Response},
    probe::ProbeKind,
    wasm::AppRuntime,
    worker::{Reply, RequestContext, Service},
};

/// Which app serves which Host; `default` serves unmatched hosts (404 when None).
#[derive(Clone, Debug, Default)]
pub struct Routes {
    pub hosts: HashMap<String, String>,
    pub default: Option<String>,
    /// Fixed responses served without wasm, by host.
    pub statics: HashMap<String, StaticResponse>,
}

/// A fixed response an app serves without wasm, headers included.
#[derive(Clone, Debug)]
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

    fn static_for(&self, req: &Request) -> Option<&StaticResponse> {
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
    pub routes: Routes,
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
}

/// Where one request runs.
#[derive(Clone, Copy)]
enum Target {
    Local,
    /// Placed elsewhere by the engine, but kept here as part of the holdout.
    Holdout,
    Peer(u32),
    /// Not placed elsewhere, but sent on to the region (saturated here, or cold and rare).
    Region(u32, region::RegionReason),
    /// Placed at a peer that failed a handoff moments ago: served here without trying it.
    PeerDown(u32),
}

impl EdgeService {
    fn target(&self, app: &str) -> Target {
        let (Some(source), Some(handoff)) = (&self.placement, &self.handoff) else {
            return Target::Local;
        };
        let p = source.placement(app);
        let dc = match p.kind {
            placement_kind::DATACENTER => Some(p.datacenter),
            placement_kind::REGION => self.region.as_ref().map(|r| r.region),
            _ => return self.overflow(app),
        };
        match dc {
            Some(dc) if dc != handoff.self_id() && handoff.peer(dc).is_some() => {
                if p.flags & placement_flags::SMART != 0 && self.holdout_every > 0 {
                    let mut seen = self.holdout_seen.borrow_mut();
                    let n = match seen.get_mut(app) {
                        Some(n) => n,
                        None => seen.entry(app.to_owned()).or_default(),
                    };
                    *n += 1;
                    if *n % self.holdout_every == 0 {
                        return Target::Holdout;
                    }
                }
                if handoff.is_down(dc) {
                    return Target::PeerDown(dc);
                }
                Target::Peer(dc)
            }
            _ => self.overflow(app),
        }
    }

    /// The region, when requests can be sent on to it from here (it is not this datacenter
    /// and not marked down).
    fn reachable_region(&self) -> Option<&region::RegionPolicy> {
        let (policy, handoff) = (self.region.as_ref()?, self.handoff.as_ref()?);
        (policy.region != handoff.self_id() && !handoff.is_down(policy.region)).then_some(policy)
    }

    /// For an app this datacenter serves: whether it goes to the region instead because it is
    /// cold here (saturation is judged when the request is about to run).
    fn overflow(&self, app: &str) -> Target {
        let Some(policy) = self.reachable_region() else {
            return Target::Local;
        };
        let rate = self.popularity.record(app);
        if policy.popular_rps > 0.0 && rate < policy.popular_rps && !self.runtime.is_resident(app) {
            return Target::Region(policy.region, region::RegionReason::Cold);
        }
        Target::Local
    }
}

/// Hands `req` to datacenter `dc`. Ok: its response and placement label. Err: the placement
/// label of the fallback, with the response to send when the request must not run here (a
/// non-idempotent request that may have run there), or None to serve it here.
async fn hand_to(
    handoff: &Handoff,
    dc: u32,
    req: &Request,
    client: Option<std::net::SocketAddr>,
    metrics: &WorkerMetrics,
    app: &str,
) -> Result<(Response, String), (Option<Response>, String)> {
    let name = handoff.peer_name(dc);
    let client = client.map(|c| c.to_string()).unwrap_or_default();
    match handoff.forward(dc, req.clone(), &client).await {
        Ok(resp) => {
            count(metrics, app, |c| c.handed_off += 1);
            Ok((resp, format!("remote-{name}")))
        }
        Err(e) if e.may_have_reached_peer() && !is_idempotent(&req.method) => {
            // The app may have run there: running it again here could do twice what the
            // client asked once.
            count(metrics, app, |c| c.handoff_failures += 1);
            let id = new_request_id();
            warn!(app = %app, peer = %name, request_id = %id, error = %e, "handoff failed; not retried");
            Err((
                Some(Response::error(
                    502,
                    "the datacenter serving this request failed; a request that is not \
                     idempotent is not retried",
                    &id,
                )),
                format!("remote-{name}"),
            ))
        }
        Err(e) => {
            // The peer is unreachable, or the request can safely run again here.
            count(metrics, app, |c| c.handoff_failures += 1);
            warn!(app = %app, peer = %name, error = %e, "handoff failed; serving locally");
            Err((None, format!("local-fallback-from-{name}")))
        }
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
async fn probe(dest: &str, http: Option<String>) -> Response {
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
        if req.path() == PROBE_PATH {
            // Only for peers: a probe must carry a handoff signature.
            let verdict = match &self.handoff {
                Some(h) => h.verify(&req).map(|_| ()).map_err(|e| e.to_string()),
                None => Err("this datacenter has no peers".to_owned()),
            };
            if let Err(why) = verdict {
                return Reply::Now(Response::text(403, format!("probe refused: {why}\n")));
            }
            let dest = query_param(&req.target, "dest").unwrap_or_default();
            let http = query_param(&req.target, "http");
            return Reply::Later(Box::pin(async move { probe(&dest, http).await }));
        }
        // Function hosts are for a split app's own calls (from this datacenter's workers, or
        // handed off by a peer, which is verified below): no client reaches a function directly.
        if req.host().is_some_and(functions::is_internal)
            && !auth::claims_handoff(&req)
            && !ctx.peer.is_some_and(|p| {
                p.ip().is_loopback()
                    || self
                        .runtime
                        .functions_via()
                        .is_some_and(|v| v.ip() == p.ip())
            })
        {
            return Reply::Now(Response::text(
                403,
                "functions are called by their app, not by clients\n",
            ));
        }
        let depth = functions::call_depth(&req);
        if depth > functions::MAX_CALL_DEPTH {
            warn!(host = ?req.host(), depth, "function call chain too deep; refused");
            return Reply::Now(Response::text(
                508,
                format!(
                    "function calls nested deeper than {}: a cycle between functions?\n",
                    functions::MAX_CALL_DEPTH
                ),
            ));
        }
        if let Some(fixed) = self.routes.static_for(&req) {
            count(&self.metrics, &fixed.app, |c| {
                c.requests += 1;
                c.responses_2xx += 1;
            });
            return Reply::Now(fixed.response());
        }
        let Some(app) = self.routes.app_for(&req).map(str::to_owned) else {
            let host = req.host().unwrap_or("").to_owned();
            return Reply::Now(Response::text(
                404,
                format!("no app serves host {host:?} here\n"),
            ));
        };
        // A handoff from another datacenter is served here whatever the placement says: a
        // handed-off request is never handed off again. Handoff headers that do not verify are
        // refused, so no client can pose as a datacenter.
        let handed_off = auth::claims_handoff(&req);
        if handed_off {
            let verdict = match &self.handoff {
                Some(h) => h.verify(&req).map_err(|e| e.to_string()),
                None => Err("this datacenter takes no handoffs".to_owned()),
            };
            if let Err(why) = verdict {
                count(&self.metrics, &app, |c| c.handoffs_rejected += 1);
                warn!(app = %app, peer = ?ctx.peer, reason = %why, "handoff rejected");
                return Reply::Now(Response::text(403, format!("handoff rejected: {why}\n")));
            }
            count(&self.metrics, &app, |c| c.handoffs_received += 1);
        }
        let target = if handed_off {
            Target::Local
        } else {
            self.target(&app)
        };
        let (runtime, metrics, worker) = (self.runtime.clone(), self.metrics.clone(), ctx.worker);
        let handoff = self.handoff.clone();
        // Where requests go when this worker is saturated: never for a handed-off request.
        let overflow = self
            .reachable_region()
            .filter(|p| !handed_off && p.overflow_in_flight > 0)
            .map(|p| (p.region, p.overflow_in_flight));
        let client = ctx.peer;
        let mut body = ctx.take_body();
        let debug = self.debug_headers;
        count(&metrics, &app, |c| c.requests += 1);
        // Only a request that may be served elsewhere, or a baseline for one, is timed.
        let timed = handed_off || overflow.is_some() || !matches!(target, Target::Local);
        Reply::Later(Box::pin(async move {
            let started = timed.then(std::time::Instant::now);
            let mut req = req;
            // A request that may go to another datacenter is signed over its whole body.
            let may_leave = overflow.is_some()
                || !matches!(
                    target,
                    Target::Local | Target::Holdout | Target::PeerDown(_)
                );
            if may_leave && let Some(streamed) = body.take() {
                match streamed.read_all(usize::MAX).await {
                    Ok((whole, _trailers)) => req.body = whole,
                    Err(e) => return Response::text(400, format!("{e}\n")),
                }
            }
            let mut placement = "local".to_owned();
            if matches!(target, Target::Holdout) {
                count(&metrics, &app, |c| c.holdouts += 1);
                placement = "local-holdout".to_owned();
            }
            if let (Target::PeerDown(dc), Some(handoff)) = (target, &handoff) {
                count(&metrics, &app, |c| c.handoffs_skipped += 1);
                placement = format!("local-fallback-from-{}", handoff.peer_name(dc));
            }
            let mut remote = None;
            let mut reason = None;
            if let (Target::Peer(dc), Some(handoff)) = (target, &handoff) {
                match hand_to(handoff, dc, &req, client, &metrics, &app).await {
                    Ok((resp, label)) | Err((Some(resp), label)) => {
                        remote = Some(resp);
                        placement = label;
                    }
                    Err((None, label)) => placement = label,
                }
            }
            // Sent on to the region: cold here (decided up front), or saturated (decided now,
            // with no await before the local run, so the count cannot change in between).
            let to_region = match (target, overflow) {
                (Target::Region(dc, why), _) => Some((dc, why)),
                (Target::Local | Target::PeerDown(_), Some((dc, at)))
                    if remote.is_none() && runtime.in_flight() >= at =>
                {
                    Some((dc, region::RegionReason::Saturated))
                }
                _ => None,
            };
            if let (Some((dc, why)), Some(handoff)) = (to_region, &handoff) {
                match hand_to(handoff, dc, &req, client, &metrics, &app).await {
                    Ok((resp, label)) => {
                        count(&metrics, &app, |c| match why {
                            region::RegionReason::Saturated => c.region_saturated += 1,
                            region::RegionReason::Cold => c.region_cold += 1,
                        });
                        reason = Some(why);
                        remote = Some(resp);
                        placement = label;
                    }
                    Err((Some(resp), label)) => {
                        remote = Some(resp);
                        placement = label;
                    }
                    Err((None, label)) => placement = label,
                }
            }
            let remote_served = remote.is_some();
            let mut resp = match remote {
                Some(r) => r,
                None => match runtime.handle_streaming(&app, req, body).await {
                    // Headers the platform owns say what the platform did; a guest's are dropped
                    // before anything (a peer's RTT estimate, the client) reads them.
                    Ok(mut r) => {
                        r.headers.retain(|(k, _)| !is_platform_header(k));
                        r
                    }
                    Err(e) => {
                        let id = new_request_id();
                        warn!(app = %app, request_id = %id, status = e.status(), error = %e, "request failed in the app");
                        count(&metrics, &app, |c| match e.status() {
                            504 => c.deadlines += 1,
                            503 => c.overloaded += 1,
                            500 => c.traps += 1,
                            _ => {}
                        });
                        e.response(&id)
                    }
                },
            };
            let took_us = started.map(|s| s.elapsed().as_micros() as u64);
            count(&metrics, &app, |c| {
                match resp.status {
                    200..=299 => c.responses_2xx += 1,
                    300..=399 => c.responses_3xx += 1,
                    400..=499 => c.responses_4xx += 1,
                    _ => c.responses_5xx += 1,
                }
                if let Some(us) = took_us {
                    if remote_served {
                        ewma(&mut c.remote_ewma_us, us as f64);
                    } else if matches!(target, Target::Holdout) {
                        ewma(&mut c.holdout_ewma_us, us as f64);
                    }
                }
            });
            resp.headers
                .retain(|(k, _)| k != "x-edge-placement" && k != "x-edge-placement-reason");
            resp.headers.push(("x-edge-placement".into(), placement));
            if let (Some(why), true) = (reason, remote_served) {
                resp.headers
                    .push(("x-edge-placement-reason".into(), why.as_str().into()));
            }
            if let (true, Some(us)) = (handed_off, took_us) {
                resp.headers
                    .push((SERVICE_TIME_HEADER.into(), us.to_string()));
            }
            if debug && !resp.headers.iter().any(|(k, _)| k == "x-edge-worker") {
                resp.headers
                    .push(("x-edge-worker".into(), worker.to_string()));
            }
            resp
        }))
    }
}
