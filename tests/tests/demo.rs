//! The main job (`./x demo`) in its short mode: it must place the apps that call the backend at
//! dc2 and keep hello at the POP, report it in its table, and write its plots and summary.

use std::process::Command;

use edgeplane_testkit::require_root;

#[test]
fn the_demo_places_apps_and_writes_its_plots() {
    if !require_root("demo") {
        return;
    }
    check_demo(&[]);
}

/// `./x demo --fleet`: the same, with every app deployed through NATS by `edgectl deploy`.
#[test]
fn the_demo_on_the_fleet_deploys_every_app_through_nats_and_places_them_alike() {
    if !require_root("demo-fleet") {
        return;
    }
    let stdout = check_demo(&["--fleet"]);
    for app in ["fetcher", "hello", "shop"] {
        assert!(
            stdout.contains(&format!("deployed {app} (revision")),
            "{stdout}"
        );
    }
}

/// Runs the short demo with `extra` arguments, checks its table, summary and plots; its output
/// (stdout, then stderr).
fn check_demo(extra: &[&str]) -> String {
    let out = std::env::temp_dir().join(format!(
        "edgeplane-demo-{}{}",
        std::process::id(),
        extra.concat()
    ));
    let _ = std::fs::remove_dir_all(&out);
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    let run = edgeplane_testkit::guest_apps::clean_cargo_env(&mut cargo)
        .current_dir(workspace)
        .args([
            "run",
            "--locked",
            "-q",
            "--release",
            "-p",
            "xtask",
            "--",
            "demo",
            "--short",
            "--out",
        ])
        .arg(&out)
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "demo failed:\n{stdout}\n{stderr}");
    let row = |app: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(app))
            .unwrap_or_else(|| panic!("no {app} row in:\n{stdout}"))
            .to_owned()
    };
    assert!(row("fetcher").contains("placed:dc2"), "{stdout}");
    assert!(row("shop").contains("placed:dc2"), "{stdout}");
    assert!(row("hello").contains("local"), "{stdout}");

    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    let fetcher = &summary[0];
    assert_eq!(fetcher["app"], "fetcher");
    let (local, smart) = (
        fetcher["always_local"]["p50_ms"].as_f64().unwrap(),
        fetcher["smart"]["p50_ms"].as_f64().unwrap(),
    );
    assert!(
        smart * 3.0 < local,
        "smart {smart} ms vs always-local {local} ms"
    );
    for plot in [
        "cdf-fetcher.svg",
        "cdf-hello.svg",
        "cdf-shop.svg",
        "throughput-fetcher.svg",
        "convergence.svg",
    ] {
        let svg = std::fs::read_to_string(out.join(plot)).unwrap_or_default();
        assert!(
            svg.starts_with("<svg") && svg.contains("smart")
                || plot == "convergence.svg" && svg.starts_with("<svg"),
            "{plot}"
        );
    }
    std::fs::remove_dir_all(&out).unwrap();
    format!("{stdout}\n{stderr}")
}
