//! `http-bench`: edgeplane's workers against `wasmtime serve` and nginx, same load generators,
//! same run. Phase 1 finds each server's maximum rate with wrk (closed loop); phase 2 offers each
//! pair the same open-loop rate, half the slower one's maximum, and compares latency there.
//! Run as root (edged loads its BPF programs): `./x bench`.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::Parser;
use edgeplane_bench::{
    cpu::CpuUse,
    http::{LoadResult, Wrk, find_wasmtime, nginx, wasmtime_serve},
    loadgen::{self, Arrival, LoadReport, LoadSpec},
    scenario::Setup,
};
use edgeplane_testkit::process::Server;
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
    /// The hello component (default: apps/hello, built into apps/target).
    #[arg(long)]
    component: Option<PathBuf>,
    /// Rounds of the one-core phase (medians reported).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// A large component (issue K): only the one-core phase, then the low-load phase (fresh
    /// instances prepared ahead vs reused vs fresh ones made on the request's path).
    #[arg(long)]
    large: bool,
    /// The low-load phase's open-loop rate (requests per second).
    #[arg(long, default_value_t = 100.0)]
    low_rate: f64,
    /// Instead of the baselines: this edged binary against another (an earlier build), one
    /// core each, static / reused hello / fresh hello, rounds interleaved: what a change costs.
    #[arg(long)]
    versus: Option<PathBuf>,
}

const EDGED_PINNED_PORT: u16 = 18080;
const EDGED_UNPINNED_PORT: u16 = 18084;
const WASMTIME_FRESH_PORT: u16 = 18081;
const NGINX_PORT: u16 = 18082;
const NGINX_PINNED_PORT: u16 = 18089;
const WASMTIME_REUSE_PORT: u16 = 18083;
const EDGED_ONE_CORE_PORT: u16 = 18085;
const EDGED_VERSUS_PORT: u16 = 18090;
const EDGED_UNPREPARED_PORT: u16 = 18091;
const NGINX_ONE_CORE_PORT: u16 = 18086;
const WASMTIME_FRESH_ONE_CORE_PORT: u16 = 18087;
const WASMTIME_REUSE_ONE_CORE_PORT: u16 = 18088;
/// How many requests a reused instance serves. A JavaScript instance (StarlingMonkey) reused
/// without end runs out of its 64 MiB after about 16k requests, so the large runs recycle theirs.
const REUSE: u32 = 100_000;
const LARGE_REUSE: u32 = 1_000;
/// edged's default: instances prepared ahead for the 4 hottest fresh-instance apps.
const PREPARE_AHEAD: u32 = 4;
/// In the one-core phase, the server's CPU and the load generator's.
const SERVER_CPU: u32 = 0;
const LOADGEN_CPU: u32 = 1;

/// The one-core phase's pairs: (edgeplane's run, its baseline), by name.
const ONE_CORE_PAIRS: [(&str, &str); 3] = [
    (
        "edgeplane static, 1 worker on CPU 0",
        "nginx static, 1 worker on CPU 0",
    ),
    (
        "edgeplane hello, reuse, 1 worker on CPU 0",
        "wasmtime serve, reuse, on CPU 0",
    ),
    (
        "edgeplane hello, fresh, 1 worker on CPU 0",
        "wasmtime serve, fresh, on CPU 0",
    ),
];

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

/// The baseline each of edgeplane's routes is compared with, in `edge_targets` order. The
/// static route's is nginx with its workers placed like edged's: pinned to a CPU each
/// (`worker_cpu_affinity auto`) or left to the scheduler.
fn baselines(pinned: bool) -> [Target; 3] {
    [
        target("wasmtime serve, fresh", WASMTIME_FRESH_PORT, "hello"),
        target("wasmtime serve, reuse", WASMTIME_REUSE_PORT, "hello"),
        if pinned {
            target(
                "nginx static (2 workers, pinned)",
                NGINX_PINNED_PORT,
                "static",
            )
        } else {
            target("nginx static (2 workers)", NGINX_PORT, "static")
        },
    ]
}

/// One measured run: its name, the port and the Host it is sent to.
type Run = (&'static str, u16, &'static str);

