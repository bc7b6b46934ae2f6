//! The fleet's control plane on NATS JetStream. Every datacenter's edged reads the same buckets,
//! and edgectl writes them:
//!
//! | what | where | key | value |
//! |---|---|---|---|
//! | apps | KV `edgeplane_apps` | app name | one `[[apps]]` table (TOML), its `component = "sha256:<hex>"` |
//! | components | object store `edgeplane_components` | sha256 of the bytes (hex) | the component |
//! | placement pins | KV `edgeplane_placement` | app name | `{"pin": "dc2" \| "local" \| "region"}` |
//! | blocklist, rate limit | KV `edgeplane_guard` | `blocklist`, `rate_limit` | JSON: CIDR list; `[rate_limit]` table |
//! | topology | KV `edgeplane_topology` | `topology` | the topology file (TOML) |
//! | heartbeats | KV `edgeplane_fleet` | datacenter name | [`Heartbeat`] (JSON) |
//! | measurements | stream `EDGEPLANE_MEASUREMENTS`, subject `edgeplane.measurements.<dc>` | | [`Measurements`] (JSON), kept 60 s |
//!
//! edged (`[control] nats = "..."`) watches the buckets, fetches components by hash into its
//! code cache, keeps what it last applied as a snapshot on disk ([`FleetState`]), and applies
//! every change through the live reconfiguration path: the file's settings with the fleet's apps,
//! blocklist and rate limit in place of the file's. Without NATS it serves from the snapshot.

pub mod agent;
pub mod client;
pub mod measurer;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail, ensure};
use serde::{Deserialize, Serialize};

pub const APPS: &str = "edgeplane_apps";
pub const COMPONENTS: &str = "edgeplane_components";
pub const PLACEMENT: &str = "edgeplane_placement";
pub const GUARD: &str = "edgeplane_guard";
pub const TOPOLOGY: &str = "edgeplane_topology";
pub const HEARTBEATS: &str = "edgeplane_fleet";
pub const MEASUREMENTS_STREAM: &str = "EDGEPLANE_MEASUREMENTS";
pub const MEASUREMENTS_SUBJECT: &str = "edgeplane.measurements";

/// Keys of the guard bucket.
pub const BLOCKLIST_KEY: &str = "blocklist";
pub const RATE_LIMIT_KEY: &str = "rate_limit";
/// The topology bucket's key.
pub const TOPOLOGY_KEY: &str = "topology";

/// What a component reference in the apps bucket starts with.
pub const COMPONENT_PREFIX: &str = "sha256:";

/// Largest value edged takes from a bucket (an app table, a guard entry): a bucket is written
/// by operators, but a mistake there must not cost every datacenter its memory.
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// Largest component edged fetches.
pub const MAX_COMPONENT_BYTES: usize = 256 << 20;
/// Apps the fleet may hold.
pub const MAX_APPS: usize = 4096;

pub use crate::config::ControlConfig;

/// Where an app is pinned fleet-wide.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// A datacenter's name, `local` (each datacenter serves it itself) or `region`.
    pub pin: String,
}

/// What this datacenter applied from the fleet: the snapshot it serves from when NATS is away.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetState {
    /// App name -> its `[[apps]]` table, the component a path in the code cache.
    pub apps: BTreeMap<String, toml::Table>,
    pub pins: BTreeMap<String, Pin>,
    pub blocklist: Option<Vec<String>>,
    pub rate_limit: Option<toml::Table>,
    /// The fleet's topology (TOML), used when the file names none.
    #[serde(default)]
    pub topology: Option<String>,
    /// Each bucket's last revision seen.
    pub revisions: BTreeMap<String, u64>,
}

impl FleetState {
    /// The highest revision seen in any bucket: what `edgectl fleet status` compares.
    pub fn revision(&self) -> u64 {
        self.revisions.values().copied().max().unwrap_or(0)
    }

    pub fn load(path: &Path) -> anyhow::Result<Option<Self>> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("reading the fleet snapshot {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Written whole or not at all (a rename), so a crash leaves the previous snapshot.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .and_then(|()| std::fs::rename(&tmp, path))
            .with_context(|| format!("writing the fleet snapshot {}", path.display()))
    }
}

