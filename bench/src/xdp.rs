//! Packet-rate measurements of `classify` against baselines measured in the same run:
//! - cost per packet by BPF_PROG_TEST_RUN (repeat) vs a bare XDP_PASS program;
//! - drop rate of a blocklisted flood on native veth vs a bare XDP_DROP program and an nftables
//!   netdev-ingress drop rule. The flood comes from `crate::flood` (live frames where the kernel
//!   allows them, else AF_PACKET; xdp-tools' generator does not work on this kernel).

use std::{
    net::IpAddr,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

pub use crate::flood::{Generator, Sources};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf,
    programs::{TestRun as _, TestRunOptions, Xdp, XdpMode},
};
use edgeplane::{Dataplane, LoadOptions, XdpAttachMode, addr::Vip, loader::BASELINE_OBJECT};
use edgeplane_abi::{DropReason, RateLimitConfig, rate_limit_flags};
use serde::Serialize;

use edgeplane_testkit::netns::{LinkEnd, Netns, veth_pair};

use crate::{cpu::CpuTimes, flood::Flooder, packets::FrameSpec, scenario::median};

pub const APP_VIP: &str = "10.88.0.2:53/udp";
pub const FLOOD_SOURCE: &str = "203.0.113.5";
/// Covers FLOOD_SOURCE and every source `bare_tx_spray` writes.
pub const BLOCKED_PREFIX: &str = "203.0.0.0/16";

const CLIENT: &str = "192.0.2.10";

/// Frames for the per-packet cost table.
pub fn frames() -> anyhow::Result<Vec<(&'static str, Vec<u8>)>> {
    let vip: Vip = APP_VIP.parse()?;
    let (dst, port) = (vip.addr.ip(), vip.addr.port());
    let client: IpAddr = CLIENT.parse()?;
    let flood: IpAddr = FLOOD_SOURCE.parse()?;
    Ok(vec![
        (
            "app packet, admitted + steered",
            FrameSpec::udp(client, dst, 40000, port, 18).build(),
        ),
        (
            "blocklisted source, dropped",
            FrameSpec::udp(flood, dst, 40000, port, 18).build(),
        ),
        (
            "not an app (other port), passed",
            FrameSpec::udp(client, dst, 40000, 9999, 18).build(),
        ),
    ])
}

/// Configures the maps the way a loaded edged would, with every guard on.
pub fn configure(dp: &Dataplane) -> anyhow::Result<()> {
    let maps = dp.maps()?;
    maps.add_app("bench", None, &[APP_VIP.parse()?], 0)?;
    maps.block_add(BLOCKED_PREFIX.parse()?)?;
    maps.set_rate_limit(RateLimitConfig {
        pps: 100_000_000,
        burst: 1_000_000_000,
        flags: rate_limit_flags::ENABLED,
        ..Default::default()
    })?;
    maps.configure_workers(2, 0, true, 2048)?;
    Ok(())
}

fn baseline_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut Xdp> {
    let prog: &mut Xdp = ebpf
        .program_mut(name)
        .with_context(|| format!("{name} missing"))?
        .try_into()?;
    prog.load()?;
    Ok(prog)
}

fn ns_per_packet(prog: &Xdp, frame: &[u8], repeat: u32) -> anyhow::Result<f64> {
    let r = prog.test_run(TestRunOptions {
        data_in: Some(frame),
        repeat,
        ..Default::default()
    })?;
    Ok(r.duration.as_nanos() as f64)
}

#[derive(Debug, Serialize)]
pub struct CostRow {
    pub case: String,
    pub classify_ns: f64,
    pub bare_pass_ns: f64,
    pub overhead_ns: f64,
}

/// ns per packet, median of `rounds`, classify and bare XDP_PASS interleaved in each round.
pub fn per_packet_cost(pin_dir: &Path, repeat: u32, rounds: usize) -> anyhow::Result<Vec<CostRow>> {
    let dp = Dataplane::load(&LoadOptions {
        pin_dir: pin_dir.to_path_buf(),
    })?;
    configure(&dp)?;
    let mut baseline = Ebpf::load(BASELINE_OBJECT)?;
    let bare_pass = baseline_program(&mut baseline, "bare_pass")?;
    let mut rows = Vec::new();
    for (case, frame) in frames()? {
        let (mut c, mut b) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            c.push(ns_per_packet(dp.classify(), &frame, repeat)?);
            b.push(ns_per_packet(bare_pass, &frame, repeat)?);
        }
        let (classify_ns, bare_pass_ns) = (median(c), median(b));
        rows.push(CostRow {
            case: case.to_owned(),
            classify_ns,
            bare_pass_ns,
            overhead_ns: classify_ns - bare_pass_ns,
        });
    }
    Ok(rows)
}

/// Two namespaces: `gen` transmits from veth0, `target` receives on veth1.
pub struct FloodWorld {
    pub gen_ns: Netns,
    pub target_ns: Netns,
    /// What floods from `gen`.
    pub generator: Generator,
}

impl FloodWorld {
    pub const GEN_IF: &str = "veth0";
    pub const TARGET_IF: &str = "veth1";

