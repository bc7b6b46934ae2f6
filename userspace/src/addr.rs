//! Parsing and printing of the address forms users type: CIDRs for the blocklist and
//! `VIP:port/proto` for apps. Addresses map onto the ABI's 16-byte IPv4-mapped form.

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    str::FromStr,
};

use edgeplane_abi::{AppKey, IPPROTO_TCP, IPPROTO_UDP};
use ipnet::IpNet;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddrError {
    #[error("bad CIDR {0:?}: expected ADDR/LEN such as 203.0.113.0/24 or 2001:db8::/32")]
    BadCidr(String),
    #[error(
        "bad VIP {0:?}: expected ADDR:PORT/PROTO such as 10.0.0.1:80/tcp or [2001:db8::1]:443/udp"
    )]
    BadVip(String),
}

/// The 16-byte form the maps use: IPv4 is IPv4-mapped.
pub fn to_mapped(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

pub fn from_mapped(bytes: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// A blocklist prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr(pub IpNet);

impl Cidr {
    /// (prefix length over the 16-byte form, network address bytes)
    pub fn lpm_key(&self) -> (u32, [u8; 16]) {
        let net = self.0.trunc();
        let extra = if net.addr().is_ipv4() { 96 } else { 0 };
        (net.prefix_len() as u32 + extra, to_mapped(net.addr()))
    }

    pub fn from_lpm_key(prefix_len: u32, bytes: [u8; 16]) -> Self {
        let addr = from_mapped(bytes);
        let len = match addr {
            IpAddr::V4(_) => prefix_len.saturating_sub(96),
            IpAddr::V6(_) => prefix_len,
        } as u8;
        Cidr(IpNet::new(addr, len).unwrap_or_else(|_| IpNet::from(addr)))
    }
}

impl FromStr for Cidr {
    type Err = AddrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(Cidr(net.trunc()));
        }
        // A bare address is a host route.
        s.parse::<IpAddr>()
            .map(|ip| Cidr(IpNet::from(ip)))
            .map_err(|_| AddrError::BadCidr(s.to_owned()))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
        }
    }
}

/// What clients connect to: `10.0.0.1:80/tcp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Vip {
    pub addr: SocketAddr,
    pub proto: Protocol,
}

impl Vip {
    pub fn key(&self) -> AppKey {
        AppKey {
            addr: to_mapped(self.addr.ip()),
            port: self.addr.port(),
            proto: self.proto.number(),
            _pad: 0,
        }
    }

    pub fn from_key(key: &AppKey) -> Option<Self> {
        let proto = match key.proto {
            IPPROTO_TCP => Protocol::Tcp,
            IPPROTO_UDP => Protocol::Udp,
            _ => return None,
        };
        Some(Vip {
            addr: SocketAddr::new(from_mapped(key.addr), key.port),
            proto,
        })
    }
}

impl FromStr for Vip {
    type Err = AddrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || AddrError::BadVip(s.to_owned());
        let (sock, proto) = match s.rsplit_once('/') {
            Some((sock, "tcp")) => (sock, Protocol::Tcp),
            Some((sock, "udp")) => (sock, Protocol::Udp),
            Some(_) => return Err(bad()),
            None => (s, Protocol::Tcp),
        };
        let addr = sock.parse::<SocketAddr>().map_err(|_| bad())?;
        if addr.port() == 0 {
            return Err(bad());
        }
        Ok(Vip { addr, proto })
    }
}

impl fmt::Display for Vip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.proto {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        write!(f, "{}/{}", self.addr, proto)
    }
}

impl Vip {
    pub fn from_socket_udp(addr: SocketAddr) -> Self {
        Vip {
            addr,
            proto: Protocol::Udp,
        }
    }

    pub fn from_socket_tcp(addr: SocketAddr) -> Self {
        Vip {
            addr,
            proto: Protocol::Tcp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_v4_maps_into_the_v6_trie() {
        let c: Cidr = "203.0.113.7/24".parse().unwrap();
        assert_eq!(c.to_string(), "203.0.113.0/24");
        let (len, bytes) = c.lpm_key();
        assert_eq!(len, 120);
        assert_eq!(&bytes[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(Cidr::from_lpm_key(len, bytes), c);
        assert_eq!(
            "10.1.2.3".parse::<Cidr>().unwrap().to_string(),
            "10.1.2.3/32"
        );
        assert!(matches!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(AddrError::BadCidr(_))
        ));
        assert!(matches!(
            "banana".parse::<Cidr>(),
            Err(AddrError::BadCidr(_))
        ));
    }

    #[test]
    fn vip_forms() {
        let v: Vip = "10.0.0.1:80/tcp".parse().unwrap();
        assert_eq!(v.to_string(), "10.0.0.1:80/tcp");
        assert_eq!(Vip::from_key(&v.key()), Some(v));
        let v6: Vip = "[2001:db8::1]:443/udp".parse().unwrap();
        assert_eq!(Vip::from_key(&v6.key()), Some(v6));
        assert_eq!("10.0.0.1:80".parse::<Vip>().unwrap().proto, Protocol::Tcp);
        for bad in ["10.0.0.1", "10.0.0.1:0/tcp", "10.0.0.1:80/sctp", "x:80/tcp"] {
            assert!(bad.parse::<Vip>().is_err(), "{bad}");
        }
    }
}
