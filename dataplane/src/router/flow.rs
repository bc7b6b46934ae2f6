//! The phases of a request after it is admitted and placed: run it elsewhere (a peer, the
//! region) or here, then finish (counters, the headers that say what the platform did).

use std::{net::SocketAddr, rc::Rc, time::Instant};

use tracing::warn;

use super::{
    AppCounters, WorkerMetrics,
    access_log::{AccessLog, AccessRecord},
    count, ewma, is_platform_header, new_request_id,
    region::RegionReason,
    target::Target,
};
use crate::{
    handoff::{Handoff, SERVICE_TIME_HEADER, is_idempotent},
    http::{Request, Response, request_body::RequestBody},
    wasm::{AppRuntime, HandleError},
};

/// Where a request goes, decided before it runs.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub target: Target,
    /// The region and the in-flight count past which a request here goes there instead.
    pub overflow: Option<(u32, u32)>,
    /// A handoff from a peer, served here.
    pub handed_off: bool,
}

impl Plan {
    /// Whether the request is timed: one that may be served elsewhere, or a baseline for one.
    fn timed(&self) -> bool {
        self.handed_off || self.overflow.is_some() || !matches!(self.target, Target::Local)
    }

    /// Whether the request may leave this datacenter (its body is then needed whole, to sign).
    fn may_leave(&self) -> bool {
        self.overflow.is_some() || matches!(self.target, Target::Peer(_) | Target::Region(..))
    }
}

/// One request on its way, with what it needs of the worker.
pub struct Run {
    pub runtime: Rc<AppRuntime>,
    pub metrics: WorkerMetrics,
    pub handoff: Option<Rc<Handoff>>,
    pub app: String,
    pub plan: Plan,
    pub client: Option<SocketAddr>,
    pub worker: u32,
    pub debug_headers: bool,
    /// The request's body, when it streams in.
    pub body: Option<RequestBody>,
    pub access_log: Option<AccessLog>,
}

/// What happened elsewhere: the response when a peer or the region served it (or must not be
/// run here), and how the placement is labelled.
struct Elsewhere {
    response: Option<Response>,
    placement: String,
    reason: Option<RegionReason>,
}

/// How a handoff went.
enum Handed {
    /// The peer answered.
    Served(Response),
    /// It failed after the request may have reached the peer, and the request is not
    /// idempotent: this 502 is the answer, never a second run here.
    Refused(Response),
    /// The peer is unreachable, or the request can safely run again: served here.
    Fallback,
}

impl Elsewhere {
    fn take(&mut self, handed: Handed, handoff: &Handoff, dc: u32) {
        let name = handoff.peer_name(dc);
        match handed {
            Handed::Served(resp) | Handed::Refused(resp) => {
                self.response = Some(resp);
                self.placement = format!("remote-{name}");
            }
            Handed::Fallback => self.placement = format!("local-fallback-from-{name}"),
        }
    }
}

impl Run {
    pub async fn execute(mut self, req: Request) -> Response {
        let started = Instant::now();
        let req = match self.whole_body_if_leaving(req).await {
            Ok(req) => req,
            Err(resp) => return resp,
        };
        let mut elsewhere = self.elsewhere(&req).await;
        // (A 502 for a request that may have run at the peer counts as served there.)
        let remote_served = elsewhere.response.is_some();
        let resp = match elsewhere.response.take() {
            Some(resp) => resp,
            None => self.here(req).await,
        };
        self.finish(resp, elsewhere, remote_served, started)
    }

    /// A request that may go to another datacenter is signed over its whole body: read it.
    async fn whole_body_if_leaving(&mut self, mut req: Request) -> Result<Request, Response> {
        if !self.plan.may_leave() {
            return Ok(req);
        }
        if let Some(streamed) = self.body.take() {
            match streamed.read_all(usize::MAX).await {
                Ok((whole, _trailers)) => req.body = whole,
                Err(e) => return Err(Response::text(400, format!("{e}\n"))),
            }
        }
        Ok(req)
    }

