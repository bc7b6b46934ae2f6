//! edgectl's fleet-wide verbs (`--nats URL`): they write the control plane's buckets, and every
//! datacenter's edged applies them (see `edgeplane::fleet`).

use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::{Context as _, bail};
use async_nats::jetstream::kv;
use edgeplane::fleet::{
    self, APPS, BLOCKLIST_KEY, COMPONENT_PREFIX, GUARD, Heartbeat, PLACEMENT, Pin,
    client::{FleetClient, NatsTarget},
};
use futures_util::StreamExt as _;
use serde_json::json;

use crate::{
    Cli, Command, FleetCmd,
    app::AppCmd,
    block::BlockCmd,
    output::{print_json, table},
    placement::PlacementCmd,
    ratelimit::{RateLimitCmd, rate_limit_section},
};

/// The fleet-wide verbs, when `--nats` is given (or needed); None: not a fleet verb.
pub(crate) fn run(cli: &Cli) -> Option<anyhow::Result<()>> {
    let target = cli.nats.as_deref().map(|url| nats_target(cli, url));
    let need = || -> anyhow::Result<&NatsTarget> {
        match &target {
            Some(Ok(t)) => Ok(t),
            Some(Err(e)) => Err(anyhow::anyhow!("{e:#}")),
            None => bail!("this verb needs the fleet's NATS: give --nats or EDGEPLANE_NATS"),
        }
    };
    let given = target.is_some();
    Some(match (&cli.command, given) {
        (Command::Deploy { file, component }, _) => {
            need().and_then(|u| deploy(u, file, component.as_deref(), cli.json))
        }
        (Command::Fleet(FleetCmd::Status), _) => need().and_then(|u| status(u, cli.json)),
        (Command::Fleet(FleetCmd::Topology { file }), _) => need().and_then(|u| topology(u, file)),
        (Command::App(AppCmd::Rm { name }), true) => need().and_then(|u| app_rm(u, name)),
        (Command::Placement(PlacementCmd::Pin { app, target }), true) => {
            need().and_then(|u| pin(u, app, target))
        }
        (Command::Placement(PlacementCmd::Unpin { app }), true) => {
            need().and_then(|u| unpin(u, app))
        }
        (Command::Ratelimit(cmd @ RateLimitCmd::Set { .. }), true) => {
            need().and_then(|u| rate_limit(u, &rate_limit_section(cmd)))
        }
        (Command::Block(BlockCmd::Add { cidr }), true) => {
            need().and_then(|u| block(u, &cidr.to_string(), true))
        }
        (Command::Block(BlockCmd::Rm { cidr }), true) => {
            need().and_then(|u| block(u, &cidr.to_string(), false))
        }
        _ => return None,
    })
}

/// `--nats`, over mutual TLS when `--nats-ca` (with `--nats-cert` and `--nats-key`) is given.
fn nats_target(cli: &Cli, url: &str) -> anyhow::Result<NatsTarget> {
    match (&cli.nats_ca, &cli.nats_cert, &cli.nats_key) {
        (Some(ca), Some(cert), Some(key)) => NatsTarget::with_tls(
            url,
            &edgeplane::config::tls::IdentityFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
            },
        ),
        (None, None, None) => Ok(NatsTarget::plain(url)),
        _ => bail!("--nats-ca, --nats-cert and --nats-key go together"),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")
}

async fn connect(nats: &NatsTarget) -> anyhow::Result<FleetClient> {
    FleetClient::connect(nats, Duration::from_secs(5)).await
}

