//! `edgectl block`: source prefixes dropped at XDP, in this host's maps.

use clap::Subcommand;
use edgeplane::{PinnedMaps, addr::Cidr};
use serde_json::json;

use crate::output::{print_json, table};

#[derive(Subcommand)]
pub enum BlockCmd {
    Add { cidr: Cidr },
    Rm { cidr: Cidr },
    List,
}

pub fn run(maps: &PinnedMaps, cmd: BlockCmd, as_json: bool) -> anyhow::Result<()> {
    match cmd {
        BlockCmd::Add { cidr } => {
            maps.block_add(cidr)?;
            if !as_json {
                println!("blocked {cidr}");
            }
        }
        BlockCmd::Rm { cidr } => {
            maps.block_remove(cidr)?;
            if !as_json {
                println!("unblocked {cidr}");
            }
        }
        BlockCmd::List => {
            let list = maps.block_list()?;
            if as_json {
                let v: Vec<_> = list
                    .iter()
                    .map(|(c, t)| json!({ "cidr": c.to_string(), "added_at": t }))
                    .collect();
                return print_json(&v);
            }
            let mut t = table(&["cidr", "added (unix s)"]);
            for (c, at) in list {
                t.add_row(vec![c.to_string(), at.to_string()]);
            }
            println!("{t}");
        }
    }
    Ok(())
}
