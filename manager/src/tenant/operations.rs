//! The loop every manager replica runs for fleet operations that outlive a request:
//! drains, rebalance plans, rollouts and tenant decommissions. Their state is rows, each locked while a replica tops it
//! up, so any number of replicas run the loop and any of them may die.

use std::time::Duration;

use crate::provision::Engine;
use crate::tenant::{decommissions, drains, rebalance, rollouts};

/// How often each replica looks at running drains, plans, rollouts and decommissions.
const TICK: Duration = Duration::from_millis(500);

/// Tops up every running drain, rebalance plan, rollout and decommission, every tick,
/// for the life of the process.
pub async fn run(engine: Engine) {
    loop {
        if let Err(e) = drains::tick(&engine).await {
            tracing::warn!("draining cells: {e}");
        }
        if let Err(e) = rebalance::tick(&engine).await {
            tracing::warn!("rebalancing cells: {e}");
        }
        if let Err(e) = rollouts::tick(&engine).await {
            tracing::warn!("rolling out: {e}");
        }
        if let Err(e) = decommissions::tick(&engine).await {
            tracing::warn!("decommissioning tenants: {e}");
        }
        tokio::time::sleep(TICK).await;
    }
}
