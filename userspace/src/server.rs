//! Starts the workers: one per CPU, each with its SO_REUSEPORT listener registered in
//! WORKER_SOCKETS, `select_worker` attached to the group, and its own wasm runtime.

use std::{collections::HashMap, net::SocketAddr, os::fd::AsFd as _, rc::Rc, sync::Arc};

use anyhow::Context as _;
use edgeplane_abi::Placement;
use edgeplane_dataplane::{
    client::ConnPool,
    handoff::{Handoff, HandoffConfig, Peer, PeerHealth, ReplayGuard},
    router::{
        EdgeService, PlacementSource, Routes, StaticResponse, WorkerMetrics,
        region::{Popularity, RegionPolicy},
    },
    wasm::{AppRuntime, AppSpec, CodeCache, EpochTicker, Observations, Residency, build_engine},
    worker::{
        Service, ServiceFactory, WorkerCounters, WorkerOptions, WorkerStats,
        supervisor::{OptionsFactory, Register, Supervisor, SupervisorStats},
    },
};
use tracing::{info, warn};

use crate::{PinnedMaps, config::EdgedConfig, loader::Dataplane, maps::PlacementTable};

/// PLACEMENT as a worker reads it: app name -> id (fixed at start) -> the map's entry.
struct MapPlacement {
    ids: HashMap<String, u32>,
    reader: PlacementTable,
}

impl PlacementSource for MapPlacement {
    fn placement(&self, app: &str) -> Placement {
        self.ids
            .get(app)
            .map(|id| self.reader.get(*id))
            .unwrap_or_default()
    }
}

