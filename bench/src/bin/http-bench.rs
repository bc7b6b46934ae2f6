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

const EDGED_PINNED_PORT: u16 = 18080;
const EDGED_UNPINNED_PORT: u16 = 18084;
const WASMTIME_FRESH_PORT: u16 = 18081;
const NGINX_PORT: u16 = 18082;
const WASMTIME_REUSE_PORT: u16 = 18083;
const EDGED_ONE_CORE_PORT: u16 = 18085;
const NGINX_ONE_CORE_PORT: u16 = 18086;

/// One server under test: where it listens and the Host header that picks the app.
#[derive(Clone, PartialEq)]
struct Target {
    name: String,
    port: u16,
    host: &'static str,
}

fn target(name: impl Into<String>, port: u16, host: &'static str) -> Target {
    Target {
        name: name.into(),
        port,
        host,
    }
}

/// edgeplane's three routes on the edged listening on `port`.
fn edge_targets(port: u16, workers: &str) -> [Target; 3] {
    [
        target(format!("edgeplane hello, fresh ({workers})"), port, "hello"),
        target(
            format!("edgeplane hello, reuse ({workers})"),
            port,
            "reused",
        ),
        target(format!("edgeplane static ({workers})"), port, "static"),
    ]
}

/// The baseline each of edgeplane's routes is compared with, in `edge_targets` order.
fn baselines() -> [Target; 3] {
    [
        target("wasmtime serve, fresh", WASMTIME_FRESH_PORT, "hello"),
        target("wasmtime serve, reuse", WASMTIME_REUSE_PORT, "hello"),
        target("nginx static (2 workers)", NGINX_PORT, "static"),
    ]
}

#[derive(Serialize)]
struct Results {
    max_load: Vec<LoadResult>,
    half_load: Vec<LoadReport>,
    one_core: Vec<LoadResult>,
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
        cpu: None,
        threads: 1,
        connections: args.connections,
        duration,
    };
    let scratch = std::env::temp_dir().join(format!("edgeplane-http-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;

    // Every server stays up for the whole run; an idle one costs the others nothing. edged runs
    // twice: workers pinned to their CPUs (as deployed behind XDP steering) and unpinned, since
    // here the load generator shares the two CPUs and pinned workers cannot move away from it.
    let mut servers: Vec<Server> = Vec::new();
    let pinned = edge_targets(EDGED_PINNED_PORT, "pinned workers");
    let unpinned = edge_targets(EDGED_UNPINNED_PORT, "unpinned workers");
    let bases = baselines();
    let mut present: Vec<Target> = Vec::new();
    servers.push(start_edged(
        &edged_bin,
        &scratch,
        &component,
        EDGED_PINNED_PORT,
        true,
        None,
    )?);
    servers.push(start_edged(
        &edged_bin,
        &scratch,
        &component,
        EDGED_UNPINNED_PORT,
        false,
        None,
    )?);
    present.extend(pinned.iter().cloned());
    present.extend(unpinned.iter().cloned());
    match nginx(&scratch.join("nginx"), NGINX_PORT, 2, None, "hello\\n") {
        Ok(s) => {
            servers.push(s);
            present.push(bases[2].clone());
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
            present.extend(bases[..2].iter().cloned());
        }
        None => eprintln!(
            "!!!!! wasmtime serve baselines skipped: `cargo install wasmtime-cli@48.0.8 --locked` to run them"
        ),
    }

    let mut max_load = Vec::new();
    for t in &present {
        let url = format!("http://127.0.0.1:{}/", t.port);
        max_load.push(wrk.run(&t.name, &url, t.host)?);
    }
    let max_of = |t: &Target| {
        max_load
            .iter()
            .find(|r| r.target == t.name)
            .map(|r| r.requests_per_sec)
    };

    let pairs: Vec<(&Target, &Target)> = pinned
        .iter()
        .zip(&bases)
        .chain(unpinned.iter().zip(&bases))
        .collect();
    let mut half_load = Vec::new();
    for (edge, base) in &pairs {
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
            half_load.push(loadgen::run(&t.name, &spec)?);
        }
    }
    drop(servers);

    // One server core each: the server's worker on CPU 0, wrk alone on CPU 1. Sharing no CPU
    // with the load generator, this is the steadiest measure of a server's own cost.
    let mut one_core = Vec::new();
    if std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 {
        let wrk1 = Wrk {
            cpu: Some(1),
            ..wrk
        };
        let url = |port: u16| format!("http://127.0.0.1:{port}/");
        {
            let _edged = start_edged(
                &edged_bin,
                &scratch,
                &component,
                EDGED_ONE_CORE_PORT,
                true,
                Some(1),
            )?;
            for (name, host) in [
                ("edgeplane static, 1 worker on CPU 0", "static"),
                ("edgeplane hello, reuse, 1 worker on CPU 0", "reused"),
                ("edgeplane hello, fresh, 1 worker on CPU 0", "hello"),
            ] {
                one_core.push(wrk1.run(name, &url(EDGED_ONE_CORE_PORT), host)?);
            }
        }
        match nginx(
            &scratch.join("nginx-one-core"),
            NGINX_ONE_CORE_PORT,
            1,
            Some("01"),
            "hello\\n",
        ) {
            Ok(_nginx) => one_core.push(wrk1.run(
                "nginx static, 1 worker on CPU 0",
                &url(NGINX_ONE_CORE_PORT),
                "static",
            )?),
            Err(e) => eprintln!("!!!!! nginx one-core baseline skipped: {e:#}"),
        }
    }

    print_report(&wrk, &pairs, &max_load, &half_load);
    print_one_core(&one_core);
    let results = Results {
        max_load,
        half_load,
        one_core,
    };
    if let Some(path) = args.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)?;
    }
    let _ = std::fs::remove_dir_all(&scratch);
    let failed = results.max_load.iter().any(|r| r.errors > 0)
        || results.one_core.iter().any(|r| r.errors > 0)
        || results.half_load.iter().any(|r| r.errors > 0);
    anyhow::ensure!(!failed, "some requests failed; see the tables above");
    Ok(())
}

