//! The runtime's side of preparing ahead (`prepared` holds what it is and how the next app is
//! chosen): on an idle ring the worker resets finished instances or prepares one, and every tick
//! ages each app's heat.

use futures_util::FutureExt as _;

use super::{
    prepared::{AGE_TICKS, Candidate, PreparedInstance, next_to_prepare},
    runtime::AppRuntime,
};
use crate::worker::WorkerCounters;

impl AppRuntime {
    /// Resets the finished instances waiting for it (`reset_finished`), or else prepares one
    /// instance ahead if an app wants one; returns whether it did either, so that the worker
    /// looks at its ring again before doing more.
    pub fn prepare_ahead(&self) -> bool {
        if self.reset_finished() {
            return true;
        }
        let limit = self.prepare_limit;
        if limit == 0 || !self.any_app_wants_prepared() {
            return false;
        }
        let apps = self.apps_now();
        let candidates: Vec<Candidate<'_>> = apps
            .iter()
            .map(|app| Candidate {
                app: &app.spec.name,
                heat: app.heat.get(),
                ready: app.prepared.borrow().is_some(),
                fresh: app.fresh_instances(),
            })
            .collect();
        let Some(name) = next_to_prepare(&candidates, limit) else {
            return false;
        };
        let Some(app) = apps.iter().find(|a| a.spec.name == name) else {
            return false;
        };
        let Ok(pre) = self.pre(app) else {
            // Loading failed; the next request reports why.
            return false;
        };
        if !self.hold() {
            // The worker holds as many idle instances as it may.
            return false;
        }
        let mut store = self.new_store(app);
        // Instantiation calls no host function that waits, so it finishes in one poll; one that
        // does not is dropped (a request instantiates on its own path then).
        match pre.instantiate_async(&mut store).now_or_never() {
            Some(Ok(proxy)) => {
                *app.prepared.borrow_mut() = Some(PreparedInstance { store, proxy });
                WorkerCounters::bump(&self.prepared_counters.made);
                true
            }
            unfinished => {
                if let Some(Err(error)) = unfinished {
                    tracing::debug!(app = %name, error = %error, "preparing an instance failed");
                }
                self.release_held(1);
                false
            }
        }
    }

    /// Whether a hot fresh-instance app has no instance prepared (checked without allocating:
    /// an idle worker asks often).
    pub(super) fn any_app_wants_prepared(&self) -> bool {
        self.apps.borrow().values().any(|app| {
            app.fresh_instances() && app.heat.get() > 0 && app.prepared.borrow().is_none()
        })
    }

    /// Ages every app's heat (called every tick) and drops the prepared instances of apps that
    /// went cold, returning their pool slots.
    pub fn age_heat(&self) {
        let tick = self.heat_ticks.get().wrapping_add(1);
        self.heat_ticks.set(tick);
        if !tick.is_multiple_of(AGE_TICKS) {
            return;
        }
        for app in self.apps_now() {
            app.heat.cool();
            if app.heat.get() == 0 && app.prepared.borrow_mut().take().is_some() {
                self.release_held(1);
            }
        }
    }
}
