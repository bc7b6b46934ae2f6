//! `edgectl placement`: where each app runs, in this host's PLACEMENT map, beside the placement
//! engine's verdict from edged's admin endpoint.

use std::{collections::BTreeMap, time::Duration};

use clap::Subcommand;
use edgeplane::PinnedMaps;
use edgeplane_abi::{Placement, placement_flags, placement_kind};
use serde_json::json;

use crate::output::{print_json, table};

#[derive(Subcommand)]
pub enum PlacementCmd {
    /// Set where an app runs: `local`, `region`, or `dc=<id>`.
    Set {
        app: String,
        target: PlacementTarget,
        /// Mark as pinned by hand: the placement engine leaves it alone.
        #[arg(long)]
        pin: bool,
    },
    /// Pin an app by hand (`set --pin`): the placement engine leaves it alone. With --nats,
    /// at every datacenter: the target is `local`, `region` or a datacenter's name.
    Pin {
        app: String,
        target: String,
    },
    /// Hand a pinned app back to the placement engine (it stays where it is until the engine
    /// decides).
    Unpin {
        app: String,
    },
    Get {
        app: String,
    },
    List,
}

#[derive(Clone, Copy, Debug)]
pub struct PlacementTarget {
    pub kind: u32,
    pub datacenter: u32,
}

impl std::str::FromStr for PlacementTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "local" => Ok(Self {
                kind: placement_kind::LOCAL,
                datacenter: 0,
            }),
            "region" => Ok(Self {
                kind: placement_kind::REGION,
                datacenter: 0,
            }),
            _ => s
                .strip_prefix("dc=")
                .and_then(|id| id.parse().ok())
                .map(|datacenter| Self {
                    kind: placement_kind::DATACENTER,
                    datacenter,
                })
                .ok_or_else(|| format!("{s:?}: expected local, region or dc=<id>")),
        }
    }
}

fn placement_json(app: &str, id: u32, p: &Placement) -> serde_json::Value {
    let kind = match p.kind {
        placement_kind::LOCAL => "local",
        placement_kind::DATACENTER => "datacenter",
        placement_kind::REGION => "region",
        _ => "unknown",
    };
    json!({
        "app": app,
        "id": id,
        "kind": kind,
        "datacenter": (p.kind == placement_kind::DATACENTER).then_some(p.datacenter),
        "pinned": p.flags & placement_flags::PINNED != 0,
        "smart": p.flags & placement_flags::SMART != 0,
    })
}

fn placement_text(p: &Placement) -> String {
    let mut s = match p.kind {
        placement_kind::LOCAL => "local".to_owned(),
        placement_kind::DATACENTER => format!("dc={}", p.datacenter),
        placement_kind::REGION => "region".to_owned(),
        other => format!("unknown({other})"),
    };
    if p.flags & placement_flags::PINNED != 0 {
        s.push_str(" (pinned)");
    }
    s
}

/// The placement engine's verdict per app, from edged's admin endpoint (None when it does not
/// answer: edged stopped, or not part of a topology).
fn engine_status(admin: std::net::SocketAddr) -> Option<edgeplane_placement::StatusTable> {
    use edgeplane_dataplane::client::oneshot::{Once, send_blocking};
    let ask = Once::get("/placement", "edgectl", 1 << 20).ok()?;
    let answer = send_blocking(admin, ask, Duration::from_secs(2)).ok()?;
    (answer.status == 200)
        .then(|| serde_json::from_slice(&answer.body).ok())
        .flatten()
}

pub fn run(
    maps: &PinnedMaps,
    cmd: PlacementCmd,
    admin: std::net::SocketAddr,
    as_json: bool,
) -> anyhow::Result<()> {
    match cmd {
        PlacementCmd::Set { app, target, pin } => {
            let id = maps.app_id(&app)?;
            let p = Placement {
                kind: target.kind,
                datacenter: target.datacenter,
                flags: if pin { placement_flags::PINNED } else { 0 },
                _reserved: 0,
            };
            maps.set_placement(id, p)?;
            show(&app, id, &p, as_json)
        }
        PlacementCmd::Pin { app, target } => {
            let target = target
                .parse::<PlacementTarget>()
                .map_err(anyhow::Error::msg)?;
            run(
                maps,
                PlacementCmd::Set {
                    app,
                    target,
                    pin: true,
                },
                admin,
                as_json,
            )
        }
        PlacementCmd::Unpin { app } => {
            let id = maps.app_id(&app)?;
            let mut p = maps.placement(id)?;
            p.flags &= !placement_flags::PINNED;
            maps.set_placement(id, p)?;
            show(&app, id, &p, as_json)
        }
        PlacementCmd::Get { app } => {
            let id = maps.app_id(&app)?;
            show(&app, id, &maps.placement(id)?, as_json)
        }
        PlacementCmd::List => list(maps, admin, as_json),
    }
}

/// One app's entry, as JSON or a line.
fn show(app: &str, id: u32, p: &Placement, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        print_json(&placement_json(app, id, p))
    } else {
        println!("{app}: {}", placement_text(p));
        Ok(())
    }
}

/// Every app's entry beside the engine's verdict (when edged answers).
fn list(maps: &PinnedMaps, admin: std::net::SocketAddr, as_json: bool) -> anyhow::Result<()> {
    let names = maps.app_names()?;
    let placed: BTreeMap<u32, Placement> = maps.placement_list()?.into_iter().collect();
    let rows: Vec<(u32, String, Placement)> = names
        .into_iter()
        .map(|(id, name)| (id, name, placed.get(&id).copied().unwrap_or_default()))
        .collect();
    let status = engine_status(admin);
    let status_of = |app: &str| status.as_ref().and_then(|s| s.get(app)).cloned();
    if as_json {
        let v: Vec<_> = rows
            .iter()
            .map(|(id, n, p)| {
                let mut j = placement_json(n, *id, p);
                j["status"] = serde_json::to_value(status_of(n)).unwrap_or_default();
                j
            })
            .collect();
        return print_json(&v);
    }
    let mut t = table(&["app", "id", "placement", "status"]);
    for (id, n, p) in rows {
        let st = status_of(&n).map_or_else(|| "-".into(), |s| s.to_string());
        t.add_row(vec![n, id.to_string(), placement_text(&p), st]);
    }
    println!("{t}");
    if status.is_none() {
        eprintln!("(no engine status: edged's admin endpoint {admin} did not answer /placement)");
    }
    Ok(())
}
