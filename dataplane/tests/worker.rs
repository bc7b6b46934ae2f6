//! A real worker thread with its io_uring ring, over real TCP on loopback.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    rc::Rc,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use edgeplane_dataplane::{
    http::{HttpLimits, Request, Response},
    listener::reuseport_listener,
    worker::{self, Reply, RequestContext, Service, WorkerCounters, WorkerOptions, WorkerStats},
};

/// Routes: `/` hello, `/echo` the body back, `/slow/<ms>` answers later, `/worker` its index,
/// `/finish` answers after 100 ms and counts in FINISHED that it got that far, `/panic` panics
/// (a bug a request reaches), `/status/<n>` answers status n with a body.
struct TestService;

static FINISHED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Service for TestService {
    fn call(&self, req: Request, ctx: &RequestContext) -> Reply {
        let path = req.path().to_owned();
        match path.as_str() {
            "/" => Reply::Now(Response::text(200, "hello\n")),
            "/echo" => match ctx.take_body() {
                // A body still arriving when the head did streams in.
                Some(body) => Reply::Later(Box::pin(async move {
                    match body.read_all(1 << 20).await {
                        Ok((whole, _)) => Response::new(200, whole),
                        Err(e) => Response::text(400, e.to_string()),
                    }
                })),
                None => Reply::Now(Response::new(200, req.body)),
            },
            "/worker" => Reply::Now(Response::text(200, ctx.worker.to_string())),
            "/panic" => panic!("a bug reached by {}", req.target),
            p if p.starts_with("/status/") => {
                let status = p["/status/".len()..].parse().unwrap_or(500);
                Reply::Now(Response::text(status, "a body the status forbids\n"))
            }
            p if p.starts_with("/slow/") => {
                let ms: u64 = p[6..].parse().unwrap_or(10);
                Reply::Later(Box::pin(async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Response::text(200, format!("slow {ms}"))
                }))
            }
            "/finish" => Reply::Later(Box::pin(async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                FINISHED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Response::text(200, "finished\n")
            })),
            _ => Reply::Now(Response::text(404, "no such route\n")),
        }
    }
}

struct Running {
    addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    thread: std::thread::JoinHandle<anyhow::Result<WorkerStats>>,
}

fn start(limits: HttpLimits) -> Running {
    start_with(limits, Arc::default())
}

fn start_with(limits: HttpLimits, counters: Arc<WorkerCounters>) -> Running {
    let listener = reuseport_listener("127.0.0.1:0".parse().unwrap(), 128).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut opts = WorkerOptions::new(0, listener);
    opts.counters = counters;
    opts.limits = limits;
    opts.drain_timeout = Duration::from_secs(3);
    let (stop, rx) = tokio::sync::watch::channel(false);
    let factory: worker::ServiceFactory = Arc::new(|_| Ok(Rc::new(TestService) as Rc<dyn Service>));
    let thread = worker::spawn(opts, factory, rx).unwrap();
    Running { addr, stop, thread }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Status, headers (names lower-cased) and body of one response.
type Received = (u16, Vec<(String, String)>, Vec<u8>);

/// Reads one response (head + content-length body) from the stream.
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Received> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let mut lines = head.split("\r\n");
            let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| {
                    l.split_once(": ")
                        .map(|(a, b)| (a.to_ascii_lowercase(), b.to_owned()))
                })
                .collect();
            let len: usize = headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .map(|(_, v)| v.parse().unwrap())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let mut chunk = [0u8; 4096];
                let n = s.read(&mut chunk).ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = buf[end + 4..end + 4 + len].to_vec();
            buf.drain(..end + 4 + len);
            return Some((status, headers, body));
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// True when the server closed the connection (EOF) within the read timeout.
fn closed_by_server(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 1024];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return true,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

fn stop(r: Running) -> WorkerStats {
    r.stop.send(true).unwrap();
    r.thread.join().unwrap().unwrap()
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let w = start(HttpLimits::default());
    let mut s = connect(w.addr);
    let mut buf = Vec::new();
    for i in 0..200 {
        s.write_all(
            format!(
                "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\nmsg-{i}",
                4 + i.to_string().len()
            )
            .as_bytes(),
        )
        .unwrap();
        let (status, headers, body) = read_response(&mut s, &mut buf).expect("response");
        assert_eq!(status, 200);
        assert_eq!(body, format!("msg-{i}").as_bytes());
        assert!(headers.iter().any(|(n, _)| n == "date"));
        assert!(
            !headers
                .iter()
                .any(|(n, v)| n == "connection" && v == "close")
        );
    }
    drop(s);
    let stats = stop(w);
    assert_eq!((stats.accepted, stats.served), (1, 200));
}

