//! Fresh instances of large components: where the time goes, and how it scales with the size of
//! the memory image.
//!
//! 1. A breakdown, printed first: for apps/js-hello (componentize-js) and apps/ballast (a Rust
//!    component with a 16 MiB data segment), each phase of a fresh instance's life on several
//!    engines: loading the compiled artifact (a code-cache hit), linking, store + instantiate,
//!    the first request, dropping the store (the pooling allocator resets the slot's memory),
//!    and a request on a reused instance for comparison; with the minor page faults of each.
//! 2. The scaling curve (criterion): store + instantiate + first request + drop vs the image's
//!    size (ballast of 1, 8, 32, 64 MiB), on edgeplane's request path and on wasmtime's pooling
//!    allocator with its default settings (what `wasmtime serve -O pooling-allocator=y` does).
//!    With `EDGEPLANE_CURVE_JSON=<file>` the means are written there (`./x bench instantiate`
//!    plots them into bench/large-instances.svg).
//!
//! `cargo bench -p edgeplane-dataplane --bench large_instances`

mod support;

use std::{
    path::{Path, PathBuf},
    rc::Rc,
    time::{Duration, Instant},
};

use criterion::{Criterion, criterion_group, criterion_main};
use edgeplane_dataplane::wasm::{
    AppLimits, AppRuntime, AppSpec, CacheBudget, EngineConfig, EpochTicker, Observations,
    build_engine, wasmtime_config,
};
use wasmtime::{Engine, Store, component::Component};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SIZES_MIB: [u32; 4] = [1, 8, 32, 64];
/// Room for the 64 MiB image, its stack and its heap.
const MAX_MEMORY: usize = 128 << 20;

fn edgeplane_config() -> EngineConfig {
    EngineConfig {
        max_memory_bytes: MAX_MEMORY,
        ..Default::default()
    }
}

/// edgeplane's engine with `keep_resident` bytes kept per slot, and copy-on-write images on or
/// off.
fn edgeplane_engine(keep_resident: usize, cow: bool) -> Engine {
    let cfg = EngineConfig {
        keep_resident_bytes: keep_resident,
        ..edgeplane_config()
    };
    let mut config = wasmtime_config(&cfg);
    config.memory_init_cow(cow);
    Engine::new(&config).expect("engine")
}

/// Minor page faults of this thread so far.
fn minor_faults() -> u64 {
    // SAFETY: getrusage writes the struct it is given.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut usage);
        usage.ru_minflt as u64
    }
}

/// Time and minor faults summed over the iterations of one phase.
#[derive(Default, Clone, Copy)]
struct Phase {
    took: Duration,
    faults: u64,
}

impl Phase {
    fn add(&mut self, start: (Instant, u64)) {
        self.took += start.0.elapsed();
        self.faults += minor_faults() - start.1;
    }

    fn show(&self, iters: u32) -> String {
        format!(
            "{:>8.1} us {:>6}",
            self.took.as_secs_f64() * 1e6 / f64::from(iters),
            self.faults / u64::from(iters)
        )
    }
}

fn mark() -> (Instant, u64) {
    (Instant::now(), minor_faults())
}

/// One engine's phases for one component.
async fn phases(engine: &Engine, path: &Path, reusable: bool, iters: u32) -> String {
    let compiled = engine
        .precompile_component(&std::fs::read(path).expect("component"))
        .expect("compiles");
    let start = Instant::now();
    // SAFETY: compiled just above by this engine.
    let component = unsafe { Component::deserialize(engine, &compiled) }.expect("loads");
    let load = start.elapsed();
    let start = Instant::now();
    let pre = support::plain_pre(engine, &component);
    let link = start.elapsed();

    let (mut instantiate, mut first, mut drop_store, mut reused) = Default::default();
    for _ in 0..iters {
        let at = mark();
        let (mut store, proxy) = support::plain_instance(engine, &pre).await;
        Phase::add(&mut instantiate, at);
        let at = mark();
        let (status, ..) = support::plain_get(&mut store, &proxy).await;
        assert_eq!(status, 200);
        Phase::add(&mut first, at);
        let at = mark();
        drop(store);
        Phase::add(&mut drop_store, at);
    }
    if reusable {
        let (mut store, proxy) = support::plain_instance(engine, &pre).await;
        support::plain_get(&mut store, &proxy).await;
        for _ in 0..iters {
            let at = mark();
            let (status, ..) = support::plain_get(&mut store, &proxy).await;
            assert_eq!(status, 200);
            Phase::add(&mut reused, at);
        }
    }
    format!(
        "{:>7.2} ms {:>7.2} ms {} {} {} {}",
        load.as_secs_f64() * 1e3,
        link.as_secs_f64() * 1e3,
        instantiate.show(iters),
        first.show(iters),
        drop_store.show(iters),
        reused.show(iters),
    )
}

