//! edgectl: read and tune a running edgeplane through its pinned BPF maps.

mod daemon;
mod fleet;
use std::{collections::BTreeMap, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::bail;
use clap::{Args, Parser, Subcommand};
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use edgeplane::{
    DEFAULT_PIN_DIR, PinnedMaps,
    addr::{Cidr, Vip},
};
use edgeplane_abi::{
    AppStats, DropReason, MAX_RATE_PPS, Placement, UNCLASSIFIED_APP, WorkerConfig, app_flags,
    placement_flags, placement_kind, rate_limit_flags, worker_flags,
};
use serde::Serialize;
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "edgectl",
    version,
    about = "Read and tune edgeplane's data plane"
)]
struct Cli {
    /// Where edged pinned its maps.
    #[arg(long, global = true, default_value = DEFAULT_PIN_DIR, env = "EDGEPLANE_PIN_DIR")]
    pin_dir: PathBuf,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    /// edged's admin endpoint, for what only the running daemon knows (the placement
    /// engine's verdicts).
    #[arg(
        long,
        global = true,
        default_value = "127.0.0.1:9901",
        env = "EDGEPLANE_ADMIN"
    )]
    admin: std::net::SocketAddr,
    /// The fleet's NATS (`nats://host:4222`): `app rm`, `placement pin|unpin` and `block
    /// add|rm` then go fleet-wide, to every datacenter, instead of to this host's maps.
    #[arg(long, global = true, env = "EDGEPLANE_NATS")]
    nats: Option<String>,
    /// Mutual TLS with NATS: the CA its certificate must come from, and this operator's
    /// certificate and key (all three, or none: plain TCP).
    #[arg(long, global = true, env = "EDGEPLANE_NATS_CA", requires_all = ["nats_cert", "nats_key"])]
    nats_ca: Option<PathBuf>,
    #[arg(long, global = true, env = "EDGEPLANE_NATS_CERT", requires = "nats_ca")]
    nats_cert: Option<PathBuf>,
    #[arg(long, global = true, env = "EDGEPLANE_NATS_KEY", requires = "nats_ca")]
    nats_key: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apps and the VIPs that route to them.
    #[command(subcommand)]
    App(AppCmd),
    /// Source prefixes dropped at XDP (fleet-wide with --nats).
    #[command(subcommand)]
    Block(BlockCmd),
    /// The per-source token bucket (fleet-wide with --nats).
    #[command(subcommand)]
    Ratelimit(RateLimitCmd),
    /// Where each app runs.
    #[command(subcommand)]
    Placement(PlacementCmd),
    /// Worker steering (CPUMAP + SO_REUSEPORT selection).
    #[command(subcommand)]
    Workers(WorkersCmd),
    /// Per-app rates and drop counts, summed over CPUs.
    Stats(StatsArgs),
    /// Make edged re-read its configuration file and apply the difference while serving (as
    /// SIGHUP does); a configuration that does not validate is refused and the running one
    /// stays.
    Reload,
    /// Start the edged binary installed at the running edged's path, which takes the listening
    /// sockets, XDP links and maps over while the running one drains (as SIGUSR2 does).
    Upgrade,
    /// The certificates edged serves (each app's, the default, the datacenter's own toward its
    /// peers): subject, issuer, expiry, with a warning for each within --warn-days of its end.
    Certs {
        #[arg(long, default_value_t = 30)]
        warn_days: u64,
        /// Exit with status 1 when a certificate is expired or within the warning window
        /// (for a monitoring check).
        #[arg(long)]
        check: bool,
    },
    /// Publish an app to the fleet (needs --nats): its `[[apps]]` table as a file of its own,
    /// its components uploaded once, by content hash. Every datacenter applies it live.
    Deploy {
        /// The app's table (`name = ...`, `component = ...`, ...).
        file: PathBuf,
        /// The app's component (overrides the file's).
        #[arg(long)]
        component: Option<PathBuf>,
    },
    /// The fleet (needs --nats).
    #[command(subcommand)]
    Fleet(FleetCmd),
}

#[derive(Subcommand)]
enum FleetCmd {
    /// Each datacenter's last heartbeat, the revision it serves, and its apps' placement.
    Status,
    /// Publish the topology (every datacenter and its addresses) that datacenters whose file
    /// names none use; it takes effect at their next start or upgrade.
    Topology { file: PathBuf },
}

