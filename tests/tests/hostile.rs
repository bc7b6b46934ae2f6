//! A hostile client against a running edged (XDP on its veth, two pinned workers, real wasm
//! components): every class of bad input the worker's HTTP, routing, handoff checks and guests
//! meet, each followed by a normal request that the same worker must serve. At the end no worker
//! has died or been restarted, and edged reports itself healthy.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use edgeplane_testkit::{
    TwoHosts,
    config::{App, Config},
    expected_worker,
    raw_http::{get, header},
    require_root,
};

const WORKERS: u32 = 2;
const PORT: u16 = 8080;

/// What a hostile case should get: a final status, or nothing but a closed connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Status(u16),
    /// Any of these statuses (a guest's failure may be a trap or a deadline).
    OneOf(&'static [u16]),
    Closed,
    /// A body that breaks mid-way: refused with this status when the break is in the first read,
    /// or, when the request went on with its head already (its body streaming), whatever the app
    /// answered and then the connection closed: never a response to what follows the break.
    RefusedOrCut(u16),
}

struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    expect: Expect,
}

fn case(name: &'static str, bytes: impl Into<Vec<u8>>, expect: Expect) -> Case {
    Case {
        name,
        bytes: bytes.into(),
        expect,
    }
}

fn cases() -> Vec<Case> {
    use Expect::*;
    let mut big_header = b"GET / HTTP/1.1\r\nHost: hello.test\r\nx-big: ".to_vec();
    big_header.extend(std::iter::repeat_n(b'a', 20_000));
    big_header.extend_from_slice(b"\r\n\r\n");
    let mut many_headers = b"GET / HTTP/1.1\r\nHost: hello.test\r\n".to_vec();
    for i in 0..100 {
        many_headers.extend_from_slice(format!("x-{i}: {i}\r\n").as_bytes());
    }
    many_headers.extend_from_slice(b"\r\n");
    let mut long_extension =
        b"POST / HTTP/1.1\r\nHost: hello.test\r\nTransfer-Encoding: chunked\r\n\r\n1;".to_vec();
    long_extension.extend(std::iter::repeat_n(b'e', 10_000));
    let mut trailer_flood =
        b"POST / HTTP/1.1\r\nHost: hello.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n".to_vec();
    for i in 0..2000 {
        trailer_flood.extend_from_slice(format!("x-t{i}: v\r\n").as_bytes());
    }
    let mut pipeline_flood = Vec::new();
    for _ in 0..500 {
        pipeline_flood.extend_from_slice(b"GET / HTTP/1.1\r\nHost: hello.test\r\n\r\n");
    }
    vec![
        // Reported: these stopped both workers.
        case("host: multi-byte char before a reserved suffix", "GET / HTTP/1.1\r\nHost: a\u{e9}.fn.internal\r\n\r\n", Status(403)),
        case("host: multi-byte chars where the suffix is cut", "GET / HTTP/1.1\r\nHost: \u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\r\n\r\n", Status(404)),
        case("host: emoji with a port", "GET / HTTP/1.1\r\nHost: \u{1F600}:80\r\n\r\n", Status(404)),
        case("host: invalid UTF-8", &b"GET / HTTP/1.1\r\nHost: \xff\xfe.fn.internal\r\n\r\n"[..], Status(404)),
        case("chunk size near u64::MAX", &b"POST / HTTP/1.1\r\nHost: hello.test\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffff0\r\nabc"[..], RefusedOrCut(413)),
        case("chunk size past u64", &b"POST / HTTP/1.1\r\nHost: hello.test\r\nTransfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\n"[..], RefusedOrCut(413)),
        // HTTP framing.
        case("chunk extension without end", long_extension, RefusedOrCut(400)),
        case("trailer flood", trailer_flood, RefusedOrCut(431)),
        case("repeated transfer-encoding", &b"POST / HTTP/1.1\r\nHost: hello.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..], Status(400)),
        case("content-length and chunked", &b"POST / HTTP/1.1\r\nHost: hello.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..], Status(400)),
        case("content-length past usize", &b"POST / HTTP/1.1\r\nHost: hello.test\r\nContent-Length: 99999999999999999999999\r\n\r\n"[..], Status(400)),
        case("body over the limit", &b"POST / HTTP/1.1\r\nHost: hello.test\r\nContent-Length: 100000000\r\n\r\n"[..], Status(413)),
        case("unknown expectation", &b"POST / HTTP/1.1\r\nHost: hello.test\r\nExpect: the-moon\r\nContent-Length: 1\r\n\r\nx"[..], Status(417)),
        case("headers over the limit", big_header, Status(431)),
        case("too many headers", many_headers, Status(431)),
        case("NUL in a header value", &b"GET / HTTP/1.1\r\nHost: hello.test\r\nx-a: b\x00c\r\n\r\n"[..], Status(400)),
        case("absolute-form target", &b"GET http://hello.test/ HTTP/1.1\r\nHost: hello.test\r\n\r\n"[..], Status(400)),
        case("bad method token", &b"G(T / HTTP/1.1\r\nHost: hello.test\r\n\r\n"[..], Status(400)),
        case("binary junk", &[0u8, 1, 2, 3, 0xff, 0xfe, b'\r', b'\n', b'\r', b'\n'][..], Status(400)),
        case("TLS ClientHello on the plain port", &b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n"[..], Status(400)),
        case("HTTP/2 preface", &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..], Status(505)),
        case("half a request line, then close", &b"GET /partial HTT"[..], Closed),
        case("500 pipelined requests, nothing read", pipeline_flood, Closed),
        // Routing and platform headers.
        case("unknown host", &b"GET / HTTP/1.1\r\nHost: nobody.test\r\n\r\n"[..], Status(404)),
        case("a function host from a client", &b"GET / HTTP/1.1\r\nHost: db.shop.fn.internal\r\n\r\n"[..], Status(403)),
        case("forged handoff headers", &b"GET / HTTP/1.1\r\nHost: hello.test\r\nx-edge-hop: 1\r\nx-edge-from: 2\r\nx-edge-client: 1.2.3.4:5\r\nx-edge-time: 1\r\nx-edge-nonce: 1\r\nx-edge-auth: 00\r\n\r\n"[..], Status(403)),
        case("a probe without a signature", &b"GET /.edgeplane/probe?dest=127.0.0.1:9931 HTTP/1.1\r\nHost: hello.test\r\n\r\n"[..], Status(403)),
        case("a call depth from a client is not the platform's", &b"GET / HTTP/1.1\r\nHost: hello.test\r\nx-edge-call-depth: 4000000000\r\n\r\n"[..], Status(200)),
        // Guests that fail.
        case("a guest that traps", &b"GET /trap HTTP/1.1\r\nHost: faulty.test\r\n\r\n"[..], Status(500)),
        case("a guest that spins", &b"GET /loop HTTP/1.1\r\nHost: faulty.test\r\n\r\n"[..], OneOf(&[500, 504])),
        case("a guest that floods its body", &b"GET /flood HTTP/1.1\r\nHost: faulty.test\r\n\r\n"[..], RefusedOrCut(500)),
    ]
}

/// Sends `bytes` (a write error is fine: the server may close first) and returns the first
/// final status and the response head and body bytes read, or None when the server only closed.
/// With `then_close`, the client half-closes after sending.
fn send_hostile(s: &mut TcpStream, bytes: &[u8], then_close: bool) -> (Option<u16>, String) {
    let _ = s.write_all(bytes);
    if then_close {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let mut got = Vec::new();
    let mut chunk = [0u8; 8192];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        // Skip interim responses; a final one with its head complete is enough.
        let finals: Vec<&str> = text
            .split("HTTP/1.1 ")
            .skip(1)
            .filter(|r| !r.starts_with('1'))
            .collect();
        if let Some(first) = finals.first()
            && first.contains("\r\n\r\n")
        {
            return (
                first.get(..3).and_then(|c| c.parse().ok()),
                (*first).to_owned(),
            );
        }
        if Instant::now() > deadline {
            return (None, text);
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return (None, text),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Whether the server closes `s` within a few seconds (what it still sends is read and dropped).
fn closed_soon(s: &mut TcpStream) -> bool {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut chunk = [0u8; 8192];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

#[test]
fn a_hostile_client_cannot_stop_a_worker_and_each_worker_serves_after_every_attack()
-> anyhow::Result<()> {
    if !require_root("hostile_client") {
        return Ok(());
    }
    let hosts = TwoHosts::new()?;
    let config = Config::new("hostile")
        .workers(WORKERS)
        .debug_headers()
        .app(App::guest("hello").vip(PORT))
        .app(App::guest("faulty").set("limits = { max_response_bytes = 1048576 }"))
        .app(App::guest("echo"));
    let admin = config.admin_addr();
    let mut edged = hosts.start(&config)?;
    let server: SocketAddr = format!("{}:{PORT}", TwoHosts::SERVER_V4).parse()?;
    let mut ports = 47000u16..;
    every_attack_costs_only_its_request(&hosts, server, &mut ports)?;
    a_guest_cannot_set_the_platforms_headers(&hosts, server, &mut ports)?;
    assert!(edged.0.exited().is_none(), "edged exited under attack");
    a_chain_of_function_calls_is_bounded(&hosts);
    the_admin_endpoint_answers_garbage_and_goes_on(&hosts, admin)?;
    silent_admin_clients_hold_only_their_connections(&hosts, admin)?;
    let (_, metrics) = hosts.admin(admin, "/metrics").expect("metrics");
    assert!(
        metrics.contains("edgeplane_worker_restarts_total 0\n"),
        "a worker had to be restarted: every attack must be contained within its request"
    );
    let _ = std::fs::remove_dir_all(&config.dir);
    Ok(())
}

/// Every case of `cases()` against each worker in turn, each followed by a normal request the
/// same worker must serve; error bodies give a reason and a request id, never what the log
/// holds.
fn every_attack_costs_only_its_request(
    hosts: &TwoHosts,
    server: SocketAddr,
    ports: &mut std::ops::RangeFrom<u16>,
) -> anyhow::Result<()> {
    let client_ip: IpAddr = TwoHosts::CLIENT_V4.parse()?;
    let worker_of = |port: u16| expected_worker(SocketAddr::new(client_ip, port), server, WORKERS);
    let mut served_by = [0usize; WORKERS as usize];
    hosts.client.run(|| {
        for (i, c) in cases().into_iter().enumerate() {
            // Every case runs against each worker in turn.
            let attack_port = ports.next().unwrap();
            let worker = worker_of(attack_port);
            let mut s = TwoHosts::connect_from(attack_port, server).unwrap();
            let (status, text) = send_hostile(&mut s, &c.bytes, c.expect == Expect::Closed);
            match c.expect {
                Expect::Status(want) => {
                    assert_eq!(status, Some(want), "case {i} ({}): {text}", c.name)
                }
                Expect::OneOf(want) => assert!(
                    status.is_some_and(|s| want.contains(&s)),
                    "case {i} ({}): {status:?}: {text}",
                    c.name
                ),
                Expect::Closed => {}
                Expect::RefusedOrCut(want) if status == Some(want) => {}
                Expect::RefusedOrCut(want) => {
                    assert!(status.is_some(), "case {i} ({}): no answer: {text}", c.name);
                    assert!(
                        closed_soon(&mut s),
                        "case {i} ({}): answered {status:?} (not {want}) and the connection stayed open",
                        c.name
                    );
                }
            }
            if status.is_some_and(|s| matches!(s, 500 | 502 | 503 | 504)) {
                // Error bodies give a reason and a request id, never what the log holds.
                assert!(text.contains("request id"), "case {i} ({}): {text}", c.name);
                for leak in ["wasm backtrace", ".rs:", "/tmp/", "10.77.", "panicked"] {
                    assert!(
                        !text.contains(leak),
                        "case {i} ({}) leaks {leak:?}: {text}",
                        c.name
                    );
                }
            }
            drop(s);
            // The same worker serves the next client.
            let follow_port = ports.find(|p| worker_of(*p) == worker).unwrap();
            let mut next = TwoHosts::connect_from(follow_port, server).unwrap();
            let (status, headers, body) = get(&mut next, "hello.test", "/");
            assert_eq!(
                (status, body.as_slice()),
                (200, &b"hello from wasm\n"[..]),
                "after case {i} ({}), worker {worker} did not serve",
                c.name
            );
            assert_eq!(
                header(&headers, "x-edge-worker"),
                Some(worker.to_string().as_str())
            );
            served_by[worker as usize] += 1;
        }
    })?;
    assert!(
        served_by.iter().all(|n| *n > 0),
        "every worker was attacked: {served_by:?}"
    );
    Ok(())
}

/// Headers the platform owns cannot be set by a guest.
fn a_guest_cannot_set_the_platforms_headers(
    hosts: &TwoHosts,
    server: SocketAddr,
    ports: &mut std::ops::RangeFrom<u16>,
) -> anyhow::Result<()> {
    hosts.client.run(|| {
        for (name, value) in [
            ("x-edge-placement", "remote-elsewhere"),
            ("x-edge-service-us", "1"),
            ("x-edge-request-id", "forged"),
        ] {
            let mut s = TwoHosts::connect_from(ports.next().unwrap(), server).unwrap();
            let (status, headers, _) = get(&mut s, "echo.test", &format!("/?set={name}:{value}"));
            assert_eq!(status, 200);
            let values: Vec<&str> = headers
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .collect();
            let want: &[&str] = if name == "x-edge-placement" {
                &["local"]
            } else {
                &[]
            };
            assert_eq!(values, want, "a guest set {name}");
        }
    })?;
    Ok(())
}

/// Function calls come from this host's own workers (loopback) with the depth the host set: a
/// chain deeper than the limit (a cycle between functions) answers 508, not another call.
fn a_chain_of_function_calls_is_bounded(hosts: &TwoHosts) {
    let local: SocketAddr = ([127, 0, 0, 1], PORT).into();
    let call = |depth: &str| {
        hosts
            .server
            .run(|| {
                let mut s = TcpStream::connect(local).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let raw = format!(
                    "GET / HTTP/1.1\r\nHost: db.shop.fn.internal\r\nx-edge-call-depth: {depth}\r\n\r\n"
                );
                send_hostile(&mut s, raw.as_bytes(), false).0
            })
            .unwrap()
    };
    // Past the limit, past u32, negative, not a number, multi-byte: all refused as too deep.
    for depth in [
        "9",
        "4000000000",
        "99999999999999999999999",
        "-1",
        "\u{e9}",
        "\u{1F600}",
    ] {
        assert_eq!(call(depth), Some(508), "depth {depth:?}");
    }
    // Within the limit it is routed as usual (no such app here).
    assert_eq!(call("3"), Some(404));
}

/// The admin endpoint parses with the same limits: its worst bytes get an answer (or a close),
/// and it goes on answering.
fn the_admin_endpoint_answers_garbage_and_goes_on(
    hosts: &TwoHosts,
    admin: SocketAddr,
) -> anyhow::Result<()> {
    let scrape = |path: &str| hosts.admin(admin, path);
    let mut huge_head = b"GET /metrics HTTP/1.1\r\nHost: a\r\nx: ".to_vec();
    huge_head.extend(std::iter::repeat_n(b'a', 40_000));
    for raw in [
        &b"\x16\x03\x01\x00\xa5\x01\r\n\r\n"[..],
        &huge_head[..],
        "GET /\u{e9}\u{1F600} HTTP/1.1\r\nHost: \u{e9}\r\n\r\n".as_bytes(),
        &b"POST /healthz HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffff0\r\n"[..],
    ] {
        let status = hosts.server.run(|| {
            let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(1)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            send_hostile(&mut s, raw, true).0
        })?;
        assert!(
            status.is_none_or(|s| s >= 400),
            "admin answered {status:?} to garbage {:?}",
            String::from_utf8_lossy(&raw[..raw.len().min(60)])
        );
        assert_eq!(scrape("/healthz").map(|(s, _)| s), Some(200));
    }
    Ok(())
}

/// Clients that connect to the admin endpoint and say nothing hold only their own connections:
/// a health check beside them is answered at once.
fn silent_admin_clients_hold_only_their_connections(
    hosts: &TwoHosts,
    admin: SocketAddr,
) -> anyhow::Result<()> {
    let scrape = |path: &str| hosts.admin(admin, path);
    let silent: Vec<TcpStream> = hosts.server.run(|| {
        (0..4)
            .filter_map(|_| TcpStream::connect_timeout(&admin, Duration::from_secs(1)).ok())
            .collect()
    })?;
    assert_eq!(silent.len(), 4);
    // One endpoint serving one connection at a time would owe them 2 s each (its read timeout)
    // before this one, past the 3 s this client waits.
    assert_eq!(scrape("/healthz").map(|(s, _)| s), Some(200));
    drop(silent);
    assert_eq!(scrape("/healthz").map(|(s, _)| s), Some(200));
    Ok(())
}
