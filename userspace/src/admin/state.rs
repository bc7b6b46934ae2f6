//! What the admin endpoint reads: handles on the maps, the workers' tables and the daemon.

use std::sync::Arc;

use edgeplane_dataplane::{
    http::Response,
    router::WorkerMetrics,
    wasm::{Observations, Residency},
    worker::{WorkerCounters, supervisor::SupervisorStats},
};

use crate::PinnedMaps;

pub struct AdminState {
    pub maps: PinnedMaps,
    pub metrics: Vec<WorkerMetrics>,
    pub observations: Vec<Observations>,
    pub residency: Vec<Residency>,
    /// The placement engine's status per app, when it runs.
    pub placement: Option<edgeplane_placement::PlacementStatus>,
    /// Worker restarts, and how many workers are down now.
    pub workers: Arc<SupervisorStats>,
    /// Each worker's counters of rare events.
    pub worker_counters: Vec<Arc<WorkerCounters>>,
    /// Set once edged is shutting down.
    pub stopping: Arc<std::sync::atomic::AtomicBool>,
    /// What the workers serve (None: no workers).
    pub live: Option<Arc<edgeplane_dataplane::live::LivePublisher>>,
    /// Where `POST /reload` asks the daemon to reload (None: not offered).
    pub reload: Option<tokio::sync::mpsc::Sender<ReloadRequest>>,
    /// Where `POST /upgrade` asks the daemon to start its successor.
    pub upgrade: Option<tokio::sync::mpsc::Sender<UpgradeRequest>>,
    /// Access log lines dropped (None: no access log).
    pub access_log_dropped: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// Probes the placement engine asked of peers on demand.
    pub peer_asks: Arc<std::sync::atomic::AtomicU64>,
    /// Peers' latest measurements from the fleet's stream (None: not on a fleet).
    pub fleet_view: Option<edgeplane_placement::measurements::PeerMeasurements>,
}

/// An upgrade asked for over the admin endpoint, and where its outcome goes.
pub type UpgradeRequest = tokio::sync::oneshot::Sender<Result<crate::upgrade::Upgraded, String>>;

/// A reload asked for over the admin endpoint, and where its outcome goes.
pub type ReloadRequest = tokio::sync::oneshot::Sender<Result<crate::daemon::ReloadReport, String>>;

impl AdminState {
    /// The certificates the workers serve now (the current generation's), read. One that
    /// cannot be read is left out with a warning: rustls loaded it, so this is unlikely.
    pub fn certificates(&self) -> Vec<crate::certs::CertInfo> {
        let Some(live) = &self.live else {
            return Vec::new();
        };
        let Some(tls) = live.current().tls.clone() else {
            return Vec::new();
        };
        tls.certificates
            .iter()
            .filter_map(|c| {
                crate::certs::CertInfo::of(c)
                    .inspect_err(|e| tracing::warn!(names = ?c.names, error = %format!("{e:#}"), "a served certificate does not read"))
                    .ok()
            })
            .collect()
    }

    pub(super) fn health(&self) -> Response {
        use std::sync::atomic::Ordering::Relaxed;
        health(self.stopping.load(Relaxed), self.workers.down.load(Relaxed))
    }
}

/// `/healthz`: 200 while every worker serves, 503 with the reason otherwise.
pub(super) fn health(stopping: bool, workers_down: u64) -> Response {
    if stopping {
        return Response::text(503, "shutting down\n");
    }
    match workers_down {
        0 => Response::text(200, "ok\n"),
        n => Response::text(
            503,
            format!("degraded: {n} worker(s) down, being restarted\n"),
        ),
    }
}