/// `edgectl deploy <app.toml> [--component x.wasm]`: uploads the app's components (once: the
/// object store keys them by hash) and publishes its table.
pub fn deploy(
    nats: &NatsTarget,
    file: &Path,
    component: Option<&Path>,
    as_json: bool,
) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mut table: toml::Table =
        toml::from_str(&text).with_context(|| format!("in {}", file.display()))?;
    if let Some(c) = component {
        table.insert(
            "component".into(),
            toml::Value::String(c.display().to_string()),
        );
    }
    // Checked as edged will check it (VIPs, hints, functions) before anything is uploaded.
    let alone: toml::Table = [(
        "apps".to_owned(),
        toml::Value::Array(vec![toml::Value::Table(table.clone())]),
    )]
    .into_iter()
    .collect();
    edgeplane::config::EdgedConfig::parse(&toml::to_string(&alone)?)
        .map_err(|e| anyhow::anyhow!("{}: {e:#}", file.display()))?;
    let base = file.parent().unwrap_or(Path::new("."));
    runtime()?.block_on(async {
        let client = connect(nats).await?;
        let mut uploaded = Vec::new();
        let mut upload = async |t: &mut toml::Table| -> anyhow::Result<()> {
            let Some(path) = t.get("component").and_then(toml::Value::as_str) else {
                return Ok(());
            };
            if path.starts_with(COMPONENT_PREFIX) {
                return Ok(());
            }
            let path = base.join(path);
            let wasm =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let digest = client.upload_component(&wasm).await?;
            uploaded.push(digest.clone());
            t.insert(
                "component".into(),
                toml::Value::String(format!("{COMPONENT_PREFIX}{digest}")),
            );
            Ok(())
        };
        upload(&mut table).await?;
        if let Some(toml::Value::Array(fs)) = table.get_mut("functions") {
            for f in fs.iter_mut().filter_map(toml::Value::as_table_mut) {
                upload(f).await?;
            }
        }
        let text = toml::to_string(&table)?;
        let (name, _) =
            fleet::parse_app(&text).with_context(|| format!("in {}", file.display()))?;
        let revision = client.apps().await?.put(&name, text.into()).await?;
        if as_json {
            return print_json(
                &json!({ "app": name, "revision": revision, "components": uploaded }),
            );
        }
        println!("deployed {name} (revision {revision}; components {uploaded:?})");
        Ok(())
    })
}

/// `edgectl --nats URL fleet topology <file>`: checked, then published.
pub fn topology(nats: &NatsTarget, file: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let topology = edgeplane::topology::Topology::parse(&text)
        .with_context(|| format!("in {}", file.display()))?;
    runtime()?.block_on(async {
        let store = connect(nats).await?.topology().await?;
        let revision = store
            .put(fleet::TOPOLOGY_KEY, topology.to_toml().into())
            .await?;
        println!(
            "topology published (revision {revision}; {} datacenters)",
            topology.datacenters.len()
        );
        Ok(())
    })
}

/// `edgectl --nats URL app rm <name>`.
pub fn app_rm(nats: &NatsTarget, name: &str) -> anyhow::Result<()> {
    fleet::check_key(name)?;
    runtime()?.block_on(async {
        let apps = connect(nats).await?.apps().await?;
        if apps.get(name).await?.is_none() {
            bail!("no app {name:?} in the fleet");
        }
        apps.delete(name).await?;
        println!("removed {name} from the fleet");
        Ok(())
    })
}

/// `edgectl --nats URL placement pin <app> <datacenter|local|region>`.
pub fn pin(nats: &NatsTarget, app: &str, target: &str) -> anyhow::Result<()> {
    fleet::check_key(app)?;
    runtime()?.block_on(async {
        let pins = connect(nats).await?.placement().await?;
        let pin = Pin {
            pin: target.to_owned(),
        };
        pins.put(app, serde_json::to_vec(&pin)?.into()).await?;
        println!("{app} pinned at {target} fleet-wide");
        Ok(())
    })
}

/// `edgectl --nats URL placement unpin <app>`.
pub fn unpin(nats: &NatsTarget, app: &str) -> anyhow::Result<()> {
    fleet::check_key(app)?;
    runtime()?.block_on(async {
        connect(nats).await?.placement().await?.delete(app).await?;
        println!("{app} unpinned fleet-wide");
        Ok(())
    })
}

