//! Every map of the object, defined with the ABI crate's types. Pinned by name so a restarted
//! `edged` and `edgectl` find the same maps under the pin directory.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, CpuMap, HashMap, LpmTrie, LruHashMap, PerCpuArray, ReusePortSockArray},
};
use edgeplane_abi::{
    AppEntry, AppKey, AppName, AppStats, BLOCK_V4_WORDS, BlockEntry, DEST_CACHE_SLOTS,
    DestCacheEntry, FLOW_CACHE_SLOTS, FlowCacheEntry, MAX_APPS, MAX_BLOCKLIST, MAX_PLACEMENTS,
    MAX_RATE_LIMITED_SOURCES, MAX_VIPS, MAX_WORKERS, Placement, RateLimitConfig, TokenBucket,
    WorkerConfig, WorkerLoad,
};

#[map]
pub static APPS: HashMap<AppKey, AppEntry> = HashMap::pinned(MAX_VIPS, 0);

#[map]
pub static VIP_ADDRS: HashMap<[u8; 16], AppEntry> = HashMap::pinned(MAX_VIPS, 0);

#[map]
pub static APP_NAMES: HashMap<u32, AppName> = HashMap::pinned(MAX_APPS, 0);

#[map]
pub static APP_STATS: PerCpuArray<AppStats> = PerCpuArray::pinned(MAX_APPS, 0);

#[map]
pub static BLOCKLIST: LpmTrie<[u8; 16], BlockEntry> = LpmTrie::pinned(MAX_BLOCKLIST, 0);

#[map]
pub static BLOCK_V4: Array<u64> = Array::pinned(BLOCK_V4_WORDS, BPF_F_MMAPABLE);

#[map]
pub static DEST_CACHE: PerCpuArray<DestCacheEntry> =
    PerCpuArray::with_max_entries(DEST_CACHE_SLOTS, 0);

#[map]
pub static RATE_LIMIT_CFG: Array<RateLimitConfig> = Array::pinned(1, 0);

#[map]
pub static RL_BUCKETS: LruHashMap<[u8; 16], TokenBucket> =
    LruHashMap::pinned(MAX_RATE_LIMITED_SOURCES, 0);

/// Written by the placement engine and edgectl; read by the workers through a memory mapping
/// (no bpf() call per request). No program reads it: it is a BPF map so it is pinned with the
/// rest and survives restarts.
#[map]
pub static PLACEMENT: Array<Placement> = Array::pinned(MAX_PLACEMENTS, BPF_F_MMAPABLE);

#[map]
pub static WORKER_CPUS: CpuMap = CpuMap::pinned(MAX_WORKERS, 0);

#[map]
pub static WORKER_SOCKETS: ReusePortSockArray = ReusePortSockArray::pinned(MAX_WORKERS, 0);

#[map]
pub static WORKER_CONFIG: Array<WorkerConfig> = Array::pinned(1, 0);

#[map]
pub static WORKER_LOAD: Array<WorkerLoad> = Array::pinned(MAX_WORKERS, BPF_F_MMAPABLE);

#[map]
pub static CONFIG_GEN: Array<u64> = Array::pinned(1, 0);

#[map]
pub static FLOW_CACHE: PerCpuArray<FlowCacheEntry> =
    PerCpuArray::with_max_entries(FLOW_CACHE_SLOTS, 0);
