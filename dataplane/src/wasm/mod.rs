//! The wasm runtime: each app is a `wasi:http/proxy` component (what `wasmtime serve` runs),
//! compiled once and cached in memory and on disk, pre-instantiated, and instantiated fresh for
//! every request from a pooling allocator (or, per app, reused for up to N requests).

mod cache;
mod changes;
mod engine;
mod error;
mod guest;
mod held;
mod host;
mod incoming;
mod observe;
pub mod outbound;
mod prepare_ahead;
mod prepared;
mod runtime;

use std::{path::PathBuf, time::Duration};

pub use cache::{CacheBudget, CodeCache, Residency, ResidencySnapshot};
pub use changes::AppChanges;
pub use engine::{EngineConfig, EpochTicker, build_engine, wasmtime_config};
pub use error::HandleError;
pub use observe::{DestinationStats, Observations};
pub use prepared::{Candidate, PreparedCounters, next_to_prepare};
pub use runtime::AppRuntime;

/// What the runtime needs to know about one app.
#[derive(Clone, Debug, PartialEq)]
pub struct AppSpec {
    pub name: String,
    pub component: PathBuf,
    /// The component's content hash (sha256, hex), which names its version; empty when the
    /// caller did not compute it (a reload then compares paths only).
    pub digest: String,
    /// Environment variables the guest sees (wasi:cli/environment).
    pub env: Vec<(String, String)>,
    /// `host:port` authorities the app may call; empty means none.
    pub allowed_backends: Vec<String>,
    pub limits: AppLimits,
    /// The split app this component is a function (or the entry) of: its calls to
    /// `http://<function>.fn.internal/` go to that app's functions.
    pub split_app: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppLimits {
    /// CPU time a request may use before it is interrupted (epoch deadline).
    #[serde(with = "humantime_serde")]
    pub cpu_deadline: Duration,
    /// Wall-clock time for the whole request, subrequests included.
    #[serde(with = "humantime_serde")]
    pub wall_deadline: Duration,
    /// Linear memory per instance.
    pub max_memory_bytes: usize,
    /// The response body the guest may write. Responses are buffered before they are sent, so
    /// without a bound one request could take the worker's memory.
    pub max_response_bytes: usize,
    /// Reuse a warm instance for up to this many requests (1: a fresh instance per request).
    pub instance_reuse: u32,
}

impl Default for AppLimits {
    fn default() -> Self {
        Self {
            cpu_deadline: Duration::from_millis(100),
            wall_deadline: Duration::from_secs(30),
            max_memory_bytes: 64 << 20,
            max_response_bytes: 8 << 20,
            instance_reuse: 1,
        }
    }
}
