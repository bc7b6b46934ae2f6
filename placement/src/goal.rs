//! What the engine places and how: each app's goal, and the engine's tuning.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

pub struct EngineConfig {
    pub tick: Duration,
    /// A move needs an estimate this much better than here (0.2: 20% faster).
    pub margin: f64,
    /// Requests an app needs before it is judged.
    pub min_requests: u64,
    /// After a revert, the app stays here this long before it may be placed again.
    pub cooldown: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(1),
            margin: 0.2,
            min_requests: 3,
            cooldown: Duration::from_secs(60),
        }
    }
}

/// One app as the engine sees it.
#[derive(Clone, Debug)]
pub struct EngineApp {
    pub name: String,
    pub id: u32,
    /// None: placed by config or by hand; the engine only reports where it runs.
    pub goal: Option<Goal>,
}

/// What the engine optimizes an app for.
#[derive(Clone, Debug, PartialEq)]
pub enum Goal {
    /// The fastest datacenter, when it beats here by the margin.
    Latency,
    /// Here, unless another datacenter saves at least `min_saving` per request and beats here
    /// by the margin: fewer handoffs, traffic and cross-datacenter dependencies, at some
    /// latency.
    LocalFirst { min_saving: Duration },
    /// Nearest to one backend (a `host` or `hostname` hint): placed by the time a probe to it
    /// takes from each datacenter (TCP connect for `host`; an HTTP `HEAD /` with this Host
    /// header for `hostname`), from the first tick, without waiting for traffic.
    NearBackend {
        backend: String,
        http_host: Option<String>,
    },
}

impl Goal {
    /// The saving a move must bring beyond the margin (us): local-first's minimum, else none.
    pub fn min_saving_us(&self) -> f64 {
        match self {
            Goal::Latency | Goal::NearBackend { .. } => 0.0,
            Goal::LocalFirst { min_saving } => min_saving.as_micros() as f64,
        }
    }
}

/// The apps the engine places; a reload replaces the list.
pub type EngineApps = Arc<Mutex<Vec<EngineApp>>>;
