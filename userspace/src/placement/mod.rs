//! The placement engine: once a second, for each app in `smart` mode, estimate how long a
//! request takes here and at each peer datacenter, and write the best into PLACEMENT when it
//! beats running here by the margin.
//!
//! The latency goal's estimate at a candidate is the handoff RTT (zero here) plus, for each
//! destination the app calls, subrequests per request x their latency from that candidate.
//! Latency here is what the workers measured. Latency from a peer is derived: this
//! datacenter's subrequest latency to a destination spans k of its RTTs to it (k ~ 2 for a
//! fresh connection per subrequest), so from the peer it is k x the peer's RTT, which the peer
//! measures on request (a signed probe on its worker port). The RTT to a peer is the one measured
//! on the handoff connections (workers time every handoff, less the peer's serving time) while
//! there is handoff traffic, else the last probe's (`measure`: every peer is probed each tick on
//! a thread of its own; a peer that stops answering is marked down, workers stop handing off to
//! it and apps placed there come back here, until probes see it back). Entries pinned by hand are
//! left alone. What to do with the figures is decided by pure functions (`decide`).

pub mod measure;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use edgeplane_abi::{Placement, placement_flags, placement_kind};
use edgeplane_dataplane::{
    handoff::{HandoffConfig, Peer},
    lock,
    probe::{self, ProbeKind},
    router::{AppCounters, WorkerMetrics},
    wasm::Observations,
};
use edgeplane_placement::{
    AppStatus, EngineApps, EngineConfig, Goal, PlacementStatus, Verdict,
    decide::{self, Decision, Facts, Next},
    estimate::{self, Destination, Estimates, Observed},
    measurements::{self, PeerMeasurements},
};
use tracing::{info, warn};

use crate::PinnedMaps;

pub struct Engine {
    pub cfg: EngineConfig,
    pub handoff: HandoffConfig,
    pub maps: PinnedMaps,
    pub apps: EngineApps,
    pub observations: Vec<Observations>,
    pub metrics: Vec<WorkerMetrics>,
    /// Peers' latest measurements from the fleet's stream (None: not on a fleet): used
    /// instead of asking a peer to probe a backend.
    pub fleet: Option<StreamedMeasurements>,
    /// Probes asked of peers on demand (what the stream saves).
    pub peer_asks: Arc<std::sync::atomic::AtomicU64>,
}

/// The fleet's stream of measurements, as the engine reads it.
pub struct StreamedMeasurements {
    /// Each peer's latest.
    pub view: PeerMeasurements,
    /// How long to wait for a peer that publishes to measure a backend new to it (a few of
    /// its publications) before asking it.
    pub grace: Duration,
    /// Since when each (peer, backend, over HTTP) figure has been wanted and not published.
    waiting: Mutex<HashMap<(u32, String, bool), Instant>>,
}

impl StreamedMeasurements {
    pub fn new(view: PeerMeasurements, publish_every: Duration) -> Self {
        Self {
            view,
            grace: publish_every.saturating_mul(3),
            waiting: Mutex::default(),
        }
    }
}

impl Engine {
    /// Runs the engine on its own thread; returns the live status table.
    pub fn spawn(mut self) -> anyhow::Result<PlacementStatus> {
        let status = PlacementStatus::default();
        for app in lock(&self.apps).iter() {
            lock(&status).insert(app.name.clone(), AppStatus::new(Verdict::Analyzing));
        }
        let shared = status.clone();
        measure::spawn_peer_prober(self.handoff.clone(), self.cfg.tick)?;
        std::thread::Builder::new()
            .name("placement".into())
            .spawn(move || {
                let mut reverted = HashMap::new();
                let mut region_seen: HashMap<String, (u64, u64)> = HashMap::new();
                loop {
                    std::thread::sleep(self.cfg.tick);
                    let apps = lock(&self.apps).clone();
                    // Apps a reload removed leave the status table.
                    lock(&shared).retain(|name, _| apps.iter().any(|a| &a.name == name));
                    for app in apps {
                        let name = app.name.clone();
                        let decided = match app.goal {
                            Some(goal) => self.decide(&name, app.id, goal, &mut reverted),
                            None => self.report(app.id),
                        };
                        let mut s = match decided {
                            Ok(verdict) => AppStatus::new(verdict),
                            Err(e) => {
                                warn!(app = %name, error = %format!("{e:#}"), "placement");
                                continue;
                            }
                        };
                        // Requests sent on to the region since the last tick show beside it.
                        let now = self.region_forwards(&name);
                        let before = region_seen.insert(name.clone(), now).unwrap_or_default();
                        s.region_saturated = now.0 > before.0;
                        s.region_cold = now.1 > before.1;
                        let mut table = lock(&shared);
                        if table.get(&name) != Some(&s) {
                            info!(app = %name, status = %s, "placement");
                        }
                        table.insert(name, s);
                    }
                }
            })?;
        Ok(status)
    }

