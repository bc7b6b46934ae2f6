//! edgeplane's kernel programs.
//!
//! - `classify` (XDP): parse, guard (malformed, blocklist, TCP flags, per-source rate limit),
//!   count per app, and steer each app flow to its worker's CPU through CPUMAP.
//! - `select_worker` (SK_REUSEPORT): pick the listening socket of the worker the flow was steered
//!   to, or the least loaded worker when that one is over its threshold.
#![no_std]
#![no_main]

mod common;

mod maps;
mod parse;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        bpf_hdr_start_off::BPF_HDR_START_NET,
        sk_action::SK_PASS,
        xdp_action::{XDP_DROP, XDP_PASS},
    },
    helpers::{bpf_ktime_get_ns, bpf_skb_load_bytes, bpf_skb_load_bytes_relative},
    macros::{sk_reuseport, xdp},
    maps::lpm_trie::Key,
    programs::{SkReuseportContext, XdpContext},
};
use edgeplane_abi::{
    AppKey, DestCacheEntry, DropReason, FlowCacheEntry, IPPROTO_TCP, MAX_WORKERS, UNCLASSIFIED_APP,
    app_flags, block_v4_bits, block_v4_slot, cached_verdict, dest_cache_slot, flow_cache_slot,
    flow_hash, rate_limit_flags, rate_limit_key, token_bucket_admit, token_bucket_new,
    v4_mapped_words, worker_flags, worker_for_hash,
};
use maps::{
    APP_STATS, APPS, BLOCK_V4, BLOCKLIST, CONFIG_GEN, DEST_CACHE, FLOW_CACHE, RATE_LIMIT_CFG,
    RL_BUCKETS, VIP_ADDRS, WORKER_CONFIG, WORKER_CPUS, WORKER_LOAD, WORKER_SOCKETS,
};
use parse::{Flow, Fragment, Parsed};

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

#[xdp]
pub fn classify(ctx: XdpContext) -> u32 {
    match parse::parse(&ctx) {
        Parsed::Pass => XDP_PASS,
        Parsed::Drop(reason) => drop_packet(UNCLASSIFIED_APP, reason),
        Parsed::Flow(flow) => classify_flow(&ctx, &flow),
        Parsed::Fragment(fragment) => classify_fragment(&ctx, &fragment),
    }
}

/// A fragment to an app's address meets the same guard as the app's flows (blocklist, rate
/// limit by source) and is counted for the app; then the kernel reassembles it. Fragments are
/// not steered: without ports there is no flow hash to steer by.
#[inline(always)]
fn classify_fragment(ctx: &XdpContext, fragment: &Fragment) -> u32 {
    let Some(app) = (unsafe { VIP_ADDRS.get(&as_bytes(&fragment.dst)) }) else {
        return XDP_PASS;
    };
    let (app_id, flags) = (app.app_id, app.flags);
    let Some(stats) = APP_STATS.get_ptr_mut(app_id) else {
        return XDP_PASS;
    };
    let src = as_bytes(&fragment.src);
    if source_blocked(&fragment.src) {
        unsafe { (*stats).drops[DropReason::Blocklisted as usize] += 1 };
        return XDP_DROP;
    }
    if flags & app_flags::NO_RATE_LIMIT == 0 && !rate_limit_admit(&src) {
        unsafe { (*stats).drops[DropReason::RateLimited as usize] += 1 };
        return XDP_DROP;
    }
    unsafe {
        (*stats).packets += 1;
        (*stats).bytes += (ctx.data_end() - ctx.data()) as u64;
    }
    XDP_PASS
}

#[inline(always)]
fn drop_packet(app_id: u32, reason: DropReason) -> u32 {
    if let Some(stats) = APP_STATS.get_ptr_mut(app_id) {
        unsafe { (*stats).drops[reason as usize] += 1 };
    }
    XDP_DROP
}

#[inline(always)]
fn as_bytes(words: &[u32; 4]) -> [u8; 16] {
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(*words) }
}

/// What APPS says about a destination: (NOT_APP or APP, app id, app flags).
#[inline(always)]
fn app_lookup(flow: &Flow) -> (u8, u32, u32) {
    let key = AppKey {
        addr: as_bytes(&flow.dst),
        port: flow.dport,
        proto: flow.proto,
        _pad: 0,
    };
    match unsafe { APPS.get(&key) } {
        Some(app) => (cached_verdict::APP, app.app_id, app.flags),
        None => (cached_verdict::NOT_APP, 0, 0),
    }
}

#[inline(always)]
fn is_v4_mapped(addr: &[u32; 4]) -> bool {
    addr[0] == 0 && addr[1] == 0 && addr[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff])
}

