//! The contract between edgeplane's kernel programs and userspace.
//!
//! Every BPF map's name, key and value type is defined here once. Each map has exactly one writer
//! side (documented on the map name constant); the other side only reads it.
//!
//! Addresses are always 16 bytes: IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`), so one APPS map
//! and one LPM trie serve both families. Ports in keys are host byte order.
#![no_std]

/// App id 0 is never assigned: its APP_STATS slot counts packets dropped before an app is known
/// (malformed headers).
pub const UNCLASSIFIED_APP: u32 = 0;
/// APP_STATS has this many slots; app ids are `1..MAX_APPS`.
pub const MAX_APPS: u32 = 4096;
pub const MAX_VIPS: u32 = 16384;
pub const MAX_BLOCKLIST: u32 = 65536;
pub const MAX_RATE_LIMITED_SOURCES: u32 = 65536;
pub const MAX_PLACEMENTS: u32 = 16384;
/// Workers are pinned one per CPU and indexed by CPU number.
pub const MAX_WORKERS: u32 = 64;
pub const APP_NAME_LEN: usize = 32;
/// Slots in each CPU's flow-verdict cache (a power of two).
pub const FLOW_CACHE_SLOTS: u32 = 4096;

/// Map names, as pinned under the pin directory. Writer side in brackets.
pub mod map_names {
    /// [userspace] VIP:port/proto -> app.
    pub const APPS: &str = "APPS";
    /// [userspace] VIP address -> app: IP fragments carry no ports, so the guard and the
    /// counters find their app by destination address alone.
    pub const VIP_ADDRS: &str = "VIP_ADDRS";
    /// [userspace] app id -> name, for people; XDP never reads it.
    pub const APP_NAMES: &str = "APP_NAMES";
    /// [kernel] per-CPU counters per app id.
    pub const APP_STATS: &str = "APP_STATS";
    /// [userspace] LPM trie of blocked source prefixes.
    pub const BLOCKLIST: &str = "BLOCKLIST";
    /// [userspace] BLOCKLIST summarised for IPv4 sources, two bits per /24 (`block_v4_bits`),
    /// mmap-able: a flood from many IPv4 sources costs an array read per packet, not a trie walk.
    pub const BLOCK_V4: &str = "BLOCK_V4";
    /// [kernel] per-CPU cache of APPS by destination; not pinned.
    pub const DEST_CACHE: &str = "DEST_CACHE";
    /// [userspace] the single rate-limit configuration entry.
    pub const RATE_LIMIT_CFG: &str = "RATE_LIMIT_CFG";
    /// [kernel] per-source token buckets (LRU).
    pub const RL_BUCKETS: &str = "RL_BUCKETS";
    /// [userspace, control plane] where each app or function runs.
    pub const PLACEMENT: &str = "PLACEMENT";
    /// [userspace] CPUMAP: one entry per worker CPU.
    pub const WORKER_CPUS: &str = "WORKER_CPUS";
    /// [userspace] REUSEPORT_SOCKARRAY: each worker's listening socket at its CPU index.
    pub const WORKER_SOCKETS: &str = "WORKER_SOCKETS";
    /// [userspace] the single steering configuration entry.
    pub const WORKER_CONFIG: &str = "WORKER_CONFIG";
    /// [userspace, workers] per-worker load, mmap-able so workers update it without syscalls.
    pub const WORKER_LOAD: &str = "WORKER_LOAD";
    /// [userspace] CONFIG_GEN[0]: changes whenever APPS or BLOCKLIST change.
    pub const CONFIG_GEN: &str = "CONFIG_GEN";
    /// [kernel] per-CPU flow-verdict cache; not pinned (its contents die with the program).
    pub const FLOW_CACHE: &str = "FLOW_CACHE";
}

/// Program names as they appear in the object file.
pub mod program_names {
    pub const CLASSIFY: &str = "classify";
    pub const SELECT_WORKER: &str = "select_worker";
}

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// APPS key: the destination a client connects to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AppKey {
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// APPS value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppEntry {
    pub app_id: u32,
    /// `app_flags::*`
    pub flags: u32,
}

pub mod app_flags {
    /// Leave this app's flows wherever the NIC put them (no CPUMAP redirect).
    pub const NO_STEER: u32 = 1 << 0;
    /// Exempt this app from the per-source rate limit.
    pub const NO_RATE_LIMIT: u32 = 1 << 1;
    pub const ALL: u32 = NO_STEER | NO_RATE_LIMIT;
}

