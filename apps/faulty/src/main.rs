//! Misbehaves on purpose, for the runtime's limits: `/trap` traps, `/loop` never returns,
//! `/alloc` grows memory without bound, anything else answers normally.
use wstd::http::{Body, Error, Request, Response};

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
        _ => Ok(Response::new("faulty app is fine\n".into())),
    }
}
