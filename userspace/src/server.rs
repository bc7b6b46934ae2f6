//! Starts the workers: one per CPU, each with its SO_REUSEPORT listener registered in
//! WORKER_SOCKETS, `select_worker` attached to the group, and its own wasm runtime.

use std::{
    cell::RefCell, collections::HashMap, net::SocketAddr, os::fd::AsFd as _, rc::Rc, sync::Arc,
};

use anyhow::Context as _;
use edgeplane_abi::Placement;
use edgeplane_dataplane::{
    client::ConnPool,
    handoff::{Handoff, HandoffConfig, HealthPolicy, LiveKeys, PeerHealth, ReplayGuard},
    live::{Generation, LivePublisher},
    router::{
        EdgeService, PlacementSource, WorkerMetrics,
        access_log::AccessLog,
        region::{Popularity, RegionPolicy},
    },
    tls::peer::{LivePeerTls, PeerTls},
    wasm::{AppRuntime, AppSpec, EpochTicker, Observations, Residency, build_engine},
    worker::{
        Service, ServiceFactory, WorkerCounters, WorkerOptions, WorkerStats,
        supervisor::{OptionsFactory, Register, Supervisor, SupervisorStats},
    },
};
use tracing::{info, warn};

use crate::{PinnedMaps, config::EdgedConfig, loader::Dataplane, maps::PlacementTable};

/// PLACEMENT as a worker reads it: app name -> id (replaced by a reload) -> the map's entry.
struct MapPlacement {
    ids: RefCell<HashMap<String, u32>>,
    reader: PlacementTable,
}

impl PlacementSource for MapPlacement {
    fn placement(&self, app: &str) -> Placement {
        self.ids
            .borrow()
            .get(app)
            .map(|id| self.reader.get(*id))
            .unwrap_or_default()
    }

    fn set_ids(&self, ids: &HashMap<String, u32>) {
        self.ids.borrow_mut().clone_from(ids);
    }
}

/// This datacenter's handoff settings from its topology and keys: every other datacenter is a
/// peer, reached at the addresses the topology names.
fn handoff_config(
    cfg: &EdgedConfig,
    tls: Option<PeerTls>,
) -> anyhow::Result<Option<(HandoffConfig, Option<u32>)>> {
    let Some(dc) = &cfg.datacenter else {
        return Ok(None);
    };
    let topology = dc.load_topology()?;
    let me = topology
        .datacenter(&dc.name)
        .with_context(|| format!("datacenter {:?} is not in the topology", dc.name))?;
    let peers = topology.peers_of(&me.name);
    let keys = dc.load_keys(&topology)?;
    for peer in peers.iter().filter(|p| keys.signing(p.id).is_none()) {
        warn!(peer = %peer.name, "no handoff key shared with this peer: nothing is handed to it");
    }
    let region = topology.region().map(|r| r.id).filter(|id| *id != me.id);
    let policy = HealthPolicy {
        down_after: dc.peer_down_after,
        up_after: dc.peer_up_after,
    };
    Ok(Some((
        HandoffConfig {
            self_id: me.id,
            keys: Arc::new(LiveKeys::new(keys)),
            health: Arc::new(PeerHealth::with_policy(peers.iter().map(|p| p.id), policy)),
            replay: Arc::new(ReplayGuard::default()),
            tls: tls.map(|t| Arc::new(LivePeerTls::new(t))),
            peers,
            connect_timeout: dc.connect_timeout,
            request_timeout: dc.request_timeout,
            max_response_bytes: 64 << 20,
        },
        region,
    )))
}

pub struct Workers {
    pub listen: SocketAddr,
    pub metrics: Vec<WorkerMetrics>,
    pub observations: Vec<Observations>,
    /// Each worker's code-cache residency.
    pub residency: Vec<Residency>,
    /// This datacenter's handoff settings, when it is part of a topology.
    pub handoff: Option<HandoffConfig>,
    /// Each worker's counters of rare events (panics, accept errors, refusals).
    pub counters: Vec<Arc<WorkerCounters>>,
    /// What the workers serve, and where a reload publishes the next.
    pub live: Arc<LivePublisher>,
    /// Access log lines dropped because the writer was behind (None: no access log).
    pub access_log_dropped: Option<Arc<std::sync::atomic::AtomicU64>>,
    supervisor: Option<Supervisor>,
}

