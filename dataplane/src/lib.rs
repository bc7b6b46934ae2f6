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

/// What a caught panic said, as far as it said it in text.
pub(crate) fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message")
}