    /// Tries the peer or the region the plan names; None in `response` to serve here.
    async fn elsewhere(&self, req: &Request) -> Elsewhere {
        let mut out = Elsewhere {
            response: None,
            placement: "local".to_owned(),
            reason: None,
        };
        let Some(handoff) = &self.handoff else {
            return out;
        };
        match self.plan.target {
            Target::Holdout => {
                count(&self.metrics, &self.app, |c| c.holdouts += 1);
                out.placement = "local-holdout".to_owned();
            }
            Target::PeerDown(dc) => {
                count(&self.metrics, &self.app, |c| c.handoffs_skipped += 1);
                out.placement = format!("local-fallback-from-{}", handoff.peer_name(dc));
            }
            Target::Peer(dc) => out.take(self.hand_to(handoff, dc, req).await, handoff, dc),
            Target::Local | Target::Region(..) => {}
        }
        // Sent on to the region: cold here (decided up front), or saturated (decided now, with
        // no await before the local run, so the count cannot change in between).
        let to_region = match (self.plan.target, self.plan.overflow) {
            (Target::Region(dc, why), _) => Some((dc, why)),
            (Target::Local | Target::PeerDown(_), Some((dc, at)))
                if self.runtime.in_flight() >= at =>
            {
                Some((dc, RegionReason::Saturated))
            }
            _ => None,
        };
        if out.response.is_none()
            && let Some((dc, why)) = to_region
        {
            let handed = self.hand_to(handoff, dc, req).await;
            if matches!(handed, Handed::Served(_)) {
                out.reason = Some(why);
                count(&self.metrics, &self.app, |c| match why {
                    RegionReason::Saturated => c.region_saturated += 1,
                    RegionReason::Cold => c.region_cold += 1,
                });
            }
            out.take(handed, handoff, dc);
        }
        out
    }

    /// Hands the request to datacenter `dc`.
    async fn hand_to(&self, handoff: &Handoff, dc: u32, req: &Request) -> Handed {
        let name = handoff.peer_name(dc);
        let client = self.client.map(|c| c.to_string()).unwrap_or_default();
        match handoff.forward(dc, req.clone(), &client).await {
            Ok(resp) => {
                count(&self.metrics, &self.app, |c| c.handed_off += 1);
                Handed::Served(resp)
            }
            Err(e) if e.may_have_reached_peer() && !is_idempotent(&req.method) => {
                count(&self.metrics, &self.app, |c| c.handoff_failures += 1);
                let id = new_request_id();
                warn!(app = %self.app, peer = %name, request_id = %id, error = %e, "handoff failed; not retried");
                Handed::Refused(Response::error(
                    502,
                    "the datacenter serving this request failed; a request that is not \
                     idempotent is not retried",
                    &id,
                ))
            }
            Err(e) => {
                count(&self.metrics, &self.app, |c| c.handoff_failures += 1);
                warn!(app = %self.app, peer = %name, error = %e, "handoff failed; serving locally");
                Handed::Fallback
            }
        }
    }

    /// Runs the app here. Headers the platform owns say what the platform did: a guest's are
    /// dropped before anything (a peer's RTT estimate, the client) reads them.
    async fn here(&mut self, req: Request) -> Response {
        let body = self.body.take();
        match self
            .runtime
            .clone()
            .handle_streaming(&self.app, req, body)
            .await
        {
            Ok(mut resp) => {
                resp.headers.retain(|(k, _)| !is_platform_header(k));
                resp
            }
            Err(e) => self.failed(e),
        }
    }

    fn failed(&self, e: HandleError) -> Response {
        let id = new_request_id();
        warn!(app = %self.app, request_id = %id, status = e.status(), error = %e, "request failed in the app");
        count(&self.metrics, &self.app, |c| match e.status() {
            504 => c.deadlines += 1,
            503 => c.overloaded += 1,
            500 => c.traps += 1,
            _ => {}
        });
        e.response(&id)
    }

    /// Counts the response, and adds the headers that say where it ran and why.
    fn finish(
        &self,
        resp: Response,
        elsewhere: Elsewhere,
        remote_served: bool,
        started: Instant,
    ) -> Response {
        let took_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let outcome = Outcome {
            placement: elsewhere.placement,
            reason: elsewhere.reason.filter(|_| remote_served),
            remote_served,
            took_us: self.plan.timed().then_some(took_us),
        };
        count(&self.metrics, &self.app, |c| {
            tally(c, resp.status, &outcome, &self.plan);
            match c.latency.get_mut(&outcome.placement) {
                Some(h) => h.record(took_us),
                None => c
                    .latency
                    .entry(outcome.placement.clone())
                    .or_default()
                    .record(took_us),
            }
        });
        if let Some(log) = &self.access_log {
            log.record(AccessRecord {
                app: &self.app,
                target: &outcome.placement,
                reason: outcome.reason.map(|r| r.as_str()),
                status: resp.status,
                bytes: resp.body_length(),
                duration_us: took_us,
                worker: self.worker,
            });
        }
        let worker = self.debug_headers.then_some(self.worker);
        label(resp, outcome, &self.plan, worker)
    }
}

/// How a request that has its response went.
struct Outcome {
    /// `local`, `local-holdout`, `local-fallback-from-<peer>`, `remote-<peer>`.
    placement: String,
    /// Why the region served it, when it did.
    reason: Option<RegionReason>,
    remote_served: bool,
    /// Whole-request time, for a request that was timed.
    took_us: Option<u64>,
}

