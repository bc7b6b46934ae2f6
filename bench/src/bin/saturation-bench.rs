//! `saturation-bench`: a POP offered more than its workers can run, in the canonical world.
//! With overflow on, what the POP cannot run goes to the region; with it off (the baseline), the
//! POP refuses it with 503. Same offered load (open loop), same app, same world, same run.
//! Run as root: `./x bench saturation`.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use clap::Parser;
use edgeplane_bench::{
    loadgen::{self, Arrival, LoadReport, LoadSpec},
    scenario,
};
use edgeplane_testkit::canonical::{Canonical, Tuning};

#[derive(Parser)]
#[command(about = "a saturated POP: overflow to the region vs refusing")]
struct Args {
    /// Short runs for CI: checks the harness; figures are not meaningful.
    #[arg(long)]
    smoke: bool,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Offered requests per second (open loop).
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Instances the POP's one worker runs at once.
    #[arg(long, default_value_t = 4)]
    pop_instances: u32,
    /// Results folder (JSON and SVG plots).
    #[arg(long, default_value = "results/bench/saturation")]
    out: PathBuf,
}

/// The app: one subrequest to the backend, 80 ms from the POP and 30 ms from the region.
const HOST: &str = "fetch.sat";
const PATH: &str = "/?k=1";

#[derive(serde::Serialize)]
struct Mode {
    run: LoadReport,
    /// Requests the POP sent on to the region because it was saturated.
    to_region: u64,
    /// Requests the POP refused (503) because it was saturated.
    refused: u64,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let setup = scenario::Setup::new("saturation-bench")?;
    let fetcher = setup.app("fetcher")?;
    let edged = setup.edged.clone();
    let seconds = if args.smoke { 2 } else { args.seconds };
    let out = setup.results_dir(&args.out);

    let mut modes = Vec::new();
    for (label, overflow) in [
        ("overflow to the region", true),
        ("refuse (no overflow)", false),
    ] {
        modes.push(one_mode(&args, &edged, &fetcher, label, overflow, seconds)?);
    }

    let runs: Vec<&LoadReport> = modes.iter().map(|m| &m.run).collect();
    scenario::print_table(
        &format!(
            "a saturated POP ({} instances, 1 worker): fetcher (1 subrequest, backend 80 ms away), {} req/s offered for {seconds} s",
            args.pop_instances, args.rate
        ),
        &runs,
        1,
    );
    println!(
        "\n{:<44} {:>10} {:>12} {:>10}",
        "run", "offered", "to region", "refused"
    );
    for m in &modes {
        println!(
            "{:<44} {:>10.0} {:>12} {:>10}",
            m.run.target,
            m.run.offered_rate.unwrap_or(0.0) * m.run.duration_s,
            m.to_region,
            m.refused
        );
    }
    scenario::write_results(
        &out,
        "a saturated POP",
        &runs,
        serde_json::json!({ "modes": modes }),
    )?;
    println!("results in {}", out.display());
    let overflow = &modes[0];
    anyhow::ensure!(
        overflow.run.errors == 0,
        "{} requests failed with overflow to the region on",
        overflow.run.errors
    );
    Ok(())
}

/// pop and region with fetcher, the POP held to `--pop-instances` in flight, overflowing to the
/// region or refusing; warmed up, then loaded at `--rate`: what it served, sent on and refused.
fn one_mode(
    args: &Args,
    edged: &Path,
    fetcher: &Path,
    label: &str,
    overflow: bool,
    seconds: u64,
) -> anyhow::Result<Mode> {
    let world = Canonical::start(
        if overflow {
            "sat-overflow"
        } else {
            "sat-refuse"
        },
        &["pop", "region"],
        0.0,
        edged,
        |url, authority| {
            format!(
                "[[apps]]\nname = \"fetcher\"\nhosts = [\"{HOST}\"]\ncomponent = \"{}\"\n\
                 env = {{ BACKEND_URL = \"{url}\" }}\nallowed_backends = [\"{authority}\"]\n",
                fetcher.display()
            )
        },
        |dc| match dc {
            "pop" => Tuning {
                runtime: format!("max_in_flight = {}", args.pop_instances),
                datacenter: if overflow {
                    String::new()
                } else {
                    "overflow_in_flight = 0".into()
                },
            },
            _ => Tuning::default(),
        },
    )?;
    // Both datacenters compile and cache the code before the clock starts.
    for _ in 0..2 {
        let (status, _, body, _) = world.through_pop(HOST, PATH);
        anyhow::ensure!(status == 200, "warm-up: {status} {body}");
    }
    let spec = LoadSpec {
        addr: world.pop_addr(),
        host: HOST.into(),
        path: PATH.into(),
        connections: 64,
        duration: Duration::from_secs(seconds),
        arrival: Arrival::Open { rate: args.rate },
    };
    let counter = |outcome: &str| {
        world.metric(
            "pop",
            "edgeplane_app_handoffs_total",
            &[&format!("outcome=\"{outcome}\"")],
        )
    };
    let refusals = || world.metric("pop", "edgeplane_app_responses_total", &["class=\"5xx\""]);
    let (region_before, refused_before) = (counter("region-saturated"), refusals());
    let run = world
        .world
        .ns("client")
        .run(|| loadgen::run(label, &spec))??;
    Ok(Mode {
        run,
        to_region: counter("region-saturated") - region_before,
        refused: refusals() - refused_before,
    })
}
