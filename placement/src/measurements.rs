//! What datacenters measure for each other's placement engines, published on the fleet's
//! stream, and how an engine reads a peer's latest figures: when they are fresh, not yet
//! there, or silent (then the peer is asked).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a datacenter measured, for its peers' placement engines (instead of probing it on
/// demand).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Measurements {
    pub datacenter: String,
    pub at_ms: u64,
    /// RTT to each peer (us), by peer name.
    pub peers_us: BTreeMap<String, u64>,
    /// RTT to each backend the fleet's apps may call (`host:port` -> us), from here.
    pub backends_us: BTreeMap<String, u64>,
    /// Time to an HTTP `HEAD /`'s response head for each `hostname` hint (`name:port` as the
    /// hint gives it -> us), from here.
    #[serde(default)]
    pub backends_http_us: BTreeMap<String, u64>,
    /// Requests in flight over all workers.
    pub in_flight: u64,
    /// Requests per app since the last measurement.
    pub popularity: BTreeMap<String, u64>,
}

/// The latest measurements of each peer (by name), read from the stream by the agent and used
/// by the placement engine instead of probing the peer on demand.
pub type PeerMeasurements = std::sync::Arc<std::sync::Mutex<BTreeMap<String, Measurements>>>;

/// Measurements older than this are not used (the peer stopped publishing; ask it instead).
pub const MEASUREMENTS_MAX_AGE_MS: u64 = 10_000;

/// What a peer's latest measurements say of one backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Streamed {
    /// Its time to the backend (us), from fresh measurements.
    Fresh(u64),
    /// It publishes, but had not measured this backend yet (an app that calls it arrived
    /// since its last publication).
    NotYet,
    /// No fresh measurements from it: ask it.
    Silent,
}

/// `peer`'s time to `backend` (us) from its latest measurements, if they are fresh at
/// `now_ms`: its TCP connect RTT, or with `http` its HTTP probe of a `hostname` hint.
pub fn peer_backend_us(
    view: &BTreeMap<String, Measurements>,
    peer: &str,
    backend: &str,
    http: bool,
    now_ms: u64,
) -> Streamed {
    let Some(m) = view.get(peer) else {
        return Streamed::Silent;
    };
    // Either way: a peer's clock ahead (or a peer stamping u64::MAX) must not make its figures
    // fresh for ever.
    if now_ms.abs_diff(m.at_ms) > MEASUREMENTS_MAX_AGE_MS {
        return Streamed::Silent;
    }
    let table = if http {
        &m.backends_http_us
    } else {
        &m.backends_us
    };
    table
        .get(backend)
        .map_or(Streamed::NotYet, |us| Streamed::Fresh(*us))
}

/// Whether to ask a peer that publishes but lacks a backend's figure, `waited` after the engine
/// first wanted it: not before `grace` (a few of its publications), so an app deployed
/// fleet-wide is measured once, by its peers, rather than asked of each.
pub fn ask_after_waiting(
    figure: Streamed,
    waited: std::time::Duration,
    grace: std::time::Duration,
) -> bool {
    match figure {
        Streamed::Fresh(_) => false,
        Streamed::NotYet => waited >= grace,
        Streamed::Silent => true,
    }
}

/// What a datacenter measures for its peers: `ip:port` backends (`allowed_backends`, `host`
/// hints) by TCP connect, and `hostname` hints (as `name:port`, port 80 unless given) over HTTP.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Targets {
    pub connect: Vec<String>,
    pub http: Vec<String>,
}
