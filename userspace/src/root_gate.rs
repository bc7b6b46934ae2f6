//! The one gate for this workspace's tests that need root (network namespaces, XDP, BPF maps).
//!
//! Without root such a test is skipped, loudly, and the skip is written to the file
//! `EDGEPLANE_SKIP_LOG` names, so `./x test`'s summary counts it as skipped, not passed. Under CI
//! (`EDGEPLANE_REQUIRE_ROOT_TESTS` set, as `.ci/run` does, or `CI=true`, as CI services set),
//! which runs as root, a test that cannot run fails.

use std::io::Write as _;

/// Set (to anything) where every root-gated test must run.
pub const REQUIRE_ENV: &str = "EDGEPLANE_REQUIRE_ROOT_TESTS";
/// Names a file each skipped test appends its name to.
pub const SKIP_LOG_ENV: &str = "EDGEPLANE_SKIP_LOG";

/// Whether this process may create namespaces and load BPF programs.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether every root-gated test must run: `EDGEPLANE_REQUIRE_ROOT_TESTS` set, or `CI` true.
pub fn required() -> bool {
    std::env::var_os(REQUIRE_ENV).is_some()
        || std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// True when `test` may run. Otherwise: panics under CI (`required`), else says loudly that it
/// is skipped, records the skip, and returns false.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    assert!(
        !required(),
        "{test} needs root (network namespaces, XDP, BPF maps) and this is CI \
         ({REQUIRE_ENV} or CI=true): failing rather than skipping"
    );
    eprintln!(
        "\n!!!!! SKIPPED {test}: needs root (network namespaces, XDP, BPF maps). CI runs as root. !!!!!\n"
    );
    if let Some(path) = std::env::var_os(SKIP_LOG_ENV)
        && let Ok(mut log) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        let _ = writeln!(log, "{test}");
    }
    false
}
