//! Wasm runtimes as a worker builds them, for the dataplane's tests and benches: each component
//! compiled once per test binary into a shared warm code cache.

use std::{path::PathBuf, rc::Rc, sync::OnceLock, time::Instant};

use edgeplane_dataplane::wasm::{
    AppLimits, AppRuntime, AppSpec, CacheBudget, EngineConfig, EpochTicker, Observations,
    PreparedCounters, build_engine,
};

use crate::tempdir;

pub fn ticker() -> &'static EpochTicker {
    static T: OnceLock<EpochTicker> = OnceLock::new();
    T.get_or_init(|| EpochTicker::start(EngineConfig::default().epoch_tick))
}

pub fn spec(name: &str, component: PathBuf) -> AppSpec {
    AppSpec {
        name: name.into(),
        component,
        digest: String::new(),
        env: vec![],
        allowed_backends: vec![],
        split_app: None,
        limits: AppLimits::default(),
    }
}

/// A runtime as a worker builds one (16 instances at most, 8 running at once: edged's config
/// keeps `max_in_flight` at most half the pool, whose other half holds idle instances). Its
/// code cache at `cache_dir` starts with the artifacts of this test binary's warm cache
/// (`warm_cache`): each component is compiled once per binary, not once per test.
pub fn runtime(apps: Vec<AppSpec>, cache_dir: &std::path::Path) -> Rc<AppRuntime> {
    runtime_preparing(apps, cache_dir, 0).0
}

/// `runtime`, keeping an instance prepared ahead for `prepare_ahead` hot apps, with its counters.
pub fn runtime_preparing(
    apps: Vec<AppSpec>,
    cache_dir: &std::path::Path,
    prepare_ahead: usize,
) -> (Rc<AppRuntime>, std::sync::Arc<PreparedCounters>) {
    let warm = warm_cache(&apps);
    if warm != cache_dir {
        std::fs::create_dir_all(cache_dir).unwrap();
        for entry in std::fs::read_dir(&warm).unwrap().flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().ends_with(".cwasm") {
                std::fs::copy(entry.path(), cache_dir.join(&name)).unwrap();
            }
        }
    }
    cold_runtime(apps, cache_dir, prepare_ahead)
}

/// A runtime whose code cache is `cache_dir` as it is: for the tests of the cache itself.
pub fn cold_runtime(
    apps: Vec<AppSpec>,
    cache_dir: &std::path::Path,
    prepare_ahead: usize,
) -> (Rc<AppRuntime>, std::sync::Arc<PreparedCounters>) {
    let cfg = EngineConfig {
        max_instances: 16,
        ..Default::default()
    };
    let engine = build_engine(&cfg).unwrap();
    ticker().register(&engine);
    let counters = std::sync::Arc::new(PreparedCounters::default());
    let runtime = AppRuntime::new(
        engine,
        cache_dir,
        CacheBudget::default(),
        apps,
        Observations::default(),
        cfg.epoch_tick,
        8,
    )
    .unwrap()
    .with_prepare_ahead(prepare_ahead, counters.clone());
    (Rc::new(runtime), counters)
}

/// This test binary's code cache, with every component of `apps` compiled into it once: made at
/// the binary's first use (never one left by an earlier run), and filled under a lock, so tests
/// that start together wait for one compile instead of each making its own.
pub fn warm_cache(apps: &[AppSpec]) -> PathBuf {
    use std::{collections::HashSet, sync::Mutex};
    static WARMED: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| tempdir("warm-cache")).clone();
    // A test that failed while holding the lock left the set as it was: still true.
    let mut warmed = WARMED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let warmed = warmed.get_or_insert_with(HashSet::new);
    let missing: Vec<AppSpec> = apps
        .iter()
        .filter(|a| !warmed.contains(&a.component))
        .cloned()
        .collect();
    if !missing.is_empty() {
        let started = Instant::now();
        let (rt, _) = cold_runtime(missing.clone(), &dir, 0);
        for app in &missing {
            rt.preload(&app.name)
                .unwrap_or_else(|e| panic!("compiling {}: {e}", app.component.display()));
            warmed.insert(app.component.clone());
        }
        eprintln!(
            "[test] compiled {} into this binary's code cache in {:?}",
            missing
                .iter()
                .map(|a| a.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            started.elapsed()
        );
    }
    dir
}

/// `raw` parsed as a whole request, as a worker hands one to the runtime.
pub fn request(raw: &str) -> edgeplane_dataplane::http::Request {
    use edgeplane_dataplane::http::{HttpLimits, ParseOutcome, parse_request};
    match parse_request(raw.as_bytes(), &HttpLimits::default()) {
        Ok(ParseOutcome::Complete(r, _)) => r,
        other => panic!("{raw:?} is not a whole request: {other:?}"),
    }
}

/// Runs async test code on a current-thread runtime inside a LocalSet, as a worker does.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    tokio::task::LocalSet::new().block_on(&rt, f)
}

/// `raw` (a whole request) handled by `app` on `rt`, as a worker hands one over.
pub async fn handle(
    rt: &Rc<AppRuntime>,
    app: &str,
    raw: &str,
) -> Result<edgeplane_dataplane::http::Response, edgeplane_dataplane::wasm::HandleError> {
    rt.clone().handle(app, request(raw)).await
}
