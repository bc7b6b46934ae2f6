//! `/metrics`: what edged counts, as OpenMetrics text from the `prometheus-client` crate. Each
//! scrape reads the maps and the workers' tables once into a [`Snapshot`], then encodes it
//! family by family: one `# TYPE` per family, its samples together, request latency as real
//! histograms per app and per placement target (summed over workers).

use std::{collections::BTreeMap, fmt, sync::atomic::Ordering::Relaxed};

use edgeplane_abi::DropReason;
use edgeplane_dataplane::{
    router::latency::LatencyHistogram,
    tls::{
        CertRole,
        counters::{Failure, TlsCounters},
    },
    worker::WorkerCounters,
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _, NoLabelSet},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use super::AdminState;

type Labels = Vec<(&'static str, String)>;

/// One family's samples.
#[derive(Debug)]
enum Samples {
    Counter(Vec<(Labels, u64)>),
    Gauge(Vec<(Labels, f64)>),
    Histogram(Vec<(Labels, LatencyHistogram)>),
}

#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    samples: Samples,
}

/// Everything one scrape reports, read before any of it is encoded.
#[derive(Debug, Default)]
pub struct Snapshot {
    families: Vec<Family>,
}

impl Snapshot {
    fn counter(&mut self, name: &'static str, help: &'static str, rows: Vec<(Labels, u64)>) {
        self.families.push(Family {
            name,
            help,
            samples: Samples::Counter(rows),
        });
    }

    fn gauge(&mut self, name: &'static str, help: &'static str, rows: Vec<(Labels, f64)>) {
        self.families.push(Family {
            name,
            help,
            samples: Samples::Gauge(rows),
        });
    }

    /// Reads what `state` knows now.
    pub fn gather(state: &AdminState) -> anyhow::Result<Self> {
        let mut s = Self::default();
        s.xdp(state)?;
        s.workers(state)?;
        s.apps(state);
        s.cache_and_subrequests(state);
        if let Some(live) = &state.live {
            s.gauge(
                "edgeplane_config_generation",
                "configuration generation published (1 at start, one more per reload)",
                vec![(vec![], live.current().number as f64)],
            );
        }
        Ok(s)
    }

    fn xdp(&mut self, state: &AdminState) -> anyhow::Result<()> {
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
        let stats = state.maps.stats_reader()?.all()?;
        let per_app = |f: fn(&edgeplane_abi::AppStats) -> u64| {
            stats
                .iter()
                .map(|(id, s)| (vec![("app", name(*id))], f(s)))
                .collect::<Vec<_>>()
        };
        self.counter(
            "edgeplane_xdp_packets",
            "packets XDP classified, per app",
            per_app(|s| s.packets),
        );
        self.counter(
            "edgeplane_xdp_bytes",
            "bytes XDP classified, per app",
            per_app(|s| s.bytes),
        );
        self.counter(
            "edgeplane_xdp_new_flows",
            "new flows XDP saw, per app",
            per_app(|s| s.new_flows),
        );
        let mut drops = Vec::new();
        for (id, s) in &stats {
            for r in DropReason::ALL {
                drops.push((
                    vec![("app", name(*id)), ("reason", r.name().to_owned())],
                    s.drops[r as usize],
                ));
            }
        }
        self.counter(
            "edgeplane_xdp_drops",
            "packets XDP dropped, per app and reason",
            drops,
        );
        Ok(())
    }

    /// HTTPS on the workers: handshakes, resumptions, failures by reason (summed over workers).
    fn tls(&mut self, state: &AdminState) {
        let sum = |f: &dyn Fn(&TlsCounters) -> u64| -> u64 {
            state.worker_counters.iter().map(|c| f(&c.tls)).sum()
        };
        self.counter(
            "edgeplane_tls_handshakes",
            "TLS handshakes the workers completed, resumed ones included",
            vec![(vec![], sum(&|c| c.handshakes.load(Relaxed)))],
        );
        self.counter(
            "edgeplane_tls_resumed",
            "TLS handshakes that resumed a session (ticket or session id)",
            vec![(vec![], sum(&|c| c.resumed.load(Relaxed)))],
        );
        self.gauge(
            "edgeplane_tls_certificate_expiry_timestamp_seconds",
            "when each certificate the workers serve expires (unix seconds)",
            state
                .certificates()
                .iter()
                .map(|c| {
                    let (role, app) = match &c.role {
                        CertRole::Default => ("default", String::new()),
                        CertRole::App(app) => ("app", app.clone()),
                        CertRole::Datacenter => ("datacenter", c.names.join(",")),
                    };
                    (
                        vec![("role", role.to_owned()), ("name", app)],
                        c.not_after as f64,
                    )
                })
                .collect(),
        );
        self.counter(
            "edgeplane_tls_failures",
            "TLS connections that failed, by reason",
            Failure::ALL
                .iter()
                .map(|r| {
                    (
                        vec![("reason", r.label().to_owned())],
                        sum(&|c| c.failures(*r)),
                    )
                })
                .collect(),
        );
    }

