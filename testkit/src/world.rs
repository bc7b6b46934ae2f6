//! A multi-datacenter world on one host, built from a [`Plan`]: a network namespace per node
//! (datacenter or host), a veth pair per link with its own /24 and IPv6 /64, the link's RTT
//! emulated on both ends, and each datacenter's own addresses and each host's service address
//! routed over every link to it. Torn down on drop: delays first, then the namespaces (which take
//! their veths with them).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
};

use anyhow::Context as _;

use crate::{
    netns::{LinkEnd, Netns, veth_pair},
    plan::{Plan, TestKeys},
    wan::WanDelay,
};

pub struct World {
    pub plan: Plan,
    /// This world's handoff keys, drawn at build.
    pub keys: TestKeys,
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
    pub fn build(plan: &Plan) -> anyhow::Result<Self> {
        let mut namespaces = BTreeMap::new();
        for name in plan.node_names() {
            namespaces.insert(name.to_owned(), Netns::new(name)?);
        }
        let mut world = Self {
            plan: plan.clone(),
            keys: TestKeys::draw(plan),
            delays: Vec::new(),
            namespaces,
        };
        for (i, link) in plan.links.iter().enumerate() {
            let [a, b] = &link.between;
            let (addr_a, addr_b) = Plan::link_addrs(i);
            let (v6_a, v6_b) = Plan::link_addrs_v6(i);
            let (cidr_a, cidr_b) = (format!("{addr_a}/24"), format!("{addr_b}/24"));
            let (cidr6_a, cidr6_b) = (format!("{v6_a}/64"), format!("{v6_b}/64"));
            let (if_a, if_b) = (iface(b), iface(a));
            veth_pair(
                &LinkEnd {
                    ns: world.ns(a),
                    iface: &if_a,
                    addrs: &[&cidr_a, &cidr6_a],
                },
                &LinkEnd {
                    ns: world.ns(b),
                    iface: &if_b,
                    addrs: &[&cidr_b, &cidr6_b],
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
        let own: Vec<(String, Vec<IpAddr>)> = plan
            .datacenters
            .iter()
            .map(|dc| (dc.name.clone(), plan.datacenter_addrs(dc)))
            .chain(plan.hosts.iter().filter_map(|h| {
                h.service_addr
                    .map(|a| (h.name.clone(), vec![IpAddr::V4(a)]))
            }))
            .collect();
        for (node, addrs) in &own {
            for addr in addrs {
                world.route_own_addr(node, *addr)?;
            }
        }
        Ok(world)
    }

    /// Puts `addr` on `node`'s loopback and routes it from every node linked to `node`.
    fn route_own_addr(&self, node: &str, addr: IpAddr) -> anyhow::Result<()> {
        let (family, host_len) = if addr.is_ipv4() {
            ("-4", 32)
        } else {
            ("-6", 128)
        };
        let cidr = format!("{addr}/{host_len}");
        self.ns(node)
            .ip(&[family, "addr", "add", &cidr, "dev", "lo"])?;
        for link in &self.plan.links {
            let peer = match &link.between {
                [a, b] if a == node => b,
                [a, b] if b == node => a,
                _ => continue,
            };
            let via = if addr.is_ipv4() {
                self.plan.addr_of(peer, node).map(IpAddr::V4)
            } else {
                self.plan.addr_of_v6(peer, node).map(IpAddr::V6)
            }
            .expect("linked nodes have link addresses");
            self.ns(peer)
                .ip(&[family, "route", "add", &cidr, "via", &via.to_string()])?;
        }
        Ok(())
    }

    /// The topology file every edged of this world reads, with its workers on `port`.
    pub fn fleet_toml(&self, port: u16) -> String {
        self.plan.fleet(port).to_toml()
    }

    /// Changes a link's RTT while the world runs (a path getting slower). Links built with a
    /// zero RTT have no delayer to change.
    pub fn set_rtt(&self, a: &str, b: &str, rtt: std::time::Duration) -> anyhow::Result<()> {
        let (index, _) = self
            .plan
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
        self.plan.addr_of(from, to).or_else(|| {
            self.plan
                .hosts
                .iter()
                .find(|h| h.name == to)
                .and_then(|h| h.service_addr)
        })
    }
}
