//! Echoes the request body back, with the method and path in headers.
use wstd::http::{Body, Error, Request, Response};

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let method = request.method().to_string();
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let (_parts, body) = request.into_parts();
    Ok(Response::builder()
        .header("x-echo-method", method)
        .header("x-echo-path", path)
        .body(body)?)
}
