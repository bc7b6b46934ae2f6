//! The plan of a test world: datacenters (each one `edged`), other hosts (clients, backends),
//! and the links between them with their round-trip times. The world builder gives each node
//! its addresses from this plan, and writes what edged needs from them (`fleet`: the
//! topology with every datacenter's addresses; `TestKeys`: handoff keys drawn for this world
//! only). edged never sees a plan: it reads addresses and keys like any deployment.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, ensure};
use serde::Deserialize;

/// The canonical world of the placement scenario (see the file's header).
pub const CANONICAL: &str = include_str!("../topologies/canonical.toml");

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
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
    /// Its own addresses (on its loopback, routed over each of its links), where peers reach
    /// it; default: 10.251.0.<id>.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
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

impl Plan {
    pub fn canonical() -> Self {
        Self::parse(CANONICAL).expect("the canonical plan is valid")
    }

    /// Parses and checks names, ids and links, so a typo fails before anything starts.
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
            ensure!(
                (1..=254).contains(&dc.id),
                "datacenter {}: id 1-254 in a test world",
                dc.name
            );
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
        Ok(t)
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

    /// Link `index`'s IPv6 addresses: fd00:201:<index>::1 and ::2.
    pub fn link_addrs_v6(index: usize) -> (Ipv6Addr, Ipv6Addr) {
        let i = index as u16;
        (
            Ipv6Addr::new(0xfd00, 0x201, i, 0, 0, 0, 0, 1),
            Ipv6Addr::new(0xfd00, 0x201, i, 0, 0, 0, 0, 2),
        )
    }

    /// `to`'s IPv6 address on its link with `from`.
    pub fn addr_of_v6(&self, from: &str, to: &str) -> Option<Ipv6Addr> {
        let (i, link) = self.link(from, to)?;
        let (first, second) = Self::link_addrs_v6(i);
        Some(if link.between[0] == to { first } else { second })
    }

    pub fn rtt(&self, a: &str, b: &str) -> Option<Duration> {
        self.link(a, b).map(|(_, l)| l.rtt)
    }

    /// Datacenter `dc`'s own addresses: its `addresses`, or 10.251.0.<id>.
    pub fn datacenter_addrs(&self, dc: &Datacenter) -> Vec<IpAddr> {
        if dc.addresses.is_empty() {
            vec![IpAddr::V4(Ipv4Addr::new(10, 251, 0, dc.id as u8))]
        } else {
            dc.addresses.clone()
        }
    }

    /// The topology every edged of this world reads: each datacenter at its own addresses,
    /// its workers on `port`.
    pub fn fleet(&self, port: u16) -> edgeplane::topology::Topology {
        edgeplane::topology::Topology {
            datacenters: self
                .datacenters
                .iter()
                .map(|dc| edgeplane::topology::Datacenter {
                    name: dc.name.clone(),
                    id: dc.id,
                    region: dc.region,
                    handoff: self
                        .datacenter_addrs(dc)
                        .into_iter()
                        .map(|ip| SocketAddr::new(ip, port))
                        .collect(),
                    probe: Vec::new(),
                })
                .collect(),
        }
    }
}

/// Handoff keys drawn at random for one world, one per pair of its datacenters: no key of a
/// test world is ever written down in the repository.
#[derive(Clone, Debug)]
pub struct TestKeys {
    /// (a, b) with a < b -> the pair's secret, hex.
    pairs: BTreeMap<(String, String), String>,
}

impl TestKeys {
    pub fn draw(plan: &Plan) -> Self {
        let mut pairs = BTreeMap::new();
        for a in &plan.datacenters {
            for b in &plan.datacenters {
                if a.name < b.name {
                    pairs.insert(
                        (a.name.clone(), b.name.clone()),
                        edgeplane::keys::random_secret_hex(),
                    );
                }
            }
        }
        Self { pairs }
    }

    /// The secret `a` and `b` share (either order).
    pub fn secret(&self, a: &str, b: &str) -> Option<&str> {
        let key = if a < b { (a, b) } else { (b, a) };
        self.pairs
            .get(&(key.0.to_owned(), key.1.to_owned()))
            .map(String::as_str)
    }

    /// `dc`'s keys file: key 1 with each peer.
    pub fn keys_toml(&self, dc: &str) -> String {
        let mut out = String::new();
        for ((a, b), secret) in &self.pairs {
            let peer = if a == dc {
                b
            } else if b == dc {
                a
            } else {
                continue;
            };
            out.push_str(&format!(
                "[[keys]]\npeer = \"{peer}\"\nid = 1\nsecret = \"{secret}\"\n\n"
            ));
        }
        out
    }

    /// Writes `dc`'s keys file at `path`, readable by its owner only (edged refuses it else).
    pub fn write(&self, dc: &str, path: &Path) -> anyhow::Result<()> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let _ = std::fs::remove_file(path);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("writing {}", path.display()))?;
        std::io::Write::write_all(&mut f, self.keys_toml(dc).as_bytes())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canonical_world_has_the_scenario_rtts() {
        let t = Plan::canonical();
        assert_eq!(t.rtt("pop", "dc2"), Some(Duration::from_millis(30)));
        assert_eq!(t.rtt("backend", "pop"), Some(Duration::from_millis(80)));
        assert_eq!(t.rtt("dc2", "backend"), Some(Duration::from_millis(5)));
        assert_eq!(t.region().map(|r| r.name.as_str()), Some("region"));
        assert_eq!(t.datacenter("dc2").map(|d| d.id), Some(2));
        let (i, _) = t.link("pop", "dc2").unwrap();
        let (pop_side, dc2_side) = Plan::link_addrs(i);
        assert_eq!(t.addr_of("pop", "dc2"), Some(dc2_side));
        assert_eq!(t.addr_of("dc2", "pop"), Some(pop_side));
        assert_eq!(t.addr_of("client", "dc2"), None);
    }

    #[test]
    fn mistakes_are_named() {
        let base = "[[datacenters]]\nname = \"pop\"\nid = 1\n[[hosts]]\nname = \"client\"\n";
        let err =
            |extra: &str| format!("{:#}", Plan::parse(&format!("{base}{extra}")).unwrap_err());
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
        assert!(err("[[datacenters]]\nname = \"dc9\"\nid = 300\n").contains("id 1-254"));
        assert!(Plan::parse(base).is_ok());
    }

    #[test]
    fn the_fleet_names_each_datacenter_at_its_own_addresses_and_keys_pair_them() {
        let plan = Plan::canonical();
        let fleet = plan.fleet(8080);
        fleet.check().unwrap();
        assert_eq!(
            fleet.datacenter("dc2").unwrap().handoff,
            vec!["10.251.0.2:8080".parse().unwrap()]
        );
        let keys = TestKeys::draw(&plan);
        let pop = edgeplane::keys::parse(&keys.keys_toml("pop"), &fleet, "pop").unwrap();
        let dc2 = edgeplane::keys::parse(&keys.keys_toml("dc2"), &fleet, "dc2").unwrap();
        let (pop_id, dc2_id) = (1, 2);
        assert_eq!(
            pop.signing(dc2_id).map(|k| k.secret.clone()),
            dc2.accepted(pop_id, 1).map(<[u8]>::to_vec),
            "what pop signs with, dc2 accepts from pop"
        );
        assert_ne!(keys.secret("pop", "dc2"), keys.secret("pop", "region"));
        assert_ne!(
            TestKeys::draw(&plan).secret("pop", "dc2"),
            keys.secret("pop", "dc2"),
            "each world draws its own"
        );
    }
}