/// The apps as the workers serve them: generation `number` of `cfg`.
pub fn generation(
    number: u64,
    cfg: &EdgedConfig,
    specs: Vec<AppSpec>,
    maps: &PinnedMaps,
    peer_tls: Option<&PeerTls>,
) -> anyhow::Result<Generation> {
    let tls = crate::config::tls::worker_tls(cfg, peer_tls)?;
    Ok(Generation {
        number,
        specs,
        tls,
        routes: crate::reload::routes(cfg),
        app_ids: maps
            .app_names()?
            .into_iter()
            .map(|(id, name)| (name, id))
            .collect(),
    })
}

impl Workers {
    /// Drains every worker (in-flight requests finish) and waits for them.
    pub fn stop(self) -> Vec<anyhow::Result<WorkerStats>> {
        self.supervisor.map(Supervisor::stop).unwrap_or_default()
    }

    /// Hands the listeners to another process: workers stop accepting, drain, and stop.
    pub fn hand_over(self) -> Vec<anyhow::Result<WorkerStats>> {
        self.supervisor
            .map(Supervisor::hand_over)
            .unwrap_or_default()
    }

    /// Each worker's CPU and a duplicate of its listener, for the next process.
    pub fn listeners(&self) -> anyhow::Result<Vec<(u32, std::os::fd::OwnedFd)>> {
        let Some(s) = &self.supervisor else {
            return Ok(vec![]);
        };
        s.listeners()
            .into_iter()
            .map(|(cpu, fd)| Ok((cpu, crate::upgrade::dup(fd)?)))
            .collect()
    }

    /// Restarts workers that stopped; returns how many are still down.
    pub fn supervise(&mut self) -> usize {
        self.supervisor.as_mut().map_or(0, Supervisor::check)
    }

    /// Worker restarts and how many are down, for the admin endpoint.
    pub fn supervisor_stats(&self) -> Arc<SupervisorStats> {
        self.supervisor
            .as_ref()
            .map(|s| s.stats.clone())
            .unwrap_or_default()
    }
}

/// Starts `count` workers on CPUs `0..count`; returns None when no app has a component.
/// In order: what every worker shares (the epoch ticker, the access log, the generation the
/// workers serve, the handoff settings), each worker's service factory, then the supervisor,
/// which starts the workers on fresh listeners or on those `inherited` from an upgrade.
pub fn start(
    cfg: &EdgedConfig,
    dp: &Dataplane,
    maps: &PinnedMaps,
    count: u32,
    specs: Vec<AppSpec>,
    inherited: Option<Vec<(u32, std::net::TcpListener)>>,
) -> anyhow::Result<Option<Workers>> {
    let Some(listen) = cfg.listen_addr()? else {
        return Ok(None);
    };
    let app_count = specs.len();
    let access_log = AccessLog::start(&cfg.access_log).context("opening the access log")?;
    let peer_tls = crate::config::tls::peer_tls(cfg)?;
    let live = Arc::new(LivePublisher::new(
        generation(1, cfg, specs, maps, peer_tls.as_ref())?,
        count as usize,
    ));
    let handoff = handoff_config(cfg, peer_tls)?;
    if let Some((h, region)) = &handoff {
        info!(self_id = h.self_id, peers = ?h.peers.iter().map(|p| (&p.name, &p.handoff)).collect::<Vec<_>>(), ?region, "handoff enabled");
    }
    let mut workers = Workers {
        listen,
        metrics: vec![],
        observations: vec![],
        residency: vec![],
        handoff: handoff.as_ref().map(|(h, _)| h.clone()),
        counters: (0..count).map(|_| Arc::default()).collect(),
        access_log_dropped: access_log.as_ref().map(|l| l.dropped.clone()),
        live: live.clone(),
        supervisor: None,
    };
    let shared = Shared {
        settings: WorkerSettings::of(cfg, listen),
        ticker: EpochTicker::start(cfg.runtime.engine.epoch_tick),
        live,
        access_log,
        handoff,
        maps: maps.clone(),
    };
    let mut factories = HashMap::new();
    for cpu in 0..count {
        let own = OwnHandles::default();
        workers.metrics.push(own.metrics.clone());
        workers.observations.push(own.observations.clone());
        workers.residency.push(own.residency.clone());
        let prepared = workers.counters[cpu as usize].prepared.clone();
        factories.insert(cpu, service_factory(shared.clone(), own, prepared));
    }
    let factories = Arc::new(factories);
    let factory: ServiceFactory = Arc::new(move |cpu| match factories.get(&cpu) {
        Some(f) => f(cpu),
        None => anyhow::bail!("no service for worker {cpu}"),
    });
    let options = options_factory(cfg, maps, workers.counters.clone());
    let register = register_listener(maps, dp)?;
    workers.supervisor = Some(match inherited {
        Some(listeners) => {
            check_inherited(&listeners, listen, count)?;
            Supervisor::adopt(listen, listeners, factory, options, register)?
        }
        None => Supervisor::start(listen, 0..count, factory, options, register)?,
    });
    info!(%listen, workers = count, apps = app_count, "workers started");
    Ok(Some(workers))
}

