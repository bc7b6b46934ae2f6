//! edgeplane's test kit: the one way tests, benchmarks and the demo start what they need.
//!
//! - worlds: [`netns`] (namespaces and veths), [`plan`] (a topology as a file describes it),
//!   [`world`] (the namespaces, links and WAN delay a plan makes, [`wan`]), [`two_hosts`] (one
//!   client and one server with XDP), [`canonical`] (the multi-datacenter world with a backend,
//!   edged at each datacenter, optionally on NATS);
//! - edged's configuration, typed: [`config`] (its pins and cache private to the test, the
//!   apps as values), started by [`TwoHosts::start`];
//! - processes: [`process`] (a server logged to a file, its log's end quoted when it fails to
//!   start, stopped and reaped on drop), [`edged`] (a datacenter's edged from its spec),
//!   [`nats`] (nats-server, with mutual TLS from [`tls`]'s test CA), [`backend`];
//! - code: [`guest_apps`] (building `apps/`, also what `./x` runs), [`apps`] (each component,
//!   built once per process), [`wasm`] (runtimes as a worker builds them, with a warm code
//!   cache), [`binaries`] (edged and edgectl);
//! - reading what comes back: [`raw_http`] (a client's view of a response, parsed
//!   independently of the code under test), [`openmetrics`] (the reference parser);
//! - [`pins`]: a private pin directory per test; [`require_root`] and [`require_feature`] gate
//!   the tests that need them (under CI a test that cannot run fails).

pub mod apps;
pub mod backend;
pub mod binaries;
pub mod canonical;
pub mod config;
pub mod edged;
pub mod guest_apps;
pub mod nats;
pub mod netns;
pub mod openmetrics;
pub mod pins;
pub mod plan;
pub mod process;
pub mod raw_http;
pub mod tls;
pub mod two_hosts;
pub mod wan;
pub mod wasm;
pub mod world;

use std::path::PathBuf;

pub use apps::{app, ballast, js_component, js_handler_component, wstd_example_server};
pub use binaries::edgeplane_binary;
pub use edgeplane::root_gate::{require_feature, require_root};
pub use pins::TestPins;
pub use raw_http::{Received, fill_until, find, read_response};
pub use two_hosts::{Edged, TwoHosts, expected_worker};
pub use wasm::{
    block_on, cold_runtime, handle, request, runtime, runtime_preparing, spec, ticker, warm_cache,
};

/// A fresh directory under the system's temporary one, for this test process.
pub fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("edgeplane-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}
