//! The fleet's topology as edged knows it: each datacenter's name, id, whether it is the region,
//! and the addresses its peers reach it at, named explicitly (IPv4 or IPv6, one per host of the
//! datacenter). edged never derives an address: a test world writes the addresses of its
//! namespaces into a topology like any operator does for real hosts. The same schema is a file
//! (`[datacenter] topology = "..."`) or the control plane's topology entry.

use std::{collections::BTreeSet, net::SocketAddr, path::Path};

use anyhow::{Context as _, ensure};
use edgeplane_dataplane::handoff::Peer;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    pub datacenters: Vec<Datacenter>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Datacenter {
    pub name: String,
    /// Non-zero; what PLACEMENT entries name the datacenter by.
    pub id: u32,
    /// The region holds every app and takes what a POP forwards.
    #[serde(default)]
    pub region: bool,
    /// Its hosts' workers, where peers hand requests off (and ask for probes).
    pub handoff: Vec<SocketAddr>,
    /// Where peers measure their RTT to it (default: `handoff`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probe: Vec<SocketAddr>,
}

/// Addresses one datacenter may list (hosts behind one name).
pub const MAX_ADDRESSES: usize = 64;
/// Datacenters one topology may list.
pub const MAX_DATACENTERS: usize = 4096;

impl Topology {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Parses and checks names, ids and addresses, so a typo fails before anything starts.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let t: Self = toml::from_str(text)?;
        t.check()?;
        Ok(t)
    }

    pub fn check(&self) -> anyhow::Result<()> {
        ensure!(
            self.datacenters.len() <= MAX_DATACENTERS,
            "at most {MAX_DATACENTERS} datacenters"
        );
        let mut names = BTreeSet::new();
        let mut ids = BTreeSet::new();
        for dc in &self.datacenters {
            let name = &dc.name;
            ensure!(
                !name.is_empty()
                    && name.len() <= 63
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "datacenter name {name:?}: 1-63 of a-z, 0-9 and -"
            );
            ensure!(names.insert(name), "datacenter {name:?} is defined twice");
            ensure!(dc.id != 0, "datacenter {name}: id 0 means local");
            ensure!(ids.insert(dc.id), "datacenter id {} is used twice", dc.id);
            ensure!(
                !dc.handoff.is_empty(),
                "datacenter {name}: give at least one handoff address"
            );
            ensure!(
                dc.handoff.len() <= MAX_ADDRESSES && dc.probe.len() <= MAX_ADDRESSES,
                "datacenter {name}: at most {MAX_ADDRESSES} addresses of each kind"
            );
            for addr in dc.handoff.iter().chain(&dc.probe) {
                ensure!(
                    !addr.ip().is_unspecified() && addr.port() != 0,
                    "datacenter {name}: {addr}: peers cannot reach an unspecified address or port 0"
                );
            }
        }
        ensure!(
            self.datacenters.iter().filter(|d| d.region).count() <= 1,
            "at most one datacenter is the region"
        );
        Ok(())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a topology serializes")
    }

    pub fn datacenter(&self, name: &str) -> Option<&Datacenter> {
        self.datacenters.iter().find(|d| d.name == name)
    }

    pub fn region(&self) -> Option<&Datacenter> {
        self.datacenters.iter().find(|d| d.region)
    }

    /// Every datacenter but `me`, as a handoff peer.
    pub fn peers_of(&self, me: &str) -> Vec<Peer> {
        self.datacenters
            .iter()
            .filter(|d| d.name != me)
            .map(|d| Peer {
                id: d.id,
                name: d.name.clone(),
                handoff: d.handoff.clone(),
                probe: if d.probe.is_empty() {
                    d.handoff.clone()
                } else {
                    d.probe.clone()
                },
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = r#"
[[datacenters]]
name = "ams"
id = 1
handoff = ["[fd00:5:7::9]:8443", "192.0.2.17:8080"]

[[datacenters]]
name = "fra-2"
id = 7
region = true
handoff = ["198.51.100.3:80"]
probe = ["198.51.100.4:7"]
"#;

    #[test]
    fn peers_are_reached_at_the_addresses_named() {
        let t = Topology::parse(TWO).unwrap();
        let peers = t.peers_of("ams");
        assert_eq!(peers.len(), 1);
        assert_eq!(
            (peers[0].id, peers[0].name.as_str()),
            (7, "fra-2"),
            "{peers:?}"
        );
        assert_eq!(peers[0].probe, vec!["198.51.100.4:7".parse().unwrap()]);
        let back = t.peers_of("fra-2");
        assert_eq!(back[0].handoff.len(), 2, "every host of ams");
        assert_eq!(back[0].probe, back[0].handoff, "probe defaults to handoff");
        assert_eq!(t.region().map(|r| r.id), Some(7));
        assert_eq!(Topology::parse(&t.to_toml()).unwrap(), t, "round trip");
    }

    #[test]
    fn mistakes_are_named() {
        let err = |text: &str| format!("{:#}", Topology::parse(text).unwrap_err());
        assert!(err(&TWO.replace("id = 7", "id = 1")).contains("id 1 is used twice"));
        assert!(err(&TWO.replace("fra-2", "ams")).contains("defined twice"));
        assert!(err(&TWO.replace("fra-2", "Fra_2")).contains("a-z, 0-9"));
        assert!(err(&TWO.replace("id = 7", "id = 0")).contains("id 0"));
        assert!(
            err(&TWO.replace("handoff = [\"198.51.100.3:80\"]", "handoff = []"))
                .contains("at least one handoff address")
        );
        assert!(err(&TWO.replace("198.51.100.3:80", "0.0.0.0:80")).contains("cannot reach"));
        assert!(err(&TWO.replace("198.51.100.3:80", "198.51.100.3")).contains("invalid"));
        assert!(
            err(&TWO.replace("name = \"ams\"\n", "name = \"ams\"\nregion = true\n"))
                .contains("at most one")
        );
    }
}
