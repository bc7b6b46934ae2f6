//! Per-request cost of the wasm runtime with the hello component, on one worker's engine and
//! pool: store + instantiate alone (what fresh-instance mode adds to every request), and a whole
//! request through `AppRuntime::handle` with a fresh and with a reused instance. The baseline,
//! measured in the same run: store + instantiate of the same component on wasmtime's pooling
//! allocator with its default settings and a plain WASI + wasi:http store (what `wasmtime serve
//! -O pooling-allocator=y` does per request).
//!
//! `cargo bench -p edgeplane-dataplane --bench instantiate`

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    rc::Rc,
    time::{Duration, Instant},
};

use criterion::{Criterion, criterion_group, criterion_main};
use edgeplane_dataplane::{
    http::{HttpLimits, ParseOutcome, Request, parse_request},
    wasm::{
        AppLimits, AppRuntime, AppSpec, CacheBudget, EngineConfig, EpochTicker, Observations,
        build_engine,
    },
};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store,
    component::{Component, Linker, ResourceTable},
};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{
    WasiHttpCtx, WasiHttpCtxView, WasiHttpView, default_hooks, p2::bindings::ProxyPre,
};

fn request() -> Request {
    match parse_request(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", &HttpLimits::default()) {
        Ok(ParseOutcome::Complete(r, _)) => r,
        other => panic!("{other:?}"),
    }
}

fn runtime() -> Rc<AppRuntime> {
    let cfg = EngineConfig::default();
    let engine = build_engine(&cfg).expect("engine");
    EpochTicker::start(cfg.epoch_tick).register(&engine);
    let hello = common::app("hello");
    let app = |name: &str, instance_reuse: u32| AppSpec {
        name: name.into(),
        component: hello.clone(),
        env: vec![],
        allowed_backends: vec![],
        split_app: None,
        limits: AppLimits {
            instance_reuse,
            ..Default::default()
        },
    };
    let cache = std::env::temp_dir().join(format!("edgeplane-bench-cache-{}", std::process::id()));
    Rc::new(
        AppRuntime::new(
            engine,
            &cache,
            CacheBudget::default(),
            vec![app("fresh", 1), app("reused", u32::MAX)],
            Observations::default(),
            cfg.epoch_tick,
            cfg.max_instances,
        )
        .expect("runtime"),
    )
}

/// A store as plain as `wasmtime serve`'s: WASI, wasi:http, the resource table.
struct PlainState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
}

impl WasiView for PlainState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for PlainState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: default_hooks(),
        }
    }
}

/// The same component on wasmtime's pooling allocator, default settings.
fn wasmtime_defaults() -> (Engine, ProxyPre<PlainState>) {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(
            PoolingAllocationConfig::default(),
        ));
    let engine = Engine::new(&config).expect("engine");
    let component = Component::from_file(&engine, common::app("hello")).expect("hello compiles");
    let mut linker = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).expect("wasi");
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).expect("wasi:http");
    let pre = linker.instantiate_pre(&component).expect("hello links");
    (engine, ProxyPre::new(pre).expect("hello is a proxy"))
}

fn bench(c: &mut Criterion) {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let local = tokio::task::LocalSet::new();
    let rt = runtime();
    rt.preload("fresh").expect("hello compiles");

    // Each sample runs its iterations inside one block_on so the executor's entry cost stays out.
    let timed = |iters: u64, one: &dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = ()>>>| {
        local.block_on(&tokio, async {
            let start = Instant::now();
            for _ in 0..iters {
                one().await;
            }
            start.elapsed()
        })
    };
    // Mean time per iteration over every sample of a function, for the ratio printed at the end.
    let ours = std::cell::Cell::new((Duration::ZERO, 0u64));
    let baseline = std::cell::Cell::new((Duration::ZERO, 0u64));
    let tally = |into: &std::cell::Cell<(Duration, u64)>, iters: u64, took: Duration| {
        let (sum, n) = into.get();
        into.set((sum + took, n + iters));
        took
    };
    let mean_us = |of: &std::cell::Cell<(Duration, u64)>| {
        let (sum, n) = of.get();
        sum.as_secs_f64() * 1e6 / n.max(1) as f64
    };
    let mut group = c.benchmark_group("hello");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("store+instantiate", |b| {
        b.iter_custom(|iters| {
            let took = timed(iters, &|| {
                let rt = rt.clone();
                Box::pin(async move { rt.instantiate("fresh").await.expect("instantiate") })
            });
            tally(&ours, iters, took)
        })
    });
    let (plain_engine, plain_pre) = wasmtime_defaults();
    group.bench_function(
        "store+instantiate (baseline: wasmtime pooling defaults)",
        |b| {
            b.iter_custom(|iters| {
                let took = timed(iters, &|| {
                    let (engine, pre) = (plain_engine.clone(), plain_pre.clone());
                    Box::pin(async move {
                        let state = PlainState {
                            wasi: WasiCtxBuilder::new().inherit_stderr().build(),
                            http: WasiHttpCtx::new(),
                            table: ResourceTable::new(),
                        };
                        let mut store = Store::new(&engine, state);
                        pre.instantiate_async(&mut store)
                            .await
                            .expect("instantiate");
                    })
                });
                tally(&baseline, iters, took)
            })
        },
    );
    for app in ["fresh", "reused"] {
        group.bench_function(format!("request ({app} instance)"), |b| {
            b.iter_custom(|iters| {
                timed(iters, &|| {
                    let rt = rt.clone();
                    Box::pin(async move {
                        let r = rt.handle(app, request()).await.expect("hello answers");
                        assert_eq!(r.status, 200);
                    })
                })
            })
        });
    }
    group.finish();
    if ours.get().1 > 0 && baseline.get().1 > 0 {
        println!(
            "store+instantiate: edgeplane {:.1} us, wasmtime pooling defaults {:.1} us: {:.2}x the baseline's time",
            mean_us(&ours),
            mean_us(&baseline),
            mean_us(&ours) / mean_us(&baseline)
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