    fn workers(&mut self, state: &AdminState) -> anyhow::Result<()> {
        self.counter(
            "edgeplane_worker_restarts",
            "workers restarted after they stopped",
            vec![(vec![], state.workers.restarts.load(Relaxed))],
        );
        self.gauge(
            "edgeplane_workers_down",
            "workers not running now",
            vec![(vec![], state.workers.down.load(Relaxed) as f64)],
        );
        self.counter(
            "edgeplane_placement_peer_probes",
            "probes the placement engine asked of peers on demand (the fleet's measurements stream spares them)",
            vec![(vec![], state.peer_asks.load(Relaxed))],
        );
        for (name, help, field) in WORKER_COUNTERS {
            let rows = state
                .worker_counters
                .iter()
                .enumerate()
                .map(|(w, c)| (vec![("worker", w.to_string())], field(c).load(Relaxed)))
                .collect();
            self.counter(name, help, rows);
        }
        self.tls(state);
        let n = state.maps.worker_config()?.n_workers;
        let loads = state.maps.worker_loads(n)?;
        self.gauge(
            "edgeplane_worker_in_flight",
            "requests a worker is serving now",
            loads
                .iter()
                .enumerate()
                .map(|(w, l)| (vec![("worker", w.to_string())], l.in_flight as f64))
                .collect(),
        );
        self.counter(
            "edgeplane_worker_served",
            "requests a worker answered",
            loads
                .iter()
                .enumerate()
                .map(|(w, l)| (vec![("worker", w.to_string())], l.served))
                .collect(),
        );
        if let Some(dropped) = &state.access_log_dropped {
            self.counter(
                "edgeplane_access_log_dropped",
                "access log lines dropped because the writer was behind",
                vec![(vec![], dropped.load(Relaxed))],
            );
        }
        Ok(())
    }

    /// Per-app request counters and latency, summed over workers.
    fn apps(&mut self, state: &AdminState) {
        let mut sum: BTreeMap<String, edgeplane_dataplane::router::AppCounters> = BTreeMap::new();
        for m in &state.metrics {
            for (app, c) in edgeplane_dataplane::lock(m).iter() {
                sum.entry(app.clone()).or_default().add(c);
            }
        }
        let app = |a: &String| vec![("app", a.clone())];
        self.counter(
            "edgeplane_app_requests",
            "requests routed to an app",
            sum.iter().map(|(a, c)| (app(a), c.requests)).collect(),
        );
        let mut responses = Vec::new();
        for (a, c) in &sum {
            for (class, n) in [
                ("2xx", c.responses_2xx),
                ("3xx", c.responses_3xx),
                ("4xx", c.responses_4xx),
                ("5xx", c.responses_5xx),
            ] {
                responses.push((vec![("app", a.clone()), ("class", class.to_owned())], n));
            }
        }
        self.counter(
            "edgeplane_app_responses",
            "responses per app and status class",
            responses,
        );
        self.counter(
            "edgeplane_app_traps",
            "requests whose guest trapped",
            sum.iter().map(|(a, c)| (app(a), c.traps)).collect(),
        );
        self.counter(
            "edgeplane_app_deadlines",
            "requests stopped at their CPU or wall deadline",
            sum.iter().map(|(a, c)| (app(a), c.deadlines)).collect(),
        );
        self.counter(
            "edgeplane_app_overloaded",
            "requests refused because the worker ran max_in_flight instances",
            sum.iter().map(|(a, c)| (app(a), c.overloaded)).collect(),
        );
        let mut handoffs = Vec::new();
        for (a, c) in &sum {
            for (outcome, n) in handoff_outcomes(c) {
                handoffs.push((vec![("app", a.clone()), ("outcome", outcome.to_owned())], n));
            }
        }
        self.counter(
            "edgeplane_app_handoffs",
            "handoffs per app and outcome",
            handoffs,
        );
        let mut latency = Vec::new();
        for (a, c) in &sum {
            for (target, h) in &c.latency {
                latency.push((
                    vec![("app", a.clone()), ("target", target.clone())],
                    h.clone(),
                ));
            }
        }
        self.families.push(Family {
            name: "edgeplane_request_duration_seconds",
            help: "time from a request's dispatch to its response head, per app and placement target",
            samples: Samples::Histogram(latency),
        });
    }

