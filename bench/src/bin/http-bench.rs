//! `http-bench`: edgeplane's workers against `wasmtime serve` and nginx, same wrk, same run.
//! Run as root (edged loads its BPF programs): `./x bench`.

use std::{net::SocketAddr, path::PathBuf, process::Command, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use edgeplane_bench::http::{
    LoadResult, Wrk, find_wasmtime, nginx, spawn, wait_listening, wasmtime_serve,
};

#[derive(Parser)]
#[command(about = "edgeplane workers vs wasmtime serve and nginx (wrk, same run)")]
struct Args {
    /// Short runs for CI: checks the harness; figures are not meaningful.
    #[arg(long)]
    smoke: bool,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// The hello component (default: apps/target/wasm32-wasip2/release/hello.wasm).
    #[arg(long)]
    component: Option<PathBuf>,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

const EDGED_PORT: u16 = 18080;
const WASMTIME_PORT: u16 = 18081;
const NGINX_PORT: u16 = 18082;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let component = args
        .component
        .clone()
        .unwrap_or_else(|| workspace.join("apps/target/wasm32-wasip2/release/hello.wasm"));
    anyhow::ensure!(
        component.exists(),
        "{} is missing: build apps/ first (./x bench does)",
        component.display()
    );
    let exe_dir = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .to_path_buf();
    let edged_bin = exe_dir.join("edged");
    anyhow::ensure!(
        edged_bin.exists(),
        "{} is missing: cargo build --release -p edgeplane",
        edged_bin.display()
    );
    let wrk = Wrk {
        threads: 1,
        connections: args.connections,
        duration: Duration::from_secs(if args.smoke { 1 } else { args.seconds }),
    };
    let scratch = std::env::temp_dir().join(format!("edgeplane-http-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let mut results: Vec<LoadResult> = Vec::new();

    // edgeplane: 2 pinned workers, the hello component (fresh instance per request) and a static route.
    {
        let config = scratch.join("edged.toml");
        std::fs::write(
            &config,
            format!(
                r#"
pin_dir = "/sys/fs/bpf/edgeplane-http-bench-{pid}"
[workers]
steer = false
[server]
listen = "127.0.0.1:{EDGED_PORT}"
admin = "127.0.0.1:19901"
[runtime]
cache_dir = "{cache}"
[[apps]]
name = "hello"
vips = []
hosts = ["hello"]
component = "{component}"
[[apps]]
name = "static"
vips = []
hosts = ["static"]
static_body = "hello\n"
"#,
                pid = std::process::id(),
                cache = scratch.join("cache").display(),
                component = component.display(),
            ),
        )?;
        let mut edged = spawn(
            "edged",
            Command::new(&edged_bin)
                .arg("--config")
                .arg(&config)
                .arg("--unpin-on-exit"),
        )?;
        wait_listening(
            &mut edged,
            SocketAddr::from(([127, 0, 0, 1], EDGED_PORT)),
            Duration::from_secs(120),
        )?;
        let url = format!("http://127.0.0.1:{EDGED_PORT}/");
        results.push(wrk.run("edgeplane hello (fresh instance)", &url, "hello")?);
        results.push(wrk.run("edgeplane static route", &url, "static")?);
    }

    // nginx, 2 workers, the same static body.
    match nginx(&scratch.join("nginx"), NGINX_PORT, 2, "hello\\n") {
        Ok(_nginx) => results.push(wrk.run(
            "nginx static (2 workers)",
            &format!("http://127.0.0.1:{NGINX_PORT}/"),
            "static",
        )?),
        Err(e) => eprintln!("!!!!! nginx baseline skipped: {e:#}"),
    }

    // wasmtime serve, the same component, fresh and reused instances.
    match find_wasmtime() {
        Some(wasmtime) => {
            let url = format!("http://127.0.0.1:{WASMTIME_PORT}/");
            {
                let _s = wasmtime_serve(&wasmtime, &component, WASMTIME_PORT, None)?;
                results.push(wrk.run("wasmtime serve (fresh instance)", &url, "hello")?);
            }
            {
                let _s = wasmtime_serve(&wasmtime, &component, WASMTIME_PORT, Some(100_000))?;
                results.push(wrk.run("wasmtime serve (instance reuse)", &url, "hello")?);
            }
        }
        None => eprintln!(
            "!!!!! wasmtime serve baseline skipped: `cargo install wasmtime-cli@48.0.8 --locked` to run it"
        ),
    }

    let rate = |name: &str| {
        results
            .iter()
            .find(|r| r.target.starts_with(name))
            .map(|r| r.requests_per_sec)
    };
    println!(
        "\nHTTP, wrk -t{} -c{} -d{}s on loopback (wrk shares the 2 cores)",
        wrk.threads,
        wrk.connections,
        wrk.duration.as_secs()
    );
    println!(
        "{:<36} {:>12} {:>9} {:>9} {:>7}",
        "server", "req/s", "p50 ms", "p99 ms", "errors"
    );
    for r in &results {
        println!(
            "{:<36} {:>12.0} {:>9.2} {:>9.2} {:>7}",
            r.target, r.requests_per_sec, r.p50_ms, r.p99_ms, r.errors
        );
    }
    if let (Some(e), Some(w)) = (rate("edgeplane hello"), rate("wasmtime serve (fresh")) {
        println!(
            "edgeplane hello vs wasmtime serve, fresh instance per request: {:.2}x",
            e / w
        );
    }
    if let (Some(e), Some(n)) = (rate("edgeplane static"), rate("nginx")) {
        println!("edgeplane static route vs nginx (2 workers): {:.2}x", e / n);
    }
    if let Some(path) = args.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)?;
    }
    let _ = std::fs::remove_dir_all(&scratch);
    anyhow::ensure!(
        results.iter().all(|r| r.errors == 0),
        "some requests failed: {results:?}"
    );
    Ok(())
}