/// What a worker's service is built with, read from the configuration once.
#[derive(Clone)]
struct WorkerSettings {
    pool: edgeplane_dataplane::client::PoolConfig,
    prepare_ahead: usize,
    engine: edgeplane_dataplane::wasm::EngineConfig,
    cache_dir: std::path::PathBuf,
    cache_budget: edgeplane_dataplane::wasm::CacheBudget,
    max_in_flight: u32,
    debug_headers: bool,
    admin: SocketAddr,
    /// Where a guest's call to a sibling function goes: the workers' own listener.
    functions_via: SocketAddr,
    overflow_in_flight: u32,
    popular_rps: f64,
    /// One request in this many is held out here to measure a placement against (0: none).
    holdout_every: u64,
}

impl WorkerSettings {
    fn of(cfg: &EdgedConfig, listen: SocketAddr) -> Self {
        let functions_via = if listen.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], listen.port()))
        } else {
            listen
        };
        let (overflow_in_flight, popular_rps) = match &cfg.datacenter {
            Some(dc) => (
                dc.overflow_in_flight.unwrap_or(cfg.runtime.max_in_flight),
                dc.popular_rps,
            ),
            None => (0, 0.0),
        };
        let holdout_every = match &cfg.datacenter {
            Some(dc) if dc.holdout > 0.0 => (1.0 / dc.holdout).round().max(1.0) as u64,
            _ => 0,
        };
        Self {
            pool: cfg.runtime.pool,
            prepare_ahead: cfg.runtime.prepare_ahead as usize,
            engine: cfg.runtime.engine.clone(),
            cache_dir: cfg.runtime.cache_dir.clone(),
            cache_budget: cfg.runtime.cache,
            max_in_flight: cfg.runtime.max_in_flight,
            debug_headers: cfg.server.debug_headers,
            admin: cfg.server.admin,
            functions_via,
            overflow_in_flight,
            popular_rps,
            holdout_every,
        }
    }
}

/// What every worker's service shares.
#[derive(Clone)]
struct Shared {
    settings: WorkerSettings,
    ticker: EpochTicker,
    live: Arc<LivePublisher>,
    access_log: Option<AccessLog>,
    handoff: Option<(HandoffConfig, Option<u32>)>,
    maps: PinnedMaps,
}

/// What one worker publishes for the admin endpoint and the placement engine.
#[derive(Default)]
struct OwnHandles {
    metrics: WorkerMetrics,
    observations: Observations,
    residency: Residency,
}

