//! `fleet-bench`: the fleet's control plane in the canonical world (pop, dc2, region on a
//! nats-server). How long from `edgectl deploy` to the new version answering at every
//! datacenter, over N deploys that alternate two components (both in every code cache after the
//! first two: what is timed is the control plane, not compilation); and how fast the placement
//! engine places a fresh `fetcher` at dc2 with its peers' measurements from the stream, against
//! the same engine asking its peers on demand (a world of file configs) in the same run. Run as
//! root: `./x bench fleet`.

use std::{
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::Parser;
use edgeplane_bench::scenario::Setup;
use edgeplane_testkit::{
    canonical::{Canonical, Tuning},
    edged::WORKER_PORT,
    raw_http::{get, header},
};
use hdrhistogram::Histogram;

#[derive(Parser)]
#[command(about = "config propagation through NATS, and placement from streamed measurements")]
struct Args {
    /// A short run for CI: checks the harness; figures are not meaningful.
    #[arg(long)]
    smoke: bool,
    /// Deploys timed.
    #[arg(long, default_value_t = 50)]
    deploys: usize,
    /// Fresh fetcher apps placed, per world.
    #[arg(long, default_value_t = 5)]
    placements: usize,
    /// Results folder (JSON).
    #[arg(long, default_value = "results/bench/fleet")]
    out: PathBuf,
}

const DATACENTERS: [&str; 3] = ["pop", "dc2", "region"];

#[derive(serde::Serialize)]
struct Results {
    deploys: usize,
    propagation_ms: Vec<f64>,
    propagation_p50_ms: f64,
    propagation_p99_ms: f64,
    propagation_max_ms: f64,
    /// (requests, seconds of traffic) until each fresh fetcher was placed at dc2.
    converge_stream: Vec<(u32, f64)>,
    converge_probes: Vec<(u32, f64)>,
    /// Probes the POP asked of peers on demand, in each world.
    peer_probes_stream: u64,
    peer_probes_probes: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let setup = Setup::new("fleet-bench")?;
    let (deploys, placements) = if args.smoke {
        (4, 1)
    } else {
        (args.deploys, args.placements)
    };
    let edgectl = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .join("edgectl");
    let out = setup.results_dir(&args.out);
    std::fs::create_dir_all(&out)?;
    let scratch =
        std::env::temp_dir().join(format!("edgeplane-fleet-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;

    eprintln!("fleet world: pop, dc2, region and a nats-server");
    let world = Canonical::start_fleet("fleetb", &DATACENTERS, 0.0, &setup.edged, |_| {
        Tuning::default()
    })?;
    let deployer = Deployer {
        world: &world,
        edgectl: &edgectl,
        url: world.nats.as_ref().context("nats")?.url(),
    };
    let files = probe_versions(&scratch, &setup)?;
    let (hist, propagation) = propagation(&deployer, &files, deploys)?;
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1e3;
    eprintln!(
        "propagation over {deploys} deploys: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(0.5),
        ms(0.99),
        hist.max() as f64 / 1e3
    );

    let fetcher = setup.app("fetcher")?;
    let (url_backend, authority) = Canonical::backend_urls()?;
    let fetcher_table = |name: &str| {
        format!(
            "name = \"{name}\"\nhosts = [\"{name}.test\"]\ncomponent = \"{}\"\n\
             env = {{ BACKEND_URL = \"{url_backend}\" }}\nallowed_backends = [\"{authority}\"]\n\
             placement = {{ mode = \"smart\" }}\n",
            fetcher.display()
        )
    };
    let names: Vec<String> = (0..placements).map(|i| format!("fetcher{i}")).collect();
    let converge_stream = placed_from_the_stream(&deployer, &scratch, &names, &fetcher_table)?;
    let peer_probes_stream = world.metric("pop", "edgeplane_placement_peer_probes_total", &[]);
    drop(world);

    eprintln!("file world: the same apps in each datacenter's file; the engine asks its peers");
    let (converge_probes, peer_probes_probes) = placed_from_probes(&setup, &names, &fetcher_table)?;

    let results = Results {
        deploys,
        propagation_ms: propagation,
        propagation_p50_ms: ms(0.5),
        propagation_p99_ms: ms(0.99),
        propagation_max_ms: hist.max() as f64 / 1e3,
        converge_stream,
        converge_probes,
        peer_probes_stream,
        peer_probes_probes,
    };
    print_results(&results);
    std::fs::write(out.join("fleet.json"), serde_json::to_vec_pretty(&results)?)?;
    let _ = std::fs::remove_dir_all(scratch);
    Ok(())
}

/// `edgectl deploy` from the POP's namespace to the fleet's NATS.
struct Deployer<'a> {
    world: &'a Canonical,
    edgectl: &'a Path,
    url: String,
}

impl Deployer<'_> {
    fn deploy(&self, file: &Path) -> anyhow::Result<()> {
        let done = self
            .world
            .world
            .ns("pop")
            .command(self.edgectl.to_str().context("utf-8")?)
            .args(["--nats", &self.url, "deploy"])
            .arg(file)
            .output()?;
        anyhow::ensure!(
            done.status.success(),
            "deploy: {}",
            String::from_utf8_lossy(&done.stderr)
        );
        Ok(())
    }
}

/// The app `probe` as hello and as echo: two versions to deploy in turn.
fn probe_versions(scratch: &Path, setup: &Setup) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let (hello, echo) = (setup.app("hello")?, setup.app("echo")?);
    let versions = [("hello", &hello), ("echo", &echo)];
    let mut files = Vec::new();
    for (name, component) in versions {
        let file = scratch.join(format!("probe-{name}.toml"));
        std::fs::write(
            &file,
            format!(
                "name = \"probe\"\nhosts = [\"probe.test\"]\ncomponent = \"{}\"\n",
                component.display()
            ),
        )?;
        files.push(file);
    }
    Ok(files)
}

