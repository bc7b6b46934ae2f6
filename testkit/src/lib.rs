//! edgeplane's test kit: the one way tests and benchmarks build the guest apps, make wasm
//! runtimes as a worker does, start edgeplane's binaries, read responses off raw sockets, and
//! read `/metrics` with the reference parser.
//!
//! - [`guest_apps`]: building `apps/` for wasm32-wasip2 (also what `./x` runs);
//! - [`apps`]: each app's component, built once per process;
//! - [`wasm`]: runtimes with a warm code cache shared by a test binary's tests;
//! - [`raw_http`]: a client's view of a response, parsed independently;
//! - [`binaries`]: edged and edgectl, built once per test binary;
//! - [`openmetrics`]: the reference OpenMetrics parser.
//!
//! The namespaced worlds, the load generators and edged's launcher are `edgeplane-bench`'s
//! (`netns`, `world`, `canonical`, `http::spawn`), which builds on this crate.

pub mod apps;
pub mod binaries;
pub mod guest_apps;
pub mod openmetrics;
pub mod raw_http;
pub mod wasm;

use std::path::PathBuf;

pub use apps::{app, ballast, js_component, js_handler_component, wstd_example_server};
pub use binaries::edgeplane_binary;
pub use raw_http::{Received, fill_until, find, read_response};
pub use wasm::{cold_runtime, runtime, runtime_preparing, spec, ticker, warm_cache};

/// A fresh directory under the system's temporary one, for this test process.
pub fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("edgeplane-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}
