//! `handoff-bench`: what a handoff costs beyond the link. Two datacenters and a client joined
//! by zero-delay veths; the same hello requests go straight to dc2, and through the POP, whose
//! PLACEMENT hands them to dc2. The difference is the POP's handoff overhead (target: 150 us),
//! over plain TCP and over mutual TLS (target: within 20 us of plain), worlds alternating.
//! Run as root: `./x bench`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use edgeplane_abi::{Placement, placement_kind};
use edgeplane_bench::{
    loadgen::{self, Arrival, LoadReport, LoadSpec},
    scenario::median,
};
use edgeplane_testkit::{
    edged::{DatacenterSpec, WORKER_PORT, place},
    plan::Plan,
    tls::TestCa,
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
    /// Rounds of plain and mutual-TLS worlds, alternating (medians reported).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
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
    let ca = TestCa::new(&scratch.join("fleet-ca"))?;
    let tls_of = |dc: &str| ca.datacenter_tls(dc, 30);
    let (pop_tls, dc2_tls) = (tls_of("pop")?, tls_of("dc2")?);
    let duration = Duration::from_secs(if args.smoke { 1 } else { args.seconds });
    let mut reports: Vec<LoadReport> = Vec::new();
    let mut overheads: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 0..args.rounds.max(1) {
        for mutual_tls in [false, true] {
            let mode = if mutual_tls {
                "mutual TLS"
            } else {
                "plain TCP"
            };
            let round_reports = one_round(
                &Round {
                    world: &world,
                    plan: &plan,
                    edged_bin: &edged_bin,
                    scratch: &scratch,
                    apps: &apps,
                    duration,
                },
                mutual_tls.then_some((pop_tls.as_str(), dc2_tls.as_str())),
                &format!("{mode}, round {round}"),
            )?;
            overheads[usize::from(mutual_tls)]
                .push((round_reports[1].p50_ms - round_reports[0].p50_ms) * 1000.0);
            reports.extend(round_reports);
        }
    }
    print_report(&reports, &overheads, duration);
    if let Some(path) = args.json {
        std::fs::write(path, serde_json::to_string_pretty(&reports)?)?;
    }
    drop(world);
    let _ = std::fs::remove_dir_all(&scratch);
    anyhow::ensure!(
        reports.iter().all(|r| r.errors == 0),
        "some requests failed"
    );
    Ok(())
}

/// What every round shares.
struct Round<'a> {
    world: &'a World,
    plan: &'a Plan,
    edged_bin: &'a std::path::Path,
    scratch: &'a std::path::Path,
    apps: &'a str,
    duration: Duration,
}

/// pop and dc2 started (over mutual TLS when `tls` gives each its `[datacenter]` lines), hello
/// placed at dc2, then 1 and 16 connections straight to dc2 and through the POP.
fn one_round(
    r: &Round<'_>,
    tls: Option<(&str, &str)>,
    label: &str,
) -> anyhow::Result<Vec<LoadReport>> {
    let mut pop = DatacenterSpec::plain("pop", "handoff-bench", r.scratch, r.apps);
    let mut dc2 = DatacenterSpec::plain("dc2", "handoff-bench", r.scratch, r.apps);
    if let Some((pop_tls, dc2_tls)) = tls {
        pop.datacenter_extra = pop_tls;
        dc2.datacenter_extra = dc2_tls;
    }
    let servers = [
        pop.start(r.world, r.edged_bin)?,
        dc2.start(r.world, r.edged_bin)?,
    ];
    place(
        &pop.pin_dir,
        "hello",
        Placement {
            kind: placement_kind::DATACENTER,
            datacenter: r.plan.datacenter("dc2").context("dc2")?.id,
            ..Default::default()
        },
    )?;
    let run = |name: &str, to: &str, connections: usize| -> anyhow::Result<LoadReport> {
        let addr = SocketAddr::from((r.world.addr_of("client", to).context("link")?, WORKER_PORT));
        let spec = LoadSpec {
            addr,
            host: "hello.test".into(),
            path: "/".into(),
            connections,
            duration: r.duration,
            arrival: Arrival::Closed,
        };
        r.world.ns("client").run(|| loadgen::run(name, &spec))?
    };
    let reports = vec![
        run(
            &format!("straight to dc2, 1 connection ({label})"),
            "dc2",
            1,
        )?,
        run(
            &format!("through the POP, 1 connection ({label})"),
            "pop",
            1,
        )?,
        run(
            &format!("straight to dc2, 16 connections ({label})"),
            "dc2",
            16,
        )?,
        run(
            &format!("through the POP, 16 connections ({label})"),
            "pop",
            16,
        )?,
    ];
    drop(servers);
    Ok(reports)
}

fn print_report(reports: &[LoadReport], overheads: &[Vec<f64>; 2], duration: Duration) {
    println!(
        "\nHandoff overhead: closed loop, {}s each, zero-delay veths, handoffs on pooled connections",
        duration.as_secs()
    );
    println!(
        "{:<60} {:>10} {:>9} {:>9} {:>7}",
        "path", "req/s", "p50 ms", "p99 ms", "errors"
    );
    for r in reports {
        println!(
            "{:<60} {:>10.0} {:>9.3} {:>9.3} {:>7}",
            r.target, r.requests_per_sec, r.p50_ms, r.p99_ms, r.errors
        );
    }
    let (plain, mtls) = (
        median(overheads[0].iter().copied()),
        median(overheads[1].iter().copied()),
    );
    println!(
        "handoff overhead at p50, one request at a time (median of {} rounds): plain {plain:.0} us {:?}, mutual TLS {mtls:.0} us {:?}: {:+.0} us (targets: <= 150 us; mutual TLS within 20 us of plain)",
        overheads[0].len(),
        overheads[0].iter().map(|o| o.round()).collect::<Vec<_>>(),
        overheads[1].iter().map(|o| o.round()).collect::<Vec<_>>(),
        mtls - plain
    );
}