#[test]
fn pipelined_responses_keep_request_order_even_when_the_first_is_slow() {
    let w = start(HttpLimits::default());
    let mut s = connect(w.addr);
    s.write_all(
        b"GET /slow/80 HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
          GET /slow/5 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut buf = Vec::new();
    let bodies: Vec<Vec<u8>> = (0..4)
        .map(|_| read_response(&mut s, &mut buf).expect("response").2)
        .collect();
    assert_eq!(
        bodies,
        [
            b"slow 80".to_vec(),
            b"hello\n".to_vec(),
            b"abc".to_vec(),
            b"slow 5".to_vec()
        ]
    );
    assert!(
        closed_by_server(&mut s, &mut buf),
        "Connection: close must close after the last response"
    );
    stop(w);
}

#[test]
fn malformed_requests_get_their_status_and_the_worker_keeps_serving() {
    let limits = HttpLimits {
        max_body_bytes: 1000,
        max_header_bytes: 2048,
        ..Default::default()
    };
    let w = start(limits);
    let mut long_header = b"GET / HTTP/1.1\r\nHost: t\r\nx-big: ".to_vec();
    long_header.extend(std::iter::repeat_n(b'a', 4000));
    long_header.extend_from_slice(b"\r\n\r\n");
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (b"GET / HTTP/1.1\r\n\r\n".to_vec(), 400),
        (b"GARBAGE\r\n\r\n".to_vec(), 400),
        (
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n".to_vec(),
            413,
        ),
        (long_header, 431),
        (
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
            501,
        ),
        (b"GET / HTTP/3.0\r\nHost: t\r\n\r\n".to_vec(), 505),
    ];
    for (req, want) in cases {
        let mut s = connect(w.addr);
        s.write_all(&req).unwrap();
        let mut buf = Vec::new();
        let (status, headers, _) = read_response(&mut s, &mut buf).expect("an error response");
        assert_eq!(
            status,
            want,
            "{}",
            String::from_utf8_lossy(&req[..req.len().min(60)])
        );
        assert!(
            headers
                .iter()
                .any(|(n, v)| n == "connection" && v == "close")
        );
        assert!(closed_by_server(&mut s, &mut buf));
        // The next request on a new connection is served.
        let mut ok = connect(w.addr);
        ok.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        assert_eq!(
            read_response(&mut ok, &mut Vec::new()).expect("response").0,
            200
        );
    }
    let stats = stop(w);
    assert_eq!(stats.bad_requests, 6);
}

#[test]
fn slow_client_gets_408_and_idle_connection_is_closed() {
    let limits = HttpLimits {
        header_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(400),
        ..Default::default()
    };
    let w = start(limits);
    // Half a request head, then silence.
    let mut slow = connect(w.addr);
    slow.write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
    let mut buf = Vec::new();
    let (status, _, _) = read_response(&mut slow, &mut buf).expect("408");
    assert_eq!(status, 408);
    assert!(closed_by_server(&mut slow, &mut buf));

    // A served keep-alive connection left idle is closed without a response.
    let mut idle = connect(w.addr);
    idle.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    assert_eq!(read_response(&mut idle, &mut buf).expect("response").0, 200);
    let t = Instant::now();
    assert!(closed_by_server(&mut idle, &mut buf));
    assert!(buf.is_empty(), "idle close sends nothing");
    assert!(t.elapsed() < Duration::from_secs(4));
    stop(w);
}

#[test]
fn expect_100_continue_then_body() {
    let w = start(HttpLimits::default());
    let mut s = connect(w.addr);
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let mut buf = Vec::new();
    let (status, _, _) = read_response(&mut s, &mut buf).expect("100 Continue");
    assert_eq!(status, 100);
    s.write_all(b"ping").unwrap();
    let (status, _, body) = read_response(&mut s, &mut buf).expect("response");
    assert_eq!((status, body.as_slice()), (200, &b"ping"[..]));
    stop(w);
}

