//! edged: one datacenter's data plane daemon. Loads the kernel programs, pins their maps, applies
//! the configuration, attaches XDP, and detaches cleanly on SIGTERM/SIGINT. SIGHUP (or `edgectl
//! reload`) reloads the configuration while serving; SIGUSR2 (or `edgectl upgrade`) starts the
//! binary at edged's path again, which takes the listeners over (`--takeover`) while this one
//! drains and exits.
//!
//! Its life is a sequence of phases, one module each, in the order they run:
//! [`configure`] (the file, the fleet's snapshot, the command line) -> [`data_plane`] (a
//! predecessor's listeners, maps and programs, compiled apps, XDP) -> workers (`server::start`)
//! -> [`control_plane`] (placement engine, admin endpoint, fleet agent and measurer) ->
//! [`serve`] (signals, reloads, upgrades) -> [`drain`].

mod configure;
mod control_plane;
mod data_plane;
mod drain;
mod serve;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use edgeplane::{XdpAttachMode, server, upgrade};

#[derive(Parser)]
#[command(name = "edged", version, about = "edgeplane data plane daemon")]
struct Cli {
    /// TOML configuration (defaults apply without one).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Attach XDP to this interface (repeatable; adds to the config's list).
    #[arg(long = "iface")]
    interfaces: Vec<String>,
    /// XDP attach mode (overrides the config).
    #[arg(long)]
    xdp_mode: Option<XdpAttachMode>,
    /// Pin directory (overrides the config).
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    /// Remove the pinned maps on exit (default: keep them, so counters survive a restart).
    #[arg(long)]
    unpin_on_exit: bool,
    /// Take over from the edged running with this configuration's `server.upgrade_socket`:
    /// its listening sockets, XDP links and pinned maps, without dropping a connection.
    #[arg(long)]
    takeover: bool,
    #[command(subcommand)]
    command: Option<EdgedCmd>,
}

#[derive(clap::Subcommand)]
enum EdgedCmd {
    /// Ask the running edged to start the binary installed at its path, which takes its
    /// listening sockets, XDP links and maps over while it drains; waits until the new one
    /// serves (as `edgectl upgrade` and SIGUSR2 do).
    Upgrade {
        /// The running edged's admin endpoint (default: the configuration's `server.admin`).
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
    },
}

// A wasm request makes about 60 allocations (most inside wasmtime-wasi-http), two of them past
// glibc's per-thread cache (the reply's future, about 2.4 KB, and a 1 KB block), and freeing those
// sends glibc through malloc_consolidate. With mimalloc, reused-instance requests per CPU-second
// rose 7.8% (6 interleaved pairs, bench/README.md); static routes did not change.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    upgrade::record_invocation();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let configured = configure::configure(&cli).await?;
    if let Some(EdgedCmd::Upgrade { admin }) = cli.command {
        return ask_upgrade(admin.unwrap_or(configured.cfg.server.admin)).await;
    }
    let data_plane::DataPlane {
        cfg,
        dp,
        maps,
        workers: count,
        specs,
        mut inherited,
        handover,
    } = data_plane::start(configured.cfg, cli.takeover)?;
    let listeners = inherited.as_mut().map(|i| std::mem::take(&mut i.listeners));
    let workers = server::start(&cfg, &dp, &maps, count, specs, listeners)?;
    let control = control_plane::start(
        control_plane::Parts {
            cfg,
            config_path: cli.config.clone(),
            maps,
            worker_count: count,
            admin_listener: inherited.as_mut().and_then(|i| i.admin.take()),
            fleet: configured.fleet,
        },
        workers.as_ref(),
    )?;
    let mut running = serve::Running::announce(dp, workers, control, inherited, handover)?;
    let handed_to = running.serve().await?;
    drain::drain(running, handed_to, cli.unpin_on_exit)
}

/// `edged upgrade`: `POST /upgrade` on the running edged's admin endpoint.
async fn ask_upgrade(admin: std::net::SocketAddr) -> anyhow::Result<()> {
    use edgeplane_dataplane::client::oneshot::{Once, send};
    let mut ask = Once::get("/upgrade", "edged", 1 << 16)?;
    ask.method = http::Method::POST;
    let answer = send(admin, ask, std::time::Duration::from_secs(300))
        .await
        .with_context(|| format!("asking the edged at {admin} to upgrade"))?;
    let body = String::from_utf8_lossy(&answer.body);
    anyhow::ensure!(answer.status == 200, "{}", body.trim_end());
    println!("{}", body.trim_end());
    Ok(())
}
