//! The measurements the placement engine decides on, gathered apart from its decisions: peer
//! health and RTT on a thread of their own (a peer that stops answering costs the engine's tick
//! nothing), and a peer's view of a destination (a signed probe request to its workers).

use std::{
    net::SocketAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use edgeplane_dataplane::{
    client::oneshot::{self, Once},
    handoff::{HandoffConfig, Peer, auth},
    http::Request,
    probe::{self, ProbeKind},
    router::PROBE_PATH,
};
use edgeplane_placement::measurements::Targets;
use tracing::{info, warn};

/// Probes every peer each `tick`, on its own thread, and records the result in the peers'
/// shared health (down after `down_after` failures in a row, up after `up_after` answers).
pub fn spawn_peer_prober(handoff: HandoffConfig, tick: Duration) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("peer-probes".into())
        .spawn(move || {
            loop {
                probe_peers(&handoff);
                std::thread::sleep(tick);
            }
        })
        .map(drop)
}

/// One round: each peer's RTT is the fastest of its probe addresses that answered.
pub fn probe_peers(handoff: &HandoffConfig) {
    let health = &handoff.health;
    for peer in &handoff.peers {
        match probe_peer(peer, handoff.connect_timeout) {
            Ok(rtt) => {
                if health.probe_answered(peer.id, rtt) {
                    info!(peer = %peer.name, rtt_us = rtt.as_micros() as u64, "peer answers probes again: up");
                }
            }
            Err(e) => {
                if health.failed(peer.id) {
                    warn!(peer = %peer.name, error = %e, "peer does not answer probes: down");
                }
            }
        }
    }
}

fn probe_peer(peer: &Peer, timeout: Duration) -> std::io::Result<Duration> {
    let mut best: Option<Duration> = None;
    let mut last_error = None;
    for addr in &peer.probe {
        match probe::measure_blocking(*addr, &ProbeKind::Connect, timeout) {
            Ok(rtt) => best = Some(best.map_or(rtt, |b| b.min(rtt))),
            Err(e) => last_error = Some(e),
        }
    }
    best.ok_or_else(|| last_error.unwrap_or_else(|| std::io::Error::other("no probe address")))
}

/// `peer`'s probe of `dest`, in microseconds: a signed request to its workers, which measure
/// from there with the same code this datacenter measures with. The first of its handoff
/// addresses that answers is asked.
pub fn ask_peer(
    handoff: &HandoffConfig,
    peer: &Peer,
    dest: &str,
    kind: &ProbeKind,
) -> anyhow::Result<u64> {
    let mut last = None;
    for addr in &peer.handoff {
        match ask_peer_at(handoff, peer, *addr, dest, kind) {
            Ok(us) => return Ok(us),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("peer {} has no handoff address", peer.name)))
}

fn ask_peer_at(
    handoff: &HandoffConfig,
    peer: &Peer,
    addr: SocketAddr,
    dest: &str,
    kind: &ProbeKind,
) -> anyhow::Result<u64> {
    let target = match kind {
        ProbeKind::Connect => format!("{PROBE_PATH}?dest={dest}"),
        ProbeKind::Http(host) => format!("{PROBE_PATH}?dest={dest}&http={host}"),
    };
    let mut req = Request {
        method: "GET".into(),
        target,
        minor_version: 1,
        headers: vec![("host".into(), b"edgeplane".to_vec())],
        body: Vec::new(),
        trailers: Vec::new(),
        takes_trailers: false,
        keep_alive: false,
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let keys = handoff.keys.current();
    let key = keys
        .signing(peer.id)
        .with_context(|| format!("no key shared with {}", peer.name))?;
    auth::sign(key, &mut req, handoff.self_id, "placement-engine", 1, now);
    let mut headers = Vec::with_capacity(req.headers.len());
    for (name, value) in &req.headers {
        headers.push((
            http::HeaderName::from_bytes(name.as_bytes())?,
            http::HeaderValue::from_bytes(value)?,
        ));
    }
    let once = Once {
        method: http::Method::GET,
        target: &req.target,
        headers,
        body: Default::default(),
        read_body: Some(1 << 16),
    };
    let tls = match &handoff.tls {
        Some(tls) => Some(tls.client_to(&peer.name)?),
        None => None,
    };
    let resp = oneshot::send_blocking_over(addr, tls.as_ref(), once, Duration::from_secs(5))
        .with_context(|| format!("asking {} at {addr} to probe {dest}", peer.name))?;
    if resp.status != http::StatusCode::OK {
        bail!(
            "{} at {addr}, probe of {dest}: {} {}",
            peer.name,
            resp.status,
            String::from_utf8_lossy(&resp.body)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&resp.body)?;
    v["probe_us"]
        .as_u64()
        .context("probe answer without probe_us")
}

/// The targets apps (their `[[apps]]` tables) call.
pub fn backends_of_tables<'a>(apps: impl IntoIterator<Item = &'a toml::Table>) -> Targets {
    let mut out = std::collections::BTreeSet::new();
    let mut http = std::collections::BTreeSet::new();
    let mut one = |t: &toml::Table| {
        if let Some(name) = t
            .get("placement")
            .and_then(toml::Value::as_table)
            .and_then(|p| p.get("hostname"))
            .and_then(toml::Value::as_str)
        {
            http.insert(if name.contains(':') {
                name.to_owned()
            } else {
                format!("{name}:80")
            });
        }
        if let Some(toml::Value::Array(list)) = t.get("allowed_backends") {
            out.extend(
                list.iter()
                    .filter_map(toml::Value::as_str)
                    .map(str::to_owned),
            );
        }
        if let Some(host) = t
            .get("placement")
            .and_then(toml::Value::as_table)
            .and_then(|p| p.get("host"))
            .and_then(toml::Value::as_str)
        {
            out.insert(host.to_owned());
        }
    };
    for app in apps {
        one(app);
        if let Some(toml::Value::Array(fs)) = app.get("functions") {
            fs.iter()
                .filter_map(toml::Value::as_table)
                .for_each(&mut one);
        }
    }
    Targets {
        connect: out.into_iter().collect(),
        http: http.into_iter().collect(),
    }
}

/// Milliseconds since the Unix epoch (0 before it; saturating far after).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
