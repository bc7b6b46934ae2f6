//! Makes K sequential subrequests to a backend and returns a summary (JSON). The backend comes
//! from the environment (BACKEND_URL), K from `?k=` or SUBREQUESTS (default 5).
use std::time::Instant;

use wstd::http::{Body, Client, Error, Request, Response, StatusCode};

fn query_k(request: &Request<Body>) -> Option<usize> {
    request
        .uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("k=")?.parse().ok())
}

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let Ok(backend) = std::env::var("BACKEND_URL") else {
        return Ok(Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .body("BACKEND_URL is not set\n".into())?);
    };
    let k = query_k(&request)
        .or_else(|| std::env::var("SUBREQUESTS").ok()?.parse().ok())
        .unwrap_or(5)
        .min(100);
    let client = Client::new();
    let started = Instant::now();
    let mut statuses = Vec::with_capacity(k);
    let mut bytes = 0usize;
    for i in 0..k {
        let req = Request::get(format!("{backend}?i={i}")).body(Body::empty())?;
        match client.send(req).await {
            Ok(resp) => {
                statuses.push(resp.status().as_u16().to_string());
                let mut body = resp.into_body();
                bytes += body.contents().await.map(|b| b.len()).unwrap_or(0);
            }
            Err(e) => statuses.push(format!("\"error: {}\"", e.to_string().replace('"', "'"))),
        }
    }
    let summary = format!(
        "{{\"subrequests\":{k},\"statuses\":[{}],\"bytes\":{bytes},\"elapsed_ms\":{}}}\n",
        statuses.join(","),
        started.elapsed().as_millis()
    );
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(summary.into())?)
}
