//! `edged`'s configuration file (TOML). Every field has a default, so an empty file is valid.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;

use crate::{
    XdpAttachMode,
    addr::{Cidr, Vip},
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgedConfig {
    pub pin_dir: PathBuf,
    pub xdp: XdpConfig,
    pub workers: WorkersConfig,
    pub rate_limit: RateLimitSection,
    pub blocklist: Vec<String>,
    pub apps: Vec<AppConfig>,
}

impl Default for EdgedConfig {
    fn default() -> Self {
        Self {
            pin_dir: PathBuf::from(crate::DEFAULT_PIN_DIR),
            xdp: XdpConfig::default(),
            workers: WorkersConfig::default(),
            rate_limit: RateLimitSection::default(),
            blocklist: Vec::new(),
            apps: Vec::new(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct XdpConfig {
    /// Interfaces `classify` is attached to.
    pub interfaces: Vec<String>,
    pub mode: XdpAttachMode,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkersConfig {
    /// Workers, one per CPU from CPU 0; 0 means one per online CPU.
    pub count: u32,
    /// In-flight requests above which new connections go to the least loaded worker (0: off).
    pub load_threshold: u32,
    /// Redirect app flows to their worker's CPU through CPUMAP.
    pub steer: bool,
    /// CPUMAP per-CPU queue size (frames).
    pub cpumap_queue_size: u32,
}

impl Default for WorkersConfig {
    fn default() -> Self {
        Self {
            count: 0,
            load_threshold: 256,
            steer: true,
            cpumap_queue_size: 2048,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitSection {
    pub enabled: bool,
    pub pps: u64,
    pub burst: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    pub name: String,
    pub vips: Vec<String>,
    #[serde(default)]
    pub id: Option<u32>,
    #[serde(default = "yes")]
    pub steer: bool,
    #[serde(default = "yes")]
    pub rate_limit: bool,
}

fn yes() -> bool {
    true
}

impl EdgedConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Parses and checks addresses up front, so a typo fails at start-up rather than half-applied.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let cfg: Self = toml::from_str(text)?;
        for cidr in &cfg.blocklist {
            cidr.parse::<Cidr>()?;
        }
        for app in &cfg.apps {
            for vip in &app.vips {
                vip.parse::<Vip>()
                    .with_context(|| format!("app {}", app.name))?;
            }
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_all_defaults() {
        let cfg = EdgedConfig::parse("").unwrap();
        assert_eq!(cfg.pin_dir, PathBuf::from(crate::DEFAULT_PIN_DIR));
        assert!(cfg.workers.steer);
        assert_eq!(cfg.xdp.mode, XdpAttachMode::Native);
    }

    #[test]
    fn full_config_and_clear_errors() {
        let cfg = EdgedConfig::parse(
            r#"
            blocklist = ["203.0.113.0/24"]
            [xdp]
            interfaces = ["eth0"]
            mode = "generic"
            [rate_limit]
            enabled = true
            pps = 1000
            burst = 2000
            [[apps]]
            name = "hello"
            vips = ["10.0.0.1:80/tcp"]
            steer = false
            "#,
        )
        .unwrap();
        assert_eq!(cfg.xdp.mode, XdpAttachMode::Generic);
        assert!(!cfg.apps[0].steer && cfg.apps[0].rate_limit);
        let err =
            EdgedConfig::parse("[[apps]]\nname = \"x\"\nvips = [\"10.0.0.1/tcp\"]").unwrap_err();
        assert!(format!("{err:#}").contains("bad VIP"), "{err:#}");
        let err = EdgedConfig::parse("[xdp]\nmdoe = \"native\"").unwrap_err();
        assert!(format!("{err:#}").contains("unknown field"), "{err:#}");
    }
}
