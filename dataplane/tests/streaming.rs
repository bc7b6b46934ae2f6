//! Streaming through a real worker (its io_uring ring, real TCP on loopback) and the router, with
//! real components: wstd's public http_server example and the faulty app. What a client reads is
//! parsed here, independently of the code under test.

use std::{
    io::Write,
    net::{SocketAddr, TcpStream},
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use edgeplane_dataplane::{
    http::HttpLimits,
    listener::reuseport_listener,
    router::{EdgeService, Routes, region::Popularity},
    wasm::AppLimits,
    worker::{self, Service, WorkerOptions},
};
use edgeplane_testkit::{fill_until, find, read_response, runtime, spec};

struct Running {
    addr: SocketAddr,
    counters: Arc<worker::WorkerCounters>,
    stop: tokio::sync::watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<worker::WorkerStats>>>,
}

impl Running {
    /// Stops the worker (it drains) and waits for it.
    fn join(mut self) -> anyhow::Result<worker::WorkerStats> {
        let _ = self.stop.send(true);
        let thread = self.thread.take().expect("joined once");
        thread.join().expect("worker thread panicked")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// A worker serving `wstd.test` (wstd's example), `faulty.test` (faulty, with a 4 MiB
/// response limit) and `echo.test` (apps/echo).
fn start() -> Running {
    start_with(HttpLimits::default())
}

/// `start`, with these limits on clients.
fn start_with(limits: HttpLimits) -> Running {
    let wstd = edgeplane_testkit::wstd_example_server();
    let faulty = edgeplane_testkit::app("faulty");
    let echo = edgeplane_testkit::app("echo");
    let listener = reuseport_listener("127.0.0.1:0".parse().unwrap(), 128).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut opts = WorkerOptions::new(0, listener);
    opts.pin = false;
    opts.limits = limits;
    let counters = opts.counters.clone();
    opts.drain_timeout = Duration::from_secs(2);
    let mut faulty_spec = spec("faulty", faulty);
    faulty_spec.limits = AppLimits {
        max_response_bytes: 4 << 20,
        ..Default::default()
    };
    let apps = vec![spec("wstd", wstd), faulty_spec, spec("echo", echo)];
    let cache = edgeplane_testkit::warm_cache(&apps);
    let (stop, rx) = tokio::sync::watch::channel(false);
    let factory: worker::ServiceFactory = Arc::new(move |_| {
        let rt = runtime(apps.clone(), &cache);
        let mut routes = Routes::default();
        routes.hosts.insert("wstd.test".into(), "wstd".into());
        routes.hosts.insert("faulty.test".into(), "faulty".into());
        routes.hosts.insert("echo.test".into(), "echo".into());
        Ok(Rc::new(EdgeService {
            routes: std::cell::RefCell::new(Rc::new(routes)),
            runtime: rt,
            metrics: Default::default(),
            debug_headers: false,
            handoff: None,
            placement: None,
            region: None,
            popularity: Popularity::new(Duration::from_secs(10)),
            holdout_every: 0,
            holdout_seen: Default::default(),
            live: None,
            access_log: None,
            tls: Default::default(),
        }) as Rc<dyn Service>)
    });
    let thread = worker::spawn(opts, factory, rx).unwrap();
    Running {
        addr,
        counters,
        stop,
        thread: Some(thread),
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

fn send(s: &mut TcpStream, raw: &str) {
    s.write_all(raw.as_bytes()).unwrap();
}

#[test]
fn a_guest_body_streams_as_it_is_written_and_the_connection_serves_on() {
    let w = start();
    let mut s = connect(w.addr);
    let asked = Instant::now();
    send(
        &mut s,
        "GET /stream-body HTTP/1.1\r\nHost: wstd.test\r\n\r\n",
    );
    let r = read_response(&mut s, false);
    assert_eq!(r.status, 200);
    assert!(r.complete, "{r:?}");
    assert_eq!(r.header("transfer-encoding"), Some("chunked"), "{r:?}");
    assert_eq!(r.header("content-length"), None);
    let body = String::from_utf8(r.body()).unwrap();
    assert_eq!(body.lines().count(), 5, "{body}");
    assert!(
        body.lines().all(|l| l.starts_with("stream started ")),
        "{body}"
    );
    // The guest sleeps 100 ms before each line: streamed, the first line arrives about 400 ms
    // before the last; buffered whole, they would arrive together.
    let (first, last) = (r.pieces[0].0, r.pieces.last().unwrap().0);
    assert!(
        last.duration_since(first) >= Duration::from_millis(250),
        "lines arrived {:?} apart (asked {:?} before the first): not streamed",
        last.duration_since(first),
        first.duration_since(asked)
    );
    // The stream ended cleanly: the same connection serves the next request.
    send(&mut s, "GET / HTTP/1.1\r\nHost: wstd.test\r\n\r\n");
    let r = read_response(&mut s, false);
    assert_eq!(r.status, 200);
    assert_eq!(r.body(), b"Hello, wasi:http/proxy world!\n");
    assert_eq!(
        r.header("content-length"),
        Some("30"),
        "a whole body keeps its length"
    );

    // HEAD: the head of the streamed response, no body, and the connection goes on.
    send(
        &mut s,
        "HEAD /stream-body HTTP/1.1\r\nHost: wstd.test\r\n\r\n",
    );
    let r = read_response(&mut s, true);
    assert_eq!(r.status, 200);
    send(&mut s, "GET / HTTP/1.1\r\nHost: wstd.test\r\n\r\n");
    assert_eq!(read_response(&mut s, false).status, 200);
}

#[test]
fn an_http_1_0_client_gets_the_stream_delimited_by_the_connection_end() {
    let w = start();
    let mut s = connect(w.addr);
    send(
        &mut s,
        "GET /stream-body HTTP/1.0\r\nHost: wstd.test\r\n\r\n",
    );
    let r = read_response(&mut s, false);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("transfer-encoding"),
        None,
        "HTTP/1.0 has no chunked coding"
    );
    assert_eq!(r.header("connection"), Some("close"));
    assert!(r.complete);
    assert_eq!(String::from_utf8(r.body()).unwrap().lines().count(), 5);
}

#[test]
fn trailers_go_both_ways() {
    let w = start();
    let mut s = connect(w.addr);
    // No trailers sent: the example answers with its own, which go to a client that takes
    // trailers (TE: trailers), and to no other.
    send(
        &mut s,
        "GET /echo-trailers HTTP/1.1\r\nHost: wstd.test\r\nTE: trailers\r\n\r\n",
    );
    let r = read_response(&mut s, false);
    assert_eq!(r.status, 200);
    assert!(r.complete);
    assert_eq!(r.trailers, [("x-no-trailers".to_owned(), "1".to_owned())]);
    send(
        &mut s,
        "GET /echo-trailers HTTP/1.1\r\nHost: wstd.test\r\n\r\n",
    );
    let r = read_response(&mut s, false);
    assert!(r.complete);
    assert!(r.trailers.is_empty(), "{:?}", r.trailers);
    // The request's trailers reach the guest, which sends them back as the response's.
    send(
        &mut s,
        "POST /echo-trailers HTTP/1.1\r\nHost: wstd.test\r\nTE: trailers\r\n\
         Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-checksum: 900150983cd2\r\n\r\n",
    );
    let r = read_response(&mut s, false);
    assert_eq!(r.status, 200);
    assert!(r.complete);
    assert_eq!(
        r.trailers,
        [("x-checksum".to_owned(), "900150983cd2".to_owned())]
    );
}

#[test]
fn a_body_past_the_limit_or_a_guest_failing_mid_stream_cuts_the_connection() {
    let w = start();
    // /flood writes 64 KiB pieces without end; the app's limit is 4 MiB.
    let mut s = connect(w.addr);
    send(&mut s, "GET /flood HTTP/1.1\r\nHost: faulty.test\r\n\r\n");
    let r = read_response(&mut s, false);
    assert_eq!(
        r.status, 200,
        "the head went out before the limit was reached"
    );
    assert!(!r.complete, "a cut body must not end as if whole");
    let got = r.body().len();
    assert!(got <= 4 << 20, "{got} bytes went out past the 4 MiB limit");
    // /truncate traps after 3 KiB of body: either nothing was sent yet (500), or the client
    // sees the connection end mid-body.
    let mut s = connect(w.addr);
    send(
        &mut s,
        "GET /truncate HTTP/1.1\r\nHost: faulty.test\r\n\r\n",
    );
    let r = read_response(&mut s, false);
    assert!(
        r.status == 500 || !r.complete,
        "a guest that failed mid-body answered as if whole: {} complete={}",
        r.status,
        r.complete
    );
    // The worker goes on serving.
    let mut s = connect(w.addr);
    send(&mut s, "GET / HTTP/1.1\r\nHost: wstd.test\r\n\r\n");
    assert_eq!(read_response(&mut s, false).status, 200);
}

#[test]
fn a_client_that_stops_reading_holds_the_guest_back() {
    let w = start();
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    // A small receive window: what the client does not read stays in the worker's hands.
    s.set_recv_buffer_size(64 << 10).unwrap();
    s.connect(&w.addr.into()).unwrap();
    let mut s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    send(&mut s, "GET /flood HTTP/1.1\r\nHost: faulty.test\r\n\r\n");
    // Without backpressure the guest would write its 4 MiB limit in milliseconds while nobody
    // reads, and be cut. Held back, it writes only what the socket buffers and the worker's
    // high-water mark take, and 3 MiB can still be read after the pause.
    std::thread::sleep(Duration::from_millis(1500));
    let mut buf = Vec::new();
    assert!(
        fill_until(&mut s, &mut buf, |b| b.len() >= 3 << 20),
        "the stream was cut after {} bytes while the client paused",
        buf.len()
    );
    drop(s);
    drop(w);
}

#[test]
fn the_worker_drains_a_running_stream_before_it_stops() {
    let w = start();
    let mut s = connect(w.addr);
    send(
        &mut s,
        "GET /stream-body HTTP/1.1\r\nHost: wstd.test\r\n\r\n",
    );
    std::thread::sleep(Duration::from_millis(150));
    let stopping = std::thread::spawn(move || w.join());
    let r = read_response(&mut s, false);
    assert!(
        r.complete,
        "a stream under way finishes during the drain: {r:?}"
    );
    assert_eq!(
        r.header("connection"),
        None,
        "its head went out before the drain"
    );
    assert!(stopping.join().unwrap().is_ok());
}

#[test]
fn a_request_body_streams_into_the_guest_while_its_answer_streams_out() {
    let w = start();
    let mut s = connect(w.addr);
    send(
        &mut s,
        "POST /echo HTTP/1.1\r\nHost: wstd.test\r\nTransfer-Encoding: chunked\r\n\r\n7\r\npiece-1\r\n",
    );
    // The client sends its next piece only after the first came back: buffered whole, the
    // request would never end and this read would time out.
    let mut buf = Vec::new();
    assert!(
        fill_until(&mut s, &mut buf, |b| find(b, b"piece-1").is_some()),
        "the first piece did not come back before the body ended: {:?}",
        String::from_utf8_lossy(&buf)
    );
    assert!(
        find(&buf, b"transfer-encoding: chunked").is_some(),
        "{buf:?}"
    );
    send(&mut s, "7\r\npiece-2\r\n0\r\n\r\n");
    assert!(fill_until(&mut s, &mut buf, |b| find(b, b"0\r\n\r\n").is_some()));
    assert!(find(&buf, b"piece-2").is_some());
    // And the connection serves on.
    send(&mut s, "GET / HTTP/1.1\r\nHost: wstd.test\r\n\r\n");
    assert_eq!(read_response(&mut s, false).status, 200);
}

#[test]
fn a_client_waiting_for_100_continue_gets_it_and_its_body_streams() {
    let w = start();
    let mut s = connect(w.addr);
    send(
        &mut s,
        "PUT /echo HTTP/1.1\r\nHost: wstd.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    );
    let mut buf = Vec::new();
    assert!(fill_until(&mut s, &mut buf, |b| find(b, b"\r\n\r\n").is_some()));
    assert!(buf.starts_with(b"HTTP/1.1 100 Continue\r\n\r\n"), "{buf:?}");
    send(&mut s, "hello");
    let mut rest = buf.split_off(25);
    assert!(fill_until(&mut s, &mut rest, |b| find(b, b"hello").is_some()));
    assert!(rest.starts_with(b"HTTP/1.1 200 OK\r\n"), "{rest:?}");
}

#[test]
fn a_request_body_past_the_limit_mid_stream_fails_that_request_only() {
    let w = start();
    let mut s = connect(w.addr);
    // The worker's limit is 1 MiB; this body announces no length and goes past it.
    send(
        &mut s,
        "POST /echo HTTP/1.1\r\nHost: wstd.test\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    let piece = format!("10000\r\n{}\r\n", "x".repeat(0x10000));
    let writer = {
        let mut s = s.try_clone().unwrap();
        std::thread::spawn(move || {
            for _ in 0..24 {
                if s.write_all(piece.as_bytes()).is_err() {
                    return;
                }
            }
            let _ = s.write_all(b"0\r\n\r\n");
        })
    };
    let r = read_response(&mut s, false);
    assert!(
        r.status >= 400 || !r.complete,
        "a body over the limit must not be echoed as whole: {} complete={}",
        r.status,
        r.complete
    );
    assert!(
        r.body().len() <= 1 << 20,
        "more than the limit went through"
    );
    let _ = writer.join();
    let mut s = connect(w.addr);
    send(&mut s, "GET / HTTP/1.1\r\nHost: wstd.test\r\n\r\n");
    assert_eq!(read_response(&mut s, false).status, 200);
}

/// Client timeouts short enough for a test: a second for the head, a second of silence in a
/// body the guest waits for, 64 bytes a second on average past that.
fn short_timeouts() -> HttpLimits {
    HttpLimits {
        header_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(1),
        body_min_rate: 64,
        ..HttpLimits::default()
    }
}

fn slow_clients(w: &Running) -> (u64, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    (
        w.counters.slow_heads.load(Relaxed),
        w.counters.slow_bodies.load(Relaxed),
    )
}

#[test]
fn a_steady_upload_through_a_streaming_guest_outlasts_every_client_timeout() {
    let w = start_with(short_timeouts());
    let mut s = connect(w.addr);
    send(
        &mut s,
        "POST /echo HTTP/1.1\r\nHost: echo.test\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    // Six seconds of body (six body timeouts, six header timeouts), a 100-byte piece every
    // 250 ms: each comes back before the next goes, so the guest is reading all along.
    let mut buf = Vec::new();
    let started = Instant::now();
    for i in 0..24 {
        let piece = format!("piece-{i:02}-{}", "x".repeat(91));
        send(&mut s, &format!("{:x}\r\n{piece}\r\n", piece.len()));
        assert!(
            fill_until(&mut s, &mut buf, |b| find(b, piece.as_bytes()).is_some()),
            "piece {i} did not come back ({:?} in): {:?}",
            started.elapsed(),
            String::from_utf8_lossy(&buf[buf.len().saturating_sub(300)..])
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    send(&mut s, "0\r\n\r\n");
    assert!(
        fill_until(&mut s, &mut buf, |b| find(b, b"\r\n0\r\n\r\n").is_some()),
        "the echo did not end whole"
    );
    assert!(started.elapsed() > Duration::from_secs(6));
    assert_eq!(slow_clients(&w), (0, 0));
    // The connection serves on.
    send(&mut s, "GET / HTTP/1.1\r\nHost: wstd.test\r\n\r\n");
    assert_eq!(read_response(&mut s, false).status, 200);
}

#[test]
fn a_guest_busy_before_it_reads_the_body_is_not_blamed_on_its_client() {
    let w = start_with(short_timeouts());
    let mut s = connect(w.addr);
    // The client sends a piece and waits for its echo; the guest works 2.5 s (two and a half
    // body timeouts) before it reads anything.
    send(
        &mut s,
        "POST /echo?wait=2500 HTTP/1.1\r\nHost: echo.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n",
    );
    let mut buf = Vec::new();
    assert!(
        fill_until(&mut s, &mut buf, |b| find(b, b"first").is_some()),
        "the guest's answer was cut: {:?}",
        String::from_utf8_lossy(&buf)
    );
    assert!(buf.starts_with(b"HTTP/1.1 200 OK\r\n"), "{buf:?}");
    send(&mut s, "4\r\nlast\r\n0\r\n\r\n");
    assert!(fill_until(&mut s, &mut buf, |b| find(b, b"\r\n0\r\n\r\n").is_some()));
    assert!(find(&buf, b"last").is_some());
    assert_eq!(slow_clients(&w), (0, 0));
}

#[test]
fn a_slowloris_head_or_body_a_byte_at_a_time_is_closed_and_counted() {
    let w = start_with(short_timeouts());
    // The head, a byte every 100 ms: whole only after 4 s, past the 1 s header timeout.
    let mut head = connect(w.addr);
    let raw = b"GET / HTTP/1.1\r\nHost: wstd.test\r\nX-Padding: aaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let started = Instant::now();
    let mut cut = false;
    for byte in raw {
        if head.write_all(&[*byte]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = read_response(&mut head, false);
    assert!(cut || r.status == 408, "a slow head got {}", r.status);
    assert!(started.elapsed() < Duration::from_secs(5));

    // A body a byte every 100 ms (10 bytes a second, under the 64 asked for): each gap is short,
    // the pace is not. The guest echoes what arrives, then sees its body fail.
    let mut body = connect(w.addr);
    send(
        &mut body,
        "POST /echo HTTP/1.1\r\nHost: echo.test\r\nContent-Length: 1000\r\n\r\nx",
    );
    let started = Instant::now();
    let writer = {
        let mut s = body.try_clone().unwrap();
        std::thread::spawn(move || {
            for _ in 0..999 {
                if s.write_all(b"x").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let r = read_response(&mut body, false);
    assert!(
        !r.complete || r.status >= 400,
        "a slow body was answered as whole: {} {}",
        r.status,
        r.body().len()
    );
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "closed only after {took:?} (1 s of grace, then 64 B/s asked for)"
    );
    let _ = writer.join();
    assert_eq!(slow_clients(&w), (1, 1));

    // A body that stops: one body timeout of silence.
    let mut stalled = connect(w.addr);
    send(
        &mut stalled,
        "POST /echo HTTP/1.1\r\nHost: echo.test\r\nContent-Length: 10\r\n\r\nabc",
    );
    let r = read_response(&mut stalled, false);
    assert!(!r.complete || r.status >= 400);
    assert_eq!(slow_clients(&w), (1, 2));

    // The worker serves on.
    let mut s = connect(w.addr);
    send(&mut s, "GET / HTTP/1.1\r\nHost: wstd.test\r\n\r\n");
    assert_eq!(read_response(&mut s, false).status, 200);
}
