//! Building the guest apps in apps/ (their own workspace) for wasm32-wasip2, into apps/target.
//! xtask, the benchmarks and the tests build them all through this one module (std only).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// Where `build` leaves the component of app `name`.
pub fn component(apps: &Path, name: &str) -> PathBuf {
    apps.join("target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"))
}

/// Two builds: the workspace's default members, then the no_std hello on its own (built together,
/// cargo's feature unification would link std into it; apps/Cargo.toml says more).
pub fn build(cargo: &str, apps: &Path) -> Result<(), String> {
    for packages in [&[][..], &["-p", "hello"][..]] {
        // Pinned so tools find the components there whatever CARGO_TARGET_DIR says.
        cargo_build(cargo, apps, packages, &apps.join("target"), None)?;
    }
    Ok(())
}

/// apps/ballast built with a memory image of `mib` MiB (the default build, `component(apps,
/// "ballast")`, has 16), left at apps/target/ballast/ballast-<mib>mib.wasm. Each size is a
/// rebuild of the one small crate; its dependencies are built once.
pub fn ballast(cargo: &str, apps: &Path, mib: u32) -> Result<PathBuf, String> {
    let target = apps.join("target/ballast/build");
    let size = ("BALLAST_MIB", mib.to_string());
    cargo_build(cargo, apps, &["-p", "ballast"], &target, Some(size))?;
    let out = apps
        .join("target/ballast")
        .join(format!("ballast-{mib}mib.wasm"));
    std::fs::copy(target.join("wasm32-wasip2/release/ballast.wasm"), &out)
        .map_err(|e| format!("copying the {mib} MiB ballast: {e}"))?;
    Ok(out)
}

/// Removes the variables cargo sets for the package whose binary or test is running (what
/// `CARGO_PKG_NAME`, `CARGO_MANIFEST_DIR`, `OUT_DIR` and the like say) from a cargo, or a tool
/// that runs cargo, started by a test or by xtask (itself run by `cargo run`). Build scripts
/// that watch them (ring's do) would otherwise run again whenever the caller differs, and every
/// crate above them be rebuilt, on each call.
pub fn clean_cargo_env(cmd: &mut Command) -> &mut Command {
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else {
            continue;
        };
        let per_package = [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_BIN_",
            "CARGO_CRATE_",
            "CARGO_CFG_",
        ]
        .iter()
        .any(|prefix| name.starts_with(prefix))
            || matches!(
                name,
                "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "CARGO_RUSTC_CURRENT_DIR"
                    | "OUT_DIR"
            );
        if per_package {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// Guests are not linted with the workspace: `./x test` compiles the workspace with clippy as
/// its compiler (RUSTC_WORKSPACE_WRAPPER), and a cargo started under it (by a test) would lint
/// the apps' workspace, or a registry crate's, as if they were ours.
pub fn without_workspace_lints(cmd: &mut Command) -> &mut Command {
    cmd.env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CLIPPY_ARGS")
}

/// `cargo build` of `packages` in apps/ for wasm32-wasip2 into `target`, with `env` set.
fn cargo_build(
    cargo: &str,
    apps: &Path,
    packages: &[&str],
    target: &Path,
    env: Option<(&str, String)>,
) -> Result<(), String> {
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--locked",
        "--release",
        "--target",
        "wasm32-wasip2",
    ])
    .args(packages)
    .arg("--manifest-path")
    .arg(apps.join("Cargo.toml"))
    .env("CARGO_TARGET_DIR", target);
    without_workspace_lints(clean_cargo_env(&mut cmd));
    if let Some((key, value)) = env {
        cmd.env(key, value);
    }
    let status = cmd
        .status()
        .map_err(|e| format!("running {cargo} for apps/: {e}"))?;
    if !status.success() {
        return Err(format!(
            "building apps/ {packages:?} for wasm32-wasip2 failed ({status}; rustup target add wasm32-wasip2?)"
        ));
    }
    Ok(())
}

/// The JavaScript apps in apps/js-hello, componentized with componentize-js from the npm
/// registry (the versions its package-lock.json pins), left in apps/target/js-hello:
/// - `js-hello.wasm`, from app.js: StarlingMonkey's fetch event, as users write one;
/// - `js-handler.wasm`, from handler.js: the engine exporting wasi:http's incoming-handler itself.
///   The fetch event answers once per instance (StarlingMonkey issue 247), so this is the
///   JavaScript app that serves from reused instances too.
///
/// The WIT they are built against is wasmtime-wasi-http's with its versions at 0.2.10, which
/// the engine speaks (apps/js-hello/wit; PLATFORM.md). Rebuilt when a source is newer.
pub fn javascript(apps: &Path) -> Result<PathBuf, String> {
    let src = apps.join("js-hello");
    let dir = apps.join("target/js-hello");
    let built = [
        ("app.js", "js-hello.wasm"),
        ("handler.js", "js-handler.wasm"),
    ];
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let fresh = built.iter().all(|(source, out)| {
        let out = modified(&dir.join(out));
        out.is_some() && out >= modified(&src.join(source))
    });
    if fresh {
        return Ok(dir);
    }
    let copy = |from: &Path, to: &Path| {
        std::fs::copy(from, to).map_err(|e| format!("copying {}: {e}", from.display()))
    };
    std::fs::create_dir_all(dir.join("wit/deps")).map_err(|e| e.to_string())?;
    for file in [
        "package.json",
        "package-lock.json",
        "build.mjs",
        "app.js",
        "handler.js",
    ] {
        copy(&src.join(file), &dir.join(file))?;
    }
    copy(&src.join("wit/world.wit"), &dir.join("wit/world.wit"))?;
    for entry in std::fs::read_dir(src.join("wit/deps")).map_err(|e| e.to_string())? {
        let path = entry.map_err(|e| e.to_string())?.path();
        if let Some(name) = path.file_name() {
            copy(&path, &dir.join("wit/deps").join(name))?;
        }
    }
    let run = |cmd: &mut Command, what: &str| -> Result<(), String> {
        let status = cmd
            .current_dir(&dir)
            .status()
            .map_err(|e| format!("{what}: {e} (Node.js and npm on the machine? ./x setup)"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("{what} failed ({status})"))
        }
    };
    run(
        Command::new("npm").args(["ci", "--no-audit", "--no-fund", "--silent"]),
        "npm ci for apps/js-hello",
    )?;
    for (source, out) in built {
        run(
            Command::new("node").args(["build.mjs", source, "wit", out]),
            &format!("componentize-js for {source}"),
        )?;
    }
    Ok(dir)
}
