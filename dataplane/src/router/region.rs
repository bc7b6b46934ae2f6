//! When a datacenter sends an app's request on to the region (which holds every app) instead
//! of serving it itself: when it is saturated (its workers would refuse the request), and when
//! the app's code is not in its cache and the app is too rarely requested to be worth loading
//! (loading it would evict the code of apps that are requested).

use std::{
    cell::RefCell,
    collections::HashMap,
    time::{Duration, Instant},
};

#[derive(Clone, Debug)]
pub struct RegionPolicy {
    /// The region's datacenter id.
    pub region: u32,
    /// Forward when this worker already runs this many instances (0: never).
    pub overflow_in_flight: u32,
    /// Forward a request for an app whose code is not resident here when the app's request
    /// rate at this worker is below this, in requests per second (0: never).
    pub popular_rps: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionReason {
    Saturated,
    Cold,
}

impl RegionReason {
    /// As the `x-edge-placement-reason` header and the counters say it.
    pub fn as_str(self) -> &'static str {
        match self {
            RegionReason::Saturated => "saturated",
            RegionReason::Cold => "cold",
        }
    }
}

/// Per app request rates of one worker, over a sliding window.
pub struct Popularity {
    window: Duration,
    apps: RefCell<HashMap<String, Window>>,
}

struct Window {
    started: Instant,
    current: u64,
    previous: u64,
}

impl Popularity {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            apps: RefCell::default(),
        }
    }

    /// Counts a request of `app` now; returns the app's rate, this request included.
    pub fn record(&self, app: &str) -> f64 {
        self.record_at(app, Instant::now())
    }

    fn record_at(&self, app: &str, now: Instant) -> f64 {
        let mut apps = self.apps.borrow_mut();
        let w = match apps.get_mut(app) {
            Some(w) => w,
            None => apps.entry(app.to_owned()).or_insert(Window {
                started: now,
                current: 0,
                previous: 0,
            }),
        };
        let mut elapsed = now.saturating_duration_since(w.started);
        if elapsed >= self.window {
            let windows = elapsed.as_nanos() / self.window.as_nanos();
            w.previous = if windows == 1 { w.current } else { 0 };
            w.current = 0;
            w.started += self.window * windows as u32;
            elapsed = now.saturating_duration_since(w.started);
        }
        w.current += 1;
        // The previous window weighted by how much of it the sliding window still covers.
        let covered = 1.0 - elapsed.as_secs_f64() / self.window.as_secs_f64();
        (w.previous as f64 * covered + w.current as f64) / self.window.as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_over_a_sliding_window() {
        let p = Popularity::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(p.record_at("a", t0), 0.1);
        for i in 1..20 {
            p.record_at("a", t0 + Duration::from_millis(100 * i));
        }
        // 20 requests in the first window: 2 req/s.
        let r = p.record_at("a", t0 + Duration::from_millis(9_999));
        assert!((r - 2.1).abs() < 0.01, "{r}");
        // Half-way through the next window half of the previous one still counts.
        let r = p.record_at("a", t0 + Duration::from_secs(15));
        assert!((r - (21.0 * 0.5 + 1.0) / 10.0).abs() < 0.01, "{r}");
        // After two idle windows nothing is left.
        assert_eq!(p.record_at("a", t0 + Duration::from_secs(40)), 0.1);
        assert_eq!(p.record_at("b", t0), 0.1);
    }
}
