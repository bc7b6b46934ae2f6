//! HTTP throughput and latency of edgeplane's workers against baselines in the same run, with
//! the same load generator (wrk) and the same machine: the hello component vs `wasmtime serve`
//! (fresh instance per request, and instance reuse), and a static route vs nginx.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail};
use edgeplane_testkit::process::{Server, spawn, wait_listening};
use serde::Serialize;

use crate::cpu::{CpuTimes, CpuUse};

#[derive(Clone, Debug, Serialize)]
pub struct LoadResult {
    pub target: String,
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
    /// The server's CPU during the run, when the server had one CPU to itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu: Option<CpuUse>,
    /// Requests served per CPU-second of the server's CPU: its capacity per core.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_cpu_second: Option<f64>,
}

pub struct Wrk {
    /// Run wrk on this CPU only (taskset), away from a server pinned elsewhere.
    pub cpu: Option<u32>,
    pub threads: u32,
    pub connections: u32,
    pub duration: Duration,
}

impl Wrk {
    /// Runs wrk against `url` with `host` as the Host header.
    pub fn run(&self, target: &str, url: &str, host: &str) -> anyhow::Result<LoadResult> {
        let out = on_cpu(self.cpu, "wrk")
            .args([
                "-t",
                &self.threads.to_string(),
                "-c",
                &self.connections.to_string(),
            ])
            .args([
                "-d",
                &format!("{}s", self.duration.as_secs().max(1)),
                "--latency",
            ])
            .args(["-H", &format!("Host: {host}"), url])
            .output()
            .context("running wrk (apt-get install wrk)")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
        }
        parse_wrk(target, &text)
    }

    /// Like `run`, also reading what `server_cpu` (the server's own CPU) spent meanwhile.
    pub fn run_metered(
        &self,
        target: &str,
        url: &str,
        host: &str,
        server_cpu: u32,
    ) -> anyhow::Result<LoadResult> {
        let before = CpuTimes::read(server_cpu)?;
        let mut result = self.run(target, url, host)?;
        let used = before.until(CpuTimes::read(server_cpu)?);
        let requests = result.requests_per_sec * self.duration.as_secs().max(1) as f64;
        result.requests_per_cpu_second = Some(requests / used.busy_seconds.max(1e-3));
        result.server_cpu = Some(used);
        Ok(result)
    }
}

/// `program`, run on `cpu` only (all its threads) when one is given.
fn on_cpu(cpu: Option<u32>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpu.to_string()).arg(program);
            c
        }
        None => Command::new(program),
    }
}

fn parse_ms(s: &str) -> Option<f64> {
    let (num, unit) = s
        .trim()
        .split_at(s.trim().find(|c: char| c.is_ascii_alphabetic())?);
    let v: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => v / 1000.0,
        "ms" => v,
        "s" => v * 1000.0,
        "m" => v * 60_000.0,
        _ => return None,
    })
}

pub fn parse_wrk(target: &str, text: &str) -> anyhow::Result<LoadResult> {
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(str::trim))
    };
    let rps: f64 = field("Requests/sec:")
        .context("wrk output without Requests/sec")?
        .parse()?;
    let pct = |p: &str| field(p).and_then(parse_ms).unwrap_or(f64::NAN);
    let errors = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .filter_map(|n| n.trim().parse::<u64>().ok())
        .sum::<u64>()
        + text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Socket errors:"))
            .map(|rest| {
                rest.split(',')
                    .filter_map(|kv| kv.split_whitespace().last()?.parse::<u64>().ok())
                    .sum()
            })
            .unwrap_or(0);
    Ok(LoadResult {
        target: target.into(),
        requests_per_sec: rps,
        p50_ms: pct("50%"),
        p99_ms: pct("99%"),
        errors,
        server_cpu: None,
        requests_per_cpu_second: None,
    })
}

/// An nginx with `workers` worker processes answering `body` on `port`, config in `dir`;
/// `affinity` is nginx's `worker_cpu_affinity` (for example "01": the one worker on CPU 0).
pub fn nginx(
    dir: &Path,
    port: u16,
    workers: u32,
    affinity: Option<&str>,
    body: &str,
) -> anyhow::Result<Server> {
    nginx_with(dir, port, workers, affinity, body, None)
}