#[test]
fn drain_finishes_in_flight_requests_then_stops_accepting() {
    let w = start(HttpLimits::default());
    let mut s = connect(w.addr);
    s.write_all(b"GET /slow/300 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    w.stop.send(true).unwrap();
    let mut buf = Vec::new();
    let (status, headers, body) =
        read_response(&mut s, &mut buf).expect("in-flight request answered");
    assert_eq!((status, body.as_slice()), (200, &b"slow 300"[..]));
    assert!(
        headers
            .iter()
            .any(|(n, v)| n == "connection" && v == "close"),
        "draining closes after the response"
    );
    let stats = w.thread.join().unwrap().unwrap();
    assert_eq!(stats.served, 1);
    assert!(
        TcpStream::connect_timeout(&w.addr, Duration::from_millis(500)).is_err(),
        "a drained worker accepts nothing"
    );
}

#[test]
fn a_reply_still_running_when_its_client_resets_is_finished_not_dropped() {
    // An app's work (its subrequests, what it records) does not stop half way because the
    // client hung up; the worker goes on serving.
    let w = start(HttpLimits::default());
    let mut s = connect(w.addr);
    s.write_all(b"GET /finish HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    // Linger 0: the close is a reset, which makes the worker close its side at once.
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(5);
    while FINISHED.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the abandoned reply never finished"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut s = connect(w.addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let (status, _, body) = read_response(&mut s, &mut buf).expect("served after");
    assert_eq!((status, body.as_slice()), (200, &b"hello\n"[..]));
    stop(w);
}

const HELLO_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n";

/// Pipelines hello requests on `s` without reading a byte, until the worker stops taking them
/// (nothing more goes in for a second, or it closes the connection) or `limit` bytes went in.
/// Returns the bytes written.
fn pipeline_without_reading(s: &TcpStream, limit: usize) -> usize {
    let sock = socket2::SockRef::from(s);
    // Small client buffers, so what the stream holds is mostly the worker's doing.
    sock.set_send_buffer_size(64 << 10).unwrap();
    sock.set_recv_buffer_size(64 << 10).unwrap();
    s.set_nonblocking(true).unwrap();
    let requests = HELLO_REQUEST.repeat(64 << 10);
    let mut written = 0;
    let mut last_progress = Instant::now();
    while written < limit && last_progress.elapsed() < Duration::from_secs(1) {
        let at = written % requests.len();
        match (&*s).write(&requests[at..]) {
            Ok(n) => {
                written += n;
                last_progress = Instant::now();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("write: {e}"),
        }
    }
    s.set_nonblocking(false).unwrap();
    written
}

#[test]
fn a_client_that_pipelines_and_never_reads_is_held_back_by_tcp_then_gets_every_response() {
    let r = start(HttpLimits::default());
    let s = connect(r.addr);
    let limit = 64 << 20;
    let written = pipeline_without_reading(&s, limit);
    // What a stalled client has in flight: the kernel's socket buffers (a few hundred KiB here)
    // and the worker's bounded queues. A worker that read on would take all 64 MiB.
    assert!(
        written < 8 << 20,
        "the worker kept reading from a client that reads nothing: {written} bytes taken"
    );

    // Now the client reads, finishes its last request and asks to close: every request it
    // sent gets its response, in order, and nothing is lost to the pause.
    let last = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let rest = HELLO_REQUEST[written % HELLO_REQUEST.len()..].to_vec();
    let expected = written.div_ceil(HELLO_REQUEST.len()) + 1;
    let mut writer = s.try_clone().unwrap();
    let finish = std::thread::spawn(move || {
        if rest.len() < HELLO_REQUEST.len() {
            writer.write_all(&rest).unwrap();
        }
        writer.write_all(last).unwrap();
    });
    let mut reader = s;
    reader
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = Vec::new();
    let mut answered = 0;
    while let Some((status, _, body)) = read_response(&mut reader, &mut buf) {
        assert_eq!((status, body.as_slice()), (200, b"hello\n".as_slice()));
        answered += 1;
    }
    finish.join().unwrap();
    assert_eq!(answered, expected, "every pipelined request is answered");
    stop(r);
}

#[test]
fn a_client_that_never_reads_its_responses_is_closed_after_the_send_timeout() {
    let counters = Arc::new(WorkerCounters::default());
    let r = start_with(
        HttpLimits {
            send_timeout: Duration::from_millis(500),
            ..Default::default()
        },
        counters.clone(),
    );
    let mut s = connect(r.addr);
    let written = pipeline_without_reading(&s, 64 << 20);
    assert!(written < 8 << 20, "{written} bytes taken");
    std::thread::sleep(Duration::from_secs(2));
    // Reading now finds the connection gone rather than the rest of the responses.
    let mut buf = Vec::new();
    assert!(
        closed_by_server(&mut s, &mut buf),
        "a connection whose client read nothing for the send timeout stays open"
    );
    let answered = buf.windows(8).filter(|w| w == b"HTTP/1.1").count();
    assert!(answered < written / HELLO_REQUEST.len(), "{answered}");
    // A well-behaved client is served as before.
    let mut ok = connect(r.addr);
    ok.write_all(HELLO_REQUEST).unwrap();
    let (status, _, _) = read_response(&mut ok, &mut Vec::new()).unwrap();
    assert_eq!(status, 200);
    stop(r);
    assert_eq!(counters.slow_readers.load(Ordering::Relaxed), 1);
}

#[test]
fn a_request_that_panics_answers_500_and_the_worker_serves_its_other_connections() {
    let counters = Arc::new(WorkerCounters::default());
    let w = start_with(HttpLimits::default(), counters.clone());
    // A keep-alive connection opened before the panic, with a request answered.
    let mut other = connect(w.addr);
    let mut other_buf = Vec::new();
    other
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut other, &mut other_buf).unwrap().0, 200);
    for _ in 0..3 {
        let mut s = connect(w.addr);
        let mut buf = Vec::new();
        s.write_all(b"GET /panic HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let (status, headers, _) = read_response(&mut s, &mut buf).expect("a 500, not a reset");
        assert_eq!(status, 500);
        assert!(
            headers
                .iter()
                .any(|(n, v)| n == "connection" && v == "close")
        );
        assert!(closed_by_server(&mut s, &mut buf));
    }
    other
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(
        read_response(&mut other, &mut other_buf).unwrap().2,
        b"hello\n"
    );
    let mut fresh = connect(w.addr);
    fresh
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut fresh, &mut Vec::new()).unwrap().0, 200);
    drop((other, fresh));
    stop(w);
    assert_eq!(counters.panics.load(Ordering::Relaxed), 3);
}

