//! How activity work leaves the engine and outcomes come back.
//!
//! - Embedded ([`embedded_worker`]): agent workers in this process consume the outbox
//!   table directly ([`DbQueue`]) and hand outcomes to the engine, which deletes the
//!   message in the transaction that applies the outcome.
//! - Distributed ([`Relay`] and [`Reports`]): the relay publishes due outbox rows to
//!   JetStream, agent hosts elsewhere run them and publish reports, and every manager
//!   replica consumes reports from one shared durable consumer.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cfm_protocol::{ActivityExecutor, ActivityReport};
use cfm_queue::worker::{OutcomeSink, Worker, WorkerSettings};
use cfm_queue::{Message, Queue, REPORTS_TOPIC};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::provision::Engine;
use crate::queue::{self, DbQueue};

/// How long a pulled message stays leased without a progress signal. Workers signal
/// every third of it, so only a dead worker's work waits this long to be redelivered.
pub const ACK_WAIT: Duration = Duration::from_secs(30);

/// Applies reports to the engine in this process.
pub struct EngineSink(pub Engine);

#[async_trait]
impl OutcomeSink for EngineSink {
    async fn report(&self, report: ActivityReport) -> Result<(), String> {
        self.0
            .apply(&report.message_id, &report.task, report.outcome)
            .await
            .map_err(|e| e.to_string())
    }
}

/// Agent workers fed straight from the outbox table. Releases the leases a previous
/// process left, so its unfinished work resumes at once: only correct when this process
/// is the table's only consumer, which is what embedded means.
pub async fn embedded_worker(
    engine: &Engine,
    executor: Arc<dyn ActivityExecutor>,
    settings: WorkerSettings,
) -> Worker {
    match queue::release_all(engine.db()).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(messages = n, "resuming work left by a previous run"),
        Err(e) => tracing::error!("cannot release stale leases: {e}"),
    }
    let queue = DbQueue::new(
        engine.db().clone(),
        ACK_WAIT,
        engine.outbox_signal().clone(),
    );
    Worker::new(
        Arc::new(queue),
        executor,
        Arc::new(EngineSink(engine.clone())),
        settings,
    )
}

/// Moves work to `queue` and applies the reports that come back: what a manager
/// replica runs besides its API when agent hosts are elsewhere. Runs until aborted.
pub async fn run_distributed(
    engine: Engine,
    queue: Arc<dyn Queue>,
    concurrency: usize,
) -> crate::Result<()> {
    let relay = tokio::spawn(Relay::new(engine.clone(), queue.clone()).run());
    let outcome = Reports::new(engine, queue, concurrency).run().await;
    relay.abort();
    Ok(outcome?)
}

/// Publishes due outbox rows to a queue and deletes them once it holds them. Several
/// relays (one per manager replica) share the table: each leases its own rows.
pub struct Relay {
    engine: Engine,
    queue: Arc<dyn Queue>,
}

/// Rows a relay publishes per round trip.
const RELAY_BATCH: i64 = 256;
/// A relay that dies holding rows delays them this long.
const RELAY_LEASE: Duration = Duration::from_secs(10);
const IDLE: Duration = Duration::from_millis(500);

impl Relay {
    pub fn new(engine: Engine, queue: Arc<dyn Queue>) -> Self {
        Self { engine, queue }
    }

    /// Runs until aborted.
    pub async fn run(self) {
        let mut signal = self.engine.outbox_signal().subscribe();
        let mut failures = 0u32;
        loop {
            signal.borrow_and_update();
            match self.relay_once().await {
                Ok(0) => {
                    failures = 0;
                    queue::wait_for_work(self.engine.db(), None, &mut signal, IDLE).await;
                }
                Ok(_) => failures = 0,
                Err(e) => {
                    failures += 1;
                    let pause = Duration::from_millis(100 << failures.min(6));
                    tracing::warn!("cannot relay the outbox (retrying in {pause:?}): {e}");
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// Publishes one batch; returns how many rows it moved.
    async fn relay_once(&self) -> Result<usize, String> {
        let db = self.engine.db();
        let rows = queue::lease(db, None, RELAY_BATCH, RELAY_LEASE.as_millis() as i64)
            .await
            .map_err(|e| e.to_string())?;
        if rows.is_empty() {
            return Ok(0);
        }
        let messages: Vec<Message> = rows
            .iter()
            .map(|row| Message {
                id: row.id.clone(),
                topic: row.topic.clone(),
                payload: row.payload.clone().into_bytes(),
            })
            .collect();
        // A crash between publish and delete publishes again under the same ids, which
        // the queue drops; past its duplicate window the engine drops the stale outcome.
        self.queue
            .publish(&messages)
            .await
            .map_err(|e| e.to_string())?;
        let ids: Vec<&str> = rows.iter().map(|row| row.id.as_str()).collect();
        queue::ack_all(db, &ids).await.map_err(|e| e.to_string())?;
        tracing::debug!(messages = rows.len(), "relayed outbox");
        Ok(rows.len())
    }
}

/// Applies the reports agent hosts publish. Every manager replica runs one; they share
/// the reports consumer, and outcomes of one orchestration serialise on its row lock.
pub struct Reports {
    engine: Engine,
    queue: Arc<dyn Queue>,
    concurrency: usize,
}

impl Reports {
    pub fn new(engine: Engine, queue: Arc<dyn Queue>, concurrency: usize) -> Self {
        Self {
            engine,
            queue,
            concurrency: concurrency.max(1),
        }
    }

    /// Runs until aborted; fails only when the consumer cannot be set up.
    pub async fn run(self) -> Result<(), cfm_queue::QueueError> {
        let mut consumer = self.queue.consumer(REPORTS_TOPIC).await?;
        let slots = Arc::new(Semaphore::new(self.concurrency));
        let mut applying = JoinSet::new();
        loop {
            while applying.try_join_next().is_some() {}
            let want = slots.available_permits().max(1);
            let batch = cfm_queue::pull_retrying(
                consumer.as_mut(),
                want,
                Duration::from_secs(5),
                "reports",
            )
            .await;
            for delivery in batch {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return Ok(());
                };
                let engine = self.engine.clone();
                applying.spawn(async move {
                    let report: ActivityReport = match serde_json::from_slice(delivery.payload()) {
                        Ok(report) => report,
                        Err(e) => {
                            tracing::error!(message = %delivery.id(), "dropping unreadable report: {e}");
                            let _ = delivery.ack().await;
                            return;
                        }
                    };
                    let result = engine
                        .apply(&report.message_id, &report.task, report.outcome)
                        .await;
                    let settled = match result {
                        Ok(()) => {
                            tracing::debug!(message = %report.message_id, "report applied");
                            delivery.ack().await
                        }
                        Err(e) => {
                            tracing::warn!(message = %report.message_id, "cannot apply a report: {e}");
                            delivery.nak(Duration::from_secs(1)).await
                        }
                    };
                    if let Err(e) = settled {
                        tracing::warn!("cannot settle a report: {e}");
                    }
                    drop(slot);
                });
            }
        }
    }
}