    /// Where an app the engine does not place runs: here, placed (by config or `edgectl
    /// placement set`), or pinned.
    fn report(&self, id: u32) -> anyhow::Result<Verdict> {
        let current = self.maps.placement(id)?;
        Ok(if current.flags & placement_flags::PINNED != 0 {
            Verdict::Pinned
        } else {
            match current.kind {
                placement_kind::DATACENTER => Verdict::Placed(self.dc_name(current.datacenter)),
                placement_kind::REGION => Verdict::Placed("region".into()),
                _ => Verdict::Local,
            }
        })
    }

    fn dc_name(&self, id: u32) -> String {
        self.handoff
            .peers
            .iter()
            .find(|p| p.id == id)
            .map_or_else(|| id.to_string(), |p| p.name.clone())
    }

    /// Calls `f` with each worker's counters of `app`.
    fn each_worker(&self, app: &str, mut f: impl FnMut(&AppCounters)) {
        for m in &self.metrics {
            if let Some(c) = lock(m).get(app) {
                f(c);
            }
        }
    }

    /// Two of `app`'s counters, each summed over the workers.
    fn sum_pair(&self, app: &str, pick: impl Fn(&AppCounters) -> (u64, u64)) -> (u64, u64) {
        let mut total = (0, 0);
        self.each_worker(app, |c| {
            let (a, b) = pick(c);
            total.0 += a;
            total.1 += b;
        });
        total
    }

    /// (saturated, cold) requests sent on to the region.
    fn region_forwards(&self, app: &str) -> (u64, u64) {
        self.sum_pair(app, |c| (c.region_saturated, c.region_cold))
    }

    fn decide(
        &mut self,
        app: &str,
        id: u32,
        goal: Goal,
        reverted: &mut HashMap<String, Instant>,
    ) -> anyhow::Result<Verdict> {
        let current = self.maps.placement(id)?;
        let (remote_us, holdout_us) = self.measured(app);
        let (requests, handed_off) = self.requests(app);
        let facts = Facts {
            current,
            cooling_down: reverted
                .get(app)
                .is_some_and(|until| Instant::now() < *until),
            placed_at_down_peer: (current.kind == placement_kind::DATACENTER
                && self.handoff.health.is_down(current.datacenter))
            .then(|| self.dc_name(current.datacenter)),
            hinted: matches!(goal, Goal::NearBackend { .. }),
            remote_us,
            holdout_us,
            requests,
            min_requests: self.cfg.min_requests,
        };
        let decision = match decide::first_look(&facts) {
            // The facts' only cool-down is a placement measured slower than its holdout.
            Next::Decided(d) if d.cool_down => {
                warn!(
                    app,
                    remote_us, holdout_us, "placed app slower than its holdout: reverting"
                );
                d
            }
            Next::Decided(d) => d,
            Next::PlaceNearBackend => match &goal {
                Goal::NearBackend { backend, http_host } => {
                    self.place_near(backend, http_host.as_deref(), current)?
                }
                _ => unreachable!("only a hinted app is placed near its backend"),
            },
            Next::Estimate => {
                let served_here = requests.saturating_sub(handed_off).max(1) as f64;
                let dests = self.destinations(app, served_here);
                let here_us = estimate::here_us(&dests);
                let estimates = self.best_peer(app, &dests);
                let min_saving_us = goal.min_saving_us();
                decide::hold_while_unanswered(current, &estimates.unanswered).unwrap_or_else(|| {
                    decide::choose(
                        current,
                        here_us,
                        estimates.best(),
                        self.cfg.margin,
                        min_saving_us,
                        true,
                    )
                })
            }
        };
        if decision.cool_down {
            reverted.insert(app.to_owned(), Instant::now() + self.cfg.cooldown);
        }
        self.write(id, current, &decision)?;
        Ok(decision.verdict)
    }