/// The app's counters for one response: its status class, and the moving averages that compare
/// a placement elsewhere with its holdout baseline.
fn tally(c: &mut AppCounters, status: u16, outcome: &Outcome, plan: &Plan) {
    count_status(c, status);
    let holdout = matches!(plan.target, Target::Holdout);
    match (outcome.took_us, outcome.remote_served, holdout) {
        (Some(us), true, _) => ewma(&mut c.remote_ewma_us, us as f64),
        (Some(us), false, true) => ewma(&mut c.holdout_ewma_us, us as f64),
        _ => {}
    }
}

/// The headers that say what the platform did, over any a peer set: where the request ran and
/// why, the serving time a peer's handoff asks for, and (`worker`, debugging) which worker.
fn label(mut resp: Response, outcome: Outcome, plan: &Plan, worker: Option<u32>) -> Response {
    resp.headers
        .retain(|(k, _)| k != "x-edge-placement" && k != "x-edge-placement-reason");
    resp.headers
        .push(("x-edge-placement".into(), outcome.placement));
    if let Some(why) = outcome.reason {
        resp.headers
            .push(("x-edge-placement-reason".into(), why.as_str().into()));
    }
    if let (true, Some(us)) = (plan.handed_off, outcome.took_us) {
        resp.headers
            .push((SERVICE_TIME_HEADER.into(), us.to_string()));
    }
    if let Some(worker) = worker
        && !resp.headers.iter().any(|(k, _)| k == "x-edge-worker")
    {
        resp.headers
            .push(("x-edge-worker".into(), worker.to_string()));
    }
    resp
}

fn count_status(c: &mut AppCounters, status: u16) {
    match status {
        200..=299 => c.responses_2xx += 1,
        300..=399 => c.responses_3xx += 1,
        400..=499 => c.responses_4xx += 1,
        _ => c.responses_5xx += 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(target: Target, handed_off: bool) -> Plan {
        Plan {
            target,
            overflow: None,
            handed_off,
        }
    }

    fn outcome(placement: &str, remote_served: bool, took_us: Option<u64>) -> Outcome {
        Outcome {
            placement: placement.into(),
            reason: remote_served.then_some(RegionReason::Saturated),
            remote_served,
            took_us,
        }
    }

    #[test]
    fn only_requests_that_may_leave_are_timed_and_read_whole() {
        assert!(!plan(Target::Local, false).timed());
        assert!(
            plan(Target::Local, true).timed(),
            "a handoff reports its serving time"
        );
        assert!(
            plan(Target::Holdout, false).timed(),
            "the holdout is the baseline"
        );
        assert!(!plan(Target::Holdout, false).may_leave());
        assert!(plan(Target::Peer(2), false).may_leave());
        let overflowing = Plan {
            overflow: Some((3, 10)),
            ..plan(Target::Local, false)
        };
        assert!(overflowing.timed() && overflowing.may_leave());
    }

    #[test]
    fn the_platform_labels_replace_a_peers_and_say_where_and_why() {
        let peer_said = Response::text(200, "x")
            .header("x-edge-placement", "forged")
            .header("x-edge-worker", "7");
        let resp = label(
            peer_said,
            outcome("remote-dc2", true, Some(40)),
            &plan(Target::Peer(2), false),
            Some(1),
        );
        let get = |name: &str| -> Vec<&str> {
            resp.headers
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .collect()
        };
        assert_eq!(get("x-edge-placement"), ["remote-dc2"]);
        assert_eq!(get("x-edge-placement-reason"), ["saturated"]);
        assert_eq!(
            get("x-edge-worker"),
            ["7"],
            "the worker that served it says so"
        );
        assert!(
            get(SERVICE_TIME_HEADER).is_empty(),
            "not a handoff served here"
        );

        let served_for_a_peer = label(
            Response::text(200, "x"),
            outcome("local", false, Some(55)),
            &plan(Target::Local, true),
            None,
        );
        assert!(
            served_for_a_peer
                .headers
                .contains(&(SERVICE_TIME_HEADER.to_owned(), "55".to_owned()))
        );
    }

    #[test]
    fn remote_and_holdout_times_feed_their_own_averages() {
        let mut c = AppCounters::default();
        tally(
            &mut c,
            200,
            &outcome("remote-dc2", true, Some(100)),
            &plan(Target::Peer(2), false),
        );
        tally(
            &mut c,
            503,
            &outcome("local-holdout", false, Some(300)),
            &plan(Target::Holdout, false),
        );
        tally(
            &mut c,
            404,
            &outcome("local", false, None),
            &plan(Target::Local, false),
        );
        assert_eq!(
            (c.responses_2xx, c.responses_4xx, c.responses_5xx),
            (1, 1, 1)
        );
        assert_eq!((c.remote_ewma_us, c.holdout_ewma_us), (100.0, 300.0));
    }
}
