//! How activity work leaves the engine and outcomes come back.
//!
//! - Embedded ([`embedded_worker`]): agent workers in this process consume the outbox
//!   table directly ([`DbQueue`]) and hand outcomes to the engine, which deletes the
//!   message in the transaction that applies the outcome. The activities an outcome
//!   makes due come to the workers in memory, already leased by that transaction.
//! - Distributed ([`Relay`] and [`Reports`]): the relay publishes due outbox rows to
//!   JetStream, agent hosts elsewhere run them and publish reports, and every manager
//!   replica consumes reports from one shared durable consumer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cfm_protocol::{ActivityExecutor, ActivityReport};
use cfm_queue::worker::{OutcomeSink, ReportError, Worker, WorkerSettings};
use cfm_queue::{Message, Queue, REPORTS_TOPIC};
use futures_util::StreamExt;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::provision::Engine;
use crate::provision::engine::GroupCommit;
use crate::queue::{self, DbQueue, Express, Lane, Leased};
use crate::store::{Backend, Db};

/// How long a pulled message stays leased without a progress signal. Workers signal
/// every third of it, so only a dead worker's work waits this long to be redelivered.
pub const ACK_WAIT: Duration = cfm_queue::DEFAULT_ACK_WAIT;

/// Applies reports to the engine in this process, several to a transaction when they
/// arrive together.
pub struct EngineSink(GroupCommit);

impl EngineSink {
    /// A sink applying to `engine`.
    pub fn new(engine: Engine) -> Self {
        Self(group_commit(engine))
    }
}

#[async_trait]
impl OutcomeSink for EngineSink {
    async fn report(&self, report: ActivityReport) -> Result<(), ReportError> {
        self.0
            .apply(report)
            .await
            .map_err(|e| ReportError::Apply(Box::new(e)))
    }

    /// The transaction that applies an outcome deletes its task's outbox row: on SQLite
    /// a look for the row afterwards would be a hand-off to a read connection's thread
    /// per activity, for nothing.
    fn acknowledges(&self) -> bool {
        true
    }
}

/// Transactions applying outcomes at once on PostgreSQL: while one waits for a round
/// trip or its commit, another works. SQLite has one writer, so one.
const POSTGRES_WRITERS: usize = 8;

fn group_commit(engine: Engine) -> GroupCommit {
    let writers = match engine.db().backend() {
        Backend::Postgres => POSTGRES_WRITERS,
        Backend::Sqlite => 1,
    };
    GroupCommit::spawn(engine, writers)
}

/// Agent workers fed straight from the outbox table. Releases the leases a previous
/// process left, so its unfinished work resumes at once: only correct when this process
/// is the table's only consumer, which is what embedded means. `engine` gets the express
/// lane to those workers, for whatever else in this process starts work through it.
pub async fn embedded_worker(
    engine: &mut Engine,
    executor: Arc<dyn ActivityExecutor>,
    settings: WorkerSettings,
) -> Worker {
    match queue::release_all(engine.db()).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(messages = n, "resuming work left by a previous run"),
        Err(e) => tracing::error!("cannot release stale leases: {e}"),
    }
    // Outcomes applied here, and what the API starts through a claiming engine, make
    // activities due: they reach this process's consumers straight from the commit,
    // claimed for as long as a pulled message is leased. The rest is found in the table.
    let (express, lane) = Express::lane(ACK_WAIT);
    *engine = engine.clone().with_express(express);
    let queue = DbQueue::new(
        engine.db().clone(),
        ACK_WAIT,
        engine.outbox_signal().clone(),
    )
    .with_express(lane);
    Worker::new(
        Arc::new(queue),
        executor,
        Arc::new(EngineSink::new(engine.clone())),
        settings,
    )
}

