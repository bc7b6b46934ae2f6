//! Header parsing for `classify`: Ethernet (one 802.1Q/802.1ad tag), IPv4 with options, IPv6 with
//! a bounded extension-header chain, TCP and UDP.
//!
//! Every rule here is mirrored by the reference classifier in `tests/src/reference.rs`; the
//! differential test holds the two together, so change both or neither.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use edgeplane_abi::{DropReason, IPPROTO_TCP, IPPROTO_UDP, v4_mapped_words};

const ETH_HLEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

/// IPv6 extension headers walked before giving up on the chain (then: malformed).
pub const MAX_IPV6_EXT_HEADERS: usize = 6;
/// The L4 header must start within this many bytes of the frame start (bounds the verifier's view
/// of the offset; no real chain comes close).
pub const MAX_L4_OFFSET: usize = 1024;

/// What the headers say about a packet.
pub enum Parsed {
    /// Not TCP/UDP over IP: none of our business.
    Pass,
    Drop(DropReason),
    Flow(Flow),
    /// An IP fragment (IPv4 MF or offset, IPv6 fragment header other than atomic): no ports to
    /// classify by, but still from a source and to an address the guard knows.
    Fragment(Fragment),
}

/// Addresses of a fragment, as `Flow` has them.
pub struct Fragment {
    pub src: [u32; 4],
    pub dst: [u32; 4],
}

/// A parsed TCP or UDP packet. Addresses are IPv4-mapped for IPv4, words as loaded from the
/// packet; ports in host order.
pub struct Flow {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub tcp_flags: u8,
}

#[repr(C)]
struct Ipv4Hdr {
    version_ihl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    frag_off: u16,
    ttl: u8,
    protocol: u8,
    check: u16,
    saddr: u32,
    daddr: u32,
}

#[repr(C)]
struct Ipv6Hdr {
    version_tc_flow: u32,
    payload_len: u16,
    next_header: u8,
    hop_limit: u8,
    saddr: [u32; 4],
    daddr: [u32; 4],
}

#[repr(C)]
struct TcpHdr {
    source: u16,
    dest: u16,
    seq: u32,
    ack_seq: u32,
    doff_reserved: u8,
    flags: u8,
    window: u16,
    check: u16,
    urg_ptr: u16,
}

#[repr(C)]
struct UdpHdr {
    source: u16,
    dest: u16,
    len: u16,
    check: u16,
}

