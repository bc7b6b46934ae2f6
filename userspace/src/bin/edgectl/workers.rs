//! `edgectl workers`: worker steering (CPUMAP + SO_REUSEPORT selection), in this host's maps.

use clap::Subcommand;
use edgeplane::PinnedMaps;
use edgeplane_abi::{WorkerConfig, worker_flags};
use serde_json::json;

use crate::output::{print_json, table};

#[derive(Subcommand)]
pub enum WorkersCmd {
    Show,
    Set {
        #[arg(long)]
        count: Option<u32>,
        /// In-flight requests above which select_worker picks the least loaded worker (0: off).
        #[arg(long)]
        load_threshold: Option<u32>,
        /// Redirect app flows to their worker's CPU through CPUMAP.
        #[arg(long)]
        steer: Option<bool>,
    },
}

pub fn run(maps: &PinnedMaps, cmd: WorkersCmd, as_json: bool) -> anyhow::Result<()> {
    match cmd {
        WorkersCmd::Show => {
            let cfg = maps.worker_config()?;
            let loads = maps.worker_loads(cfg.n_workers)?;
            let steer = cfg.flags & worker_flags::STEER_CPUMAP != 0;
            if as_json {
                let l: Vec<_> = loads
                    .iter()
                    .map(|l| json!({ "in_flight": l.in_flight, "served": l.served }))
                    .collect();
                return print_json(
                    &json!({ "count": cfg.n_workers, "load_threshold": cfg.load_threshold, "steer": steer, "workers": l }),
                );
            }
            println!(
                "{} workers, steering {}, load threshold {}",
                cfg.n_workers,
                if steer { "on" } else { "off" },
                cfg.load_threshold
            );
            let mut t = table(&["worker (cpu)", "in flight", "served"]);
            for (i, l) in loads.iter().enumerate() {
                t.add_row(vec![
                    i.to_string(),
                    l.in_flight.to_string(),
                    l.served.to_string(),
                ]);
            }
            println!("{t}");
        }
        WorkersCmd::Set {
            count,
            load_threshold,
            steer,
        } => {
            let mut cfg: WorkerConfig = maps.worker_config()?;
            if let Some(c) = count {
                cfg.n_workers = c;
            }
            if let Some(t) = load_threshold {
                cfg.load_threshold = t;
            }
            match steer {
                Some(true) => cfg.flags |= worker_flags::STEER_CPUMAP,
                Some(false) => cfg.flags &= !worker_flags::STEER_CPUMAP,
                None => {}
            }
            maps.set_worker_config(cfg)?;
        }
    }
    Ok(())
}
