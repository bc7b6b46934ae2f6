//! A streamed response: `?lines=N&ms=M` writes N lines, each M ms after the one before (the
//! first after M ms too; the head goes out at once). For the streaming benchmark's time to
//! first byte and first line, and for `wasmtime serve` the same.
use std::time::Duration;

use wstd::http::{Body, Error, Request, Response};

fn param(request: &Request<Body>, name: &str, default: u64) -> u64 {
    request
        .uri()
        .query()
        .and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
        })
        .unwrap_or(default)
}

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let lines = param(&request, "lines", 5).min(1000);
    let ms = param(&request, "ms", 100).min(10_000);
    let body = futures_lite::stream::unfold(0u64, move |i| async move {
        if i == lines {
            return None;
        }
        if ms > 0 {
            wstd::task::sleep(Duration::from_millis(ms).into()).await;
        }
        Some((format!("line {i}\n").into_bytes(), i + 1))
    });
    Ok(Response::builder()
        .header("content-type", "text/plain")
        .body(Body::from_stream(body))?)
}
