//! The multi-datacenter topology: datacenters (each one `edged`), other hosts (clients,
//! backends), the links between them with their round-trip times, and the key datacenters
//! authenticate handoffs with. One TOML file describes both the test world built from network
//! namespaces and what each `edged` knows of its peers.

use std::{collections::BTreeSet, net::Ipv4Addr, path::Path, time::Duration};

use anyhow::{Context as _, ensure};
use serde::Deserialize;

/// The canonical world of the placement scenario (see the file's header).
pub const CANONICAL: &str = include_str!("../topologies/canonical.toml");

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// HMAC-SHA256 key for handoffs between datacenters, hex (at least 16 bytes).
    pub handoff_key: String,
    pub datacenters: Vec<Datacenter>,
    #[serde(default)]
    pub hosts: Vec<Host>,
    #[serde(default)]
    pub links: Vec<Link>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Datacenter {
    pub name: String,
    /// Non-zero; what PLACEMENT entries name the datacenter by.
    pub id: u32,
    /// The region holds every app and takes what a POP forwards.
    #[serde(default)]
    pub region: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    pub name: String,
    /// An address this host serves on, reachable from every node linked to it.
    #[serde(default)]
    pub service_addr: Option<Ipv4Addr>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    pub between: [String; 2],
    #[serde(with = "humantime_serde")]
    pub rtt: Duration,
}

impl Topology {
    pub fn canonical() -> Self {
        Self::parse(CANONICAL).expect("the embedded canonical topology is valid")
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Parses and checks names, ids, links and the key, so a typo fails before anything starts.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let t: Self = toml::from_str(text)?;
        let mut names = BTreeSet::new();
        for name in t.node_names() {
            ensure!(
                !name.is_empty()
                    && name.len() <= 8
                    && name.bytes().all(|b| b.is_ascii_alphanumeric()),
                "node name {name:?}: 1-8 letters or digits (it names interfaces)"
            );
            ensure!(names.insert(name), "node {name:?} is defined twice");
        }
        let mut ids = BTreeSet::new();
        for dc in &t.datacenters {
            ensure!(dc.id != 0, "datacenter {}: id 0 means local", dc.name);
            ensure!(ids.insert(dc.id), "datacenter id {} is used twice", dc.id);
        }
        ensure!(
            t.datacenters.iter().filter(|d| d.region).count() <= 1,
            "at most one datacenter is the region"
        );
        let mut pairs = BTreeSet::new();
        for link in &t.links {
            let [a, b] = &link.between;
            for end in [a, b] {
                ensure!(
                    names.contains(end.as_str()),
                    "link {a} - {b}: no node named {end:?}"
                );
            }
            ensure!(a != b, "link {a} - {b}: a node cannot link to itself");
            let pair = if a < b { (a, b) } else { (b, a) };
            ensure!(pairs.insert(pair), "link {a} - {b} is defined twice");
        }
        ensure!(
            t.links.len() < 250,
            "at most 249 links (one /24 each under 10.201.0.0/16)"
        );
        let key = t.handoff_key_bytes()?;
        ensure!(key.len() >= 16, "handoff_key: at least 16 bytes");
        Ok(t)
    }

    pub fn handoff_key_bytes(&self) -> anyhow::Result<Vec<u8>> {
        hex::decode(&self.handoff_key).context("handoff_key is not hex")
    }

    /// Datacenters, then hosts.
    pub fn node_names(&self) -> impl Iterator<Item = &str> {
        self.datacenters
            .iter()
            .map(|d| d.name.as_str())
            .chain(self.hosts.iter().map(|h| h.name.as_str()))
    }

    pub fn datacenter(&self, name: &str) -> Option<&Datacenter> {
        self.datacenters.iter().find(|d| d.name == name)
    }

    pub fn region(&self) -> Option<&Datacenter> {
        self.datacenters.iter().find(|d| d.region)
    }

    /// The link between `a` and `b` (either order) and its index.
    pub fn link(&self, a: &str, b: &str) -> Option<(usize, &Link)> {
        self.links.iter().enumerate().find(|(_, l)| {
            (l.between[0] == a && l.between[1] == b) || (l.between[0] == b && l.between[1] == a)
        })
    }

    /// Link `index`'s addresses: its own 10.201.<index>.0/24, the first end .1, the second .2.
    pub fn link_addrs(index: usize) -> (Ipv4Addr, Ipv4Addr) {
        let i = index as u8;
        (Ipv4Addr::new(10, 201, i, 1), Ipv4Addr::new(10, 201, i, 2))
    }

    /// `to`'s address on its link with `from`: where `from` reaches it directly.
    pub fn addr_of(&self, from: &str, to: &str) -> Option<Ipv4Addr> {
        let (i, link) = self.link(from, to)?;
        let (first, second) = Self::link_addrs(i);
        Some(if link.between[0] == to { first } else { second })
    }

    pub fn rtt(&self, a: &str, b: &str) -> Option<Duration> {
        self.link(a, b).map(|(_, l)| l.rtt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canonical_world_has_the_scenario_rtts() {
        let t = Topology::canonical();
        assert_eq!(t.rtt("pop", "dc2"), Some(Duration::from_millis(30)));
        assert_eq!(t.rtt("backend", "pop"), Some(Duration::from_millis(80)));
        assert_eq!(t.rtt("dc2", "backend"), Some(Duration::from_millis(5)));
        assert_eq!(t.region().map(|r| r.name.as_str()), Some("region"));
        assert_eq!(t.datacenter("dc2").map(|d| d.id), Some(2));
        let (i, _) = t.link("pop", "dc2").unwrap();
        let (pop_side, dc2_side) = Topology::link_addrs(i);
        assert_eq!(t.addr_of("pop", "dc2"), Some(dc2_side));
        assert_eq!(t.addr_of("dc2", "pop"), Some(pop_side));
        assert_eq!(t.addr_of("client", "dc2"), None);
    }

    #[test]
    fn mistakes_are_named() {
        let base = "handoff_key = \"00112233445566778899aabbccddeeff\"\n\
                    [[datacenters]]\nname = \"pop\"\nid = 1\n[[hosts]]\nname = \"client\"\n";
        let err = |extra: &str| {
            format!(
                "{:#}",
                Topology::parse(&format!("{base}{extra}")).unwrap_err()
            )
        };
        assert!(
            err("[[links]]\nbetween = [\"pop\", \"nowhere\"]\nrtt = \"1ms\"\n")
                .contains("no node named \"nowhere\"")
        );
        assert!(
            err(
                "[[links]]\nbetween = [\"pop\", \"client\"]\nrtt = \"1ms\"\n\
                 [[links]]\nbetween = [\"client\", \"pop\"]\nrtt = \"2ms\"\n"
            )
            .contains("defined twice")
        );
        let e = err("[[datacenters]]\nname = \"pop\"\nid = 2\n");
        assert!(e.contains("defined twice"), "{e}");
        assert!(err("[[datacenters]]\nname = \"dc9\"\nid = 1\n").contains("id 1 is used twice"));
        assert!(
            format!(
                "{:#}",
                Topology::parse(&base.replace("00112233", "zz112233")).unwrap_err()
            )
            .contains("not hex")
        );
        assert!(Topology::parse(base).is_ok());
    }
}