/// Both versions compiled at every datacenter first; then `deploys` deploys, alternating, each
/// timed until every datacenter serves it.
fn propagation(
    deployer: &Deployer<'_>,
    files: &[std::path::PathBuf],
    deploys: usize,
) -> anyhow::Result<(Histogram<u64>, Vec<f64>)> {
    let world = deployer.world;
    // Both versions compiled at every datacenter first.
    for (i, file) in files.iter().enumerate() {
        deployer.deploy(file)?;
        wait_everywhere(world, i == 1, Duration::from_secs(300))?;
    }
    let mut hist = Histogram::<u64>::new(3)?;
    let mut propagation = Vec::new();
    for i in 0..deploys {
        let echo = i % 2 == 0;
        let started = Instant::now();
        deployer.deploy(&files[usize::from(echo)])?;
        wait_everywhere(world, echo, Duration::from_secs(60))?;
        let took = started.elapsed();
        hist.record(took.as_micros() as u64)?;
        propagation.push(took.as_secs_f64() * 1e3);
    }
    Ok((hist, propagation))
}

/// Each fetcher deployed through the fleet, then placed from dc2's streamed measurements: the
/// traffic it took (requests, seconds).
fn placed_from_the_stream(
    deployer: &Deployer<'_>,
    scratch: &Path,
    names: &[String],
    fetcher_table: &dyn Fn(&str) -> String,
) -> anyhow::Result<Vec<(u32, f64)>> {
    let world = deployer.world;
    let mut converge_stream = Vec::new();
    for name in names {
        let file = scratch.join(format!("{name}.toml"));
        std::fs::write(&file, fetcher_table(name))?;
        deployer.deploy(&file)?;
        wait_serving(world, name)?;
        // dc2's figures reach the POP within a heartbeat or two.
        std::thread::sleep(Duration::from_secs(3));
        converge_stream.push(converge(world, name)?);
    }
    Ok(converge_stream)
}

