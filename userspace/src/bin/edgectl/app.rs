//! `edgectl app`: apps and the VIPs that route to them, in this host's maps.

use clap::Subcommand;
use edgeplane::{PinnedMaps, addr::Vip};
use edgeplane_abi::app_flags;
use serde_json::json;

use crate::output::{print_json, table};

#[derive(Subcommand)]
pub enum AppCmd {
    /// Add an app, or more VIPs to an existing one.
    Add {
        name: String,
        /// ADDR:PORT/PROTO, for example 10.0.0.1:80/tcp or [2001:db8::1]:443/udp (repeatable).
        #[arg(long = "vip", required = true)]
        vips: Vec<Vip>,
        /// App id (default: the lowest free one).
        #[arg(long)]
        id: Option<u32>,
        /// Do not steer this app's flows to worker CPUs.
        #[arg(long)]
        no_steer: bool,
        /// Exempt this app from the per-source rate limit.
        #[arg(long)]
        no_rate_limit: bool,
    },
    /// Remove an app with its VIPs and placement.
    Rm {
        name: String,
    },
    List,
    /// The component version (content hash) each app serves, and the configuration
    /// generation each worker serves.
    Versions,
}

pub fn run(maps: &PinnedMaps, cmd: AppCmd, as_json: bool) -> anyhow::Result<()> {
    match cmd {
        AppCmd::Add {
            name,
            vips,
            id,
            no_steer,
            no_rate_limit,
        } => {
            let flags = if no_steer { app_flags::NO_STEER } else { 0 }
                | if no_rate_limit {
                    app_flags::NO_RATE_LIMIT
                } else {
                    0
                };
            let id = maps.add_app(&name, id, &vips, flags)?;
            if as_json {
                print_json(&json!({ "app": name, "id": id }))?;
            } else {
                println!(
                    "app {name} (id {id}): {}",
                    vips.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        AppCmd::Rm { name } => {
            let id = maps.remove_app(&name)?;
            if !as_json {
                println!("removed app {name} (id {id})");
            }
        }
        AppCmd::List => {
            let apps = maps.list_apps()?;
            if as_json {
                return print_json(&apps);
            }
            let mut t = table(&["id", "app", "vips", "flags"]);
            for a in apps {
                let flags = [(a.no_steer, "no-steer"), (a.no_rate_limit, "no-rate-limit")]
                    .iter()
                    .filter(|(on, _)| *on)
                    .map(|(_, n)| *n)
                    .collect::<Vec<_>>()
                    .join(",");
                t.add_row(vec![a.id.to_string(), a.name, a.vips.join(" "), flags]);
            }
            println!("{t}");
        }
        AppCmd::Versions => unreachable!("asked of edged"),
    }
    Ok(())
}
