//! The verbs the running edged answers over its admin endpoint (not the pinned maps): reload,
//! upgrade, and the app versions it serves.

use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::{Command, print_json, table};

/// `edgectl reload`, `upgrade` and `app versions`: asked of the running edged, not the maps.
pub(crate) fn ask(
    admin: std::net::SocketAddr,
    command: &Command,
    as_json: bool,
) -> anyhow::Result<()> {
    use edgeplane_dataplane::client::oneshot::{Once, send_blocking};
    match command {
        Command::Upgrade => {
            let mut ask = Once::get("/upgrade", "edgectl", 1 << 20)?;
            ask.method = http::Method::POST;
            let answer = send_blocking(admin, ask, Duration::from_secs(300))
                .with_context(|| format!("asking edged at {admin} to upgrade"))?;
            if answer.status != 200 {
                bail!("{}", String::from_utf8_lossy(&answer.body).trim_end());
            }
            let done: edgeplane::upgrade::Upgraded = serde_json::from_slice(&answer.body)?;
            if as_json {
                return print_json(&done);
            }
            println!(
                "upgraded: pid {} serves; pid {} drains and exits",
                done.new_pid, done.old_pid
            );
            Ok(())
        }
        Command::Reload => {
            let mut ask = Once::get("/reload", "edgectl", 1 << 20)?;
            ask.method = http::Method::POST;
            // Compiling a changed component can take a while.
            let answer = send_blocking(admin, ask, Duration::from_secs(300))
                .with_context(|| format!("asking edged at {admin} to reload"))?;
            let text = String::from_utf8_lossy(&answer.body);
            if answer.status != 200 {
                bail!("{}", text.trim_end());
            }
            let report: serde_json::Value = serde_json::from_slice(&answer.body)?;
            if as_json {
                return print_json(&report);
            }
            println!("reloaded: generation {}", report["generation"]);
            for key in ["added", "changed", "removed"] {
                let names: Vec<String> = report[key]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                if !names.is_empty() {
                    println!("  {key}: {}", names.join(", "));
                }
            }
            Ok(())
        }
        _ => {
            let ask = Once::get("/apps", "edgectl", 1 << 20)?;
            let answer = send_blocking(admin, ask, Duration::from_secs(5))
                .with_context(|| format!("asking edged at {admin} for its apps"))?;
            anyhow::ensure!(
                answer.status == 200,
                "edged answered {}: {}",
                answer.status,
                String::from_utf8_lossy(&answer.body).trim_end()
            );
            let versions: edgeplane::admin::Versions = serde_json::from_slice(&answer.body)?;
            if as_json {
                return print_json(&versions);
            }
            let mut t = table(&["app", "version (sha256)", "component"]);
            for app in &versions.apps {
                t.add_row(vec![
                    app.name.clone(),
                    app.digest.get(..16).unwrap_or(&app.digest).to_owned(),
                    app.component.clone(),
                ]);
            }
            println!("{t}");
            println!(
                "generation {}; workers serve {:?}",
                versions.generation, versions.workers
            );
            Ok(())
        }
    }
}
