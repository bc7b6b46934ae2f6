//! An HTTP/1.1 load generator: many keep-alive connections, closed loop (each connection sends
//! as soon as its previous response arrives) or open loop (a constant arrival rate, the schedule
//! fixed in advance), latencies in an HDR histogram.
//!
//! Open loop avoids coordinated omission the way wrk2 does: a request's latency runs from the
//! moment the schedule said it should be sent, so a stalled server is charged for the requests
//! it kept the generator from sending. When the generator's own timer wakes late while the
//! connection was idle, the actual send time counts instead: that lateness is ours, not the
//! server's.

use std::{
    cell::RefCell,
    net::SocketAddr,
    rc::Rc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arrival {
    /// Each connection sends its next request as soon as the previous response arrives.
    Closed,
    /// Requests per second over all connections, on a fixed schedule.
    Open { rate: f64 },
}

#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
    pub connections: usize,
    pub duration: Duration,
    pub arrival: Arrival,
}

/// What one run measured.
#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    pub target: String,
    /// Offered rate (open loop), or null.
    pub offered_rate: Option<f64>,
    pub requests_per_sec: f64,
    pub completed: u64,
    pub errors: u64,
    /// Errors that were a connection reset by the server.
    pub resets: u64,
    /// The run's planned length.
    pub duration_s: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// Completed responses in each second of the run.
    pub per_second: Vec<u64>,
    /// (latency ms, fraction of requests at or below it), for CDF plots.
    pub cdf: Vec<(f64, f64)>,
    /// Every completed request: (when it was due or sent, s from the start; latency ms), for
    /// latency over time.
    #[serde(skip)]
    pub timeline: Vec<(f32, f32)>,
    #[serde(skip)]
    pub histogram: Histogram<u64>,
}

struct Tally {
    histogram: Histogram<u64>,
    timeline: Vec<(f32, f32)>,
    errors: u64,
    resets: u64,
    per_second: Vec<u64>,
    started: Instant,
}

impl Tally {
    fn record(&mut self, latency: Duration) {
        let us = latency.as_micros().clamp(1, u64::MAX as u128) as u64;
        self.histogram.saturating_record(us);
        let sent = self.started.elapsed().saturating_sub(latency);
        self.timeline
            .push((sent.as_secs_f32(), latency.as_secs_f32() * 1000.0));
        let second = self.started.elapsed().as_secs() as usize;
        if self.per_second.len() <= second {
            self.per_second.resize(second + 1, 0);
        }
        self.per_second[second] += 1;
    }
}

/// Runs the load described by `spec` on the calling thread (one core, like `wrk -t1`) and
/// reports what it measured. Call it from inside a network namespace to load a server there.
pub fn run(target: &str, spec: &LoadSpec) -> anyhow::Result<LoadReport> {
    anyhow::ensure!(spec.connections > 0, "at least one connection");
    if let Arrival::Open { rate } = spec.arrival {
        anyhow::ensure!(rate > 0.0, "open-loop rate must be positive");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime for the load generator")?;
    let started = Instant::now();
    let tally = Rc::new(RefCell::new(Tally {
        histogram: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
        timeline: Vec::new(),
        errors: 0,
        resets: 0,
        per_second: Vec::new(),
        started,
    }));
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: edgeplane-loadgen\r\n\r\n",
        spec.path, spec.host
    )
    .into_bytes();
    drive(&runtime, target, spec, &request, started, &tally);
    let elapsed = started.elapsed().min(spec.duration).as_secs_f64().max(1e-9);
    let tally = Rc::try_unwrap(tally)
        .ok()
        .expect("all tasks finished")
        .into_inner();
    report(target, spec, elapsed, tally)
}

/// Every connection's task, and the progress bar, on one thread until the run's end.
fn drive(
    runtime: &tokio::runtime::Runtime,
    target: &str,
    spec: &LoadSpec,
    request: &[u8],
    started: Instant,
    tally: &Rc<RefCell<Tally>>,
) {
    let local = tokio::task::LocalSet::new();
    local.block_on(runtime, async {
        let end = started + spec.duration;
        let mut tasks = Vec::new();
        for index in 0..spec.connections {
            let tally = tally.clone();
            let request = request.to_vec();
            let spec = spec.clone();
            tasks.push(tokio::task::spawn_local(async move {
                connection(index, &spec, &request, started, end, &tally).await
            }));
        }
        let progress = (spec.duration >= PROGRESS_AFTER).then(|| {
            tokio::task::spawn_local(show_progress(
                target.to_owned(),
                spec.duration,
                tally.clone(),
            ))
        });
        let mut first_error = None;
        for t in tasks {
            if let Err(e) = t.await.expect("load task panicked")
                && first_error.is_none()
            {
                first_error = Some(e);
            }
        }
        if let Some(p) = progress {
            p.abort();
            // Wait for the cancelled task to be dropped, which clears the bar.
            let _ = p.await;
        }
        if let Some(e) = first_error {
            tracing::debug!(error = %e, "a load connection ended with an error");
        }
    });
}

