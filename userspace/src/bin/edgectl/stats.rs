//! `edgectl stats`: per-app rates and drop counts, summed over CPUs, from two samples.

use std::{collections::BTreeMap, time::Duration};

use anyhow::bail;
use clap::Args;
use edgeplane::PinnedMaps;
use edgeplane_abi::{AppStats, DropReason, UNCLASSIFIED_APP};
use serde::Serialize;

use crate::output::{print_json, table};

#[derive(Args)]
pub struct StatsArgs {
    /// Seconds between the two samples rates are computed from.
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,
}

/// One row of `edgectl stats`.
#[derive(Serialize)]
struct StatsRow {
    app: String,
    id: u32,
    packets: u64,
    bytes: u64,
    new_flows: u64,
    pps: f64,
    bps: f64,
    new_flows_per_sec: f64,
    drops: BTreeMap<&'static str, u64>,
    drops_per_sec: f64,
}

pub fn run(maps: &PinnedMaps, args: &StatsArgs, as_json: bool) -> anyhow::Result<()> {
    if !(0.0..=3600.0).contains(&args.interval) {
        bail!("--interval must be between 0 and 3600 seconds");
    }
    let reader = maps.stats_reader()?;
    let first = reader.all()?;
    std::thread::sleep(Duration::from_secs_f64(args.interval));
    let second = reader.all()?;
    let names = maps.app_names()?;
    let rows = rows(&first, &second, &names, args.interval);
    if as_json {
        return print_json(&rows);
    }
    print_table(&rows);
    Ok(())
}

/// One row per app (the unclassified first, when it saw traffic), rates over `interval` seconds.
fn rows(
    first: &BTreeMap<u32, AppStats>,
    second: &BTreeMap<u32, AppStats>,
    names: &BTreeMap<u32, String>,
    interval: f64,
) -> Vec<StatsRow> {
    let secs = interval.max(1e-9);
    // A counter that went back (the maps were re-created between the samples) rates 0.
    let rate = |a: u64, b: u64| {
        if interval > 0.0 {
            b.saturating_sub(a) as f64 / secs
        } else {
            0.0
        }
    };
    let mut ids: Vec<u32> = names.keys().copied().collect();
    if second.contains_key(&UNCLASSIFIED_APP) {
        ids.insert(0, UNCLASSIFIED_APP);
    }
    ids.into_iter()
        .map(|id| {
            let zero = AppStats::default();
            let (a, b) = (
                first.get(&id).unwrap_or(&zero),
                second.get(&id).unwrap_or(&zero),
            );
            StatsRow {
                app: names
                    .get(&id)
                    .cloned()
                    .unwrap_or_else(|| "(unclassified)".to_owned()),
                id,
                packets: b.packets,
                bytes: b.bytes,
                new_flows: b.new_flows,
                pps: rate(a.packets, b.packets),
                bps: 8.0 * rate(a.bytes, b.bytes),
                new_flows_per_sec: rate(a.new_flows, b.new_flows),
                drops: DropReason::ALL
                    .iter()
                    .filter(|r| b.drops[**r as usize] > 0)
                    .map(|r| (r.name(), b.drops[*r as usize]))
                    .collect(),
                drops_per_sec: rate(a.total_drops(), b.total_drops()),
            }
        })
        .collect()
}

fn print_table(rows: &[StatsRow]) {
    let mut t = table(&[
        "app",
        "id",
        "pps",
        "bit/s",
        "new flows/s",
        "packets",
        "bytes",
        "drops/s",
        "drops (total, by reason)",
    ]);
    for r in rows {
        let drops = r
            .drops
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        t.add_row(vec![
            r.app.clone(),
            r.id.to_string(),
            format!("{:.0}", r.pps),
            format!("{:.0}", r.bps),
            format!("{:.1}", r.new_flows_per_sec),
            r.packets.to_string(),
            r.bytes.to_string(),
            format!("{:.0}", r.drops_per_sec),
            drops,
        ]);
    }
    println!("{t}");
}
