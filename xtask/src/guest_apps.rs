//! Building the guest apps in apps/ (their own workspace) for wasm32-wasip2, into apps/target.
//! Shared by xtask and the test crates (included with `#[path]`), so std only.

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
        let status = Command::new(cargo)
            .args([
                "build",
                "--locked",
                "--release",
                "--target",
                "wasm32-wasip2",
            ])
            .args(packages)
            .arg("--manifest-path")
            .arg(apps.join("Cargo.toml"))
            // Pinned so tools find the components there whatever CARGO_TARGET_DIR says.
            .env("CARGO_TARGET_DIR", apps.join("target"))
            .status()
            .map_err(|e| format!("running {cargo} for apps/: {e}"))?;
        if !status.success() {
            return Err(format!(
                "building apps/ {packages:?} for wasm32-wasip2 failed ({status}; rustup target add wasm32-wasip2?)"
            ));
        }
    }
    Ok(())
}

/// apps/ballast built with a memory image of `mib` MiB (the default build, `component(apps,
/// "ballast")`, has 16), left at apps/target/ballast/ballast-<mib>mib.wasm. Each size is its own
/// build of the one small crate (its dependencies are built once); a size already built is not
/// built again.
pub fn ballast(cargo: &str, apps: &Path, mib: u32) -> Result<PathBuf, String> {
    let out = apps
        .join("target/ballast")
        .join(format!("ballast-{mib}mib.wasm"));
    if out.exists() {
        return Ok(out);
    }
    let target = apps.join("target/ballast/build");
    let status = Command::new(cargo)
        .args([
            "build",
            "--locked",
            "--release",
            "--target",
            "wasm32-wasip2",
            "-p",
            "ballast",
        ])
        .arg("--manifest-path")
        .arg(apps.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .env("BALLAST_MIB", mib.to_string())
        .status()
        .map_err(|e| format!("running {cargo} for apps/ballast: {e}"))?;
    if !status.success() {
        return Err(format!(
            "building apps/ballast with {mib} MiB failed ({status})"
        ));
    }
    std::fs::copy(target.join("wasm32-wasip2/release/ballast.wasm"), &out)
        .map_err(|e| format!("copying the {mib} MiB ballast: {e}"))?;
    Ok(out)
}
