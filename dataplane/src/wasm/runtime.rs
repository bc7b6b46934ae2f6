//! One worker's app runtime: its Engine and pool, its code cache, and the request path from an
//! HTTP request to a fresh instance's `wasi:http/incoming-handler` and back.

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    panic::AssertUnwindSafe,
    path::Path,
    sync::Arc,
    task::Poll,
    time::{Duration, Instant},
};

use futures_util::FutureExt as _;
use tracing::debug;
use wasmtime::{
    Engine, Store, StoreLimitsBuilder, UpdateDeadline,
    component::{Linker, ResourceTable},
};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi_http::{
    WasiHttpCtx, WasiHttpView as _,
    p2::bindings::{Proxy, ProxyPre, http::types::Scheme},
};

use super::{
    AppSpec,
    cache::{CacheBudget, CodeCache},
    changes::AppChanges,
    error::HandleError,
    guest::{CpuDeadline, GuestBody, GuestRun, InstanceHome, WallDeadline},
    host::{CpuMeter, EdgeHooks, HostState},
    incoming::to_hyper,
    observe::Observations,
    prepared::{Heat, PreparedCounters, PreparedInstance},
};
use crate::{
    client::{ConnPool, PoolConfig},
    http::{Request, Response, request_body::RequestBody, stream::BodyStream},
};

pub(super) struct App {
    pub(super) spec: AppSpec,
    name: Arc<str>,
    allowed: Arc<[String]>,
    /// Idle instances kept for reuse when `limits.instance_reuse > 1`. A p2 instance serves one
    /// request at a time, so concurrent requests each take their own.
    pub(super) warm: RefCell<Vec<WarmInstance>>,
    /// Recent requests, which decides whether an instance is prepared ahead.
    pub(super) heat: Heat,
    /// The next fresh instance, made ahead while the worker was idle (`prepared`).
    pub(super) prepared: RefCell<Option<PreparedInstance>>,
    /// Its instances turned out unable to serve twice (`refuse_reuse`).
    pub(super) reuse_refused: Cell<bool>,
}

/// An instance that has served `served` requests and may serve more.
pub(super) struct WarmInstance {
    pub(super) store: Store<HostState>,
    pub(super) proxy: Proxy,
    pub(super) served: u32,
}

pub struct AppRuntime {
    engine: Engine,
    linker: Linker<HostState>,
    cache: RefCell<CodeCache<ProxyPre<HostState>>>,
    /// Replaced whole by `apply`; a request holds its app's `Rc` (its version) until it ends.
    pub(super) apps: RefCell<HashMap<String, Rc<App>>>,
    observations: Observations,
    epoch_tick: Duration,
    in_flight: Cell<u32>,
    pub(super) max_in_flight: u32,
    /// Instances held while no request runs in them, over all apps: warm ones parked for reuse,
    /// ones prepared ahead, and finished ones whose reset waits for the worker to be idle. Capped
    /// at `max_in_flight`: as many as can be busy at once, and with the busy ones no more than
    /// the pool holds (sized 2x `max_in_flight`).
    pub(super) idle_held: Cell<u32>,
    /// Finished fresh instances: dropping one resets its memory for the slot's next instance
    /// (`vendor/README.md`), which waits until the worker is idle (`reset_finished`).
    pub(super) finished: RefCell<Vec<Store<HostState>>>,
    /// Where split apps' function calls go: this datacenter's workers.
    functions_via: Cell<Option<std::net::SocketAddr>>,
    /// edged's admin endpoint: guests may not call it.
    admin: Cell<Option<std::net::SocketAddr>>,
    /// The worker's keep-alive connections, shared by its instances (and its handoffs).
    pool: Arc<ConnPool>,
    /// How many of the hottest fresh-instance apps get an instance prepared ahead (0: none).
    pub(super) prepare_limit: usize,
    pub(super) heat_ticks: Cell<u32>,
    pub(super) prepared_counters: Arc<PreparedCounters>,
}