#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Parsed {
    let Some(eth_type) = ptr_at::<u16>(ctx, 12) else {
        return Parsed::Drop(DropReason::TruncatedL2);
    };
    let mut l3 = ETH_HLEN;
    let mut eth_type = u16::from_be(unsafe { *eth_type });
    if eth_type == ETH_P_8021Q || eth_type == ETH_P_8021AD {
        let Some(inner) = ptr_at::<u16>(ctx, 16) else {
            return Parsed::Drop(DropReason::TruncatedL2);
        };
        eth_type = u16::from_be(unsafe { *inner });
        l3 += 4;
    }
    match eth_type {
        ETH_P_IPV4 => parse_ipv4(ctx, l3),
        ETH_P_IPV6 => parse_ipv6(ctx, l3),
        _ => Parsed::Pass,
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, l3: usize) -> Parsed {
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, l3) else {
        return Parsed::Drop(DropReason::MalformedIpv4);
    };
    let ip = unsafe { &*ip };
    if ip.version_ihl >> 4 != 4 {
        return Parsed::Drop(DropReason::MalformedIpv4);
    }
    let hlen = ((ip.version_ihl & 0x0f) as usize) * 4;
    let tot_len = u16::from_be(ip.tot_len) as usize;
    let frame_len = ctx.data_end() - ctx.data();
    if hlen < 20 || tot_len < hlen || l3 + tot_len > frame_len {
        return Parsed::Drop(DropReason::MalformedIpv4);
    }
    // Any fragment (MF or a non-zero offset): non-first fragments carry no ports, and a first
    // fragment's L4 length spans bytes we do not have. The kernel reassembles; the guard and the
    // counters still apply, by address.
    if u16::from_be(ip.frag_off) & 0x3fff != 0 {
        return Parsed::Fragment(Fragment {
            src: v4_mapped_words(ip.saddr),
            dst: v4_mapped_words(ip.daddr),
        });
    }
    let proto = ip.protocol;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Parsed::Pass;
    }
    parse_l4(
        ctx,
        l3 + hlen,
        tot_len - hlen,
        proto,
        v4_mapped_words(ip.saddr),
        v4_mapped_words(ip.daddr),
    )
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, l3: usize) -> Parsed {
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, l3) else {
        return Parsed::Drop(DropReason::MalformedIpv6);
    };
    let ip = unsafe { &*ip };
    if u32::from_be(ip.version_tc_flow) >> 28 != 6 {
        return Parsed::Drop(DropReason::MalformedIpv6);
    }
    let payload_start = l3 + size_of::<Ipv6Hdr>();
    let payload_end = payload_start + u16::from_be(ip.payload_len) as usize;
    let frame_len = ctx.data_end() - ctx.data();
    if payload_end > frame_len {
        return Parsed::Drop(DropReason::MalformedIpv6);
    }
    let mut next = ip.next_header;
    let mut off = payload_start;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        let len = match next {
            // Hop-by-hop, routing, destination options: (len + 1) * 8 bytes.
            0 | 43 | 60 => {
                let Some(h) = ptr_at::<[u8; 2]>(ctx, off) else {
                    return Parsed::Drop(DropReason::MalformedIpv6);
                };
                let h = unsafe { *h };
                next = h[0];
                (h[1] as usize + 1) * 8
            }
            // Fragment: like IPv4, the kernel reassembles and the guard applies by address.
            44 => {
                let Some(h) = ptr_at::<[u8; 4]>(ctx, off) else {
                    return Parsed::Drop(DropReason::MalformedIpv6);
                };
                let h = unsafe { *h };
                if u16::from_be_bytes([h[2], h[3]]) != 0 {
                    return Parsed::Fragment(Fragment {
                        src: ip.saddr,
                        dst: ip.daddr,
                    });
                }
                next = h[0];
                8
            }
            // Authentication header: (len + 2) * 4 bytes.
            51 => {
                let Some(h) = ptr_at::<[u8; 2]>(ctx, off) else {
                    return Parsed::Drop(DropReason::MalformedIpv6);
                };
                let h = unsafe { *h };
                next = h[0];
                (h[1] as usize + 2) * 4
            }
            _ => break,
        };
        off += len;
        if off > payload_end || off > MAX_L4_OFFSET {
            return Parsed::Drop(DropReason::MalformedIpv6);
        }
    }
    if matches!(next, 0 | 43 | 44 | 51 | 60) {
        // The chain is longer than we walk.
        return Parsed::Drop(DropReason::MalformedIpv6);
    }
    if next != IPPROTO_TCP && next != IPPROTO_UDP {
        return Parsed::Pass;
    }
    parse_l4(ctx, off, payload_end - off, next, ip.saddr, ip.daddr)
}

#[inline(always)]
fn parse_l4(
    ctx: &XdpContext,
    off: usize,
    l4_len: usize,
    proto: u8,
    src: [u32; 4],
    dst: [u32; 4],
) -> Parsed {
    // Keeps the verifier's range for `off` small; IPv4 never exceeds it (18 + 60).
    if off > MAX_L4_OFFSET {
        return Parsed::Drop(DropReason::MalformedIpv6);
    }
    // One bounds check per header: LLVM may merge separate checks on overlapping ranges in a way
    // the verifier cannot follow.
    if proto == IPPROTO_TCP {
        let Some(tcp) = ptr_at::<TcpHdr>(ctx, off) else {
            return Parsed::Drop(DropReason::MalformedTcp);
        };
        let tcp = unsafe { &*tcp };
        let hlen = ((tcp.doff_reserved >> 4) as usize) * 4;
        if l4_len < 20 || hlen < 20 || hlen > l4_len {
            return Parsed::Drop(DropReason::MalformedTcp);
        }
        Parsed::Flow(Flow {
            src,
            dst,
            sport: u16::from_be(tcp.source),
            dport: u16::from_be(tcp.dest),
            proto,
            tcp_flags: tcp.flags,
        })
    } else {
        let Some(udp) = ptr_at::<UdpHdr>(ctx, off) else {
            return Parsed::Drop(DropReason::MalformedUdp);
        };
        let udp = unsafe { &*udp };
        let udp_len = u16::from_be(udp.len) as usize;
        if l4_len < 8 || udp_len < 8 || udp_len > l4_len {
            return Parsed::Drop(DropReason::MalformedUdp);
        }
        Parsed::Flow(Flow {
            src,
            dst,
            sport: u16::from_be(udp.source),
            dport: u16::from_be(udp.dest),
            proto,
            tcp_flags: 0,
        })
    }
}
