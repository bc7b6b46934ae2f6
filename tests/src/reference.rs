//! A reference model of XDP `classify`, written as plain slice-based Rust from the rules (see
//! `ebpf/programs/src/parse.rs` for the same rules in verifier-friendly form). The differential
//! test runs both over the same packets and demands the same verdict, app and drop reason.

use std::collections::HashMap;

use edgeplane_abi::{
    AppEntry, AppKey, DropReason, IPPROTO_TCP, IPPROTO_UDP, RateLimitConfig, TokenBucket,
    UNCLASSIFIED_APP, app_flags, rate_limit_flags, rate_limit_key, token_bucket_admit,
    token_bucket_new,
};

const MAX_IPV6_EXT_HEADERS: usize = 6;
const MAX_L4_OFFSET: usize = 1024;

/// What classify does with one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not an app's packet (or not TCP/UDP over IP, or a fragment to no app's address):
    /// XDP_PASS, no counters.
    Pass,
    /// XDP_DROP, counted in `app`'s slot (0 when the headers were too broken to tell).
    Drop { app: u32, reason: DropReason },
    /// Counted for `app`; `steered` means XDP_REDIRECT to a worker CPU, else XDP_PASS.
    Admit {
        app: u32,
        steered: bool,
        new_flow: bool,
    },
}

/// The parsed 5-tuple, or why there is none.
#[derive(Debug, PartialEq, Eq)]
enum Headers {
    Pass,
    Drop(DropReason),
    Flow {
        src: [u8; 16],
        dst: [u8; 16],
        dport: u16,
        proto: u8,
        tcp_flags: u8,
    },
    Fragment {
        src: [u8; 16],
        dst: [u8; 16],
    },
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn mapped_v4(b: &[u8]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[10] = 0xff;
    a[11] = 0xff;
    a[12..].copy_from_slice(&b[..4]);
    a
}

fn parse(frame: &[u8]) -> Headers {
    if frame.len() < 14 {
        return Headers::Drop(DropReason::TruncatedL2);
    }
    let mut ethertype = be16(frame, 12);
    let mut l3 = 14;
    if ethertype == 0x8100 || ethertype == 0x88a8 {
        if frame.len() < 18 {
            return Headers::Drop(DropReason::TruncatedL2);
        }
        ethertype = be16(frame, 16);
        l3 = 18;
    }
    match ethertype {
        0x0800 => parse_ipv4(frame, l3),
        0x86dd => parse_ipv6(frame, l3),
        _ => Headers::Pass,
    }
}

fn parse_ipv4(frame: &[u8], l3: usize) -> Headers {
    let bad = Headers::Drop(DropReason::MalformedIpv4);
    let Some(ip) = frame.get(l3..l3 + 20) else {
        return bad;
    };
    if ip[0] >> 4 != 4 {
        return bad;
    }
    let ihl = (ip[0] & 0x0f) as usize * 4;
    let total = be16(ip, 2) as usize;
    if ihl < 20 || total < ihl || l3 + total > frame.len() {
        return bad;
    }
    let more_fragments = ip[6] & 0x20 != 0;
    let offset = be16(ip, 6) & 0x1fff;
    if more_fragments || offset != 0 {
        return Headers::Fragment {
            src: mapped_v4(&ip[12..16]),
            dst: mapped_v4(&ip[16..20]),
        };
    }
    let proto = ip[9];
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Headers::Pass;
    }
    let (src, dst) = (mapped_v4(&ip[12..16]), mapped_v4(&ip[16..20]));
    parse_l4(&frame[l3 + ihl..l3 + total], proto, src, dst)
}

