//! The request path in userspace. Workers (one per CPU) each own a listening socket in one
//! SO_REUSEPORT group; the kernel's `select_worker` picks among them per connection.

pub mod client;
pub mod functions;
pub mod handoff;
pub mod http;
pub mod listener;
pub mod live;
pub mod probe;
pub mod router;
pub mod shared_map;
pub mod tls;
pub mod wasm;
pub mod worker;

/// What a caught panic said, as far as it said it in text.
pub fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message")
}

/// Locks `mutex` whatever a panicking holder left behind: the one policy for a poisoned lock.
/// Every value edgeplane keeps behind a mutex is a table of counters, observations or
/// bookkeeping that stays usable after a panic mid-update (at worst one update is lost), and a
/// request path that refused to serve after one panic would turn one bug into an outage.
pub fn lock<T: ?Sized>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
