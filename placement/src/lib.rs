//! The placement core: where each app runs, decided by pure functions over typed inputs (no
//! map, socket, clock or async runtime in this crate). edged's engine (`edgeplane::placement`)
//! gathers the facts and measurements, asks these functions, and writes the answer into the
//! PLACEMENT map; edgectl, the admin endpoint, the bench scenarios and the tests read the
//! status they produce with the same types.
//!
//! - [`decide`]: the rules, in order (pins, cool-down, a peer down, hints, a measured revert,
//!   too little traffic, then the margin and local-first's minimum saving);
//! - [`estimate`]: the latency goal's arithmetic (here, and at each peer);
//! - [`measurements`]: what datacenters publish for each other and how fresh it must be;
//! - [`goal`]: each app's goal and the engine's tuning;
//! - [`status`]: the verdict per app, as `/placement` serves it.

pub mod decide;
pub mod estimate;
pub mod goal;
pub mod measurements;
pub mod status;

pub use decide::Verdict;
pub use goal::{EngineApp, EngineApps, EngineConfig, Goal};
pub use status::{AppStatus, PlacementStatus, StatusTable};
