//! Misbehaves on purpose, for the runtime's limits: `/trap` traps, `/loop` never returns,
//! `/alloc` grows memory without bound, `/flood` answers with a body that never ends,
//! `/truncate` traps halfway through its body, anything else answers normally.
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
        _ => Ok(Response::new("faulty app is fine\n".into())),
    }
}
