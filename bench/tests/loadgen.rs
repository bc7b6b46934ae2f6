//! The load generator against a real server on loopback: it counts what it sends, keeps to the
//! open-loop schedule, and charges a stalled server for the requests it held back (no
//! coordinated omission).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use edgeplane_bench::loadgen::{self, Arrival, LoadSpec};

/// Answers every request with `ok`; the request numbered `stall_at` waits `stall` first.
fn server(stall_at: u64, stall: Duration) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicU64::new(0));
    let counter = served.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let counter = counter.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut pending = Vec::new();
                loop {
                    let n = match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    pending.extend_from_slice(&buf[..n]);
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..end + 4);
                        let number = counter.fetch_add(1, Ordering::SeqCst) + 1;
                        if number == stall_at {
                            std::thread::sleep(stall);
                        }
                        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if conn.write_all(resp).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, served)
}

fn spec(addr: SocketAddr, connections: usize, secs: f64, arrival: Arrival) -> LoadSpec {
    LoadSpec {
        addr,
        host: "t".into(),
        path: "/".into(),
        connections,
        duration: Duration::from_secs_f64(secs),
        arrival,
    }
}

#[test]
fn closed_loop_counts_every_response_the_server_sent() {
    let (addr, served) = server(0, Duration::ZERO);
    let r = loadgen::run("closed", &spec(addr, 4, 0.5, Arrival::Closed)).unwrap();
    assert_eq!(r.errors, 0);
    assert!(r.completed > 0);
    // Requests still in flight when the run ends are served but not counted.
    let served = served.load(Ordering::SeqCst);
    assert!(
        r.completed <= served && served <= r.completed + 4,
        "{} vs {served}",
        r.completed
    );
    assert_eq!(r.per_second.iter().sum::<u64>(), r.completed);
}

#[test]
fn open_loop_keeps_to_the_offered_rate() {
    let (addr, _) = server(0, Duration::ZERO);
    let r = loadgen::run("open", &spec(addr, 4, 1.0, Arrival::Open { rate: 200.0 })).unwrap();
    assert_eq!(r.errors, 0);
    // The schedule holds exactly 200 arrivals in the second; a slow start may lose a few.
    assert!((150..=200).contains(&r.completed), "{}", r.completed);
}

#[test]
fn a_stall_is_charged_to_every_request_it_delayed() {
    // One connection at 100 req/s; request 20 stalls 300 ms, holding back ~30 scheduled sends.
    let (addr, _) = server(20, Duration::from_millis(300));
    let r = loadgen::run("stall", &spec(addr, 1, 1.0, Arrival::Open { rate: 100.0 })).unwrap();
    let delayed = r.histogram.count_between(100_000, u64::MAX);
    assert!(
        delayed >= 10,
        "only {delayed} requests saw the stall: coordinated omission"
    );
    assert!(r.max_ms >= 290.0, "{}", r.max_ms);
}
