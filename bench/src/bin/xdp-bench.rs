//! `xdp-bench`: classify's cost per packet and flood drop rate against baselines in the same run.
//! Run as root: `cargo run --release -p edgeplane-bench --bin xdp-bench`.

use std::path::PathBuf;

use clap::Parser;
use edgeplane_bench::xdp::{Sources, flood_drop_rates, per_packet_cost};

#[derive(Parser)]
#[command(about = "XDP classify vs bare XDP programs and nftables")]
struct Args {
    /// Tiny run for CI: checks the harness works; figures are not meaningful.
    #[arg(long)]
    smoke: bool,
    /// BPF_PROG_TEST_RUN repeat count per measurement.
    #[arg(long, default_value_t = 5_000_000)]
    repeat: u32,
    /// Frames per flood round.
    #[arg(long, default_value_t = 4_000_000)]
    flood_packets: u32,
    /// Rounds per measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        (args.repeat, args.flood_packets, args.rounds) = (10_000, 20_000, 1);
    }
    anyhow::ensure!(
        edgeplane_bench::netns::is_root(),
        "xdp-bench needs root (BPF programs, namespaces)"
    );
    let pin_dir = PathBuf::from(format!(
        "/sys/fs/bpf/edgeplane-bench-{}",
        std::process::id()
    ));
    let _cleanup = RemoveOnDrop(pin_dir.clone());

    let cost = per_packet_cost(&pin_dir, args.repeat, args.rounds)?;
    println!(
        "\nPer-packet cost, BPF_PROG_TEST_RUN repeat={} (median of {} rounds)",
        args.repeat, args.rounds
    );
    println!(
        "{:<36} {:>12} {:>14} {:>10}",
        "case", "classify ns", "bare PASS ns", "overhead"
    );
    for r in &cost {
        println!(
            "{:<36} {:>12.1} {:>14.1} {:>9.1}ns",
            r.case, r.classify_ns, r.bare_pass_ns, r.overhead_ns
        );
    }

    let _ = std::fs::remove_dir_all(&pin_dir);
    let drops = flood_drop_rates(&pin_dir, args.flood_packets, args.rounds)?;
    println!(
        "\nBlocklisted flood on native veth, {} frames of 60 B per round (median of {} rounds)",
        args.flood_packets, args.rounds
    );
    println!(
        "{:<32} {:<22} {:>8} {:>12} {:>14} {:>16}",
        "dropper", "sources", "Mpps", "dropped", "vs bare DROP", "classify is ×"
    );
    for sources in [Sources::One, Sources::Spread] {
        let rate = |prefix: &str| {
            drops
                .iter()
                .find(|d| d.sources == sources && d.dropper.starts_with(prefix))
                .map(|d| d.mpps)
                .unwrap_or(f64::NAN)
        };
        let (bare, classify) = (rate("bare"), rate("edgeplane"));
        for d in drops.iter().filter(|d| d.sources == sources) {
            let label = match sources {
                Sources::One => "1",
                Sources::Spread => "65,536 (new each frame)",
            };
            println!(
                "{:<32} {:<22} {:>8.3} {:>12} {:>13.0}% {:>15.2}x",
                d.dropper,
                label,
                d.mpps,
                d.dropped,
                100.0 * d.mpps / bare,
                classify / d.mpps
            );
        }
    }
    if let Some(path) = args.json {
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&serde_json::json!({ "cost": cost, "drops": drops }))?,
        )?;
    }
    Ok(())
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
