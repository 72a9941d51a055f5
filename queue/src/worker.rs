//! The agent worker: pulls activity tasks, runs them on an executor and reports the
//! outcomes, acknowledging a task only once its outcome is safely reported.
//!
//! One pull loop per activity type the executor runs, all sharing one concurrency
//! limit. A loop pulls no more than the free slots (at least one), so a replica does
//! not hoard work other replicas could run; a task taken while every slot is busy keeps
//! its lease by progress signals until one frees. An activity gives its slot back once
//! it has run, not once its outcome is reported: the report's publish (or, embedded,
//! the engine's commit) does not keep the next activity waiting. Tasks taken, running
//! or with their outcome on its way, are bounded too, by twice the slots. While an
//! activity runs, its message gets a progress signal every third of the ack-wait, so a
//! long activity is not redelivered to another replica; a killed worker stops
//! signalling and its work is redelivered.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cfm_protocol::{ActivityExecutor, ActivityOutcome, ActivityReport, ActivityTask, Executed};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::{Delivery, Message, Queue, QueueError, REPORTS_TOPIC, activity_topic};

/// Where outcomes go: the engine directly (embedded) or the reports topic.
#[async_trait]
pub trait OutcomeSink: Send + Sync {
    /// Hands one outcome on; once this returns `Ok` the task's message is acknowledged.
    async fn report(&self, report: ActivityReport) -> Result<(), ReportError>;

    /// Whether an outcome this sink took has acknowledged its task's message already, so
    /// that the worker need not: the embedded engine deletes the outbox row in the
    /// transaction that applies the outcome.
    fn acknowledges(&self) -> bool {
        false
    }
}

/// Why an outcome could not be reported; the worker tries again, then hands the task back.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Publishing to the reports topic failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The report could not be serialized as JSON.
    #[error("cannot encode the report: {0}")]
    Encode(#[from] serde_json::Error),
    /// The engine this process feeds could not apply it.
    #[error("cannot apply the outcome: {0}")]
    Apply(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Publishes outcomes to the reports topic, for the managers to apply.
pub struct QueueSink(pub Arc<dyn Queue>);

#[async_trait]
impl OutcomeSink for QueueSink {
    async fn report(&self, report: ActivityReport) -> Result<(), ReportError> {
        let message = Message {
            // Sending the same report again (after a failed publish) is de-duplicated; a
            // later delivery's run is a report of its own.
            id: match &report.run {
                Some(run) => format!("{}/report/{}/{run}", report.message_id, report.delivery),
                None => format!("{}/report/{}", report.message_id, report.delivery),
            },
            topic: REPORTS_TOPIC.into(),
            payload: serde_json::to_vec(&report)?,
            // The activity's span, when it is in a trace: the managers' applies follow it.
            trace_parent: cfm_telemetry::current_traceparent()
                .or_else(|| report.task.trace_parent.clone())
                .filter(|t| cfm_telemetry::is_traceparent(t)),
        };
        self.0
            .publish(std::slice::from_ref(&message))
            .await
            .map(drop)
            .map_err(ReportError::from)
    }
}

/// Deliveries of one task without a result before it is given up, unless configured.
pub const DEFAULT_MAX_DELIVERIES: u64 = 10;
/// Activities one worker runs at once, unless configured.
pub const DEFAULT_CONCURRENCY: usize = 16;

/// How a [`Worker`] shares out and looks after its work.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Activities run at once, over all types.
    pub concurrency: usize,
    /// Deliveries after which a task is reported fatal instead of run again: a task
    /// that keeps killing its host must not cycle forever.
    pub max_deliveries: u64,
    /// How often a running activity's lease is renewed.
    pub progress_every: Duration,
    /// How long one pull waits for work.
    pub pull_wait: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            concurrency: DEFAULT_CONCURRENCY,
            max_deliveries: DEFAULT_MAX_DELIVERIES,
            progress_every: Duration::from_secs(10),
            pull_wait: Duration::from_secs(5),
        }
    }
}

/// The agent worker loop: pulls the tasks of every activity type its executor runs,
/// runs them and reports their outcomes (see the module docs).
pub struct Worker {
    queue: Arc<dyn Queue>,
    executor: Arc<dyn ActivityExecutor>,
    sink: Arc<dyn OutcomeSink>,
    settings: WorkerSettings,
}

