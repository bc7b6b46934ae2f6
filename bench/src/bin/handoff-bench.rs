//! `handoff-bench`: what a handoff costs beyond the link. Two datacenters and a client joined
//! by zero-delay veths; the same hello requests go straight to dc2, and through the POP, whose
//! PLACEMENT hands them to dc2. The difference is the POP's handoff overhead (target: 150 us).
//! Run as root: `./x bench`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use edgeplane_abi::{Placement, placement_kind};
use edgeplane_bench::{
    edged::{DatacenterSpec, WORKER_PORT, place},
    loadgen::{self, Arrival, LoadReport, LoadSpec},
    plan::Plan,
    world::World,
};

#[derive(Parser)]
#[command(about = "handoff overhead: through the POP vs straight to dc2")]
struct Args {
    /// Short runs for CI: checks the harness; figures are not meaningful.
    #[arg(long)]
    smoke: bool,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

const PLAN: &str = r#"
[[datacenters]]
name = "pop"
id = 1
[[datacenters]]
name = "dc2"
id = 2
[[hosts]]
name = "client"
[[links]]
between = ["client", "pop"]
rtt = "0ms"
[[links]]
between = ["client", "dc2"]
rtt = "0ms"
[[links]]
between = ["pop", "dc2"]
rtt = "0ms"
"#;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let setup = edgeplane_bench::scenario::Setup::new("handoff-bench")?;
    let hello = setup.app("hello")?;
    let edged_bin = setup.edged.clone();
    let scratch =
        std::env::temp_dir().join(format!("edgeplane-handoff-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let plan = Plan::parse(PLAN)?;
    let world = World::build(&plan)?;
    let apps = format!(
        "[[apps]]\nname = \"hello\"\nhosts = [\"hello.test\"]\ncomponent = \"{}\"\n",
        hello.display()
    );
    let spec = |name: &'static str| DatacenterSpec::plain(name, "handoff-bench", &scratch, &apps);
    let (pop, dc2) = (spec("pop"), spec("dc2"));
    let servers = [
        pop.start(&world, &edged_bin)?,
        dc2.start(&world, &edged_bin)?,
    ];
    place(
        &pop.pin_dir,
        "hello",
        Placement {
            kind: placement_kind::DATACENTER,
            datacenter: plan.datacenter("dc2").context("dc2")?.id,
            ..Default::default()
        },
    )?;

    let duration = Duration::from_secs(if args.smoke { 1 } else { args.seconds });
    let run = |name: &str, to: &str, connections: usize| -> anyhow::Result<LoadReport> {
        let addr = SocketAddr::from((world.addr_of("client", to).context("link")?, WORKER_PORT));
        let spec = LoadSpec {
            addr,
            host: "hello.test".into(),
            path: "/".into(),
            connections,
            duration,
            arrival: Arrival::Closed,
        };
        world.ns("client").run(|| loadgen::run(name, &spec))?
    };
    let reports = vec![
        run("straight to dc2, 1 connection", "dc2", 1)?,
        run("through the POP (handoff), 1 connection", "pop", 1)?,
        run("straight to dc2, 16 connections", "dc2", 16)?,
        run("through the POP (handoff), 16 connections", "pop", 16)?,
    ];
    println!(
        "\nHandoff overhead: closed loop, {}s each, zero-delay veths",
        duration.as_secs()
    );
    println!(
        "{:<44} {:>10} {:>9} {:>9} {:>7}",
        "path", "req/s", "p50 ms", "p99 ms", "errors"
    );
    for r in &reports {
        println!(
            "{:<44} {:>10.0} {:>9.3} {:>9.3} {:>7}",
            r.target, r.requests_per_sec, r.p50_ms, r.p99_ms, r.errors
        );
    }
    let overhead_us = (reports[1].p50_ms - reports[0].p50_ms) * 1000.0;
    println!(
        "handoff overhead at p50, one request at a time: {overhead_us:.0} us (target <= 150 us)"
    );
    if let Some(path) = args.json {
        std::fs::write(path, serde_json::to_string_pretty(&reports)?)?;
    }
    drop(servers);
    drop(world);
    let _ = std::fs::remove_dir_all(&scratch);
    anyhow::ensure!(
        reports.iter().all(|r| r.errors == 0),
        "some requests failed"
    );
    Ok(())
}