/// APP_NAMES value: a NUL-padded UTF-8 name.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppName {
    pub bytes: [u8; APP_NAME_LEN],
}

/// Why XDP dropped a packet. The discriminant indexes `AppStats::drops`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Shorter than an Ethernet header, or a VLAN tag cut off.
    TruncatedL2 = 0,
    MalformedIpv4 = 1,
    /// Bad fixed header or extension-header chain.
    MalformedIpv6 = 2,
    MalformedTcp = 3,
    MalformedUdp = 4,
    Blocklisted = 5,
    RateLimited = 6,
    /// Flag combinations no conforming TCP sends (null, SYN+FIN, SYN+RST, FIN without ACK).
    BadTcpFlags = 7,
}

impl DropReason {
    pub const COUNT: usize = 8;
    pub const ALL: [DropReason; Self::COUNT] = [
        Self::TruncatedL2,
        Self::MalformedIpv4,
        Self::MalformedIpv6,
        Self::MalformedTcp,
        Self::MalformedUdp,
        Self::Blocklisted,
        Self::RateLimited,
        Self::BadTcpFlags,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::TruncatedL2 => "truncated-l2",
            Self::MalformedIpv4 => "malformed-ipv4",
            Self::MalformedIpv6 => "malformed-ipv6",
            Self::MalformedTcp => "malformed-tcp",
            Self::MalformedUdp => "malformed-udp",
            Self::Blocklisted => "blocklisted",
            Self::RateLimited => "rate-limited",
            Self::BadTcpFlags => "bad-tcp-flags",
        }
    }
}

/// APP_STATS value (one per CPU). `packets`/`bytes` count admitted packets only; dropped packets
/// are counted in `drops` by reason.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AppStats {
    pub packets: u64,
    pub bytes: u64,
    /// TCP SYNs without ACK: the popularity signal for placement.
    pub new_flows: u64,
    pub drops: [u64; DropReason::COUNT],
}

impl AppStats {
    pub fn add(&mut self, other: &AppStats) {
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.new_flows += other.new_flows;
        for (d, o) in self.drops.iter_mut().zip(other.drops.iter()) {
            *d += o;
        }
    }

    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }
}

/// BLOCKLIST value (the key is an LPM key over a 16-byte address).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockEntry {
    /// Unix seconds when the entry was added, for `edgectl block list`.
    pub added_at: u64,
}

/// RATE_LIMIT_CFG[0]: a token bucket per source address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Sustained packets per second per source. 0 means no refill: each source gets `burst`
    /// packets in all (deterministic, used by tests).
    pub pps: u64,
    /// Bucket depth in packets.
    pub burst: u64,
    /// `rate_limit_flags::*`
    pub flags: u32,
    /// Sources share a bucket per prefix of this length: an IPv4 /n (0: /32), an IPv6 /n
    /// (0: /64, so a host rotating through its /64 stays one source).
    pub v4_prefix: u8,
    pub v6_prefix: u8,
    pub _pad: u16,
}

/// The IPv4 prefix length rate limiting keys sources by, unless configured.
pub const DEFAULT_RATE_LIMIT_V4_PREFIX: u8 = 32;
/// The IPv6 prefix length rate limiting keys sources by, unless configured.
pub const DEFAULT_RATE_LIMIT_V6_PREFIX: u8 = 64;

/// RL_BUCKETS key of a source (16 bytes, IPv4 as v4-mapped): the source masked to the
/// configured prefix. Shared by XDP and the reference model.
#[inline(always)]
pub fn rate_limit_key(src: &[u8; 16], cfg: &RateLimitConfig) -> [u8; 16] {
    let v4 = src[..10].iter().all(|b| *b == 0) && src[10] == 0xff && src[11] == 0xff;
    let bits: u32 = if v4 {
        let p = if cfg.v4_prefix == 0 || cfg.v4_prefix > 32 {
            DEFAULT_RATE_LIMIT_V4_PREFIX
        } else {
            cfg.v4_prefix
        };
        96 + p as u32
    } else {
        let p = if cfg.v6_prefix == 0 || cfg.v6_prefix > 128 {
            DEFAULT_RATE_LIMIT_V6_PREFIX
        } else {
            cfg.v6_prefix
        };
        p as u32
    };
    let mut key = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        let start = (i as u32) * 8;
        key[i] = if bits >= start + 8 {
            src[i]
        } else if bits > start {
            src[i] & (0xffu8 << (8 - (bits - start)))
        } else {
            0
        };
        i += 1;
    }
    key
}

