//! Differential test: the loaded XDP `classify`, run by BPF_PROG_TEST_RUN, and the reference model
//! agree on verdict, app and drop reason for 100,000+ seeded random and mutated frames.
//!
//! The kernel side is observed through its real counters: after every packet, the APP_STATS slot
//! of every configured app (and slot 0) must have moved exactly as the model says.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::programs::{TestRun as _, TestRunOptions};
use edgeplane::addr::{Cidr, Vip};
use edgeplane_abi::{AppEntry, AppStats, DropReason, RateLimitConfig, app_flags, rate_limit_flags};
use edgeplane_bench::packets::{FrameSpec, L4, insert_ipv6_ext};
use edgeplane_testkit::{TestPins, require_root};
use edgeplane_tests::reference::{Model, Outcome};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};

const PACKETS: usize = 100_000;
const SEED: u64 = 0xed6e_91a7e;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

struct Gen {
    rng: StdRng,
    vips: Vec<Vip>,
    v4_sources: Vec<IpAddr>,
    v6_sources: Vec<IpAddr>,
}

impl Gen {
    fn addr(&mut self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(Ipv6Addr::from(self.rng.random::<u128>()))
        } else {
            IpAddr::V4(Ipv4Addr::from(self.rng.random::<u32>()))
        }
    }

    fn well_formed(&mut self) -> Vec<u8> {
        let rng = &mut self.rng;
        let v6 = rng.random_bool(0.4);
        let family: Vec<Vip> = self
            .vips
            .iter()
            .filter(|v| v.addr.is_ipv6() == v6)
            .copied()
            .collect();
        let vip = *family.choose(rng).unwrap();
        let src = if rng.random_bool(0.9) {
            *(if v6 {
                &self.v6_sources
            } else {
                &self.v4_sources
            })
            .choose(rng)
            .unwrap()
        } else {
            self.addr(v6)
        };
        let rng = &mut self.rng;
        let dst = if rng.random_bool(0.8) {
            vip.addr.ip()
        } else {
            self.addr(v6)
        };
        let rng = &mut self.rng;
        let dport = if rng.random_bool(0.85) {
            vip.addr.port()
        } else {
            rng.random()
        };
        let tcp = match vip.proto {
            edgeplane::addr::Protocol::Tcp => rng.random_bool(0.85),
            edgeplane::addr::Protocol::Udp => rng.random_bool(0.15),
        };
        let l4 = if tcp {
            let flags = *[
                0x02u8, 0x12, 0x10, 0x18, 0x11, 0x04, 0x14, 0x00, 0x03, 0x06, 0x29, 0x01,
            ]
            .choose(rng)
            .unwrap();
            L4::Tcp {
                flags: if rng.random_bool(0.05) {
                    rng.random::<u8>() & 0x3f
                } else {
                    flags
                },
            }
        } else {
            L4::Udp
        };
        let vlan = rng.random_bool(0.15).then(|| rng.random_range(1..4095));
        let spec = FrameSpec {
            vlan,
            src,
            dst,
            sport: rng.random_range(1024..65535),
            dport,
            l4,
            payload_len: rng.random_range(0..80),
        };
        let mut frame = spec.build();
        if v6 && vlan.is_none() && self.rng.random_bool(0.3) {
            for _ in 0..self.rng.random_range(1..=7) {
                let kind = *[0u8, 43, 60].choose(&mut self.rng).unwrap();
                let units = self.rng.random_range(0..3);
                insert_ipv6_ext(&mut frame, kind, units);
            }
        }
        frame
    }

    /// One frame: well formed, or with 1-3 targeted or random corruptions.
    fn frame(&mut self) -> Vec<u8> {
        let mut f = self.well_formed();
        if self.rng.random_bool(0.45) {
            for _ in 0..self.rng.random_range(1..=3) {
                self.mutate(&mut f);
            }
        }
        f
    }

    fn mutate(&mut self, f: &mut Vec<u8>) {
        let rng = &mut self.rng;
        let len = f.len();
        let l3 = if u16::from_be_bytes([f[12], f[13]]) == 0x8100 {
            18
        } else {
            14
        };
        let v6 = f.get(l3).map(|b| b >> 4) == Some(6);
        let l4 = l3 + if v6 { 40 } else { 20 };
        let at = |off: usize| off.min(len - 1);
        match rng.random_range(0..13) {
            0 => f.truncate(rng.random_range(14..=len)),
            1 => f[at(rng.random_range(12..len))] = rng.random(),
            2 => f[at(l3)] = rng.random(),     // version / IHL
            3 => f[at(l3 + 2)] = rng.random(), // IPv4 total length hi
            4 => f[at(l3 + 3)] = rng.random(), // IPv4 total length lo
            5 => f[at(l3 + 4)] = rng.random::<u8>() & 0x07, // IPv6 payload length hi
            6 => f[at(l3 + 6)] = *[0u8, 6, 17, 43, 44, 51, 59, 60, 1].choose(rng).unwrap(), // next header / flags
            7 => f[at(l4 + 12)] = rng.random(), // TCP data offset
            8 => f[at(l4 + 4)] = rng.random::<u8>() & 0x01, // UDP length hi
            9 => f[at(l4 + 5)] = rng.random(),  // UDP length lo
            10 => f[at(l4 + 1)] = rng.random(), // L4 / ext header length
            // IPv4 fragment: more-fragments, an offset, or both (IPv6 ones come from case 6).
            11 if !v6 => {
                let (hi, lo) = *[(0x20u8, 0u8), (0x00, 0x09), (0x21, 0x40)]
                    .choose(rng)
                    .unwrap();
                f[at(l3 + 6)] = hi;
                f[at(l3 + 7)] = lo;
            }
            _ => {
                let extra = rng.random_range(1..40);
                f.extend(std::iter::repeat_n(0u8, extra)); // trailing padding
            }
        }
    }
}

