//! The wasm runtime with real components: hello, echo, a trapping and a looping guest, a memory
//! hog, subrequests to a real local backend, the disk code cache, and a public wstd example.

use std::{
    io::{Read, Write},
    net::TcpListener,
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use edgeplane_dataplane::{
    http::Request,
    wasm::{AppLimits, AppRuntime, HandleError},
};
use edgeplane_testkit::{runtime, spec, tempdir};

#[test]
fn hello_and_echo_components_serve() {
    let cache = tempdir("cache-hello");
    let rt = runtime(
        vec![
            spec("hello", edgeplane_testkit::app("hello")),
            spec("echo", edgeplane_testkit::app("echo")),
        ],
        &cache,
    );
    edgeplane_testkit::block_on(async {
        let r =
            edgeplane_testkit::handle(&rt, "hello", "GET / HTTP/1.1\r\nHost: hello.test\r\n\r\n")
                .await
                .unwrap();
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, &b"hello from wasm\n"[..])
        );
        let r = edgeplane_testkit::handle(
            &rt,
            "echo",
            "PUT /p?q=1 HTTP/1.1\r\nHost: e\r\nContent-Length: 7\r\n\r\npayload",
        )
        .await
        .unwrap();
        assert_eq!(r.body, b"payload");
        let header = |n: &str| {
            r.headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(header("x-echo-method").as_deref(), Some("PUT"));
        assert_eq!(header("x-echo-path").as_deref(), Some("/p?q=1"));
        let err = edgeplane_testkit::handle(&rt, "nope", "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap_err();
        assert_eq!(err.status(), 404);
        // Instantiation alone (the bench's store+instantiate) runs under the CPU deadline too.
        tokio::time::sleep(Duration::from_millis(20)).await;
        rt.instantiate("hello").await.unwrap();
        assert_eq!(rt.instantiate("nope").await.unwrap_err().status(), 404);
    });
    assert!(rt.is_resident("hello") && rt.is_resident("echo"));
}

#[test]
fn guests_that_trap_loop_hog_memory_flood_or_cut_their_body_fail_cleanly_and_the_next_succeeds() {
    let cache = tempdir("cache-faulty");
    let mut faulty = spec("faulty", edgeplane_testkit::app("faulty"));
    faulty.limits = AppLimits {
        cpu_deadline: Duration::from_millis(100),
        max_memory_bytes: 16 << 20,
        max_response_bytes: 1 << 20,
        ..Default::default()
    };
    let rt = runtime(vec![faulty], &cache);
    edgeplane_testkit::block_on(async {
        let ok = |rt: Rc<AppRuntime>| async move {
            let r = rt
                .handle(
                    "faulty",
                    edgeplane_testkit::request("GET /ok HTTP/1.1\r\nHost: f\r\n\r\n"),
                )
                .await
                .unwrap();
            assert_eq!(r.body, b"faulty app is fine\n");
        };
        // A failure is expected: should a response come instead, its status and length say
        // enough (a flood's body would not).
        let fails = |rt: Rc<AppRuntime>, path: &'static str| async move {
            read_whole(
                rt,
                "faulty",
                edgeplane_testkit::request(&format!("GET {path} HTTP/1.1\r\nHost: f\r\n\r\n")),
            )
            .await
            .map(|(status, body)| (status, body.len()))
            .unwrap_err()
        };
        let err = fails(rt.clone(), "/trap").await;
        assert!(matches!(err, HandleError::Trap { .. }), "{err}");
        assert_eq!(err.status(), 500);
        ok(rt.clone()).await;

        let started = Instant::now();
        let err = fails(rt.clone(), "/loop").await;
        assert!(
            matches!(err, HandleError::Deadline { which: "cpu", .. }),
            "{err}"
        );
        assert_eq!(err.status(), 504);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the loop must be interrupted"
        );
        ok(rt.clone()).await;

        let err = fails(rt.clone(), "/alloc").await;
        assert_eq!(err.status(), 500, "{err}");
        ok(rt.clone()).await;

        // A body that never ends is cut off at the limit, not buffered until the deadline.
        let err = fails(rt.clone(), "/flood").await;
        assert!(
            matches!(err, HandleError::ResponseTooLarge { limit, .. } if limit == 1 << 20),
            "{err}"
        );
        assert_eq!(err.status(), 500);
        ok(rt.clone()).await;

        // The response was set and 3 KiB of its body written: a cut body must not pass as whole.
        let err = fails(rt.clone(), "/truncate").await;
        assert!(matches!(err, HandleError::Trap { .. }), "{err}");
        ok(rt.clone()).await;
    });
}

