//! The wasmtime engine: a pooling allocator sized for the invocations that may run at
//! once, and the epoch ticker that deadlines and yielding count on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::error::HostError;

/// How often the engine's epoch advances: the granularity of deadlines and of yielding.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// An engine whose pool holds `slots` concurrent invocations of up to `max_memory` bytes.
pub(super) fn engine(max_memory: usize, slots: u32) -> Result<Engine, HostError> {
    let mut pool = PoolingAllocationConfig::default();
    // A Rust wasip2 component holds a handful of core instances and memories; leave room
    // for every concurrent invocation plus headroom.
    let instances = slots.saturating_mul(2).max(16);
    pool.total_component_instances(instances)
        .total_core_instances(instances.saturating_mul(8))
        .total_memories(instances.saturating_mul(4))
        .total_tables(instances.saturating_mul(8))
        .total_stacks(instances)
        .max_memory_size(max_memory);
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config).map_err(|e| HostError::Engine(format!("{e:#}")))
}

/// Advances the engine's epoch from a plain thread, so deadlines fire even when every
/// tokio worker is busy running guests.
pub(super) struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    pub(super) fn start(engine: Engine) -> Result<Self, HostError> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("cfm-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .map_err(|e| HostError::Engine(format!("spawning the epoch thread: {e}")))?;
        Ok(Self { stop })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