/// The same fetchers in each datacenter's file: the engine asks its peers on demand.
fn placed_from_probes(
    setup: &Setup,
    names: &[String],
    fetcher_table: &dyn Fn(&str) -> String,
) -> anyhow::Result<(Vec<(u32, f64)>, u64)> {
    let world = Canonical::start(
        "fleetp",
        &DATACENTERS,
        0.0,
        &setup.edged,
        |_, _| {
            names
                .iter()
                .map(|n| format!("[[apps]]\n{}", fetcher_table(n)))
                .collect::<Vec<_>>()
                .join("\n")
        },
        |_| Tuning::default(),
    )?;
    let mut converge_probes = Vec::new();
    for name in names {
        converge_probes.push(converge(&world, name)?);
    }
    let peer_probes_probes = world.metric("pop", "edgeplane_placement_peer_probes_total", &[]);
    drop(world);

    Ok((converge_probes, peer_probes_probes))
}

/// A GET of `host` at `dc`'s own address from its namespace: status and headers.
fn ask(world: &Canonical, dc: &str, host: &str) -> Option<(u16, Vec<(String, String)>)> {
    let addr: SocketAddr = world.plan.fleet(WORKER_PORT).datacenter(dc)?.handoff[0];
    world
        .world
        .ns(dc)
        .run(|| {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
            let (status, headers, _) = get(&mut s, host, "/");
            Some((status, headers))
        })
        .ok()
        .flatten()
}

/// Polls every datacenter (each from its own thread) until the probe app answers as `echo`
/// (or as hello).
fn wait_everywhere(world: &Canonical, echo: bool, timeout: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    std::thread::scope(|s| {
        let waits: Vec<_> = DATACENTERS
            .iter()
            .map(|dc| {
                s.spawn(move || {
                    loop {
                        if let Some((200, headers)) = ask(world, dc, "probe.test")
                            && header(&headers, "x-echo-method").is_some() == echo
                        {
                            return Ok(());
                        }
                        anyhow::ensure!(
                            started.elapsed() < timeout,
                            "{dc}: not updated in {timeout:?}"
                        );
                        std::thread::sleep(Duration::from_millis(2));
                    }
                })
            })
            .collect();
        waits
            .into_iter()
            .try_for_each(|w| w.join().expect("no panic"))
    })
}

fn wait_serving(world: &Canonical, app: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    let host = format!("{app}.test");
    for dc in DATACENTERS {
        while !matches!(ask(world, dc, &host), Some((200, _))) {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(300),
                "{app} not served at {dc}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// Requests through the POP until `app` is handed to dc2: (requests, seconds of traffic).
fn converge(world: &Canonical, app: &str) -> anyhow::Result<(u32, f64)> {
    let started = Instant::now();
    let host = format!("{app}.test");
    let mut requests = 0;
    loop {
        let (status, headers, body, _) = world.through_pop(&host, "/?k=5");
        anyhow::ensure!(status == 200, "{app}: {status} {body}");
        requests += 1;
        if header(&headers, "x-edge-placement") == Some("remote-dc2") {
            return Ok((requests, started.elapsed().as_secs_f64()));
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(120),
            "{app} not placed at dc2 after {requests} requests"
        );
    }
}

fn print_results(r: &Results) {
    let median = |v: &[(u32, f64)]| {
        let mut s: Vec<f64> = v.iter().map(|c| c.1).collect();
        s.sort_by(f64::total_cmp);
        s.get(s.len() / 2).copied().unwrap_or(0.0)
    };
    println!(
        "config propagation, edgectl deploy -> new version at all {} datacenters, {} deploys: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        DATACENTERS.len(),
        r.deploys,
        r.propagation_p50_ms,
        r.propagation_p99_ms,
        r.propagation_max_ms
    );
    println!(
        "fetcher placed at dc2, median seconds of traffic: streamed measurements {:.2} s ({} peer probes), on-demand probes {:.2} s ({} peer probes); requests {:?} vs {:?}",
        median(&r.converge_stream),
        r.peer_probes_stream,
        median(&r.converge_probes),
        r.peer_probes_probes,
        r.converge_stream.iter().map(|c| c.0).collect::<Vec<_>>(),
        r.converge_probes.iter().map(|c| c.0).collect::<Vec<_>>(),
    );
}