/// The configuration this edged runs: the file's text with the fleet's apps added to its
/// `[[apps]]`, and the fleet's blocklist and rate limit in place of the file's when set; a
/// `[datacenter]` that names no topology gets `fleet_topology`, where the fleet's is written.
pub fn compose(
    file_text: &str,
    state: &FleetState,
    fleet_topology: &Path,
) -> anyhow::Result<String> {
    let mut doc: toml::Table = toml::from_str(file_text).context("the configuration file")?;
    if let (Some(toml::Value::Table(dc)), Some(_)) = (doc.get_mut("datacenter"), &state.topology)
        && !dc.contains_key("topology")
    {
        dc.insert(
            "topology".into(),
            toml::Value::String(fleet_topology.display().to_string()),
        );
    }
    let apps = doc
        .entry("apps")
        .or_insert_with(|| toml::Value::Array(Vec::new()));
    let toml::Value::Array(apps) = apps else {
        bail!("apps: not an array of tables");
    };
    for table in state.apps.values() {
        apps.push(toml::Value::Table(table.clone()));
    }
    if let Some(list) = &state.blocklist {
        doc.insert(
            "blocklist".into(),
            toml::Value::Array(list.iter().cloned().map(toml::Value::String).collect()),
        );
    }
    if let Some(rl) = &state.rate_limit {
        doc.insert("rate_limit".into(), toml::Value::Table(rl.clone()));
    }
    Ok(toml::to_string(&doc)?)
}

/// Whether `name` can be a key in the buckets (NATS KV keys: letters, digits, `-_=.`).
pub fn check_key(name: &str) -> anyhow::Result<()> {
    ensure!(
        !name.is_empty()
            && name.len() <= 255
            && !name.starts_with('.')
            && !name.ends_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_=.".contains(&b)),
        "{name:?}: fleet names are letters, digits and - _ = . (not starting or ending with .)"
    );
    Ok(())
}

/// An app table as the apps bucket holds it: parsed, its name checked, one app.
pub fn parse_app(text: &str) -> anyhow::Result<(String, toml::Table)> {
    ensure!(
        text.len() <= MAX_VALUE_BYTES,
        "an app table of {} bytes; at most {MAX_VALUE_BYTES}",
        text.len()
    );
    let table: toml::Table = toml::from_str(text)?;
    let name = table
        .get("name")
        .and_then(toml::Value::as_str)
        .context("the app has no name")?
        .to_owned();
    check_key(&name)?;
    // The same checks a config file's [[apps]] gets.
    let probe: crate::config::AppConfig = table.clone().try_into().context("app table")?;
    ensure!(probe.name == name);
    // A component in the fleet is named by its hash, never by a path: a path would make every
    // datacenter load whatever file it names, and a digest is also where it is staged.
    let check = |t: &toml::Table| -> anyhow::Result<()> {
        // The same for certificates: a path would have every datacenter read whatever file it
        // names. They stay in each datacenter's own file for now.
        ensure!(
            !t.contains_key("tls"),
            "app {name}: certificates (tls) are not taken from the fleet; give them in each datacenter's file"
        );
        if let Some(c) = t.get("component") {
            let digest = c
                .as_str()
                .and_then(|c| c.strip_prefix(COMPONENT_PREFIX))
                .unwrap_or_default();
            ensure!(
                digest.len() == 64
                    && digest
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "app {name}: a component in the fleet is \"{COMPONENT_PREFIX}<64 hex digits>\" (edgectl deploy uploads it), not {c}"
            );
        }
        Ok(())
    };
    check(&table)?;
    if let Some(toml::Value::Array(fs)) = table.get("functions") {
        for f in fs.iter().filter_map(toml::Value::as_table) {
            check(f)?;
        }
    }
    Ok((name, table))
}

/// The component digests an app table references (the app's and its functions').
pub fn component_refs(table: &toml::Table) -> Vec<String> {
    let mut refs = Vec::new();
    let mut one = |t: &toml::Table| {
        if let Some(r) = t
            .get("component")
            .and_then(toml::Value::as_str)
            .and_then(|c| c.strip_prefix(COMPONENT_PREFIX))
        {
            refs.push(r.to_owned());
        }
    };
    one(table);
    if let Some(toml::Value::Array(fs)) = table.get("functions") {
        for f in fs.iter().filter_map(toml::Value::as_table) {
            one(f);
        }
    }
    refs
}

