//! Keep-alive connections a worker holds open to the destinations it sends requests to: guests'
//! backends per (app, destination), and peer datacenters for handoffs. Bounded per key and in
//! all, and in how long a connection may sit idle.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hyper::client::conn::http1::SendRequest;

use super::OutBody;

/// Whose connections these are and where they go: a guest's backend is pooled per app, so no
/// app ever sends on a connection another app opened.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub owner: Arc<str>,
    pub addr: SocketAddr,
}

impl PoolKey {
    pub fn new(owner: impl Into<Arc<str>>, addr: SocketAddr) -> Self {
        Self {
            owner: owner.into(),
            addr,
        }
    }
}

#[derive(Clone, Copy, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Idle connections kept per key.
    pub max_idle_per_key: usize,
    /// Idle connections kept over all keys (one worker's).
    pub max_idle: usize,
    /// An idle connection older than this is closed rather than used: servers close theirs
    /// after a while, and one closed under a request costs a failure or a retry.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_idle_per_key: 16,
            max_idle: 512,
            idle_timeout: Duration::from_secs(20),
        }
    }
}

struct Idle {
    sender: SendRequest<OutBody>,
    since: Instant,
}

#[derive(Default)]
struct Idles {
    by_key: HashMap<PoolKey, Vec<Idle>>,
    count: usize,
}

/// One worker's pool, shared by its instances and its handoffs. The lock is only ever taken by
/// that worker's thread (the type is Sync because wasi:http's hooks must be Send).
#[derive(Default)]
pub struct ConnPool {
    cfg: PoolConfig,
    idle: Mutex<Idles>,
}

impl ConnPool {
    pub fn new(cfg: PoolConfig) -> Self {
        Self {
            cfg,
            idle: Mutex::default(),
        }
    }

    /// The most recently used idle connection to `key` that is still open and young enough.
    pub(super) fn take(&self, key: &PoolKey) -> Option<SendRequest<OutBody>> {
        let mut idles = crate::lock(&self.idle);
        let Idles { by_key, count } = &mut *idles;
        let list = by_key.get_mut(key)?;
        let mut found = None;
        while let Some(idle) = list.pop() {
            *count -= 1;
            if !idle.sender.is_closed() && idle.since.elapsed() < self.cfg.idle_timeout {
                found = Some(idle.sender);
                break;
            }
        }
        if list.is_empty() {
            by_key.remove(key);
        }
        found
    }

    /// Keeps `sender` for the next request to `key`, if there is room.
    pub(super) fn put(&self, key: PoolKey, sender: SendRequest<OutBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idles = crate::lock(&self.idle);
        if idles.count >= self.cfg.max_idle {
            Self::evict_stale(&mut idles, self.cfg.idle_timeout);
            if idles.count >= self.cfg.max_idle {
                return;
            }
        }
        let list = idles.by_key.entry(key).or_default();
        if list.len() >= self.cfg.max_idle_per_key {
            return;
        }
        list.push(Idle {
            sender,
            since: Instant::now(),
        });
        idles.count += 1;
    }

    fn evict_stale(idles: &mut Idles, idle_timeout: Duration) {
        let Idles { by_key, count } = idles;
        by_key.retain(|_, list| {
            let before = list.len();
            list.retain(|i| !i.sender.is_closed() && i.since.elapsed() < idle_timeout);
            *count -= before - list.len();
            !list.is_empty()
        });
    }
}
