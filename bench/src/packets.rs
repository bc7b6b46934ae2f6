//! Well-formed Ethernet frames for tests, the differential harness and packet-rate benchmarks.

use std::net::IpAddr;

use etherparse::PacketBuilder;

pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    /// TCP with these flag bits (FIN=0x01 SYN=0x02 RST=0x04 PSH=0x08 ACK=0x10 URG=0x20).
    Tcp {
        flags: u8,
    },
    Udp,
}

/// What a frame carries; `build` makes it with correct lengths and checksums.
#[derive(Clone, Debug)]
pub struct FrameSpec {
    pub vlan: Option<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub l4: L4,
    pub payload_len: usize,
}

impl FrameSpec {
    pub fn udp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, payload_len: usize) -> Self {
        Self {
            vlan: None,
            src,
            dst,
            sport,
            dport,
            l4: L4::Udp,
            payload_len,
        }
    }

    pub fn tcp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, flags: u8) -> Self {
        Self {
            vlan: None,
            src,
            dst,
            sport,
            dport,
            l4: L4::Tcp { flags },
            payload_len: 0,
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let eth = PacketBuilder::ethernet2(SRC_MAC, DST_MAC);
        let payload = vec![0xabu8; self.payload_len];
        let mut out = Vec::with_capacity(self.payload_len + 80);
        macro_rules! finish {
            ($ip:expr) => {
                match self.l4 {
                    L4::Udp => {
                        let b = $ip.udp(self.sport, self.dport);
                        b.write(&mut out, &payload).expect("frame fits");
                    }
                    L4::Tcp { flags } => {
                        let mut b = $ip.tcp(self.sport, self.dport, 1000, 64240);
                        if flags & 0x01 != 0 {
                            b = b.fin();
                        }
                        if flags & 0x02 != 0 {
                            b = b.syn();
                        }
                        if flags & 0x04 != 0 {
                            b = b.rst();
                        }
                        if flags & 0x08 != 0 {
                            b = b.psh();
                        }
                        if flags & 0x10 != 0 {
                            b = b.ack(1);
                        }
                        if flags & 0x20 != 0 {
                            b = b.urg(0);
                        }
                        b.write(&mut out, &payload).expect("frame fits");
                    }
                }
            };
        }
        match (self.vlan, self.src, self.dst) {
            (None, IpAddr::V4(s), IpAddr::V4(d)) => finish!(eth.ipv4(s.octets(), d.octets(), 64)),
            (None, IpAddr::V6(s), IpAddr::V6(d)) => finish!(eth.ipv6(s.octets(), d.octets(), 64)),
            (Some(vid), IpAddr::V4(s), IpAddr::V4(d)) => {
                let vlan =
                    eth.single_vlan(etherparse::VlanId::try_new(vid & 0x0fff).expect("12-bit id"));
                finish!(vlan.ipv4(s.octets(), d.octets(), 64))
            }
            (Some(vid), IpAddr::V6(s), IpAddr::V6(d)) => {
                let vlan =
                    eth.single_vlan(etherparse::VlanId::try_new(vid & 0x0fff).expect("12-bit id"));
                finish!(vlan.ipv6(s.octets(), d.octets(), 64))
            }
            _ => panic!("source and destination must be the same address family"),
        }
        out
    }
}

/// Inserts an IPv6 extension header (hop-by-hop 0, routing 43, destination options 60) of
/// `8 * (len_units + 1)` bytes right after the fixed IPv6 header of an untagged frame.
pub fn insert_ipv6_ext(frame: &mut Vec<u8>, kind: u8, len_units: u8) {
    const L3: usize = 14;
    let next = frame[L3 + 6];
    frame[L3 + 6] = kind;
    let len = 8 * (len_units as usize + 1);
    let mut ext = vec![0u8; len];
    ext[0] = next;
    ext[1] = len_units;
    if len > 2 {
        // PadN option over the rest so the header is valid.
        ext[2] = 1;
        ext[3] = (len - 4) as u8;
    }
    let at = L3 + 40;
    frame.splice(at..at, ext);
    let plen = u16::from_be_bytes([frame[L3 + 4], frame[L3 + 5]]) as usize + len;
    frame[L3 + 4..L3 + 6].copy_from_slice(&(plen as u16).to_be_bytes());
}