/// `table` with each `sha256:<hex>` component replaced by `path(hex)`.
pub fn localize_components(mut table: toml::Table, path: impl Fn(&str) -> PathBuf) -> toml::Table {
    let fix = |t: &mut toml::Table| {
        if let Some(r) = t
            .get("component")
            .and_then(toml::Value::as_str)
            .and_then(|c| c.strip_prefix(COMPONENT_PREFIX))
            .map(str::to_owned)
        {
            t.insert(
                "component".into(),
                toml::Value::String(path(&r).display().to_string()),
            );
        }
    };
    fix(&mut table);
    if let Some(toml::Value::Array(fs)) = table.get_mut("functions") {
        for f in fs.iter_mut().filter_map(toml::Value::as_table_mut) {
            fix(f);
        }
    }
    table
}

/// What a datacenter says of itself every heartbeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub datacenter: String,
    /// Unix time (ms) this was sent.
    pub at_ms: u64,
    /// The fleet revision this datacenter serves (see [`FleetState::revision`]).
    pub revision: u64,
    /// Why the last change from the fleet was not applied, if it was not.
    pub error: Option<String>,
    /// Each app's placement verdict here.
    pub apps: edgeplane_placement::StatusTable,
}

pub use crate::placement::measure::{backends_of_tables, unix_ms};
pub use edgeplane_placement::measurements::{
    MEASUREMENTS_MAX_AGE_MS, Measurements, PeerMeasurements, Streamed, Targets, ask_after_waiting,
    peer_backend_us,
};

/// What each datacenter measures for its peers: the backends `state`'s apps call.
pub fn backends_of(state: &FleetState) -> Targets {
    backends_of_tables(state.apps.values())
}

#[cfg(test)]
mod tests {
    use super::*;
    use Streamed::{Fresh, NotYet, Silent};
    use std::time::Duration;