/// Moves work to `queue` and applies the reports that come back: what a manager
/// replica runs besides its API when agent hosts are elsewhere. The future runs until
/// aborted. `engine` gets the express lane to its relay, for whatever else in this
/// process starts work through it.
pub fn run_distributed(
    engine: &mut Engine,
    queue: Arc<dyn Queue>,
    concurrency: usize,
) -> impl Future<Output = crate::Result<()>> + Send + 'static {
    // Outcomes applied here, and what the API starts through a claiming engine, make
    // activities due: they go to the relay straight from the commit. The rest is found
    // in the outbox.
    let (express, lane) = Express::lane(RELAY_LEASE);
    *engine = engine.clone().with_express(express);
    let engine = engine.clone();
    async move {
        // In a set, so that the relay stops with this future however it ends: a spawned
        // task whose handle is dropped would run on, detached, until the runtime ends.
        let mut relay = JoinSet::new();
        relay.spawn(
            Relay::new(engine.clone(), queue.clone())
                .with_express(lane)
                .run(),
        );
        let outcome = Reports::new(engine, queue, concurrency).run().await;
        relay.abort_all();
        Ok(outcome?)
    }
}

/// Publishes outbox rows to a queue and keeps them, held, until their outcome is applied.
///
/// Rows come two ways: claimed rows handed over by the commits of this process (the
/// express lane), and due rows found in the table (the sweep), which several relays (one
/// per manager replica) share by leasing their own. The sweep runs when something is
/// written without a claim, when a row falls due, and every [`IDLE`] regardless, which is
/// what picks up a claimed row whose process died before handing it over.
///
/// A published row is marked held (with the sequence the queue stored it at) by a task
/// of the relay's own, which gathers [`HOLD_EVERY`]'s hand-overs into one statement:
/// the mark keeps the row from being swept again, which its claim or lease already does
/// for far longer, so it need not be written before the next publish.
///
/// Rows held for a while are looked up in the queue: one it no longer holds, whose
/// outcome still has not come back after [`VANISHED_GRACE`], was lost (a task, or the
/// report of its run) and is published again.
pub struct Relay {
    engine: Engine,
    queue: Arc<dyn Queue>,
    express: Option<Lane>,
    /// Hand-overs to mark held, and their far end until [`Relay::run`] starts the task
    /// that writes them.
    holds: mpsc::UnboundedSender<HandOver>,
    handed: Option<mpsc::UnboundedReceiver<HandOver>>,
    /// Rows taken off the express lane while waiting, to publish next.
    taken: Vec<Leased>,
    /// When to sweep the table next, failing a signal.
    next_sweep: tokio::time::Instant,
    /// Held rows the queue answered it no longer holds, and since when.
    vanished: HashMap<String, tokio::time::Instant>,
    checked: Option<tokio::time::Instant>,
}

/// Rows a relay publishes per round trip.
const RELAY_BATCH: usize = 256;
/// A relay that dies holding rows delays them this long; so does a process that dies
/// between committing rows it claimed and handing them over.
const RELAY_LEASE: Duration = Duration::from_secs(10);
const IDLE: Duration = Duration::from_millis(500);
/// How often held rows are looked up in the queue, and how long a row is held before it
/// is: a fresh one is certainly there, or its report is on its way.
const VANISHED_CHECK: Duration = Duration::from_secs(5);
/// How long a row the queue no longer holds may wait for its outcome before it is
/// published again. A task acknowledged by its agent leaves the queue a moment before
/// its report is applied; a report lost with it never comes. Publishing a task whose
/// report is merely slow is harmless: the queue drops it as a duplicate within its
/// window, and after that the engine drops the second outcome as stale.
const VANISHED_GRACE: Duration = Duration::from_secs(5);
/// Held rows looked up per check, oldest first.
const VANISHED_BATCH: i64 = 256;
/// Look-ups in flight at once.
const LOOKUPS: usize = 16;
/// How long the relay gathers hand-overs before it marks them held. Far inside the
/// [`RELAY_LEASE`] (and the express claim) that keeps them from being swept meanwhile.
const HOLD_EVERY: Duration = Duration::from_millis(100);
/// How old a hand-over may be when it is marked held: half the [`RELAY_LEASE`] that keeps
/// its row from going out again meanwhile.
const HOLD_WITHIN: Duration = Duration::from_secs(RELAY_LEASE.as_secs() / 2);

impl Relay {
    /// A relay from `engine`'s outbox to `queue`; nothing moves until [`Relay::run`].
    pub fn new(engine: Engine, queue: Arc<dyn Queue>) -> Self {
        let (holds, handed) = mpsc::unbounded_channel();
        Self {
            engine,
            queue,
            express: None,
            holds,
            handed: Some(handed),
            taken: Vec::new(),
            next_sweep: tokio::time::Instant::now(),
            vanished: HashMap::new(),
            checked: None,
        }
    }

