//! Programs that do nothing on purpose: the baselines `classify` is measured against, and the
//! transmitter the packet generator runs under BPF_PROG_TEST_RUN's live-frames mode.
#![no_std]
#![no_main]

mod common;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};

#[map]
static SPRAY_COUNTER: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

#[xdp]
pub fn bare_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn bare_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// Sends each test frame out of the interface it is "received" on.
#[xdp]
pub fn bare_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

/// Like `bare_tx`, but rewrites the low 16 bits of an untagged IPv4 frame's source address from
/// a counter: a flood from 65,536 sources, which no per-flow cache can hold. The IPv4 and the
/// TCP/UDP checksums are updated to match (RFC 1624), so without an XDP program in the way the
/// receiver's kernel takes each frame as valid traffic, as it would a real flood's.
#[xdp]
pub fn bare_tx_spray(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    // Ethernet 14 + IPv4 20 (no options) + TCP checksum at 16: the furthest byte touched.
    if start + 52 > end {
        return xdp_action::XDP_ABORTED;
    }
    let Some(counter) = SPRAY_COUNTER.get_ptr_mut(0) else {
        return xdp_action::XDP_TX;
    };
    let n = unsafe { *counter }.wrapping_add(1);
    unsafe { *counter = n };
    let word = |offset: usize| unsafe { u16::from_be_bytes(*((start + offset) as *const [u8; 2])) };
    let put = |offset: usize, value: u16| unsafe {
        *((start + offset) as *mut [u8; 2]) = value.to_be_bytes();
    };
    // Source address low half: Ethernet 14 + IPv4 offset 14.
    let (old, new) = (word(28), n as u16);
    put(28, new);
    put(24, checksum_replace(word(24), old, new));
    let proto = unsafe { *((start + 23) as *const u8) };
    if proto == 6 {
        put(50, checksum_replace(word(50), old, new));
    } else if proto == 17 && word(40) != 0 {
        put(40, checksum_replace(word(40), old, new));
    }
    xdp_action::XDP_TX
}

/// A one's-complement checksum after one 16-bit word it covers changed from `old` to `new`.
#[inline(always)]
fn checksum_replace(checksum: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!checksum) + u32::from(!old) + u32::from(new);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
