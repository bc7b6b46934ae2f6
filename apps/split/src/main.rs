//! The entry function of a split app: calls each of its sibling functions (FUNCTIONS, comma
//! separated) at `http://<function>.fn.internal/`, concurrently, passing the request's query on,
//! and combines their answers into one JSON document. Where each function ran is in its
//! answer's `x-edge-placement`, which the combined document reports.
use wstd::http::{Body, Client, Error, Request, Response};

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

async fn call(function: &str, query: &str) -> String {
    let url = format!("http://{function}.fn.internal/{query}");
    let result = async {
        let req = Request::get(url).body(Body::empty())?;
        let resp = Client::new().send(req).await?;
        let status = resp.status().as_u16();
        let placement = resp
            .headers()
            .get("x-edge-placement")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("unknown")
            .to_owned();
        let body = resp.into_body().contents().await?.to_vec();
        Ok::<_, Error>(format!(
            "{{\"status\":{status},\"placement\":{},\"body\":{}}}",
            json_string(&placement),
            json_string(&String::from_utf8_lossy(&body))
        ))
    }
    .await;
    let answer =
        result.unwrap_or_else(|e| format!("{{\"error\":{}}}", json_string(&e.to_string())));
    format!("{}:{answer}", json_string(function))
}

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let functions = std::env::var("FUNCTIONS").unwrap_or_default();
    let query = request
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let calls = functions
        .split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(|f| call(f, &query));
    let answers = futures_join_all(calls).await;
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(format!("{{\"functions\":{{{}}}}}\n", answers.join(",")).into())?)
}

/// Runs the calls concurrently on wstd's reactor; answers in call order.
async fn futures_join_all<F: std::future::Future<Output = String>>(
    calls: impl Iterator<Item = F>,
) -> Vec<String> {
    let mut pending: Vec<_> = calls.map(Box::pin).collect();
    let mut done: Vec<Option<String>> = vec![None; pending.len()];
    std::future::poll_fn(|cx| {
        for (future, slot) in pending.iter_mut().zip(done.iter_mut()) {
            if slot.is_none()
                && let std::task::Poll::Ready(answer) = future.as_mut().poll(cx)
            {
                *slot = Some(answer);
            }
        }
        if done.iter().all(Option::is_some) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    done.into_iter().flatten().collect()
}
