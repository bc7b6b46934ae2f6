//! What the benchmarks' baselines run components in: a store as `wasmtime serve` makes one.
#![allow(dead_code)]

/// A store as plain as `wasmtime serve`'s: WASI, wasi:http, the resource table. The baselines
/// of the benchmarks run components in it.
pub struct PlainState {
    pub wasi: wasmtime_wasi::WasiCtx,
    pub http: wasmtime_wasi_http::WasiHttpCtx,
    pub table: wasmtime::component::ResourceTable,
}

impl PlainState {
    pub fn new() -> Self {
        Self {
            wasi: wasmtime_wasi::WasiCtxBuilder::new()
                .inherit_stderr()
                .build(),
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            table: wasmtime::component::ResourceTable::new(),
        }
    }
}

impl wasmtime_wasi::WasiView for PlainState {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        wasmtime_wasi::WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wasmtime_wasi_http::WasiHttpView for PlainState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: wasmtime_wasi_http::default_hooks(),
        }
    }
}

/// `component` linked for `PlainState` stores on `engine`, as `wasmtime serve` links it.
pub fn plain_pre(
    engine: &wasmtime::Engine,
    component: &wasmtime::component::Component,
) -> wasmtime_wasi_http::p2::bindings::ProxyPre<PlainState> {
    let mut linker = wasmtime::component::Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).expect("wasi");
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).expect("wasi:http");
    let pre = linker.instantiate_pre(component).expect("links");
    wasmtime_wasi_http::p2::bindings::ProxyPre::new(pre).expect("is a proxy")
}

/// A new `PlainState` store on `engine` and `pre` instantiated in it. Its epoch deadline is far
/// off, for engines that interrupt by epoch (edgeplane's).
pub async fn plain_instance(
    engine: &wasmtime::Engine,
    pre: &wasmtime_wasi_http::p2::bindings::ProxyPre<PlainState>,
) -> (
    wasmtime::Store<PlainState>,
    wasmtime_wasi_http::p2::bindings::Proxy,
) {
    let mut store = wasmtime::Store::new(engine, PlainState::new());
    store.set_epoch_deadline(1 << 40);
    let proxy = pre
        .instantiate_async(&mut store)
        .await
        .expect("instantiates");
    (store, proxy)
}

/// GET / through `proxy`'s handler, as `wasmtime serve` calls it: the status, the response's
/// headers and its whole body.
pub async fn plain_get(
    store: &mut wasmtime::Store<PlainState>,
    proxy: &wasmtime_wasi_http::p2::bindings::Proxy,
) -> (u16, http::HeaderMap, bytes::Bytes) {
    use http_body_util::BodyExt as _;
    use wasmtime_wasi_http::WasiHttpView as _;
    let body = http_body_util::Empty::<bytes::Bytes>::new()
        .map_err(|never: std::convert::Infallible| -> wasmtime_wasi_http::Error { match never {} })
        .boxed_unsync();
    let request = http::Request::builder()
        .uri("http://localhost/")
        .body(body)
        .expect("a request");
    let incoming = store
        .data_mut()
        .http()
        .new_incoming_request(
            wasmtime_wasi_http::p2::bindings::http::types::Scheme::Http,
            request,
        )
        .expect("incoming request");
    let (tx, rx) = tokio::sync::oneshot::channel();
    let out = store
        .data_mut()
        .http()
        .new_response_outparam(tx)
        .expect("outparam");
    // The guest's writes wait for the body to be read: both run at once, as under `wasmtime serve`.
    let call = async {
        proxy
            .wasi_http_incoming_handler()
            .call_handle(&mut *store, incoming, out)
            .await
            .expect("the handler returns")
    };
    let read = async {
        let response = rx.await.expect("a response").expect("not an error");
        let (parts, body) = response.into_parts();
        (parts, body.collect().await.expect("the body").to_bytes())
    };
    let ((), (parts, body)) = tokio::join!(call, read);
    (parts.status.as_u16(), parts.headers, body)
}

/// wasmtime's pooling allocator with its default settings (and the component model): the
/// baseline engine.
pub fn pooling_defaults_engine() -> wasmtime::Engine {
    let mut config = wasmtime::Config::new();
    config.wasm_component_model(true).allocation_strategy(
        wasmtime::InstanceAllocationStrategy::Pooling(wasmtime::PoolingAllocationConfig::default()),
    );
    wasmtime::Engine::new(&config).expect("engine")
}

/// A future criterion times, made afresh for each iteration.
pub type Iteration<'a> = &'a dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = ()>>>;

/// Where the samples run: a current-thread runtime and a LocalSet, as on a worker.
pub struct Executor {
    tokio: tokio::runtime::Runtime,
    local: tokio::task::LocalSet,
}

impl Executor {
    pub fn new() -> Self {
        Self {
            tokio: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio"),
            local: tokio::task::LocalSet::new(),
        }
    }

    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.local.block_on(&self.tokio, f)
    }

    /// `iters` runs of `one` inside one block_on, so the executor's entry cost stays out.
    pub fn timed(&self, iters: u64, one: Iteration<'_>) -> std::time::Duration {
        self.block_on(async {
            let start = std::time::Instant::now();
            for _ in 0..iters {
                one().await;
            }
            start.elapsed()
        })
    }
}

/// The mean time per iteration over every sample of a function, for the ratios printed at
/// the end.
#[derive(Default)]
pub struct Tally(std::cell::Cell<(std::time::Duration, u64)>);

impl Tally {
    /// Adds a sample of `iters` iterations that `took`; returns `took` (for criterion).
    pub fn add(&self, iters: u64, took: std::time::Duration) -> std::time::Duration {
        let (sum, n) = self.0.get();
        self.0.set((sum + took, n + iters));
        took
    }

    pub fn mean_us(&self) -> f64 {
        let (sum, n) = self.0.get();
        sum.as_secs_f64() * 1e6 / n.max(1) as f64
    }
}
