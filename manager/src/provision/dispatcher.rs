//! The dispatcher: leases activity messages from the embedded queue, runs them on an
//! executor (the in-process agent host) and hands the outcomes to the engine.

use std::sync::Arc;
use std::time::Duration;

use cfm_protocol::{ActivityExecutor, ActivityOutcome, ActivityTask};
use tokio::task::JoinSet;

use crate::provision::Engine;
use crate::queue::{self, ACTIVITY_TOPIC, Delivery};

pub struct Dispatcher {
    engine: Engine,
    executor: Arc<dyn ActivityExecutor>,
    concurrency: usize,
}

/// Longest the dispatcher sleeps without looking at the queue.
const IDLE_POLL: Duration = Duration::from_millis(500);

impl Dispatcher {
    pub fn new(engine: Engine, executor: Arc<dyn ActivityExecutor>, concurrency: usize) -> Self {
        Self {
            engine,
            executor,
            concurrency: concurrency.max(1),
        }
    }

    /// Runs until the task is dropped or aborted. Leases left behind by a previous
    /// process are released first, so its unfinished work resumes at once.
    pub async fn run(self) {
        match queue::release_all(self.engine.db()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(messages = n, "resuming work left by a previous run"),
            Err(e) => tracing::error!("cannot release stale leases: {e}"),
        }
        let this = Arc::new(self);
        let wake = this.engine.wakeup();
        let lease_ms = this.engine.settings().activity_timeout_ms as i64 + 30_000;
        let mut in_flight = JoinSet::new();
        loop {
            let free = this.concurrency.saturating_sub(in_flight.len());
            if free > 0 {
                match queue::lease(this.engine.db(), ACTIVITY_TOPIC, free as i64, lease_ms).await {
                    Ok(batch) if !batch.is_empty() => {
                        for delivery in batch {
                            let this = this.clone();
                            in_flight.spawn(async move { this.handle(delivery).await });
                        }
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("cannot lease work: {e}"),
                }
            }
            let idle = if free == 0 {
                IDLE_POLL
            } else {
                this.idle_time().await
            };
            tokio::select! {
                _ = wake.notified() => {}
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                _ = tokio::time::sleep(idle) => {}
            }
        }
    }

    async fn handle(&self, delivery: Delivery) {
        let task: ActivityTask = match serde_json::from_str(&delivery.payload) {
            Ok(task) => task,
            Err(e) => {
                // Only a bug writes such a message; keeping it would redeliver it forever.
                tracing::error!(message = %delivery.id, "dropping unreadable activity message: {e}");
                if let Ok(mut conn) = self.engine.db().writer().acquire().await {
                    let _ = queue::ack(&mut conn, &delivery.id).await;
                }
                return;
            }
        };
        let outcome = if delivery.deliveries > self.engine.settings().max_deliveries {
            ActivityOutcome::Fatal {
                reason: format!(
                    "delivered {} times without a result; the activity may crash its host",
                    delivery.deliveries - 1
                ),
            }
        } else {
            self.executor.execute(task.clone()).await
        };
        // A failed apply leaves the message leased: it is delivered again when the lease ends.
        for attempt in 1..=3 {
            match self
                .engine
                .apply(&delivery.id, &task, outcome.clone())
                .await
            {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(message = %delivery.id, attempt, "cannot record the outcome: {e}");
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
            }
        }
    }

    /// How long nothing can become available: until the next delayed message, at most `IDLE_POLL`.
    async fn idle_time(&self) -> Duration {
        match queue::next_available_at(self.engine.db(), ACTIVITY_TOPIC).await {
            Ok(Some(at)) => {
                let wait = (at - queue::now_ms()).clamp(5, IDLE_POLL.as_millis() as i64);
                Duration::from_millis(wait as u64)
            }
            _ => IDLE_POLL,
        }
    }
}