#[derive(Subcommand)]
enum AppCmd {
    /// Add an app, or more VIPs to an existing one.
    Add {
        name: String,
        /// ADDR:PORT/PROTO, for example 10.0.0.1:80/tcp or [2001:db8::1]:443/udp (repeatable).
        #[arg(long = "vip", required = true)]
        vips: Vec<Vip>,
        /// App id (default: the lowest free one).
        #[arg(long)]
        id: Option<u32>,
        /// Do not steer this app's flows to worker CPUs.
        #[arg(long)]
        no_steer: bool,
        /// Exempt this app from the per-source rate limit.
        #[arg(long)]
        no_rate_limit: bool,
    },
    /// Remove an app with its VIPs and placement.
    Rm {
        name: String,
    },
    List,
    /// The component version (content hash) each app serves, and the configuration
    /// generation each worker serves.
    Versions,
}

#[derive(Subcommand)]
enum BlockCmd {
    Add { cidr: Cidr },
    Rm { cidr: Cidr },
    List,
}

#[derive(Subcommand)]
enum RateLimitCmd {
    /// Enable with a rate and burst, or disable with --off.
    Set {
        /// Sustained packets per second per source.
        #[arg(long, required_unless_present = "off")]
        pps: Option<u64>,
        /// Bucket depth in packets.
        #[arg(long, required_unless_present = "off")]
        burst: Option<u64>,
        /// Sources share a bucket per IPv4 prefix of this length (default 32).
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=32))]
        v4_prefix: Option<u8>,
        /// Sources share a bucket per IPv6 prefix of this length (default 64).
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=128))]
        v6_prefix: Option<u8>,
        #[arg(long, conflicts_with_all = ["pps", "burst"])]
        off: bool,
    },
    Show,
}

#[derive(Subcommand)]
enum PlacementCmd {
    /// Set where an app runs: `local`, `region`, or `dc=<id>`.
    Set {
        app: String,
        target: PlacementTarget,
        /// Mark as pinned by hand: the placement engine leaves it alone.
        #[arg(long)]
        pin: bool,
    },
    /// Pin an app by hand (`set --pin`): the placement engine leaves it alone. With --nats,
    /// at every datacenter: the target is `local`, `region` or a datacenter's name.
    Pin {
        app: String,
        target: String,
    },
    /// Hand a pinned app back to the placement engine (it stays where it is until the engine
    /// decides).
    Unpin {
        app: String,
    },
    Get {
        app: String,
    },
    List,
}

#[derive(Subcommand)]
enum WorkersCmd {
    Show,
    Set {
        #[arg(long)]
        count: Option<u32>,
        /// In-flight requests above which select_worker picks the least loaded worker (0: off).
        #[arg(long)]
        load_threshold: Option<u32>,
        /// Redirect app flows to their worker's CPU through CPUMAP.
        #[arg(long)]
        steer: Option<bool>,
    },
}

#[derive(Args)]
struct StatsArgs {
    /// Seconds between the two samples rates are computed from.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
}

#[derive(Clone, Copy, Debug)]
struct PlacementTarget {
    kind: u32,
    datacenter: u32,
}

impl std::str::FromStr for PlacementTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "local" => Ok(Self {
                kind: placement_kind::LOCAL,
                datacenter: 0,
            }),
            "region" => Ok(Self {
                kind: placement_kind::REGION,
                datacenter: 0,
            }),
            _ => s
                .strip_prefix("dc=")
                .and_then(|id| id.parse().ok())
                .map(|datacenter| Self {
                    kind: placement_kind::DATACENTER,
                    datacenter,
                })
                .ok_or_else(|| format!("{s:?}: expected local, region or dc=<id>")),
        }
    }
}

fn placement_json(app: &str, id: u32, p: &Placement) -> serde_json::Value {
    let kind = match p.kind {
        placement_kind::LOCAL => "local",
        placement_kind::DATACENTER => "datacenter",
        placement_kind::REGION => "region",
        _ => "unknown",
    };
    json!({
        "app": app,
        "id": id,
        "kind": kind,
        "datacenter": (p.kind == placement_kind::DATACENTER).then_some(p.datacenter),
        "pinned": p.flags & placement_flags::PINNED != 0,
        "smart": p.flags & placement_flags::SMART != 0,
    })
}

fn placement_text(p: &Placement) -> String {
    let mut s = match p.kind {
        placement_kind::LOCAL => "local".to_owned(),
        placement_kind::DATACENTER => format!("dc={}", p.datacenter),
        placement_kind::REGION => "region".to_owned(),
        other => format!("unknown({other})"),
    };
    if p.flags & placement_flags::PINNED != 0 {
        s.push_str(" (pinned)");
    }
    s
}

