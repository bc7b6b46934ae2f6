//! The smallest wasi:http app: answers every request with a greeting.
use wstd::http::{Body, Error, Request, Response};

#[wstd::http_server]
async fn main(_request: Request<Body>) -> Result<Response<Body>, Error> {
    Ok(Response::new("hello from wasm\n".into()))
}
