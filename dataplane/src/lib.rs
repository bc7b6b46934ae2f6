//! The request path in userspace. Workers (one per CPU) each own a listening socket in one
//! SO_REUSEPORT group; the kernel's `select_worker` picks among them per connection.

pub mod functions;
pub mod handoff;
pub mod http;
pub mod listener;
pub mod probe;
pub mod router;
pub mod wasm;
pub mod worker;
