//! `attack-bench`: edgeplane serving the hello component while a SYN flood from a blocklisted
//! /16 arrives on the same link, with the flood dropped by edgeplane's XDP `classify` and
//! without edgeplane's XDP (the kernel's TCP stack meets the flood, as it would behind any
//! server without an XDP guard). Same flood generator, same load, same run.
//! Run as root: `./x bench attack`.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::Context as _;
use clap::Parser;
use edgeplane_bench::{
    loadgen::{self, Arrival, LoadReport, LoadSpec},
    packets::{DST_MAC, FrameSpec},
    scenario,
    xdp::{BLOCKED_PREFIX, FLOOD_SOURCE, FloodWorld, Sources, paced_flood},
};
use edgeplane_testkit::{netns::Netns, process::Server};

#[derive(Parser)]
#[command(about = "goodput and latency under a SYN flood: dropped at XDP vs met by the kernel")]
struct Args {
    /// Short runs for CI: checks the harness; figures are not meaningful.
    #[arg(long)]
    smoke: bool,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// The flood's offered rate in frames per second, the same for every run (0: as fast as
    /// the generator goes, which on a shared CPU is as fast as the receiver drops them).
    #[arg(long, default_value_t = 200_000)]
    flood_pps: u64,
    /// Results folder (JSON and SVG plots).
    #[arg(long, default_value = "results/bench/attack")]
    out: PathBuf,
}

const TARGET: &str = "10.88.0.2";
const PORT: u16 = 8080;
/// TCP SYN.
const SYN: u8 = 0x02;

/// What the flood did during one run.
#[derive(Default, serde::Serialize)]
struct Flood {
    frames_sent: u64,
    /// Frames per second over the run, as sent.
    sent_pps: f64,
    /// Dropped by classify's blocklist (edgeplane's XDP runs only).
    dropped_at_xdp: u64,
    /// TCP segments the target's kernel received (the flood and the load).
    kernel_tcp_segments: u64,
    /// SYN cookies the target's kernel sent (its SYN queue overflowed).
    kernel_syncookies_sent: u64,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let setup = scenario::Setup::new("attack-bench")?;
    let component = setup.app("hello")?;
    let edged_bin = setup.edged.clone();
    let seconds = if args.smoke { 1 } else { args.seconds };
    let out = setup.results_dir(&args.out);
    let scratch = std::env::temp_dir().join(format!("edgeplane-attack-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;

    let world = flood_world()?;
    let frame = FrameSpec::tcp(FLOOD_SOURCE.parse()?, TARGET.parse()?, 40000, PORT, SYN).build();
    let spec = LoadSpec {
        addr: SocketAddr::new(TARGET.parse()?, PORT),
        host: "hello".into(),
        path: "/".into(),
        connections: args.connections,
        duration: Duration::from_secs(seconds),
        arrival: Arrival::Closed,
    };

    let runs = run_both(
        &world,
        &edged_bin,
        &scratch,
        &component,
        &spec,
        &frame,
        args.flood_pps,
    )?;

    let reports: Vec<&LoadReport> = runs.iter().map(|(r, _)| r).collect();
    scenario::print_table(
        &format!(
            "hello under a SYN flood from {BLOCKED_PREFIX} (65,536 sources) offered at {}, {} connections closed loop, {seconds} s each",
            match args.flood_pps {
                0 => "full speed".to_owned(),
                pps => format!("{pps} frames/s"),
            },
            args.connections
        ),
        &reports,
        0,
    );
    print_floods(&runs, &reports);
    let floods: Vec<&Flood> = runs.iter().map(|(_, f)| f).collect();
    scenario::write_results(
        &out,
        "hello under a SYN flood",
        &reports,
        serde_json::json!({ "floods": floods }),
    )?;
    println!("results in {}", out.display());
    let _ = std::fs::remove_dir_all(&scratch);
    let failed: u64 = reports.iter().map(|r| r.errors).sum();
    anyhow::ensure!(failed == 0, "{failed} requests failed; see the table above");
    Ok(())
}

/// Where the run's edged pins its maps.
fn pins_dir(with_xdp: bool) -> PathBuf {
    let run = if with_xdp { "xdp" } else { "none" };
    PathBuf::from(format!(
        "/sys/fs/bpf/edgeplane-attack-{}-{run}",
        std::process::id()
    ))
}

fn start_edged(
    world: &FloodWorld,
    edged_bin: &Path,
    scratch: &Path,
    component: &Path,
    with_xdp: bool,
) -> anyhow::Result<Server> {
    let name = if with_xdp { "xdp" } else { "no-xdp" };
    let interfaces = if with_xdp {
        format!("[\"{}\"]", FloodWorld::TARGET_IF)
    } else {
        "[]".into()
    };
    let config = scratch.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            r#"
pin_dir = "{pins}"
blocklist = ["{BLOCKED_PREFIX}"]
[xdp]
interfaces = {interfaces}
mode = "native"
[workers]
steer = false
[server]
listen = "{TARGET}:{PORT}"
admin = "127.0.0.1:9901"
[runtime]
cache_dir = "{cache}"
[[apps]]
name = "hello"
vips = ["{TARGET}:{PORT}/tcp"]
hosts = ["hello"]
component = "{component}"
"#,
            pins = pins_dir(with_xdp).display(),
            cache = scratch.join("cache").display(),
            component = component.display(),
        ),
    )?;
    edgeplane_testkit::edged::start_in(
        &world.target_ns,
        name,
        &config,
        edged_bin,
        SocketAddr::new(TARGET.parse()?, PORT),
    )
}

