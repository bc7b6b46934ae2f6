//! edgectl: read and tune a running edgeplane through its pinned BPF maps.

//!
//! One module per subcommand, each with its clap arguments and what it does: `app`, `block`,
//! `ratelimit`, `placement`, `workers`, `stats` (this host's maps), `daemon` (asked of the
//! running edged: reload, upgrade, versions, certs), `fleet` (deploys and fleet-wide verbs over
//! NATS); `output` prints.

mod app;
mod block;
mod daemon;
mod fleet;
mod output;
mod placement;
mod ratelimit;
mod stats;
mod workers;

use std::{path::PathBuf, process::ExitCode};

use app::AppCmd;
use block::BlockCmd;
use clap::{Parser, Subcommand};
use edgeplane::{DEFAULT_PIN_DIR, PinnedMaps};
use placement::PlacementCmd;
use ratelimit::RateLimitCmd;
use stats::StatsArgs;
use workers::WorkersCmd;

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
        Command::App(cmd) => app::run(&maps, cmd, as_json),
        Command::Block(cmd) => block::run(&maps, cmd, as_json),
        Command::Ratelimit(cmd) => ratelimit::run(&maps, cmd, as_json),
        Command::Placement(cmd) => placement::run(&maps, cmd, cli.admin, as_json),
        Command::Workers(cmd) => workers::run(&maps, cmd, as_json),
        Command::Stats(args) => stats::run(&maps, &args, as_json),
        Command::Reload | Command::Upgrade | Command::Certs { .. } => {
            unreachable!("asked of edged above")
        }
        Command::Deploy { .. } | Command::Fleet(_) => unreachable!("fleet verbs above"),
    }
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
