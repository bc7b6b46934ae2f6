//! The guest apps as tests and benchmarks use them: each built once per process (a no-op when
//! up to date), by the same code `./x` builds them with (`guest_apps`).

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use crate::guest_apps;

pub(crate) fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub(crate) fn cargo() -> String {
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

/// The split app `shop` that the demo and the tests serve: its entry (apps/split) on `host`
/// calls two functions, each placed by the engine: `db` (fetcher, calling the backend at
/// `url`, `authority`) and `greet` (hello). `entry_placement`: the entry's own `placement`.
pub fn split_shop_toml(
    host: &str,
    url: &str,
    authority: &str,
    entry_placement: Option<&str>,
) -> String {
    let entry_placement = entry_placement
        .map(|p| format!("placement = {p}\n"))
        .unwrap_or_default();
    format!(
        r#"
[[apps]]
name = "shop"
hosts = ["{host}"]
component = "{split}"
env = {{ FUNCTIONS = "db,greet" }}
{entry_placement}[[apps.functions]]
name = "db"
component = "{fetcher}"
env = {{ BACKEND_URL = "{url}" }}
allowed_backends = ["{authority}"]
placement = {{ mode = "smart" }}
[[apps.functions]]
name = "greet"
component = "{hello}"
placement = {{ mode = "smart" }}
"#,
        split = app("split").display(),
        fetcher = app("fetcher").display(),
        hello = app("hello").display(),
    )
}
