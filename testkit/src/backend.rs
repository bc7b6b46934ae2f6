//! A stand-in backend for the apps' subrequests: answers every HTTP/1.1 request with a short
//! body, keep-alive, one thread per connection. Counts what it served.

use std::{
    io::{Read as _, Write as _},
    net::TcpListener,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

/// Serves on `listener` until the process ends; returns the served-request counter.
pub fn serve_pong(listener: TcpListener) -> Arc<AtomicU64> {
    let served = Arc::new(AtomicU64::new(0));
    let counter = served.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            let counter = counter.clone();
            std::thread::spawn(move || {
                let _ = conn.set_nodelay(true);
                let mut pending = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let n = match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    pending.extend_from_slice(&buf[..n]);
                    // Requests without bodies (GETs from the apps): a head ends each one.
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..end + 4);
                        counter.fetch_add(1, Ordering::Relaxed);
                        let resp = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-type: text/plain\r\n\r\npong\n";
                        if conn.write_all(resp).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    served
}
