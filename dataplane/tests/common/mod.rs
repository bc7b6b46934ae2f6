//! Builds the guest apps for tests (a no-op when they are up to date).
//! Included by several test crates; each uses only some of it.
#![allow(dead_code)]

use std::{
    io::Read as _,
    net::TcpStream,
    path::{Path, PathBuf},
    process::Command,
    rc::Rc,
    sync::OnceLock,
    time::Instant,
};

use edgeplane_dataplane::wasm::{
    AppLimits, AppRuntime, AppSpec, CacheBudget, EngineConfig, EpochTicker, Observations,
    PreparedCounters, build_engine,
};

#[path = "../../../xtask/src/guest_apps.rs"]
mod guest_apps;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Path of `apps/<name>` built for wasm32-wasip2.
pub fn app(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let apps = workspace().join("apps");
    BUILT.get_or_init(|| guest_apps::build(&cargo(), &apps).unwrap_or_else(|e| panic!("{e}")));
    guest_apps::component(&apps, name)
}

/// The manifest directory of `package` among the apps' or the workspace's dependencies.
fn dependency_dir(manifest: &Path, package: &str) -> PathBuf {
    let out = Command::new(cargo())
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--manifest-path",
        ])
        .arg(manifest)
        .output()
        .expect("cargo metadata");
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let path = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == package)
        .and_then(|p| p["manifest_path"].as_str())
        .unwrap_or_else(|| panic!("{package} among the dependencies"))
        .to_owned();
    Path::new(&path).parent().unwrap().to_path_buf()
}

/// apps/ballast with a memory image of `mib` MiB (xtask's `guest_apps::ballast`).
pub fn ballast(mib: u32) -> PathBuf {
    guest_apps::ballast(&cargo(), &workspace().join("apps"), mib).unwrap_or_else(|e| panic!("{e}"))
}

/// apps/js-hello's app.js (StarlingMonkey's fetch event), built by `guest_apps::javascript`.
pub fn js_component() -> PathBuf {
    js_components().join("js-hello.wasm")
}

/// apps/js-hello's handler.js (wasi:http's incoming-handler exported itself; serves from reused
/// instances too), built by `guest_apps::javascript`.
pub fn js_handler_component() -> PathBuf {
    js_components().join("js-handler.wasm")
}

fn js_components() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            guest_apps::javascript(&workspace().join("apps")).unwrap_or_else(|e| panic!("{e}"))
        })
        .clone()
}

/// wstd's own `http_server` example, built from the crates.io package: a component written
/// with no knowledge of edgeplane.
pub fn wstd_example_server() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let src = dependency_dir(&workspace().join("apps/Cargo.toml"), "wstd");
            // Build in a copy: the registry source is not ours to write build output into.
            let copy = std::env::temp_dir().join("edgeplane-wstd-example");
            let _ = std::fs::remove_dir_all(&copy);
            let status = Command::new("cp")
                .arg("-r")
                .arg(&src)
                .arg(&copy)
                .status()
                .unwrap();
            assert!(status.success());
            let mut cargo = Command::new(cargo());
            let status =
                guest_apps::without_workspace_lints(guest_apps::clean_cargo_env(&mut cargo))
                    .current_dir(&copy)
                    .args([
                        "build",
                        "--release",
                        "--locked",
                        "--target",
                        "wasm32-wasip2",
                        "--example",
                        "http_server",
                    ])
                    .env(
                        "CARGO_TARGET_DIR",
                        workspace().join("apps/target/wstd-example"),
                    )
                    .status()
                    .expect("building wstd's example");
            assert!(
                status.success(),
                "building wstd's http_server example failed"
            );
            workspace()
                .join("apps/target/wstd-example/wasm32-wasip2/release/examples/http_server.wasm")
        })
        .clone()
}

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

/// A fresh directory under the system's temporary one, for this test process.
pub fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("edgeplane-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

// What a client reads, parsed independently of the code under test.

/// A response as it arrived: head, and the body's pieces with when each was read.
#[derive(Debug, Default)]
pub struct Received {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Decoded body pieces (chunks, or reads of a delimited body), each with its arrival time.
    pub pieces: Vec<(Instant, Vec<u8>)>,
    pub trailers: Vec<(String, String)>,
    /// Whether the body reached its end as framed (the last chunk, the length, or EOF for a
    /// close-delimited body); false when the connection ended first.
    pub complete: bool,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn body(&self) -> Vec<u8> {
        self.pieces.iter().flat_map(|(_, p)| p.clone()).collect()
    }
}

/// Reads bytes from the socket into `buf` until `pred` holds; false on EOF first.
pub fn fill_until(s: &mut TcpStream, buf: &mut Vec<u8>, pred: impl Fn(&[u8]) -> bool) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    while !pred(buf) {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    true
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads one response from `s` (`head_only` for a HEAD request), chunk by chunk; status 0 when
/// the connection closed before a response head.
pub fn read_response(s: &mut TcpStream, head_only: bool) -> Received {
    let mut buf = Vec::new();
    if !fill_until(s, &mut buf, |b| find(b, b"\r\n\r\n").is_some()) {
        // Closed with no response at all: status 0, nothing complete.
        return Received::default();
    }
    let end = find(&buf, b"\r\n\r\n").unwrap();
    let head = String::from_utf8(buf[..end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    buf.drain(..end + 4);
    let mut r = Received {
        status,
        headers,
        ..Default::default()
    };
    if head_only || status == 204 || status == 304 {
        r.complete = true;
        return r;
    }
    if r.header("transfer-encoding") == Some("chunked") {
        loop {
            if !fill_until(s, &mut buf, |b| find(b, b"\r\n").is_some()) {
                return r;
            }
            let line_end = find(&buf, b"\r\n").unwrap();
            let size_line = String::from_utf8(buf[..line_end].to_vec()).unwrap();
            let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16)
                .expect("chunk size");
            buf.drain(..line_end + 2);
            if size == 0 {
                // Trailers, then the empty line.
                loop {
                    if !fill_until(s, &mut buf, |b| find(b, b"\r\n").is_some()) {
                        return r;
                    }
                    let line_end = find(&buf, b"\r\n").unwrap();
                    let line = String::from_utf8(buf.drain(..line_end + 2).collect()).unwrap();
                    let line = line.trim_end();
                    if line.is_empty() {
                        r.complete = true;
                        return r;
                    }
                    let (k, v) = line.split_once(':').unwrap();
                    r.trailers
                        .push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
                }
            }
            if !fill_until(s, &mut buf, |b| b.len() >= size + 2) {
                return r;
            }
            r.pieces.push((Instant::now(), buf[..size].to_vec()));
            assert_eq!(&buf[size..size + 2], b"\r\n", "chunk data must end in CRLF");
            buf.drain(..size + 2);
        }
    }
    if let Some(length) = r.header("content-length") {
        let length: usize = length.parse().unwrap();
        r.complete = fill_until(s, &mut buf, |b| b.len() >= length);
        r.pieces
            .push((Instant::now(), buf[..length.min(buf.len())].to_vec()));
        return r;
    }
    // Delimited by the connection's end.
    if !buf.is_empty() {
        r.pieces.push((Instant::now(), std::mem::take(&mut buf)));
    }
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => {
                r.complete = true;
                return r;
            }
            Ok(n) => r.pieces.push((Instant::now(), chunk[..n].to_vec())),
            Err(e) => panic!("reading a close-delimited body: {e}"),
        }
    }
}
