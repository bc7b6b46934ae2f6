//! `edgectl ratelimit`: the per-source token bucket, in this host's maps.

use anyhow::bail;
use clap::Subcommand;
use edgeplane::PinnedMaps;
use edgeplane_abi::{MAX_RATE_PPS, rate_limit_flags};
use serde_json::json;

use crate::output::print_json;

#[derive(Subcommand)]
pub enum RateLimitCmd {
    /// Enable with a rate and burst, or disable with --off.
    Set {
        /// Sustained packets per second per source.
        #[arg(long, required_unless_present = "off")]
        pps: Option<u64>,
        /// Bucket depth in packets.
        #[arg(long, required_unless_present = "off")]
        burst: Option<u64>,
        /// Sources share a bucket per IPv4 prefix of this length (default 32).
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=32))]
        v4_prefix: Option<u8>,
        /// Sources share a bucket per IPv6 prefix of this length (default 64).
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=128))]
        v6_prefix: Option<u8>,
        #[arg(long, conflicts_with_all = ["pps", "burst"])]
        off: bool,
    },
    Show,
}

/// `ratelimit set`'s arguments as the config's `[rate_limit]` (for this host's maps or the
/// fleet's guard bucket alike).
pub fn rate_limit_section(cmd: &RateLimitCmd) -> edgeplane::config::RateLimitSection {
    match *cmd {
        RateLimitCmd::Set {
            pps,
            burst,
            v4_prefix,
            v6_prefix,
            off: false,
        } => edgeplane::config::RateLimitSection {
            enabled: true,
            pps: pps.unwrap_or(0),
            burst: burst.unwrap_or(0),
            v4_prefix,
            v6_prefix,
        },
        _ => edgeplane::config::RateLimitSection::default(),
    }
}

pub fn run(maps: &PinnedMaps, cmd: RateLimitCmd, as_json: bool) -> anyhow::Result<()> {
    match cmd {
        cmd @ RateLimitCmd::Set { .. } => {
            let section = rate_limit_section(&cmd);
            if section.pps > MAX_RATE_PPS {
                bail!("--pps must be at most {MAX_RATE_PPS}");
            }
            let off = !section.enabled;
            let cfg = section.map_entry();
            maps.set_rate_limit(cfg)?;
            if !as_json {
                println!(
                    "{}",
                    if off {
                        "rate limit off".to_owned()
                    } else {
                        format!("rate limit {} pps, burst {}", cfg.pps, cfg.burst)
                    }
                );
            }
        }
        RateLimitCmd::Show => {
            let cfg = maps.rate_limit()?;
            let enabled = cfg.flags & rate_limit_flags::ENABLED != 0;
            let v4 = match cfg.v4_prefix {
                0 => edgeplane_abi::DEFAULT_RATE_LIMIT_V4_PREFIX,
                p => p,
            };
            let v6 = match cfg.v6_prefix {
                0 => edgeplane_abi::DEFAULT_RATE_LIMIT_V6_PREFIX,
                p => p,
            };
            if as_json {
                print_json(&json!({
                    "enabled": enabled, "pps": cfg.pps, "burst": cfg.burst,
                    "v4_prefix": v4, "v6_prefix": v6,
                }))?;
            } else if enabled {
                println!(
                    "rate limit {} pps per source (IPv4 /{v4}, IPv6 /{v6}), burst {}",
                    cfg.pps, cfg.burst
                );
            } else {
                println!("rate limit off");
            }
        }
    }
    Ok(())
}