    /// Writes a decision's entry when it differs from the map's.
    fn write(&self, id: u32, current: Placement, decision: &Decision) -> anyhow::Result<()> {
        if let Some(p) = decision.placement
            && p != current
        {
            self.maps.set_placement(id, p)?;
        }
        Ok(())
    }

    /// The peer with the fastest estimate for `app`'s destinations, probing them.
    fn best_peer(&self, app: &str, dests: &[Destination]) -> Estimates {
        let mut out = Estimates::default();
        if dests.is_empty() {
            return out;
        }
        let peers = self.up_peers(&mut out);
        if peers.is_empty() {
            return out;
        }
        let trips = match round_trips(dests) {
            Ok(trips) => trips,
            Err(e) => {
                warn!(app, error = %format!("{e:#}"), "probing destinations from here");
                return out;
            }
        };
        for peer in peers {
            let estimate = self.estimate_at(&peer, dests, &trips);
            add_answer(&mut out, &peer, estimate, "peer estimate");
        }
        out
    }

    /// Places a hinted app at the datacenter with the shortest RTT to its backend (here, unless
    /// a peer beats here by the margin).
    fn place_near(
        &self,
        backend: &str,
        http_host: Option<&str>,
        current: Placement,
    ) -> anyhow::Result<Decision> {
        let addr = std::net::ToSocketAddrs::to_socket_addrs(backend)
            .with_context(|| format!("resolving {backend}"))?
            .next()
            .with_context(|| format!("{backend} resolves to no address"))?;
        let kind = http_host.map_or(ProbeKind::Connect, |h| ProbeKind::Http(h.to_owned()));
        let here = probe_time(&addr, &kind)?.as_micros() as f64;
        let mut estimates = Estimates::default();
        for peer in self.up_peers(&mut estimates) {
            // The stream keys an HTTP probe by the hint as written (its name and port).
            let key = match &kind {
                ProbeKind::Connect => addr.to_string(),
                ProbeKind::Http(_) => backend.to_owned(),
            };
            let probe = self.peer_backend_us(&peer, &key, &addr.to_string(), &kind);
            add_answer(
                &mut estimates,
                &peer,
                probe.map(|us| us as f64),
                "peer probe",
            );
        }
        Ok(
            decide::hold_while_unanswered(current, &estimates.unanswered).unwrap_or_else(|| {
                decide::choose(current, here, estimates.best(), self.cfg.margin, 0.0, false)
            }),
        )
    }

    /// (handed-off, held-out) moving averages of request time, the slowest worker's.
    fn measured(&self, app: &str) -> (f64, f64) {
        let mut out = (0.0f64, 0.0f64);
        self.each_worker(app, |c| {
            out.0 = out.0.max(c.remote_ewma_us);
            out.1 = out.1.max(c.holdout_ewma_us);
        });
        out
    }

    /// (requests, of which handed off).
    fn requests(&self, app: &str) -> (u64, u64) {
        self.sum_pair(app, |c| (c.requests, c.handed_off))
    }

    /// `app`'s destinations as every worker observed them; calls to sibling functions are left
    /// out (they follow those functions' own placements).
    fn destinations(&self, app: &str, served_here: f64) -> Vec<Destination> {
        let observed = self.observations.iter().flat_map(|o| {
            o.snapshot()
                .into_iter()
                .filter(|d| d.app == app)
                .filter(|d| {
                    let host = d
                        .destination
                        .rsplit_once(':')
                        .map_or(&*d.destination, |(h, _)| h);
                    !edgeplane_dataplane::functions::is_internal(host)
                })
                .map(|d| Observed {
                    per_request_us: d.per_request_us(),
                    count: d.count,
                    destination: d.destination,
                })
        });
        estimate::destinations(observed, served_here)
    }

    /// Peers not marked down; those marked down (perhaps since this tick's facts were taken)
    /// go into `estimates` as unanswered.
    fn up_peers(&self, estimates: &mut Estimates) -> Vec<Peer> {
        let health = &self.handoff.health;
        let (down, up): (Vec<&Peer>, Vec<&Peer>) = self
            .handoff
            .peers
            .iter()
            .partition(|p| health.is_down(p.id));
        estimates
            .unanswered
            .extend(down.into_iter().map(|p| (p.id, p.name.clone())));
        up.into_iter().cloned().collect()
    }

