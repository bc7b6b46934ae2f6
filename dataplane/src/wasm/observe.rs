//! Per (app, destination) observations of outgoing subrequests: count, failures, latency
//! histogram. The placement engine reads them; the worker that owns them is the only writer.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use hdrhistogram::Histogram;

#[derive(Clone, Debug, serde::Serialize)]
pub struct DestinationStats {
    pub app: String,
    pub destination: String,
    pub count: u64,
    pub failures: u64,
    pub denied: u64,
    /// The exchange: request sent to response head, on whatever connection served it.
    pub p50_us: u64,
    pub p99_us: u64,
    pub mean_us: f64,
    /// Subrequests that needed a new connection, and the p50 of its connect.
    pub connects: u64,
    pub connect_p50_us: u64,
}

impl DestinationStats {
    /// What one subrequest costs here on average: its exchange, plus a connect for the share
    /// that opened a connection.
    pub fn per_request_us(&self) -> f64 {
        let connect_share = if self.count == 0 {
            0.0
        } else {
            self.connects as f64 / self.count as f64
        };
        self.p50_us as f64 + connect_share * self.connect_p50_us as f64
    }
}

struct Entry {
    latency_us: Histogram<u64>,
    connect_us: Histogram<u64>,
    failures: u64,
    denied: u64,
}

/// Destinations kept apart per app; past them, an app's further destinations share one entry
/// under `OTHER_DESTINATIONS`. A guest names its destinations (even ones it may not call), so
/// without a bound it could grow this table until the worker runs out of memory.
pub const MAX_DESTINATIONS_PER_APP: usize = 64;
pub const OTHER_DESTINATIONS: &str = "(other)";

/// Owned by one worker; the mutex is only ever contended by a reader taking a snapshot.
#[derive(Clone, Default)]
pub struct Observations {
    inner: Arc<Mutex<BTreeMap<(String, String), Entry>>>,
}

impl Observations {
    fn with_entry(&self, app: &str, dest: &str, f: impl FnOnce(&mut Entry)) {
        let mut map = crate::lock(&self.inner);
        let mut key = (app.to_owned(), dest.to_owned());
        if !map.contains_key(&key) {
            let known = map
                .range((app.to_owned(), String::new())..)
                .take_while(|((a, _), _)| a == app)
                .count();
            if known >= MAX_DESTINATIONS_PER_APP {
                key.1 = OTHER_DESTINATIONS.to_owned();
            }
        }
        let entry = map.entry(key).or_insert_with(|| Entry {
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 2).expect("valid bounds"),
            connect_us: Histogram::new_with_bounds(1, 60_000_000, 2).expect("valid bounds"),
            failures: 0,
            denied: 0,
        });
        f(entry);
    }

    /// A subrequest whose response headers came `exchange` after it was sent, on a connection
    /// that took `connect` to open (None: a pooled one).
    pub fn record(&self, app: &str, dest: &str, exchange: Duration, connect: Option<Duration>) {
        self.with_entry(app, dest, |e| {
            let _ = e.latency_us.record((exchange.as_micros() as u64).max(1));
            if let Some(connect) = connect {
                let _ = e.connect_us.record((connect.as_micros() as u64).max(1));
            }
        });
    }

    pub fn record_failure(&self, app: &str, dest: &str) {
        self.with_entry(app, dest, |e| e.failures += 1);
    }

    pub fn record_denied(&self, app: &str, dest: &str) {
        self.with_entry(app, dest, |e| e.denied += 1);
    }

    pub fn snapshot(&self) -> Vec<DestinationStats> {
        let map = crate::lock(&self.inner);
        map.iter()
            .map(|((app, dest), e)| DestinationStats {
                app: app.clone(),
                destination: dest.clone(),
                count: e.latency_us.len(),
                failures: e.failures,
                denied: e.denied,
                p50_us: e.latency_us.value_at_quantile(0.5),
                p99_us: e.latency_us.value_at_quantile(0.99),
                mean_us: e.latency_us.mean(),
                connects: e.connect_us.len(),
                connect_p50_us: e.connect_us.value_at_quantile(0.5),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_a_guest_names_past_the_bound_share_one_entry() {
        let obs = Observations::default();
        for i in 0..200 {
            obs.record_denied("app", &format!("host-{i}.example:80"));
        }
        obs.record("other-app", "db:5432", Duration::from_millis(3), None);
        let snap = obs.snapshot();
        let of_app: Vec<_> = snap.iter().filter(|s| s.app == "app").collect();
        assert_eq!(of_app.len(), MAX_DESTINATIONS_PER_APP + 1);
        let other = of_app
            .iter()
            .find(|s| s.destination == OTHER_DESTINATIONS)
            .expect("an entry for the rest");
        assert_eq!(other.denied, 200 - MAX_DESTINATIONS_PER_APP as u64);
        // Another app's table is its own.
        assert!(snap.iter().any(|s| s.app == "other-app" && s.count == 1));
    }

    #[test]
    fn a_subrequest_costs_its_exchange_plus_its_share_of_connects() {
        let obs = Observations::default();
        obs.record(
            "a",
            "b:80",
            Duration::from_millis(10),
            Some(Duration::from_millis(10)),
        );
        for _ in 0..3 {
            obs.record("a", "b:80", Duration::from_millis(10), None);
        }
        let s = &obs.snapshot()[0];
        assert_eq!((s.count, s.connects), (4, 1));
        let us = s.per_request_us();
        assert!((12_000.0..13_000.0).contains(&us), "{us}");
    }
}
