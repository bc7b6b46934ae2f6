//! The admin endpoint: `/healthz`, `/metrics` (Prometheus text), `/observations` and `/cache`
//! (JSON).
//! Off the request path, on its own thread.

use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener},
    sync::Arc,
};

use edgeplane_abi::DropReason;
use edgeplane_dataplane::{
    http::{HttpLimits, ParseOutcome, Response, ResponseMode, parse_request, write_response},
    router::WorkerMetrics,
    wasm::{Observations, Residency},
    worker::{WorkerCounters, supervisor::SupervisorStats},
};
use tracing::{info, warn};

use crate::PinnedMaps;

pub struct AdminState {
    pub maps: PinnedMaps,
    pub metrics: Vec<WorkerMetrics>,
    pub observations: Vec<Observations>,
    pub residency: Vec<Residency>,
    /// The placement engine's status per app, when it runs.
    pub placement: Option<crate::placement::PlacementStatus>,
    /// Worker restarts, and how many workers are down now.
    pub workers: Arc<SupervisorStats>,
    /// Each worker's counters of rare events.
    pub worker_counters: Vec<Arc<WorkerCounters>>,
    /// Set once edged is shutting down.
    pub stopping: Arc<std::sync::atomic::AtomicBool>,
}

impl AdminState {
    fn health(&self) -> Response {
        use std::sync::atomic::Ordering::Relaxed;
        health(self.stopping.load(Relaxed), self.workers.down.load(Relaxed))
    }
}

/// `/healthz`: 200 while every worker serves, 503 with the reason otherwise.
fn health(stopping: bool, workers_down: u64) -> Response {
    if stopping {
        return Response::text(503, "shutting down\n");
    }
    match workers_down {
        0 => Response::text(200, "ok\n"),
        n => Response::text(
            503,
            format!("degraded: {n} worker(s) down, being restarted\n"),
        ),
    }
}

/// Admin connections served at once; past it, a new one is answered 503 and closed.
const MAX_ADMIN_CONNECTIONS: usize = 32;
/// How long one admin connection may take to send its request and read the answer.
const ADMIN_IO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

pub fn serve(addr: SocketAddr, state: Arc<AdminState>) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    info!(%bound, "admin endpoint");
    let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            // Each connection on a thread of its own: a slow or silent client holds only its
            // own thread (until its timeouts), never the endpoint a health check relies on.
            for conn in listener.incoming().flatten() {
                use std::sync::atomic::Ordering::SeqCst;
                if active.fetch_add(1, SeqCst) >= MAX_ADMIN_CONNECTIONS {
                    active.fetch_sub(1, SeqCst);
                    let mut conn = conn;
                    let _ = conn.set_write_timeout(Some(ADMIN_IO_TIMEOUT));
                    let _ = reply(&mut conn, Response::text(503, "admin endpoint busy\n"));
                    continue;
                }
                let (state, done) = (state.clone(), active.clone());
                let spawned =
                    std::thread::Builder::new()
                        .name("admin-conn".into())
                        .spawn(move || {
                            serve_one(conn, &state);
                            done.fetch_sub(1, SeqCst);
                        });
                if let Err(e) = spawned {
                    warn!(error = %e, "admin: no thread for a connection");
                    active.fetch_sub(1, SeqCst);
                }
            }
        })?;
    Ok(bound)
}

fn reply(conn: &mut std::net::TcpStream, resp: Response) -> std::io::Result<()> {
    let mut out = Vec::new();
    write_response(
        &mut out,
        resp,
        ResponseMode {
            keep_alive: false,
            head_only: false,
            chunked: false,
        },
        &httpdate::fmt_http_date(std::time::SystemTime::now()),
    );
    conn.write_all(&out)
}