/// A request's outcome once its body is read to the end, streamed part included: a response
/// whose body fails mid-stream is the guest's failure.
async fn read_whole(
    rt: Rc<AppRuntime>,
    app: &str,
    req: Request,
) -> Result<(u16, Vec<u8>), HandleError> {
    use http_body_util::BodyExt as _;
    let mut r = rt.handle(app, req).await?;
    if let Some(stream) = r.stream.take() {
        match stream.into_body().collect().await {
            Ok(rest) => r.body.extend_from_slice(&rest.to_bytes()),
            Err(e) => return Err(e.downcast::<HandleError>().expect("a guest's failure")),
        }
    }
    Ok((r.status, r.body))
}

fn header<'a>(r: &'a edgeplane_dataplane::http::Response, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn instances_are_fresh_by_default_and_reused_up_to_the_configured_count_when_opted_in() {
    let cache = tempdir("cache-reuse");
    // Both builds of hello: the no_std one and the std + wstd one must behave the same.
    let builds = ["hello", "hello-wstd"];
    let mut apps = vec![];
    for build in builds {
        apps.push(spec(
            &format!("{build}/fresh"),
            edgeplane_testkit::app(build),
        ));
        let mut reused = spec(&format!("{build}/reused"), edgeplane_testkit::app(build));
        reused.limits.instance_reuse = 3;
        apps.push(reused);
    }
    let mut faulty = spec("faulty", edgeplane_testkit::app("faulty"));
    faulty.limits.instance_reuse = 100;
    apps.push(faulty);
    let rt = runtime(apps, &cache);
    edgeplane_testkit::block_on(async {
        let served_by = |app: String| {
            let rt = rt.clone();
            async move {
                let r = rt
                    .handle(
                        &app,
                        edgeplane_testkit::request("GET / HTTP/1.1\r\nHost: h\r\n\r\n"),
                    )
                    .await
                    .unwrap();
                assert_eq!(r.body, b"hello from wasm\n", "{app}");
                header(&r, "x-instance-requests").unwrap().to_owned()
            }
        };
        for build in builds {
            let mut fresh = vec![];
            let mut warm = vec![];
            for _ in 0..7 {
                fresh.push(served_by(format!("{build}/fresh")).await);
                warm.push(served_by(format!("{build}/reused")).await);
            }
            assert_eq!(
                fresh, ["1"; 7],
                "{build}: the default is a fresh instance per request"
            );
            assert_eq!(warm, ["1", "2", "3", "1", "2", "3", "1"], "{build}");
        }

        // A reused instance that traps is thrown away, and the next request still succeeds.
        let get = |path: &'static str| {
            let rt = rt.clone();
            async move {
                rt.handle(
                    "faulty",
                    edgeplane_testkit::request(&format!("GET {path} HTTP/1.1\r\nHost: f\r\n\r\n")),
                )
                .await
            }
        };
        assert!(get("/ok").await.is_ok());
        assert_eq!(get("/trap").await.unwrap_err().status(), 500);
        let r = get("/ok").await.unwrap();
        assert_eq!(r.body, b"faulty app is fine\n");
    });
}

/// A tiny HTTP/1.1 backend on loopback answering every request with `pong`.
fn backend() -> (String, std::thread::JoinHandle<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    listener.set_nonblocking(false).unwrap();
    let handle = std::thread::spawn(move || {
        let mut served = 0;
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    let mut buf = [0u8; 2048];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = s.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\npong",
                    );
                    served += 1;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
            if served >= 3 {
                break;
            }
        }
        served
    });
    (addr, handle)
}

