//! A datacenter's measurements on the fleet's stream: every heartbeat it publishes its RTT to
//! each peer, to every backend the fleet's apps call, its load and its apps' requests, and takes
//! its peers' latest for the placement engine. On a connection and a task of its own, so a slow
//! or unreachable backend never holds a configuration change up.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use edgeplane_dataplane::{handoff::HandoffConfig, lock, probe::ProbeKind, router::WorkerMetrics};
use tracing::warn;

use super::{PeerMeasurements, Targets, client::FleetClient};
use crate::PinnedMaps;

pub struct Measurer {
    /// The fleet's NATS, on a connection of the measurer's own.
    pub control: crate::config::ControlConfig,
    pub datacenter: String,
    pub every: Duration,
    /// This datacenter's peers and their health.
    pub handoff: HandoffConfig,
    /// The workers' per-app counters (popularity).
    pub metrics: Vec<WorkerMetrics>,
    /// The maps (the workers' load).
    pub maps: PinnedMaps,
    /// What to probe (the agent updates it with what it applies).
    pub targets: Arc<Mutex<Targets>>,
    /// Where the peers' latest measurements go, for the placement engine.
    pub view: PeerMeasurements,
    /// Requests per app at the last measurement.
    pub requests_seen: BTreeMap<String, u64>,
}

impl Measurer {
    /// Runs forever: every `every`, one exchange; on a failure, a new connection.
    pub async fn run(mut self) {
        loop {
            if let Ok(client) = FleetClient::connect_as(&self.control, Duration::from_secs(2)).await
            {
                let mut tick = tokio::time::interval(self.every);
                loop {
                    tick.tick().await;
                    if let Err(e) = self.exchange(&client).await {
                        warn!(error = %format!("{e:#}"), "measurements not exchanged");
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Publishes what this datacenter measured, and takes its peers' latest.
    async fn exchange(&mut self, client: &FleetClient) -> anyhow::Result<()> {
        let handoff = &self.handoff;
        let mut m = super::Measurements {
            datacenter: self.datacenter.clone(),
            ..Default::default()
        };
        for peer in &handoff.peers {
            if let Some(rtt) = handoff.health.rtt(peer.id, Duration::from_secs(30)) {
                m.peers_us.insert(
                    peer.name.clone(),
                    u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX),
                );
            }
        }
        let targets = lock(&self.targets).clone();
        for backend in targets.connect {
            let Ok(addr) = backend.parse::<std::net::SocketAddr>() else {
                continue;
            };
            if let Some(us) = fastest_of_two(addr, ProbeKind::Connect).await {
                m.backends_us.insert(backend, us);
            }
        }
        for backend in targets.http {
            let Some(addr) = tokio::net::lookup_host(&backend)
                .await
                .ok()
                .and_then(|mut a| a.next())
            else {
                continue;
            };
            let host = backend
                .rsplit_once(':')
                .map_or(&*backend, |(h, _)| h)
                .to_owned();
            if let Some(us) = fastest_of_two(addr, ProbeKind::Http(host)).await {
                m.backends_http_us.insert(backend, us);
            }
        }
        let mut totals: BTreeMap<String, u64> = BTreeMap::new();
        for w in &self.metrics {
            for (app, c) in lock(w).iter() {
                *totals.entry(app.clone()).or_default() += c.requests;
            }
        }
        for (app, total) in &totals {
            let before = self.requests_seen.get(app).copied().unwrap_or(0);
            m.popularity
                .insert(app.clone(), total.saturating_sub(before));
        }
        self.requests_seen = totals;
        if let Ok(cfg) = self.maps.worker_config()
            && let Ok(loads) = self.maps.worker_loads(cfg.n_workers)
        {
            m.in_flight = loads.iter().map(|l| l.in_flight).sum();
        }
        m.at_ms = super::unix_ms();
        client.publish_measurements(&m).await?;
        for peer in &handoff.peers {
            if let Some(theirs) = client.latest_measurements(&peer.name).await?
                && theirs.datacenter == peer.name
            {
                lock(&self.view).insert(peer.name.clone(), theirs);
            }
        }
        Ok(())
    }
}

/// The fastest of two probes of `addr` (us): one slow handshake does not move an app.
async fn fastest_of_two(addr: std::net::SocketAddr, kind: ProbeKind) -> Option<u64> {
    let mut best: Option<Duration> = None;
    for _ in 0..2 {
        if let Ok(rtt) =
            edgeplane_dataplane::probe::measure(addr, &kind, Duration::from_secs(2)).await
        {
            best = Some(best.map_or(rtt, |b| b.min(rtt)));
        }
    }
    best.map(|b| u64::try_from(b.as_micros()).unwrap_or(u64::MAX))
}