pub mod rate_limit_flags {
    pub const ENABLED: u32 = 1 << 0;
}

/// Token units per packet: buckets hold nano-packets so refill needs no division.
pub const TOKENS_PER_PACKET: u64 = 1_000_000_000;
/// Upper bounds that keep `elapsed_ns * pps` and `burst * TOKENS_PER_PACKET` inside u64.
pub const MAX_RATE_PPS: u64 = 100_000_000;
pub const MAX_BURST: u64 = 1_000_000_000;
/// Refill is computed over at most this much idle time (then the bucket is full anyway for any
/// burst/pps ratio up to this many seconds).
pub const MAX_REFILL_NS: u64 = 10_000_000_000;

/// RL_BUCKETS value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucket {
    pub tokens: u64,
    pub last_ns: u64,
}

/// The token-bucket step, shared by XDP and the reference model so they cannot disagree.
/// Returns whether the packet is admitted; updates `bucket` in place.
#[inline(always)]
pub fn token_bucket_admit(bucket: &mut TokenBucket, cfg: &RateLimitConfig, now_ns: u64) -> bool {
    let cap = cfg.burst * TOKENS_PER_PACKET;
    let mut elapsed = now_ns.saturating_sub(bucket.last_ns);
    if elapsed > MAX_REFILL_NS {
        elapsed = MAX_REFILL_NS;
    }
    let mut tokens = bucket.tokens + elapsed * cfg.pps;
    if tokens > cap {
        tokens = cap;
    }
    bucket.last_ns = now_ns;
    if tokens >= TOKENS_PER_PACKET {
        bucket.tokens = tokens - TOKENS_PER_PACKET;
        true
    } else {
        bucket.tokens = tokens;
        false
    }
}

/// A fresh source starts with a full bucket.
#[inline(always)]
pub fn token_bucket_new(cfg: &RateLimitConfig, now_ns: u64) -> TokenBucket {
    TokenBucket {
        tokens: cfg.burst * TOKENS_PER_PACKET,
        last_ns: now_ns,
    }
}

/// PLACEMENT value: where an app (or one of its functions) runs. PLACEMENT is an array indexed
/// by target id (`BPF_F_MMAPABLE`): the workers read it mapped, two u64 words per entry, the
/// first holding `kind` (low half) and `datacenter` (high half) so one load reads both. All zero
/// (an app never placed) is LOCAL.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// `placement_kind::*`
    pub kind: u32,
    /// Datacenter id when `kind == DATACENTER`.
    pub datacenter: u32,
    /// `placement_flags::*`
    pub flags: u32,
    pub _reserved: u32,
}

pub mod placement_kind {
    pub const LOCAL: u32 = 0;
    pub const DATACENTER: u32 = 1;
    pub const REGION: u32 = 2;
}

pub mod placement_flags {
    /// Set by hand (`edgectl placement pin`); the engine leaves it alone.
    pub const PINNED: u32 = 1 << 0;
    /// The engine chooses (`mode = "smart"`).
    pub const SMART: u32 = 1 << 1;
}

/// WORKER_CONFIG[0].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerConfig {
    /// Workers run on CPUs `0..n_workers`; 0 disables steering and worker selection.
    pub n_workers: u32,
    /// In-flight requests above which `select_worker` falls back to the least loaded worker;
    /// 0 disables the fallback.
    pub load_threshold: u32,
    /// `worker_flags::*`
    pub flags: u32,
    pub _pad: u32,
}

pub mod worker_flags {
    /// XDP redirects app flows to their worker's CPU through WORKER_CPUS.
    pub const STEER_CPUMAP: u32 = 1 << 0;
}

/// WORKER_LOAD[cpu]. Written by the worker on that CPU through an mmap of the map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerLoad {
    pub in_flight: u64,
    pub served: u64,
}

/// BLOCK_V4's length in u64 words: two bits for each of the 2^24 IPv4 /24s (4 MiB).
pub const BLOCK_V4_WORDS: u32 = (1 << 24) / 32;

/// What BLOCK_V4 says of a /24.
pub mod block_v4_bits {
    /// A blocklisted prefix of /24 or shorter covers the whole /24.
    pub const COVERED: u64 = 1;
    /// Longer prefixes (/25../32) lie inside it: the trie decides per address.
    pub const PARTIAL: u64 = 2;
}