use std::rc::Rc;

impl App {
    fn new(spec: AppSpec) -> Self {
        Self {
            name: spec.name.as_str().into(),
            allowed: spec.allowed_backends.clone().into(),
            warm: RefCell::new(Vec::new()),
            heat: Heat::default(),
            prepared: RefCell::new(None),
            reuse_refused: Cell::new(false),
            spec,
        }
    }

    /// Whether each request gets an instance of its own (none is kept for reuse).
    pub(super) fn fresh_instances(&self) -> bool {
        self.spec.limits.instance_reuse <= 1 || self.reuse_refused.get()
    }
}

impl AppRuntime {
    pub fn new(
        engine: Engine,
        cache_dir: &Path,
        budget: CacheBudget,
        apps: Vec<AppSpec>,
        observations: Observations,
        epoch_tick: Duration,
        max_in_flight: u32,
    ) -> anyhow::Result<Self> {
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        let cache = RefCell::new(CodeCache::new(engine.clone(), cache_dir, budget)?);
        let apps = RefCell::new(
            apps.into_iter()
                .map(|spec| (spec.name.clone(), Rc::new(App::new(spec))))
                .collect(),
        );
        Ok(Self {
            engine,
            linker,
            cache,
            apps,
            observations,
            epoch_tick,
            in_flight: Cell::new(0),
            max_in_flight,
            idle_held: Cell::new(0),
            finished: RefCell::new(Vec::new()),
            functions_via: Cell::new(None),
            admin: Cell::new(None),
            pool: Arc::new(ConnPool::new(PoolConfig::default())),
            prepare_limit: 0,
            heat_ticks: Cell::new(0),
            prepared_counters: Arc::default(),
        })
    }

    /// Keeps an instance prepared ahead for each of the `limit` hottest fresh-instance apps
    /// (`prepared`), counting into `counters`.
    pub fn with_prepare_ahead(mut self, limit: usize, counters: Arc<PreparedCounters>) -> Self {
        self.prepare_limit = limit;
        self.prepared_counters = counters;
        self
    }

    /// The apps served now (the versions a reload has not replaced).
    pub(super) fn apps_now(&self) -> Vec<Rc<App>> {
        self.apps.borrow().values().cloned().collect()
    }

    /// Sends guests' subrequests over `pool` (the worker's, which its handoffs share).
    pub fn with_pool(mut self, pool: Arc<ConnPool>) -> Self {
        self.pool = pool;
        self
    }

    pub fn pool(&self) -> &Arc<ConnPool> {
        &self.pool
    }

    /// Sends split apps' function calls to the workers listening at `addr` (see
    /// `crate::functions`).
    /// Refuses guests' subrequests to edged's admin endpoint at `addr`.
    pub fn protect_admin(&self, addr: std::net::SocketAddr) {
        self.admin.set(Some(addr));
    }

    pub fn route_functions_via(&self, addr: std::net::SocketAddr) {
        self.functions_via.set(Some(addr));
    }

