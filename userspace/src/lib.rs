//! edgeplane's control side: loading and attaching the kernel programs, typed handles over the
//! pinned maps, and the pieces `edged` and `edgectl` are made of.

pub mod addr;
pub mod admin;
pub mod blocklist;
pub mod certs;
pub mod config;
pub mod daemon;
pub mod fleet;
pub mod keys;
pub mod loader;
pub mod maps;

pub mod placement;
pub mod reconcile;
pub mod reload;
pub mod root_gate;
pub mod server;
pub mod topology;
pub mod upgrade;

pub use loader::{Dataplane, LoadOptions, XdpAttachMode};
pub use maps::{MapsError, PinnedMaps};

/// Where `edged` pins its maps unless told otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/edgeplane";
