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
/// a counter: a flood from 65,536 sources, which no per-flow cache can hold.
#[xdp]
pub fn bare_tx_spray(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    // Source address low half: Ethernet 14 + IPv4 offset 14.
    if start + 30 > end {
        return xdp_action::XDP_ABORTED;
    }
    if let Some(counter) = SPRAY_COUNTER.get_ptr_mut(0) {
        let n = unsafe { *counter }.wrapping_add(1);
        unsafe {
            *counter = n;
            *((start + 28) as *mut [u8; 2]) = (n as u16).to_be_bytes();
        }
    }
    xdp_action::XDP_TX
}