/// Whether BLOCKLIST covers `src`. An IPv4 source is looked up in BLOCK_V4 (an array read);
/// only a /24 holding prefixes longer than /24 sends it on to the trie.
#[inline(always)]
fn source_blocked(src: &[u32; 4]) -> bool {
    if is_v4_mapped(src) {
        let (word, shift) = block_v4_slot(u32::from_be(src[3]));
        if let Some(bits) = BLOCK_V4.get(word) {
            let bits = (*bits >> shift) & 3;
            if bits & block_v4_bits::COVERED != 0 {
                return true;
            }
            if bits & block_v4_bits::PARTIAL == 0 {
                return false;
            }
        }
    }
    BLOCKLIST.get(Key::new(128, as_bytes(src))).is_some()
}

/// What APPS and BLOCKLIST say about a flow: (verdict, app id, app flags).
#[inline(always)]
fn lookup_policy(flow: &Flow) -> (u8, u32, u32) {
    with_source(app_lookup(flow), &flow.src)
}

/// An app's verdict for a flow from `src`.
#[inline(always)]
fn with_source((verdict, app_id, flags): (u8, u32, u32), src: &[u32; 4]) -> (u8, u32, u32) {
    if verdict == cached_verdict::NOT_APP {
        return (verdict, 0, 0);
    }
    if source_blocked(src) {
        (cached_verdict::APP_BLOCKED, app_id, flags)
    } else {
        (cached_verdict::APP, app_id, flags)
    }
}

/// APPS through the per-CPU destination cache: a flood from many sources to one VIP finds its
/// app in one slot compare.
#[inline(always)]
fn dest_policy(flow: &Flow, generation: u64) -> (u8, u32, u32) {
    let slot = dest_cache_slot(&flow.dst, flow.dport, flow.proto);
    let Some(entry) = DEST_CACHE.get_ptr_mut(slot) else {
        return app_lookup(flow);
    };
    let e = unsafe { &mut *entry };
    if generation != 0
        && e.generation == generation
        && e.dport == flow.dport
        && e.proto == flow.proto
        && e.dst == flow.dst
    {
        return (e.verdict, e.app_id, e.app_flags);
    }
    let (verdict, app_id, app_flags) = app_lookup(flow);
    *e = DestCacheEntry {
        dst: flow.dst,
        dport: flow.dport,
        proto: flow.proto,
        verdict,
        app_id,
        app_flags,
        _pad: 0,
        generation,
    };
    (verdict, app_id, app_flags)
}

/// The policy for a flow. IPv4 sources: the destination cache and BLOCK_V4, each about one
/// array read, whatever the number of sources. IPv6 sources go through the per-CPU flow cache
/// (two hash/trie lookups become one slot compare for every packet of a flow after its first,
/// until the configuration changes).
#[inline(always)]
fn cached_policy(flow: &Flow) -> (u8, u32, u32) {
    let generation = CONFIG_GEN.get(0).copied().unwrap_or(0);
    if is_v4_mapped(&flow.src) {
        return with_source(dest_policy(flow, generation), &flow.src);
    }
    let slot = flow_cache_slot(&flow.src, &flow.dst, flow.dport, flow.proto);
    let Some(entry) = FLOW_CACHE.get_ptr_mut(slot) else {
        return lookup_policy(flow);
    };
    let e = unsafe { &mut *entry };
    if generation != 0
        && e.generation == generation
        && e.dport == flow.dport
        && e.proto == flow.proto
        && e.src == flow.src
        && e.dst == flow.dst
    {
        return (e.verdict, e.app_id, e.app_flags);
    }
    let (verdict, app_id, app_flags) = lookup_policy(flow);
    *e = FlowCacheEntry {
        src: flow.src,
        dst: flow.dst,
        dport: flow.dport,
        proto: flow.proto,
        verdict,
        app_id,
        app_flags,
        _pad: 0,
        generation,
    };
    (verdict, app_id, app_flags)
}

#[inline(always)]
fn classify_flow(ctx: &XdpContext, flow: &Flow) -> u32 {
    let (verdict, app_id, flags) = cached_policy(flow);
    if verdict == cached_verdict::NOT_APP {
        return XDP_PASS;
    }
    let Some(stats) = APP_STATS.get_ptr_mut(app_id) else {
        return XDP_PASS;
    };
    let count_drop = |reason: DropReason| {
        unsafe { (*stats).drops[reason as usize] += 1 };
        XDP_DROP
    };
    if verdict == cached_verdict::APP_BLOCKED {
        return count_drop(DropReason::Blocklisted);
    }
    if flow.proto == IPPROTO_TCP && bad_tcp_flags(flow.tcp_flags) {
        return count_drop(DropReason::BadTcpFlags);
    }
    if flags & app_flags::NO_RATE_LIMIT == 0 && !rate_limit_admit(&as_bytes(&flow.src)) {
        return count_drop(DropReason::RateLimited);
    }
    unsafe {
        (*stats).packets += 1;
        (*stats).bytes += (ctx.data_end() - ctx.data()) as u64;
        if flow.proto == IPPROTO_TCP && flow.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
            (*stats).new_flows += 1;
        }
    }
    if flags & app_flags::NO_STEER != 0 {
        return XDP_PASS;
    }
    steer(flow)
}

