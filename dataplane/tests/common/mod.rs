//! Builds the guest apps for tests (a no-op when they are up to date).
//! Included by several test crates; each uses only some of it.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::Command,
    rc::Rc,
    sync::OnceLock,
};

use edgeplane_dataplane::wasm::{
    AppLimits, AppRuntime, AppSpec, CacheBudget, EngineConfig, EpochTicker, Observations,
    build_engine,
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

/// wstd's own `http_server` example, built from the crates.io package: a component written
/// with no knowledge of edgeplane.
pub fn wstd_example_server() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let out = Command::new(cargo())
                .args([
                    "metadata",
                    "--format-version",
                    "1",
                    "--locked",
                    "--manifest-path",
                ])
                .arg(workspace().join("apps/Cargo.toml"))
                .output()
                .expect("cargo metadata");
            let meta: serde_json::Value =
                serde_json::from_slice(&out.stdout).expect("metadata JSON");
            let manifest = meta["packages"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == "wstd")
                .and_then(|p| p["manifest_path"].as_str())
                .expect("wstd in apps' dependencies")
                .to_owned();
            let src = Path::new(&manifest).parent().unwrap();
            // Build in a copy: the registry source is not ours to write build output into.
            let copy = std::env::temp_dir().join("edgeplane-wstd-example");
            let _ = std::fs::remove_dir_all(&copy);
            let status = Command::new("cp")
                .arg("-r")
                .arg(src)
                .arg(&copy)
                .status()
                .unwrap();
            assert!(status.success());
            let status = Command::new(cargo())
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
        env: vec![],
        allowed_backends: vec![],
        split_app: None,
        limits: AppLimits::default(),
    }
}

/// A runtime as a worker builds one (16 instances at most).
pub fn runtime(apps: Vec<AppSpec>, cache_dir: &std::path::Path) -> Rc<AppRuntime> {
    let cfg = EngineConfig {
        max_instances: 16,
        ..Default::default()
    };
    let engine = build_engine(&cfg).unwrap();
    ticker().register(&engine);
    Rc::new(
        AppRuntime::new(
            engine,
            cache_dir,
            CacheBudget::default(),
            apps,
            Observations::default(),
            cfg.epoch_tick,
            16,
        )
        .unwrap(),
    )
}

/// A fresh directory under the system's temporary one, for this test process.
pub fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("edgeplane-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}
