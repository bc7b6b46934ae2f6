//! Echoes the request body back, with the method and path in headers. `?set=name:value` adds
//! that header to the response (a guest trying to set a header the platform owns, in tests);
//! `?wait=ms` waits that long before it answers and reads the body (a guest busy with its own
//! work, in tests of the client's timeouts).
use std::time::Duration;

use wstd::http::{Body, Error, Request, Response};

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let method = request.method().to_string();
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let set = request
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("set=")))
        .and_then(|kv| kv.split_once(':'))
        .map(|(name, value)| (name.to_owned(), value.to_owned()));
    let wait = request
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("wait=")))
        .and_then(|ms| ms.parse::<u64>().ok());
    if let Some(ms) = wait {
        wstd::task::sleep(Duration::from_millis(ms).into()).await;
    }
    let (_parts, body) = request.into_parts();
    let mut response = Response::builder()
        .header("x-echo-method", method)
        .header("x-echo-path", path);
    if let Some((name, value)) = set {
        response = response.header(name, value);
    }
    Ok(response.body(body)?)
}
