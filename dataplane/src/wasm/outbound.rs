//! Which addresses a guest's subrequest may reach. `allowed_backends` names backends, but a name
//! resolves to whatever its DNS says: a tenant who controls a name it may call can point it at
//! this host's loopback (edged's own workers, other local services), its admin endpoint, or the
//! cloud's instance-metadata service. So the resolved address is checked too: those ranges are
//! refused unless the app's `allowed_backends` names that very address (`ip:port`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Why `addr` is refused to a guest, or None when it may be reached.
pub fn refusal(
    addr: SocketAddr,
    allowed: &[String],
    admin: Option<SocketAddr>,
) -> Option<&'static str> {
    if allowed
        .iter()
        .any(|a| a.parse::<SocketAddr>().ok() == Some(addr))
    {
        return None;
    }
    if admin.is_some_and(|admin| {
        admin.port() == addr.port()
            && (admin.ip() == canonical(addr.ip()) || admin.ip().is_unspecified())
    }) {
        return Some("edged's admin endpoint");
    }
    match canonical(addr.ip()) {
        IpAddr::V4(v4) => refusal_v4(v4),
        IpAddr::V6(v6) => refusal_v6(v6),
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn refusal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() || ip.is_broadcast() {
        Some("not a host address")
    } else if ip.is_link_local() {
        // 169.254.0.0/16 holds the instance-metadata service of the big clouds (169.254.169.254).
        Some("link-local (instance metadata)")
    } else if ip.octets()[..3] == [100, 100, 100] {
        // 100.100.100.200: Alibaba Cloud's metadata service.
        Some("instance metadata")
    } else {
        None
    }
}

fn refusal_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let segments = ip.segments();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() || ip.is_multicast() {
        Some("not a host address")
    } else if segments[0] & 0xffc0 == 0xfe80 {
        Some("link-local")
    } else if segments[..4] == [0xfd00, 0x0ec2, 0, 0] {
        // fd00:ec2::254: the IPv6 instance-metadata service.
        Some("instance metadata")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(addr: &str, allowed: &[&str]) -> Option<&'static str> {
        let allowed: Vec<String> = allowed.iter().map(|a| (*a).to_owned()).collect();
        refusal(
            addr.parse().unwrap(),
            &allowed,
            Some("127.0.0.1:9901".parse().unwrap()),
        )
    }

    #[test]
    fn internal_ranges_are_refused_unless_allowed_by_address() {
        for refused in [
            "127.0.0.1:80",
            "127.9.9.9:8080",
            "[::1]:80",
            "[::ffff:127.0.0.1]:80",
            "169.254.169.254:80",
            "[fd00:ec2::254]:80",
            "[fe80::1]:80",
            "100.100.100.200:80",
            "0.0.0.0:80",
            "[::]:80",
        ] {
            assert!(check(refused, &[]).is_some(), "{refused} was allowed");
        }
        assert_eq!(check("127.0.0.1:9901", &[]), Some("edged's admin endpoint"));
        for allowed in [
            "10.0.0.5:80",
            "192.0.2.1:443",
            "[2001:db8::1]:80",
            "100.64.0.1:80",
        ] {
            assert_eq!(check(allowed, &[]), None, "{allowed}");
        }
        // An app may name a local backend by its address.
        assert_eq!(check("127.0.0.1:7000", &["127.0.0.1:7000"]), None);
        assert!(check("127.0.0.1:7001", &["127.0.0.1:7000"]).is_some());
        assert!(check("127.0.0.1:7000", &["localhost:7000"]).is_some());
    }
}
