//! Project tasks, run through `./x` (which installs prerequisites first):
//! `demo` (the main job), `test` (what CI runs), `bench` (full benchmarks).

mod demo;
mod fuzz;
mod lengths;
mod xdp_demo;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use edgeplane_testkit::guest_apps;

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// The main job: an edge world in network namespaces with edgeplane at work.
    Demo(demo::DemoArgs),
    /// The XDP fast path at work: counting, a blocklisted flood and malformed frames dropped.
    DemoXdp(xdp_demo::XdpDemoArgs),
    /// fmt, function lengths, clippy, every test, and benchmark smoke runs.
    Test,
    /// The fuzz targets in fuzz/, each for a while (10 minutes unless told).
    Fuzz(fuzz::FuzzArgs),
    /// Full benchmark scenarios (figures for bench/README.md): all, or those named.
    Bench {
        #[arg(value_enum)]
        scenarios: Vec<Scenario>,
    },
    /// Functions longer than a limit (80 lines), test code apart.
    Lengths(lengths::LengthsArgs),
}

/// The benchmark scenarios, each against its baseline in the same run.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    /// XDP classify's cost per packet and flood drop rate vs bare XDP and nftables.
    Xdp,
    /// Static route vs nginx, hello vs `wasmtime serve`.
    Http,
    /// Time to first byte of a streamed guest response vs `wasmtime serve`.
    Stream,
    /// criterion: store + instantiate and whole requests on one worker's engine.
    Instantiate,
    /// Handoff overhead between datacenters beyond the link.
    Handoff,
    /// Serving hello under a SYN flood: dropped at XDP vs met by the kernel.
    Attack,
    /// A saturated POP: overflow to the region vs refusing.
    Saturation,
    /// Latency over time across a reload and an upgrade of edged under load.
    Upgrade,
    /// The fleet on NATS: deploy-to-everywhere time, placement from streamed measurements.
    Fleet,
    /// HTTPS on the workers vs nginx with the same certificate, one core each.
    Tls,
    /// The multi-datacenter canonical scenario: the main job's full run.
    Canonical,
}

/// A demo's results folder (`out`, or `default` under the workspace), made; a demo needs root.
pub fn demo_out(out: Option<PathBuf>, default: &str) -> anyhow::Result<PathBuf> {
    anyhow::ensure!(
        edgeplane_testkit::netns::is_root(),
        "the demo needs root (network namespaces, XDP, BPF maps)"
    );
    let out = out.unwrap_or_else(|| workspace_root().join(default));
    std::fs::create_dir_all(&out)?;
    Ok(out)
}

