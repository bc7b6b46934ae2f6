//! A component with a large initialized memory image, like a JavaScript or Python runtime
//! compiled to wasm (their snapshot of an initialized heap): BALLAST_MIB mebibytes of data
//! (build.rs; 16 by default), one data segment.
//!
//! Each request reads and then writes one byte in every 64 KiB of the image, as a runtime's
//! heap is touched by a request, and answers with:
//! - `x-instance-requests`: requests this instance served (1 with fresh instances);
//! - `x-dirty-seen`: marks left by earlier requests that this one found. A fresh instance must
//!   find 0: anything else means one request saw another's memory;
//! - `x-image-mib`: the image's size.
//!
//! A byte of the image that is neither pristine nor marked answers 500: the image was
//! corrupted on its way into the instance.
//!
//! `?hold=ms` holds the instance that long after marking, before answering (a test pages the
//! host out meanwhile, so the marks sit in swap when the instance is reset).
use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use wstd::http::{Body, Error, Request, Response, StatusCode};

const MIB: usize = include!(concat!(env!("OUT_DIR"), "/ballast_mib.rs"));
const STRIDE: usize = 64 << 10;

/// The image. Mutable so that requests dirty it (through `touch` only, one request at a time).
static mut IMAGE: [u8; MIB << 20] = *include_bytes!(concat!(env!("OUT_DIR"), "/ballast.bin"));

static SERVED: AtomicU64 = AtomicU64::new(0);

/// build.rs's function: the byte at `offset` as the image was built.
fn pristine(offset: usize) -> u8 {
    let x = (offset as u32).wrapping_mul(2_654_435_761) >> 24;
    (x as u8) | 1
}

/// Marks every STRIDE-th byte; returns how many were marked already, or None when one is
/// neither pristine nor marked.
fn touch() -> Option<usize> {
    // SAFETY: a wasi:http instance serves one request at a time and nothing else touches IMAGE.
    let image = unsafe { &mut *std::ptr::addr_of_mut!(IMAGE) };
    let mut seen = 0;
    for offset in (0..image.len()).step_by(STRIDE) {
        let (clean, marked) = (pristine(offset), !pristine(offset));
        match image[offset] {
            b if b == clean => image[offset] = marked,
            b if b == marked => seen += 1,
            _ => return None,
        }
    }
    Some(seen)
}

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let served = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
    let Some(seen) = touch() else {
        return Ok(Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .body("the memory image is corrupt\n".into())?);
    };
    let hold = request
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("hold=")))
        .and_then(|ms| ms.parse::<u64>().ok());
    if let Some(ms) = hold {
        wstd::task::sleep(Duration::from_millis(ms).into()).await;
    }
    Ok(Response::builder()
        .header("x-instance-requests", served.to_string())
        .header("x-dirty-seen", seen.to_string())
        .header("x-image-mib", MIB.to_string())
        .body(format!("ballast of {MIB} MiB\n").into())?)
}