fn load(world: &FloodWorld, spec: &LoadSpec, label: &str) -> anyhow::Result<LoadReport> {
    world.gen_ns.run(|| loadgen::run(label, spec))?
}

/// Runs the load while the flood thread sends bursts of frames at `pps` (0: flat out) until the
/// load is done.
fn under_flood(
    world: &FloodWorld,
    spec: &LoadSpec,
    frame: &[u8],
    pps: u64,
    label: &str,
) -> anyhow::Result<(LoadReport, Flood)> {
    let done = AtomicBool::new(false);
    let (tcp_before, cookies_before) = kernel_tcp_counters(&world.target_ns)?;
    let (report, (frames, secs)) = std::thread::scope(|s| -> anyhow::Result<_> {
        let flood = s.spawn(|| {
            paced_flood(
                &world.gen_ns,
                FloodWorld::GEN_IF,
                frame,
                Sources::Spread,
                pps,
                &done,
            )
        });
        let report = load(world, spec, label);
        done.store(true, Ordering::Relaxed);
        let flooded = flood
            .join()
            .map_err(|_| anyhow::anyhow!("flood thread panicked"))??;
        Ok((report?, flooded))
    })?;
    let (tcp_after, cookies_after) = kernel_tcp_counters(&world.target_ns)?;
    Ok((
        report,
        Flood {
            frames_sent: frames,
            sent_pps: frames as f64 / secs.max(1e-9),
            dropped_at_xdp: 0,
            kernel_tcp_segments: tcp_after - tcp_before,
            kernel_syncookies_sent: cookies_after - cookies_before,
        },
    ))
}

/// Blocklist drops classify counted for the hello app (its only app).
fn blocklist_drops(pin_dir: &Path) -> anyhow::Result<u64> {
    let maps = edgeplane::PinnedMaps::open(pin_dir)?;
    let app = maps.app_id("hello")?;
    let stats = maps.stats_reader()?;
    Ok(stats.app(app)?.drops[edgeplane_abi::DropReason::Blocklisted as usize])
}

/// (TCP segments received, SYN cookies sent) by the namespace's kernel.
fn kernel_tcp_counters(ns: &Netns) -> anyhow::Result<(u64, u64)> {
    ns.run(|| -> anyhow::Result<(u64, u64)> {
        // thread-self: /proc/self/net would show the main thread's namespace.
        let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp")?;
        let netstat = std::fs::read_to_string("/proc/thread-self/net/netstat")?;
        Ok((
            proc_counter(&snmp, "Tcp:", "InSegs")?,
            proc_counter(&netstat, "TcpExt:", "SyncookiesSent")?,
        ))
    })?
}

