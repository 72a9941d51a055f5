//! The loop every manager replica runs for fleet operations that outlive a request:
//! drains, rebalance plans, rollouts, tenant decommissions and the periodic reconciler. Their state is rows, each
//! locked while a replica tops it up, so any number of replicas run the loop and any of
//! them may die. The loop also prunes old lifecycle events and capability calls.

use std::time::{Duration, Instant};

use crate::provision::Engine;
use crate::tenant::{decommissions, drains, rebalance, reconciles, rollouts};
use crate::{capability_calls, events};

/// How often each replica looks at running drains, plans, rollouts and decommissions.
const TICK: Duration = Duration::from_millis(500);
/// How often each replica prunes lifecycle events and capability calls past their
/// retention.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Tops up every running drain, rebalance plan, rollout and decommission, every tick,
/// for the life of the process; with `reconcile`, also walks the fleet verifying and
/// repairing participants.
pub async fn run(engine: Engine, reconcile: Option<reconciles::Schedule>) {
    let mut pruned = Instant::now();
    loop {
        if let Some(schedule) = &reconcile
            && let Err(e) = reconciles::tick(&engine, schedule).await
        {
            tracing::warn!("reconciling participants: {e}");
        }
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
        if pruned.elapsed() >= PRUNE_EVERY {
            pruned = Instant::now();
            match events::prune(engine.db()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(events = n, "old lifecycle events pruned"),
                Err(e) => tracing::warn!("pruning lifecycle events: {e}"),
            }
            match capability_calls::prune(engine.db()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(calls = n, "old capability calls pruned"),
                Err(e) => tracing::warn!("pruning capability calls: {e}"),
            }
        }
        tokio::time::sleep(TICK).await;
    }
}