    /// The world, flooded by `generator` (None: the fastest this kernel allows).
    pub fn new(generator: Option<Generator>) -> anyhow::Result<Self> {
        let gen_ns = Netns::new("ep-gen")?;
        let target_ns = Netns::new("ep-tgt")?;
        veth_pair(
            &LinkEnd {
                ns: &gen_ns,
                iface: Self::GEN_IF,
                addrs: &["10.88.0.1/24"],
            },
            &LinkEnd {
                ns: &target_ns,
                iface: Self::TARGET_IF,
                addrs: &["10.88.0.2/24"],
            },
        )?;
        // XDP_TX into a veth reaches its peer only through the peer's NAPI: with an XDP program
        // attached, or with GRO on (the nftables case has no XDP program).
        let out = target_ns
            .command("ethtool")
            .args(["-K", Self::TARGET_IF, "gro", "on"])
            .output()?;
        if !out.status.success() {
            bail!("ethtool gro on: {}", String::from_utf8_lossy(&out.stderr));
        }
        let generator = generator.unwrap_or_else(|| Generator::best(&gen_ns, Self::GEN_IF));
        Ok(Self {
            gen_ns,
            target_ns,
            generator,
        })
    }

    /// Sends `count` copies of `frame` from the generator side; returns wall seconds taken.
    pub fn flood(&self, frame: &[u8], count: u32, sources: Sources) -> anyhow::Result<f64> {
        Ok(self
            .generator
            .flood(&self.gen_ns, Self::GEN_IF, frame, count, sources)?
            .as_secs_f64())
    }

