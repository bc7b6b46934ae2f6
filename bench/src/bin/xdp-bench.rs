//! `xdp-bench`: classify's cost per packet and flood drop rate against baselines in the same run.
//! Run as root: `cargo run --release -p edgeplane-bench --bin xdp-bench`.

use std::path::PathBuf;

use clap::Parser;
use edgeplane_bench::xdp::{
    DropRow, Generator, Sources, flood_drop_rates, generator_rates, per_packet_cost,
};

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
    /// The flood's generator (default: live frames where the kernel allows them, else
    /// AF_PACKET).
    #[arg(long, value_enum)]
    generator: Option<Generator>,
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
        edgeplane_testkit::netns::is_root(),
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
    let drops = flood_drop_rates(&pin_dir, args.flood_packets, args.rounds, args.generator)?;
    println!(
        "\nBlocklisted flood on native veth, {} frames of 60 B per round (median of {} rounds), by {}",
        args.flood_packets,
        args.rounds,
        drops.first().map_or("?", |d| d.generator.label())
    );
    print_drops(&drops, true);
    let generators = generator_rates(args.flood_packets, args.rounds)?;
    println!(
        "\nEach generator into a bare XDP_DROP sink: the most any dropper can be shown to drop with it"
    );
    print_drops(&generators, false);
    if let Some(path) = args.json {
        std::fs::write(
            &path,
            serde_json::to_string_pretty(
                &serde_json::json!({ "cost": cost, "drops": drops, "generators": generators }),
            )?,
        )?;
    }
    Ok(())
}

/// The drop table: per source pattern, each dropper's rate, per CPU-second, and against the
/// bare XDP_DROP of the same generator (and classify against each, with `versus_classify`).
fn print_drops(drops: &[DropRow], versus_classify: bool) {
    println!(
        "{:<30} {:<10} {:<12} {:>8} {:>10} {:>9} {:>11} {:>8} {:>11}",
        "dropper",
        "generator",
        "sources",
        "Mpps",
        "Mpps/CPU-s",
        "ns/frame",
        "dropped",
        "vs bare",
        "classify is"
    );
    for sources in [Sources::One, Sources::Spread] {
        for d in drops.iter().filter(|d| d.sources == sources) {
            let rate = |prefix: &str| {
                drops
                    .iter()
                    .find(|o| {
                        o.sources == sources
                            && o.generator == d.generator
                            && o.dropper.starts_with(prefix)
                    })
                    .map_or(f64::NAN, |o| o.mpps)
            };
            let label = match sources {
                Sources::One => "1",
                Sources::Spread => "65,536",
            };
            let generator = match d.generator {
                Generator::LiveFrames => "live",
                Generator::AfPacket => "af_packet",
            };
            let versus = if versus_classify {
                format!("{:.2}x", rate("edgeplane") / d.mpps)
            } else {
                "-".to_owned()
            };
            println!(
                "{:<30} {:<10} {:<12} {:>8.3} {:>10.3} {:>9.0} {:>11} {:>7.0}% {:>11}",
                d.dropper,
                generator,
                label,
                d.mpps,
                d.mpps_per_cpu_second,
                // CPU per frame, generator and dropper together: the droppers differ by what
                // they add to the same generator's cost.
                1e3 / d.mpps_per_cpu_second,
                d.dropped,
                100.0 * d.mpps / rate("bare"),
                versus
            );
        }
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
