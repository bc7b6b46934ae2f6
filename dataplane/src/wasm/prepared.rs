//! Instances prepared ahead: while its ring is idle, a worker instantiates the next fresh
//! instance of each of its hottest fresh-instance apps, so a request finds one ready and the
//! set-up (store, instantiation, mapping the memory image) leaves its latency. The CPU is spent
//! all the same, on an idle worker; under load a worker is idle only between batches, prepares
//! there, and the next request uses what it prepared, so nothing is prepared in vain either.
//!
//! A prepared instance has served no request: it is as fresh as one made on the request's path.
//! It is dropped with its app's version (a reload) and when its app goes cold.

use std::{cell::Cell, sync::atomic::AtomicU64};

use wasmtime::Store;
use wasmtime_wasi_http::p2::bindings::Proxy;

use super::host::HostState;

/// An instantiated app waiting for its first request.
pub(super) struct PreparedInstance {
    pub store: Store<HostState>,
    pub proxy: Proxy,
}

/// How much preparing ahead did, over the worker's life (summed into /metrics).
#[derive(Debug, Default)]
pub struct PreparedCounters {
    /// Instances made ahead.
    pub made: AtomicU64,
    /// Of those, taken by a request.
    pub used: AtomicU64,
    /// Requests in fresh-instance mode that found none ready and instantiated on their path.
    pub missed: AtomicU64,
}

/// An app's recent demand: requests since the last halving, halved every `AGE_TICKS` ticks.
#[derive(Debug, Default)]
pub(super) struct Heat(Cell<u32>);

impl Heat {
    pub fn hit(&self) {
        self.0.set(self.0.get().saturating_add(1));
    }

    pub fn cool(&self) {
        self.0.set(self.0.get() / 2);
    }

    pub fn get(&self) -> u32 {
        self.0.get()
    }
}

/// What the choice of the next app to prepare looks at, per app.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate<'a> {
    pub app: &'a str,
    pub heat: u32,
    /// Has an instance ready now.
    pub ready: bool,
    /// Serves each request with a fresh instance (apps that reuse keep warm instances instead).
    pub fresh: bool,
}

/// The app whose next instance to prepare: among the `limit` hottest fresh-instance apps with
/// any recent request, the hottest without one ready (ties: by name, so the choice is stable).
pub fn next_to_prepare<'a>(candidates: &[Candidate<'a>], limit: usize) -> Option<&'a str> {
    let mut hot: Vec<&Candidate<'a>> = candidates
        .iter()
        .filter(|c| c.fresh && c.heat > 0)
        .collect();
    hot.sort_by(|a, b| b.heat.cmp(&a.heat).then(a.app.cmp(b.app)));
    hot.into_iter()
        .take(limit)
        .find(|c| !c.ready)
        .map(|c| c.app)
}

/// Ticks (of `EdgeService::maintain`, 100 ms) between halvings of an app's heat: an app with no
/// request for about 1-2 s loses its prepared instance.
pub(super) const AGE_TICKS: u32 = 10;

#[cfg(test)]
mod tests {
    use super::*;

    fn c(app: &str, heat: u32, ready: bool, fresh: bool) -> Candidate<'_> {
        Candidate {
            app,
            heat,
            ready,
            fresh,
        }
    }

    #[test]
    fn the_hottest_fresh_apps_without_an_instance_ready_are_prepared_for() {
        let cases: Vec<(Vec<Candidate>, usize, Option<&str>)> = vec![
            (vec![], 4, None),
            // No recent request: nothing to prepare for.
            (vec![c("a", 0, false, true)], 4, None),
            (vec![c("a", 3, false, true)], 4, Some("a")),
            // Turned off.
            (vec![c("a", 3, false, true)], 0, None),
            // Apps that reuse their instances keep warm ones instead.
            (
                vec![c("reused", 9, false, false), c("a", 1, false, true)],
                4,
                Some("a"),
            ),
            // The hottest first; one already ready is skipped.
            (
                vec![c("cool", 1, false, true), c("hot", 8, false, true)],
                4,
                Some("hot"),
            ),
            (
                vec![c("cool", 1, false, true), c("hot", 8, true, true)],
                4,
                Some("cool"),
            ),
            // Only the `limit` hottest hold one: the third hottest waits.
            (
                vec![
                    c("a", 9, true, true),
                    c("b", 5, true, true),
                    c("c", 2, false, true),
                ],
                2,
                None,
            ),
            // Equal heat: by name.
            (
                vec![c("b", 2, false, true), c("a", 2, false, true)],
                4,
                Some("a"),
            ),
        ];
        for (candidates, limit, want) in cases {
            assert_eq!(
                next_to_prepare(&candidates, limit),
                want,
                "{candidates:?}, limit {limit}"
            );
        }
    }

    #[test]
    fn heat_halves_and_saturates() {
        let heat = Heat::default();
        for _ in 0..5 {
            heat.hit();
        }
        heat.cool();
        assert_eq!(heat.get(), 2);
        heat.cool();
        heat.cool();
        assert_eq!(heat.get(), 0);
        let full = Heat(Cell::new(u32::MAX));
        full.hit();
        assert_eq!(full.get(), u32::MAX);
    }
}