    /// The same relay, also publishing the rows handed over on `lane` (see
    /// [`Engine::with_express`]).
    pub fn with_express(self, lane: Lane) -> Self {
        Self {
            express: Some(lane),
            ..self
        }
    }

    /// Runs until aborted.
    pub async fn run(mut self) {
        // Ends with the relay: hand-overs not yet marked then go out again once their
        // lease ends, under the same ids, which the queue drops as duplicates.
        let mut holder = JoinSet::new();
        if let Some(handed) = self.handed.take() {
            holder.spawn(hold_handed_over(self.engine.db().clone(), handed));
        }
        let mut signal = self.engine.outbox_signal().subscribe();
        let mut failures = 0u32;
        let mut sweep = true;
        loop {
            if self.checked.is_none_or(|at| at.elapsed() >= VANISHED_CHECK) {
                if let Err(e) = self.recover_vanished().await {
                    tracing::warn!("cannot check the queue for lost messages: {e}");
                }
                self.checked = Some(tokio::time::Instant::now());
            }
            let express = self.take_express();
            let moved = if !express.is_empty() {
                self.hand_over(express).await
            } else if sweep {
                signal.borrow_and_update();
                self.relay_once().await
            } else {
                Ok(0)
            };
            match moved {
                // More may be waiting either way.
                Ok(n) if n > 0 => failures = 0,
                Ok(_) => {
                    failures = 0;
                    sweep = self.wait(&mut signal).await;
                }
                Err(e) => {
                    // Express rows that failed stay claimed and go out with a later sweep.
                    failures += 1;
                    sweep = true;
                    let pause = cfm_queue::backoff(failures);
                    tracing::warn!("cannot relay the outbox (retrying in {pause:?}): {e}");
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// What the express lane holds, up to a batch.
    fn take_express(&mut self) -> Vec<Leased> {
        let mut rows = std::mem::take(&mut self.taken);
        if let Some(lane) = self.express.as_mut() {
            while rows.len() < RELAY_BATCH
                && let Some(more) = lane.try_recv()
            {
                rows.extend(more);
            }
        }
        rows
    }

    /// Waits for rows on the express lane (false) or for a reason to sweep the table
    /// (true): a signal, or the time [`Relay::relay_once`] found for the next look.
    async fn wait(&mut self, signal: &mut watch::Receiver<u64>) -> bool {
        let express = self.express.as_mut();
        let handed = async {
            match express {
                Some(lane) => Some(lane.recv().await),
                None => std::future::pending().await,
            }
        };
        let handed = tokio::select! {
            handed = handed => handed,
            _ = signal.changed() => None,
            _ = tokio::time::sleep_until(self.next_sweep) => None,
        };
        match handed {
            None => true,
            Some(Some(rows)) => {
                self.taken = rows;
                false
            }
            // The engine side is gone: only the table is left.
            Some(None) => {
                self.express = None;
                true
            }
        }
    }

    /// Publishes one batch found in the table; returns how many rows it moved. When it
    /// found none, sets when to look next: when the next row falls due, or after [`IDLE`].
    async fn relay_once(&mut self) -> crate::Result<usize> {
        let db = self.engine.db();
        let rows =
            queue::lease(db, None, RELAY_BATCH as i64, RELAY_LEASE.as_millis() as i64).await?;
        if rows.is_empty() {
            self.next_sweep = tokio::time::Instant::now() + queue::until_due(db, IDLE).await;
        }
        self.hand_over(rows).await
    }

    /// Publishes leased rows and holds them; returns how many.
    async fn hand_over(&self, rows: Vec<Leased>) -> crate::Result<usize> {
        if rows.is_empty() {
            return Ok(0);
        }
        let messages: Vec<Message> = rows
            .iter()
            .map(|row| Message {
                id: queue::published_id(&row.id, row.copies),
                topic: row.topic.clone(),
                payload: row.payload.clone().into_bytes(),
                trace_parent: trace_parent_of(&row.payload),
            })
            .collect();
        // A crash between publish and hold publishes again under the same ids, which
        // the queue drops; past its duplicate window the engine drops the stale outcome.
        let at_ms = queue::now_ms();
        let sequences = self.queue.publish(&messages).await?;
        let moved = rows.len();
        let rows = rows
            .into_iter()
            .zip(sequences.into_iter().chain(std::iter::repeat(None)))
            .map(|(row, sequence)| (row.id, sequence))
            .collect();
        // The holder lives as long as the relay; should it be gone, the mark is written here.
        if let Err(mpsc::error::SendError(hand_over)) = self.holds.send(HandOver { at_ms, rows }) {
            hold_all(self.engine.db(), &[hand_over]).await?;
        }
        tracing::debug!(messages = moved, "relayed outbox");
        Ok(moved)
    }

    /// Publishes again what the queue lost: held rows it no longer holds whose outcome
    /// has not come within [`VANISHED_GRACE`] of finding them gone.
    async fn recover_vanished(&mut self) -> crate::Result<()> {
        let db = self.engine.db();
        let before = queue::now_ms() - VANISHED_CHECK.as_millis() as i64;
        let held = queue::held_before(db, before, VANISHED_BATCH).await?;
        let queue = &self.queue;
        let answers: Vec<(String, Result<bool, cfm_queue::QueueError>)> =
            futures_util::stream::iter(held)
                .map(|row| async move {
                    let holds = queue.holds(&row.published_id, row.sequence).await;
                    (row.id, holds)
                })
                .buffer_unordered(LOOKUPS)
                .collect()
                .await;
        let now = tokio::time::Instant::now();
        let mut vanished = HashMap::new();
        let mut lost = Vec::new();
        for (id, holds) in answers {
            match holds? {
                true => {}
                false => {
                    let since = self.vanished.get(&id).copied().unwrap_or(now);
                    if now.duration_since(since) >= VANISHED_GRACE {
                        lost.push(id);
                    } else {
                        vanished.insert(id, since);
                    }
                }
            }
        }
        // Rows applied meanwhile, or not asked about this time, are forgotten.
        self.vanished = vanished;
        let released = queue::release(db, &lost).await?;
        if released > 0 {
            tracing::warn!(
                messages = released,
                "the queue lost messages handed to it (or the reports of their runs): publishing them again"
            );
            self.engine.wake();
        }
        Ok(())
    }
}

/// Rows published together: when the hand-over began (Unix milliseconds), and each
/// row's id with the sequence the queue stored it at.
struct HandOver {
    at_ms: i64,
    rows: Vec<(String, Option<u64>)>,
}

/// Marks what the relay handed over held: [`HOLD_EVERY`]'s hand-overs at a time, in a
/// statement per [`RELAY_BATCH`] rows. A write that fails is tried again with what came
/// since, while the rows' leases keep them from being swept: a mark older than
/// [`HOLD_WITHIN`] is dropped instead, since its row may have gone out again since (swept
/// once its lease ended, or published anew as lost), and a late mark would name a stale
/// sequence. Such a row goes out once more, under the same id, as after a crash.
async fn hold_handed_over(db: Db, mut handed: mpsc::UnboundedReceiver<HandOver>) {
    let mut pending: Vec<HandOver> = Vec::new();
    let mut failures = 0u32;
    loop {
        if pending.is_empty() {
            match handed.recv().await {
                Some(first) => pending.push(first),
                None => return,
            }
        }
        tokio::time::sleep(HOLD_EVERY).await;
        while let Ok(more) = handed.try_recv() {
            pending.push(more);
        }
        let fresh_from = queue::now_ms() - HOLD_WITHIN.as_millis() as i64;
        let before = pending.len();
        pending.retain(|hand_over| hand_over.at_ms >= fresh_from);
        if pending.len() < before {
            tracing::warn!(
                hand_overs = before - pending.len(),
                "relayed messages not marked held in time go out again after their lease"
            );
        }
        match hold_all(&db, &pending).await {
            Ok(()) => {
                pending.clear();
                failures = 0;
            }
            Err(e) => {
                failures += 1;
                let pause = cfm_queue::backoff(failures);
                tracing::warn!("cannot mark relayed messages held (retrying in {pause:?}): {e}");
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// One mark per row, its latest hand-over's: a row lost and published again may still
/// be waiting for the mark of its first hand-over. Each statement's rows are marked with
/// the earliest hand-over among them, which makes them older than they are to the check
/// for lost messages: by [`HOLD_EVERY`], or up to [`HOLD_WITHIN`] after failed writes,
/// either within that check's own wait of [`VANISHED_CHECK`] and [`VANISHED_GRACE`].
async fn hold_all(db: &Db, pending: &[HandOver]) -> crate::Result<()> {
    let mut latest: HashMap<&str, (Option<u64>, i64)> = HashMap::new();
    for hand_over in pending {
        for (id, sequence) in &hand_over.rows {
            latest.insert(id.as_str(), (*sequence, hand_over.at_ms));
        }
    }
    let mut rows: Vec<(&str, Option<u64>, i64)> = latest
        .into_iter()
        .map(|(id, (sequence, at_ms))| (id, sequence, at_ms))
        .collect();
    rows.sort_by_key(|&(_, _, at_ms)| at_ms);
    for chunk in rows.chunks(RELAY_BATCH) {
        let earliest = chunk[0].2;
        let handed: Vec<(&str, Option<u64>)> = chunk
            .iter()
            .map(|&(id, sequence, _)| (id, sequence))
            .collect();
        queue::hold(db, &handed, earliest).await?;
    }
    Ok(())
}

/// Applies the reports agent hosts publish. Every manager replica runs one; they share
/// the reports consumer, and outcomes of one orchestration serialise on its row lock.
pub struct Reports {
    engine: Engine,
    queue: Arc<dyn Queue>,
    concurrency: usize,
}

impl Reports {
    /// Applies reports from `queue` to `engine`, at most `concurrency` (at least 1) at a
    /// time, those that arrive together in one transaction; nothing is pulled until
    /// [`Reports::run`].
    pub fn new(engine: Engine, queue: Arc<dyn Queue>, concurrency: usize) -> Self {
        Self {
            engine,
            queue,
            concurrency: concurrency.max(1),
        }
    }

    /// Runs until aborted; fails only when the consumer cannot be set up.
    pub async fn run(self) -> Result<(), cfm_queue::QueueError> {
        let mut consumer = cfm_queue::consumer_retrying(self.queue.as_ref(), REPORTS_TOPIC).await?;
        let group = group_commit(self.engine);
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
                let group = group.clone();
                applying.spawn(async move {
                    let report: ActivityReport = match serde_json::from_slice(delivery.payload()) {
                        Ok(report) => report,
                        Err(e) => {
                            tracing::error!(message = %delivery.id(), "dropping unreadable report: {e}");
                            let _ = delivery.ack().await;
                            return;
                        }
                    };
                    let message_id = report.message_id.clone();
                    let result = group.apply(report).await;
                    let settled = match result {
                        Ok(()) => {
                            tracing::debug!(message = %message_id, "report applied");
                            delivery.ack().await
                        }
                        Err(e) => {
                            tracing::warn!(message = %message_id, "cannot apply a report: {e}");
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

/// The `traceparent` an outbox row's task carries, for the message's header. Rows are
/// only searched for one when they name one: with traces off (the default) no task does,
/// and the relay parses nothing.
fn trace_parent_of(payload: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Traced {
        trace_parent: Option<String>,
    }
    if !payload.contains("\"traceParent\"") {
        return None;
    }
    serde_json::from_str::<Traced>(payload)
        .ok()
        .and_then(|traced| traced.trace_parent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tasks_trace_parent_goes_to_its_header() {
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let traced = format!(
            r#"{{"orchestrationId":"o","processingData":{{"note":{{"traceParent":"x"}}}},"traceParent":"{traceparent}"}}"#
        );
        assert_eq!(trace_parent_of(&traced).as_deref(), Some(traceparent));
        // A key of that name deeper in the processing data is not the task's.
        let nested = r#"{"orchestrationId":"o","processingData":{"traceParent":"x"}}"#;
        assert_eq!(trace_parent_of(nested), None);
        assert_eq!(trace_parent_of(r#"{"orchestrationId":"o"}"#), None);
    }
}
