//! The smallest wasi:http app: answers every request with a greeting. It also says how many
//! requests this instance has served, which shows whether instances are fresh or reused.
use std::sync::atomic::{AtomicU64, Ordering};

use wstd::http::{Body, Error, Request, Response};

static SERVED: AtomicU64 = AtomicU64::new(0);

#[wstd::http_server]
async fn main(_request: Request<Body>) -> Result<Response<Body>, Error> {
    let served = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
    Ok(Response::builder()
        .header("x-instance-requests", served.to_string())
        .body("hello from wasm\n".into())?)
}