#[derive(Serialize)]
struct Results {
    max_load: Vec<LoadResult>,
    half_load: Vec<LoadReport>,
    one_core: Vec<LoadResult>,
    low_load: Vec<LoadReport>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let setup = Setup::new("http-bench")?;
    let component = match args.component.clone() {
        Some(path) => {
            anyhow::ensure!(path.exists(), "{} is missing", path.display());
            // edged reads a config's relative paths against the config's own directory.
            path.canonicalize()?
        }
        None => setup.app("hello")?,
    };
    let edged_bin = setup.edged;
    if let Some(other) = &args.versus {
        return versus(&args, &edged_bin, other, &component);
    }
    let duration = Duration::from_secs(if args.smoke { 1 } else { args.seconds });
    if args.large {
        return large(&args, &edged_bin, &component, duration);
    }
    let wrk = Wrk {
        cpu: None,
        threads: 1,
        connections: args.connections,
        duration,
    };
    let scratch = std::env::temp_dir().join(format!("edgeplane-http-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;

    let pinned = edge_targets(EDGED_PINNED_PORT, "pinned workers");
    let unpinned = edge_targets(EDGED_UNPINNED_PORT, "unpinned workers");
    let (pinned_bases, bases) = (baselines(true), baselines(false));
    let (servers, present) = start_servers(&edged_bin, &scratch, &component)?;
    let mut max_load = Vec::new();
    for t in &present {
        let url = format!("http://127.0.0.1:{}/", t.port);
        max_load.push(wrk.run(&t.name, &url, t.host)?);
    }
    let pairs: Vec<(&Target, &Target)> = pinned
        .iter()
        .zip(&pinned_bases)
        .chain(unpinned.iter().zip(&bases))
        .collect();
    let half_load = half_load_phase(&pairs, &max_load, args.connections as usize, duration)?;
    drop(servers);

    let one_core = if std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 {
        one_core_phase(&args, &wrk, &edged_bin, &scratch, &component)?
    } else {
        Vec::new()
    };

    print_report(&wrk, &pairs, &max_load, &half_load);
    print_one_core(&one_core);
    let results = Results {
        max_load,
        half_load,
        one_core,
        low_load: Vec::new(),
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

/// Every server of the run, each up for the whole of it (an idle one costs the others
/// nothing), and the targets that answer: edged twice, workers pinned to their CPUs (as deployed
/// behind XDP steering) and unpinned (here the load generator shares the two CPUs and pinned
/// workers cannot move away from it); nginx and `wasmtime serve` where installed.
fn start_servers(
    edged_bin: &Path,
    scratch: &Path,
    component: &Path,
) -> anyhow::Result<(Vec<Server>, Vec<Target>)> {
    // here the load generator shares the two CPUs and pinned workers cannot move away from it.
    let mut servers: Vec<Server> = Vec::new();
    let pinned = edge_targets(EDGED_PINNED_PORT, "pinned workers");
    let unpinned = edge_targets(EDGED_UNPINNED_PORT, "unpinned workers");
    let (pinned_bases, bases) = (baselines(true), baselines(false));
    let mut present: Vec<Target> = Vec::new();
    servers.push(start_edged(
        edged_bin,
        scratch,
        component,
        EDGED_PINNED_PORT,
        EdgedOptions {
            pin: true,
            workers: None,
            prepare_ahead: PREPARE_AHEAD,
            reuse: REUSE,
        },
    )?);
    servers.push(start_edged(
        edged_bin,
        scratch,
        component,
        EDGED_UNPINNED_PORT,
        EdgedOptions {
            pin: false,
            workers: None,
            prepare_ahead: PREPARE_AHEAD,
            reuse: REUSE,
        },
    )?);
    present.extend(pinned.iter().cloned());
    present.extend(unpinned.iter().cloned());
    for (dir, affinity, base) in [
        ("nginx", None, &bases[2]),
        ("nginx-pinned", Some("auto"), &pinned_bases[2]),
    ] {
        match nginx(&scratch.join(dir), base.port, 2, affinity, "hello\\n") {
            Ok(s) => {
                servers.push(s);
                present.push(base.clone());
            }
            Err(e) => eprintln!("!!!!! nginx baseline skipped: {e:#}"),
        }
    }
    match find_wasmtime() {
        Some(wasmtime) => {
            servers.push(wasmtime_serve(
                &wasmtime,
                component,
                WASMTIME_FRESH_PORT,
                None,
                None,
            )?);
            servers.push(wasmtime_serve(
                &wasmtime,
                component,
                WASMTIME_REUSE_PORT,
                Some(100_000),
                None,
            )?);
            present.extend(bases[..2].iter().cloned());
        }
        None => eprintln!(
            "!!!!! wasmtime serve baselines skipped: `cargo install wasmtime-cli@48.0.8 --locked` to run them"
        ),
    }

    Ok((servers, present))
}

/// Each pair (edge, its baseline) at half the lower of their maximum rates, open-loop: the
/// latency each gives at the same moderate load.
fn half_load_phase(
    pairs: &[(&Target, &Target)],
    max_load: &[LoadResult],
    connections: usize,
    duration: Duration,
) -> anyhow::Result<Vec<LoadReport>> {
    let max_of = |t: &Target| {
        max_load
            .iter()
            .find(|r| r.target == t.name)
            .map(|r| r.requests_per_sec)
    };
    let mut half_load = Vec::new();
    for (edge, base) in pairs {
        let (Some(e), Some(b)) = (max_of(edge), max_of(base)) else {
            continue;
        };
        let rate = e.min(b) / 2.0;
        for t in [edge, base] {
            let spec = LoadSpec {
                addr: SocketAddr::from(([127, 0, 0, 1], t.port)),
                host: t.host.into(),
                path: "/".into(),
                connections,
                duration,
                arrival: Arrival::Open { rate },
            };
            half_load.push(loadgen::run(&t.name, &spec)?);
        }
    }
    Ok(half_load)
}

/// One server core each: every server on CPU 0, wrk alone on CPU 1. wrk saturates its CPU
/// before a fast server does, so besides req/s this reads CPU 0's time from /proc/stat:
/// requests per CPU-second of the server's core is the server's own capacity. Each pair runs
/// back to back, `--rounds` times over; the medians are reported (this VM's speed drifts by
/// 10-20% within minutes).
fn one_core_phase(
    args: &Args,
    wrk: &Wrk,
    edged_bin: &std::path::Path,
    scratch: &std::path::Path,
    component: &std::path::Path,
) -> anyhow::Result<Vec<LoadResult>> {
    let wrk1 = Wrk {
        cpu: Some(LOADGEN_CPU),
        ..*wrk
    };
    let (servers, runs) = one_core_servers(args, edged_bin, scratch, component)?;
    let rounds = if args.smoke { 1 } else { args.rounds.max(1) };
    let mut all: Vec<LoadResult> = Vec::new();
    for _ in 0..rounds {
        for (name, port, host) in &runs {
            let url = format!("http://127.0.0.1:{port}/");
            all.push(wrk1.run_metered(name, &url, host, SERVER_CPU)?);
        }
    }
    drop(servers);
    Ok(runs
        .iter()
        .map(|(name, ..)| {
            let of: Vec<&LoadResult> = all.iter().filter(|r| r.target == *name).collect();
            median_result(name, &of)
        })
        .collect())
}

/// Every server on CPU 0 for the one-core phase, and its runs: edgeplane's and its baseline's
/// back to back.
fn one_core_servers(
    args: &Args,
    edged_bin: &std::path::Path,
    scratch: &std::path::Path,
    component: &std::path::Path,
) -> anyhow::Result<(Vec<Server>, Vec<Run>)> {
    let mut servers = vec![start_edged(
        edged_bin,
        scratch,
        component,
        EDGED_ONE_CORE_PORT,
        EdgedOptions {
            pin: true,
            workers: Some(1),
            prepare_ahead: PREPARE_AHEAD,
            reuse: if args.large { LARGE_REUSE } else { REUSE },
        },
    )?];
    let mut runs: Vec<Run> = Vec::new();
    let [
        (static_name, nginx_name),
        (reuse_name, wasmtime_reuse_name),
        (fresh_name, wasmtime_fresh_name),
    ] = ONE_CORE_PAIRS;
    runs.push((static_name, EDGED_ONE_CORE_PORT, "static"));
    match nginx(
        &scratch.join("nginx-one-core"),
        NGINX_ONE_CORE_PORT,
        1,
        Some("01"),
        "hello\\n",
    ) {
        Ok(s) => {
            servers.push(s);
            runs.push((nginx_name, NGINX_ONE_CORE_PORT, "static"));
        }
        Err(e) => eprintln!("!!!!! nginx one-core baseline skipped: {e:#}"),
    }
    let wasmtime = find_wasmtime();
    for (edge, base, port, reuse, host) in [
        (
            reuse_name,
            wasmtime_reuse_name,
            WASMTIME_REUSE_ONE_CORE_PORT,
            Some(100_000),
            "reused",
        ),
        (
            fresh_name,
            wasmtime_fresh_name,
            WASMTIME_FRESH_ONE_CORE_PORT,
            None,
            "hello",
        ),
    ] {
        runs.push((edge, EDGED_ONE_CORE_PORT, host));
        if let Some(wasmtime) = &wasmtime {
            servers.push(wasmtime_serve(
                wasmtime,
                component,
                port,
                reuse,
                Some(SERVER_CPU),
            )?);
            runs.push((base, port, "hello"));
        }
    }
    Ok((servers, runs))
}

/// A large component: the one-core phase (edgeplane vs `wasmtime serve` per CPU-second, fresh
/// and reused), then latency at a low open-loop rate, where a worker is idle between requests:
/// fresh instances prepared ahead, reused ones, fresh ones made on the request's path (an edged
/// with `prepare_ahead = 0`), and `wasmtime serve`'s fresh ones. One server core each.
fn large(
    args: &Args,
    edged_bin: &std::path::Path,
    component: &std::path::Path,
    duration: Duration,
) -> anyhow::Result<()> {
    let scratch = std::env::temp_dir().join(format!("edgeplane-http-large-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let wrk = Wrk {
        cpu: None,
        threads: 1,
        connections: args.connections,
        duration,
    };
    std::fs::create_dir_all(scratch.join("unprepared"))?;
    let one_core = one_core_phase(args, &wrk, edged_bin, &scratch, component)?;
    print_one_core(&one_core);

    let (servers, targets) = large_servers(edged_bin, &scratch, component)?;
    let mut low_load = Vec::new();
    for (name, port, host) in &targets {
        let spec = LoadSpec {
            addr: SocketAddr::from(([127, 0, 0, 1], *port)),
            host: (*host).into(),
            path: "/".into(),
            connections: 4,
            duration,
            arrival: Arrival::Open {
                rate: args.low_rate,
            },
        };
        low_load.push(loadgen::run(name, &spec)?);
    }
    drop(servers);
    let _ = std::fs::remove_dir_all(&scratch);
    print_low_load(&low_load, args.low_rate);
    if let Some(path) = &args.json {
        let results = Results {
            max_load: Vec::new(),
            half_load: Vec::new(),
            one_core,
            low_load: low_load.clone(),
        };
        std::fs::write(path, serde_json::to_string_pretty(&results)?)?;
    }
    anyhow::ensure!(
        low_load.iter().all(|r| r.errors == 0),
        "some requests failed; see the table above"
    );
    Ok(())
}

/// One server core each: edged preparing instances ahead, edged making them on the request's
/// path, and `wasmtime serve` where installed; the targets (name, port, host) they serve.
fn large_servers(
    edged_bin: &std::path::Path,
    scratch: &std::path::Path,
    component: &std::path::Path,
) -> anyhow::Result<(Vec<Server>, Vec<Run>)> {
    let mut servers = vec![
        start_edged(
            edged_bin,
            scratch,
            component,
            EDGED_ONE_CORE_PORT,
            EdgedOptions {
                pin: true,
                workers: Some(1),
                prepare_ahead: PREPARE_AHEAD,
                reuse: REUSE,
            },
        )?,
        start_edged(
            edged_bin,
            &scratch.join("unprepared"),
            component,
            EDGED_UNPREPARED_PORT,
            EdgedOptions {
                pin: true,
                workers: Some(1),
                prepare_ahead: 0,
                reuse: REUSE,
            },
        )?,
    ];
    let mut targets = vec![
        (
            "edgeplane fresh, prepared ahead",
            EDGED_ONE_CORE_PORT,
            "hello",
        ),
        ("edgeplane reused", EDGED_ONE_CORE_PORT, "reused"),
        (
            "edgeplane fresh, made on the path",
            EDGED_UNPREPARED_PORT,
            "hello",
        ),
    ];
    if let Some(wasmtime) = find_wasmtime() {
        servers.push(wasmtime_serve(
            &wasmtime,
            component,
            WASMTIME_FRESH_ONE_CORE_PORT,
            None,
            Some(SERVER_CPU),
        )?);
        targets.push((
            "wasmtime serve, fresh",
            WASMTIME_FRESH_ONE_CORE_PORT,
            "hello",
        ));
    }
    Ok((servers, targets))
}

fn print_low_load(low_load: &[LoadReport], rate: f64) {
    println!(
        "\nLow load: {} req/s open loop, 4 connections, one server core",
        rate
    );
    println!(
        "{:<40} {:>10} {:>9} {:>9} {:>9} {:>7}",
        "server", "served/s", "p50 ms", "p90 ms", "p99 ms", "errors"
    );
    for r in low_load {
        println!(
            "{:<40} {:>10.0} {:>9.3} {:>9.3} {:>9.3} {:>7}",
            r.target, r.requests_per_sec, r.p50_ms, r.p90_ms, r.p99_ms, r.errors
        );
    }
    let p50 = |name: &str| low_load.iter().find(|r| r.target == name).map(|r| r.p50_ms);
    if let (Some(prepared), Some(reused)) = (
        p50("edgeplane fresh, prepared ahead"),
        p50("edgeplane reused"),
    ) {
        println!("p50, prepared ahead - reused: {:+.3} ms", prepared - reused);
    }
}

/// `edged` against `other` on one core each (the one-core phase's setup): static, reused hello
/// and fresh hello, each pair back to back, `--rounds` times; medians and their ratio.
fn versus(
    args: &Args,
    edged: &std::path::Path,
    other: &std::path::Path,
    component: &std::path::Path,
) -> anyhow::Result<()> {
    anyhow::ensure!(other.exists(), "{} is missing", other.display());
    let scratch = std::env::temp_dir().join(format!("edgeplane-versus-{}", std::process::id()));
    for side in ["this", "other"] {
        std::fs::create_dir_all(scratch.join(side))?;
    }
    let wrk = Wrk {
        cpu: Some(LOADGEN_CPU),
        threads: 1,
        connections: args.connections,
        duration: Duration::from_secs(if args.smoke { 1 } else { args.seconds }),
    };
    let servers = [
        start_edged(
            edged,
            &scratch.join("this"),
            component,
            EDGED_ONE_CORE_PORT,
            EdgedOptions {
                pin: true,
                workers: Some(1),
                prepare_ahead: PREPARE_AHEAD,
                reuse: LARGE_REUSE,
            },
        )?,
        start_edged(
            other,
            &scratch.join("other"),
            component,
            EDGED_VERSUS_PORT,
            EdgedOptions {
                pin: true,
                workers: Some(1),
                prepare_ahead: PREPARE_AHEAD,
                reuse: LARGE_REUSE,
            },
        )?,
    ];
    let mut all: Vec<LoadResult> = Vec::new();
    let cases = [
        ("static", "static"),
        ("reused hello", "reused"),
        ("fresh hello", "hello"),
    ];
    for _ in 0..if args.smoke { 1 } else { args.rounds.max(1) } {
        for (case, host) in cases {
            for (who, port) in [("this", EDGED_ONE_CORE_PORT), ("other", EDGED_VERSUS_PORT)] {
                let url = format!("http://127.0.0.1:{port}/");
                all.push(wrk.run_metered(&format!("{case}, {who}"), &url, host, SERVER_CPU)?);
            }
        }
    }
    drop(servers);
    let _ = std::fs::remove_dir_all(&scratch);
    print_versus(edged, other, &cases, &all);
    anyhow::ensure!(all.iter().all(|r| r.errors == 0), "some requests failed");
    Ok(())
}

/// Per case, this edged's and the other's requests per CPU-second (medians) and their ratio.
fn print_versus(
    edged: &std::path::Path,
    other: &std::path::Path,
    cases: &[(&str, &str)],
    all: &[LoadResult],
) {
    println!(
        "\n{} (this) vs {} (other), one core each, medians of the rounds",
        edged.display(),
        other.display()
    );
    println!(
        "{:<14} {:>16} {:>16} {:>7}",
        "case", "this req/CPU-s", "other req/CPU-s", "ratio"
    );
    for (case, _) in cases {
        let median_of = |who: &str| {
            let name = format!("{case}, {who}");
            let of: Vec<&LoadResult> = all.iter().filter(|r| r.target == name).collect();
            median_result(&name, &of)
                .requests_per_cpu_second
                .unwrap_or(f64::NAN)
        };
        let (this, that) = (median_of("this"), median_of("other"));
        println!("{case:<14} {this:>16.0} {that:>16.0} {:>6.3}x", this / that);
    }
}

/// Each figure's median over `runs` of one target (errors: their sum).
fn median_result(target: &str, runs: &[&LoadResult]) -> LoadResult {
    let median = |f: &dyn Fn(&LoadResult) -> f64| {
        edgeplane_bench::scenario::median(runs.iter().map(|r| f(r)))
    };
    let busy_fraction = median(&|r| r.server_cpu.map_or(f64::NAN, |c| c.busy_fraction));
    let busy_seconds = median(&|r| r.server_cpu.map_or(f64::NAN, |c| c.busy_seconds));
    let user_seconds = median(&|r| r.server_cpu.map_or(f64::NAN, |c| c.user_seconds));
    LoadResult {
        target: target.into(),
        requests_per_sec: median(&|r| r.requests_per_sec),
        p50_ms: median(&|r| r.p50_ms),
        p99_ms: median(&|r| r.p99_ms),
        errors: runs.iter().map(|r| r.errors).sum(),
        server_cpu: Some(CpuUse {
            busy_fraction,
            busy_seconds,
            user_seconds,
        }),
        requests_per_cpu_second: Some(median(&|r| r.requests_per_cpu_second.unwrap_or(f64::NAN))),
    }
}

/// How `start_edged` runs edged.
#[derive(Clone, Copy)]
struct EdgedOptions {
    pin: bool,
    /// Workers (None: one per CPU).
    workers: Option<u32>,
    prepare_ahead: u32,
    /// Requests per instance for the `reused` app.
    reuse: u32,
}

fn start_edged(
    edged_bin: &std::path::Path,
    scratch: &std::path::Path,
    component: &std::path::Path,
    port: u16,
    opts: EdgedOptions,
) -> anyhow::Result<Server> {
    let EdgedOptions {
        pin,
        workers,
        prepare_ahead,
        reuse,
    } = opts;
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
{prepare_ahead}
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
limits = {{ instance_reuse = {reuse} }}
[[apps]]
name = "static"
vips = []
hosts = ["static"]
static_body = "hello\n"
"#,
            pid = std::process::id(),
            admin = port + 1000,
            count = workers.unwrap_or(0),
            // Left out at edged's default, so that `--versus` can run an edged older than it.
            prepare_ahead = if prepare_ahead == PREPARE_AHEAD {
                String::new()
            } else {
                format!("prepare_ahead = {prepare_ahead}")
            },
            cache = scratch.join("cache").display(),
            component = component.display(),
        ),
    )?;
    edgeplane_testkit::edged::start_local(
        &config,
        edged_bin,
        SocketAddr::from(([127, 0, 0, 1], port)),
    )
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
    println!(
        "\nOne server core: the server on CPU {SERVER_CPU} alone, wrk -t1 on CPU {LOADGEN_CPU}; \
         CPU {SERVER_CPU}'s busy time from /proc/stat; medians of the rounds"
    );
    println!(
        "{:<44} {:>10} {:>8} {:>7} {:>12} {:>15} {:>7}",
        "server", "req/s", "p99 ms", "CPU 0", "req/CPU-s", "us user+kernel", "errors"
    );
    for r in results {
        let busy = r.server_cpu.map_or(f64::NAN, |c| c.busy_fraction * 100.0);
        let per_cpu = r.requests_per_cpu_second.unwrap_or(f64::NAN);
        // Where a request's CPU time goes: the server's code, or the kernel (loopback TCP,
        // the server's syscalls).
        let (user_us, kernel_us) = r
            .server_cpu
            .map_or((f64::NAN, f64::NAN), |c| c.per_request_us(per_cpu));
        println!(
            "{:<44} {:>10.0} {:>8.2} {:>6.1}% {:>12.0} {:>7.2}+{:<7.2} {:>7}",
            r.target, r.requests_per_sec, r.p99_ms, busy, per_cpu, user_us, kernel_us, r.errors
        );
    }
    let find = |name: &str| results.iter().find(|r| r.target == name);
    for (edge, base) in ONE_CORE_PAIRS {
        if let (Some(e), Some(b)) = (find(edge), find(base)) {
            let per_cpu = e.requests_per_cpu_second.unwrap_or(f64::NAN)
                / b.requests_per_cpu_second.unwrap_or(f64::NAN);
            println!(
                "{edge} vs {base}: {:.2}x req/s, {per_cpu:.2}x req per CPU-second",
                e.requests_per_sec / b.requests_per_sec
            );
        }
    }
}
