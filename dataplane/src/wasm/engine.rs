//! The wasmtime Engine: pooling allocator, epoch interruption, small guest stacks.

use std::{
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Instances one worker's pool holds at once (the cap on concurrent instances per worker).
    pub max_instances: u32,
    /// Largest linear memory any app may get.
    pub max_memory_bytes: usize,
    /// Memory kept mapped (and zeroed in place) between instances: the big per-instance win.
    pub keep_resident_bytes: usize,
    /// Guest wasm stack.
    pub max_wasm_stack: usize,
    /// How often the epoch ticks; CPU deadlines are counted in ticks.
    #[serde(with = "humantime_serde")]
    pub epoch_tick: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_instances: 256,
            max_memory_bytes: 64 << 20,
            keep_resident_bytes: 2 << 20,
            max_wasm_stack: 256 << 10,
            epoch_tick: Duration::from_millis(5),
        }
    }
}

/// One Engine per worker, so each worker's instance churn stays in its own pool.
pub fn build_engine(cfg: &EngineConfig) -> anyhow::Result<Engine> {
    Ok(Engine::new(&wasmtime_config(cfg))?)
}

/// The wasmtime configuration `build_engine` uses (benchmarks vary it).
pub fn wasmtime_config(cfg: &EngineConfig) -> Config {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(cfg.max_instances)
        .total_core_instances(cfg.max_instances * 4)
        .total_memories(cfg.max_instances * 2)
        .total_tables(cfg.max_instances * 2)
        .total_stacks(cfg.max_instances)
        .max_memory_size(cfg.max_memory_bytes)
        .linear_memory_keep_resident(cfg.keep_resident_bytes)
        .table_keep_resident(64 << 10)
        .pagemap_scan(Enabled::Auto);
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .max_wasm_stack(cfg.max_wasm_stack)
        .async_stack_size(cfg.max_wasm_stack + (256 << 10))
        // Every memory image gets a copy-on-write mapping, however sparse its data: past 16 MiB
        // wasmtime's default keeps one only for images at least half full, and a component
        // without one copies its whole data into every fresh instance (TUNING.md, "Large
        // components"). No memory is larger than `max_memory_bytes`, nor is its image.
        .memory_guaranteed_dense_image_size(cfg.max_memory_bytes as u64)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

/// One thread that advances every registered engine's epoch: CPU deadlines without a timer
/// per request.
#[derive(Clone, Default)]
pub struct EpochTicker {
    engines: Arc<Mutex<Vec<Engine>>>,
}

impl EpochTicker {
    pub fn start(tick: Duration) -> Self {
        let me = Self::default();
        let engines = me.engines.clone();
        thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn(move || {
                loop {
                    thread::sleep(tick);
                    for e in crate::lock(&engines).iter() {
                        e.increment_epoch();
                    }
                }
            })
            .expect("spawning the epoch ticker");
        me
    }

    pub fn register(&self, engine: &Engine) {
        crate::lock(&self.engines).push(engine.clone());
    }
}