/// An untagged IPv4 frame with more-fragments or an offset.
fn is_ipv4_fragment(f: &[u8]) -> bool {
    f.len() >= 34 && f[12..14] == [0x08, 0x00] && (f[20] & 0x3f != 0 || f[21] != 0)
}

fn expected_deltas(outcome: Outcome, len: u64, slots: &[u32]) -> Vec<AppStats> {
    slots
        .iter()
        .map(|slot| {
            let mut d = AppStats::default();
            match outcome {
                Outcome::Drop { app, reason } if app == *slot => d.drops[reason as usize] = 1,
                Outcome::Admit { app, new_flow, .. } if app == *slot => {
                    d.packets = 1;
                    d.bytes = len;
                    d.new_flows = new_flow as u64;
                }
                _ => {}
            }
            d
        })
        .collect()
}

fn delta(after: &AppStats, before: &AppStats) -> AppStats {
    let mut d = AppStats {
        packets: after.packets - before.packets,
        bytes: after.bytes - before.bytes,
        new_flows: after.new_flows - before.new_flows,
        ..Default::default()
    };
    for i in 0..DropReason::COUNT {
        d.drops[i] = after.drops[i] - before.drops[i];
    }
    d
}

#[test]
fn xdp_classify_agrees_with_reference_model() -> anyhow::Result<()> {
    if !require_root("xdp_classify_agrees_with_reference_model") {
        return Ok(());
    }
    let pins = TestPins::new("differential");
    let dp = pins.load()?;
    let maps = dp.maps()?;

    let mut model = Model::default();
    let all_vips = configure(&maps, &mut model)?;
    let mut generator = generator(all_vips)?;

    let slots = [0u32, 1, 2, 3, 4];
    let stats = maps.stats_reader()?;
    let read =
        || -> anyhow::Result<Vec<AppStats>> { slots.iter().map(|s| Ok(stats.app(*s)?)).collect() };
    let mut before = read()?;
    let prog = dp.classify();
    let mut seen: std::collections::BTreeMap<String, usize> = Default::default();
    let mut out = vec![0u8; 4096];
    for i in 0..PACKETS {
        // Change the configuration under the flow cache now and then; the model changes with it.
        reconfigure(i, &maps, &mut model)?;
        let frame = generator.frame();
        let outcome = model.classify(&frame, 0);
        let verdict = prog
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                data_out: Some(&mut out),
                ..Default::default()
            })?
            .return_value;
        let after = read()?;
        let got: Vec<AppStats> = after
            .iter()
            .zip(&before)
            .map(|(a, b)| delta(a, b))
            .collect();
        let want_verdict = match outcome {
            Outcome::Pass => XDP_PASS,
            Outcome::Drop { .. } => XDP_DROP,
            Outcome::Admit { steered: true, .. } => XDP_REDIRECT,
            Outcome::Admit { steered: false, .. } => XDP_PASS,
        };
        let want = expected_deltas(outcome, frame.len() as u64, &slots);
        assert!(
            verdict == want_verdict && got == want,
            "packet #{i} (seed {SEED:#x}) disagrees:\n  model: {outcome:?} -> verdict {want_verdict}\n  xdp verdict {verdict}\n  \
             want deltas {want:?}\n  got  deltas {got:?}\n  frame ({} bytes): {}",
            frame.len(),
            frame.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let label = label(outcome);
        if is_ipv4_fragment(&frame) && !matches!(outcome, Outcome::Pass) {
            *seen.entry(format!("fragment {label}")).or_default() += 1;
        }
        *seen.entry(label).or_default() += 1;
        before = after;
    }
    eprintln!("differential: {PACKETS} packets agree; outcomes: {seen:?}");
    every_behaviour_was_reached(&seen);
    Ok(())
}

