//! The main job, on embedded defaults: the canonical multi-datacenter world (client, POP, dc2,
//! region, backend in network namespaces, WAN delay on every link), `edged` at each datacenter,
//! and three apps whose code the placement engine places: `fetcher` (5 sequential subrequests
//! to a backend 80 ms from the POP and 5 ms from dc2), `hello` (no subrequests) and the split
//! app `shop` (its `db` function calls the backend, its `greet` function does not). Each app
//! is measured always-local (pinned at the POP), by the engine (smart, after it converges), and
//! at the oracle (pinned by hand where it runs best). Prints a table, writes JSON and SVG plots;
//! namespaces, daemons and pins go away at the end, on failure and on Ctrl-C.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Args;
use edgeplane_abi::{Placement, placement_flags, placement_kind};
use edgeplane_bench::{
    loadgen::{self, Arrival, LoadReport, LoadSpec},
    plot::{self, Series},
    scenario,
};
use edgeplane_placement::Verdict;
use edgeplane_testkit::canonical::{Canonical, Tuning};

use crate::{build_apps, cargo, step, target_dir, workspace_root};

#[derive(Args)]
pub struct DemoArgs {
    /// A short run (for the test that checks the demo's output).
    #[arg(long)]
    short: bool,
    /// Where to write results (default: results/demo).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run the datacenters on the fleet's control plane: a nats-server in its own namespace,
    /// and every app deployed with `edgectl deploy` instead of written in a file.
    #[arg(long)]
    fleet: bool,
}