    /// `peer`'s time to `dest` (`ip:port`; us): from its latest measurements on the fleet's
    /// stream when they are fresh (where an HTTP probe is keyed by the hint as written,
    /// `stream_key`), else asked of it now (a signed probe request).
    fn peer_backend_us(
        &self,
        peer: &Peer,
        stream_key: &str,
        dest: &str,
        kind: &ProbeKind,
    ) -> anyhow::Result<u64> {
        let http = matches!(kind, ProbeKind::Http(_));
        if let Some(fleet) = &self.fleet {
            let figure = measurements::peer_backend_us(
                &lock(&fleet.view),
                &peer.name,
                stream_key,
                http,
                measure::unix_ms(),
            );
            if let measurements::Streamed::Fresh(us) = figure {
                lock(&fleet.waiting).remove(&(peer.id, stream_key.to_owned(), http));
                return Ok(us);
            }
            let waited = {
                let mut waiting = lock(&fleet.waiting);
                // Keys come from this datacenter's own apps and leave when answered; those of
                // apps since removed leave once long past the grace.
                if waiting.len() >= 1024 {
                    let stale = fleet.grace.saturating_mul(10);
                    waiting.retain(|_, since| since.elapsed() < stale);
                }
                waiting
                    .entry((peer.id, stream_key.to_owned(), http))
                    .or_insert_with(Instant::now)
                    .elapsed()
            };
            if !measurements::ask_after_waiting(figure, waited, fleet.grace) {
                anyhow::bail!(
                    "{} has not published its time to {stream_key} yet (waited {waited:?})",
                    peer.name
                );
            }
        }
        self.peer_asks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        measure::ask_peer(&self.handoff, peer, dest, kind)
    }

    /// Estimated request time at `peer`, in microseconds; `round_trips[i]`: RTTs per
    /// subrequest to `dests[i]` (see `round_trips`).
    fn estimate_at(
        &self,
        peer: &Peer,
        dests: &[Destination],
        round_trips: &[f64],
    ) -> anyhow::Result<f64> {
        // Every peer still up was probed this tick, so it has an RTT.
        let rtt = self
            .handoff
            .health
            .rtt(peer.id, HANDOFF_RTT_MAX_AGE)
            .with_context(|| format!("no RTT to {} yet", peer.name))?;
        let mut peer_rtt_us = Vec::with_capacity(dests.len());
        for d in dests {
            peer_rtt_us
                .push(self.peer_backend_us(peer, &d.name, &d.name, &ProbeKind::Connect)? as f64);
        }
        Ok(estimate::at_peer_us(
            rtt.as_micros() as f64,
            dests,
            round_trips,
            &peer_rtt_us,
        ))
    }
}

/// A peer's answer into this tick's estimates; one that failed is logged and counted unanswered.
fn add_answer(estimates: &mut Estimates, peer: &Peer, answer: anyhow::Result<f64>, what: &str) {
    let answer = answer
        .inspect_err(|e| warn!(peer = %peer.name, error = %format!("{e:#}"), "{what}"))
        .ok();
    estimates.add(peer.id, &peer.name, answer);
}

/// Handoff-connection RTTs older than this give way to the engine's own probes.
const HANDOFF_RTT_MAX_AGE: Duration = Duration::from_secs(30);

/// How many of this datacenter's RTTs to each destination one subrequest spans (~2 for a fresh
/// connection per subrequest): its measured latency over a probed RTT, at least 1. The same for
/// every candidate, so measured once per decision.
fn round_trips(dests: &[Destination]) -> anyhow::Result<Vec<f64>> {
    dests
        .iter()
        .map(|d| {
            let addr: SocketAddr = d
                .name
                .parse()
                .with_context(|| format!("destination {:?} is not ip:port", d.name))?;
            let here_rtt = probe_time(&addr, &ProbeKind::Connect)?.as_micros() as f64;
            Ok(estimate::round_trips(d.latency_us, here_rtt))
        })
        .collect()
}

/// The fastest of three probes from here (for `Connect`: one RTT).
fn probe_time(addr: &SocketAddr, kind: &ProbeKind) -> anyhow::Result<Duration> {
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let took = probe::measure_blocking(*addr, kind, Duration::from_secs(2))
            .with_context(|| format!("probing {addr}"))?;
        best = best.min(took);
    }
    Ok(best)
}
