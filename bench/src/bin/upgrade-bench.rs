//! `upgrade-bench`: the load generator's latency over time while edged is reconfigured and
//! upgraded under it. Open-loop load on hello (edged's one worker on CPU 0, the generator on
//! CPU 1); a reload that swaps the app's component, then an upgrade to the same binary. Reports
//! p99 and max in the two seconds after each switch against the steady state of the same run,
//! and the requests that failed (which must be none). Run as root: `./x bench upgrade`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use edgeplane_bench::{
    cpu::pin_current_thread,
    loadgen::{self, Arrival, LoadReport, LoadSpec},
    plot::{self, Series},
    scenario::Setup,
};
use edgeplane_dataplane::client::oneshot::{Once, send_blocking};
use edgeplane_testkit::process::Server;

#[derive(Parser)]
#[command(about = "latency over time across a reload and an upgrade of edged")]
struct Args {
    /// A short run for CI: checks the harness; figures are not meaningful.
    #[arg(long)]
    smoke: bool,
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Offered requests per second (open loop).
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Results folder (JSON and the SVG plot).
    #[arg(long, default_value = "results/bench/upgrade")]
    out: PathBuf,
}

const PORT: u16 = 18480;
const ADMIN_PORT: u16 = 19480;
const SERVER_CPU: u32 = 0;
const CLIENT_CPU: u32 = 1;
/// What counts as "during the switch": this long after it was asked for.
const SWITCH: f32 = 2.0;

/// When (s from the load's start) each switch was asked for, and how long it took to answer.
#[derive(Clone, Debug, serde::Serialize)]
struct Switch {
    what: &'static str,
    at_s: f32,
    took_ms: f64,
}

fn config(scratch: &std::path::Path, component: &std::path::Path) -> String {
    edgeplane_testkit::edged::one_worker_config(
        "upgrade-bench",
        PORT,
        ADMIN_PORT,
        &scratch.join("cache"),
        "hello",
        component,
    )
}

/// A POST to edged's admin endpoint; the answer's body.
fn admin_post(path: &str) -> anyhow::Result<String> {
    let mut ask = Once::get(path, "upgrade-bench", 1 << 20)?;
    ask.method = http::Method::POST;
    let answer = send_blocking(
        SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT)),
        ask,
        Duration::from_secs(300),
    )?;
    let body = String::from_utf8_lossy(&answer.body).into_owned();
    anyhow::ensure!(answer.status == 200, "{path}: {} {body}", answer.status);
    Ok(body)
}

/// The pid of the edged serving now (after an upgrade, not the one this process started).
fn serving_pid() -> anyhow::Result<u32> {
    let ask = Once::get("/process", "upgrade-bench", 1 << 16)?;
    let answer = send_blocking(
        SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT)),
        ask,
        Duration::from_secs(5),
    )?;
    let v: serde_json::Value = serde_json::from_slice(&answer.body)?;
    v["pid"].as_u64().map(|p| p as u32).context("no pid")
}

/// p99, max (ms) and count of the requests whose send time (s from the start) `keep` accepts.
fn tail(timeline: &[(f32, f32)], keep: impl Fn(f32) -> bool) -> (f64, f64, usize) {
    let mut v: Vec<f32> = timeline
        .iter()
        .filter(|(at, _)| keep(*at))
        .map(|(_, ms)| *ms)
        .collect();
    if v.is_empty() {
        return (0.0, 0.0, 0);
    }
    v.sort_by(f32::total_cmp);
    let p99 = v[((v.len() as f64 * 0.99) as usize).min(v.len() - 1)];
    (p99 as f64, *v.last().unwrap_or(&0.0) as f64, v.len())
}