#[test]
fn hostile_framing_is_refused_and_the_worker_keeps_serving() {
    let w = start(HttpLimits::default());
    let cases: &[(&[u8], u16)] = &[
        // A chunk size near u64::MAX (it once overflowed the decoder and stopped the worker).
        (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffff0\r\nabc", 413),
        (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n", 413),
        // A multi-byte character where a host's suffix is cut (it once panicked the router).
        ("GET / HTTP/1.1\r\nHost: a\u{e9}.fn.internal\u{e9}\r\n\r\n".as_bytes(), 200),
        ("GET / HTTP/1.1\r\nHost: \u{1F600}\r\n\r\n".as_bytes(), 200),
        (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: the-moon\r\nContent-Length: 1\r\n\r\nx", 417),
        (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n1;aaaaaaaa\x01\r\n", 400),
    ];
    for (raw, status) in cases {
        let mut s = connect(w.addr);
        s.write_all(raw).unwrap();
        let got = read_response(&mut s, &mut Vec::new()).map(|r| r.0);
        assert_eq!(got, Some(*status), "{}", String::from_utf8_lossy(raw));
        // The same worker answers the next request.
        let mut next = connect(w.addr);
        next.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(&mut next, &mut Vec::new()).unwrap().0, 200);
    }
    stop(w);
}

#[test]
fn a_chunked_body_arriving_a_few_bytes_at_a_time_is_decoded_whole() {
    let w = start(HttpLimits::default());
    let mut s = connect(w.addr);
    s.set_nodelay(true).unwrap();
    let mut body = Vec::new();
    let mut wire = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for i in 0..200u32 {
        let piece = format!("piece-{i};");
        body.extend_from_slice(piece.as_bytes());
        wire.extend_from_slice(format!("{:x};n={i}\r\n{piece}\r\n", piece.len()).as_bytes());
    }
    wire.extend_from_slice(b"0\r\nx-sum: 1\r\n\r\n");
    for part in wire.chunks(7) {
        s.write_all(part).unwrap();
    }
    let (status, _, got) = read_response(&mut s, &mut Vec::new()).unwrap();
    assert_eq!((status, got), (200, body));
    stop(w);
}

#[test]
fn statuses_without_a_body_are_sent_without_one_and_the_connection_stays_in_step() {
    let w = start(HttpLimits::default());
    let mut s = connect(w.addr);
    s.write_all(
        b"GET /status/204 HTTP/1.1\r\nHost: t\r\n\r\nGET /status/304 HTTP/1.1\r\nHost: t\r\n\r\n\
          GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw);
    let heads: Vec<&str> = text.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(heads.len(), 3, "{text}");
    assert!(
        heads[0].starts_with("204") && heads[0].ends_with("\r\n\r\n"),
        "{text}"
    );
    assert!(
        heads[1].starts_with("304") && heads[1].ends_with("\r\n\r\n"),
        "{text}"
    );
    assert!(!heads[0].contains("content-length") && !heads[1].contains("content-length"));
    assert!(
        heads[2].starts_with("200") && heads[2].ends_with("hello\n"),
        "{text}"
    );
    stop(w);
}

#[test]
fn http10_clients_get_no_100_continue() {
    let w = start(HttpLimits::default());
    let mut s = connect(w.addr);
    s.write_all(b"POST /echo HTTP/1.0\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut first = [0u8; 64];
    let early = s.read(&mut first);
    assert!(
        early.is_err(),
        "an HTTP/1.0 client was sent {:?} before its body",
        early.map(|n| String::from_utf8_lossy(&first[..n]).to_string())
    );
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"body").unwrap();
    let (status, _, body) = read_response(&mut s, &mut Vec::new()).unwrap();
    assert_eq!((status, body.as_slice()), (200, &b"body"[..]));
    stop(w);
}

#[test]
fn a_worker_that_stops_is_restarted_with_a_new_listener_that_serves() {
    use edgeplane_dataplane::worker::supervisor::Supervisor;
    use std::sync::atomic::AtomicU32;
    // The first service fails to build (the worker thread ends with that error); later ones work.
    let builds = Arc::new(AtomicU32::new(0));
    let counted = builds.clone();
    let factory: worker::ServiceFactory = Arc::new(move |_| {
        if counted.fetch_add(1, Ordering::SeqCst) == 0 {
            anyhow::bail!("injected: the first service fails to build");
        }
        Ok(Rc::new(TestService) as Rc<dyn Service>)
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen: SocketAddr = ([127, 0, 0, 1], port).into();
    let registered = Arc::new(AtomicU32::new(0));
    let seen = registered.clone();
    let mut supervisor = Supervisor::start(
        listen,
        [0],
        factory,
        Box::new(|cpu, listener| Ok(WorkerOptions::new(cpu, listener))),
        Box::new(move |_, _| {
            seen.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }),
    )
    .unwrap();
    let started = Instant::now();
    while supervisor.check() > 0 || supervisor.stats.restarts.load(Ordering::SeqCst) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never restarted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        registered.load(Ordering::SeqCst),
        2,
        "the new listener was registered"
    );
    let mut s = connect(listen);
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut s, &mut Vec::new()).unwrap().0, 200);
    assert_eq!(
        supervisor.check(),
        0,
        "the restarted worker is still running"
    );
    drop(s);
    let results = supervisor.stop();
    assert!(results.iter().all(Result::is_ok));
}

#[test]
fn connections_past_the_workers_cap_are_closed_at_once_and_counted() {
    let counters = Arc::new(WorkerCounters::default());
    let w = start_with(
        HttpLimits {
            max_connections: 2,
            ..Default::default()
        },
        counters.clone(),
    );
    let mut held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = connect(w.addr);
            s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
            assert_eq!(read_response(&mut s, &mut Vec::new()).unwrap().0, 200);
            s
        })
        .collect();
    // A third: accepted by the kernel, closed by the worker without a response.
    let mut third = connect(w.addr);
    let _ = third.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut buf = Vec::new();
    assert!(closed_by_server(&mut third, &mut buf));
    assert!(buf.is_empty(), "{}", String::from_utf8_lossy(&buf));
    assert_eq!(counters.connections_refused.load(Ordering::Relaxed), 1);
    // One held connection goes; a new one is served.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = connect(w.addr);
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        if read_response(&mut s, &mut Vec::new()).is_some_and(|r| r.0 == 200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no connection served after one closed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(held);
    stop(w);
}