/// BLOCK_V4 word index and bit shift of an IPv4 address (host order).
#[inline(always)]
pub const fn block_v4_slot(addr: u32) -> (u32, u32) {
    let slash24 = addr >> 8;
    (slash24 / 32, (slash24 % 32) * 2)
}

/// Slots of DEST_CACHE (per CPU): destinations an edge host serves are few.
pub const DEST_CACHE_SLOTS: u32 = 256;

/// DEST_CACHE entry: what APPS said about (dst, dport, proto) under one configuration
/// generation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DestCacheEntry {
    pub dst: [u32; 4],
    pub dport: u16,
    pub proto: u8,
    /// `cached_verdict::NOT_APP` or `cached_verdict::APP`.
    pub verdict: u8,
    pub app_id: u32,
    pub app_flags: u32,
    pub _pad: u32,
    /// CONFIG_GEN when cached; 0 never matches.
    pub generation: u64,
}

/// The DEST_CACHE slot of a destination.
#[inline(always)]
pub fn dest_cache_slot(dst: &[u32; 4], dport: u16, proto: u8) -> u32 {
    let mut h: u32 = 0x7f4a_7c15 ^ ((dport as u32) << 8 | proto as u32);
    h = mix(h, dst[0] ^ dst[1]);
    h = mix(h, dst[2] ^ dst[3]);
    fmix(h) & (DEST_CACHE_SLOTS - 1)
}

/// FLOW_CACHE entry: what APPS and BLOCKLIST said about (src, dst, dport, proto) under one
/// configuration generation. Per-packet stages (TCP flags, rate limit) are never cached.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCacheEntry {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub dport: u16,
    pub proto: u8,
    /// `cached_verdict::*`
    pub verdict: u8,
    pub app_id: u32,
    pub app_flags: u32,
    pub _pad: u32,
    /// CONFIG_GEN when cached; 0 never matches.
    pub generation: u64,
}

pub mod cached_verdict {
    pub const NOT_APP: u8 = 1;
    pub const APP: u8 = 2;
    pub const APP_BLOCKED: u8 = 3;
}

/// The cache slot of a flow (source port excluded: all of a client's connections share it).
#[inline(always)]
pub fn flow_cache_slot(src: &[u32; 4], dst: &[u32; 4], dport: u16, proto: u8) -> u32 {
    let mut h: u32 = 0x2545_f491 ^ ((dport as u32) << 8 | proto as u32);
    h = mix(h, src[0] ^ src[1]);
    h = mix(h, src[2] ^ src[3]);
    h = mix(h, dst[2] ^ dst[3]);
    fmix(h) & (FLOW_CACHE_SLOTS - 1)
}

/// A symmetric flow hash: both directions of a flow hash alike, so XDP (which sees client->VIP)
/// and `select_worker` agree, and replies would land on the same CPU. Ports are host order.
#[inline(always)]
pub fn flow_hash(a: &[u32; 4], b: &[u32; 4], port_a: u16, port_b: u16, proto: u8) -> u32 {
    // XOR and + are commutative, so swapping (a, port_a) with (b, port_b) gives the same input.
    let mut h: u32 = 0x9e37_79b9 ^ proto as u32;
    h = mix(h, a[0] ^ b[0]);
    h = mix(h, a[1] ^ b[1]);
    h = mix(h, a[2] ^ b[2]);
    h = mix(h, a[3] ^ b[3]);
    h = mix(h, a[3].wrapping_add(b[3]));
    h = mix(
        h,
        ((port_a ^ port_b) as u32) << 16 | (port_a.wrapping_add(port_b)) as u32,
    );
    fmix(h)
}

#[inline(always)]
fn mix(h: u32, k: u32) -> u32 {
    let k = k
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The worker (= CPU index) a flow is steered to.
#[inline(always)]
pub fn worker_for_hash(hash: u32, n_workers: u32) -> u32 {
    if n_workers == 0 { 0 } else { hash % n_workers }
}

/// Address words as loaded from the packet (network order bytes reinterpreted natively), the
/// representation `flow_hash` takes.
pub fn addr_words(addr: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]),
        u32::from_ne_bytes([addr[4], addr[5], addr[6], addr[7]]),
        u32::from_ne_bytes([addr[8], addr[9], addr[10], addr[11]]),
        u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]]),
    ]
}