/// Four apps (IPv4 and IPv6, TCP and UDP, with and without the rate limit and steering), a
/// blocklist of short, long and IPv6 prefixes, a rate limit and two steered workers, in the maps
/// and in the model alike. Returns every VIP.
fn configure(maps: &edgeplane::PinnedMaps, model: &mut Model) -> anyhow::Result<Vec<Vip>> {
    let apps: [(&str, u32, &[&str], u32); 4] = [
        ("dns4", 1, &["10.0.0.1:53/udp"], 0),
        ("web4", 2, &["10.0.0.1:80/tcp"], app_flags::NO_RATE_LIMIT),
        (
            "web6",
            3,
            &["[2001:db8::1]:443/tcp"],
            app_flags::NO_RATE_LIMIT | app_flags::NO_STEER,
        ),
        ("quic", 4, &["[2001:db8::1]:443/udp", "10.0.0.2:443/tcp"], 0),
    ];
    let mut all_vips = Vec::new();
    for (name, id, vips, flags) in apps {
        let vips: Vec<Vip> = vips.iter().map(|v| v.parse().unwrap()).collect();
        maps.add_app(name, Some(id), &vips, flags)?;
        for v in &vips {
            model.apps.insert(v.key(), AppEntry { app_id: id, flags });
        }
        all_vips.extend(vips);
    }
    model.sync_vip_addrs();
    // Prefixes of /24 or shorter (BLOCK_V4 covers their /24s), longer ones (the trie decides
    // inside their /24), IPv6.
    for cidr in [
        "203.0.113.0/28",
        "2001:db8:bad::/48",
        "198.51.100.77",
        "100.64.0.0/16",
    ] {
        let cidr: Cidr = cidr.parse()?;
        maps.block_add(cidr)?;
        model.blocklist.push(cidr.lpm_key());
    }
    let rl = RateLimitConfig {
        pps: 0,
        burst: 40,
        flags: rate_limit_flags::ENABLED,
        ..Default::default()
    };
    maps.set_rate_limit(rl)?;
    model.rate_limit = rl;
    maps.configure_workers(2, 0, true, 512)?;
    model.steering = true;

    Ok(all_vips)
}