/// This datacenter's handoff settings from its topology: its peers are the datacenters it has a
/// link to, reached at their end of that link.
fn handoff_config(
    cfg: &EdgedConfig,
    listen: SocketAddr,
) -> anyhow::Result<Option<(HandoffConfig, Option<u32>)>> {
    let Some(dc) = &cfg.datacenter else {
        return Ok(None);
    };
    let topology = dc.load_topology()?;
    let me = topology
        .datacenter(&dc.name)
        .with_context(|| format!("datacenter {:?} is not in the topology", dc.name))?;
    let port = dc.peer_port.unwrap_or(listen.port());
    let peers: Vec<Peer> = topology
        .datacenters
        .iter()
        .filter(|p| p.name != me.name)
        .filter_map(|p| {
            let ip = topology.addr_of(&me.name, &p.name)?;
            Some(Peer {
                id: p.id,
                name: p.name.clone(),
                addr: SocketAddr::from((ip, port)),
            })
        })
        .collect();
    let region = topology.region().map(|r| r.id).filter(|id| *id != me.id);
    Ok(Some((
        HandoffConfig {
            self_id: me.id,
            key: topology.handoff_key_bytes()?,
            health: Arc::new(PeerHealth::new(peers.iter().map(|p| p.id))),
            replay: Arc::new(ReplayGuard::default()),
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
    supervisor: Option<Supervisor>,
}

impl Workers {
    /// Drains every worker (in-flight requests finish) and waits for them.
    pub fn stop(self) -> Vec<anyhow::Result<WorkerStats>> {
        self.supervisor.map(Supervisor::stop).unwrap_or_default()
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

fn app_specs(cfg: &EdgedConfig) -> Vec<AppSpec> {
    cfg.apps
        .iter()
        .filter_map(|a| {
            Some(AppSpec {
                name: a.name.clone(),
                component: a.component.clone()?,
                env: a.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                allowed_backends: a.allowed_backends.clone(),
                split_app: a.split_app.clone(),
                limits: a.limits,
            })
        })
        .collect()
}

fn routes(cfg: &EdgedConfig) -> Routes {
    let mut routes = Routes::default();
    for app in cfg.apps.iter() {
        if let Some(body) = &app.static_body {
            for h in &app.hosts {
                routes.statics.insert(
                    h.to_ascii_lowercase(),
                    StaticResponse {
                        app: app.name.clone(),
                        status: 200,
                        headers: vec![
                            ("content-type".into(), "text/plain; charset=utf-8".into()),
                            ("x-edge-placement".into(), "local".into()),
                        ],
                        body: body.clone().into_bytes(),
                    },
                );
            }
        }
    }
    let served: Vec<_> = cfg.apps.iter().filter(|a| a.component.is_some()).collect();
    for app in &served {
        for h in &app.hosts {
            routes
                .hosts
                .insert(h.to_ascii_lowercase(), app.name.clone());
        }
        if app.default {
            routes.default = Some(app.name.clone());
        }
    }
    // A lone app that names no hosts serves every host; one that names hosts serves only those.
    if routes.default.is_none() && served.len() == 1 && served[0].hosts.is_empty() {
        routes.default = Some(served[0].name.clone());
    }
    routes
}

/// Starts `count` workers on CPUs `0..count`; returns None when no app has a component.
pub fn start(
    cfg: &EdgedConfig,
    dp: &Dataplane,
    maps: &PinnedMaps,
    count: u32,
) -> anyhow::Result<Option<Workers>> {
    let Some(listen) = cfg.listen_addr()? else {
        return Ok(None);
    };
    let specs = app_specs(cfg);
    // Compile every component once, here, so the workers load artifacts from disk instead of
    // each compiling the same code at the same time.
    let engine = build_engine(&cfg.runtime.engine)?;
    let mut cache = CodeCache::<()>::new(engine, &cfg.runtime.cache_dir, cfg.runtime.cache)?;
    for spec in &specs {
        cache
            .get_or_load(&spec.name, &spec.component, |_| Ok(()))
            .with_context(|| format!("app {}", spec.name))?;
    }
    let ticker = EpochTicker::start(cfg.runtime.engine.epoch_tick);
    let routes = routes(cfg);
    let handoff = handoff_config(cfg, listen)?;
    if let Some((h, region)) = &handoff {
        info!(self_id = h.self_id, peers = ?h.peers.iter().map(|p| (&p.name, p.addr)).collect::<Vec<_>>(), ?region, "handoff enabled");
    }
    let app_ids: HashMap<String, u32> = maps
        .app_names()?
        .into_iter()
        .map(|(id, name)| (name, id))
        .collect();
    let mut workers = Workers {
        listen,
        metrics: vec![],
        observations: vec![],
        residency: vec![],
        handoff: handoff.as_ref().map(|(h, _)| h.clone()),
        counters: (0..count).map(|_| Arc::default()).collect(),
        supervisor: None,
    };
    let mut factories = HashMap::new();
    for cpu in 0..count {
        let metrics = WorkerMetrics::default();
        let observations = Observations::default();
        workers.metrics.push(metrics.clone());
        workers.observations.push(observations.clone());
        let residency = Residency::default();
        workers.residency.push(residency.clone());
        let pool_cfg = cfg.runtime.pool;
        let (engine_cfg, cache_dir, budget, max_in_flight) = (
            cfg.runtime.engine.clone(),
            cfg.runtime.cache_dir.clone(),
            cfg.runtime.cache,
            cfg.runtime.max_in_flight,
        );
        let (specs, routes, ticker) = (specs.clone(), routes.clone(), ticker.clone());
        let (handoff, app_ids, worker_maps) = (handoff.clone(), app_ids.clone(), maps.clone());
        let (debug_headers, admin_addr) = (cfg.server.debug_headers, cfg.server.admin);
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
        let factory: ServiceFactory = Arc::new(move |cpu| {
            let engine = build_engine(&engine_cfg)?;
            ticker.register(&engine);
            let runtime = Rc::new(
                AppRuntime::new(
                    engine,
                    &cache_dir,
                    budget,
                    specs.clone(),
                    observations.clone(),
                    engine_cfg.epoch_tick,
                    max_in_flight,
                )?
                .with_pool(Arc::new(ConnPool::new(pool_cfg))),
            );
            runtime.publish_residency_to(residency.clone());
            runtime.route_functions_via(functions_via);
            runtime.protect_admin(admin_addr);
            for spec in &specs {
                if let Err(e) = runtime.preload(&spec.name) {
                    warn!(worker = cpu, app = %spec.name, error = %e, "preload failed; will retry on first request");
                }
            }
            let (handoff, region, placement) = match &handoff {
                Some((h, region)) => (
                    Some(Rc::new(Handoff::new(h.clone(), runtime.pool().clone()))),
                    *region,
                    Some(Box::new(MapPlacement {
                        ids: app_ids.clone(),
                        reader: worker_maps.placement_reader()?,
                    }) as Box<dyn PlacementSource>),
                ),
                None => (None, None, None),
            };
            Ok(Rc::new(EdgeService {
                routes: routes.clone(),
                runtime,
                metrics: metrics.clone(),
                debug_headers,
                handoff,
                placement,
                region: region.map(|region| RegionPolicy {
                    region,
                    overflow_in_flight,
                    popular_rps,
                }),
                popularity: Popularity::new(std::time::Duration::from_secs(10)),
                holdout_every,
                holdout_seen: Default::default(),
            }) as Rc<dyn Service>)
        });
        factories.insert(cpu, factory);
    }
    let factories = Arc::new(factories);
    let factory: ServiceFactory = Arc::new(move |cpu| match factories.get(&cpu) {
        Some(f) => f(cpu),
        None => anyhow::bail!("no service for worker {cpu}"),
    });
    let (pin, limits, drain_timeout) =
        (cfg.workers.pin, cfg.http.clone(), cfg.server.drain_timeout);
    let (options_maps, counters) = (maps.clone(), workers.counters.clone());
    let options: OptionsFactory = Box::new(move |cpu, listener| {
        let mut opts = WorkerOptions::new(cpu, listener);
        if let Some(c) = counters.get(cpu as usize) {
            opts.counters = c.clone();
        }
        opts.pin = pin;
        opts.limits = limits.clone();
        opts.load_map = Some(options_maps.worker_load_fd()?);
        opts.drain_timeout = drain_timeout;
        Ok(opts)
    });
    // Every listener is put in its worker's slot and given the reuseport program before it
    // accepts: at start, and when a worker is restarted.
    let (register_maps, select_worker) = (maps.clone(), dp.select_worker_fd()?);
    let register: Register = Box::new(move |cpu, listener| {
        register_maps.set_worker_socket(cpu, listener)?;
        crate::loader::attach_reuseport_program(listener.as_fd(), select_worker.as_fd())
    });
    workers.supervisor = Some(Supervisor::start(
        listen,
        0..count,
        factory,
        options,
        register,
    )?);
    info!(%listen, workers = count, apps = specs.len(), "workers started");
    Ok(Some(workers))
}
