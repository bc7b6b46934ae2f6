//! `http-bench`: edgeplane's workers against `wasmtime serve` and nginx, same load generators,
//! same run. Phase 1 finds each server's maximum rate with wrk (closed loop); phase 2 offers each
//! pair the same open-loop rate, half the slower one's maximum, and compares latency there.
//! Run as root (edged loads its BPF programs): `./x bench`.

use std::{net::SocketAddr, path::PathBuf, process::Command, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use edgeplane_bench::{
    http::{LoadResult, Server, Wrk, find_wasmtime, nginx, spawn, wait_listening, wasmtime_serve},
    loadgen::{self, Arrival, LoadReport, LoadSpec},
};
use serde::Serialize;

#[derive(Parser)]
#[command(about = "edgeplane workers vs wasmtime serve and nginx (same load, same run)")]
struct Args {
    /// Short runs for CI: checks the harness; figures are not meaningful.
    #[arg(long)]
    smoke: bool,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// The hello component (default: apps/target/wasm32-wasip2/release/hello.wasm).
    #[arg(long)]
    component: Option<PathBuf>,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

const EDGED_PORT: u16 = 18080;
const WASMTIME_FRESH_PORT: u16 = 18081;
const NGINX_PORT: u16 = 18082;
const WASMTIME_REUSE_PORT: u16 = 18083;

/// One server under test: where it listens and the Host header that picks the app.
struct Target {
    name: &'static str,
    port: u16,
    host: &'static str,
}

const EDGE_HELLO: Target = Target {
    name: "edgeplane hello (fresh instance)",
    port: EDGED_PORT,
    host: "hello",
};
const EDGE_REUSED: Target = Target {
    name: "edgeplane hello (instance reuse)",
    port: EDGED_PORT,
    host: "reused",
};
const EDGE_STATIC: Target = Target {
    name: "edgeplane static route",
    port: EDGED_PORT,
    host: "static",
};
const NGINX: Target = Target {
    name: "nginx static (2 workers)",
    port: NGINX_PORT,
    host: "static",
};
const WASMTIME_FRESH: Target = Target {
    name: "wasmtime serve (fresh instance)",
    port: WASMTIME_FRESH_PORT,
    host: "hello",
};
const WASMTIME_REUSE: Target = Target {
    name: "wasmtime serve (instance reuse)",
    port: WASMTIME_REUSE_PORT,
    host: "hello",
};

/// (edgeplane, baseline) pairs compared at the same offered load.
const PAIRS: [(&Target, &Target); 3] = [
    (&EDGE_HELLO, &WASMTIME_FRESH),
    (&EDGE_REUSED, &WASMTIME_REUSE),
    (&EDGE_STATIC, &NGINX),
];

#[derive(Serialize)]
struct Results {
    max_load: Vec<LoadResult>,
    half_load: Vec<LoadReport>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let component = args
        .component
        .clone()
        .unwrap_or_else(|| workspace.join("apps/target/wasm32-wasip2/release/hello.wasm"));
    anyhow::ensure!(
        component.exists(),
        "{} is missing: build apps/ first (./x bench does)",
        component.display()
    );
    let exe_dir = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .to_path_buf();
    let edged_bin = exe_dir.join("edged");
    anyhow::ensure!(
        edged_bin.exists(),
        "{} is missing: cargo build --release -p edgeplane",
        edged_bin.display()
    );
    let duration = Duration::from_secs(if args.smoke { 1 } else { args.seconds });
    let wrk = Wrk {
        threads: 1,
        connections: args.connections,
        duration,
    };
    let scratch = std::env::temp_dir().join(format!("edgeplane-http-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;

    // Every server stays up for the whole run; an idle one costs the others nothing.
    let mut servers: Vec<Server> = Vec::new();
    let mut present: Vec<&Target> = vec![&EDGE_HELLO, &EDGE_REUSED, &EDGE_STATIC];
    servers.push(start_edged(&edged_bin, &scratch, &component)?);
    match nginx(&scratch.join("nginx"), NGINX_PORT, 2, "hello\\n") {
        Ok(s) => {
            servers.push(s);
            present.push(&NGINX);
        }
        Err(e) => eprintln!("!!!!! nginx baseline skipped: {e:#}"),
    }
    match find_wasmtime() {
        Some(wasmtime) => {
            servers.push(wasmtime_serve(
                &wasmtime,
                &component,
                WASMTIME_FRESH_PORT,
                None,
            )?);
            servers.push(wasmtime_serve(
                &wasmtime,
                &component,
                WASMTIME_REUSE_PORT,
                Some(100_000),
            )?);
            present.extend([&WASMTIME_FRESH, &WASMTIME_REUSE]);
        }
        None => eprintln!(
            "!!!!! wasmtime serve baselines skipped: `cargo install wasmtime-cli@48.0.8 --locked` to run them"
        ),
    }

    let mut max_load = Vec::new();
    for t in &present {
        let url = format!("http://127.0.0.1:{}/", t.port);
        max_load.push(wrk.run(t.name, &url, t.host)?);
    }
    let max_of = |t: &Target| {
        max_load
            .iter()
            .find(|r| r.target == t.name)
            .map(|r| r.requests_per_sec)
    };

    let mut half_load = Vec::new();
    for (edge, base) in PAIRS {
        let (Some(e), Some(b)) = (max_of(edge), max_of(base)) else {
            continue;
        };
        let rate = e.min(b) / 2.0;
        for t in [edge, base] {
            let spec = LoadSpec {
                addr: SocketAddr::from(([127, 0, 0, 1], t.port)),
                host: t.host.into(),
                path: "/".into(),
                connections: args.connections as usize,
                duration,
                arrival: Arrival::Open { rate },
            };
            half_load.push(loadgen::run(t.name, &spec)?);
        }
    }
    drop(servers);

    print_report(&wrk, &max_load, &half_load);
    let results = Results {
        max_load,
        half_load,
    };
    if let Some(path) = args.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)?;
    }
    let _ = std::fs::remove_dir_all(&scratch);
    let failed = results.max_load.iter().any(|r| r.errors > 0)
        || results.half_load.iter().any(|r| r.errors > 0);
    anyhow::ensure!(!failed, "some requests failed; see the tables above");
    Ok(())
}

fn start_edged(
    edged_bin: &std::path::Path,
    scratch: &std::path::Path,
    component: &std::path::Path,
) -> anyhow::Result<Server> {
    let config = scratch.join("edged.toml");
    std::fs::write(
        &config,
        format!(
            r#"
pin_dir = "/sys/fs/bpf/edgeplane-http-bench-{pid}"
[workers]
steer = false
[server]
listen = "127.0.0.1:{EDGED_PORT}"
admin = "127.0.0.1:19901"
[runtime]
cache_dir = "{cache}"
[[apps]]
name = "hello"
vips = []
hosts = ["hello"]
component = "{component}"
[[apps]]
name = "hello-reused"
vips = []
hosts = ["reused"]
component = "{component}"
limits = {{ instance_reuse = 100000 }}
[[apps]]
name = "static"
vips = []
hosts = ["static"]
static_body = "hello\n"
"#,
            pid = std::process::id(),
            cache = scratch.join("cache").display(),
            component = component.display(),
        ),
    )?;
    let mut edged = spawn(
        "edged",
        Command::new(edged_bin)
            .arg("--config")
            .arg(&config)
            .arg("--unpin-on-exit"),
    )?;
    wait_listening(
        &mut edged,
        SocketAddr::from(([127, 0, 0, 1], EDGED_PORT)),
        Duration::from_secs(120),
    )?;
    Ok(edged)
}

fn print_report(wrk: &Wrk, max_load: &[LoadResult], half_load: &[LoadReport]) {
    println!(
        "\nMaximum rate: wrk -t{} -c{} -d{}s on loopback (wrk shares the 2 cores)",
        wrk.threads,
        wrk.connections,
        wrk.duration.as_secs()
    );
    println!(
        "{:<36} {:>12} {:>9} {:>9} {:>7}",
        "server", "req/s", "p50 ms", "p99 ms", "errors"
    );
    for r in max_load {
        println!(
            "{:<36} {:>12.0} {:>9.2} {:>9.2} {:>7}",
            r.target, r.requests_per_sec, r.p50_ms, r.p99_ms, r.errors
        );
    }
    let max_of = |name: &str| {
        max_load
            .iter()
            .find(|r| r.target == name)
            .map(|r| r.requests_per_sec)
    };
    for (edge, base) in PAIRS {
        if let (Some(e), Some(b)) = (max_of(edge.name), max_of(base.name)) {
            println!("{} vs {}: {:.2}x", edge.name, base.name, e / b);
        }
    }
    println!("\nLatency at half load: open loop, the same offered rate for each pair");
    println!(
        "{:<36} {:>10} {:>10} {:>9} {:>9} {:>9} {:>7}",
        "server", "offered/s", "served/s", "p50 ms", "p99 ms", "p99.9 ms", "errors"
    );
    for r in half_load {
        println!(
            "{:<36} {:>10.0} {:>10.0} {:>9.3} {:>9.3} {:>9.3} {:>7}",
            r.target,
            r.offered_rate.unwrap_or(0.0),
            r.requests_per_sec,
            r.p50_ms,
            r.p99_ms,
            r.p999_ms,
            r.errors
        );
    }
    for pair in half_load.chunks(2) {
        if let [e, b] = pair {
            println!(
                "p99 at half load, {} / {}: {:.2}x",
                e.target,
                b.target,
                e.p99_ms / b.p99_ms
            );
        }
    }
}
