//! The handoff client against a real peer socket that misbehaves as a peer can: interim (1xx)
//! responses before the answer, a pooled connection closed after the request was written. No
//! response is taken for another request's, and a POST is never sent twice.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use edgeplane_dataplane::{
    client::{ConnPool, PoolConfig},
    handoff::{
        Handoff, HandoffConfig, KeyRing, LiveKeys, Peer, PeerHealth, PeerKeys, ReplayGuard,
        SecretKey,
    },
    http::{HttpLimits, ParseOutcome, Request, Response, parse_request},
};

const PEER: u32 = 2;

fn handoff(addr: SocketAddr) -> Handoff {
    Handoff::new(
        HandoffConfig {
            self_id: 1,
            keys: Arc::new(LiveKeys::new(KeyRing::new(
                [(
                    PEER,
                    PeerKeys {
                        sign: Some(SecretKey {
                            id: 1,
                            secret: b"test key, 32 bytes long.........".to_vec(),
                        }),
                        accept: Vec::new(),
                    },
                )]
                .into(),
            ))),
            peers: vec![Peer {
                id: PEER,
                name: "dc2".into(),
                handoff: vec![addr],
                probe: vec![addr],
            }],
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            max_response_bytes: 1 << 20,
            health: Arc::new(PeerHealth::new([PEER])),
            replay: Arc::new(ReplayGuard::default()),
            tls: None,
        },
        Arc::new(ConnPool::new(PoolConfig::default())),
    )
}

/// Reads one request (head and Content-Length body) from `s`; None at EOF.
fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Request> {
    loop {
        if let Ok(ParseOutcome::Complete(req, used)) = parse_request(buf, &HttpLimits::default()) {
            buf.drain(..used);
            return Some(req);
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A relayed response with its streamed part read.
async fn whole(resp: Response) -> Response {
    resp.into_whole(1 << 20).await.expect("a whole body")
}

#[test]
fn interim_responses_are_skipped_and_a_pooled_connection_carries_no_stale_answer() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = Vec::new();
        let mut seen = Vec::new();
        while let Some(req) = read_request(&mut s, &mut buf) {
            seen.push((
                req.method.clone(),
                req.header("expect").is_some(),
                req.body.clone(),
            ));
            let answer: &[u8] = if seen.len() == 1 {
                // Two interim responses, then the answer, in separate writes.
                s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").unwrap();
                s.write_all(b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n")
                    .unwrap();
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst"
            } else {
                b"HTTP/1.1 201 Created\r\ncontent-length: 6\r\n\r\nsecond"
            };
            s.write_all(answer).unwrap();
        }
        seen
    });
    let h = handoff(addr);
    edgeplane_testkit::block_on(async {
        let first = h
            .forward(
                PEER,
                edgeplane_testkit::request(
                    "POST /a HTTP/1.1\r\nHost: app.test\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
                ),
                "192.0.2.1:1000",
            )
            .await
            .unwrap();
        let first = whole(first).await;
        assert_eq!((first.status, first.body.as_slice()), (200, &b"first"[..]));
        // The same pooled connection: this request gets its own answer.
        let second = h
            .forward(
                PEER,
                edgeplane_testkit::request(
                    "PUT /b HTTP/1.1\r\nHost: app.test\r\nContent-Length: 2\r\n\r\nxy",
                ),
                "192.0.2.1:1000",
            )
            .await
            .unwrap();
        let second = whole(second).await;
        assert_eq!(
            (second.status, second.body.as_slice()),
            (201, &b"second"[..])
        );
    });
    drop(h);
    let seen = peer.join().unwrap();
    assert_eq!(
        seen,
        [
            ("POST".to_owned(), false, b"abc".to_vec()),
            ("PUT".to_owned(), false, b"xy".to_vec())
        ],
        "one connection, each request once, without the client's Expect"
    );
}

#[test]
fn a_post_on_a_pooled_connection_closed_after_it_was_written_is_not_sent_again() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let counted = received.clone();
    let peer = std::thread::spawn(move || {
        listener.set_nonblocking(false).expect("blocking listener");
        let mut connections = 0;
        // Each connection answers one request, then closes when the next arrives without
        // answering it: as a peer that dies mid-request.
        while connections < 3 {
            let Ok((mut s, _)) = listener.accept() else {
                break;
            };
            connections += 1;
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut buf = Vec::new();
            let mut answered = 0;
            while let Some(req) = read_request(&mut s, &mut buf) {
                counted.fetch_add(1, Ordering::SeqCst);
                if answered == 1 {
                    break;
                }
                answered += 1;
                let body = req.method.as_bytes();
                s.write_all(
                    format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).as_bytes(),
                )
                .unwrap();
                s.write_all(body).unwrap();
            }
        }
    });
    let h = handoff(addr);
    edgeplane_testkit::block_on(async {
        let get = || edgeplane_testkit::request("GET / HTTP/1.1\r\nHost: app.test\r\n\r\n");
        assert_eq!(
            whole(h.forward(PEER, get(), "c").await.unwrap()).await.body,
            b"GET"
        );
        // The peer takes this POST on the pooled connection and closes: it may have run it.
        let post = edgeplane_testkit::request(
            "POST /pay HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1\r\n\r\n1",
        );
        let e = h.forward(PEER, post, "c").await.unwrap_err();
        assert!(e.may_have_reached_peer(), "{e}");
        assert_eq!(received.load(Ordering::SeqCst), 2, "the POST was sent once");
        // A GET in the same situation is retried on a new connection, and answered there.
        assert_eq!(
            whole(h.forward(PEER, get(), "c").await.unwrap()).await.body,
            b"GET"
        );
        assert_eq!(received.load(Ordering::SeqCst), 3);
        assert_eq!(
            whole(h.forward(PEER, get(), "c").await.unwrap()).await.body,
            b"GET"
        );
        assert_eq!(
            received.load(Ordering::SeqCst),
            5,
            "the GET went out twice: on the dead pooled connection, then on a new one"
        );
    });
    drop(h);
    let _ = TcpStream::connect(addr);
    let _ = peer.join();
}

