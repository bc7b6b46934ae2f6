//! The pinned maps brought in line with a configuration: at start, and on every reload. The
//! plan is a pure function of the configuration applied before, the new one, and what the maps
//! hold; `apply` carries it out. What an operator added by hand (`edgectl block add`, an app
//! the config never named) is left alone; what a configuration put there and the next one
//! dropped is removed.

use anyhow::Context as _;
use edgeplane_abi::app_flags;

use crate::{
    PinnedMaps,
    addr::{Cidr, Vip},
    config::{AppConfig, EdgedConfig},
    maps::AppInfo,
};

/// One app as the maps should hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppEntry {
    pub name: String,
    pub id: Option<u32>,
    pub vips: Vec<Vip>,
    pub flags: u32,
}

/// What to change in the maps, in order: removals first, so a VIP or id moving between apps
/// is free when its new app claims it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapPlan {
    pub remove_apps: Vec<String>,
    pub remove_vips: Vec<Vip>,
    pub upsert_apps: Vec<AppEntry>,
    pub block_remove: Vec<Cidr>,
    pub block_add: Vec<Cidr>,
}

fn entry(app: &AppConfig) -> anyhow::Result<AppEntry> {
    let vips = app
        .vips
        .iter()
        .map(|v| v.parse::<Vip>())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("app {}", app.name))?;
    let flags = if app.steer { 0 } else { app_flags::NO_STEER }
        | if app.rate_limit {
            0
        } else {
            app_flags::NO_RATE_LIMIT
        };
    Ok(AppEntry {
        name: app.name.clone(),
        id: app.id,
        vips,
        flags,
    })
}

fn cidrs(cfg: &EdgedConfig) -> anyhow::Result<Vec<Cidr>> {
    cfg.blocklist
        .iter()
        .map(|c| c.parse::<Cidr>().map_err(anyhow::Error::from))
        .collect()
}

/// The changes that take the maps from `current` (as `list_apps` reads them) and the
/// configuration applied before (`old`, None at start) to `new`.
pub fn plan(
    old: Option<&EdgedConfig>,
    new: &EdgedConfig,
    current: &[AppInfo],
) -> anyhow::Result<MapPlan> {
    let mut plan = MapPlan::default();
    let wanted: Vec<AppEntry> = new.apps.iter().map(entry).collect::<Result<_, _>>()?;
    if let Some(old) = old {
        for app in &old.apps {
            if !wanted.iter().any(|w| w.name == app.name) {
                plan.remove_apps.push(app.name.clone());
            }
        }
    }
    for app in &wanted {
        // A VIP the app has in the maps and no longer in the config.
        if let Some(info) = current.iter().find(|i| i.name == app.name) {
            for vip in &info.vips {
                if let Ok(vip) = vip.parse::<Vip>()
                    && !app.vips.contains(&vip)
                {
                    plan.remove_vips.push(vip);
                }
            }
        }
    }
    plan.upsert_apps = wanted;
    let new_blocks = cidrs(new)?;
    if let Some(old) = old {
        for cidr in cidrs(old)? {
            if !new_blocks.contains(&cidr) {
                plan.block_remove.push(cidr);
            }
        }
    }
    plan.block_add = new_blocks;
    Ok(plan)
}

