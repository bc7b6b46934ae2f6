//! Conformance: unmodified third-party wasi:http components served by edged and by
//! `wasmtime serve`, the same requests to both, compared route by route: status, the headers
//! that matter, body, trailers, and the shape of the stream (a body written over time arrives
//! over time). Framing may differ (edged sends a whole body with a content-length, `wasmtime
//! serve` chunks every body); what a client reads of it may not.

use std::{
    io::Write as _,
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    time::Duration,
};

use edgeplane_bench::http::{find_wasmtime, wasmtime_serve};
use edgeplane_testkit::{Received, edgeplane_binary, read_response};
use edgeplane_testkit::{TestPins, require_root};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One request, and how its two answers are compared.
struct Case {
    name: &'static str,
    raw: String,
    /// Compare only the status (error bodies carry edged's request id).
    status_only: bool,
    /// Headers whose values must agree.
    headers: &'static [&'static str],
    /// Trailers edged sends a client that takes them (`TE: trailers`) where `wasmtime serve`
    /// sends none: hyper's server drops trailers the response did not declare in a `Trailer`
    /// header, which wasi:http guests (this one included) do not write. None: both must agree.
    undeclared_trailers: Option<&'static [(&'static str, &'static str)]>,
}

fn case(name: &'static str, raw: impl Into<String>) -> Case {
    Case {
        name,
        raw: raw.into(),
        status_only: false,
        headers: &["content-type", "location", "x-custom"],
        undeclared_trailers: None,
    }
}

fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: conformance.test\r\n{extra}\r\n")
}

/// wstd's `http_server` example, every route it has.
fn wstd_cases() -> Vec<Case> {
    vec![
        case("home", get("/", "")),
        case("wait-response", get("/wait-response", "")),
        case("wait-body", get("/wait-body", "")),
        case("stream-body", get("/stream-body", "")),
        case(
            "echo, content-length",
            "POST /echo HTTP/1.1\r\nHost: conformance.test\r\nContent-Length: 10\r\n\r\nhello edge",
        ),
        case(
            "echo, chunked",
            "POST /echo HTTP/1.1\r\nHost: conformance.test\r\nTransfer-Encoding: chunked\r\n\r\n\
             5\r\nhello\r\n5\r\n edge\r\n0\r\n\r\n",
        ),
        case("echo-headers", get("/echo-headers", "x-custom: 42\r\n")),
        case("echo-trailers, none sent", get("/echo-trailers", "")),
        Case {
            undeclared_trailers: Some(&[("x-no-trailers", "1")]),
            ..case(
                "echo-trailers, none sent, trailers taken",
                get("/echo-trailers", "TE: trailers\r\n"),
            )
        },
        Case {
            undeclared_trailers: Some(&[("x-checksum", "900150983cd2")]),
            ..case(
                "echo-trailers, sent",
                "POST /echo-trailers HTTP/1.1\r\nHost: conformance.test\r\nTE: trailers\r\n\
                 Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-checksum: 900150983cd2\r\n\r\n",
            )
        },
        case(
            "response-status 404",
            get("/response-status", "x-response-status: 404\r\n"),
        ),
        case(
            "response-status 302",
            get("/response-status", "x-response-status: 302\r\n"),
        ),
        Case {
            status_only: true,
            ..case("response-fail", get("/response-fail", ""))
        },
        Case {
            status_only: true,
            ..case("response-body-fail", get("/response-body-fail", ""))
        },
        case("not found", get("/nope", "")),
        case("HEAD", "HEAD / HTTP/1.1\r\nHost: conformance.test\r\n\r\n"),
    ]
}

fn ask(addr: SocketAddr, raw: &str) -> Received {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    read_response(&mut s, raw.starts_with("HEAD "))
}

/// Whether the body arrived over time: its first piece well before its last.
fn streamed(r: &Received) -> bool {
    match (r.pieces.first(), r.pieces.last()) {
        (Some(first), Some(last)) => last.0.duration_since(first.0) >= Duration::from_millis(250),
        _ => false,
    }
}

/// The outcome a client sees of a failure: an error status, or a body cut short.
fn failed(r: &Received) -> bool {
    r.status >= 500 || !r.complete
}

fn compare(case: &Case, edged: &Received, reference: &Received) -> Vec<String> {
    let mut diffs = Vec::new();
    let mut differ = |what: &str, a: String, b: String| {
        if a != b {
            diffs.push(format!(
                "{}: {what}: edged {a} / wasmtime serve {b}",
                case.name
            ));
        }
    };
    if case.status_only {
        differ(
            "failed",
            failed(edged).to_string(),
            failed(reference).to_string(),
        );
        return diffs;
    }
    differ(
        "status",
        edged.status.to_string(),
        reference.status.to_string(),
    );
    differ(
        "complete",
        edged.complete.to_string(),
        reference.complete.to_string(),
    );
    for name in case.headers {
        differ(
            &format!("header {name}"),
            format!("{:?}", edged.header(name)),
            format!("{:?}", reference.header(name)),
        );
    }
    differ(
        "body",
        format!("{:?}", String::from_utf8_lossy(&edged.body())),
        format!("{:?}", String::from_utf8_lossy(&reference.body())),
    );
    match case.undeclared_trailers {
        None => differ(
            "trailers",
            format!("{:?}", edged.trailers),
            format!("{:?}", reference.trailers),
        ),
        Some(expected) => {
            let expected: Vec<(String, String)> = expected
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            differ(
                "trailers (edged's)",
                format!("{:?}", edged.trailers),
                format!("{expected:?}"),
            );
            differ(
                "trailers (wasmtime serve's)",
                format!("{:?}", reference.trailers),
                "[]".into(),
            );
        }
    }
    differ(
        "streamed",
        streamed(edged).to_string(),
        streamed(reference).to_string(),
    );
    diffs
}

