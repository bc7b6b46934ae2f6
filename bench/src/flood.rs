//! Frames flooded into a veth from the generator's side, on any machine of this kind.
//!
//! Two generators, the fastest the kernel allows picked once per process:
//! - **live frames**: BPF_PROG_TEST_RUN in live-frames mode runs `bare_tx` (or `bare_tx_spray`),
//!   which XDP_TXes each frame out of the interface, with no socket or skb on the way. Some
//!   machines refuse it (EPERM as root, PLATFORM.md), so it is probed with one frame first.
//! - **AF_PACKET**: a raw packet socket bound to the interface, bypassing the qdisc
//!   (`PACKET_QDISC_BYPASS`), sending a batch of frames per `sendmmsg`. Every kernel has it.
//!
//! Either way the frames arrive at the veth's peer as received traffic, through its XDP hook.

use std::{
    os::fd::OwnedFd,
    sync::OnceLock,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::{
    Ebpf,
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp},
};
use edgeplane::loader::BASELINE_OBJECT;
use serde::Serialize;

use edgeplane_testkit::netns::{Netns, ifindex};

use crate::af_packet::{packet_socket, send_packets};

/// How the flood's sources vary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Sources {
    /// One source address.
    One,
    /// 65,536 source addresses in turn (the frame's low 16 bits of source address): no
    /// per-source cache can hold them.
    Spread,
}

/// Which generator sends the frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
pub enum Generator {
    /// BPF_PROG_TEST_RUN live frames (XDP_TX), where the kernel allows it.
    LiveFrames,
    /// An AF_PACKET socket, sendmmsg, the qdisc bypassed.
    AfPacket,
}

impl Generator {
    pub fn label(self) -> &'static str {
        match self {
            Generator::LiveFrames => "live frames (BPF_PROG_TEST_RUN, XDP_TX)",
            Generator::AfPacket => "AF_PACKET (sendmmsg, qdisc bypassed)",
        }
    }

    /// The fastest generator this kernel allows, probed once per process (one live frame out of
    /// `iface` in `ns`); says which, and why, in one line.
    pub fn best(ns: &Netns, iface: &str) -> Generator {
        static CHOSEN: OnceLock<Generator> = OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let probe = crate::packets::FrameSpec::udp(
                [192, 0, 2, 1].into(),
                [192, 0, 2, 2].into(),
                9,
                9,
                18,
            )
            .build();
            let live = Flooder::open(Generator::LiveFrames, ns, iface, &probe, Sources::One)
                .and_then(|mut f| ns.run(|| f.send(1))?);
            match live {
                Ok(()) => {
                    eprintln!(
                        "[flood] live frames allowed: flooding by {}",
                        Generator::LiveFrames.label()
                    );
                    Generator::LiveFrames
                }
                Err(e) => {
                    let cause = e
                        .chain()
                        .last()
                        .map(ToString::to_string)
                        .unwrap_or_default();
                    eprintln!(
                        "[flood] live frames refused here ({cause}): flooding by {}",
                        Generator::AfPacket.label()
                    );
                    Generator::AfPacket
                }
            }
        })
    }

    /// Sends `count` copies of `frame` (its sources as `sources` say) out of `iface` in `ns`;
    /// returns the wall time it took.
    pub fn flood(
        self,
        ns: &Netns,
        iface: &str,
        frame: &[u8],
        count: u32,
        sources: Sources,
    ) -> anyhow::Result<Duration> {
        let mut flooder = Flooder::open(self, ns, iface, frame, sources)?;
        ns.run(|| flooder.timed(count))?
    }
}

/// One generator, ready to send copies of one frame out of one interface.
pub struct Flooder {
    how: How,
}

enum How {
    Live {
        ebpf: Ebpf,
        program: &'static str,
        ctx: Vec<u8>,
        frame: Vec<u8>,
    },
    Packet {
        socket: OwnedFd,
        /// Every frame to send in turn, back to back, each `frame_len` bytes.
        frames: Vec<u8>,
        frame_len: usize,
        next: usize,
    },
}

