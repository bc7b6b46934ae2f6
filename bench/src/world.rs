//! A multi-datacenter world on one host, built from a [`Topology`]: a network namespace per node
//! (datacenter or host), a veth pair per link with its own /24, the link's RTT emulated on both
//! ends, and each host's service address routed over every link to it. Torn down on drop:
//! delays first, then the namespaces (which take their veths with them).

use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::Context as _;
use edgeplane::topology::Topology;

use crate::{
    netns::{LinkEnd, Netns, veth_pair},
    wan::WanDelay,
};

pub struct World {
    pub topology: Topology,
    // Field order is drop order: delays go before their namespaces.
    /// (link index, the delayer at one of its ends).
    delays: Vec<(usize, WanDelay)>,
    namespaces: BTreeMap<String, Netns>,
}

/// The interface on `from`'s side of its link to `to`.
pub fn iface(to: &str) -> String {
    format!("to-{to}")
}

impl World {
    pub fn build(topology: &Topology) -> anyhow::Result<Self> {
        let mut namespaces = BTreeMap::new();
        for name in topology.node_names() {
            namespaces.insert(name.to_owned(), Netns::new(name)?);
        }
        let mut world = Self {
            topology: topology.clone(),
            delays: Vec::new(),
            namespaces,
        };
        for (i, link) in topology.links.iter().enumerate() {
            let [a, b] = &link.between;
            let (addr_a, addr_b) = Topology::link_addrs(i);
            let (cidr_a, cidr_b) = (format!("{addr_a}/24"), format!("{addr_b}/24"));
            let (if_a, if_b) = (iface(b), iface(a));
            veth_pair(
                &LinkEnd {
                    ns: world.ns(a),
                    iface: &if_a,
                    addrs: &[&cidr_a],
                },
                &LinkEnd {
                    ns: world.ns(b),
                    iface: &if_b,
                    addrs: &[&cidr_b],
                },
            )
            .with_context(|| format!("link {a} - {b}"))?;
            // Half the RTT on each side's egress; queue numbers are unique for readability only
            // (each namespace has its own).
            // A zero-RTT link is a plain veth (benchmarks measuring edgeplane's own overhead).
            if link.rtt.is_zero() {
                continue;
            }
            let one_way = link.rtt / 2;
            let queue = (i * 2 + 1) as u16;
            let delay_a = WanDelay::start(world.ns(a), &if_a, queue, one_way)?;
            world.delays.push((i, delay_a));
            let delay_b = WanDelay::start(world.ns(b), &if_b, queue + 1, one_way)?;
            world.delays.push((i, delay_b));
        }
        for host in &topology.hosts {
            let Some(service) = host.service_addr else {
                continue;
            };
            world
                .ns(&host.name)
                .ip(&["addr", "add", &format!("{service}/32"), "dev", "lo"])?;
            for link in &topology.links {
                let peer = match &link.between {
                    [a, b] if *a == host.name => b,
                    [a, b] if *b == host.name => a,
                    _ => continue,
                };
                let via = topology
                    .addr_of(peer, &host.name)
                    .expect("linked nodes have link addresses");
                world.ns(peer).ip(&[
                    "route",
                    "add",
                    &format!("{service}/32"),
                    "via",
                    &via.to_string(),
                ])?;
            }
        }
        Ok(world)
    }

    /// Changes a link's RTT while the world runs (a path getting slower). Links built with a
    /// zero RTT have no delayer to change.
    pub fn set_rtt(&self, a: &str, b: &str, rtt: std::time::Duration) -> anyhow::Result<()> {
        let (index, _) = self
            .topology
            .link(a, b)
            .with_context(|| format!("no link {a} - {b}"))?;
        let mut found = false;
        for (_, delay) in self.delays.iter().filter(|(i, _)| *i == index) {
            delay.set_one_way(rtt / 2);
            found = true;
        }
        anyhow::ensure!(found, "link {a} - {b} was built without delay");
        Ok(())
    }

    pub fn ns(&self, node: &str) -> &Netns {
        self.namespaces
            .get(node)
            .unwrap_or_else(|| panic!("no node {node:?} in this world"))
    }

    /// Where `from` reaches `to` directly (their link), or `to`'s service address.
    pub fn addr_of(&self, from: &str, to: &str) -> Option<Ipv4Addr> {
        self.topology.addr_of(from, to).or_else(|| {
            self.topology
                .hosts
                .iter()
                .find(|h| h.name == to)
                .and_then(|h| h.service_addr)
        })
    }
}