#[test]
fn a_peers_worst_bytes_fail_that_handoff_only_and_the_next_is_served() {
    // Each answer a peer (or anyone on its path) could send to wreck the parser: sizes near
    // u64::MAX, an endless chunk extension, a service time that would overflow the RTT sum,
    // multi-byte header values. Each is followed, on a new connection, by a good answer.
    let mut endless = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1;".to_vec();
    endless.extend(std::iter::repeat_n(b'e', 64 << 10));
    let bad: Vec<(Vec<u8>, bool)> = vec![
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nfffffffffffffff0\r\nabc".to_vec(),
            false,
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1ffffffffffffffff\r\n".to_vec(),
            false,
        ),
        (endless, false),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999999\r\n\r\n".to_vec(),
            false,
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 18446744073709551615\r\n\r\n".to_vec(),
            false,
        ),
        // Answers that parse: kept, and nothing overflows on the way.
        (
            b"HTTP/1.1 200 OK\r\nx-edge-service-us: 18446744073709551615\r\ncontent-length: 2\r\n\r\nok".to_vec(),
            true,
        ),
        (
            "HTTP/1.1 200 OK\r\nx-name: \u{e9}\u{1F600}\r\ncontent-length: 2\r\n\r\nok"
                .as_bytes()
                .to_vec(),
            true,
        ),
    ];
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let answers: Vec<Vec<u8>> = bad
        .iter()
        .flat_map(|(b, _)| {
            [
                b.clone(),
                b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\ngood".to_vec(),
            ]
        })
        .collect();
    let peer = std::thread::spawn(move || {
        for answer in answers {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = Vec::new();
            if read_request(&mut s, &mut buf).is_some() {
                let _ = s.write_all(&answer);
            }
            // Closing makes an incomplete answer final (a peer that stopped mid-body).
        }
    });
    let h = handoff(addr);
    edgeplane_testkit::block_on(async {
        for (i, (_, parses)) in bad.iter().enumerate() {
            let get = || edgeplane_testkit::request("GET / HTTP/1.1\r\nHost: app.test\r\n\r\n");
            // A body that breaks comes out as a failed stream: read whole, it is an error.
            let got = match h.forward(PEER, get(), "c").await {
                Ok(resp) => resp.into_whole(1 << 20).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            assert_eq!(got.is_ok(), *parses, "answer {i}: {got:?}");
            let next = whole(h.forward(PEER, get(), "c").await.unwrap()).await;
            assert_eq!(next.body, b"good", "after answer {i}");
        }
    });
    peer.join().unwrap();
}
