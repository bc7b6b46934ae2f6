//! The XDP demo (`./x demo-xdp`): a client and a POP in network namespaces, `edged` with XDP
//! on the POP's link, real traffic (HTTP, UDP, a spoofed blocklisted flood, malformed frames), and
//! `edgectl` showing what the data plane counted and dropped. Everything it creates (namespaces,
//! the daemon, BPF pins) is removed at the end, on failure, and on Ctrl-C.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Args;
use edgeplane::PinnedMaps;
use edgeplane_bench::{af_packet::send_raw_frames, packets::FrameSpec, xdp};
use edgeplane_testkit::netns::{LinkEnd, Netns, veth_pair};

use crate::{cargo, step, target_dir};

#[derive(Args)]
pub struct XdpDemoArgs {
    /// A short run (for the test that checks the demo's output).
    #[arg(long)]
    short: bool,
    /// Where to write results (default: results/demo).
    #[arg(long)]
    out: Option<PathBuf>,
}

const POP_V4: &str = "10.70.0.2";
const CLIENT_V4: &str = "10.70.0.1";
const FLOOD_SOURCE: &str = "203.0.113.99";

/// The embedded default configuration of the POP's edged.
const EDGED_TOML: &str = r#"
blocklist = ["203.0.113.0/24"]

[xdp]
interfaces = ["pop0"]
mode = "native"

[workers]
steer = true

[rate_limit]
enabled = true
pps = 20000
burst = 40000

[[apps]]
name = "hello"
vips = ["10.70.0.2:8080/tcp"]

[[apps]]
name = "dns"
vips = ["10.70.0.2:5353/udp"]
"#;

/// What Ctrl-C must clean up, recorded as it is created.
static CLEANUP: Mutex<Vec<String>> = Mutex::new(Vec::new());
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

struct Edged {
    child: Child,
}

impl Drop for Edged {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn edgectl(pin_dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(target_dir().join("release/edgectl"))
        .arg("--pin-dir")
        .arg(pin_dir)
        .args(args)
        .output()
        .context("running edgectl")?;
    if !out.status.success() {
        bail!(
            "edgectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// A stand-in origin in the POP until workers serve apps (issue B): answers every request.
fn serve_http(listener: TcpListener) {
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\nhello\n",
            );
        }
    });
}

fn http_get(addr: SocketAddr) -> anyhow::Result<bool> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET / HTTP/1.1\r\nhost: hello\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    Ok(resp.starts_with("HTTP/1.1 200"))
}

pub fn run(args: XdpDemoArgs) -> anyhow::Result<()> {
    clean_up_on_interrupt()?;
    let out = crate::demo_out(args.out.clone(), "results/demo-xdp")?;

    step("building edged and edgectl (release)");
    cargo(edgeplane_testkit::binaries::BUILD)?;

    step("building the world: namespaces `client` and `pop` joined by a veth link");
    let (client, pop) = world()?;
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/edgeplane-demo-{}", std::process::id()));
    CLEANUP
        .lock()
        .unwrap()
        .push(format!("pins:{}", pin_dir.display()));
    let (edged, maps) = start_edged(&pop, &out, &pin_dir)?;
    println!("{}", edgectl(&pin_dir, &["app", "list"])?);

    let hello: SocketAddr = format!("{POP_V4}:8080").parse()?;
    let dns: SocketAddr = format!("{POP_V4}:5353").parse()?;
    let (listener, udp) = pop.run(|| -> anyhow::Result<_> {
        Ok((TcpListener::bind(hello)?, UdpSocket::bind(dns)?))
    })??;
    serve_http(listener);

    let (requests, datagrams, flood, malformed) = if args.short {
        (50, 100, 200_000u32, 10)
    } else {
        (500, 1000, 4_000_000u32, 100)
    };
    let ok = legitimate_traffic(&client, hello, dns, requests, datagrams)?;
    drop(udp);
    let secs = attacks(&client, flood, malformed)?;

    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    step("what edgeplane saw (edgectl stats)");
    println!("{}", edgectl(&pin_dir, &["stats", "--interval", "0"])?);
    let stats_json = edgectl(&pin_dir, &["--json", "stats", "--interval", "0"])?;
    std::fs::write(out.join("stats.json"), &stats_json)?;
    report(&maps, &out, (ok, requests), flood, secs)?;

    step("stopping edged (XDP detached, pins removed) and removing the namespaces");
    drop(edged);
    Ok(())
}