/// The placement engine's verdict per app, from edged's admin endpoint (None when it does not
/// answer: edged stopped, or not part of a topology).
fn engine_status(admin: std::net::SocketAddr) -> Option<edgeplane_placement::StatusTable> {
    use edgeplane_dataplane::client::oneshot::{Once, send_blocking};
    let ask = Once::get("/placement", "edgectl", 1 << 20).ok()?;
    let answer = send_blocking(admin, ask, Duration::from_secs(2)).ok()?;
    (answer.status == 200)
        .then(|| serde_json::from_slice(&answer.body).ok())
        .flatten()
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(header.to_vec());
    t
}

fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// One row of `edgectl stats`.
#[derive(Serialize)]
struct StatsRow {
    app: String,
    id: u32,
    packets: u64,
    bytes: u64,
    new_flows: u64,
    pps: f64,
    bps: f64,
    new_flows_per_sec: f64,
    drops: BTreeMap<&'static str, u64>,
    drops_per_sec: f64,
}

fn stats(maps: &PinnedMaps, args: &StatsArgs, as_json: bool) -> anyhow::Result<()> {
    if !(0.0..=3600.0).contains(&args.interval) {
        bail!("--interval must be between 0 and 3600 seconds");
    }
    let reader = maps.stats_reader()?;
    let first = reader.all()?;
    std::thread::sleep(Duration::from_secs_f64(args.interval));
    let second = reader.all()?;
    let names = maps.app_names()?;
    let secs = args.interval.max(1e-9);
    let rate = |a: u64, b: u64| {
        if args.interval > 0.0 {
            (b - a) as f64 / secs
        } else {
            0.0
        }
    };
    let mut ids: Vec<u32> = names.keys().copied().collect();
    if second.contains_key(&UNCLASSIFIED_APP) {
        ids.insert(0, UNCLASSIFIED_APP);
    }
    let rows: Vec<StatsRow> = ids
        .into_iter()
        .map(|id| {
            let zero = AppStats::default();
            let (a, b) = (
                first.get(&id).unwrap_or(&zero),
                second.get(&id).unwrap_or(&zero),
            );
            StatsRow {
                app: names
                    .get(&id)
                    .cloned()
                    .unwrap_or_else(|| "(unclassified)".to_owned()),
                id,
                packets: b.packets,
                bytes: b.bytes,
                new_flows: b.new_flows,
                pps: rate(a.packets, b.packets),
                bps: 8.0 * rate(a.bytes, b.bytes),
                new_flows_per_sec: rate(a.new_flows, b.new_flows),
                drops: DropReason::ALL
                    .iter()
                    .filter(|r| b.drops[**r as usize] > 0)
                    .map(|r| (r.name(), b.drops[*r as usize]))
                    .collect(),
                drops_per_sec: rate(a.total_drops(), b.total_drops()),
            }
        })
        .collect();
    if as_json {
        return print_json(&rows);
    }
    let mut t = table(&[
        "app",
        "id",
        "pps",
        "bit/s",
        "new flows/s",
        "packets",
        "bytes",
        "drops/s",
        "drops (total, by reason)",
    ]);
    for r in &rows {
        let drops = r
            .drops
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        t.add_row(vec![
            r.app.clone(),
            r.id.to_string(),
            format!("{:.0}", r.pps),
            format!("{:.0}", r.bps),
            format!("{:.1}", r.new_flows_per_sec),
            r.packets.to_string(),
            r.bytes.to_string(),
            format!("{:.0}", r.drops_per_sec),
            drops,
        ]);
    }
    println!("{t}");
    Ok(())
}