impl Worker {
    /// A worker pulling from `queue`, running on `executor`, reporting to `sink`;
    /// nothing happens until [`Worker::run`].
    pub fn new(
        queue: Arc<dyn Queue>,
        executor: Arc<dyn ActivityExecutor>,
        sink: Arc<dyn OutcomeSink>,
        settings: WorkerSettings,
    ) -> Self {
        Self {
            queue,
            executor,
            sink,
            settings,
        }
    }

    /// Runs until aborted. Fails only when a consumer cannot be set up at all.
    pub async fn run(self) -> Result<(), QueueError> {
        self.run_until(std::future::pending()).await
    }

    /// Runs until `drain` resolves, then takes no new task and returns once every
    /// activity already taken has run and reported: a host shutting down hands over no
    /// half-done work, and nothing waits out an ack-wait to be run again elsewhere. A
    /// pull cut short by the drain may leave what it was handed to come back after the
    /// ack-wait, as a killed host's would. Fails only when a consumer cannot be set up.
    pub async fn run_until(self, drain: impl Future<Output = ()> + Send) -> Result<(), QueueError> {
        let this = Arc::new(self);
        let slots = Slots::new(this.settings.concurrency);
        let (draining, drained) = tokio::sync::watch::channel(false);
        let mut loops = JoinSet::new();
        for activity_type in this.executor.activity_types() {
            let topic = activity_topic(&activity_type);
            let consumer = crate::consumer_retrying(this.queue.as_ref(), &topic).await?;
            let (this, slots) = (this.clone(), slots.clone());
            loops.spawn(this.pull_loop(activity_type, consumer, slots, drained.clone()));
        }
        tokio::pin!(drain);
        loop {
            tokio::select! {
                joined = loops.join_next() => if joined.is_none() { return Ok(()) },
                () = &mut drain => {
                    let _ = draining.send(true);
                    while loops.join_next().await.is_some() {}
                    return Ok(());
                }
            }
        }
    }

    async fn pull_loop(
        self: Arc<Self>,
        activity_type: String,
        mut consumer: Box<dyn crate::Consumer>,
        slots: Slots,
        mut drain: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut running = JoinSet::new();
        let what = format!("{activity_type} work");
        loop {
            while running.try_join_next().is_some() {}
            let want = slots.free().max(1);
            let pull =
                crate::pull_retrying(consumer.as_mut(), want, self.settings.pull_wait, &what);
            // The drain first: a pull that is ready at once must not take more work
            // after it began.
            let batch = tokio::select! {
                biased;
                _ = drain.wait_for(|draining| *draining) => break,
                batch = pull => batch,
            };
            let mut batch = std::collections::VecDeque::from(batch);
            while let Some(delivery) = batch.pop_front() {
                // Every slot may be busy with long activities: the tasks taken keep their
                // leases meanwhile, or another replica would be handed them too.
                let waiting: Vec<&dyn Delivery> = std::iter::once(delivery.as_ref())
                    .chain(batch.iter().map(AsRef::as_ref))
                    .collect();
                let Some((taken, slot)) = self
                    .keeping_leases(&waiting, slots.acquire(), "a task waiting for a slot")
                    .await
                else {
                    return;
                };
                let this = self.clone();
                running.spawn(async move {
                    this.handle(delivery, slot).await;
                    drop(taken);
                });
            }
        }
        while running.join_next().await.is_some() {}
    }

    /// Runs one task holding `slot`, which goes back once the activity has run.
    async fn handle(&self, delivery: Box<dyn Delivery>, slot: OwnedSemaphorePermit) {
        let task: ActivityTask = match serde_json::from_slice(delivery.payload()) {
            Ok(task) => task,
            Err(e) => {
                // Only a bug writes such a message; keeping it would redeliver it forever.
                tracing::error!(message = %delivery.id(), "dropping unreadable activity message: {e}");
                let _ = delivery.ack().await;
                return;
            }
        };
        let span = tracing::info_span!("activity", orchestration = %task.orchestration_id,
            activity = %task.activity_id, activity_type = %task.activity_type,
            participant = %task.participant_id, attempt = task.attempt);
        // The message's header, or else the task's own copy (the embedded queue has no
        // headers); both name the same trace.
        let parent = delivery.trace_parent().or(task.trace_parent.as_deref());
        cfm_telemetry::continue_trace(&span, parent);
        self.run_and_report(delivery, task, slot)
            .instrument(span)
            .await;
    }