    /// Requests running in instances on this worker now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.get()
    }

    pub fn max_in_flight(&self) -> u32 {
        self.max_in_flight
    }

    pub fn functions_via(&self) -> Option<std::net::SocketAddr> {
        self.functions_via.get()
    }

    pub fn has_app(&self, app: &str) -> bool {
        self.apps.borrow().contains_key(app)
    }

    /// Serves `specs` from now on. An app whose spec changed (its component's digest, env,
    /// limits, backends) becomes a new version: its compiled code and warm instances are
    /// dropped, and requests already running finish on the version they started with. Added
    /// and changed apps are loaded here (from the code cache on disk, where edged compiled them
    /// before publishing), so their first request does not pay for it.
    pub fn apply(&self, specs: Vec<AppSpec>) -> AppChanges {
        let old = std::mem::take(&mut *self.apps.borrow_mut());
        let changes = AppChanges::between(old.values().map(|a| &a.spec), &specs);
        let apps: HashMap<String, Rc<App>> = specs
            .into_iter()
            .map(|spec| {
                let kept = old.get(&spec.name).filter(|a| a.spec == spec).cloned();
                let app = kept.unwrap_or_else(|| Rc::new(App::new(spec)));
                (app.spec.name.clone(), app)
            })
            .collect();
        for (name, app) in &old {
            if !apps.get(name).is_some_and(|now| Rc::ptr_eq(now, app)) {
                self.retire(app);
            }
        }
        *self.apps.borrow_mut() = apps;
        for name in changes.added.iter().chain(&changes.changed) {
            if let Err(e) = self.preload(name) {
                tracing::warn!(app = %name, error = %e, "loading the new version failed; will retry on first request");
            }
        }
        changes
    }

    /// Drops an old version's compiled code, parked instances and prepared instance.
    fn retire(&self, app: &App) {
        self.cache.borrow_mut().evict(&app.spec.name);
        let prepared = u32::from(app.prepared.borrow_mut().take().is_some());
        let parked = std::mem::take(&mut *app.warm.borrow_mut()).len() as u32;
        self.release_held(parked + prepared);
    }

    /// Whether `app` is the version now served (not one a reload replaced).
    pub(super) fn is_current(&self, app: &Rc<App>) -> bool {
        self.apps
            .borrow()
            .get(&app.spec.name)
            .is_some_and(|current| Rc::ptr_eq(current, app))
    }

    pub fn is_resident(&self, app: &str) -> bool {
        self.cache.borrow().is_resident(app)
    }

    /// Residency as other threads can read it.
    pub fn residency(&self) -> super::Residency {
        self.cache.borrow().residency()
    }

    /// Publishes residency through a handle made before this runtime (by the daemon).
    pub fn publish_residency_to(&self, to: super::Residency) {
        self.cache.borrow_mut().publish_to(to);
    }

    pub fn resident_apps(&self) -> Vec<String> {
        self.cache.borrow().resident_apps()
    }

    /// (compiled, loaded from the disk cache, evicted) since start.
    pub fn cache_counters(&self) -> (u64, u64, u64) {
        let c = self.cache.borrow();
        (c.compiled, c.loaded_from_disk, c.evicted)
    }

    pub fn observations(&self) -> &Observations {
        &self.observations
    }

    /// Compiles (or loads from disk) and pre-instantiates an app now rather than on first use.
    pub fn preload(&self, app: &str) -> Result<(), HandleError> {
        let app = self
            .apps
            .borrow()
            .get(app)
            .cloned()
            .ok_or_else(|| HandleError::UnknownApp(app.to_owned()))?;
        self.pre(&app).map(|_| ())
    }

    /// Creates a store and instantiates `app` without serving a request: what every request in
    /// fresh-instance mode pays before the guest runs, and a check that the component links.
    pub async fn instantiate(&self, app: &str) -> Result<(), HandleError> {
        let app = self
            .apps
            .borrow()
            .get(app)
            .cloned()
            .ok_or_else(|| HandleError::UnknownApp(app.to_owned()))?;
        let pre = self.pre(&app)?;
        let mut store = self.new_store(&app);
        pre.instantiate_async(&mut store)
            .await
            .map_err(|error| HandleError::Load {
                app: app.spec.name.clone(),
                error: error.into(),
            })?;
        Ok(())
    }

    pub(super) fn pre(&self, app: &App) -> Result<ProxyPre<HostState>, HandleError> {
        self.cache
            .borrow_mut()
            .get_or_load(&app.spec.name, &app.spec.component, |component| {
                Ok(ProxyPre::new(self.linker.instantiate_pre(component)?)?)
            })
            .map_err(|error| HandleError::Load {
                app: app.spec.name.clone(),
                error,
            })
    }

    /// Runs one request through a fresh instance of `app` (or a warm one, with reuse on). The
    /// response comes once the guest has set it, with what its body holds by then; the rest of
    /// the body, if any, streams (`guest::GuestBody`).
    pub async fn handle(self: Rc<Self>, app: &str, req: Request) -> Result<Response, HandleError> {
        self.handle_streaming(app, req, None).await
    }

    /// As `handle`, for a request whose body streams in through `body` (its `req.body` is empty).
    pub async fn handle_streaming(
        self: Rc<Self>,
        app: &str,
        req: Request,
        body: Option<RequestBody>,
    ) -> Result<Response, HandleError> {
        let app = self
            .apps
            .borrow()
            .get(app)
            .cloned()
            .ok_or_else(|| HandleError::UnknownApp(app.to_owned()))?;
        if self.in_flight.get() >= self.max_in_flight {
            return Err(HandleError::Overloaded);
        }
        // Outside tokio's cooperative budget, as the worker polls its replies (`worker::wake`
        // says why): a spent budget would make the guest's channels look empty, cutting a whole
        // body into a stream.
        let result = tokio::task::unconstrained(self.run(app.clone(), req, body)).await;
        if let Err(e) = &result {
            // The router logs it with the request id the client is given.
            debug!(app = %app.spec.name, error = %e, "request failed in the app");
        }
        result
    }

    fn enter(&self) {
        self.in_flight.set(self.in_flight.get() + 1);
    }

    fn leave(&self) {
        self.in_flight.set(self.in_flight.get().saturating_sub(1));
    }

    /// Makes the store's deadline callback, which stays for every request the store serves.
    /// It runs only while wasm runs, so it also ends a guest that spins past its wall deadline
    /// without ever yielding (the wall-deadline timer can only fire when it yields).
    fn cpu_deadline_callback(
        &self,
        app: &App,
    ) -> impl FnMut(wasmtime::StoreContextMut<'_, HostState>) -> wasmtime::Result<UpdateDeadline>
    + Send
    + Sync
    + 'static {
        // Epochs count wall time; time spent blocked in host calls is not the guest's CPU, so
        // when the deadline fires, charge only the rest and extend while under budget.
        let (budget, wall) = (app.spec.limits.cpu_deadline, app.spec.limits.wall_deadline);
        let tick = self.epoch_tick;
        move |store| {
            let meter = &store.data().meter;
            if meter.elapsed() >= wall {
                return Err(WallDeadline.into());
            }
            let computing = meter.computing();
            if computing >= budget {
                return Err(CpuDeadline.into());
            }
            Ok(UpdateDeadline::Continue(epoch_ticks(
                (budget - computing).min(wall.saturating_sub(meter.elapsed())),
                tick,
            )))
        }
    }

    /// Starts the app's CPU budget for the request `store` is about to serve.
    pub(super) fn arm_cpu_deadline(&self, store: &mut Store<HostState>, app: &App) {
        store.data_mut().meter.restart();
        let limits = &app.spec.limits;
        store.set_epoch_deadline(epoch_ticks(
            limits.cpu_deadline.min(limits.wall_deadline),
            self.epoch_tick,
        ));
    }

    pub(super) fn new_store(&self, app: &App) -> Store<HostState> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.inherit_stderr();
        for (k, v) in &app.spec.env {
            wasi.env(k, v);
        }
        let state = HostState {
            meter: CpuMeter::default(),
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(app.spec.limits.max_memory_bytes)
                .build(),
            hooks: EdgeHooks {
                app: app.name.clone(),
                allowed_backends: app.allowed.clone(),
                observations: self.observations.clone(),
                split_app: app.spec.split_app.as_deref().map(Arc::from),
                functions_via: self.functions_via.get(),
                admin: self.admin.get(),
                call_depth: 0,
                pool: self.pool.clone(),
            },
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_callback(self.cpu_deadline_callback(app));
        store.call_hook(|mut store, hook| {
            store.data_mut().meter.on_call(hook);
            Ok(())
        });
        self.arm_cpu_deadline(&mut store, app);
        store
    }

    async fn run(
        self: Rc<Self>,
        app: Rc<App>,
        req: Request,
        body: Option<RequestBody>,
    ) -> Result<Response, HandleError> {
        let name = &app.spec.name;
        let deadline = Instant::now() + app.spec.limits.wall_deadline;
        let pre = self.pre(&app)?;
        app.heat.hit();
        let (mut store, ready_proxy, served) = self.take_instance(&app);

        store.data_mut().hooks.call_depth = crate::functions::call_depth(&req);
        let hyper_req = to_hyper(req, body).map_err(|e| HandleError::GuestError {
            app: name.clone(),
            detail: e.to_string(),
        })?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let setup = (|| {
            let incoming = store
                .data_mut()
                .http()
                .new_incoming_request(Scheme::Http, hyper_req)?;
            let out = store.data_mut().http().new_response_outparam(tx)?;
            wasmtime::Result::Ok((incoming, out))
        })();
        let (incoming, out) = setup.map_err(|error: wasmtime::Error| HandleError::Load {
            app: name.clone(),
            error: error.into(),
        })?;
        let call = async move {
            let proxy = match ready_proxy {
                Some(proxy) => proxy,
                None => pre.instantiate_async(&mut store).await?,
            };
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, incoming, out)
                .await?;
            Ok::<_, wasmtime::Error>((store, proxy))
        };
        // A panic in a host call must cost this request, not the worker polling it.
        let call = AssertUnwindSafe(call).catch_unwind().map(|r| {
            r.unwrap_or_else(|panic| {
                Err(wasmtime::Error::msg(format!(
                    "host call panicked: {}",
                    crate::panic_text(&*panic)
                )))
            })
        });
        let limit = app.spec.limits.max_response_bytes;
        self.enter();
        let home = Box::new(InstanceSlot {
            runtime: self.clone(),
            app: app.clone(),
            served,
        });
        let mut run = GuestRun::new(Box::pin(call), app.name.clone(), home, deadline);
        let head = match run.head(rx).await {
            Ok(head) => head,
            Err(e) => {
                if served > 0 && matches!(e, HandleError::NoResponse { .. }) {
                    self.refuse_reuse(&app);
                }
                return Err(e);
            }
        };
        response_of(head, run, limit).await
    }
}