fn breakdown(exec: &support::Executor) {
    // (name, component, whether its instances serve twice). js-hello's do not: StarlingMonkey's
    // fetch event answers once per instance (StarlingMonkey issue 247).
    let components: Vec<(&str, PathBuf, bool)> = vec![
        ("js-hello", edgeplane_testkit::js_component(), false),
        ("ballast 16 MiB", edgeplane_testkit::ballast(16), true),
    ];
    let engines: Vec<(&str, Engine)> = vec![
        (
            "wasmtime pooling defaults",
            support::pooling_defaults_engine(),
        ),
        ("edgeplane, keep 2 MiB", edgeplane_engine(2 << 20, true)),
        (
            "edgeplane, keep 2 MiB, no CoW",
            edgeplane_engine(2 << 20, false),
        ),
        (
            "edgeplane, keep 128 MiB",
            edgeplane_engine(MAX_MEMORY, true),
        ),
        (
            "edgeplane (defaults)",
            build_engine(&edgeplane_config()).expect("engine"),
        ),
    ];
    let iters = 200;
    println!(
        "\nA fresh instance's phases, mean per instance over {iters} (time, minor page faults)"
    );
    println!(
        "{:<16} {:<30} {:>10} {:>10} {:>18} {:>18} {:>18} {:>18}",
        "component",
        "engine",
        "load",
        "link",
        "store+instantiate",
        "first request",
        "drop (reset)",
        "reused request"
    );
    for (name, path, reusable) in &components {
        for (label, engine) in &engines {
            let row = exec.block_on(phases(engine, path, *reusable, iters));
            println!("{name:<16} {label:<30} {row}");
        }
    }
}

/// edgeplane's runtime serving each size of ballast as app `<mib>` with fresh instances.
fn runtime() -> Rc<AppRuntime> {
    let cfg = edgeplane_config();
    let engine = build_engine(&cfg).expect("engine");
    EpochTicker::start(cfg.epoch_tick).register(&engine);
    let apps = SIZES_MIB
        .iter()
        .map(|mib| AppSpec {
            name: mib.to_string(),
            component: edgeplane_testkit::ballast(*mib),
            digest: String::new(),
            env: vec![],
            allowed_backends: vec![],
            split_app: None,
            limits: AppLimits {
                max_memory_bytes: MAX_MEMORY,
                ..Default::default()
            },
        })
        .collect();
    let cache = std::env::temp_dir().join(format!("edgeplane-bench-large-{}", std::process::id()));
    Rc::new(
        AppRuntime::new(
            engine,
            &cache,
            CacheBudget::default(),
            apps,
            Observations::default(),
            cfg.epoch_tick,
            cfg.max_instances,
        )
        .expect("runtime"),
    )
}

#[derive(serde::Serialize)]
struct CurvePoint {
    image_mib: u32,
    edgeplane_us: f64,
    wasmtime_pooling_defaults_us: f64,
}

fn bench(c: &mut Criterion) {
    let exec = support::Executor::new();
    breakdown(&exec);
    let rt = runtime();
    let baseline = support::pooling_defaults_engine();
    let mut curve = Vec::new();
    for mib in SIZES_MIB {
        let app = mib.to_string();
        rt.preload(&app).expect("ballast compiles");
        let component = Component::from_file(&baseline, edgeplane_testkit::ballast(mib))
            .expect("ballast compiles");
        let pre = support::plain_pre(&baseline, &component);
        let (ours, theirs) = (support::Tally::default(), support::Tally::default());
        let mut group = c.benchmark_group(format!("fresh instance, {mib} MiB image"));
        group.measurement_time(Duration::from_secs(5));
        group.bench_function("edgeplane: store+instantiate+request", |b| {
            b.iter_custom(|iters| {
                let took = exec.timed(iters, &|| {
                    let (rt, app) = (rt.clone(), app.clone());
                    Box::pin(async move {
                        let r = rt
                            .handle(
                                &app,
                                edgeplane_testkit::request("GET / HTTP/1.1\r\nHost: h\r\n\r\n"),
                            )
                            .await
                            .expect("ballast answers");
                        assert_eq!(r.status, 200);
                    })
                });
                ours.add(iters, took)
            })
        });
        group.bench_function(
            "wasmtime pooling defaults: store+instantiate+request",
            |b| {
                b.iter_custom(|iters| {
                    let took = exec.timed(iters, &|| {
                        let (engine, pre) = (baseline.clone(), pre.clone());
                        Box::pin(async move {
                            let mut store = Store::new(&engine, support::PlainState::new());
                            let proxy = pre.instantiate_async(&mut store).await.expect("instance");
                            let (status, ..) = support::plain_get(&mut store, &proxy).await;
                            assert_eq!(status, 200);
                        })
                    });
                    theirs.add(iters, took)
                })
            },
        );
        group.finish();
        curve.push(CurvePoint {
            image_mib: mib,
            edgeplane_us: ours.mean_us(),
            wasmtime_pooling_defaults_us: theirs.mean_us(),
        });
    }
    println!("\nstore + instantiate + first request, mean over criterion's samples");
    println!(
        "{:>10} {:>14} {:>22} {:>8}",
        "image", "edgeplane", "wasmtime pooling dflt", "ratio"
    );
    for p in &curve {
        println!(
            "{:>6} MiB {:>11.1} us {:>19.1} us {:>7.2}x",
            p.image_mib,
            p.edgeplane_us,
            p.wasmtime_pooling_defaults_us,
            p.wasmtime_pooling_defaults_us / p.edgeplane_us
        );
    }
    if let Some(out) = std::env::var_os("EDGEPLANE_CURVE_JSON") {
        std::fs::write(&out, serde_json::to_vec_pretty(&curve).expect("json")).expect("curve");
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