fn start_edged(
    edged_bin: &std::path::Path,
    scratch: &std::path::Path,
    component: &std::path::Path,
    port: u16,
    pin: bool,
    workers: Option<u32>,
) -> anyhow::Result<Server> {
    let config = scratch.join(format!("edged-{port}.toml"));
    std::fs::write(
        &config,
        format!(
            r#"
pin_dir = "/sys/fs/bpf/edgeplane-http-bench-{pid}-{port}"
[workers]
steer = false
pin = {pin}
count = {count}
[server]
listen = "127.0.0.1:{port}"
admin = "127.0.0.1:{admin}"
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
            admin = port + 1000,
            count = workers.unwrap_or(0),
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
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(120),
    )?;
    Ok(edged)
}

fn print_report(
    wrk: &Wrk,
    pairs: &[(&Target, &Target)],
    max_load: &[LoadResult],
    half_load: &[LoadReport],
) {
    println!(
        "\nMaximum rate: wrk -t{} -c{} -d{}s on loopback (wrk shares the 2 cores)",
        wrk.threads,
        wrk.connections,
        wrk.duration.as_secs()
    );
    println!(
        "{:<44} {:>12} {:>9} {:>9} {:>7}",
        "server", "req/s", "p50 ms", "p99 ms", "errors"
    );
    for r in max_load {
        println!(
            "{:<44} {:>12.0} {:>9.2} {:>9.2} {:>7}",
            r.target, r.requests_per_sec, r.p50_ms, r.p99_ms, r.errors
        );
    }
    let max_of = |name: &str| {
        max_load
            .iter()
            .find(|r| r.target == name)
            .map(|r| r.requests_per_sec)
    };
    for (edge, base) in pairs {
        if let (Some(e), Some(b)) = (max_of(&edge.name), max_of(&base.name)) {
            println!("{} vs {}: {:.2}x", edge.name, base.name, e / b);
        }
    }
    println!("\nLatency at half load: open loop, the same offered rate for each pair");
    println!(
        "{:<44} {:>10} {:>10} {:>9} {:>9} {:>9} {:>7}",
        "server", "offered/s", "served/s", "p50 ms", "p99 ms", "p99.9 ms", "errors"
    );
    for r in half_load {
        println!(
            "{:<44} {:>10.0} {:>10.0} {:>9.3} {:>9.3} {:>9.3} {:>7}",
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

fn print_one_core(results: &[LoadResult]) {
    if results.is_empty() {
        return;
    }
    println!("\nOne server core: the server's one worker pinned to CPU 0, wrk -t1 pinned to CPU 1");
    println!(
        "{:<44} {:>12} {:>9} {:>9} {:>7}",
        "server", "req/s", "p50 ms", "p99 ms", "errors"
    );
    for r in results {
        println!(
            "{:<44} {:>12.0} {:>9.2} {:>9.2} {:>7}",
            r.target, r.requests_per_sec, r.p50_ms, r.p99_ms, r.errors
        );
    }
    let rate = |prefix: &str| {
        results
            .iter()
            .find(|r| r.target.starts_with(prefix))
            .map(|r| r.requests_per_sec)
    };
    if let (Some(e), Some(n)) = (rate("edgeplane static"), rate("nginx static")) {
        println!("edgeplane static vs nginx, one core each: {:.2}x", e / n);
    }
}