/// Builds worker `cpu`'s service from the generation in effect, so a worker restarted after a
/// reload serves it.
fn service_factory(
    shared: Shared,
    own: OwnHandles,
    prepared: Arc<edgeplane_dataplane::wasm::PreparedCounters>,
) -> ServiceFactory {
    Arc::new(move |cpu| {
        let s = &shared.settings;
        let mut subscriber = shared.live.subscribe(cpu as usize);
        let current = subscriber.current();
        let engine = build_engine(&s.engine)?;
        shared.ticker.register(&engine);
        let runtime = Rc::new(
            AppRuntime::new(
                engine,
                &s.cache_dir,
                s.cache_budget,
                current.specs.clone(),
                own.observations.clone(),
                s.engine.epoch_tick,
                s.max_in_flight,
            )?
            .with_pool(Arc::new(ConnPool::new(s.pool)))
            .with_prepare_ahead(s.prepare_ahead, prepared.clone()),
        );
        runtime.publish_residency_to(own.residency.clone());
        runtime.route_functions_via(s.functions_via);
        runtime.protect_admin(s.admin);
        for spec in &current.specs {
            if let Err(e) = runtime.preload(&spec.name) {
                warn!(worker = cpu, app = %spec.name, error = %e, "preload failed; will retry on first request");
            }
        }
        let (handoff, region, placement) = match &shared.handoff {
            Some((h, region)) => (
                Some(Rc::new(Handoff::new(h.clone(), runtime.pool().clone()))),
                *region,
                Some(Box::new(MapPlacement {
                    ids: RefCell::new(current.app_ids.clone()),
                    reader: shared.maps.placement_reader()?,
                }) as Box<dyn PlacementSource>),
            ),
            None => (None, None, None),
        };
        subscriber.applied(current.number);
        Ok(Rc::new(EdgeService {
            routes: RefCell::new(Rc::new(current.routes.clone())),
            runtime,
            metrics: own.metrics.clone(),
            debug_headers: s.debug_headers,
            handoff,
            placement,
            region: region.map(|region| RegionPolicy {
                region,
                overflow_in_flight: s.overflow_in_flight,
                popular_rps: s.popular_rps,
            }),
            popularity: Popularity::new(std::time::Duration::from_secs(10)),
            holdout_every: s.holdout_every,
            holdout_seen: Default::default(),
            live: Some(RefCell::new(subscriber)),
            access_log: shared.access_log.clone(),
            tls: RefCell::new(current.tls.clone()),
        }) as Rc<dyn Service>)
    })
}

/// Each worker's options: its counters, pinning, HTTP limits, load map and drain timeout.
fn options_factory(
    cfg: &EdgedConfig,
    maps: &PinnedMaps,
    counters: Vec<Arc<WorkerCounters>>,
) -> OptionsFactory {
    let (pin, limits, drain_timeout) =
        (cfg.workers.pin, cfg.http.clone(), cfg.server.drain_timeout);
    let maps = maps.clone();
    Box::new(move |cpu, listener| {
        let mut opts = WorkerOptions::new(cpu, listener);
        if let Some(c) = counters.get(cpu as usize) {
            opts.counters = c.clone();
        }
        opts.pin = pin;
        opts.limits = limits.clone();
        opts.load_map = Some(maps.worker_load_fd()?);
        opts.drain_timeout = drain_timeout;
        Ok(opts)
    })
}

/// Every listener is put in its worker's slot and given the reuseport program before it
/// accepts: at start, and when a worker is restarted.
fn register_listener(maps: &PinnedMaps, dp: &Dataplane) -> anyhow::Result<Register> {
    let (maps, select_worker) = (maps.clone(), dp.select_worker_fd()?);
    Ok(Box::new(move |cpu, listener| {
        maps.set_worker_socket(cpu, listener)?;
        crate::loader::attach_reuseport_program(listener.as_fd(), select_worker.as_fd())
    }))
}

/// An upgrade keeps the worker count and the address: a change of either needs a restart.
fn check_inherited(
    listeners: &[(u32, std::net::TcpListener)],
    listen: SocketAddr,
    count: u32,
) -> anyhow::Result<()> {
    let cpus: Vec<u32> = listeners.iter().map(|(cpu, _)| *cpu).collect();
    anyhow::ensure!(
        cpus == (0..count).collect::<Vec<_>>(),
        "the running edged has workers on CPUs {cpus:?}; this configuration wants {count}: change the worker count with a restart, not an upgrade"
    );
    for (_, l) in listeners {
        let at = l.local_addr()?;
        anyhow::ensure!(
            at == listen,
            "the running edged listens on {at}; this configuration on {listen}"
        );
    }
    Ok(())
}
