//! The smallest wasi:http app: answers every request with a greeting, and says in
//! `x-instance-requests` how many requests this instance has served (1 when instances are fresh).
//!
//! Written the way a latency-minded tenant writes an edge function, and so the floor of what a
//! request costs the platform; `apps/hello-wstd` is the same app written the usual way (std, wstd's
//! async runtime), and the benchmarks report both (bench/README.md).
//! - No std. Rust's std links wasi-libc, whose start-up imports eleven wasi:cli interfaces
//!   (environment, exit, stdio, terminals) a greeting never uses, and every import is linked again
//!   on each instantiation. This component imports wasi:http/types, wasi:io/streams and
//!   wasi:io/error only: 7 core instances instead of 23.
//! - No heap allocation on the request path. A fresh instance's first allocation grows linear
//!   memory, and wasmtime makes the grown pages accessible with mprotect and hides them again
//!   before the slot's next instance: two mprotect calls (with TLB shootdowns) per request.
#![no_std]

extern crate alloc;

use core::sync::atomic::{AtomicU64, Ordering};

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

// Only cabi_realloc uses the heap (the host passing lists in); dlmalloc is the allocator Rust's
// own std uses on wasm targets.
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

static SERVED: AtomicU64 = AtomicU64::new(0);

struct Hello;

wasip2::http::proxy::export!(Hello);

impl Guest for Hello {
    fn handle(_request: IncomingRequest, response_out: ResponseOutparam) {
        let served = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
        let mut digits = [0u8; 20];
        let headers = Fields::new();
        headers
            .append("x-instance-requests", decimal(served, &mut digits))
            .expect("a valid header");
        let response = OutgoingResponse::new(headers);
        let body = response.body().expect("the body is taken once");
        ResponseOutparam::set(response_out, Ok(response));
        let out = body.write().expect("the stream is taken once");
        // A failed write means the client went away; there is nobody left to tell.
        let _ = out.blocking_write_and_flush(b"hello from wasm\n");
        drop(out);
        let _ = OutgoingBody::finish(body, None);
    }
}

/// `n` in decimal, written into the end of `buf`.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// A trap: the host answers 500 and the instance is not reused.
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}

/// The canonical ABI's allocator entry point, which the host calls to pass strings and lists in.
/// With std, wasi-libc exports it; without std the component has to.
///
/// # Safety
/// Called only by the host, with the canonical ABI's contract: `old_ptr`/`old_len`/`align`
/// describe an earlier allocation from this function (or `old_len` is 0), `align` is a power of 2.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cabi_realloc(
    old_ptr: *mut u8,
    old_len: usize,
    align: usize,
    new_len: usize,
) -> *mut u8 {
    use alloc::alloc::{Layout, alloc, handle_alloc_error, realloc};
    // SAFETY: the caller guarantees the layout contract above.
    let (layout, ptr) = unsafe {
        let layout = Layout::from_size_align_unchecked(new_len, align);
        let ptr = if old_len == 0 {
            if new_len == 0 {
                return align as *mut u8;
            }
            alloc(layout)
        } else {
            realloc(
                old_ptr,
                Layout::from_size_align_unchecked(old_len, align),
                new_len,
            )
        };
        (layout, ptr)
    };
    if ptr.is_null() {
        handle_alloc_error(layout);
    }
    ptr
}