    fn cache_and_subrequests(&mut self, state: &AdminState) {
        let cache: Vec<_> = state.residency.iter().map(|r| r.snapshot()).collect();
        let worker = |w: usize| vec![("worker", w.to_string())];
        self.gauge(
            "edgeplane_code_cache_resident_apps",
            "apps whose compiled code a worker holds",
            cache
                .iter()
                .enumerate()
                .map(|(w, s)| (worker(w), s.apps.len() as f64))
                .collect(),
        );
        self.gauge(
            "edgeplane_code_cache_bytes",
            "compiled code a worker holds",
            cache
                .iter()
                .enumerate()
                .map(|(w, s)| (worker(w), s.bytes as f64))
                .collect(),
        );
        self.counter(
            "edgeplane_code_cache_evictions",
            "apps evicted from a worker's code cache",
            cache
                .iter()
                .enumerate()
                .map(|(w, s)| (worker(w), s.evicted))
                .collect(),
        );
        let obs: Vec<_> = state
            .observations
            .iter()
            .flat_map(|o| o.snapshot())
            .collect();
        let labels = |o: &edgeplane_dataplane::wasm::DestinationStats| {
            vec![
                ("app", o.app.clone()),
                ("destination", o.destination.clone()),
            ]
        };
        self.counter(
            "edgeplane_subrequests",
            "guests' subrequests per destination",
            obs.iter().map(|o| (labels(o), o.count)).collect(),
        );
        self.counter(
            "edgeplane_subrequest_failures",
            "guests' subrequests that failed",
            obs.iter().map(|o| (labels(o), o.failures)).collect(),
        );
        self.counter(
            "edgeplane_subrequest_denied",
            "guests' subrequests refused (destination not allowed)",
            obs.iter().map(|o| (labels(o), o.denied)).collect(),
        );
        self.gauge(
            "edgeplane_subrequest_latency_p50_seconds",
            "median exchange time of recent subrequests (what the placement engine reads)",
            obs.iter()
                .map(|o| (labels(o), o.p50_us as f64 / 1e6))
                .collect(),
        );
        self.gauge(
            "edgeplane_subrequest_latency_p99_seconds",
            "99th percentile exchange time of recent subrequests",
            obs.iter()
                .map(|o| (labels(o), o.p99_us as f64 / 1e6))
                .collect(),
        );
    }
}

fn handoff_outcomes(c: &edgeplane_dataplane::router::AppCounters) -> [(&'static str, u64); 8] {
    [
        ("sent", c.handed_off),
        ("failed", c.handoff_failures),
        ("received", c.handoffs_received),
        ("rejected", c.handoffs_rejected),
        ("holdout", c.holdouts),
        ("skipped", c.handoffs_skipped),
        ("region-saturated", c.region_saturated),
        ("region-cold", c.region_cold),
    ]
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        for f in &self.families {
            match &f.samples {
                Samples::Counter(rows) => {
                    let mut m =
                        encoder.encode_descriptor(f.name, f.help, None, MetricType::Counter)?;
                    for (labels, v) in rows {
                        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
                    }
                }
                Samples::Gauge(rows) => {
                    let mut m =
                        encoder.encode_descriptor(f.name, f.help, None, MetricType::Gauge)?;
                    for (labels, v) in rows {
                        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
                    }
                }
                Samples::Histogram(rows) => {
                    let mut m =
                        encoder.encode_descriptor(f.name, f.help, None, MetricType::Histogram)?;
                    for (labels, h) in rows {
                        m.encode_family(labels)?.encode_histogram::<NoLabelSet>(
                            h.sum_us as f64 / 1e6,
                            h.count(),
                            &h.buckets_seconds(),
                            None,
                        )?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `/metrics`' body: OpenMetrics text.
pub fn render(state: &AdminState) -> anyhow::Result<String> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot::gather(state)?));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .map_err(|_| anyhow::anyhow!("encoding the metrics"))?;
    Ok(out)
}

type CounterOf = fn(&WorkerCounters) -> &std::sync::atomic::AtomicU64;

/// Each worker's counters of rare events, one family each, labelled by worker.
const WORKER_COUNTERS: [(&str, &str, CounterOf); 9] = [
    (
        "edgeplane_worker_panics",
        "requests whose handling panicked (answered 500)",
        |c| &c.panics,
    ),
    (
        "edgeplane_worker_accept_errors",
        "accepts that failed for want of descriptors or memory (accepting paused)",
        |c| &c.accept_errors,
    ),
    (
        "edgeplane_worker_connections_refused",
        "connections closed at once at the worker's max_connections",
        |c| &c.connections_refused,
    ),
    (
        "edgeplane_worker_slow_readers",
        "connections closed after send_timeout without the client reading",
        |c| &c.slow_readers,
    ),
    (
        "edgeplane_worker_slow_heads",
        "requests answered 408: the head was not whole within header_timeout",
        |c| &c.slow_heads,
    ),
    (
        "edgeplane_worker_slow_bodies",
        "requests failed: the client sent none of the body its reader waited for within body_timeout",
        |c| &c.slow_bodies,
    ),
    (
        "edgeplane_instances_prepared",
        "fresh instances made ahead while the worker was idle",
        |c| &c.prepared.made,
    ),
    (
        "edgeplane_instances_prepared_used",
        "requests served by an instance made ahead",
        |c| &c.prepared.used,
    ),
    (
        "edgeplane_instances_prepared_missed",
        "fresh-instance requests that found none made ahead and instantiated on their path",
        |c| &c.prepared.missed,
    ),
];
