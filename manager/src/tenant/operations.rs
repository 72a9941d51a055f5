//! The loop every manager replica runs for fleet operations that outlive a request:
//! drains and rebalance plans. Their state is rows, each locked while a replica tops it
//! up, so any number of replicas run the loop and any of them may die.

use std::time::Duration;

use crate::provision::Engine;
use crate::tenant::{drains, rebalance};

/// How often each replica looks at running drains and plans.
const TICK: Duration = Duration::from_millis(500);

/// Tops up every running drain and rebalance plan, every tick, for the life of the
/// process.
pub async fn run(engine: Engine) {
    loop {
        if let Err(e) = drains::tick(&engine).await {
            tracing::warn!("draining cells: {e}");
        }
        if let Err(e) = rebalance::tick(&engine).await {
            tracing::warn!("rebalancing cells: {e}");
        }
        tokio::time::sleep(TICK).await;
    }
}