/// As `nginx`, serving HTTPS with the certificate and key at `tls`, set up as edged's workers
/// are: TLS 1.2 and 1.3, session tickets and a session cache, AES-128-GCM first whatever the
/// client prefers.
pub fn nginx_with(
    dir: &Path,
    port: u16,
    workers: u32,
    affinity: Option<&str>,
    body: &str,
    tls: Option<(&Path, &Path)>,
) -> anyhow::Result<Server> {
    std::fs::create_dir_all(dir)?;
    let conf = dir.join("nginx.conf");
    let (ssl, tls_lines) = match tls {
        Some((cert, key)) => (
            " ssl",
            format!(
                "ssl_certificate {};\n  ssl_certificate_key {};\n  ssl_protocols TLSv1.2 TLSv1.3;\n  \
                 ssl_session_cache shared:tls:4m;\n  ssl_session_tickets on;\n  \
                 ssl_prefer_server_ciphers on;\n  \
                 ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384;\n  \
                 ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256;\n  ",
                cert.display(),
                key.display()
            ),
        ),
        None => ("", String::new()),
    };
    std::fs::write(
        &conf,
        format!(
            "worker_processes {workers};\n{affinity}daemon off;\npid {pid};\nerror_log stderr error;\n\
             events {{ worker_connections 4096; }}\n\
             http {{ access_log off; keepalive_requests 1000000;\n  {tls_lines}server {{ listen 127.0.0.1:{port}{ssl} reuseport;\n\
             location / {{ default_type text/plain; return 200 \"{body}\"; }} }} }}\n",
            pid = dir.join("nginx.pid").display(),
            affinity = affinity
                .map(|a| format!("worker_cpu_affinity {a};\n"))
                .unwrap_or_default(),
        ),
    )?;
    let mut server = spawn(
        "nginx",
        Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(dir),
    )?;
    wait_listening(
        &mut server,
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(10),
    )?;
    Ok(server)
}

/// `wasmtime serve` (pooling allocator, the CLI's defaults otherwise) on `port`; with `cpu`,
/// all its threads on that CPU only.
pub fn wasmtime_serve(
    wasmtime: &Path,
    component: &Path,
    port: u16,
    reuse: Option<u32>,
    cpu: Option<u32>,
) -> anyhow::Result<Server> {
    let mut cmd = on_cpu(cpu, wasmtime);
    cmd.args([
        "serve",
        "-O",
        "pooling-allocator=y",
        "-S",
        "cli=y",
        "--addr",
        &format!("127.0.0.1:{port}"),
    ]);
    if let Some(n) = reuse {
        cmd.args(["--max-instance-reuse-count", &n.to_string()]);
    }
    cmd.arg(component);
    let name = if reuse.is_some() {
        "wasmtime serve (reuse)"
    } else {
        "wasmtime serve"
    };
    let mut server = spawn(name, &mut cmd)?;
    wait_listening(
        &mut server,
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(60),
    )?;
    Ok(server)
}

/// The wasmtime CLI: on PATH or in cargo's bin directory.
pub fn find_wasmtime() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    [PathBuf::from("wasmtime"), home.join(".cargo/bin/wasmtime")]
        .into_iter()
        .find(|p| {
            Command::new(p)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let text = "Running 10s test @ http://127.0.0.1:8080/\n  1 threads and 64 connections\n\
            Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   610.25us  200.00us   5.00ms   90.00%\n\
            Latency Distribution\n     50%  580.00us\n     75%  700.00us\n     90%  800.00us\n     99%    1.20ms\n\
            1000000 requests in 10.00s, 100.00MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n\
            Non-2xx or 3xx responses: 5\nRequests/sec: 100000.50\nTransfer/sec:     10.00MB\n";
        let r = parse_wrk("x", text).unwrap();
        assert_eq!(r.requests_per_sec, 100000.5);
        assert_eq!((r.p50_ms, r.p99_ms), (0.58, 1.2));
        assert_eq!(r.errors, 8);
    }
}