/// On Ctrl-C: the namespaces, edged and the pins this demo made go (in that order).
fn clean_up_on_interrupt() -> anyhow::Result<()> {
    ctrlc::set_handler(|| {
        INTERRUPTED.store(true, Ordering::SeqCst);
        eprintln!("\ninterrupted: cleaning up");
        for item in CLEANUP.lock().map(|v| v.clone()).unwrap_or_default() {
            if let Some(ns) = item.strip_prefix("netns:") {
                let _ = Command::new("ip").args(["netns", "del", ns]).status();
            } else if let Some(pid) = item.strip_prefix("pid:") {
                let _ = Command::new("kill").args(["-TERM", pid]).status();
            } else if let Some(dir) = item.strip_prefix("pins:") {
                std::thread::sleep(Duration::from_millis(300));
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        std::process::exit(130);
    })?;
    Ok(())
}

/// Namespaces `client` and `pop` joined by a veth link.
fn world() -> anyhow::Result<(Netns, Netns)> {
    let client = Netns::new("client")?;
    CLEANUP
        .lock()
        .unwrap()
        .push(format!("netns:{}", client.name()));
    let pop = Netns::new("pop")?;
    CLEANUP
        .lock()
        .unwrap()
        .push(format!("netns:{}", pop.name()));
    veth_pair(
        &LinkEnd {
            ns: &client,
            iface: "client0",
            addrs: &["10.70.0.1/24"],
        },
        &LinkEnd {
            ns: &pop,
            iface: "pop0",
            addrs: &["10.70.0.2/24"],
        },
    )?;

    Ok((client, pop))
}

/// edged in `pop` with XDP native on pop0, up once its maps name the apps.
fn start_edged(pop: &Netns, out: &Path, pin_dir: &Path) -> anyhow::Result<(Edged, PinnedMaps)> {
    let config = out.join("edged.toml");
    std::fs::write(&config, EDGED_TOML)?;
    step("starting edged in `pop` (XDP native on pop0; config in results/demo/edged.toml)");
    let log = std::fs::File::create(out.join("edged.log"))?;
    let child = pop
        .command(
            target_dir()
                .join("release/edged")
                .to_str()
                .context("utf-8 path")?,
        )
        .arg("--config")
        .arg(&config)
        .arg("--pin-dir")
        .arg(pin_dir)
        .arg("--unpin-on-exit")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting edged")?;
    CLEANUP.lock().unwrap().push(format!("pid:{}", child.id()));
    let edged = Edged { child };
    let started = Instant::now();
    let maps = loop {
        if let Ok(m) = PinnedMaps::open(pin_dir)
            && m.app_id("dns").is_ok()
        {
            break m;
        }
        if started.elapsed() > Duration::from_secs(20) {
            bail!(
                "edged did not come up; see {}",
                out.join("edged.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Ok((edged, maps))
}

/// Requests to hello and datagrams to dns from the client: how many requests were answered.
fn legitimate_traffic(
    client: &Netns,
    hello: SocketAddr,
    dns: SocketAddr,
    requests: usize,
    datagrams: usize,
) -> anyhow::Result<usize> {
    step(&format!(
        "client: {requests} HTTP requests to hello, {datagrams} UDP datagrams to dns"
    ));
    client.run(|| -> anyhow::Result<usize> {
        let mut ok = 0;
        for _ in 0..requests {
            ok += http_get(hello).unwrap_or(false) as usize;
        }
        let sock = UdpSocket::bind(format!("{CLIENT_V4}:0"))?;
        for _ in 0..datagrams {
            sock.send_to(b"query", dns)?;
            std::thread::sleep(Duration::from_micros(100));
        }
        Ok(ok)
    })?
}

/// A blocklisted flood, then malformed frames of three kinds: the flood's seconds.
fn attacks(client: &Netns, flood: u32, malformed: usize) -> anyhow::Result<f64> {
    step(&format!(
        "attacker: {flood} spoofed frames from {FLOOD_SOURCE} (blocklisted) at line rate"
    ));
    let flood_frame =
        FrameSpec::udp(FLOOD_SOURCE.parse()?, POP_V4.parse()?, 4444, 5353, 18).build();
    let secs = xdp::flood(client, "client0", &flood_frame, flood)?;

    step(&format!(
        "attacker: {malformed} malformed frames of each of 3 kinds"
    ));
    let good = FrameSpec::udp(CLIENT_V4.parse()?, POP_V4.parse()?, 4444, 5353, 18).build();
    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x43;
    let mut bad_udp_len = good.clone();
    bad_udp_len[38..40].copy_from_slice(&2u16.to_be_bytes());
    let truncated = good[..30].to_vec();
    let frames: Vec<Vec<u8>> = [bad_ihl, bad_udp_len, truncated]
        .iter()
        .flat_map(|f| vec![f.clone(); malformed])
        .collect();
    client.run(|| send_raw_frames("client0", &frames))??;
    std::thread::sleep(Duration::from_millis(300));

    Ok(secs)
}

/// The summary: printed, and written to `out/summary.json`.
fn report(
    maps: &PinnedMaps,
    out: &Path,
    (ok, requests): (usize, usize),
    flood: u32,
    secs: f64,
) -> anyhow::Result<()> {
    let reader = maps.stats_reader()?;
    let dns_stats = reader.app(maps.app_id("dns")?)?;
    let hello_stats = reader.app(maps.app_id("hello")?)?;
    let blocked = dns_stats.drops[edgeplane_abi::DropReason::Blocklisted as usize];
    let summary = serde_json::json!({
        "http_requests": requests, "http_ok": ok, "hello_new_flows": hello_stats.new_flows,
        "udp_datagrams_counted": dns_stats.packets, "flood_sent": flood,
        "flood_dropped_at_xdp": blocked, "flood_mpps": blocked as f64 / secs / 1e6,
        "malformed_dropped": reader.app(0)?.total_drops(),
    });
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    println!("Summary");
    println!(
        "  HTTP requests through XDP:    {ok}/{requests} answered, {} new flows counted for hello",
        hello_stats.new_flows
    );
    println!("  UDP datagrams counted (dns):  {}", dns_stats.packets);
    println!(
        "  blocklisted flood:            {blocked} of {flood} dropped at XDP ({:.2} Mpps received and dropped)",
        blocked as f64 / secs / 1e6
    );
    println!(
        "  malformed frames dropped:     {}",
        reader.app(0)?.total_drops()
    );
    println!("  results:                      {}", out.display());

    Ok(())
}