impl Flooder {
    /// A generator of `frame` out of `iface` in `ns`; with `Sources::Spread`, the low 16 bits
    /// of each frame's IPv4 source count up (checksums kept valid).
    pub fn open(
        generator: Generator,
        ns: &Netns,
        iface: &str,
        frame: &[u8],
        sources: Sources,
    ) -> anyhow::Result<Self> {
        let how = match generator {
            Generator::LiveFrames => {
                let mut ebpf = Ebpf::load(BASELINE_OBJECT)?;
                let program = match sources {
                    Sources::One => "bare_tx",
                    Sources::Spread => "bare_tx_spray",
                };
                let prog: &mut Xdp = ebpf
                    .program_mut(program)
                    .with_context(|| format!("{program} missing"))?
                    .try_into()?;
                prog.load()?;
                let index = ns.run(|| ifindex(iface))??;
                // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
                // egress_ifindex
                let frame_len = u32::try_from(frame.len()).context("frame length")?;
                let ctx = [0, frame_len, 0, index, 0, 0]
                    .iter()
                    .flat_map(|v| v.to_ne_bytes())
                    .collect();
                How::Live {
                    ebpf,
                    program,
                    ctx,
                    frame: frame.to_vec(),
                }
            }
            Generator::AfPacket => {
                let socket = ns.run(|| packet_socket(iface))??;
                let frames = match sources {
                    Sources::One => frame.to_vec(),
                    Sources::Spread => (0..=u16::MAX).flat_map(|low| spray(frame, low)).collect(),
                };
                How::Packet {
                    socket,
                    frames,
                    frame_len: frame.len(),
                    next: 0,
                }
            }
        };
        Ok(Self { how })
    }

    /// Sends `count` frames (call it in the namespace the flooder was opened in).
    pub fn send(&mut self, count: u32) -> anyhow::Result<()> {
        match &mut self.how {
            How::Live {
                ebpf,
                program,
                ctx,
                frame,
            } => {
                let prog: &Xdp = ebpf
                    .program(program)
                    .with_context(|| format!("{program} missing"))?
                    .try_into()?;
                prog.test_run(TestRunOptions {
                    data_in: Some(frame),
                    ctx_in: Some(ctx),
                    repeat: count,
                    attrs: TestRunAttrs::new().xdp_live_frames(64),
                    ..Default::default()
                })
                .context("BPF_PROG_TEST_RUN live frames")?;
                Ok(())
            }
            How::Packet {
                socket,
                frames,
                frame_len,
                next,
            } => send_packets(socket, frames, *frame_len, next, count as usize),
        }
    }

    /// Sends `count` frames and returns the wall time it took.
    pub fn timed(&mut self, count: u32) -> anyhow::Result<Duration> {
        let started = Instant::now();
        self.send(count)?;
        Ok(started.elapsed())
    }
}

/// `frame` with the low 16 bits of its IPv4 source set to `low`, header and L4 checksums
/// updated (RFC 1624), as `bare_tx_spray` does in the kernel.
fn spray(frame: &[u8], low: u16) -> Vec<u8> {
    let mut f = frame.to_vec();
    if f.len() < 52 || f[12..14] != [0x08, 0x00] {
        return f;
    }
    let word = |f: &[u8], at: usize| u16::from_be_bytes([f[at], f[at + 1]]);
    let old = word(&f, 28);
    f[28..30].copy_from_slice(&low.to_be_bytes());
    let ip_sum = checksum_replace(word(&f, 24), old, low);
    f[24..26].copy_from_slice(&ip_sum.to_be_bytes());
    let l4_sum_at = match f[23] {
        6 => Some(50),
        17 if word(&f, 40) != 0 => Some(40),
        _ => None,
    };
    if let Some(at) = l4_sum_at {
        let sum = checksum_replace(word(&f, at), old, low);
        f[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    }
    f
}

fn checksum_replace(checksum: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!checksum) + u32::from(!old) + u32::from(new);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spraying_keeps_the_checksums_of_the_frame_valid() {
        let frame = crate::packets::FrameSpec::udp(
            [203, 0, 113, 5].into(),
            [10, 88, 0, 2].into(),
            40000,
            53,
            18,
        )
        .build();
        for low in [0u16, 1, 0x7105, 0xffff] {
            let sprayed = spray(&frame, low);
            let want = crate::packets::FrameSpec::udp(
                [203, 0, (low >> 8) as u8, low as u8].into(),
                [10, 88, 0, 2].into(),
                40000,
                53,
                18,
            )
            .build();
            assert_eq!(sprayed, want, "source low bits {low:#x}");
        }
    }
}