/// `ratelimit set`'s arguments as the config's `[rate_limit]` (for this host's maps or the
/// fleet's guard bucket alike).
fn rate_limit_section(cmd: &RateLimitCmd) -> edgeplane::config::RateLimitSection {
    match *cmd {
        RateLimitCmd::Set {
            pps,
            burst,
            v4_prefix,
            v6_prefix,
            off: false,
        } => edgeplane::config::RateLimitSection {
            enabled: true,
            pps: pps.unwrap_or(0),
            burst: burst.unwrap_or(0),
            v4_prefix,
            v6_prefix,
        },
        _ => edgeplane::config::RateLimitSection::default(),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(outcome) = fleet::run(&cli) {
        return outcome;
    }
    let as_json = cli.json;
    if matches!(
        cli.command,
        Command::Reload | Command::Upgrade | Command::App(AppCmd::Versions) | Command::Certs { .. }
    ) {
        return daemon::ask(cli.admin, &cli.command, as_json);
    }
    let maps = PinnedMaps::open(&cli.pin_dir)?;
    match cli.command {
        Command::App(AppCmd::Add {
            name,
            vips,
            id,
            no_steer,
            no_rate_limit,
        }) => {
            let flags = if no_steer { app_flags::NO_STEER } else { 0 }
                | if no_rate_limit {
                    app_flags::NO_RATE_LIMIT
                } else {
                    0
                };
            let id = maps.add_app(&name, id, &vips, flags)?;
            if as_json {
                print_json(&json!({ "app": name, "id": id }))?;
            } else {
                println!(
                    "app {name} (id {id}): {}",
                    vips.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        Command::App(AppCmd::Rm { name }) => {
            let id = maps.remove_app(&name)?;
            if !as_json {
                println!("removed app {name} (id {id})");
            }
        }
        Command::App(AppCmd::List) => {
            let apps = maps.list_apps()?;
            if as_json {
                return print_json(&apps);
            }
            let mut t = table(&["id", "app", "vips", "flags"]);
            for a in apps {
                let flags = [(a.no_steer, "no-steer"), (a.no_rate_limit, "no-rate-limit")]
                    .iter()
                    .filter(|(on, _)| *on)
                    .map(|(_, n)| *n)
                    .collect::<Vec<_>>()
                    .join(",");
                t.add_row(vec![a.id.to_string(), a.name, a.vips.join(" "), flags]);
            }
            println!("{t}");
        }
        Command::Block(BlockCmd::Add { cidr }) => {
            maps.block_add(cidr)?;
            if !as_json {
                println!("blocked {cidr}");
            }
        }
        Command::Block(BlockCmd::Rm { cidr }) => {
            maps.block_remove(cidr)?;
            if !as_json {
                println!("unblocked {cidr}");
            }
        }
        Command::Block(BlockCmd::List) => {
            let list = maps.block_list()?;
            if as_json {
                let v: Vec<_> = list
                    .iter()
                    .map(|(c, t)| json!({ "cidr": c.to_string(), "added_at": t }))
                    .collect();
                return print_json(&v);
            }
            let mut t = table(&["cidr", "added (unix s)"]);
            for (c, at) in list {
                t.add_row(vec![c.to_string(), at.to_string()]);
            }
            println!("{t}");
        }
        Command::Ratelimit(cmd @ RateLimitCmd::Set { .. }) => {
            let section = rate_limit_section(&cmd);
            if section.pps > MAX_RATE_PPS {
                bail!("--pps must be at most {MAX_RATE_PPS}");
            }
            let off = !section.enabled;
            let cfg = section.map_entry();
            maps.set_rate_limit(cfg)?;
            if !as_json {
                println!(
                    "{}",
                    if off {
                        "rate limit off".to_owned()
                    } else {
                        format!("rate limit {} pps, burst {}", cfg.pps, cfg.burst)
                    }
                );
            }
        }
        Command::Ratelimit(RateLimitCmd::Show) => {
            let cfg = maps.rate_limit()?;
            let enabled = cfg.flags & rate_limit_flags::ENABLED != 0;
            let v4 = match cfg.v4_prefix {
                0 => edgeplane_abi::DEFAULT_RATE_LIMIT_V4_PREFIX,
                p => p,
            };
            let v6 = match cfg.v6_prefix {
                0 => edgeplane_abi::DEFAULT_RATE_LIMIT_V6_PREFIX,
                p => p,
            };
            if as_json {
                print_json(&json!({
                    "enabled": enabled, "pps": cfg.pps, "burst": cfg.burst,
                    "v4_prefix": v4, "v6_prefix": v6,
                }))?;
            } else if enabled {
                println!(
                    "rate limit {} pps per source (IPv4 /{v4}, IPv6 /{v6}), burst {}",
                    cfg.pps, cfg.burst
                );
            } else {
                println!("rate limit off");
            }
        }
        Command::Placement(cmd @ (PlacementCmd::Set { .. } | PlacementCmd::Pin { .. })) => {
            let (app, target, pin) = match cmd {
                PlacementCmd::Set { app, target, pin } => (app, target, pin),
                PlacementCmd::Pin { app, target } => (
                    app,
                    target
                        .parse::<PlacementTarget>()
                        .map_err(anyhow::Error::msg)?,
                    true,
                ),
                _ => unreachable!("matched above"),
            };
            let id = maps.app_id(&app)?;
            let p = Placement {
                kind: target.kind,
                datacenter: target.datacenter,
                flags: if pin { placement_flags::PINNED } else { 0 },
                _reserved: 0,
            };
            maps.set_placement(id, p)?;
            if as_json {
                print_json(&placement_json(&app, id, &p))?;
            } else {
                println!("{app}: {}", placement_text(&p));
            }
        }
        Command::Placement(PlacementCmd::Unpin { app }) => {
            let id = maps.app_id(&app)?;
            let mut p = maps.placement(id)?;
            p.flags &= !placement_flags::PINNED;
            maps.set_placement(id, p)?;
            if as_json {
                print_json(&placement_json(&app, id, &p))?;
            } else {
                println!("{app}: {}", placement_text(&p));
            }
        }
        Command::Placement(PlacementCmd::Get { app }) => {
            let id = maps.app_id(&app)?;
            let p = maps.placement(id)?;
            if as_json {
                print_json(&placement_json(&app, id, &p))?;
            } else {
                println!("{app}: {}", placement_text(&p));
            }
        }
        Command::Placement(PlacementCmd::List) => {
            let names = maps.app_names()?;
            let placed: BTreeMap<u32, Placement> = maps.placement_list()?.into_iter().collect();
            let rows: Vec<(u32, String, Placement)> = names
                .into_iter()
                .map(|(id, name)| (id, name, placed.get(&id).copied().unwrap_or_default()))
                .collect();
            let status = engine_status(cli.admin);
            let status_of = |app: &str| status.as_ref().and_then(|s| s.get(app)).cloned();
            if as_json {
                let v: Vec<_> = rows
                    .iter()
                    .map(|(id, n, p)| {
                        let mut j = placement_json(n, *id, p);
                        j["status"] = serde_json::to_value(status_of(n)).unwrap_or_default();
                        j
                    })
                    .collect();
                return print_json(&v);
            }
            let mut t = table(&["app", "id", "placement", "status"]);
            for (id, n, p) in rows {
                let st = status_of(&n).map_or_else(|| "-".into(), |s| s.to_string());
                t.add_row(vec![n, id.to_string(), placement_text(&p), st]);
            }
            println!("{t}");
            if status.is_none() {
                eprintln!(
                    "(no engine status: edged's admin endpoint {} did not answer /placement)",
                    cli.admin
                );
            }
        }
        Command::Workers(WorkersCmd::Show) => {
            let cfg = maps.worker_config()?;
            let loads = maps.worker_loads(cfg.n_workers)?;
            let steer = cfg.flags & worker_flags::STEER_CPUMAP != 0;
            if as_json {
                let l: Vec<_> = loads
                    .iter()
                    .map(|l| json!({ "in_flight": l.in_flight, "served": l.served }))
                    .collect();
                return print_json(
                    &json!({ "count": cfg.n_workers, "load_threshold": cfg.load_threshold, "steer": steer, "workers": l }),
                );
            }
            println!(
                "{} workers, steering {}, load threshold {}",
                cfg.n_workers,
                if steer { "on" } else { "off" },
                cfg.load_threshold
            );
            let mut t = table(&["worker (cpu)", "in flight", "served"]);
            for (i, l) in loads.iter().enumerate() {
                t.add_row(vec![
                    i.to_string(),
                    l.in_flight.to_string(),
                    l.served.to_string(),
                ]);
            }
            println!("{t}");
        }
        Command::Workers(WorkersCmd::Set {
            count,
            load_threshold,
            steer,
        }) => {
            let mut cfg: WorkerConfig = maps.worker_config()?;
            if let Some(c) = count {
                cfg.n_workers = c;
            }
            if let Some(t) = load_threshold {
                cfg.load_threshold = t;
            }
            match steer {
                Some(true) => cfg.flags |= worker_flags::STEER_CPUMAP,
                Some(false) => cfg.flags &= !worker_flags::STEER_CPUMAP,
                None => {}
            }
            maps.set_worker_config(cfg)?;
        }
        Command::Stats(args) => stats(&maps, &args, as_json)?,
        Command::Reload
        | Command::Upgrade
        | Command::App(AppCmd::Versions)
        | Command::Certs { .. } => {
            unreachable!("asked of edged above")
        }
        Command::Deploy { .. } | Command::Fleet(_) => unreachable!("fleet verbs above"),
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgectl: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