    #[test]
    fn the_fleets_apps_join_the_files_and_its_guard_replaces_the_files() {
        let file = "pin_dir = \"/x\"\nblocklist = [\"10.0.0.0/8\"]\n[[apps]]\nname = \"local\"\nstatic_body = \"hi\"\n";
        let (name, table) = parse_app(&format!(
            "name = \"shop\"\nhosts = [\"shop.test\"]\ncomponent = \"sha256:{}\"\n\
                 [[functions]]\nname = \"db\"\ncomponent = \"sha256:{}\"\n",
            "ab".repeat(32),
            "cd".repeat(32)
        ))
        .unwrap();
        assert_eq!(
            component_refs(&table),
            vec!["ab".repeat(32), "cd".repeat(32)]
        );
        let table = localize_components(table, |h| PathBuf::from(format!("/cache/{h}.wasm")));
        let state = FleetState {
            apps: [(name, table)].into(),
            blocklist: Some(vec!["192.0.2.0/24".into()]),
            ..Default::default()
        };
        let text = compose(file, &state, Path::new("/t.toml")).unwrap();
        let cfg = crate::config::EdgedConfig::parse(&text).unwrap();
        let names: Vec<_> = cfg.apps.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["local", "shop", "shop.db"]);
        assert_eq!(
            cfg.apps[1].component.as_deref(),
            Some(Path::new(&format!("/cache/{}.wasm", "ab".repeat(32))))
        );
        assert_eq!(cfg.blocklist, ["192.0.2.0/24"]);
    }

    #[test]
    fn a_peers_measurement_is_used_while_fresh_and_backends_come_from_the_apps() {
        let m = Measurements {
            datacenter: "dc2".into(),
            at_ms: 100_000,
            backends_us: [("10.0.0.1:80".into(), 5_000)].into(),
            ..Default::default()
        };
        let view = [("dc2".to_owned(), m)].into();
        let at = |peer, backend, http, now| peer_backend_us(&view, peer, backend, http, now);
        assert_eq!(at("dc2", "10.0.0.1:80", false, 105_000), Fresh(5_000));
        assert_eq!(
            at("dc2", "10.0.0.1:80", true, 105_000),
            NotYet,
            "not an HTTP probe"
        );
        assert_eq!(at("dc2", "10.0.0.1:80", false, 111_000), Silent, "stale");
        assert_eq!(at("dc2", "10.0.0.2:80", false, 105_000), NotYet);
        assert_eq!(at("dc3", "10.0.0.1:80", false, 105_000), Silent);
        // A peer's figures stamped far ahead (a hostile or broken clock) are not fresh either.
        for at_ms in [u64::MAX, 200_000] {
            let future = Measurements {
                at_ms,
                ..view["dc2"].clone()
            };
            let v = [("dc2".to_owned(), future)].into();
            assert_eq!(
                peer_backend_us(&v, "dc2", "10.0.0.1:80", false, 105_000),
                Silent,
                "{at_ms}"
            );
        }
        // A backend the peer has not measured yet (its app just arrived) is waited for, a few
        // publications, before the peer is asked; a silent peer is asked at once.
        let grace = Duration::from_secs(3);
        let ask =
            |figure, waited_ms| ask_after_waiting(figure, Duration::from_millis(waited_ms), grace);
        assert!(!ask(NotYet, 0));
        assert!(!ask(NotYet, 2_999));
        assert!(ask(NotYet, 3_000));
        assert!(ask(Silent, 0));
        assert!(!ask(Fresh(1), 10_000));
        let (name, app) = parse_app(&format!(
            "name = \"a\"\nallowed_backends = [\"10.0.0.1:80\"]\n\
             placement = {{ hostname = \"api.example\" }}\n\
             [[functions]]\nname = \"f\"\ncomponent = \"sha256:{}\"\n\
             placement = {{ host = \"10.0.0.7:5432\" }}\n",
            "0".repeat(64)
        ))
        .unwrap();
        let state = FleetState {
            apps: [(name, app)].into(),
            ..Default::default()
        };
        let targets = backends_of(&state);
        assert_eq!(targets.connect, ["10.0.0.1:80", "10.0.0.7:5432"]);
        assert_eq!(targets.http, ["api.example:80"]);
    }

    #[test]
    fn bad_app_tables_and_names_are_refused() {
        assert!(parse_app("hosts = []").is_err(), "no name");
        assert!(parse_app("name = \"a b\"").is_err(), "not a key");
        assert!(
            parse_app("name = \"x\"\nnonsense = 1").is_err(),
            "unknown field"
        );
        assert!(parse_app(&"#".repeat(MAX_VALUE_BYTES + 1)).is_err());
        // Components by hash only: a path, or a "digest" that walks out of the cache, is refused.
        for c in [
            "/etc/evil.wasm",
            "sha256:../../tmp/x",
            "sha256:ABCD",
            "sha256:",
        ] {
            let e = parse_app(&format!("name = \"x\"\ncomponent = \"{c}\"")).unwrap_err();
            assert!(format!("{e:#}").contains("64 hex digits"), "{c}: {e:#}");
        }
        let f = "name = \"x\"\n[[functions]]\nname = \"f\"\ncomponent = \"./f.wasm\"";
        assert!(parse_app(f).is_err(), "a function's component too");
        // Nor a certificate's files: every datacenter would read whatever the paths name.
        let e = parse_app(
            "name = \"x\"\nhosts = [\"x.test\"]\ntls = { cert = \"/etc/shadow\", key = \"/etc/shadow\" }",
        )
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("not taken from the fleet"),
            "{e:#}"
        );
        assert!(check_key("shop.db").is_ok());
        assert!(check_key(".x").is_err() && check_key("é").is_err());
    }

    #[test]
    fn a_snapshot_survives_a_round_trip_and_a_missing_one_is_none() {
        let dir = std::env::temp_dir().join(format!("edgeplane-fleet-{}", std::process::id()));
        let path = dir.join("snap.json");
        assert_eq!(FleetState::load(&path).unwrap(), None);
        let state = FleetState {
            pins: [("a".into(), Pin { pin: "dc2".into() })].into(),
            revisions: [(APPS.into(), 7), (GUARD.into(), 3)].into(),
            ..Default::default()
        };
        state.save(&path).unwrap();
        let back = FleetState::load(&path).unwrap().unwrap();
        assert_eq!(back, state);
        assert_eq!(back.revision(), 7);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
