//! Per-request cost of the wasm runtime with the hello component, on one worker's engine and
//! pool: store + instantiate alone (what fresh-instance mode adds to every request), and a whole
//! request through `AppRuntime::handle` with a fresh and with a reused instance. The baseline,
//! measured in the same run: store + instantiate of the same component on wasmtime's pooling
//! allocator with its default settings and a plain WASI + wasi:http store (what `wasmtime serve
//! -O pooling-allocator=y` does per request).
//!
//! Two builds of the same app: `hello` (no_std, imports only what a greeting uses: 7 core
//! instances) and `hello-wstd` (std + wstd's async runtime: 23 core instances, 59 imports), so the
//! runtime's share and the guest's share of the cost can be told apart.
//!
//! `cargo bench -p edgeplane-dataplane --bench instantiate`

mod support;

use std::{rc::Rc, time::Duration};

use criterion::{Criterion, criterion_group, criterion_main};
use edgeplane_dataplane::wasm::{
    AppLimits, AppRuntime, AppSpec, CacheBudget, EngineConfig, EpochTicker, Observations,
    build_engine,
};
use wasmtime::{Engine, Store, component::Component};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

// What edged runs with (userspace/src/bin/edged.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The two builds of hello measured here (apps/<name>).
const COMPONENTS: [&str; 2] = ["hello", "hello-wstd"];

/// Apps `<component>/fresh` and `<component>/reused` for each of COMPONENTS.
fn runtime() -> Rc<AppRuntime> {
    let cfg = EngineConfig::default();
    let engine = build_engine(&cfg).expect("engine");
    EpochTicker::start(cfg.epoch_tick).register(&engine);
    let app = |component: &str, mode: &str, instance_reuse: u32| AppSpec {
        name: format!("{component}/{mode}"),
        component: edgeplane_testkit::app(component),
        digest: String::new(),
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
            COMPONENTS
                .iter()
                .flat_map(|c| [app(c, "fresh", 1), app(c, "reused", u32::MAX)])
                .collect(),
            Observations::default(),
            cfg.epoch_tick,
            cfg.max_instances,
        )
        .expect("runtime"),
    )
}

/// The same component on wasmtime's pooling allocator, default settings.
fn wasmtime_defaults(component: &str) -> (Engine, ProxyPre<support::PlainState>) {
    let engine = support::pooling_defaults_engine();
    let component =
        Component::from_file(&engine, edgeplane_testkit::app(component)).expect("compiles");
    (engine.clone(), support::plain_pre(&engine, &component))
}

fn bench(c: &mut Criterion) {
    let exec = support::Executor::new();
    let rt = runtime();
    for component in COMPONENTS {
        rt.preload(&format!("{component}/fresh"))
            .expect("hello compiles");
    }
    let mut summary = Vec::new();
    for component in COMPONENTS {
        let (ours, baseline) = (support::Tally::default(), support::Tally::default());
        let mut group = c.benchmark_group(component);
        group.measurement_time(Duration::from_secs(5));
        let fresh = format!("{component}/fresh");
        group.bench_function("store+instantiate", |b| {
            b.iter_custom(|iters| {
                let took = exec.timed(iters, &|| {
                    let (rt, app) = (rt.clone(), fresh.clone());
                    Box::pin(async move { rt.instantiate(&app).await.expect("instantiate") })
                });
                ours.add(iters, took)
            })
        });
        let (plain_engine, plain_pre) = wasmtime_defaults(component);
        group.bench_function(
            "store+instantiate (baseline: wasmtime pooling defaults)",
            |b| {
                b.iter_custom(|iters| {
                    let took = exec.timed(iters, &|| {
                        let (engine, pre) = (plain_engine.clone(), plain_pre.clone());
                        Box::pin(async move {
                            let mut store = Store::new(&engine, support::PlainState::new());
                            pre.instantiate_async(&mut store)
                                .await
                                .expect("instantiate");
                        })
                    });
                    baseline.add(iters, took)
                })
            },
        );
        for mode in ["fresh", "reused"] {
            let app = format!("{component}/{mode}");
            group.bench_function(format!("request ({mode} instance)"), |b| {
                b.iter_custom(|iters| {
                    exec.timed(iters, &|| {
                        let (rt, app) = (rt.clone(), app.clone());
                        Box::pin(async move {
                            let r = rt
                                .handle(
                                    &app,
                                    edgeplane_testkit::request("GET / HTTP/1.1\r\nHost: h\r\n\r\n"),
                                )
                                .await
                                .expect("hello answers");
                            assert_eq!(r.status, 200);
                        })
                    })
                })
            });
        }
        group.finish();
        summary.push((component, ours.mean_us(), baseline.mean_us()));
    }
    for (component, ours, baseline) in summary {
        if ours > 0.0 && baseline > 0.0 {
            println!(
                "{component} store+instantiate: edgeplane {ours:.1} us, wasmtime pooling defaults {baseline:.1} us: {:.2}x the baseline's time",
                ours / baseline
            );
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
