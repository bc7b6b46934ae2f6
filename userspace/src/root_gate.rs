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
    skip(
        test,
        "needs root (network namespaces, XDP, BPF maps). CI runs as root.",
    );
    false
}

/// True when `test` may run: it has root, and `probe` finds the kernel feature it needs
/// (`feature` names it). Otherwise as `require_root`: under CI it fails, in one line naming the
/// feature and why the probe refused it; elsewhere the test is skipped loudly and counted.
pub fn require_feature(
    test: &str,
    feature: &str,
    probe: impl FnOnce() -> Result<(), String>,
) -> bool {
    if !require_root(test) {
        return false;
    }
    let Err(why) = probe() else {
        return true;
    };
    assert!(
        !required(),
        "{test} needs {feature}, which this machine refuses ({why}); this is CI: failing rather than skipping"
    );
    skip(
        test,
        &format!("needs {feature}, which this machine refuses ({why})."),
    );
    false
}

fn skip(test: &str, why: &str) {
    eprintln!("\n!!!!! SKIPPED {test}: {why} !!!!!\n");
    if let Some(path) = std::env::var_os(SKIP_LOG_ENV)
        && let Ok(mut log) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        let _ = writeln!(log, "{test}");
    }
}
