//! `tls-bench`: HTTPS on edged's workers against nginx with the same certificate, one core
//! each (server on CPU 0, the load generator's threads on CPU 1), requests per CPU-second of
//! the server's core. Two kinds of load: a full handshake per request (a new connection each
//! time, no resumption), and keep-alive connections of 10 requests that resume their session.
//! Run as root: `./x bench tls`.

use std::{net::SocketAddr, path::Path, time::Duration};

use clap::Parser;
use edgeplane_bench::{
    http::nginx_with,
    scenario::{Setup, median},
    tls_load::{TlsLoad, TlsLoadResult},
};
use edgeplane_testkit::{
    edged::start_local,
    process::Server,
    tls::{Issued, TestCa},
};

#[derive(Parser)]
#[command(about = "HTTPS: edged's workers vs nginx, same certificate, one core each")]
struct Args {
    /// Short runs for CI: checks the harness; figures are not meaningful.
    #[arg(long)]
    smoke: bool,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Load generator threads (one connection each at a time), all on CPU 1.
    #[arg(long, default_value_t = 48)]
    threads: u32,
    /// Rounds, each server back to back per round (medians reported).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Only the loads whose name contains this (profiling one case).
    #[arg(long)]
    only_load: Option<String>,
}

const EDGED_PORT: u16 = 18443;
const EDGED_ADMIN_PORT: u16 = 19443;
const NGINX_PORT: u16 = 18444;
const SERVER_CPU: u32 = 0;
const LOADGEN_CPU: u32 = 1;
const SNI: &str = "bench.test";

/// (name, requests per connection, resumed).
const LOADS: [(&str, u32, bool); 2] = [
    ("full handshake per request", 1, false),
    ("keep-alive, 10 requests per connection, resumed", 10, true),
];

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let setup = Setup::new("tls-bench")?;
    let hello = setup.app("hello")?;
    let scratch = std::env::temp_dir().join(format!("edgeplane-tls-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let ca = TestCa::new(&scratch.join("ca"))?;
    let cert = ca.issue("bench", &[SNI], 30)?;

    let _servers = start_servers(&scratch, &setup, &cert, &hello)?;
    let targets = [
        ("nginx static", NGINX_PORT, "static"),
        ("edgeplane static", EDGED_PORT, "static"),
        ("edgeplane hello (fresh instance)", EDGED_PORT, "hello"),
        ("edgeplane hello (instance reuse)", EDGED_PORT, "reused"),
    ];
    let duration = Duration::from_secs(if args.smoke { 1 } else { args.seconds });
    let client = ca.client();
    let mut results: Vec<(String, Vec<TlsLoadResult>)> = Vec::new();
    let loads = LOADS.iter().filter(|(name, _, _)| {
        args.only_load
            .as_ref()
            .is_none_or(|o| name.contains(o.as_str()))
    });
    for &(load, per_connection, resume) in loads {
        for (target, _, _) in targets {
            results.push((format!("{target}: {load}"), Vec::new()));
        }
        for _ in 0..args.rounds.max(1) {
            for (i, (target, port, host)) in targets.iter().enumerate() {
                let run = TlsLoad {
                    addr: SocketAddr::from(([127, 0, 0, 1], *port)),
                    sni: SNI.to_owned(),
                    host: (*host).to_owned(),
                    threads: args.threads,
                    cpu: Some(LOADGEN_CPU),
                    duration,
                    requests_per_connection: per_connection,
                    resume,
                }
                .run(target, &client, SERVER_CPU)?;
                log_run(target, load, &run);
                let slot = results.len() - targets.len() + i;
                results[slot].1.push(run);
            }
        }
    }
    print_table(&results, targets.len());
    if let Some(path) = &args.json {
        write_json(path, &results)?;
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

fn edged_config(scratch: &Path, cert: &Path, key: &Path, hello: &Path) -> String {
    format!(
        r#"pin_dir = "/sys/fs/bpf/edgeplane-tls-bench-{pid}"
[workers]
steer = false
pin = true
count = 1
[server]
listen = "127.0.0.1:{EDGED_PORT}"
admin = "127.0.0.1:{EDGED_ADMIN_PORT}"
[runtime]
cache_dir = "{cache}"
[tls]
cert = "{cert}"
key = "{key}"
[[apps]]
name = "hello"
hosts = ["hello"]
component = "{hello}"
[[apps]]
name = "hello-reused"
hosts = ["reused"]
component = "{hello}"
limits = {{ instance_reuse = 100000 }}
[[apps]]
name = "static"
hosts = ["static"]
static_body = "hello\n"
"#,
        pid = std::process::id(),
        cache = scratch.join("cache").display(),
        cert = cert.display(),
        key = key.display(),
        hello = hello.display(),
    )
}

/// Medians per target, each load's first target (nginx) the baseline of its group.
fn print_table(results: &[(String, Vec<TlsLoadResult>)], group: usize) {
    println!("\n| one server core, HTTPS | req/s | req per CPU-second | vs nginx | errors |");
    println!("|---|---|---|---|---|");
    for chunk in results.chunks(group) {
        let base = median(chunk[0].1.iter().map(|r| r.requests_per_cpu_second));
        for (name, runs) in chunk {
            let per_cpu = median(runs.iter().map(|r| r.requests_per_cpu_second));
            println!(
                "| {name} | {:.0} | {:.0} | {:.2}x | {} |",
                median(runs.iter().map(|r| r.requests_per_sec)),
                per_cpu,
                per_cpu / base.max(1e-9),
                runs.iter().map(|r| r.errors).sum::<u64>()
            );
        }
    }
}

/// edged (one worker on CPU 0) and nginx (one worker on CPU 0), both with `cert`.
fn start_servers(
    scratch: &Path,
    setup: &Setup,
    cert: &Issued,
    hello: &Path,
) -> anyhow::Result<Vec<Server>> {
    let config = scratch.join("edged.toml");
    std::fs::write(&config, edged_config(scratch, &cert.cert, &cert.key, hello))?;
    let edged_addr = SocketAddr::from(([127, 0, 0, 1], EDGED_PORT));
    Ok(vec![
        start_local(&config, &setup.edged, edged_addr)?,
        nginx_with(
            &scratch.join("nginx"),
            NGINX_PORT,
            1,
            Some("01"),
            "hello\\n",
            Some((&cert.cert, &cert.key)),
        )?,
    ])
}

fn log_run(target: &str, load: &str, run: &TlsLoadResult) {
    eprintln!(
        "{target}, {load}: {:.0} req/s, {:.0} req per CPU-second, {} handshakes ({} resumed), {} errors",
        run.requests_per_sec, run.requests_per_cpu_second, run.handshakes, run.resumed, run.errors
    );
}

fn write_json(path: &Path, results: &[(String, Vec<TlsLoadResult>)]) -> anyhow::Result<()> {
    let json: Vec<_> = results
        .iter()
        .map(|(name, runs)| serde_json::json!({"name": name, "runs": runs}))
        .collect();
    std::fs::write(path, serde_json::to_string_pretty(&json)?)?;
    Ok(())
}