/// The guest's response head, and the part of its body ready now, as the worker's response;
/// the rest of the body streams.
async fn response_of(
    head: http::Response<wasmtime_wasi_http::p2::body::HyperOutgoingBody>,
    run: GuestRun,
    limit: usize,
) -> Result<Response, HandleError> {
    let (parts, body) = head.into_parts();
    let length = GuestBody::declared_length(&parts.headers);
    let mut body = GuestBody::new(run, body, limit);
    let mut out = Response::new(parts.status.as_u16(), Vec::new());
    let whole = std::future::poll_fn(|cx| Poll::Ready(body.take_ready(&mut out.body, cx))).await?;
    if !whole {
        out.stream = Some(BodyStream::new(body).with_length(length));
    }
    // The worker frames the response itself.
    for (k, v) in parts.headers.iter() {
        if !matches!(
            k.as_str(),
            "content-length" | "connection" | "transfer-encoding" | "date"
        ) {
            out.headers.push((
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            ));
        }
    }
    Ok(out)
}

/// A request's hold on the runtime: an in-flight slot, taken when its guest starts, and the
/// instance's way back to the warm pool.
struct InstanceSlot {
    runtime: Rc<AppRuntime>,
    app: Rc<App>,
    /// Requests the instance served before this one.
    served: u32,
}

impl InstanceHome for InstanceSlot {
    fn keep(&self, store: Store<HostState>, proxy: Proxy) {
        self.runtime.park(&self.app, store, proxy, self.served + 1);
    }

    fn release(&self) {
        self.runtime.leave();
    }
}

/// `d` in epoch ticks of length `tick`, at least one.
fn epoch_ticks(d: Duration, tick: Duration) -> u64 {
    (d.as_nanos() / tick.as_nanos().max(1)).max(1) as u64
}
