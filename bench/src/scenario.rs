//! What every load scenario does with its runs: a table against the baseline run, and the
//! results folder (JSON, latency CDFs, throughput over time).

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::{
    loadgen::LoadReport,
    plot::{self, Series},
};

/// Names the `edged` binary the scenarios start, when it is not the one beside them.
pub const EDGED_ENV: &str = "EDGED";

/// What every scenario binary needs before it starts: root, and where things are.
pub struct Setup {
    pub workspace: PathBuf,
    /// `edged`: the one `EDGED` names (`./x bench` builds it with the `production` profile),
    /// else the one built beside the scenario binary.
    pub edged: PathBuf,
}

impl Setup {
    /// Fails with a clear message unless run as root with an `edged` to start.
    pub fn new(scenario: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(
            edgeplane_testkit::netns::is_root(),
            "{scenario} needs root (namespaces, XDP, BPF maps)"
        );
        let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("workspace")?
            .to_path_buf();
        let edged = match std::env::var_os(EDGED_ENV) {
            Some(path) => {
                let edged = PathBuf::from(path);
                anyhow::ensure!(
                    edged.exists(),
                    "{EDGED_ENV} names {}, which does not exist",
                    edged.display()
                );
                edged
            }
            None => {
                let edged = std::env::current_exe()?
                    .parent()
                    .context("exe dir")?
                    .join("edged");
                anyhow::ensure!(
                    edged.exists(),
                    "{} is missing: cargo build --release -p edgeplane (./x bench does)",
                    edged.display()
                );
                edged
            }
        };
        Ok(Self { workspace, edged })
    }

    /// The guest app `name`'s component, which must have been built.
    pub fn app(&self, name: &str) -> anyhow::Result<PathBuf> {
        let path = edgeplane_testkit::guest_apps::component(&self.workspace.join("apps"), name);
        anyhow::ensure!(
            path.exists(),
            "{} is missing: build apps/ first (./x bench does)",
            path.display()
        );
        Ok(path)
    }

    /// A results folder: relative paths are taken from the workspace root.
    pub fn results_dir(&self, out: &Path) -> PathBuf {
        if out.is_relative() {
            self.workspace.join(out)
        } else {
            out.to_path_buf()
        }
    }
}

/// Prints one row per run; ratios are against `runs[baseline]`.
/// The median of `values` (the upper one of an even count); NaN when there are none.
pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

pub fn print_table(title: &str, runs: &[&LoadReport], baseline: usize) {
    println!("\n{title}");
    println!(
        "{:<44} {:>10} {:>9} {:>9} {:>9} {:>8} {:>11}",
        "run", "served/s", "p50 ms", "p99 ms", "max ms", "errors", "vs baseline"
    );
    let base = runs.get(baseline).map_or(f64::NAN, |b| b.requests_per_sec);
    for (i, r) in runs.iter().enumerate() {
        let ratio = if i == baseline {
            "baseline".to_owned()
        } else {
            format!("{:.2}x", r.requests_per_sec / base)
        };
        println!(
            "{:<44} {:>10.0} {:>9.2} {:>9.2} {:>9.1} {:>8} {:>11}",
            r.target, r.requests_per_sec, r.p50_ms, r.p99_ms, r.max_ms, r.errors, ratio
        );
    }
}

/// Writes `results.json` (the runs and `extra`), `cdf.svg` and `throughput.svg` into `out`.
pub fn write_results(
    out: &Path,
    title: &str,
    runs: &[&LoadReport],
    extra: serde_json::Value,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(
        out.join("results.json"),
        serde_json::to_vec_pretty(&serde_json::json!({ "runs": runs, "details": extra }))?,
    )?;
    plot::latency_cdf(
        &out.join("cdf.svg"),
        &format!("{title}: latency of served requests"),
        &runs
            .iter()
            .map(|r| (r.target.clone(), r.cdf.clone()))
            .collect::<Vec<_>>(),
    )?;
    plot::lines(
        &out.join("throughput.svg"),
        &format!("{title}: throughput over time"),
        "second of the run",
        "requests served per second",
        &runs
            .iter()
            .map(|r| throughput_series(r))
            .collect::<Vec<_>>(),
    )?;
    Ok(())
}

/// Requests served in each whole second of a run (stragglers after its end are left out).
pub fn throughput_series(run: &LoadReport) -> Series {
    let whole = (run.duration_s as usize).max(1);
    Series {
        label: run.target.clone(),
        points: run
            .per_second
            .iter()
            .take(whole)
            .enumerate()
            .map(|(second, &n)| (second as f64 + 1.0, n as f64))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throughput_keeps_the_runs_whole_seconds() {
        let run = LoadReport {
            target: "t".into(),
            offered_rate: None,
            requests_per_sec: 0.0,
            completed: 0,
            errors: 0,
            resets: 0,
            timeline: vec![],
            duration_s: 2.0,
            p50_ms: 0.0,
            p90_ms: 0.0,
            p99_ms: 0.0,
            p999_ms: 0.0,
            max_ms: 0.0,
            per_second: vec![10, 12, 1],
            cdf: Vec::new(),
            histogram: hdrhistogram::Histogram::new(3).unwrap(),
        };
        assert_eq!(
            throughput_series(&run).points,
            vec![(1.0, 10.0), (2.0, 12.0)]
        );
    }
}
