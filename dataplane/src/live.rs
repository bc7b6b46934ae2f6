//! Live reconfiguration between the daemon and its workers. The daemon publishes a
//! [`Generation`] (apps, routes, target ids) and each worker picks it up between requests, on its
//! own thread, and says which generation it serves (`LiveSubscriber::applied`). Requests already
//! running keep the app version they started with: they hold it (`Rc`) until they finish.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{router::routes::Routes, wasm::AppSpec};

/// Everything a worker serves that a reload may change.
#[derive(Clone, Debug, Default)]
pub struct Generation {
    /// 1 at start, one more per reload applied.
    pub number: u64,
    pub specs: Vec<AppSpec>,
    pub routes: Routes,
    /// App name -> its id (its PLACEMENT index).
    pub app_ids: HashMap<String, u32>,
    /// What new HTTPS connections get (None: plain HTTP only); connections open keep theirs.
    pub tls: Option<Arc<crate::tls::peer::WorkerTls>>,
}

/// The daemon's side: publishes generations and sees which each worker serves.
pub struct LivePublisher {
    tx: tokio::sync::watch::Sender<Arc<Generation>>,
    applied: Vec<Arc<AtomicU64>>,
}

/// A worker's side. `take_new` is a load of a version number when nothing changed.
pub struct LiveSubscriber {
    rx: tokio::sync::watch::Receiver<Arc<Generation>>,
    applied: Arc<AtomicU64>,
}

impl LivePublisher {
    pub fn new(first: Generation, workers: usize) -> Self {
        let (tx, _) = tokio::sync::watch::channel(Arc::new(first));
        Self {
            tx,
            applied: (0..workers).map(|_| Arc::default()).collect(),
        }
    }

    /// Worker `worker`'s subscription. Its current generation is the one to build from: a
    /// worker (re)started after a reload starts on the reloaded apps.
    pub fn subscribe(&self, worker: usize) -> LiveSubscriber {
        LiveSubscriber {
            rx: self.tx.subscribe(),
            applied: self.applied.get(worker).cloned().unwrap_or_default(),
        }
    }

    pub fn current(&self) -> Arc<Generation> {
        self.tx.borrow().clone()
    }

    pub fn publish(&self, generation: Generation) {
        self.tx.send_replace(Arc::new(generation));
    }

    /// The generation each worker serves (0: not started yet).
    pub fn applied(&self) -> Vec<u64> {
        self.applied
            .iter()
            .map(|a| a.load(Ordering::Acquire))
            .collect()
    }

    /// Waits until every worker serves generation `number` or later; returns the workers that
    /// did not within `timeout`.
    pub fn wait_applied(&self, number: u64, timeout: Duration) -> Vec<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let behind: Vec<usize> = self
                .applied()
                .iter()
                .enumerate()
                .filter(|(_, n)| **n < number)
                .map(|(i, _)| i)
                .collect();
            if behind.is_empty() || Instant::now() >= deadline {
                return behind;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl LiveSubscriber {
    /// The current generation, marking it seen (what a worker builds its service from).
    pub fn current(&mut self) -> Arc<Generation> {
        self.rx.borrow_and_update().clone()
    }

    /// A generation published since the last `current` / `take_new`, if any.
    pub fn take_new(&mut self) -> Option<Arc<Generation>> {
        match self.rx.has_changed() {
            Ok(true) => Some(self.current()),
            _ => None,
        }
    }

    /// Says this worker now serves generation `number`.
    pub fn applied(&self, number: u64) {
        self.applied.store(number, Ordering::Release);
    }
}
