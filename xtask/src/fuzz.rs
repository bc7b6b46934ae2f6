//! `./x fuzz`: the libFuzzer targets in fuzz/ (cargo fuzz, nightly). Each target starts from its
//! seed corpus in the repository (fuzz/corpus/<target>) and keeps what it finds in the target
//! dir, so the repository's seeds stay as committed. `./x test` runs each for a short budget;
//! people run them longer (`./x fuzz --seconds 600`).

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::{target_dir, workspace_root};

/// Every target in fuzz/Cargo.toml.
pub const TARGETS: [&str; 7] = [
    "http_request",
    "chunked",
    "request_stream",
    "handoff_verify",
    "config_toml",
    "fleet_control",
    "tls_hello",
];

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// How long each target runs.
    #[arg(long, default_value_t = 600)]
    pub seconds: u64,
    /// Targets to run (default: all).
    pub targets: Vec<String>,
}

pub fn run(args: &FuzzArgs) -> anyhow::Result<()> {
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        args.targets.iter().map(String::as_str).collect()
    };
    for target in &targets {
        anyhow::ensure!(
            TARGETS.contains(target),
            "no fuzz target {target:?}; there are {TARGETS:?}"
        );
    }
    let root = workspace_root();
    let fuzz_target_dir = target_dir().join("fuzz");
    // One build for every target (cargo fuzz build builds them all).
    cargo_fuzz(
        &["build", "-O", "-a", "-s", "none", "--target-dir"],
        &fuzz_target_dir,
        &[],
    )?;
    for target in targets {
        let found = fuzz_target_dir.join("corpus").join(target);
        std::fs::create_dir_all(&found)?;
        let seeds = root.join("fuzz/corpus").join(target);
        let artifacts = fuzz_target_dir.join("artifacts").join(target);
        std::fs::create_dir_all(&artifacts)?;
        eprintln!(
            "\x1b[1m[xtask]\x1b[0m fuzzing {target} for {} s",
            args.seconds
        );
        cargo_fuzz(
            &["run", "-O", "-a", "-s", "none", "--target-dir"],
            &fuzz_target_dir,
            &[
                target.to_owned(),
                found.display().to_string(),
                seeds.display().to_string(),
                "--".into(),
                format!("-max_total_time={}", args.seconds),
                format!("-artifact_prefix={}/", artifacts.display()),
                "-print_final_stats=1".into(),
            ],
        )
        .with_context(|| {
            format!(
                "fuzz target {target} failed: the crashing input is in {}",
                artifacts.display()
            )
        })?;
    }
    Ok(())
}

fn cargo_fuzz(args: &[&str], target_dir: &std::path::Path, rest: &[String]) -> anyhow::Result<()> {
    let mut cmd = Command::new("rustup");
    // The fuzz crate is a workspace of its own, built on nightly: not linted with ours (`./x
    // test` sets clippy-driver as our workspace's compiler).
    edgeplane_testkit::guest_apps::without_workspace_lints(
        edgeplane_testkit::guest_apps::clean_cargo_env(&mut cmd),
    );
    cmd.args(["run", "nightly", "cargo", "fuzz"])
        .args(args)
        .arg(target_dir)
        .args(rest)
        .current_dir(workspace_root());
    eprintln!("\x1b[1m[xtask]\x1b[0m {cmd:?}");
    let status = cmd
        .status()
        .context("running cargo fuzz (./x setup installs it)")?;
    if !status.success() {
        bail!("cargo fuzz {} failed ({status})", args.join(" "));
    }
    Ok(())
}
