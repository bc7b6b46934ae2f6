//! Misbehaves on purpose, for the runtime's limits: `/trap` traps, `/loop` never returns,
//! `/alloc` grows memory without bound, `/flood` answers with a body that never ends,
//! `/truncate` traps halfway through its body, `/sleep?ms=N` sleeps (waiting, not computing),
//! `/spin-after-subrequest` starts a subrequest to BACKEND_URL and spins while it is pending,
//! anything else answers normally.
use std::time::Duration;

use wstd::http::{Body, Client, Error, Request, Response};

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    match request.uri().path() {
        "/trap" => panic!("this guest traps on purpose"),
        "/loop" => {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "/alloc" => {
            let mut hog: Vec<Vec<u8>> = Vec::new();
            loop {
                hog.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hog);
            }
        }
        "/flood" => Ok(Response::new(Body::from_stream(
            futures_lite::stream::repeat(vec![b'x'; 64 << 10]),
        ))),
        "/truncate" => Ok(Response::new(Body::from_stream(futures_lite::stream::unfold(
            0,
            |sent| async move {
                if sent == 3 {
                    panic!("this guest traps halfway through its body");
                }
                Some((vec![b'x'; 1024], sent + 1))
            },
        )))),
        "/sleep" => {
            let ms = request
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("ms="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(100);
            wstd::task::sleep(wstd::time::Duration::from(Duration::from_millis(ms))).await;
            Ok(Response::new(format!("slept {ms} ms\n").into()))
        }
        "/spin-after-subrequest" => {
            let backend = std::env::var("BACKEND_URL").unwrap_or_default();
            let client = Client::new();
            let mut pending = Box::pin(client.send(Request::get(backend).body(Body::empty())?));
            // Sent, not awaited: the subrequest is in flight while the guest spins.
            let _ = futures_lite::future::poll_once(&mut pending).await;
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        _ => Ok(Response::new("faulty app is fine\n".into())),
    }
}