/// Reads one request (within the I/O timeout and the usual header limits), answers, closes.
fn serve_one(mut conn: std::net::TcpStream, state: &AdminState) {
    let _ = conn.set_read_timeout(Some(ADMIN_IO_TIMEOUT));
    let _ = conn.set_write_timeout(Some(ADMIN_IO_TIMEOUT));
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    let req = loop {
        if started.elapsed() > ADMIN_IO_TIMEOUT {
            break None;
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => break None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        match parse_request(&buf, &HttpLimits::default()) {
            Ok(ParseOutcome::Complete(r, _)) => break Some(r),
            Ok(ParseOutcome::Partial { .. }) => continue,
            Err(_) => break None,
        }
    };
    let resp = match req.as_ref().map(|r| r.path()) {
        Some("/healthz") => state.health(),
        Some("/metrics") => match metrics(state) {
            Ok(text) => {
                Response::new(200, text).header("content-type", "text/plain; version=0.0.4")
            }
            Err(e) => Response::text(500, format!("{e:#}\n")),
        },
        Some("/observations") => {
            let all: Vec<_> = state
                .observations
                .iter()
                .flat_map(|o| o.snapshot())
                .collect();
            Response::new(200, serde_json::to_vec_pretty(&all).unwrap_or_default())
                .header("content-type", "application/json")
        }
        Some("/placement") => {
            let table = state
                .placement
                .as_ref()
                .map(|p| edgeplane_dataplane::lock(p).clone())
                .unwrap_or_default();
            Response::new(200, serde_json::to_vec_pretty(&table).unwrap_or_default())
                .header("content-type", "application/json")
        }
        Some("/cache") => {
            let all: Vec<_> = state.residency.iter().map(|r| r.snapshot()).collect();
            Response::new(200, serde_json::to_vec_pretty(&all).unwrap_or_default())
                .header("content-type", "application/json")
        }
        Some(_) => Response::text(
            404,
            "try /healthz, /metrics, /observations, /cache or /placement\n",
        ),
        None => Response::text(400, "bad request\n"),
    };
    if let Err(e) = reply(&mut conn, resp) {
        warn!(error = %e, "admin write");
    }
}

/// Picks one counter out of a worker's counters.
type CounterOf = fn(&WorkerCounters) -> &std::sync::atomic::AtomicU64;

fn metrics(state: &AdminState) -> anyhow::Result<String> {
    let mut out = String::new();
    let names = state.maps.app_names()?;
    let name = |id: u32| {
        names.get(&id).cloned().unwrap_or_else(|| {
            if id == 0 {
                "(unclassified)".into()
            } else {
                id.to_string()
            }
        })
    };
    out.push_str(
        "# TYPE edgeplane_xdp_packets_total counter\n# TYPE edgeplane_xdp_bytes_total counter\n",
    );
    out.push_str(
        "# TYPE edgeplane_xdp_new_flows_total counter\n# TYPE edgeplane_xdp_drops_total counter\n",
    );
    for (id, s) in state.maps.stats_reader()?.all()? {
        let app = name(id);
        writeln!(
            out,
            "edgeplane_xdp_packets_total{{app=\"{app}\"}} {}",
            s.packets
        )?;
        writeln!(
            out,
            "edgeplane_xdp_bytes_total{{app=\"{app}\"}} {}",
            s.bytes
        )?;
        writeln!(
            out,
            "edgeplane_xdp_new_flows_total{{app=\"{app}\"}} {}",
            s.new_flows
        )?;
        for r in DropReason::ALL {
            writeln!(
                out,
                "edgeplane_xdp_drops_total{{app=\"{app}\",reason=\"{}\"}} {}",
                r.name(),
                s.drops[r as usize]
            )?;
        }
    }
    let (restarts, down) = (
        state
            .workers
            .restarts
            .load(std::sync::atomic::Ordering::Relaxed),
        state
            .workers
            .down
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    writeln!(
        out,
        "# TYPE edgeplane_worker_restarts_total counter\nedgeplane_worker_restarts_total {restarts}"
    )?;
    writeln!(
        out,
        "# TYPE edgeplane_workers_down gauge\nedgeplane_workers_down {down}"
    )?;
    let families: [(&str, &str, CounterOf); 4] = [
        (
            "edgeplane_worker_panics_total",
            "requests whose handling panicked (answered 500)",
            |c| &c.panics,
        ),
        (
            "edgeplane_worker_accept_errors_total",
            "accepts that failed for want of descriptors or memory (accepting paused)",
            |c| &c.accept_errors,
        ),
        (
            "edgeplane_worker_connections_refused_total",
            "connections closed at once at the worker's max_connections",
            |c| &c.connections_refused,
        ),
        (
            "edgeplane_worker_slow_readers_total",
            "connections closed after send_timeout without the client reading",
            |c| &c.slow_readers,
        ),
    ];
    for (name, help, field) in families {
        writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter")?;
        for (w, c) in state.worker_counters.iter().enumerate() {
            writeln!(
                out,
                "{name}{{worker=\"{w}\"}} {}",
                field(c).load(std::sync::atomic::Ordering::Relaxed)
            )?;
        }
    }
    let workers = state.maps.worker_config()?.n_workers;
    out.push_str(
        "# TYPE edgeplane_worker_in_flight gauge\n# TYPE edgeplane_worker_served_total counter\n",
    );
    for (w, load) in state.maps.worker_loads(workers)?.iter().enumerate() {
        writeln!(
            out,
            "edgeplane_worker_in_flight{{worker=\"{w}\"}} {}",
            load.in_flight
        )?;
        writeln!(
            out,
            "edgeplane_worker_served_total{{worker=\"{w}\"}} {}",
            load.served
        )?;
    }
    out.push_str("# TYPE edgeplane_app_requests_total counter\n# TYPE edgeplane_app_responses_total counter\n");
    out.push_str(
        "# TYPE edgeplane_app_traps_total counter\n# TYPE edgeplane_app_deadlines_total counter\n# TYPE edgeplane_app_handoffs_total counter\n",
    );
    for (w, m) in state.metrics.iter().enumerate() {
        let m = edgeplane_dataplane::lock(m);
        for (app, c) in m.iter() {
            writeln!(
                out,
                "edgeplane_app_requests_total{{app=\"{app}\",worker=\"{w}\"}} {}",
                c.requests
            )?;
            for (class, n) in [
                ("2xx", c.responses_2xx),
                ("3xx", c.responses_3xx),
                ("4xx", c.responses_4xx),
                ("5xx", c.responses_5xx),
            ] {
                writeln!(
                    out,
                    "edgeplane_app_responses_total{{app=\"{app}\",worker=\"{w}\",class=\"{class}\"}} {n}"
                )?;
            }
            writeln!(
                out,
                "edgeplane_app_traps_total{{app=\"{app}\",worker=\"{w}\"}} {}",
                c.traps
            )?;
            writeln!(
                out,
                "edgeplane_app_deadlines_total{{app=\"{app}\",worker=\"{w}\"}} {}",
                c.deadlines
            )?;
            for (outcome, n) in [
                ("sent", c.handed_off),
                ("failed", c.handoff_failures),
                ("received", c.handoffs_received),
                ("rejected", c.handoffs_rejected),
                ("holdout", c.holdouts),
                ("skipped", c.handoffs_skipped),
                ("region-saturated", c.region_saturated),
                ("region-cold", c.region_cold),
            ] {
                writeln!(
                    out,
                    "edgeplane_app_handoffs_total{{app=\"{app}\",worker=\"{w}\",outcome=\"{outcome}\"}} {n}"
                )?;
            }
        }
    }
    out.push_str(
        "# TYPE edgeplane_code_cache_resident_apps gauge\n# TYPE edgeplane_code_cache_bytes gauge\n",
    );
    for (w, r) in state.residency.iter().enumerate() {
        let s = r.snapshot();
        writeln!(
            out,
            "edgeplane_code_cache_resident_apps{{worker=\"{w}\"}} {}",
            s.apps.len()
        )?;
        writeln!(
            out,
            "edgeplane_code_cache_bytes{{worker=\"{w}\"}} {}",
            s.bytes
        )?;
        writeln!(
            out,
            "edgeplane_code_cache_evictions_total{{worker=\"{w}\"}} {}",
            s.evicted
        )?;
    }
    out.push_str("# TYPE edgeplane_subrequests_total counter\n# TYPE edgeplane_subrequest_latency_us gauge\n");
    for o in state.observations.iter().flat_map(|o| o.snapshot()) {
        let labels = format!("app=\"{}\",destination=\"{}\"", o.app, o.destination);
        writeln!(out, "edgeplane_subrequests_total{{{labels}}} {}", o.count)?;
        writeln!(
            out,
            "edgeplane_subrequest_failures_total{{{labels}}} {}",
            o.failures
        )?;
        writeln!(
            out,
            "edgeplane_subrequest_denied_total{{{labels}}} {}",
            o.denied
        )?;
        writeln!(
            out,
            "edgeplane_subrequest_latency_us{{{labels},quantile=\"0.5\"}} {}",
            o.p50_us
        )?;
        writeln!(
            out,
            "edgeplane_subrequest_latency_us{{{labels},quantile=\"0.99\"}} {}",
            o.p99_us
        )?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_is_degraded_while_a_worker_is_down_and_while_stopping() {
        assert_eq!(health(false, 0).status, 200);
        let down = health(false, 1);
        assert_eq!(down.status, 503);
        assert!(String::from_utf8_lossy(&down.body).contains("1 worker(s) down"));
        assert_eq!(health(true, 0).status, 503);
    }
}