    /// XDP drops counted by the target veth's driver (all queues).
    pub fn target_xdp_drops(&self) -> anyhow::Result<u64> {
        let out = self
            .target_ns
            .command("ethtool")
            .args(["-S", Self::TARGET_IF])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text
            .lines()
            .filter(|l| l.trim_start().starts_with("rx_queue_") && l.contains("_xdp_drops:"))
            .filter_map(|l| l.rsplit(':').next()?.trim().parse::<u64>().ok())
            .sum())
    }

    pub fn nft(&self, script: &str) -> anyhow::Result<String> {
        use std::io::Write as _;
        let mut child = self
            .target_ns
            .command("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .context("nft stdin")?
            .write_all(script.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("nft: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn nft_counter(&self) -> anyhow::Result<u64> {
        let out: std::process::Output = self
            .target_ns
            .command("nft")
            .args(["list", "chain", "netdev", "edgeplane_bench", "ingress"])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .context("nft counter not found")
    }
}

/// Sends `count` copies of `frame` out of `iface` in `ns` as fast as the best generator here
/// goes (`crate::flood`). Returns wall seconds taken.
pub fn flood(ns: &Netns, iface: &str, frame: &[u8], count: u32) -> anyhow::Result<f64> {
    Ok(Generator::best(ns, iface)
        .flood(ns, iface, frame, count, Sources::One)?
        .as_secs_f64())
}

/// Floods out of `iface` in `ns` in bursts paced at `pps` frames per second (0: flat out) until
/// `stop` is set; returns (frames sent, seconds taken).
pub fn paced_flood(
    ns: &Netns,
    iface: &str,
    frame: &[u8],
    sources: Sources,
    pps: u64,
    stop: &AtomicBool,
) -> anyhow::Result<(u64, f64)> {
    // 10 ms of frames a call: small bursts keep the pace even and let the flood stop soon
    // after `stop`.
    let burst = if pps == 0 {
        20_000
    } else {
        (pps / 100).clamp(1_000, 100_000) as u32
    };
    let mut flooder = Flooder::open(Generator::best(ns, iface), ns, iface, frame, sources)?;
    ns.run(|| -> anyhow::Result<(u64, f64)> {
        let started = Instant::now();
        let mut frames = 0u64;
        while !stop.load(Ordering::Relaxed) {
            flooder.send(burst)?;
            frames += u64::from(burst);
            if pps > 0 {
                let due = started + Duration::from_secs_f64(frames as f64 / pps as f64);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
        }
        Ok((frames, started.elapsed().as_secs_f64()))
    })?
}

#[derive(Debug, Serialize)]
pub struct DropRow {
    pub dropper: String,
    pub generator: Generator,
    pub sources: Sources,
    pub sent: u64,
    pub dropped: u64,
    /// Drops per wall second, median of the rounds.
    pub mpps: f64,
    /// Drops per second of CPU busy on any core (generator and dropper together: they share
    /// the cores), over all rounds.
    pub mpps_per_cpu_second: f64,
}

/// One source pattern's rounds through one dropper.
struct Measured {
    sources: Sources,
    mpps: f64,
    sent: u64,
    dropped: u64,
    cpu_seconds: f64,
}

impl Measured {
    fn row(self, dropper: &str, generator: Generator) -> DropRow {
        DropRow {
            dropper: dropper.to_owned(),
            generator,
            sources: self.sources,
            sent: self.sent,
            dropped: self.dropped,
            mpps: self.mpps,
            mpps_per_cpu_second: self.dropped as f64 / self.cpu_seconds.max(1e-9) / 1e6,
        }
    }
}

/// Floods `rounds` times with each source pattern.
fn measure(
    world: &FloodWorld,
    frame: &[u8],
    packets: u32,
    rounds: usize,
    dropped_so_far: &dyn Fn() -> anyhow::Result<u64>,
) -> anyhow::Result<Vec<Measured>> {
    let mut out = Vec::new();
    for sources in [Sources::One, Sources::Spread] {
        let mut rates = Vec::new();
        let (mut sent, mut dropped, mut cpu_seconds) = (0, 0, 0.0);
        for _ in 0..rounds {
            let before = dropped_so_far()?;
            let cpu_before = CpuTimes::read_all()?;
            let secs = world.flood(frame, packets, sources)?;
            cpu_seconds += cpu_before.until(CpuTimes::read_all()?).busy_seconds;
            let n = dropped_so_far()?.saturating_sub(before);
            rates.push(n as f64 / secs / 1e6);
            sent += u64::from(packets);
            dropped += n;
        }
        out.push(Measured {
            sources,
            mpps: median(rates),
            sent,
            dropped,
            cpu_seconds,
        });
    }
    Ok(out)
}

/// The flood into a bare XDP_DROP on the target's veth (native), counted by the veth driver.
fn bare_drop(
    world: &FloodWorld,
    frame: &[u8],
    packets: u32,
    rounds: usize,
) -> anyhow::Result<Vec<Measured>> {
    let mut ebpf = Ebpf::load(BASELINE_OBJECT)?;
    let drop = baseline_program(&mut ebpf, "bare_drop")?;
    world
        .target_ns
        .run(|| drop.attach(FloodWorld::TARGET_IF, XdpMode::Driver))??;
    measure(world, frame, packets, rounds, &|| world.target_xdp_drops())
}

/// The flood frame: blocklisted source, the bench app's VIP.
fn flood_frame() -> anyhow::Result<Vec<u8>> {
    let vip: Vip = APP_VIP.parse()?;
    Ok(FrameSpec::udp(
        FLOOD_SOURCE.parse()?,
        vip.addr.ip(),
        40000,
        vip.addr.port(),
        18,
    )
    .build())
}

/// What each generator this kernel allows delivers into a bare XDP_DROP sink: the ceiling of
/// any drop rate measured with it. Live frames are skipped (with the reason) where refused.
pub fn generator_rates(packets: u32, rounds: usize) -> anyhow::Result<Vec<DropRow>> {
    let frame = flood_frame()?;
    let mut rows = Vec::new();
    for generator in [Generator::LiveFrames, Generator::AfPacket] {
        let world = FloodWorld::new(Some(generator))?;
        let measured = match bare_drop(&world, &frame, packets, rounds) {
            Ok(m) => m,
            Err(e) if generator == Generator::LiveFrames => {
                eprintln!(
                    "[xdp-bench] {} not measured: {}",
                    generator.label(),
                    e.root_cause()
                );
                continue;
            }
            Err(e) => return Err(e),
        };
        rows.extend(
            measured
                .into_iter()
                .map(|m| m.row("bare XDP_DROP (native)", generator)),
        );
    }
    Ok(rows)
}

/// Blocklisted flood through each dropper in turn, each with one source and with 65,536.
pub fn flood_drop_rates(
    pin_dir: &Path,
    packets: u32,
    rounds: usize,
    generator: Option<Generator>,
) -> anyhow::Result<Vec<DropRow>> {
    let world = FloodWorld::new(generator)?;
    let frame = flood_frame()?;
    let mut rows = Vec::new();
    let generator = world.generator;
    let mut push = |dropper: &str, results: Vec<Measured>| {
        rows.extend(results.into_iter().map(|m| m.row(dropper, generator)));
    };

    // classify, native, counted by its own blocklist counter.
    {
        let mut dp = Dataplane::load(&LoadOptions {
            pin_dir: pin_dir.to_path_buf(),
        })?;
        configure(&dp)?;
        world
            .target_ns
            .run(|| dp.attach_xdp(FloodWorld::TARGET_IF, XdpAttachMode::Native))??;
        let app = dp.maps()?.app_id("bench")?;
        let stats = dp.maps()?.stats_reader()?;
        let blocked = || Ok(stats.app(app)?.drops[DropReason::Blocklisted as usize]);
        push(
            "edgeplane classify (native)",
            measure(&world, &frame, packets, rounds, &blocked)?,
        );
    }

    push(
        "bare XDP_DROP (native)",
        bare_drop(&world, &frame, packets, rounds)?,
    );

    // nftables, netdev ingress (the earliest nftables hook), no XDP.
    world.nft(&format!(
        "table netdev edgeplane_bench {{\n chain ingress {{\n  type filter hook ingress device \"{}\" priority -500;\n  ip saddr {BLOCKED_PREFIX} counter drop\n }}\n}}\n",
        FloodWorld::TARGET_IF
    ))?;
    push(
        "nftables netdev ingress drop",
        measure(&world, &frame, packets, rounds, &|| world.nft_counter())?,
    );
    Ok(rows)
}