/// A counter from /proc/net/{snmp,netstat}: a header line and a value line per protocol.
fn proc_counter(text: &str, protocol: &str, name: &str) -> anyhow::Result<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with(protocol));
    let (header, values) = (
        lines.next().context("no header")?,
        lines.next().context("no values")?,
    );
    let column = header
        .split_whitespace()
        .position(|h| h == name)
        .with_context(|| format!("{protocol} {name} not found"))?;
    values
        .split_whitespace()
        .nth(column)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{protocol} {name} unreadable"))
}

/// The target's veth answers to the flood's MAC (without it the kernel would discard the frames
/// as meant for another host, far cheaper than what a real flood costs it), and SYN-ACKs to the
/// flood's sources leave, as on a server with a default route.
fn flood_world() -> anyhow::Result<FloodWorld> {
    let world = FloodWorld::new(None)?;
    let mac = DST_MAC.map(|b| format!("{b:02x}")).join(":");
    world
        .target_ns
        .ip(&["link", "set", FloodWorld::TARGET_IF, "address", &mac])?;
    world
        .target_ns
        .ip(&["route", "add", "default", "via", "10.88.0.1"])?;
    Ok(world)
}

/// With edgeplane's XDP and without: the load alone, then under the flood.
fn run_both(
    world: &FloodWorld,
    edged_bin: &Path,
    scratch: &Path,
    component: &Path,
    spec: &LoadSpec,
    frame: &[u8],
    flood_pps: u64,
) -> anyhow::Result<Vec<(LoadReport, Flood)>> {
    let mut runs: Vec<(LoadReport, Flood)> = Vec::new();
    {
        let _edged = start_edged(world, edged_bin, scratch, component, true)?;
        let blocked_before = blocklist_drops(&pins_dir(true))?;
        runs.push((
            load(world, spec, "edgeplane XDP, no flood")?,
            Flood::default(),
        ));
        let (report, mut flood) =
            under_flood(world, spec, frame, flood_pps, "edgeplane XDP, flood")?;
        flood.dropped_at_xdp = blocklist_drops(&pins_dir(true))? - blocked_before;
        runs.push((report, flood));
    }
    {
        let _edged = start_edged(world, edged_bin, scratch, component, false)?;
        runs.push((
            load(world, spec, "no edgeplane XDP, no flood")?,
            Flood::default(),
        ));
        runs.push(under_flood(
            world,
            spec,
            frame,
            flood_pps,
            "no edgeplane XDP, flood",
        )?);
    }

    Ok(runs)
}

/// What each flood did: frames sent, dropped at XDP, and what reached the target's kernel.
fn print_floods(runs: &[(LoadReport, Flood)], reports: &[&LoadReport]) {
    println!(
        "\n{:<44} {:>12} {:>9} {:>14} {:>14} {:>12}",
        "run", "flood frames", "sent/s", "dropped at XDP", "kernel TCP in", "SYN cookies"
    );
    for (r, f) in runs.iter().filter(|(_, f)| f.frames_sent > 0) {
        println!(
            "{:<44} {:>12} {:>9.0} {:>14} {:>14} {:>12}",
            r.target,
            f.frames_sent,
            f.sent_pps,
            f.dropped_at_xdp,
            f.kernel_tcp_segments,
            f.kernel_syncookies_sent
        );
    }
    if let [_, with_xdp, _, without] = reports {
        println!(
            "\nunder the flood, edgeplane's XDP vs none: goodput {:.2}x, p99 {:.2}x",
            with_xdp.requests_per_sec / without.requests_per_sec,
            with_xdp.p99_ms / without.p99_ms
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_counter_by_its_column() {
        let snmp = "Tcp: RtoAlgorithm RtoMin InSegs OutSegs\nTcp: 1 200 4242 17\nUdp: InDatagrams\nUdp: 9\n";
        assert_eq!(proc_counter(snmp, "Tcp:", "InSegs").unwrap(), 4242);
        assert_eq!(proc_counter(snmp, "Udp:", "InDatagrams").unwrap(), 9);
        assert!(proc_counter(snmp, "Tcp:", "Nope").is_err());
    }
}