    async fn run_and_report(
        &self,
        delivery: Box<dyn Delivery>,
        task: ActivityTask,
        slot: OwnedSemaphorePermit,
    ) {
        tracing::debug!(deliveries = delivery.deliveries(), "task received");
        let executed = if delivery.deliveries() > self.settings.max_deliveries {
            tracing::error!(
                deliveries = delivery.deliveries(),
                "giving up on an activity that never reported"
            );
            Executed {
                outcome: ActivityOutcome::Fatal {
                    reason: format!(
                        "delivered {} times without a result; the activity may crash its host",
                        delivery.deliveries() - 1
                    ),
                },
                plugin_digest: None,
                capability_calls: Vec::new(),
            }
        } else {
            let started = std::time::Instant::now();
            let executed = self
                .execute_keeping_lease(delivery.as_ref(), task.clone())
                .await;
            cfm_metrics::metrics().activity_ran(
                &task.activity_type,
                outcome_kind(&executed.outcome),
                started.elapsed(),
            );
            executed
        };
        drop(slot);
        let report = ActivityReport {
            message_id: delivery.id().to_string(),
            task,
            outcome: executed.outcome,
            delivery: delivery.deliveries(),
            run: Some(uuid::Uuid::new_v4().simple().to_string()),
            plugin_digest: executed.plugin_digest,
            capability_calls: executed.capability_calls,
        };
        for attempt in 1..=3u64 {
            match self.sink.report(report.clone()).await {
                Ok(()) => {
                    tracing::debug!("outcome reported");
                    if self.sink.acknowledges() {
                        return;
                    }
                    if let Err(e) = delivery.ack().await {
                        // The report is in; a redelivery re-runs an idempotent activity
                        // and its second report is dropped as stale.
                        tracing::warn!("cannot acknowledge a reported activity: {e}");
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(attempt, "cannot report the outcome: {e}");
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
            }
        }
        // Hand it back soon rather than at the end of the ack-wait.
        let _ = delivery.nak(Duration::from_secs(1)).await;
    }

    async fn execute_keeping_lease(&self, delivery: &dyn Delivery, task: ActivityTask) -> Executed {
        let execution = self.executor.execute_traced(task);
        self.keeping_leases(&[delivery], execution, "a running activity")
            .await
    }

    /// Awaits `work`, signalling progress on `deliveries` every `progress_every` meanwhile
    /// so that their leases outlast it; `what` names them in the log.
    async fn keeping_leases<T>(
        &self,
        deliveries: &[&dyn Delivery],
        work: impl Future<Output = T>,
        what: &str,
    ) -> T {
        tokio::pin!(work);
        // The first signal is due one period in. (An interval's immediate first tick
        // still waits for the timer driver, up to a millisecond on every activity.)
        let every = self.settings.progress_every;
        let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                // Work first: a slot free at once (the common case) never arms the timer.
                biased;
                done = &mut work => return done,
                _ = progress.tick() => {
                    for delivery in deliveries {
                        if let Err(e) = delivery.in_progress().await {
                            tracing::warn!("cannot extend the lease of {what}: {e}");
                        }
                    }
                }
            }
        }
    }
}

/// What a worker may take on at once: activities running (`concurrency`), and tasks
/// taken but not yet reported, running or with their outcome on its way (twice as many).
#[derive(Clone)]
struct Slots {
    running: Arc<Semaphore>,
    taken: Arc<Semaphore>,
}

impl Slots {
    fn new(concurrency: usize) -> Self {
        let concurrency = concurrency.max(1);
        Self {
            running: Arc::new(Semaphore::new(concurrency)),
            taken: Arc::new(Semaphore::new(2 * concurrency)),
        }
    }

    /// Tasks that could be taken and run now.
    fn free(&self) -> usize {
        self.running
            .available_permits()
            .min(self.taken.available_permits())
    }

    /// A task's place among those taken, then its slot to run in. Waiting for a slot
    /// while holding a place cannot deadlock: a slot comes back once its activity has
    /// run, which waits for nothing taken. `None` once closed.
    async fn acquire(&self) -> Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
        let taken = self.taken.clone().acquire_owned().await.ok()?;
        let running = self.running.clone().acquire_owned().await.ok()?;
        Some((taken, running))
    }
}

/// The kind of an outcome, as the metrics label it.
fn outcome_kind(outcome: &ActivityOutcome) -> &'static str {
    match outcome {
        ActivityOutcome::Complete { .. } => "complete",
        ActivityOutcome::Reschedule { .. } => "reschedule",
        ActivityOutcome::Retry { .. } => "retry",
        ActivityOutcome::Fatal { .. } => "fatal",
    }
}