#[test]
fn fetcher_calls_an_allowed_backend_and_is_timed_and_a_disallowed_one_is_refused() {
    let (addr, server) = backend();
    let cache = tempdir("cache-fetcher");
    let mut allowed = spec("fetcher", edgeplane_testkit::app("fetcher"));
    allowed.env = vec![("BACKEND_URL".into(), format!("http://{addr}/data"))];
    allowed.allowed_backends = vec![addr.clone()];
    let mut denied = spec("fetcher-denied", edgeplane_testkit::app("fetcher"));
    denied.env = allowed.env.clone();
    let rt = runtime(vec![allowed, denied], &cache);
    edgeplane_testkit::block_on(async {
        let r = edgeplane_testkit::handle(&rt, "fetcher", "GET /?k=3 HTTP/1.1\r\nHost: f\r\n\r\n")
            .await
            .unwrap();
        let summary: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            summary["statuses"],
            serde_json::json!([200, 200, 200]),
            "{summary}"
        );
        assert_eq!(summary["bytes"], 12);
        let r = edgeplane_testkit::handle(
            &rt,
            "fetcher-denied",
            "GET /?k=2 HTTP/1.1\r\nHost: f\r\n\r\n",
        )
        .await
        .unwrap();
        let summary: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let statuses = summary["statuses"].as_array().unwrap();
        assert!(
            statuses
                .iter()
                .all(|s| s.as_str().is_some_and(|s| s.contains("error"))),
            "{summary}"
        );
    });
    assert_eq!(
        server.join().unwrap(),
        3,
        "the backend saw exactly the allowed subrequests"
    );
    let obs = rt.observations().snapshot();
    let ok = obs
        .iter()
        .find(|o| o.app == "fetcher")
        .expect("observations for fetcher");
    assert_eq!(
        (ok.destination.as_str(), ok.count, ok.failures),
        (addr.as_str(), 3, 0)
    );
    assert!(ok.p50_us > 0);
    let no = obs
        .iter()
        .find(|o| o.app == "fetcher-denied")
        .expect("observations for the denied app");
    assert_eq!((no.count, no.denied), (0, 2));
}

