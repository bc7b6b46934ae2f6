//! The verbs the running edged answers over its admin endpoint (not the pinned maps): reload,
//! upgrade, the app versions and the certificates it serves.

use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::{
    Command,
    output::{print_json, table},
};

/// `edgectl reload`, `upgrade`, `app versions` and `certs`: asked of the running edged, not the
/// maps.
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
        Command::Certs { warn_days, check } => certs(admin, *warn_days, *check, as_json),
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
            let versions: edgeplane::admin::Versions = get_json(admin, "/apps", "its apps")?;
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

/// `edgectl certs`: the served certificates, and a warning for each close to its end.
fn certs(
    admin: std::net::SocketAddr,
    warn_days: u64,
    check: bool,
    as_json: bool,
) -> anyhow::Result<()> {
    use edgeplane::certs::{CertInfo, Expiry, expiry};
    let certs: Vec<CertInfo> = get_json(admin, "/certificates", "its certificates")?;
    if as_json {
        return print_json(&certs);
    }
    if certs.is_empty() {
        println!("edged serves no certificate (plain HTTP only)");
        return Ok(());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let warn = Duration::from_secs(warn_days.saturating_mul(86_400));
    let mut t = table(&["whose", "names", "subject", "issuer", "expires", "left"]);
    let mut warnings = Vec::new();
    for c in &certs {
        let state = expiry(c, now, warn);
        let until = httpdate::fmt_http_date(
            std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(c.not_after).unwrap_or(0)),
        );
        let left = match state {
            Expiry::Valid { days_left } => format!("{days_left} days"),
            Expiry::Soon { days_left } => {
                warnings.push(format!(
                    "{}'s certificate ({}) expires in {days_left} days, {until}",
                    c.whose(),
                    c.subject
                ));
                format!("{days_left} days (soon)")
            }
            Expiry::Expired { days_ago } => {
                warnings.push(format!(
                    "{}'s certificate ({}) EXPIRED {days_ago} days ago, {until}",
                    c.whose(),
                    c.subject
                ));
                "EXPIRED".to_owned()
            }
            Expiry::NotYet => {
                warnings.push(format!(
                    "{}'s certificate ({}) is not valid yet",
                    c.whose(),
                    c.subject
                ));
                "not yet valid".to_owned()
            }
        };
        t.add_row(vec![
            c.whose(),
            c.names.join(", "),
            c.subject.clone(),
            c.issuer.clone(),
            until,
            left,
        ]);
    }
    println!("{t}");
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    if check && !warnings.is_empty() {
        bail!("{} certificate(s) need attention", warnings.len());
    }
    Ok(())
}

/// GET `path` of edged's admin endpoint, as JSON; `what` says what was asked for in errors.
fn get_json<T: serde::de::DeserializeOwned>(
    admin: std::net::SocketAddr,
    path: &str,
    what: &str,
) -> anyhow::Result<T> {
    use edgeplane_dataplane::client::oneshot::{Once, send_blocking};
    let answer = send_blocking(
        admin,
        Once::get(path, "edgectl", 1 << 20)?,
        Duration::from_secs(5),
    )
    .with_context(|| format!("asking edged at {admin} for {what}"))?;
    anyhow::ensure!(
        answer.status == 200,
        "edged answered {}: {}",
        answer.status,
        String::from_utf8_lossy(&answer.body).trim_end()
    );
    Ok(serde_json::from_slice(&answer.body)?)
}