/// Flag combinations no conforming TCP stack sends; scanners and floods do.
#[inline(always)]
fn bad_tcp_flags(f: u8) -> bool {
    f & 0x3f == 0
        || f & (TCP_SYN | TCP_FIN) == (TCP_SYN | TCP_FIN)
        || f & (TCP_SYN | TCP_RST) == (TCP_SYN | TCP_RST)
        || f & (TCP_FIN | TCP_ACK) == TCP_FIN
}

#[inline(always)]
fn rate_limit_admit(src: &[u8; 16]) -> bool {
    let Some(cfg) = RATE_LIMIT_CFG.get(0) else {
        return true;
    };
    if cfg.flags & rate_limit_flags::ENABLED == 0 {
        return true;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let key = rate_limit_key(src, cfg);
    match RL_BUCKETS.get_ptr_mut(&key) {
        // Racy across CPUs by design: a lost update costs a token or two, a lock costs every packet.
        Some(bucket) => token_bucket_admit(unsafe { &mut *bucket }, cfg, now),
        None => {
            let mut bucket = token_bucket_new(cfg, now);
            let admitted = token_bucket_admit(&mut bucket, cfg, now);
            let _ = RL_BUCKETS.insert(&key, &bucket, 0);
            admitted
        }
    }
}

#[inline(always)]
fn steer(flow: &Flow) -> u32 {
    let Some(cfg) = WORKER_CONFIG.get(0) else {
        return XDP_PASS;
    };
    if cfg.flags & worker_flags::STEER_CPUMAP == 0 || cfg.n_workers == 0 {
        return XDP_PASS;
    }
    let hash = flow_hash(&flow.src, &flow.dst, flow.sport, flow.dport, flow.proto);
    let cpu = worker_for_hash(hash, cfg.n_workers);
    // A CPU without a CPUMAP entry falls back to XDP_PASS: the packet stays on this CPU.
    WORKER_CPUS
        .redirect(cpu, XDP_PASS as u64)
        .unwrap_or(XDP_PASS)
}

#[sk_reuseport]
pub fn select_worker(ctx: SkReuseportContext) -> u32 {
    let Some(cfg) = WORKER_CONFIG.get(0) else {
        return SK_PASS;
    };
    let n_workers = cfg.n_workers;
    if n_workers == 0 {
        return SK_PASS;
    }
    let Some((src, dst)) = reuseport_addrs(&ctx) else {
        return SK_PASS;
    };
    // skb->data is at the transport header here: source and destination ports lead it.
    let mut ports = [0u8; 4];
    if unsafe { bpf_skb_load_bytes(ctx.as_ptr(), 0, ports.as_mut_ptr().cast(), 4) } != 0 {
        return SK_PASS;
    }
    let sport = u16::from_be_bytes([ports[0], ports[1]]);
    let dport = u16::from_be_bytes([ports[2], ports[3]]);
    let hash = flow_hash(&src, &dst, sport, dport, ctx.ip_protocol() as u8);
    let mut worker = worker_for_hash(hash, n_workers);
    let threshold = cfg.load_threshold as u64;
    if threshold != 0 && load_of(worker) > threshold {
        worker = least_loaded(n_workers);
    }
    // On failure (no socket at that index) SK_PASS lets the kernel pick by its own hash.
    let _ = WORKER_SOCKETS.select_reuseport(&ctx, worker);
    SK_PASS
}

#[inline(always)]
fn load_of(worker: u32) -> u64 {
    WORKER_LOAD
        .get(worker)
        .map(|l| l.in_flight)
        .unwrap_or(u64::MAX)
}

#[inline(always)]
fn least_loaded(n_workers: u32) -> u32 {
    let mut best = 0;
    let mut best_load = u64::MAX;
    for i in 0..MAX_WORKERS {
        if i >= n_workers {
            break;
        }
        let load = load_of(i);
        if load < best_load {
            best = i;
            best_load = load;
        }
    }
    best
}

/// Source and destination as `flow_hash` wants them, read from the network header.
#[inline(always)]
fn reuseport_addrs(ctx: &SkReuseportContext) -> Option<([u32; 4], [u32; 4])> {
    let eth_proto = u16::from_be(ctx.eth_protocol() as u16);
    if eth_proto == 0x0800 {
        let mut addrs = [0u32; 2];
        let rc = unsafe {
            bpf_skb_load_bytes_relative(
                ctx.as_ptr(),
                12,
                addrs.as_mut_ptr().cast(),
                8,
                BPF_HDR_START_NET,
            )
        };
        (rc == 0).then(|| (v4_mapped_words(addrs[0]), v4_mapped_words(addrs[1])))
    } else if eth_proto == 0x86dd {
        let mut addrs = [0u32; 8];
        let rc = unsafe {
            bpf_skb_load_bytes_relative(
                ctx.as_ptr(),
                8,
                addrs.as_mut_ptr().cast(),
                32,
                BPF_HDR_START_NET,
            )
        };
        (rc == 0).then(|| {
            (
                [addrs[0], addrs[1], addrs[2], addrs[3]],
                [addrs[4], addrs[5], addrs[6], addrs[7]],
            )
        })
    } else {
        None
    }
}