/// IPv4-mapped words for an IPv4 address given as its 4 network-order bytes read natively.
#[inline(always)]
pub const fn v4_mapped_words(v4: u32) -> [u32; 4] {
    [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), v4]
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are #[repr(C)] plain integers/arrays with explicit padding fields.
    unsafe impl aya::Pod for AppKey {}
    unsafe impl aya::Pod for AppEntry {}
    unsafe impl aya::Pod for AppName {}
    unsafe impl aya::Pod for AppStats {}
    unsafe impl aya::Pod for BlockEntry {}
    unsafe impl aya::Pod for RateLimitConfig {}
    unsafe impl aya::Pod for TokenBucket {}
    unsafe impl aya::Pod for Placement {}
    unsafe impl aya::Pod for WorkerConfig {}
    unsafe impl aya::Pod for WorkerLoad {}
    unsafe impl aya::Pod for FlowCacheEntry {}
    unsafe impl aya::Pod for DestCacheEntry {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_keys_share_a_bucket_per_prefix() {
        let cfg = RateLimitConfig::default();
        let v4 = |a: [u8; 4]| {
            let mut k = [0u8; 16];
            k[10] = 0xff;
            k[11] = 0xff;
            k[12..].copy_from_slice(&a);
            k
        };
        // Defaults: /32 for IPv4, /64 for IPv6.
        assert_eq!(
            rate_limit_key(&v4([192, 0, 2, 9]), &cfg),
            v4([192, 0, 2, 9])
        );
        let mut a = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1, 9, 9, 9, 9, 9, 9, 9, 9];
        let mut b = a;
        b[15] = 1;
        b[8] = 0x77;
        assert_eq!(rate_limit_key(&a, &cfg), rate_limit_key(&b, &cfg));
        assert_eq!(&rate_limit_key(&a, &cfg)[8..], &[0u8; 8]);
        a[7] = 2;
        assert_ne!(rate_limit_key(&a, &cfg), rate_limit_key(&b, &cfg));
        let cfg = RateLimitConfig {
            v4_prefix: 20,
            v6_prefix: 127,
            ..Default::default()
        };
        assert_eq!(
            rate_limit_key(&v4([203, 0, 113, 7]), &cfg),
            v4([203, 0, 112, 0])
        );
        let mut c = b;
        c[15] = 0;
        assert_eq!(rate_limit_key(&b, &cfg), c);
    }

    #[test]
    fn flow_hash_is_symmetric() {
        let a = [1, 2, 3, 0x0a00_0001];
        let b = [5, 6, 7, 0x0a00_0002];
        assert_eq!(
            flow_hash(&a, &b, 40000, 80, 6),
            flow_hash(&b, &a, 80, 40000, 6)
        );
        assert_ne!(
            flow_hash(&a, &b, 40000, 80, 6),
            flow_hash(&a, &b, 40001, 80, 6)
        );
    }

    #[test]
    fn flow_hash_spreads_client_ports() {
        let a = v4_mapped_words(0x0a00_0001);
        let b = v4_mapped_words(0x0a00_0002);
        let mut per_worker = [0u32; 4];
        for port in 30000..34000u16 {
            per_worker[worker_for_hash(flow_hash(&a, &b, port, 80, 6), 4) as usize] += 1;
        }
        for n in per_worker {
            assert!((800..1200).contains(&n), "uneven spread: {per_worker:?}");
        }
    }

    #[test]
    fn token_bucket_without_refill_admits_exactly_burst() {
        let cfg = RateLimitConfig {
            pps: 0,
            burst: 3,
            flags: rate_limit_flags::ENABLED,
            ..Default::default()
        };
        let mut b = token_bucket_new(&cfg, 0);
        let admitted = (0..10)
            .filter(|i| token_bucket_admit(&mut b, &cfg, *i * 1_000_000_000))
            .count();
        assert_eq!(admitted, 3);
    }

    #[test]
    fn token_bucket_refills_at_rate() {
        let cfg = RateLimitConfig {
            pps: 1000,
            burst: 10,
            flags: rate_limit_flags::ENABLED,
            ..Default::default()
        };
        let mut b = token_bucket_new(&cfg, 0);
        let burst = (0..20)
            .filter(|_| token_bucket_admit(&mut b, &cfg, 0))
            .count();
        assert_eq!(burst, 10);
        // 5 ms later: 5 more tokens.
        let after = (0..20)
            .filter(|_| token_bucket_admit(&mut b, &cfg, 5_000_000))
            .count();
        assert_eq!(after, 5);
    }
}