fn parse_ipv6(frame: &[u8], l3: usize) -> Headers {
    let bad = Headers::Drop(DropReason::MalformedIpv6);
    let Some(ip) = frame.get(l3..l3 + 40) else {
        return bad;
    };
    if ip[0] >> 4 != 6 {
        return bad;
    }
    let end = l3 + 40 + be16(ip, 4) as usize;
    if end > frame.len() {
        return bad;
    }
    let mut next = ip[6];
    let mut at = l3 + 40;
    let is_ext = |n: u8| matches!(n, 0 | 43 | 44 | 51 | 60);
    let mut walked = 0;
    while is_ext(next) {
        if walked == MAX_IPV6_EXT_HEADERS {
            return bad;
        }
        walked += 1;
        // Each header's own first bytes must be in the frame (though not necessarily in the
        // payload: that is checked after stepping over it).
        let header_bytes = if next == 44 { 4 } else { 2 };
        let Some(h) = frame.get(at..at + header_bytes) else {
            return bad;
        };
        let len = match next {
            44 => {
                if be16(h, 2) != 0 {
                    return Headers::Fragment {
                        src: ip[8..24].try_into().unwrap(),
                        dst: ip[24..40].try_into().unwrap(),
                    };
                }
                8
            }
            51 => (h[1] as usize + 2) * 4,
            _ => (h[1] as usize + 1) * 8,
        };
        next = h[0];
        at += len;
        if at > end || at > MAX_L4_OFFSET {
            return bad;
        }
    }
    if next != IPPROTO_TCP && next != IPPROTO_UDP {
        return Headers::Pass;
    }
    let src: [u8; 16] = ip[8..24].try_into().unwrap();
    let dst: [u8; 16] = ip[24..40].try_into().unwrap();
    parse_l4(&frame[at..end], next, src, dst)
}

/// `l4` is the L4 segment as the IP header bounds it.
fn parse_l4(l4: &[u8], proto: u8, src: [u8; 16], dst: [u8; 16]) -> Headers {
    if proto == IPPROTO_TCP {
        if l4.len() < 20 {
            return Headers::Drop(DropReason::MalformedTcp);
        }
        let doff = (l4[12] >> 4) as usize * 4;
        if doff < 20 || doff > l4.len() {
            return Headers::Drop(DropReason::MalformedTcp);
        }
        Headers::Flow {
            src,
            dst,
            dport: be16(l4, 2),
            proto,
            tcp_flags: l4[13],
        }
    } else {
        if l4.len() < 8 {
            return Headers::Drop(DropReason::MalformedUdp);
        }
        let len = be16(l4, 4) as usize;
        if len < 8 || len > l4.len() {
            return Headers::Drop(DropReason::MalformedUdp);
        }
        Headers::Flow {
            src,
            dst,
            dport: be16(l4, 2),
            proto,
            tcp_flags: 0,
        }
    }
}

fn bad_tcp_flags(f: u8) -> bool {
    let (fin, syn, rst, ack) = (f & 1 != 0, f & 2 != 0, f & 4 != 0, f & 0x10 != 0);
    f & 0x3f == 0 || (syn && fin) || (syn && rst) || (fin && !ack)
}

/// The configuration classify reads, and the per-source state it keeps.
#[derive(Default)]
pub struct Model {
    pub apps: HashMap<AppKey, AppEntry>,
    /// VIP address -> app, for fragments (what `PinnedMaps` derives from `apps`).
    pub vip_addrs: HashMap<[u8; 16], AppEntry>,
    /// (prefix length over 16 bytes, network bytes)
    pub blocklist: Vec<(u32, [u8; 16])>,
    pub rate_limit: RateLimitConfig,
    pub steering: bool,
    buckets: HashMap<[u8; 16], TokenBucket>,
}

impl Model {
    /// Derives `vip_addrs` from `apps` the way `PinnedMaps` does: each VIP address names the
    /// app of its lowest-id VIP there.
    pub fn sync_vip_addrs(&mut self) {
        self.vip_addrs.clear();
        for (key, entry) in &self.apps {
            let slot = self.vip_addrs.entry(key.addr).or_insert(*entry);
            if entry.app_id < slot.app_id {
                *slot = *entry;
            }
        }
    }

    fn blocked(&self, src: &[u8; 16]) -> bool {
        self.blocklist.iter().any(|(len, net)| {
            let full = (*len / 8) as usize;
            let rest = *len % 8;
            src[..full] == net[..full]
                && (rest == 0 || (src[full] ^ net[full]) & (0xffu8 << (8 - rest)) == 0)
        })
    }