/// `edgectl --nats URL block add|rm <cidr>`: the fleet's blocklist, changed by
/// compare-and-set so two operators at once lose nothing.
pub fn block(nats: &NatsTarget, cidr: &str, add: bool) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let guard = connect(nats).await?.guard().await?;
        for _ in 0..10 {
            let entry = guard
                .entry(BLOCKLIST_KEY)
                .await?
                .filter(|e| e.operation == kv::Operation::Put);
            let mut list: Vec<String> = match &entry {
                Some(e) => serde_json::from_slice(&e.value).context("the fleet's blocklist")?,
                None => Vec::new(),
            };
            let had = list.iter().any(|c| c == cidr);
            match (add, had) {
                (true, false) => list.push(cidr.to_owned()),
                (false, true) => list.retain(|c| c != cidr),
                _ => {
                    println!("nothing to change");
                    return Ok(());
                }
            }
            let value = serde_json::to_vec(&list)?;
            let written = match &entry {
                Some(e) => guard
                    .update(BLOCKLIST_KEY, value.into(), e.revision)
                    .await
                    .is_ok(),
                None => guard.create(BLOCKLIST_KEY, value.into()).await.is_ok(),
            };
            if written {
                println!("fleet blocklist: {}", list.join(", "));
                return Ok(());
            }
        }
        bail!("the fleet's blocklist kept changing under this edit; try again")
    })
}

/// `edgectl --nats URL ratelimit set ...`: the fleet's `[rate_limit]`, checked as a config
/// file's would be before it is published.
pub fn rate_limit(
    nats: &NatsTarget,
    section: &edgeplane::config::RateLimitSection,
) -> anyhow::Result<()> {
    let table = serde_json::to_value(section)?;
    let as_toml: toml::Table = serde_json::from_value(table.clone())?;
    edgeplane::config::EdgedConfig::parse(&toml::to_string(
        &[("rate_limit".to_owned(), toml::Value::Table(as_toml))]
            .into_iter()
            .collect::<toml::Table>(),
    )?)
    .context("the rate limit")?;
    runtime()?.block_on(async {
        let guard = connect(nats).await?.guard().await?;
        guard
            .put(fleet::RATE_LIMIT_KEY, serde_json::to_vec(section)?.into())
            .await?;
        println!("fleet rate limit: {table}");
        Ok(())
    })
}

/// `edgectl --nats URL fleet status`: each datacenter's last heartbeat, the revision it serves
/// against the fleet's, and its apps' placement verdicts.
pub fn status(nats: &NatsTarget, as_json: bool) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let client = connect(nats).await?;
        let mut current = 0;
        for bucket in [APPS, PLACEMENT, GUARD, fleet::TOPOLOGY] {
            client.kv(bucket).await?;
            current = current.max(client.revision(bucket).await?);
        }
        let beats = client.heartbeats().await?;
        let mut all: BTreeMap<String, Heartbeat> = BTreeMap::new();
        let mut keys = beats.keys().await?;
        while let Some(k) = keys.next().await {
            let k = k?;
            if let Some(v) = beats.get(&k).await? {
                all.insert(k, serde_json::from_slice(&v)?);
            }
        }
        let now = fleet::unix_ms();
        if as_json {
            return print_json(&json!({ "revision": current, "datacenters": all }));
        }
        println!("fleet revision {current}");
        let mut t = table(&["datacenter", "heartbeat", "revision", "apps", "error"]);
        for (dc, h) in &all {
            let apps: Vec<String> = h.apps.iter().map(|(a, s)| format!("{a}: {s}")).collect();
            let behind = if h.revision >= current {
                ""
            } else {
                " (behind)"
            };
            t.add_row(vec![
                dc.clone(),
                format!("{:.1} s ago", now.saturating_sub(h.at_ms) as f64 / 1e3),
                format!("{}{behind}", h.revision),
                apps.join("\n"),
                h.error.clone().unwrap_or_default(),
            ]);
        }
        println!("{t}");
        Ok(())
    })
}
