//! edgeplane's measuring tools: frame builders, flood and load generators, baselines (nginx,
//! `wasmtime serve`), plots, and one binary per scenario. The worlds they run in (namespaces,
//! edged, NATS) are the test kit's (`edgeplane-testkit`).

pub mod af_packet;
pub mod cpu;
pub mod flood;
pub mod http;
pub mod loadgen;
pub mod packets;
pub mod plot;
pub mod scenario;
pub mod tls_load;
pub mod xdp;