/// p99 per 100 ms window of sending time, for the plot.
fn p99_over_time(timeline: &[(f32, f32)]) -> Vec<(f64, f64)> {
    let windows = timeline.iter().map(|(at, _)| *at).fold(0.0f32, f32::max) / 0.1;
    (0..=windows as usize)
        .filter_map(|w| {
            let from = w as f32 * 0.1;
            let (p99, _, n) = tail(timeline, |at| at >= from && at < from + 0.1);
            (n > 0).then_some((from as f64, p99))
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let setup = Setup::new("upgrade-bench")?;
    let (v1, v2) = (setup.app("hello")?, setup.app("hello-wstd")?);
    let scratch =
        std::env::temp_dir().join(format!("edgeplane-upgrade-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let config_path = scratch.join("edged.toml");
    std::fs::write(&config_path, config(&scratch, &v1))?;
    let first: Server = edgeplane_testkit::edged::start_local(
        &config_path,
        &setup.edged,
        SocketAddr::from(([127, 0, 0, 1], PORT)),
    )?;
    let seconds = if args.smoke { 4 } else { args.seconds };
    let (reload_at, upgrade_at) = (seconds as f32 * 0.3, seconds as f32 * 0.6);
    let spec = LoadSpec {
        addr: SocketAddr::from(([127, 0, 0, 1], PORT)),
        host: "hello.test".into(),
        path: "/".into(),
        connections: if args.smoke { 8 } else { args.connections },
        duration: Duration::from_secs(seconds),
        arrival: Arrival::Open {
            rate: if args.smoke { 200.0 } else { args.rate },
        },
    };
    let (report, switches) = std::thread::scope(|s| -> anyhow::Result<_> {
        let load = s.spawn(|| {
            pin_current_thread(CLIENT_CPU);
            loadgen::run("hello under reload and upgrade", &spec)
        });
        let started = std::time::Instant::now();
        let mut switches = Vec::new();
        for (what, at) in [("reload", reload_at), ("upgrade", upgrade_at)] {
            std::thread::sleep(Duration::from_secs_f32(at).saturating_sub(started.elapsed()));
            let asked = started.elapsed();
            if what == "reload" {
                std::fs::write(&config_path, config(&scratch, &v2))?;
                admin_post("/reload")?;
            } else {
                admin_post("/upgrade")?;
            }
            switches.push(Switch {
                what,
                at_s: asked.as_secs_f32(),
                took_ms: (started.elapsed() - asked).as_secs_f64() * 1000.0,
            });
        }
        let report = load
            .join()
            .map_err(|_| anyhow::anyhow!("load thread panicked"))??;
        Ok((report, switches))
    })?;
    // The upgraded edged is not our child: stop it by its pid, then reap the first.
    let last = serving_pid()?;
    // SAFETY: signalling the edged this run started (through its predecessor).
    unsafe { libc::kill(last as i32, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::path::Path::new(&format!("/proc/{last}")).exists()
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(first);
    let _ = std::fs::remove_dir_all(&scratch);
    summarize(&args, &setup, &report, &switches, spec.connections)
}

fn summarize(
    args: &Args,
    setup: &Setup,
    report: &LoadReport,
    switches: &[Switch],
    connections: usize,
) -> anyhow::Result<()> {
    let in_switch = |at: f32| {
        switches
            .iter()
            .any(|s| at >= s.at_s && at < s.at_s + SWITCH)
    };
    let (steady_p99, steady_max, steady_n) = tail(&report.timeline, |at| !in_switch(at));
    println!(
        "\nhello, open loop {:.0} req/s over {connections} connections for {:.0} s; edged's worker on CPU {SERVER_CPU}, the load on CPU {CLIENT_CPU}",
        report.offered_rate.unwrap_or(0.0),
        report.duration_s
    );
    println!(
        "{:<26} {:>9} {:>10} {:>10} {:>10}",
        "window", "requests", "p99 ms", "max ms", "vs steady"
    );
    println!(
        "{:<26} {:>9} {:>10.2} {:>10.2} {:>10}",
        "steady", steady_n, steady_p99, steady_max, "1.00x"
    );
    let mut rows = Vec::new();
    for s in switches {
        let (p99, max, n) = tail(&report.timeline, |at| at >= s.at_s && at < s.at_s + SWITCH);
        println!(
            "{:<26} {:>9} {:>10.2} {:>10.2} {:>9.2}x",
            format!("{} (+{SWITCH} s, took {:.0} ms)", s.what, s.took_ms),
            n,
            p99,
            max,
            p99 / steady_p99.max(1e-9)
        );
        rows.push(serde_json::json!({ "switch": s, "p99_ms": p99, "max_ms": max, "requests": n }));
    }
    println!(
        "completed {}, failed {}, reset {}",
        report.completed, report.errors, report.resets
    );
    let out = setup.results_dir(&args.out);
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("results.json"),
        serde_json::to_vec_pretty(&serde_json::json!({
            "run": report,
            "steady": { "p99_ms": steady_p99, "max_ms": steady_max, "requests": steady_n },
            "switches": rows,
        }))?,
    )?;
    let mut series = vec![Series {
        label: "p99 per 100 ms".into(),
        points: p99_over_time(&report.timeline),
    }];
    for s in switches {
        let top = series[0].points.iter().map(|p| p.1).fold(1.0, f64::max);
        series.push(Series {
            label: format!("{} asked", s.what),
            points: vec![(s.at_s as f64, 0.0), (s.at_s as f64, top)],
        });
    }
    plot::lines(
        &out.join("latency.svg"),
        "hello: latency over time across a reload and an upgrade",
        "second of the run",
        "p99 latency (ms)",
        &series,
    )?;
    println!("results in {}", out.display());
    anyhow::ensure!(
        report.errors == 0,
        "{} requests failed across the switches",
        report.errors
    );
    Ok(())
}