impl DemoArgs {
    /// A full run writing its results to `out`.
    pub fn full(out: PathBuf) -> Self {
        Self {
            short: false,
            out: Some(out),
            fleet: false,
        }
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// One app of the demo: how a client asks for it, and which placement entry moves it.
struct DemoApp {
    name: &'static str,
    host: &'static str,
    path: &'static str,
    /// The app (or function) whose PLACEMENT entry the modes set.
    unit: &'static str,
}

const APPS: [DemoApp; 3] = [
    DemoApp {
        name: "fetcher",
        host: "fetch.demo",
        path: "/?k=5",
        unit: "fetcher",
    },
    DemoApp {
        name: "hello",
        host: "hello.demo",
        path: "/",
        unit: "hello",
    },
    DemoApp {
        name: "shop (split)",
        host: "shop.demo",
        path: "/?k=5",
        unit: "shop.db",
    },
];

fn apps_toml(url: &str, authority: &str) -> String {
    let app = |name: &str| {
        edgeplane_testkit::guest_apps::component(&workspace_root().join("apps"), name)
            .display()
            .to_string()
    };
    format!(
        r#"
[[apps]]
name = "fetcher"
hosts = ["fetch.demo"]
component = "{fetcher}"
env = {{ BACKEND_URL = "{url}" }}
allowed_backends = ["{authority}"]
placement = {{ mode = "smart" }}

[[apps]]
name = "hello"
hosts = ["hello.demo"]
component = "{hello}"
placement = {{ mode = "smart" }}

"#,
        fetcher = app("fetcher"),
        hello = app("hello"),
    ) + &edgeplane_testkit::apps::split_shop_toml("shop.demo", url, authority, None)
}

/// What one app measured in each mode.
#[derive(serde::Serialize)]
struct AppResult {
    app: String,
    /// The engine's verdict after smart mode converged, and how long that took.
    engine_status: String,
    convergence_s: f64,
    convergence_requests: usize,
    always_local: LoadReport,
    smart: LoadReport,
    oracle: LoadReport,
    oracle_at: String,
    /// (seconds since smart mode began, request latency ms) while the engine converged.
    #[serde(skip)]
    convergence: Vec<(f64, f64)>,
}

fn set_placement(world: &Canonical, unit: &str, p: Placement) -> anyhow::Result<()> {
    edgeplane_testkit::edged::place(world.pins("pop"), unit, p)
}

fn pinned(kind: u32, datacenter: u32) -> Placement {
    Placement {
        kind,
        datacenter,
        flags: placement_flags::PINNED,
        ..Default::default()
    }
}

fn load(world: &Canonical, app: &DemoApp, label: &str, secs: u64) -> anyhow::Result<LoadReport> {
    check_interrupted()?;
    let spec = LoadSpec {
        addr: world.pop_addr(),
        host: app.host.into(),
        path: app.path.into(),
        connections: 4,
        duration: Duration::from_secs(secs),
        arrival: Arrival::Closed,
    };
    let target = format!("{} {label}", app.name);
    world
        .world
        .ns("client")
        .run(|| loadgen::run(&target, &spec))?
}

/// The engine's verdict, seconds to reach it, and (seconds, latency ms) of each request sent
/// meanwhile.
type Converged = (String, f64, Vec<(f64, f64)>);

/// Hands the app back to the engine and sends requests until its verdict settles.
fn converge(world: &Canonical, app: &DemoApp) -> anyhow::Result<Converged> {
    set_placement(
        world,
        app.unit,
        Placement {
            flags: placement_flags::SMART,
            ..Default::default()
        },
    )?;
    let started = Instant::now();
    let mut samples = Vec::new();
    loop {
        check_interrupted()?;
        let (status, _, body, took) = world.through_pop(app.host, app.path);
        anyhow::ensure!(status == 200, "{}: {status} {body}", app.name);
        samples.push((started.elapsed().as_secs_f64(), took.as_secs_f64() * 1e3));
        let status = world.placement_status().remove(app.unit);
        let verdict = status.as_ref().map(|s| &s.verdict);
        let settled = matches!(verdict, Some(Verdict::Placed(_)))
            || (verdict == Some(&Verdict::Local) && samples.len() >= 6);
        let verdict = verdict.map_or_else(|| "-".to_owned(), |v| v.to_string());
        if settled {
            return Ok((verdict, started.elapsed().as_secs_f64(), samples));
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("{}: no placement after 60 s ({verdict})", app.name);
        }
    }
}

fn measure(world: &Canonical, app: &DemoApp, secs: u64) -> anyhow::Result<AppResult> {
    let dc2 = world.plan.datacenter("dc2").context("dc2")?.id;
    step(&format!(
        "{}: always-local (pinned at the POP), {secs} s",
        app.name
    ));
    set_placement(world, app.unit, pinned(placement_kind::LOCAL, 0))?;
    let always_local = load(world, app, "always-local", secs)?;
    step(&format!("{}: smart (the engine decides)", app.name));
    let (engine_status, convergence_s, convergence) = converge(world, app)?;
    step(&format!(
        "{}: engine says {engine_status} after {} requests, {convergence_s:.1} s; measuring {secs} s",
        app.name,
        convergence.len()
    ));
    let smart = load(world, app, "smart", secs)?;
    // The oracle: where the app runs best, known by hand (dc2 beside the backend for apps
    // that call it; the POP for hello).
    let (oracle_at, oracle) = if app.name == "hello" {
        ("pop", pinned(placement_kind::LOCAL, 0))
    } else {
        ("dc2", pinned(placement_kind::DATACENTER, dc2))
    };
    step(&format!(
        "{}: oracle (pinned at {oracle_at}), {secs} s",
        app.name
    ));
    set_placement(world, app.unit, oracle)?;
    let oracle = load(world, app, "oracle", secs)?;
    Ok(AppResult {
        app: app.name.into(),
        engine_status,
        convergence_s,
        convergence_requests: convergence.len(),
        always_local,
        smart,
        oracle,
        oracle_at: oracle_at.into(),
        convergence,
    })
}

fn print_table(results: &[AppResult]) {
    println!();
    println!(
        "{:<14} {:<14} {:>12} {:>21} {:>21} {:>21} {:>10}",
        "app",
        "engine",
        "converged",
        "always-local p50/p99",
        "smart p50/p99",
        "oracle p50/p99",
        "speed-up"
    );
    for r in results {
        let cell = |l: &LoadReport| format!("{:.1}/{:.1} ms", l.p50_ms, l.p99_ms);
        println!(
            "{:<14} {:<14} {:>12} {:>21} {:>21} {:>21} {:>9.2}x",
            r.app,
            r.engine_status,
            format!("{:.1} s/{} req", r.convergence_s, r.convergence_requests),
            cell(&r.always_local),
            cell(&r.smart),
            format!("{} ({})", cell(&r.oracle), r.oracle_at),
            r.always_local.p50_ms / r.smart.p50_ms.max(1e-9),
        );
    }
    println!(
        "(speed-up: always-local p50 / smart p50; 4 keep-alive connections, closed loop, from the client namespace)"
    );
}

/// Deploys the demo's apps with `edgectl --nats ... deploy` (from the POP's namespace), each
/// from a table file of its own, and waits until every datacenter serves them.
fn deploy_to_fleet(world: &Canonical, out: &std::path::Path) -> anyhow::Result<()> {
    let url = world.nats.as_ref().context("a fleet world has NATS")?.url();
    let (backend_url, authority) = Canonical::backend_urls()?;
    let doc: toml::Table = toml::from_str(&apps_toml(&backend_url, &authority))?;
    let dir = out.join("fleet");
    std::fs::create_dir_all(&dir)?;
    let edgectl = target_dir().join("release/edgectl");
    let started = Instant::now();
    for app in doc
        .get("apps")
        .and_then(toml::Value::as_array)
        .context("apps")?
        .iter()
        .filter_map(toml::Value::as_table)
    {
        let name = app
            .get("name")
            .and_then(toml::Value::as_str)
            .context("name")?;
        let file = dir.join(format!("{name}.toml"));
        std::fs::write(&file, toml::to_string(app)?)?;
        let done = world
            .world
            .ns("pop")
            .command(edgectl.to_str().context("utf-8 path")?)
            .args(["--nats", &url, "deploy"])
            .arg(&file)
            .output()?;
        anyhow::ensure!(
            done.status.success(),
            "edgectl deploy {name}: {}",
            String::from_utf8_lossy(&done.stderr)
        );
        step(String::from_utf8_lossy(&done.stdout).trim());
    }
    for app in &APPS {
        loop {
            check_interrupted()?;
            let (status, ..) = world.through_pop(app.host, "/");
            if status == 200 {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(120),
                "{}: not served {:?} after deploying ({status})",
                app.name,
                started.elapsed()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    step(&format!(
        "every app deployed through NATS answers at the POP {:.1} s after the first deploy",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    ctrlc::set_handler(|| {
        eprintln!("\ninterrupted: cleaning up");
        INTERRUPTED.store(true, Ordering::SeqCst);
    })?;
    let out = crate::demo_out(args.out.clone(), "results/demo")?;
    let secs = if args.short { 2 } else { 8 };

    step("building edged, edgectl (release) and the apps");
    cargo(edgeplane_testkit::binaries::BUILD)?;
    build_apps()?;

    step(
        "building the canonical world: client, pop, dc2, region, backend; starting edged at pop, dc2, region",
    );
    let world = canonical_world(args.fleet, &out)?;
    for (a, b) in [("pop", "backend"), ("dc2", "backend"), ("pop", "dc2")] {
        if let Some(rtt) = world.plan.rtt(a, b) {
            step(&format!("link {a}-{b}: {} ms RTT", rtt.as_millis()));
        }
    }
    let mut results = Vec::new();
    for app in &APPS {
        results.push(measure(&world, app, secs)?);
    }
    print_table(&results);

    write_results(&out, &results)?;
    step(&format!(
        "results in {}: summary.json, cdf-*.svg, throughput-*.svg, convergence.svg",
        out.display()
    ));
    drop(world);
    step("cleaned up: daemons stopped, pins and namespaces removed");
    Ok(())
}

/// The canonical world with edged at pop, dc2 and region: its apps from the file, or deployed
/// through the fleet's NATS.
fn canonical_world(fleet: bool, out: &Path) -> anyhow::Result<Canonical> {
    let edged = target_dir().join("release/edged");
    let world = if fleet {
        let world =
            Canonical::start_fleet("demo", &["pop", "dc2", "region"], 0.01, &edged, |_| {
                Tuning::default()
            })?;
        deploy_to_fleet(&world, out)?;
        world
    } else {
        Canonical::start(
            "demo",
            &["pop", "dc2", "region"],
            0.01,
            &edged,
            apps_toml,
            |_| Tuning::default(),
        )?
    };
    Ok(world)
}

/// summary.json, and per app its latency CDF and throughput, and the engine's convergence, as
/// SVG plots.
fn write_results(out: &Path, results: &[AppResult]) -> anyhow::Result<()> {
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_vec_pretty(results)?,
    )?;
    for r in results {
        let file = r.app.split(' ').next().unwrap_or("app");
        plot::latency_cdf(
            &out.join(format!("cdf-{file}.svg")),
            &format!("{}: request latency through the POP", r.app),
            &[
                ("always-local".into(), r.always_local.cdf.clone()),
                ("smart".into(), r.smart.cdf.clone()),
                (format!("oracle ({})", r.oracle_at), r.oracle.cdf.clone()),
            ],
        )?;
        plot::lines(
            &out.join(format!("throughput-{file}.svg")),
            &format!("{}: requests served per second", r.app),
            "second of the run",
            "requests served per second",
            &[&r.always_local, &r.smart, &r.oracle].map(scenario::throughput_series),
        )?;
    }
    let convergence: Vec<Series> = results
        .iter()
        .map(|r| Series {
            label: format!("{} -> {}", r.app, r.engine_status),
            points: r.convergence.clone(),
        })
        .collect();
    plot::lines(
        &out.join("convergence.svg"),
        "smart placement converging: latency of each request",
        "seconds since the app was handed to the engine",
        "latency (ms)",
        &convergence,
    )?;
    Ok(())
}