#[test]
fn a_guest_waiting_on_a_backend_past_its_wall_deadline_answers_504_and_the_next_request_succeeds() {
    // A backend that takes the connection and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let cache = tempdir("cache-wall");
    let mut fetcher = spec("fetcher", edgeplane_testkit::app("fetcher"));
    fetcher.env = vec![("BACKEND_URL".into(), format!("http://{addr}/slow"))];
    fetcher.allowed_backends = vec![addr];
    let wall = Duration::from_millis(300);
    fetcher.limits.wall_deadline = wall;
    let rt = runtime(
        vec![fetcher, spec("hello", edgeplane_testkit::app("hello"))],
        &cache,
    );
    edgeplane_testkit::block_on(async {
        let started = Instant::now();
        let e = edgeplane_testkit::handle(&rt, "fetcher", "GET /?k=1 HTTP/1.1\r\nHost: f\r\n\r\n")
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                HandleError::Deadline {
                    which: "wall-clock",
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(e.status(), 504);
        // Waiting is not computing: the CPU deadline (100 ms) did not end it, the wall one did.
        assert!(
            started.elapsed() >= wall,
            "ended after {:?}",
            started.elapsed()
        );
        assert_eq!(rt.in_flight(), 0, "the abandoned request still counts");
        let r = edgeplane_testkit::handle(&rt, "hello", "GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    });
    drop(silent);
}

#[test]
fn a_sleeping_guest_is_not_charged_cpu_but_one_that_spins_is_stopped_whatever_it_waits_on() {
    // A backend that takes the connection and never answers: the subrequest stays pending.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let cache = tempdir("cache-cpu");
    let mut faulty = spec("faulty", edgeplane_testkit::app("faulty"));
    faulty.env = vec![("BACKEND_URL".into(), format!("http://{addr}/never"))];
    faulty.allowed_backends = vec![addr];
    faulty.limits.cpu_deadline = Duration::from_millis(100);
    faulty.limits.wall_deadline = Duration::from_secs(20);
    let rt = runtime(vec![faulty], &cache);
    edgeplane_testkit::block_on(async {
        // 400 ms asleep on a 100 ms CPU budget: sleeping is waiting.
        let r = edgeplane_testkit::handle(
            &rt,
            "faulty",
            "GET /sleep?ms=400 HTTP/1.1\r\nHost: f\r\n\r\n",
        )
        .await
        .expect("a sleeping guest is not over its CPU budget");
        assert_eq!(r.body, b"slept 400 ms\n");
        // Spinning with a subrequest pending is computing: the CPU deadline ends it, long
        // before the wall deadline.
        let started = Instant::now();
        let e = edgeplane_testkit::handle(
            &rt,
            "faulty",
            "GET /spin-after-subrequest HTTP/1.1\r\nHost: f\r\n\r\n",
        )
        .await
        .unwrap_err();
        assert!(
            matches!(e, HandleError::Deadline { which: "cpu", .. }),
            "{e}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(rt.in_flight(), 0);
    });
    drop(silent);
}

#[test]
fn a_guest_spinning_past_its_wall_deadline_without_yielding_is_stopped() {
    let cache = tempdir("cache-wall-spin");
    let mut faulty = spec("faulty", edgeplane_testkit::app("faulty"));
    faulty.limits.cpu_deadline = Duration::from_secs(60);
    faulty.limits.wall_deadline = Duration::from_millis(300);
    let rt = runtime(vec![faulty], &cache);
    edgeplane_testkit::block_on(async {
        let e = edgeplane_testkit::handle(&rt, "faulty", "GET /loop HTTP/1.1\r\nHost: f\r\n\r\n")
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                HandleError::Deadline {
                    which: "wall-clock",
                    ..
                }
            ),
            "{e}"
        );
        // What the client is told: a reason and the request id, not the trap's detail.
        let resp = e.response("0123456789abcdef");
        let body = String::from_utf8_lossy(&resp.body).into_owned();
        assert!(body.contains("request id 0123456789abcdef"), "{body}");
        assert!(!body.contains("wasm") && !body.contains("faulty"), "{body}");
    });
}

#[test]
fn a_backend_name_that_resolves_to_loopback_is_refused_unless_allowed_by_address() {
    let (addr, server) = backend();
    let port = addr.rsplit(':').next().unwrap().to_owned();
    let cache = tempdir("cache-outbound");
    // Allowed by name, but the name is this host's loopback.
    let mut by_name = spec("by-name", edgeplane_testkit::app("fetcher"));
    by_name.env = vec![(
        "BACKEND_URL".into(),
        format!("http://localhost:{port}/data"),
    )];
    by_name.allowed_backends = vec![format!("localhost:{port}")];
    let rt = runtime(vec![by_name], &cache);
    edgeplane_testkit::block_on(async {
        let r = edgeplane_testkit::handle(&rt, "by-name", "GET /?k=2 HTTP/1.1\r\nHost: f\r\n\r\n")
            .await
            .unwrap();
        let summary: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let statuses = summary["statuses"].as_array().unwrap();
        assert!(
            statuses
                .iter()
                .all(|s| s.as_str().is_some_and(|s| s.contains("error"))),
            "{summary}"
        );
    });
    let obs = rt.observations().snapshot();
    let denied = obs.iter().find(|o| o.app == "by-name").unwrap();
    assert_eq!((denied.count, denied.denied), (0, 2));
    // The backend saw nothing; then the same runtime reaches it when named by address.
    drop(rt);
    let mut by_address = spec("by-address", edgeplane_testkit::app("fetcher"));
    by_address.env = vec![("BACKEND_URL".into(), format!("http://{addr}/data"))];
    by_address.allowed_backends = vec![addr.clone()];
    let rt = runtime(vec![by_address], &tempdir("cache-outbound-2"));
    edgeplane_testkit::block_on(async {
        let r =
            edgeplane_testkit::handle(&rt, "by-address", "GET /?k=3 HTTP/1.1\r\nHost: f\r\n\r\n")
                .await
                .unwrap();
        let summary: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            summary["statuses"],
            serde_json::json!([200, 200, 200]),
            "{summary}"
        );
    });
    assert_eq!(
        server.join().unwrap(),
        3,
        "only the subrequests by address arrived"
    );
}

#[test]
fn compiled_code_is_cached_on_disk_and_reused_by_the_next_runtime() {
    let cache = tempdir("cache-disk");
    let first = edgeplane_testkit::cold_runtime(
        vec![spec("hello", edgeplane_testkit::app("hello"))],
        &cache,
        0,
    )
    .0;
    first.preload("hello").unwrap();
    assert_eq!(first.cache_counters(), (1, 0, 0));
    let second = edgeplane_testkit::cold_runtime(
        vec![spec("hello", edgeplane_testkit::app("hello"))],
        &cache,
        0,
    )
    .0;
    second.preload("hello").unwrap();
    assert_eq!(
        second.cache_counters(),
        (0, 1, 0),
        "the second runtime loads the artifact instead of compiling"
    );
    edgeplane_testkit::block_on(async {
        let r = edgeplane_testkit::handle(&second, "hello", "GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    });
    // A corrupted artifact is detected and recompiled, not trusted.
    drop((first, second));
    for entry in std::fs::read_dir(&cache).unwrap() {
        std::fs::write(entry.unwrap().path(), b"not a wasmtime artifact").unwrap();
    }
    let third = edgeplane_testkit::cold_runtime(
        vec![spec("hello", edgeplane_testkit::app("hello"))],
        &cache,
        0,
    )
    .0;
    third.preload("hello").unwrap();
    assert_eq!(third.cache_counters(), (1, 0, 0));
}

#[test]
fn a_public_wstd_example_written_for_wasmtime_serve_runs_unchanged() {
    let cache = tempdir("cache-wstd");
    let rt = runtime(
        vec![spec(
            "wstd-example",
            edgeplane_testkit::wstd_example_server(),
        )],
        &cache,
    );
    edgeplane_testkit::block_on(async {
        let r = edgeplane_testkit::handle(&rt, "wstd-example", "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, &b"Hello, wasi:http/proxy world!\n"[..])
        );
        let r = edgeplane_testkit::handle(
            &rt,
            "wstd-example",
            "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
        )
        .await
        .unwrap();
        assert_eq!(r.body, b"abc");
    });
}

/// A keep-alive backend on loopback: answers every request on every connection with `pong`,
/// counting connections and requests.
fn keep_alive_backend() -> (
    String,
    Arc<std::sync::atomic::AtomicUsize>,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (connections, requests) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (c, r) = (connections.clone(), requests.clone());
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            c.fetch_add(1, Ordering::SeqCst);
            let r = r.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                let mut buf = [0u8; 2048];
                loop {
                    while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        got.drain(..end + 4);
                        r.fetch_add(1, Ordering::SeqCst);
                        if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\npong")
                            .is_err()
                        {
                            return;
                        }
                    }
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
            });
        }
    });
    (addr, connections, requests)
}

