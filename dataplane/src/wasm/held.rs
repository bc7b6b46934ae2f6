//! The instances a worker holds while no request runs in them: warm ones parked for reuse,
//! ones prepared ahead (`prepared`), and finished fresh ones whose reset waits for the worker to
//! be idle. One cap counts them all, so that with the requests running the pool never runs out.

use std::rc::Rc;

use wasmtime::Store;
use wasmtime_wasi_http::p2::bindings::Proxy;

use super::{
    host::HostState,
    runtime::{App, AppRuntime, WarmInstance},
};
use crate::worker::WorkerCounters;

/// Finished fresh instances whose reset may wait for the worker to be idle. Few: under load
/// each one waiting holds a pool slot of its own, where dropping it at once lets the pool hand
/// the same, cache-warm slot to the next instance (fresh hello lost 4.5% per CPU-second with
/// every reset deferred).
const MAX_FINISHED: usize = 2;

impl AppRuntime {
    /// Keeps an instance that finished cleanly for the app's next request, while it has uses
    /// left and the worker's warm instances are under their cap (a trapped one never comes here:
    /// it may be broken).
    pub(super) fn park(&self, app: &Rc<App>, store: Store<HostState>, proxy: Proxy, served: u32) {
        if served < app.spec.limits.instance_reuse
            && !app.reuse_refused.get()
            && self.is_current(app)
            && self.hold()
        {
            app.warm.borrow_mut().push(WarmInstance {
                store,
                proxy,
                served,
            });
        } else if self.finished.borrow().len() < MAX_FINISHED && self.hold() {
            self.finished.borrow_mut().push(store);
        }
    }

    /// Counts one more idle instance held, if under the cap; at the cap a finished instance
    /// is reset now to make room (one waiting for reuse or a request matters more).
    pub(super) fn hold(&self) -> bool {
        if self.idle_held.get() >= self.max_in_flight && !self.reset_one_finished() {
            return false;
        }
        self.idle_held.set(self.idle_held.get() + 1);
        true
    }

    /// Counts one idle instance fewer (taken by a request, or dropped).
    pub(super) fn release_held(&self, n: u32) {
        self.idle_held.set(self.idle_held.get().saturating_sub(n));
    }

    /// Drops one finished instance, resetting its slot; whether there was one.
    pub(super) fn reset_one_finished(&self) -> bool {
        let Some(store) = self.finished.borrow_mut().pop() else {
            return false;
        };
        self.release_held(1);
        drop(store);
        true
    }

    /// Drops every finished instance, resetting their slots; whether there was any. Called
    /// while the worker is idle, so the resets are not on a request's path.
    pub(super) fn reset_finished(&self) -> bool {
        let finished = std::mem::take(&mut *self.finished.borrow_mut());
        self.release_held(finished.len() as u32);
        !finished.is_empty()
    }

    /// An instance for the next request: a warm one (reuse), the one prepared ahead, or a new
    /// store to instantiate in; with the requests the instance served before.
    pub(super) fn take_instance(&self, app: &App) -> (Store<HostState>, Option<Proxy>, u32) {
        if let Some(mut warm) = app.warm.borrow_mut().pop() {
            self.release_held(1);
            self.arm_cpu_deadline(&mut warm.store, app);
            return (warm.store, Some(warm.proxy), warm.served);
        }
        if app.fresh_instances() && self.prepare_limit > 0 {
            if let Some(mut ready) = app.prepared.borrow_mut().take() {
                self.release_held(1);
                WorkerCounters::bump(&self.prepared_counters.used);
                // Its budgets start now, not when it was made.
                self.arm_cpu_deadline(&mut ready.store, app);
                return (ready.store, Some(ready.proxy), 0);
            }
            WorkerCounters::bump(&self.prepared_counters.missed);
        }
        (self.new_store(app), None, 0)
    }

    /// Stops reusing `app`'s instances (this version's): one served a request, then returned
    /// from the next without answering it, as StarlingMonkey's fetch event does (its issue
    /// 247). Instances that cannot serve twice get fresh ones instead of failing every other
    /// request.
    pub(super) fn refuse_reuse(&self, app: &App) {
        if !app.reuse_refused.replace(true) {
            tracing::warn!(app = %app.spec.name, "a reused instance returned without answering; this version of the app gets fresh instances from now on");
            let parked = std::mem::take(&mut *app.warm.borrow_mut()).len() as u32;
            self.release_held(parked);
        }
    }
}
