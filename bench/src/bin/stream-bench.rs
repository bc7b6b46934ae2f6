//! `stream-bench`: time to first byte of a streamed guest response, edged against `wasmtime
//! serve`, same component (apps/stream), same run: each server on CPU 0, the client on CPU 1,
//! sequential requests on one keep-alive connection. For each request: when the response head
//! arrived, when the first line of the body did, when the body ended. Run as root (edged loads
//! its BPF programs): `./x bench stream`.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use clap::Parser;
use edgeplane_bench::{
    http::{find_wasmtime, wasmtime_serve},
    scenario::Setup,
};
use edgeplane_testkit::process::Server;

#[derive(Parser)]
#[command(about = "time to first byte of a streamed response: edged vs wasmtime serve")]
struct Args {
    /// A few requests: checks the harness; figures are not meaningful.
    #[arg(long)]
    smoke: bool,
    /// Requests per case and server.
    #[arg(long, default_value_t = 200)]
    requests: u32,
}

const EDGED_PORT: u16 = 18180;
const WASMTIME_PORT: u16 = 18181;
const SERVER_CPU: u32 = 0;
const CLIENT_CPU: u32 = 1;

/// (name, path): a body of five lines 20 ms apart, and one line at once.
const CASES: [(&str, &str); 2] = [
    ("5 lines, 20 ms apart", "/?lines=5&ms=20"),
    ("1 line at once", "/?lines=1&ms=0"),
];

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let setup = Setup::new("stream-bench")?;
    let component = setup.app("stream")?;
    let scratch =
        std::env::temp_dir().join(format!("edgeplane-stream-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let requests = if args.smoke { 5 } else { args.requests };
    let edged = start_edged(&setup.edged, &scratch, &component)?;
    let mut rows = Vec::new();
    let reference = match find_wasmtime() {
        Some(wasmtime) => Some(wasmtime_serve(
            &wasmtime,
            &component,
            WASMTIME_PORT,
            None,
            Some(SERVER_CPU),
        )?),
        None if args.smoke => None,
        None => anyhow::bail!("the wasmtime CLI is missing (./x setup installs it)"),
    };
    edgeplane_bench::cpu::pin_current_thread(CLIENT_CPU);
    for (case, path) in CASES {
        let ours = measure(EDGED_PORT, path, requests)?;
        let theirs = match &reference {
            Some(_) => Some(measure(WASMTIME_PORT, path, requests)?),
            None => None,
        };
        rows.push((case, ours, theirs));
    }
    drop((edged, reference));
    let _ = std::fs::remove_dir_all(&scratch);
    println!(
        "\nStreamed response, {requests} sequential requests per case on one keep-alive connection; \
         server on CPU {SERVER_CPU}, client on CPU {CLIENT_CPU}. p50 (p99), ms from sending the request."
    );
    println!(
        "{:<22} {:<16} {:>16} {:>16} {:>16}",
        "case", "server", "head", "first line", "end"
    );
    for (case, ours, theirs) in &rows {
        for (who, t) in [("edged", Some(ours)), ("wasmtime serve", theirs.as_ref())] {
            let Some(t) = t else { continue };
            println!(
                "{case:<22} {who:<16} {:>16} {:>16} {:>16}",
                t.head.show(),
                t.first_line.show(),
                t.end.show()
            );
        }
        if let Some(theirs) = theirs {
            println!(
                "{case:<22} {:<16} {:>16.2} {:>16.2} {:>16.2}",
                "ratio (p50)",
                ours.head.p50() / theirs.head.p50(),
                ours.first_line.p50() / theirs.first_line.p50(),
                ours.end.p50() / theirs.end.p50()
            );
        }
    }
    Ok(())
}

/// Milliseconds, sorted on demand.
#[derive(Default)]
struct Times(Vec<f64>);

impl Times {
    fn quantile(&self, q: f64) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v.get(((v.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    }

    fn p50(&self) -> f64 {
        self.quantile(0.5)
    }

    fn show(&self) -> String {
        format!("{:.3} ({:.3})", self.p50(), self.quantile(0.99))
    }
}

struct Timings {
    head: Times,
    first_line: Times,
    end: Times,
}

/// `requests` GETs of `path`, one after the other on one connection.
fn measure(port: u16, path: &str, requests: u32) -> anyhow::Result<Timings> {
    let mut s = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port)))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut t = Timings {
        head: Times::default(),
        first_line: Times::default(),
        end: Times::default(),
    };
    let ms = |since: Instant| since.elapsed().as_secs_f64() * 1e3;
    for _ in 0..requests {
        let sent = Instant::now();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: stream\r\n\r\n").as_bytes())?;
        let mut buf = Vec::new();
        let (mut head_at, mut line_at) = (None, None);
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let n = s.read(&mut chunk)?;
            anyhow::ensure!(n > 0, "closed mid-response");
            buf.extend_from_slice(&chunk[..n]);
            let Some(head_end) = find(&buf, b"\r\n\r\n") else {
                continue;
            };
            head_at.get_or_insert_with(|| ms(sent));
            let body = &buf[head_end + 4..];
            if find(body, b"line ").is_some() {
                line_at.get_or_insert_with(|| ms(sent));
            }
            if response_ended(&buf[..head_end], body) {
                break;
            }
        }
        t.head.0.push(head_at.unwrap_or(f64::NAN));
        t.first_line.0.push(line_at.unwrap_or(f64::NAN));
        t.end.0.push(ms(sent));
    }
    Ok(t)
}

/// Whether the body is whole: chunked and its last chunk came, or its content-length is in.
fn response_ended(head: &[u8], body: &[u8]) -> bool {
    let head = String::from_utf8_lossy(head).to_ascii_lowercase();
    if head.contains("transfer-encoding: chunked") {
        return body.ends_with(b"0\r\n\r\n");
    }
    head.lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .is_some_and(|n| body.len() >= n)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn start_edged(
    edged_bin: &std::path::Path,
    scratch: &std::path::Path,
    component: &std::path::Path,
) -> anyhow::Result<Server> {
    let config = scratch.join("edged.toml");
    std::fs::write(
        &config,
        edgeplane_testkit::edged::one_worker_config(
            "stream-bench",
            EDGED_PORT,
            EDGED_PORT + 1000,
            &scratch.join("cache"),
            "stream",
            component,
        ),
    )?;
    edgeplane_testkit::edged::start_local(
        &config,
        edged_bin,
        SocketAddr::from(([127, 0, 0, 1], EDGED_PORT)),
    )
}
