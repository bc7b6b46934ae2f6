//! edgeplane's measuring tools: frame builders, network-namespace worlds, and packet-rate
//! benchmarks (see `src/bin/xdp_bench.rs`). Tests reuse the same pieces.

pub mod af_packet;
pub mod backend;
pub mod canonical;
pub mod cpu;
pub mod edged;
pub mod flood;
pub mod http;
pub mod loadgen;
pub mod nats;
pub mod netns;
pub mod packets;
pub mod plan;
pub mod plot;
pub mod scenario;
pub mod tls;
pub mod tls_load;
pub mod wan;
pub mod world;
pub mod xdp;