#[test]
fn subrequests_reuse_kept_alive_connections_per_app_across_fresh_instances() {
    use std::sync::atomic::Ordering;
    let (addr, connections, requests) = keep_alive_backend();
    let cache = tempdir("cache-pool");
    let app = |name: &str| {
        let mut s = spec(name, edgeplane_testkit::app("fetcher"));
        s.env = vec![("BACKEND_URL".into(), format!("http://{addr}/data"))];
        s.allowed_backends = vec![addr.clone()];
        s
    };
    let rt = runtime(vec![app("a"), app("b")], &cache);
    edgeplane_testkit::block_on(async {
        for _ in 0..2 {
            let r = edgeplane_testkit::handle(&rt, "a", "GET /?k=5 HTTP/1.1\r\nHost: f\r\n\r\n")
                .await
                .unwrap();
            let summary: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(summary["bytes"], 20, "{summary}");
        }
        assert_eq!(requests.load(Ordering::SeqCst), 10);
        assert_eq!(
            connections.load(Ordering::SeqCst),
            1,
            "ten sequential subrequests of two fresh instances share one connection"
        );
        // Another app never sends on a connection the first opened.
        edgeplane_testkit::handle(&rt, "b", "GET /?k=2 HTTP/1.1\r\nHost: f\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    });
    let obs = rt.observations().snapshot();
    let a = obs.iter().find(|o| o.app == "a").unwrap();
    assert_eq!((a.count, a.connects, a.failures), (10, 1, 0));
    assert!(a.connect_p50_us > 0 && a.p50_us > 0);
}