    /// Whether the per-source token bucket admits a packet from `src` of an app with `entry`.
    fn rate_admits(&mut self, entry: &AppEntry, src: &[u8; 16], now_ns: u64) -> bool {
        let cfg = self.rate_limit;
        if entry.flags & app_flags::NO_RATE_LIMIT != 0 || cfg.flags & rate_limit_flags::ENABLED == 0
        {
            return true;
        }
        let bucket = self
            .buckets
            .entry(rate_limit_key(src, &cfg))
            .or_insert_with(|| token_bucket_new(&cfg, now_ns));
        token_bucket_admit(bucket, &cfg, now_ns)
    }

    /// `now_ns` feeds the token bucket; with `pps = 0` the outcome does not depend on it.
    pub fn classify(&mut self, frame: &[u8], now_ns: u64) -> Outcome {
        let (src, dst, dport, proto, tcp_flags) = match parse(frame) {
            Headers::Pass => return Outcome::Pass,
            Headers::Fragment { src, dst } => {
                let Some(entry) = self.vip_addrs.get(&dst).copied() else {
                    return Outcome::Pass;
                };
                let app = entry.app_id;
                if self.blocked(&src) {
                    return Outcome::Drop {
                        app,
                        reason: DropReason::Blocklisted,
                    };
                }
                if !self.rate_admits(&entry, &src, now_ns) {
                    return Outcome::Drop {
                        app,
                        reason: DropReason::RateLimited,
                    };
                }
                return Outcome::Admit {
                    app,
                    steered: false,
                    new_flow: false,
                };
            }
            Headers::Drop(reason) => {
                return Outcome::Drop {
                    app: UNCLASSIFIED_APP,
                    reason,
                };
            }
            Headers::Flow {
                src,
                dst,
                dport,
                proto,
                tcp_flags,
            } => (src, dst, dport, proto, tcp_flags),
        };
        let key = AppKey {
            addr: dst,
            port: dport,
            proto,
            _pad: 0,
        };
        let Some(entry) = self.apps.get(&key).copied() else {
            return Outcome::Pass;
        };
        let app = entry.app_id;
        if self.blocked(&src) {
            return Outcome::Drop {
                app,
                reason: DropReason::Blocklisted,
            };
        }
        if proto == IPPROTO_TCP && bad_tcp_flags(tcp_flags) {
            return Outcome::Drop {
                app,
                reason: DropReason::BadTcpFlags,
            };
        }
        if !self.rate_admits(&entry, &src, now_ns) {
            return Outcome::Drop {
                app,
                reason: DropReason::RateLimited,
            };
        }
        Outcome::Admit {
            app,
            steered: self.steering && entry.flags & app_flags::NO_STEER == 0,
            new_flow: proto == IPPROTO_TCP && tcp_flags & 0x12 == 0x02,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lpm_matching() {
        let mut m = Model::default();
        let mut net = [0u8; 16];
        net[10] = 0xff;
        net[11] = 0xff;
        net[12] = 203;
        net[13] = 0;
        net[14] = 113;
        m.blocklist.push((96 + 20, net)); // 203.0.112.0/20 covers 203.0.113.x
        let mut a = net;
        a[14] = 113;
        a[15] = 9;
        assert!(m.blocked(&a));
        a[14] = 128;
        assert!(!m.blocked(&a));
    }

    #[test]
    fn tcp_flag_policy() {
        assert!(bad_tcp_flags(0)); // null scan
        assert!(bad_tcp_flags(0x03)); // SYN+FIN
        assert!(bad_tcp_flags(0x06)); // SYN+RST
        assert!(bad_tcp_flags(0x29)); // xmas: FIN+PSH+URG, no ACK
        assert!(!bad_tcp_flags(0x02)); // SYN
        assert!(!bad_tcp_flags(0x12)); // SYN+ACK
        assert!(!bad_tcp_flags(0x11)); // FIN+ACK
        assert!(!bad_tcp_flags(0x04)); // RST
    }
}
