//! Per-request cost of the wasm runtime with the hello component, on one worker's engine and
//! pool: store + instantiate alone (what fresh-instance mode adds to every request), and a whole
//! request through `AppRuntime::handle` with a fresh and with a reused instance.
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
    let mut group = c.benchmark_group("hello");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("store+instantiate", |b| {
        b.iter_custom(|iters| {
            timed(iters, &|| {
                let rt = rt.clone();
                Box::pin(async move { rt.instantiate("fresh").await.expect("instantiate") })
            })
        })
    });
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
}

criterion_group!(benches, bench);
criterion_main!(benches);