/// Serves `component` with edged (one worker) and with `wasmtime serve`, and compares them on
/// every case. Bodies that hold times ("slept for 1001 millis") are compared with digits
/// blanked.
fn conform(test: &str, component: &Path, cases: Vec<Case>) -> anyhow::Result<()> {
    // One comparison at a time: each runs two servers compiling a component on this machine's
    // two cores, and the stream-shape check wants them unhurried.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let wasmtime = find_wasmtime().expect("the wasmtime CLI (./x setup installs it)");
    let pins = TestPins::new(test);
    let scratch = std::env::temp_dir().join(format!("edgeplane-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let (edged_port, admin_port, reference_port) = (free_port(), free_port(), free_port());
    let config = scratch.join("edged.toml");
    std::fs::write(
        &config,
        format!(
            r#"
pin_dir = "{pins}"
[workers]
count = 1
steer = false
[server]
listen = "127.0.0.1:{edged_port}"
admin = "127.0.0.1:{admin_port}"
[runtime]
cache_dir = "{cache}"
[[apps]]
name = "conformance"
component = "{component}"
"#,
            pins = pins.dir().display(),
            cache = scratch.join("cache").display(),
            component = component.display(),
        ),
    )?;
    let edged_addr = SocketAddr::from(([127, 0, 0, 1], edged_port));
    let _edged =
        edgeplane_testkit::edged::start_local(&config, &edgeplane_binary("edged"), edged_addr)?;
    let _reference = wasmtime_serve(&wasmtime, component, reference_port, None, None)?;
    let reference_addr = SocketAddr::from(([127, 0, 0, 1], reference_port));
    let mut diffs = Vec::new();
    for case in &cases {
        eprintln!("conformance: {test}: {}", case.name);
        let (mut a, mut b) = (ask(edged_addr, &case.raw), ask(reference_addr, &case.raw));
        for r in [&mut a, &mut b] {
            let blanked: Vec<u8> = r
                .body()
                .iter()
                .map(|c| if c.is_ascii_digit() { b'#' } else { *c })
                .collect();
            r.pieces = vec![
                (
                    r.pieces
                        .first()
                        .map(|p| p.0)
                        .unwrap_or_else(std::time::Instant::now),
                    Vec::new(),
                ),
                (
                    r.pieces
                        .last()
                        .map(|p| p.0)
                        .unwrap_or_else(std::time::Instant::now),
                    blanked,
                ),
            ];
        }
        diffs.extend(compare(case, &a, &b));
    }
    let _ = std::fs::remove_dir_all(&scratch);
    assert!(
        diffs.is_empty(),
        "edged and wasmtime serve differ:\n{}",
        diffs.join("\n")
    );
    Ok(())
}

/// apps/js-hello, from JavaScript (componentize-js).
fn js_cases() -> Vec<Case> {
    vec![
        case("hello", get("/", "")),
        case(
            "echo",
            "POST /echo HTTP/1.1\r\nHost: conformance.test\r\nContent-Length: 10\r\n\r\nhello edge",
        ),
        case(
            "echo, chunked",
            "POST /echo HTTP/1.1\r\nHost: conformance.test\r\nTransfer-Encoding: chunked\r\n\r\n\
             5\r\nhello\r\n5\r\n edge\r\n0\r\n\r\n",
        ),
        Case {
            headers: &["content-type", "x-custom", "x-method"],
            ..case("headers", get("/headers", "x-custom: 42\r\n"))
        },
        case("not found", get("/nope", "")),
        case("HEAD", "HEAD / HTTP/1.1\r\nHost: conformance.test\r\n\r\n"),
    ]
}

#[test]
fn a_javascript_component_behaves_as_under_wasmtime_serve() -> anyhow::Result<()> {
    if !require_root("a_javascript_component_behaves_as_under_wasmtime_serve") {
        return Ok(());
    }
    conform(
        "conformance-js",
        &edgeplane_testkit::js_component(),
        js_cases(),
    )
}

#[test]
fn wstds_public_example_behaves_as_under_wasmtime_serve() -> anyhow::Result<()> {
    if !require_root("wstds_public_example_behaves_as_under_wasmtime_serve") {
        return Ok(());
    }
    conform(
        "conformance-wstd",
        &edgeplane_testkit::wstd_example_server(),
        wstd_cases(),
    )
}
