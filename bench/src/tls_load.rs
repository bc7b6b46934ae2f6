//! A closed-loop HTTPS load generator for `tls-bench`: threads on one CPU, each opening a
//! connection, sending `requests_per_connection` keep-alive GETs on it, closing, and starting
//! over, with or without session resumption. Full handshakes per connection are what wrk
//! cannot make resume; this makes both kinds, the same way for edged and for nginx.

use std::{
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use edgeplane_dataplane::tls::rustls::{ClientConfig, client::Resumption};
use serde::Serialize;

use edgeplane_testkit::{raw_http::try_request, tls::Https};

use crate::cpu::CpuTimes;

pub struct TlsLoad {
    pub addr: SocketAddr,
    pub sni: String,
    pub host: String,
    /// Threads (each one connection at a time), all on `cpu`.
    pub threads: u32,
    pub cpu: Option<u32>,
    pub duration: Duration,
    pub requests_per_connection: u32,
    /// Offer the session the last connection got (tickets or ids): resumed handshakes.
    pub resume: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct TlsLoadResult {
    pub target: String,
    pub requests: u64,
    pub handshakes: u64,
    pub resumed: u64,
    pub errors: u64,
    pub requests_per_sec: f64,
    pub server_busy_seconds: f64,
    pub requests_per_cpu_second: f64,
}

impl TlsLoad {
    /// Runs the load with `client` (its resumption set per `resume`), reading what
    /// `server_cpu` spent meanwhile.
    pub fn run(
        &self,
        target: &str,
        client: &ClientConfig,
        server_cpu: u32,
    ) -> anyhow::Result<TlsLoadResult> {
        let mut cfg = client.clone();
        if !self.resume {
            cfg.resumption = Resumption::disabled();
        }
        let cfg = Arc::new(cfg);
        let stop = AtomicBool::new(false);
        let (requests, handshakes, resumed, errors) = (
            AtomicU64::new(0),
            AtomicU64::new(0),
            AtomicU64::new(0),
            AtomicU64::new(0),
        );
        let before = CpuTimes::read(server_cpu)?;
        let started = Instant::now();
        std::thread::scope(|scope| {
            for _ in 0..self.threads {
                scope.spawn(|| {
                    if let Some(cpu) = self.cpu {
                        crate::cpu::pin_current_thread(cpu);
                    }
                    while !stop.load(Relaxed) {
                        match self.one_connection(&cfg, &requests) {
                            Ok(r) => {
                                handshakes.fetch_add(1, Relaxed);
                                resumed.fetch_add(u64::from(r), Relaxed);
                            }
                            Err(_) => {
                                errors.fetch_add(1, Relaxed);
                            }
                        }
                    }
                });
            }
            std::thread::sleep(self.duration);
            stop.store(true, Relaxed);
        });
        let elapsed = started.elapsed().as_secs_f64();
        let used = before.until(CpuTimes::read(server_cpu)?);
        let requests = requests.load(Relaxed);
        Ok(TlsLoadResult {
            target: target.to_owned(),
            requests,
            handshakes: handshakes.load(Relaxed),
            resumed: resumed.load(Relaxed),
            errors: errors.load(Relaxed),
            requests_per_sec: requests as f64 / elapsed,
            server_busy_seconds: used.busy_seconds,
            requests_per_cpu_second: requests as f64 / used.busy_seconds.max(1e-3),
        })
    }

    /// One connection and its requests; whether its session resumed.
    fn one_connection(
        &self,
        cfg: &Arc<ClientConfig>,
        requests: &AtomicU64,
    ) -> anyhow::Result<bool> {
        let tcp = TcpStream::connect_timeout(&self.addr, Duration::from_secs(3))?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut https = Https::connect(tcp, cfg, &self.sni)?;
        for _ in 0..self.requests_per_connection {
            let (status, _, _) = try_request(&mut https, "GET", &self.host, "/", b"")?;
            anyhow::ensure!(status == 200, "status {status}");
            requests.fetch_add(1, Relaxed);
        }
        https.stream.conn.send_close_notify();
        let _ = https.stream.conn.complete_io(&mut https.stream.sock);
        Ok(https.resumed())
    }
}
