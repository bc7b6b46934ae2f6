//! edgeplane's own binaries as the tests and benchmarks start them.

use std::path::PathBuf;

/// cargo's arguments that build edged and edgectl as the tests and demos run them.
pub const BUILD: &[&str] = &[
    "build",
    "--locked",
    "--release",
    "-p",
    "edgeplane",
    "--bins",
];

/// A binary of the `edgeplane` package (edged, edgectl): the release build, whatever profile
/// the tests were built in (a debug edged's wasmtime compiles large components too slowly for a
/// test to wait on). Built once per test binary; a no-op when up to date.
pub fn edgeplane_binary(name: &str) -> PathBuf {
    use std::sync::OnceLock;
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let release = BUILT.get_or_init(|| {
        // target/<profile>/deps/<this test> -> target/
        let target = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
            .expect("the test executable lives in target/<profile>/deps");
        let mut cargo =
            std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        // As the workspace's own build saw the environment: this test's package variables would
        // make ring's build script run again, and edged be rebuilt, for every test binary.
        let status = crate::guest_apps::clean_cargo_env(&mut cargo)
            .args(BUILD)
            .env("CARGO_TARGET_DIR", &target)
            .status()
            .expect("cargo build");
        assert!(status.success(), "building edged/edgectl (release) failed");
        target.join("release")
    });
    release.join(name)
}