/// A demo's progress line.
pub fn step(msg: &str) {
    eprintln!("\x1b[1;36m==>\x1b[0m {msg}");
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    eprintln!("\x1b[1m[xtask]\x1b[0m cargo {}", args.join(" "));
    let status = guest_apps::clean_cargo_env(&mut Command::new(env!("CARGO")))
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn run_bin(name: &str, args: &[&str]) -> anyhow::Result<()> {
    run_bin_with(name, args, None)
}

/// Runs a scenario binary; with `edged`, the scenarios start that edged (`EDGED`).
fn run_bin_with(name: &str, args: &[&str], edged: Option<&Path>) -> anyhow::Result<()> {
    let path = target_dir().join("release").join(name);
    eprintln!(
        "\x1b[1m[xtask]\x1b[0m {} {}",
        path.display(),
        args.join(" ")
    );
    let mut cmd = Command::new(&path);
    if let Some(edged) = edged {
        cmd.env(edgeplane_bench::scenario::EDGED_ENV, edged);
    }
    let status = cmd
        .args(args)
        .status()
        .with_context(|| format!("running {}", path.display()))?;
    if !status.success() {
        bail!("{name} {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Each fuzz target's budget in `./x test`.
const CI_FUZZ_SECONDS: u64 = 20;

/// The phases of `./x test`, timed: where a run's time goes is printed at its end.
#[derive(Default)]
struct Phases(Vec<(&'static str, std::time::Duration)>);

impl Phases {
    fn run<T>(
        &mut self,
        name: &'static str,
        f: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let started = std::time::Instant::now();
        let result = f();
        self.0.push((name, started.elapsed()));
        result.with_context(|| format!("./x test: {name}"))
    }

    fn print(&self) {
        let line: Vec<String> = self
            .0
            .iter()
            .map(|(name, took)| format!("{name} {:.1} min", took.as_secs_f64() / 60.0))
            .collect();
        eprintln!(
            "\x1b[1m[xtask]\x1b[0m where the time went: {}",
            line.join(", ")
        );
    }
}

/// What CI runs: fmt, function lengths, one release build (linted by clippy as it compiles) for the tests and the
/// benchmark smoke runs, the smoke runs, a short fuzz of every parser, then every test binary
/// (none stops the rest).
fn test() -> anyhow::Result<()> {
    let mut phases = Phases::default();
    let result = test_phases(&mut phases);
    phases.print();
    result
}

fn test_phases(phases: &mut Phases) -> anyhow::Result<()> {
    phases.run("fmt", || cargo(&["fmt", "--all", "--check"]))?;
    // The house rule: no function outside test code past 80 lines (`./x lengths` lists them).
    phases.run("lengths", || {
        lengths::run(&lengths::LengthsArgs {
            max: 80,
            check: true,
        })
    })?;
    // `./x test` compiles the workspace with clippy-driver as its members' compiler (as `cargo
    // clippy` does, `-D warnings`), so the one release build the smoke runs and the tests use is
    // also the lint. Run any other way, the lint is a check build of its own.
    let linted =
        std::env::var("RUSTC_WORKSPACE_WRAPPER").is_ok_and(|w| w.contains("clippy-driver"));
    if !linted {
        phases.run("clippy", || {
            cargo(&[
                "clippy",
                "--locked",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])
        })?;
    }
    // Every target (benches and examples too, as `cargo clippy --all-targets`).
    phases.run("build", || {
        build_bench_bins()?;
        cargo(&[TEST_ARGS, &["--all-targets", "--no-run"]].concat())
    })?;
    phases.run("smoke runs", smoke_runs)?;
    // Every parser of hostile input, for a short budget each; `./x fuzz` runs them longer.
    phases.run("fuzz", || {
        fuzz::run(&fuzz::FuzzArgs {
            seconds: CI_FUZZ_SECONDS,
            targets: Vec::new(),
        })
    })?;
    phases.run("tests", || cargo_test(TEST_ARGS))
}

/// The workspace's tests, in the release build that the benchmark binaries and the edged the
/// tests start share (a debug wasmtime compiles large components too slowly to test with), every
/// test binary run even when one fails.
const TEST_ARGS: &[&str] = &[
    "test",
    "--locked",
    "--release",
    "--no-fail-fast",
    "--workspace",
    "--exclude",
    "edgeplane-ebpf",
];

/// Benchmark smoke runs: the harnesses work; figures come from `./x bench`. The canonical
/// scenario's short run is the demo test's.
fn smoke_runs() -> anyhow::Result<()> {
    let smoke = std::env::temp_dir().join(format!("edgeplane-smoke-{}", std::process::id()));
    let smoke = smoke.to_str().context("utf-8 temp dir")?;
    run_bin("xdp-bench", &["--smoke"])?;
    run_bin("http-bench", &["--smoke"])?;
    let ballast = guest_apps::component(&workspace_root().join("apps"), "ballast");
    run_bin(
        "http-bench",
        &[
            "--smoke",
            "--large",
            "--component",
            &ballast.display().to_string(),
        ],
    )?;
    run_bin("handoff-bench", &["--smoke", "--rounds", "1"])?;
    run_bin("stream-bench", &["--smoke"])?;
    run_bin("tls-bench", &["--smoke", "--rounds", "1"])?;
    run_bin(
        "upgrade-bench",
        &["--smoke", "--out", &format!("{smoke}/upgrade")],
    )?;
    run_bin(
        "attack-bench",
        &["--smoke", "--out", &format!("{smoke}/attack")],
    )?;
    run_bin(
        "fleet-bench",
        &["--smoke", "--out", &format!("{smoke}/fleet")],
    )?;
    run_bin(
        "saturation-bench",
        &["--smoke", "--out", &format!("{smoke}/saturation")],
    )?;
    let _ = std::fs::remove_dir_all(smoke);
    Ok(())
}

/// Runs cargo test, passing its output through, and closes with one line totalling every test
/// binary's result (cargo's own last line is whichever binary ran last, often doc tests with 0).
fn cargo_test(args: &[&str]) -> anyhow::Result<()> {
    use std::io::{BufRead as _, BufReader};
    eprintln!("\x1b[1m[xtask]\x1b[0m cargo {}", args.join(" "));
    // Root-gated tests that skip write their names here (a skip returns early, so cargo counts
    // it as passed; the summary below does not).
    let skip_log = std::env::temp_dir().join(format!("edgeplane-skipped-{}", std::process::id()));
    let _ = std::fs::remove_file(&skip_log);
    let mut child = guest_apps::clean_cargo_env(&mut Command::new(env!("CARGO")))
        .args(args)
        .current_dir(workspace_root())
        .env(edgeplane::root_gate::SKIP_LOG_ENV, &skip_log)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    // cargo names each test binary that failed on stderr (one that crashed prints no result
    // line of its own): passed through, and those names kept for the closing line.
    let stderr = BufReader::new(child.stderr.take().context("cargo stderr")?);
    let failed_binaries = std::thread::spawn(move || {
        let mut failed = Vec::new();
        for line in stderr.lines().map_while(Result::ok) {
            eprintln!("{line}");
            if let Some(rest) = line
                .trim()
                .strip_prefix("error: test failed, to rerun pass ")
            {
                failed.push(rest.trim_matches('`').to_owned());
            }
        }
        failed
    });
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    for line in BufReader::new(child.stdout.take().context("cargo stdout")?).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |label: &str| {
                rest.split(';')
                    .find_map(|part| {
                        part.trim()
                            .strip_suffix(label)?
                            .trim()
                            .rsplit(' ')
                            .next()?
                            .parse::<u64>()
                            .ok()
                    })
                    .unwrap_or(0)
            };
            passed += count("passed");
            failed += count("failed");
            ignored += count("ignored");
        }
    }
    let status = child.wait()?;
    let failed_binaries = failed_binaries.join().unwrap_or_default();
    let skipped = std::fs::read_to_string(&skip_log)
        .map(|log| log.lines().count() as u64)
        .unwrap_or(0);
    let _ = std::fs::remove_file(&skip_log);
    let passed = passed.saturating_sub(skipped);
    println!(
        "\ntests: {passed} passed, {failed} failed, {} skipped ({skipped} needing root, {ignored} ignored)",
        skipped + ignored
    );
    if !failed_binaries.is_empty() {
        println!("test binaries that failed: {}", failed_binaries.join(", "));
    }
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// The guest apps in apps/, built for wasm32-wasip2 into apps/target.
pub fn build_apps() -> anyhow::Result<()> {
    eprintln!("\x1b[1m[xtask]\x1b[0m building the guest apps in apps/");
    guest_apps::build(env!("CARGO"), &workspace_root().join("apps")).map_err(anyhow::Error::msg)
}

/// The benchmark binaries, edged beside them (http-bench starts it), and the apps they load.
/// edged is built alone, as the tests build it (`edgeplane_tests::edgeplane_binary`): built
/// with the benchmarks, its dependencies' features would differ and each would relink it.
fn build_bench_bins() -> anyhow::Result<()> {
    build_apps()?;
    for package in ["edgeplane", "edgeplane-bench"] {
        cargo(&["build", "--locked", "--release", "-p", package, "--bins"])?;
    }
    Ok(())
}

/// edged as deployed: the `production` profile (thin LTO, one codegen unit; see TUNING.md),
/// which is what the benchmarks measure. Tests use the release build, which links much faster.
fn build_production_edged() -> anyhow::Result<PathBuf> {
    cargo(&[
        "build",
        "--locked",
        "--profile",
        "production",
        "-p",
        "edgeplane",
        "--bin",
        "edged",
    ])?;
    Ok(target_dir().join("production/edged"))
}

fn bench(scenarios: &[Scenario]) -> anyhow::Result<()> {
    use clap::ValueEnum as _;
    build_bench_bins()?;
    let edged = build_production_edged()?;
    let run_bin = |name: &str, args: &[&str]| run_bin_with(name, args, Some(&edged));
    let out = workspace_root().join("results/bench");
    std::fs::create_dir_all(&out)?;
    let chosen: Vec<Scenario> = if scenarios.is_empty() {
        Scenario::value_variants().to_vec()
    } else {
        scenarios.to_vec()
    };
    for scenario in chosen {
        let json = |name: &str| out.join(format!("{name}.json")).display().to_string();
        let folder = |name: &str| out.join(name).display().to_string();
        match scenario {
            Scenario::Xdp => run_bin("xdp-bench", &["--json", &json("xdp-bench")])?,
            Scenario::Http => {
                run_bin("http-bench", &["--json", &json("http-bench")])?;
                // The same app written the usual way (std + wstd), for the guest's share.
                let wstd = guest_apps::component(&workspace_root().join("apps"), "hello-wstd");
                run_bin(
                    "http-bench",
                    &[
                        "--component",
                        &wstd.display().to_string(),
                        "--json",
                        &json("http-bench-hello-wstd"),
                    ],
                )?;
                // Large components (issue K): JavaScript (handler.js, which serves reused
                // instances too) and the 16 MiB Rust image.
                let apps = workspace_root().join("apps");
                let js = guest_apps::javascript(&apps)
                    .map_err(anyhow::Error::msg)?
                    .join("js-handler.wasm");
                let ballast = guest_apps::component(&apps, "ballast");
                for (component, name) in [(js, "http-bench-js"), (ballast, "http-bench-ballast")] {
                    run_bin(
                        "http-bench",
                        &[
                            "--component",
                            &component.display().to_string(),
                            "--large",
                            "--json",
                            &json(name),
                        ],
                    )?;
                }
            }
            Scenario::Stream => run_bin("stream-bench", &[])?,
            Scenario::Handoff => run_bin("handoff-bench", &["--json", &json("handoff-bench")])?,
            Scenario::Attack => run_bin("attack-bench", &["--out", &folder("attack")])?,
            Scenario::Saturation => run_bin("saturation-bench", &["--out", &folder("saturation")])?,
            Scenario::Upgrade => run_bin("upgrade-bench", &["--out", &folder("upgrade")])?,
            Scenario::Fleet => run_bin("fleet-bench", &["--out", &folder("fleet")])?,
            Scenario::Tls => run_bin("tls-bench", &["--json", &json("tls-bench")])?,
            Scenario::Instantiate => {
                cargo(&[
                    "bench",
                    "--locked",
                    "-p",
                    "edgeplane-dataplane",
                    "--bench",
                    "instantiate",
                ])?;
                large_instances(&out)?;
            }
            Scenario::Canonical => demo::run(demo::DemoArgs::full(out.join("canonical")))?,
        }
    }
    Ok(())
}

/// The large-instance breakdown and scaling curve (dataplane/benches/large_instances.rs),
/// plotted into bench/large-instances.svg.
fn large_instances(out: &Path) -> anyhow::Result<()> {
    #[derive(serde::Deserialize)]
    struct Point {
        image_mib: f64,
        edgeplane_us: f64,
        wasmtime_pooling_defaults_us: f64,
    }
    let curve = out.join("large-instances.json");
    let args = [
        "bench",
        "--locked",
        "-p",
        "edgeplane-dataplane",
        "--bench",
        "large_instances",
    ];
    eprintln!("\x1b[1m[xtask]\x1b[0m cargo {}", args.join(" "));
    let status = guest_apps::clean_cargo_env(&mut Command::new(env!("CARGO")))
        .args(args)
        .env("EDGEPLANE_CURVE_JSON", &curve)
        .current_dir(workspace_root())
        .status()
        .context("running the large_instances bench")?;
    if !status.success() {
        bail!("the large_instances bench failed ({status})");
    }
    let points: Vec<Point> = serde_json::from_slice(&std::fs::read(&curve)?)?;
    let series = |label: &str, y: fn(&Point) -> f64| edgeplane_bench::plot::Series {
        label: label.into(),
        points: points.iter().map(|p| (p.image_mib, y(p))).collect(),
    };
    let svg = workspace_root().join("bench/large-instances.svg");
    edgeplane_bench::plot::lines(
        &svg,
        "Fresh instance: store + instantiate + first request",
        "memory image (MiB)",
        "us per request",
        &[
            series("edgeplane", |p| p.edgeplane_us),
            series("wasmtime pooling defaults", |p| {
                p.wasmtime_pooling_defaults_us
            }),
        ],
    )?;
    eprintln!("\x1b[1m[xtask]\x1b[0m plotted {}", svg.display());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Demo(args) => demo::run(args),
        Task::DemoXdp(args) => xdp_demo::run(args),
        Task::Test => test(),
        Task::Fuzz(args) => fuzz::run(&args),
        Task::Bench { scenarios } => bench(&scenarios),
        Task::Lengths(args) => lengths::run(&args),
    }
}