/// Frames to the VIPs from sources inside and outside the blocklist, seeded.
fn generator(vips: Vec<Vip>) -> anyhow::Result<Gen> {
    let mut v4_sources: Vec<IpAddr> = (0..24)
        .map(|i| IpAddr::V4(Ipv4Addr::new(203, 0, 113, i * 2)))
        .collect();
    v4_sources.extend((0..24).map(|i| IpAddr::V4(Ipv4Addr::new(192, 0, 2, i))));
    v4_sources.push("198.51.100.77".parse()?);
    v4_sources.extend((0..8).map(|i| IpAddr::V4(Ipv4Addr::new(100, 64, i * 31, i))));
    let mut v6_sources: Vec<IpAddr> = (0..16)
        .map(|i| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 0, 0, 0, 0, i)))
        .collect();
    v6_sources
        .extend((0..32).map(|i| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x600d, 0, 0, 0, 0, i))));
    Ok(Gen {
        rng: StdRng::seed_from_u64(SEED),
        vips,
        v4_sources,
        v6_sources,
    })
}

/// Changes the configuration under the flow cache now and then (at packet `i`); the model
/// changes with it.
fn reconfigure(i: usize, maps: &edgeplane::PinnedMaps, model: &mut Model) -> anyhow::Result<()> {
    if !matches!(i % 20_000, 5_000 | 10_000 | 15_000) {
        return Ok(());
    }
    let web4: Vip = "10.0.0.1:80/tcp".parse()?;
    let toggled: Cidr = "198.51.100.77".parse()?;
    let toggled_wide: Cidr = "100.64.0.0/16".parse()?;
    match i % 20_000 {
        5_000 => {
            maps.block_remove(toggled)?;
            model.blocklist.retain(|k| *k != toggled.lpm_key());
            maps.block_remove(toggled_wide)?;
            model.blocklist.retain(|k| *k != toggled_wide.lpm_key());
        }
        10_000 => {
            let flags = app_flags::NO_RATE_LIMIT | app_flags::NO_STEER;
            maps.add_app("web4", Some(2), &[web4], flags)?;
            model.apps.insert(web4.key(), AppEntry { app_id: 2, flags });
            model.sync_vip_addrs();
        }
        15_000 => {
            maps.block_add(toggled)?;
            model.blocklist.push(toggled.lpm_key());
            maps.block_add(toggled_wide)?;
            model.blocklist.push(toggled_wide.lpm_key());
            maps.add_app("web4", Some(2), &[web4], app_flags::NO_RATE_LIMIT)?;
            model.apps.insert(
                web4.key(),
                AppEntry {
                    app_id: 2,
                    flags: app_flags::NO_RATE_LIMIT,
                },
            );
            model.sync_vip_addrs();
        }
        _ => {}
    }
    Ok(())
}

fn label(outcome: Outcome) -> String {
    match outcome {
        Outcome::Pass => "pass".to_owned(),
        Outcome::Drop { reason, .. } => reason.name().to_owned(),
        Outcome::Admit { steered, .. } => format!("admit(steered={steered})"),
    }
}

/// The generator must reach every behaviour, or agreement proves little; fragments to an app's
/// address meet the guard too.
fn every_behaviour_was_reached(seen: &std::collections::BTreeMap<String, usize>) {
    for reason in DropReason::ALL {
        assert!(
            seen.get(reason.name()).copied().unwrap_or(0) >= 10,
            "generator never reached {}: {seen:?}",
            reason.name()
        );
    }
    // Fragments to an app's address meet the guard too (once they passed it untouched).
    for label in [
        "fragment blocklisted",
        "fragment rate-limited",
        "fragment admit(steered=false)",
    ] {
        assert!(
            seen.get(label).copied().unwrap_or(0) >= 10,
            "generator rarely reached {label}: {seen:?}"
        );
    }
    for label in ["pass", "admit(steered=true)", "admit(steered=false)"] {
        assert!(
            seen.get(label).copied().unwrap_or(0) >= 100,
            "generator rarely reached {label}: {seen:?}"
        );
    }
}