/// What a run measured, from its tally; a run in which no request completed is an error.
fn report(target: &str, spec: &LoadSpec, elapsed: f64, tally: Tally) -> anyhow::Result<LoadReport> {
    let Tally {
        histogram: h,
        timeline,
        errors,
        resets,
        per_second,
        ..
    } = tally;
    if h.is_empty() {
        bail!(
            "{target}: no request completed ({errors} errors) against {}",
            spec.addr
        );
    }
    let ms = |us: u64| us as f64 / 1000.0;
    let cdf = h
        .iter_quantiles(1)
        .map(|v| (ms(v.value_iterated_to()), v.quantile_iterated_to()))
        .collect();
    Ok(LoadReport {
        target: target.to_owned(),
        offered_rate: match spec.arrival {
            Arrival::Open { rate } => Some(rate),
            Arrival::Closed => None,
        },
        requests_per_sec: h.len() as f64 / elapsed,
        completed: h.len(),
        errors,
        resets,
        duration_s: spec.duration.as_secs_f64(),
        p50_ms: ms(h.value_at_quantile(0.50)),
        p90_ms: ms(h.value_at_quantile(0.90)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
        per_second,
        cdf,
        timeline,
        histogram: h,
    })
}

/// Runs at least this long get a progress bar (on a terminal; hidden otherwise).
const PROGRESS_AFTER: Duration = Duration::from_secs(3);

/// A progress bar over the run's seconds, with what has completed so far; cleared at the end.
async fn show_progress(target: String, duration: Duration, tally: Rc<RefCell<Tally>>) {
    let bar = indicatif::ProgressBar::new(duration.as_millis() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:>30} [{bar:30}] {elapsed:>3}/{duration} {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(target);
    struct ClearOnDrop(indicatif::ProgressBar);
    impl Drop for ClearOnDrop {
        fn drop(&mut self) {
            self.0.finish_and_clear();
        }
    }
    let bar = ClearOnDrop(bar);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let t = tally.borrow();
        bar.0
            .set_position(t.started.elapsed().as_millis().min(duration.as_millis()) as u64);
        bar.0
            .set_message(format!("{} done, {} errors", t.histogram.len(), t.errors));
    }
}

/// One keep-alive connection's share of the load; reconnects after errors.
async fn connection(
    index: usize,
    spec: &LoadSpec,
    request: &[u8],
    started: Instant,
    end: Instant,
    tally: &RefCell<Tally>,
) -> anyhow::Result<()> {
    // Open loop: arrival k is due at k / rate; connection i takes arrivals i, i + C, i + 2C...
    let interval = match spec.arrival {
        Arrival::Open { rate } => Some(Duration::from_secs_f64(spec.connections as f64 / rate)),
        Arrival::Closed => None,
    };
    let first_due = match spec.arrival {
        Arrival::Open { rate } => started + Duration::from_secs_f64(index as f64 / rate),
        Arrival::Closed => started,
    };
    let mut due = first_due;
    let mut stream: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(4096);
    let mut last_error = None;
    while Instant::now() < end && due < end {
        let idle_before_due = Instant::now() <= due;
        if interval.is_some() {
            tokio::time::sleep_until(due.into()).await;
        }
        let sent = Instant::now();
        // The schedule's time if the server kept us busy past it, else when we actually sent.
        let charged_from = if idle_before_due || interval.is_none() {
            sent
        } else {
            due
        };
        let outcome = match stream.as_mut() {
            Some(s) => exchange(s, request, &mut buf).await,
            None => match TcpStream::connect(spec.addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    let s = stream.insert(s);
                    exchange(s, request, &mut buf).await
                }
                Err(e) => Err(e.into()),
            },
        };
        match outcome {
            Ok(keep_alive) => {
                tally.borrow_mut().record(charged_from.elapsed());
                if !keep_alive {
                    stream = None;
                }
            }
            Err(e) => {
                let reset = e
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset);
                {
                    let mut t = tally.borrow_mut();
                    t.errors += 1;
                    t.resets += u64::from(reset);
                }
                stream = None;
                last_error = Some(e);
                // Do not spin on a refused connection.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        if let Some(i) = interval {
            due += i;
        }
    }
    match last_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Sends one request and reads its whole response; returns whether the connection stays open.
async fn exchange(s: &mut TcpStream, request: &[u8], buf: &mut Vec<u8>) -> anyhow::Result<bool> {
    s.write_all(request).await?;
    buf.clear();
    loop {
        if let Some(done) = response_complete(buf)? {
            if done.status >= 500 {
                bail!("server answered {}", done.status);
            }
            return Ok(done.keep_alive);
        }
        let mut chunk = [0u8; 8192];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed mid-response");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Whether `buf` holds a whole response, and whether the connection stays open after it: the
/// load generator reads status, framing and connection only (httparse for the head), and no
/// more than that per response, so the load it offers is not bounded by its own parsing.
fn response_complete(buf: &[u8]) -> anyhow::Result<Option<Complete>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf)? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let status = resp.code.unwrap_or(0);
    let (mut length, mut chunked, mut keep_alive) = (None, false, resp.version == Some(1));
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            length = Some(std::str::from_utf8(h.value)?.trim().parse::<usize>()?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = String::from_utf8_lossy(h.value)
                .to_ascii_lowercase()
                .contains("chunked");
        } else if h.name.eq_ignore_ascii_case("connection") {
            keep_alive = !h.value.eq_ignore_ascii_case(b"close");
        }
    }
    let rest = &buf[head_len..];
    let whole = if status == 204 || status == 304 || (100..200).contains(&status) {
        true
    } else if chunked {
        edgeplane_dataplane::http::decode_chunked(rest, usize::MAX)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .is_some()
    } else {
        let length = length.context("a response without a length")?;
        rest.len() >= length
    };
    Ok(whole.then_some(Complete { status, keep_alive }))
}

struct Complete {
    status: u16,
    keep_alive: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_whole_responses_only() {
        let cl = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        for cut in 0..cl.len() {
            assert!(response_complete(&cl[..cut]).unwrap().is_none(), "{cut}");
        }
        assert!(response_complete(cl).unwrap().unwrap().keep_alive);
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        for cut in 0..chunked.len() {
            assert!(
                response_complete(&chunked[..cut]).unwrap().is_none(),
                "{cut}"
            );
        }
        let done = response_complete(chunked).unwrap().unwrap();
        assert!(!done.keep_alive);
        assert_eq!(done.status, 200);
    }
}