/// Carries out `plan`, then the settings that are one value each (rate limit, worker load
/// threshold). `workers` is the worker count in effect.
pub fn apply(
    maps: &PinnedMaps,
    plan: &MapPlan,
    cfg: &EdgedConfig,
    workers: u32,
) -> anyhow::Result<()> {
    for name in &plan.remove_apps {
        match maps.remove_app(name) {
            Ok(id) => tracing::info!(app = %name, id, "app removed from the maps"),
            Err(crate::MapsError::UnknownApp(_)) => {}
            Err(e) => return Err(e).with_context(|| format!("removing app {name}")),
        }
    }
    maps.remove_vips(&plan.remove_vips)?;
    for app in &plan.upsert_apps {
        let id = maps
            .add_app(&app.name, app.id, &app.vips, app.flags)
            .with_context(|| format!("app {}", app.name))?;
        tracing::debug!(app = %app.name, id, vips = ?app.vips, "app configured");
    }
    for cidr in &plan.block_remove {
        match maps.block_remove(*cidr) {
            Ok(()) | Err(crate::MapsError::NotBlocked(_)) => {}
            Err(e) => return Err(e).with_context(|| format!("unblocking {cidr}")),
        }
    }
    for cidr in &plan.block_add {
        maps.block_add(*cidr)?;
    }
    // Pins from an older edged may hold a blocklist without its IPv4 summary.
    maps.sync_block_v4()?;
    let w = &cfg.workers;
    maps.configure_workers(workers, w.load_threshold, w.steer, w.cpumap_queue_size)?;
    maps.set_rate_limit(cfg.rate_limit.map_entry())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> EdgedConfig {
        EdgedConfig::parse(text).unwrap()
    }

    fn info(name: &str, vips: &[&str]) -> AppInfo {
        AppInfo {
            id: 1,
            name: name.into(),
            vips: vips.iter().map(|v| v.to_string()).collect(),
            no_steer: false,
            no_rate_limit: false,
        }
    }

    const OLD: &str = r#"
blocklist = ["192.0.2.0/24", "198.51.100.7/32"]
[[apps]]
name = "a"
vips = ["10.0.0.1:80/tcp", "10.0.0.2:80/tcp"]
[[apps]]
name = "b"
vips = ["10.0.0.3:80/tcp"]
"#;

    #[test]
    fn dropped_apps_vips_and_prefixes_are_removed_and_the_rest_kept() {
        let new = cfg(r#"
blocklist = ["198.51.100.7/32", "203.0.113.0/24"]
[[apps]]
name = "a"
vips = ["10.0.0.1:80/tcp"]
[[apps]]
name = "c"
vips = ["10.0.0.3:80/tcp"]
"#);
        let current = [
            info("a", &["10.0.0.1:80/tcp", "10.0.0.2:80/tcp"]),
            info("b", &["10.0.0.3:80/tcp"]),
            info("by-hand", &["10.9.9.9:80/tcp"]),
        ];
        let p = plan(Some(&cfg(OLD)), &new, &current).unwrap();
        assert_eq!(p.remove_apps, ["b"]);
        assert_eq!(p.remove_vips, ["10.0.0.2:80/tcp".parse::<Vip>().unwrap()]);
        let names: Vec<_> = p.upsert_apps.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["a", "c"]);
        assert_eq!(p.block_remove, ["192.0.2.0/24".parse::<Cidr>().unwrap()]);
        assert_eq!(p.block_add.len(), 2);
    }

    #[test]
    fn at_start_nothing_outside_the_config_is_removed() {
        let current = [
            info("a", &["10.0.0.1:80/tcp", "10.0.0.9:80/tcp"]),
            info("x", &[]),
        ];
        let p = plan(None, &cfg(OLD), &current).unwrap();
        assert!(p.remove_apps.is_empty() && p.block_remove.is_empty());
        // A configured app's VIPs are exactly the config's, even at start.
        assert_eq!(p.remove_vips, ["10.0.0.9:80/tcp".parse::<Vip>().unwrap()]);
    }

    #[test]
    fn the_same_config_changes_nothing_but_rewrites_its_entries() {
        let current = [
            info("a", &["10.0.0.1:80/tcp", "10.0.0.2:80/tcp"]),
            info("b", &["10.0.0.3:80/tcp"]),
        ];
        let p = plan(Some(&cfg(OLD)), &cfg(OLD), &current).unwrap();
        assert!(p.remove_apps.is_empty() && p.remove_vips.is_empty() && p.block_remove.is_empty());
    }
}
