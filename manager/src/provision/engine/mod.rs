//! The orchestration engine: starts orchestrations and applies activity outcomes.
//!
//! An activity is dispatched as soon as all its dependencies are complete. Applying an
//! outcome, recording what it changed, acknowledging its message and dispatching the
//! activities it unblocks happen in one transaction: a crash before the commit leaves the
//! message to be delivered again, a crash after leaves nothing to redo.

mod batch;
mod cleanup;
mod dispatch;
mod output;
mod read;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use cfm_protocol::{ActivityOutcome, ActivityReport, ActivityTask, keys};
use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, Row};
use tracing::Instrument;

use crate::capability_calls;
use crate::error::{ManagerError, Result};
use crate::events;
use crate::model::{
    ActivitySpec, Orchestration, OrchestrationDefinition, OrchestrationState, PluginDigest,
    Properties, StepState, new_id, now,
};
use crate::provision::hooks::{self, Finished, OrchestrationHooks};
use crate::queue::{self, Express, Leased, Signal};
use crate::store::{self, Backend, Conn, Db, from_json, to_json};
pub use batch::GroupCommit;
use dispatch::{Completion, ready};
pub(crate) use output::holds_nul;
use output::refuse_unfit_output;
use read::{STEP_COLUMNS, StepRow, step_rows};

/// What the correlation id of an orchestration that undoes a late deploy step ends with.
pub const CLEANUP_SUFFIX: &str = "/cleanup";

/// Tunables of the engine.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Wall-clock budget of one activity attempt.
    pub activity_timeout_ms: u64,
    /// Retries an activity may ask for before it counts as failed.
    pub max_retries: u32,
    /// Delay before the first retry; each further retry doubles it (±20 % jitter).
    pub retry_base_ms: u64,
    /// The cap on the doubling retry delay, before jitter.
    pub retry_max_ms: u64,
    /// Longest reschedule delay honoured.
    pub max_reschedule_ms: u64,
    /// How the tenant manager places participants in cells; the engine itself ignores it.
    pub placement: crate::model::PlacementPolicy,
}

impl EngineSettings {
    /// Wall-clock budget of one activity attempt, unless configured.
    pub const DEFAULT_ACTIVITY_TIMEOUT_MS: u64 = 60_000;
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            activity_timeout_ms: Self::DEFAULT_ACTIVITY_TIMEOUT_MS,
            max_retries: 5,
            retry_base_ms: 1_000,
            retry_max_ms: 60_000,
            max_reschedule_ms: 3_600_000,
            placement: crate::model::PlacementPolicy::default(),
        }
    }
}

/// The durable orchestration engine over one database; clones share it.
#[derive(Clone)]
pub struct Engine {
    db: Db,
    settings: EngineSettings,
    outbox: Signal,
    hooks: Arc<dyn OrchestrationHooks>,
    /// Where rows due now go after their commit, when the relay runs in this process.
    express: Option<Express>,
    /// What the one outcome this clone applies writes to the outbox ([`Engine::claiming`]).
    claims: Option<Arc<Mutex<Claims>>>,
}

/// What one transaction wrote into the outbox: the rows it claimed for the express lane,
/// and the topics of those it did not, which their consumers (or the relay) must find in
/// the table; and what it did that the metrics count, once it has committed.
#[derive(Default)]
struct Claims {
    /// Below how many claimed rows held in memory by the process this transaction's rows
    /// are claimed too ([`Express::claimed_until_ms`]).
    room: usize,
    rows: Vec<Leased>,
    unclaimed: BTreeSet<String>,
    /// What the transaction did, counted in the metrics once it has committed.
    tally: Vec<Tally>,
    /// Cleared once the rows are handed over: a clone kept past that point (by a hook)
    /// writes rows the ordinary way.
    open: bool,
}

/// One thing an engine transaction did that the metrics count ([`cfm_metrics::Metrics`]).
enum Tally {
    Started {
        orchestration_type: String,
    },
    Finished {
        orchestration_type: String,
        state: &'static str,
    },
    Dispatched {
        activity_type: String,
    },
    Outcome {
        activity_type: String,
        outcome: &'static str,
    },
}

impl Tally {
    fn record(self) {
        let metrics = cfm_metrics::metrics();
        match self {
            Tally::Started { orchestration_type } => {
                metrics.orchestration_started(&orchestration_type)
            }
            Tally::Finished {
                orchestration_type,
                state,
            } => metrics.orchestration_finished(&orchestration_type, state),
            Tally::Dispatched { activity_type } => metrics.activity_dispatched(&activity_type),
            Tally::Outcome {
                activity_type,
                outcome,
            } => metrics.activity_outcome(&activity_type, outcome),
        }
    }
}

fn lock(claims: &Mutex<Claims>) -> MutexGuard<'_, Claims> {
    // Nothing panics while holding it, so a poisoned lock still guards sound data.
    claims.lock().unwrap_or_else(|e| e.into_inner())
}

/// What to start: one orchestration type of a definition, with its base data.
pub struct Start {
    /// What the orchestration works on: the participant profile's id for deploys and disposes.
    pub correlation_id: String,
    /// Which of the definition's activity lists runs (deploy, dispose, ...).
    pub orchestration_type: String,
    /// The template whose activities become the orchestration's steps.
    pub definition: OrchestrationDefinition,
    /// Must hold `cfm.participant.id` and `cfm.participant.contextId`.
    pub processing_data: Properties,
}

/// A step an earlier orchestration completed, carried into a new one unchanged.
#[derive(Debug, Clone, Default)]
pub struct CarriedStep {
    /// What it output.
    pub output: Properties,
    /// The plugin that ran it, when known.
    pub plugin_digest: Option<String>,
}

/// The orchestration row fields `apply` works with.
struct Current {
    /// Whom the orchestration works for, from its own columns: every task it sends is
    /// addressed from here, whatever its processing data says.
    participant: Participant,
    correlation_id: String,
    definition_id: String,
    definition_version: i64,
    orchestration_type: String,
    state: i64,
    processing_data: Properties,
    output_data: Properties,
}

/// A participant as an orchestration addresses it, and the trace its tasks report to.
#[derive(Debug, Clone)]
struct Participant {
    id: String,
    context_id: String,
    /// The `traceparent` of the span that started the orchestration, when traces are
    /// exported: every task carries it, so the agent hosts' spans join that trace.
    trace_parent: Option<String>,
}

impl Participant {
    /// From base data the server built (the start of an orchestration).
    fn of(data: &Properties) -> Self {
        let text = |key: &str| {
            data.get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        Self {
            id: text(keys::PARTICIPANT_ID),
            context_id: text(keys::PARTICIPANT_CONTEXT_ID),
            trace_parent: None,
        }
    }

    /// Sets the base keys of `data` to this participant, whatever they said.
    fn stamp(&self, data: &mut Properties) {
        data.insert(keys::PARTICIPANT_ID.into(), Value::from(self.id.as_str()));
        data.insert(
            keys::PARTICIPANT_CONTEXT_ID.into(),
            Value::from(self.context_id.as_str()),
        );
    }
}

impl Engine {
    /// An engine with nobody above it; see [`Engine::with_hooks`].
    pub fn new(db: Db, settings: EngineSettings) -> Self {
        Self {
            db,
            settings,
            outbox: Signal::default(),
            hooks: hooks::none(),
            express: None,
            claims: None,
        }
    }

    /// The same engine, handing the activities that outcomes make due straight to
    /// `express` after the commit that applies them, instead of leaving them to be found
    /// and leased in the outbox: the hot path of the distributed relay and of the
    /// embedded queue alike.
    pub fn with_express(self, express: Express) -> Self {
        Self {
            express: Some(express),
            ..self
        }
    }

    /// The same engine, telling `hooks` when orchestrations end.
    pub fn with_hooks(self, hooks: Arc<dyn OrchestrationHooks>) -> Self {
        Self { hooks, ..self }
    }

    /// The tunables this engine runs with.
    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    /// The database the engine, and the Tenant Manager beside it, work on.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Tells whoever drains the outbox that new work may be there; call after committing.
    pub fn wake(&self) {
        self.outbox.notify();
    }

    /// What [`Engine::wake`] signals.
    pub fn outbox_signal(&self) -> &Signal {
        &self.outbox
    }

    /// Creates an orchestration and dispatches its first activities, inside the caller's
    /// transaction. Returns its id.
    pub async fn start(&self, conn: &mut Conn, start: Start) -> Result<String> {
        let id = new_id();
        self.insert(conn, &id, start, &BTreeMap::new()).await?;
        Ok(id)
    }

    /// [`Engine::start`] with the activities `done` names (activity id → what it did)
    /// completed already: a retry resumes where an errored orchestration stopped, running
    /// only what did not complete, with what completed in its data. Refused when `done`
    /// leaves nothing to run.
    pub async fn start_resuming(
        &self,
        conn: &mut Conn,
        start: Start,
        done: &BTreeMap<String, CarriedStep>,
    ) -> Result<String> {
        let id = new_id();
        self.insert(conn, &id, start, done).await?;
        Ok(id)
    }

    /// Whoever started an orchestration outside the tenant manager (a manifest, an event)
    /// may not address what the tenant manager owns: true when `correlation_id` is one of
    /// its participants.
    pub async fn is_claimed(&self, conn: &mut Conn, correlation_id: &str) -> Result<bool> {
        self.hooks.claims(conn, correlation_id).await
    }

    /// [`Engine::start`] under an id the caller chose, once: false (and nothing done) when
    /// an orchestration with that id exists, so a redelivered request or event that
    /// starts it again changes nothing.
    pub async fn start_once(&self, conn: &mut Conn, id: &str, start: Start) -> Result<bool> {
        self.insert(conn, id, start, &BTreeMap::new()).await
    }

    /// Inserts the orchestration under `id`, the activities in `done` completed with their
    /// outputs, and dispatches the first activities to run; false (nothing written) when
    /// `id` is taken, also by a concurrent start.
    async fn insert(
        &self,
        conn: &mut Conn,
        id: &str,
        mut start: Start,
        done: &BTreeMap<String, CarriedStep>,
    ) -> Result<bool> {
        let activities = start
            .definition
            .activities
            .get(&start.orchestration_type)
            .filter(|a| !a.is_empty())
            .ok_or_else(|| {
                ManagerError::conflict(format!(
                    "orchestration definition '{}' does not define {}",
                    start.definition.id, start.orchestration_type
                ))
            })?;
        let activities = activities.clone();
        if !done.is_empty() && activities.iter().all(|a| done.contains_key(&a.id)) {
            return Err(ManagerError::conflict(format!(
                "every activity of {} completed already: nothing to run",
                start.orchestration_type
            )));
        }
        let mut output_data = Properties::new();
        for activity in activities.iter().filter(|a| done.contains_key(&a.id)) {
            output_data.extend(done[&activity.id].output.clone());
        }
        start.processing_data.extend(output_data.clone());
        let mut participant = Participant::of(&start.processing_data);
        // The trace of the request (or tick) that starts it; one started outside any
        // traced span (a drain, a keypair event) is the root of a trace of its own.
        participant.trace_parent = cfm_telemetry::current_traceparent().or_else(|| {
            let root = tracing::info_span!("orchestration start", orchestration = %id,
                orchestration_type = %start.orchestration_type);
            cfm_telemetry::traceparent_of(&root)
        });
        let timestamp = now();
        // The tenant comes back with the insert; no row when the id was taken.
        let inserted: Option<Option<String>> = sqlx::query_scalar(AssertSqlSafe(format!(
            "INSERT INTO orchestrations (id, version, correlation_id, definition_id, definition_version, orchestration_type,
               state, state_timestamp, created_timestamp, processing_data, output_data, participant_id, participant_context_id,
               trace_parent)
             VALUES ($1, 0, $2, $3, $11, $4, $5, $6, $7, $8, $12, $9, $10, $13)
             ON CONFLICT (id) DO NOTHING RETURNING {}",
            self.hooks.tenant_sql()
        )))
        .bind(id)
        .bind(&start.correlation_id)
        .bind(&start.definition.id)
        .bind(&start.orchestration_type)
        .bind(OrchestrationState::Running.code())
        .bind(&timestamp)
        .bind(&timestamp)
        .bind(to_json(&start.processing_data)?)
        .bind(&participant.id)
        .bind(&participant.context_id)
        .bind(start.definition.version)
        .bind(to_json(&output_data)?)
        .bind(&participant.trace_parent)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(tenant) = inserted else {
            return Ok(false);
        };
        let all = insert_steps(conn, id, &activities, done, &timestamp).await?;
        self.dispatch_ready(
            conn,
            id,
            &participant,
            &start.orchestration_type,
            &start.processing_data,
            &all,
            None,
        )
        .await?;
        let event = json!({"id": id, "correlationId": start.correlation_id,
            "orchestrationType": start.orchestration_type, "definitionId": start.definition.id,
            "definitionVersion": start.definition.version, "state": "running"});
        record_event(conn, tenant.as_deref(), id, event).await?;
        tracing::info!(orchestration = %id, correlation = %start.correlation_id,
            orchestration_type = %start.orchestration_type, "orchestration started");
        self.tally(Tally::Started {
            orchestration_type: start.orchestration_type,
        });
        Ok(true)
    }

    /// Applies the outcome of the attempt that `message_id` carried. Outcomes of stale
    /// attempts (a redelivery whose twin already reported) are acknowledged and dropped.
    pub async fn apply(
        &self,
        message_id: &str,
        task: &ActivityTask,
        outcome: ActivityOutcome,
    ) -> Result<()> {
        self.apply_report(ActivityReport {
            message_id: message_id.to_string(),
            task: task.clone(),
            outcome,
            delivery: 0,
            run: None,
            plugin_digest: None,
            capability_calls: Vec::new(),
        })
        .await
    }

    /// [`Engine::apply`] for a whole report: a completed step also records the plugin
    /// that ran it, and the participant's capability calls gain the attempt's.
    pub async fn apply_report(&self, report: ActivityReport) -> Result<()> {
        let span = apply_span(&report);
        self.claiming_outcomes()
            .apply_committing(&report)
            .instrument(span)
            .await
    }

    /// A clone for one transaction of the caller's that keeps track of what it writes to
    /// the outbox, claiming the rows due now when there is an express lane. Once that
    /// transaction has committed, [`Engine::committed`] hands the claimed rows over and
    /// wakes only the consumers of the other rows' topics, where [`Engine::wake`] wakes
    /// every consumer (on SQLite each one that wakes leases in the table, a turn at its
    /// one writer). A clone dropped uncommitted hands nothing over: what its transaction
    /// wrote never existed. Its rows are new work, claimed only while the lane has
    /// [`Express::START_ROOM`].
    pub fn claiming(&self) -> Self {
        self.claiming_within(Express::START_ROOM)
    }

    /// [`Engine::claiming`] for applying outcomes: the activities they make due are work
    /// under way, claimed while the lane has any room.
    pub(super) fn claiming_outcomes(&self) -> Self {
        self.claiming_within(Express::ROOM)
    }

    fn claiming_within(&self, room: usize) -> Self {
        let claims = Claims {
            room,
            open: true,
            ..Claims::default()
        };
        Self {
            claims: Some(Arc::new(Mutex::new(claims))),
            ..self.clone()
        }
    }

    /// After the transaction of a [`Engine::claiming`] clone committed: hands its claimed
    /// rows to the express lane and tells whoever drains the outbox about the rest, only
    /// their topics' consumers. Later writes through this clone are not claimed. On any
    /// other engine, [`Engine::wake`].
    pub fn committed(&self) {
        let Some(claims) = &self.claims else {
            return self.wake();
        };
        let claims = std::mem::take(&mut *lock(claims));
        claims.tally.into_iter().for_each(Tally::record);
        if !claims.unclaimed.is_empty() {
            self.outbox
                .notify_topics(claims.unclaimed.iter().map(String::as_str));
        }
        if let Some(express) = &self.express {
            express.hand_over(claims.rows);
        }
    }

    /// Counts `tally` once this clone's transaction commits ([`Engine::committed`]); on
    /// an engine that is not [`Engine::claiming`], at once.
    fn tally(&self, tally: Tally) {
        if let Some(claims) = &self.claims {
            let mut claims = lock(claims);
            if claims.open {
                claims.tally.push(tally);
                return;
            }
        }
        tally.record();
    }

    async fn apply_committing(&self, report: &ActivityReport) -> Result<()> {
        let mut tx = store::write(&self.db).await?;
        self.apply_within(&mut tx, report).await?;
        tx.commit().await?;
        self.committed();
        Ok(())
    }

    /// Applies one outcome inside the caller's transaction, acknowledging its message
    /// there; what it writes to the outbox is announced by [`Engine::committed`]. The
    /// attempt's capability calls are kept whether or not its outcome still counts: a
    /// stale run's writes happened all the same.
    async fn apply_within(&self, tx: &mut Conn, report: &ActivityReport) -> Result<()> {
        capability_calls::record(tx, report).await?;
        let task = &report.task;
        let outcome = report.outcome.clone();
        let plugin_digest = report.plugin_digest.as_deref();
        let ack = queue::row_id(&report.message_id);
        let Some((current, all)) = self.current_acking(tx, &task.orchestration_id, ack).await?
        else {
            return queue::ack(tx, ack).await;
        };
        let step = all.iter().find(|s| s.activity_id == task.activity_id);
        let live = current.state == OrchestrationState::Running.code();
        let Some(step) = step.filter(|s| {
            live && s.state == StepState::Dispatched && s.attempt == task.attempt as i64
        }) else {
            tracing::debug!(activity = %task.activity_id, attempt = task.attempt, "stale outcome dropped");
            let late_output = match &outcome {
                ActivityOutcome::Complete { output } => Some(output),
                _ => None,
            };
            self.undo_late_run(tx, &current, task, late_output).await?;
            return Ok(());
        };
        let retries = step.retries;
        let outcome = refuse_unfit_output(outcome);
        self.tally(Tally::Outcome {
            activity_type: task.activity_type.clone(),
            outcome: match &outcome {
                ActivityOutcome::Complete { .. } => "completed",
                ActivityOutcome::Reschedule { .. } => "rescheduled",
                ActivityOutcome::Retry { .. } if retries < self.settings.max_retries as i64 => {
                    "retried"
                }
                ActivityOutcome::Retry { .. } | ActivityOutcome::Fatal { .. } => "failed",
            },
        });
        match outcome {
            ActivityOutcome::Complete { output } => {
                self.complete(tx, task, current, output, plugin_digest, all)
                    .await?;
            }
            ActivityOutcome::Reschedule { delay_ms, state } => {
                let delay = delay_ms.min(self.settings.max_reschedule_ms);
                self.dispatch(tx, task, &current, task.attempt + 1, delay, Some(state))
                    .await?;
            }
            ActivityOutcome::Retry { reason } if retries < self.settings.max_retries as i64 => {
                sqlx::query("UPDATE orchestration_steps SET retries = retries + 1, last_error = $1 WHERE orchestration_id = $2 AND activity_id = $3")
                    .bind(&reason)
                    .bind(&task.orchestration_id)
                    .bind(&task.activity_id)
                    .execute(&mut *tx)
                    .await?;
                let delay = self.backoff(retries as u32);
                tracing::warn!(activity = %task.activity_id, delay_ms = delay, %reason, "activity will be retried");
                self.dispatch(
                    tx,
                    task,
                    &current,
                    task.attempt + 1,
                    delay,
                    task.state.clone(),
                )
                .await?;
            }
            ActivityOutcome::Retry { reason } => {
                let reason = format!("gave up after {retries} retries: {reason}");
                self.fail(tx, task, &current, &reason).await?;
            }
            ActivityOutcome::Fatal { reason } => {
                self.fail(tx, task, &current, &reason).await?;
            }
        }
        Ok(())
    }

    /// Stops a running orchestration: its queued work is dropped, its unfinished steps
    /// are marked cancelled, and it ends errored, which compensates like any failure (a
    /// cancelled deploy runs the dispose template). Outcomes of attempts already running
    /// arrive later and are dropped as stale.
    pub async fn cancel(&self, id: &str, by: &str) -> Result<Orchestration> {
        let this = self.claiming();
        let mut tx = store::write(&self.db).await?;
        let current = this
            .current(&mut tx, id)
            .await?
            .ok_or_else(|| ManagerError::not_found(format!("orchestration '{id}' not found")))?;
        if current.state != OrchestrationState::Running.code() {
            return Err(ManagerError::conflict(format!(
                "orchestration '{id}' is not running (state {}); only a running orchestration can be cancelled",
                current.state
            )));
        }
        stop_unfinished(&mut tx, id).await?;
        let detail = format!("cancelled by {by}");
        tracing::warn!(orchestration = %id, %by, "orchestration cancelled");
        this.finish(
            &mut tx,
            id,
            &current,
            OrchestrationState::Errored,
            Some(&detail),
            &[],
        )
        .await?;
        tx.commit().await?;
        this.committed();
        self.get(id).await
    }

    async fn complete(
        &self,
        tx: &mut Conn,
        task: &ActivityTask,
        mut current: Current,
        output: Properties,
        plugin_digest: Option<&str>,
        mut all: Vec<StepRow>,
    ) -> Result<()> {
        let step_output = to_json(&output)?;
        for (key, value) in output {
            current.processing_data.insert(key.clone(), value.clone());
            current.output_data.insert(key, value);
        }
        let completion = Completion {
            orchestration_id: task.orchestration_id.clone(),
            activity_id: task.activity_id.clone(),
            output: step_output,
            plugin_digest: plugin_digest.map(str::to_string),
            processing_data: to_json(&current.processing_data)?,
            output_data: to_json(&current.output_data)?,
        };
        // The steps as read at the start of this transaction, which holds the
        // orchestration's lock, with this one now completed.
        for step in all.iter_mut().filter(|s| s.activity_id == task.activity_id) {
            step.state = StepState::Completed;
            step.plugin_digest = plugin_digest.map(str::to_string);
        }
        let remaining = all
            .iter()
            .filter(|s| s.state != StepState::Completed)
            .count();
        // The completion rides on the first dispatch it causes: the step, the
        // orchestration, the next step and its outbox row in one round trip.
        let riding = if ready(&all).next().is_some() {
            Some(completion)
        } else {
            completion.write(tx).await?;
            None
        };
        if remaining == 0 {
            let plugin_digests: Vec<PluginDigest> = all
                .into_iter()
                .filter_map(|step| {
                    Some(PluginDigest {
                        sha256: step.plugin_digest?,
                        activity_type: step.activity_type,
                    })
                })
                .collect();
            self.finish(
                tx,
                &task.orchestration_id,
                &current,
                OrchestrationState::Completed,
                None,
                &plugin_digests,
            )
            .await
        } else {
            self.dispatch_ready(
                tx,
                &task.orchestration_id,
                &current.participant,
                &current.orchestration_type,
                &current.processing_data,
                &all,
                riding,
            )
            .await
        }
    }

    async fn fail(
        &self,
        tx: &mut Conn,
        task: &ActivityTask,
        current: &Current,
        reason: &str,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE orchestration_steps SET state = $1, completed_at = $2, last_error = $3
             WHERE orchestration_id = $4 AND activity_id = $5",
        )
        .bind(StepState::Failed)
        .bind(now())
        .bind(reason)
        .bind(&task.orchestration_id)
        .bind(&task.activity_id)
        .execute(&mut *tx)
        .await?;
        // Nothing else of an errored orchestration runs; an attempt already running
        // reports too late to count, and its step must not read as under way.
        stop_unfinished(tx, &task.orchestration_id).await?;
        let detail = format!("activity '{}' failed: {reason}", task.activity_id);
        tracing::warn!(activity = %task.activity_id, %reason, "orchestration errored");
        self.finish(
            tx,
            &task.orchestration_id,
            current,
            OrchestrationState::Errored,
            Some(&detail),
            &[],
        )
        .await
    }

    async fn finish(
        &self,
        tx: &mut Conn,
        id: &str,
        current: &Current,
        state: OrchestrationState,
        error_detail: Option<&str>,
        plugin_digests: &[PluginDigest],
    ) -> Result<()> {
        let tenant: Option<String> = sqlx::query_scalar(AssertSqlSafe(format!(
            "UPDATE orchestrations SET state = $1, state_timestamp = $2, error_detail = $3, version = version + 1
             WHERE id = $4 RETURNING {}",
            self.hooks.tenant_sql()
        )))
        .bind(state.code())
        .bind(now())
        .bind(error_detail)
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        tracing::info!(orchestration = %id, state = ?state, "orchestration finished");
        self.tally(Tally::Finished {
            orchestration_type: current.orchestration_type.clone(),
            state: if state == OrchestrationState::Completed {
                "completed"
            } else {
                "errored"
            },
        });
        let event = json!({"id": id, "correlationId": current.correlation_id,
            "orchestrationType": current.orchestration_type, "definitionId": current.definition_id,
            "definitionVersion": current.definition_version,
            "state": if state == OrchestrationState::Completed { "completed" } else { "errored" },
            "errorDetail": error_detail});
        record_event(tx, tenant.as_deref(), id, event).await?;
        let finished = Finished {
            id,
            correlation_id: &current.correlation_id,
            definition_id: &current.definition_id,
            definition_version: current.definition_version,
            orchestration_type: &current.orchestration_type,
            state,
            processing_data: &current.processing_data,
            output_data: &current.output_data,
            error_detail,
            plugin_digests,
        };
        self.hooks.finished(self, tx, &finished).await
    }

    /// Reads an orchestration for changing it, locking it for the rest of the transaction.
    async fn current(&self, tx: &mut Conn, id: &str) -> Result<Option<Current>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            // An UPDATE that changes nothing, to lock the row: outcomes of one
            // orchestration's parallel activities are applied one after the other.
            "UPDATE orchestrations SET version = version WHERE id = $1 RETURNING {CURRENT}"
        )))
        .bind(id)
        .fetch_optional(tx)
        .await?;
        row.as_ref().map(read_current).transpose()
    }

    /// [`Engine::current`] with the orchestration's steps, in their template's order, and
    /// the outbox row `ack` removed ([`queue::ack`]); None, and nothing removed, when
    /// there is no such orchestration. What applying every outcome reads, in as few
    /// round trips as the backend allows.
    ///
    /// One on either. On PostgreSQL the orchestration and its steps are locked as they are
    /// read, so a transaction that held them and committed meanwhile is seen (a
    /// statement's snapshot predates its wait for a lock, but locked rows are read at
    /// their latest version), and the queue row is removed only once they are held, the
    /// order cancel takes them in, so the two never deadlock. On SQLite the transaction
    /// holds the database's one write lock from its start, so a plain read is current and
    /// there is no row lock to take.
    async fn current_acking(
        &self,
        tx: &mut Conn,
        id: &str,
        ack: &str,
    ) -> Result<Option<(Current, Vec<StepRow>)>> {
        let select = format!(
            "SELECT {CURRENT}, {STEP_COLUMNS}, position
             FROM orchestrations JOIN orchestration_steps ON orchestration_id = orchestrations.id
             WHERE orchestrations.id = $1"
        );
        let sql = match self.db.backend() {
            // The ack (only when the orchestration has steps, as on PostgreSQL) and the
            // read share one round trip; the DELETE returns no rows of its own.
            Backend::Sqlite => store::sqlite_batch(&[
                "DELETE FROM queue WHERE id = $2
                   AND EXISTS (SELECT 1 FROM orchestration_steps WHERE orchestration_id = $1)",
                &format!("{select} ORDER BY position"),
            ]),
            Backend::Postgres => format!(
                "WITH locked AS ({select} FOR NO KEY UPDATE),
                 acked AS (DELETE FROM queue WHERE id = $2 AND EXISTS (SELECT 1 FROM locked))
                 SELECT * FROM locked ORDER BY position"
            ),
        };
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .bind(ack)
            .fetch_all(&mut *tx)
            .await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        Ok(Some((read_current(first)?, step_rows(&rows)?)))
    }
}

/// Drops the queued work of orchestration `id` and marks its unfinished steps (waiting or
/// dispatched) `cancelled`: it is ending before they could.
async fn stop_unfinished(tx: &mut Conn, id: &str) -> Result<()> {
    queue::purge_prefix(tx, &format!("{id}/")).await?;
    let [pending, dispatched] = StepState::UNFINISHED;
    sqlx::query(
        "UPDATE orchestration_steps SET state = $1, completed_at = $2
         WHERE orchestration_id = $3 AND state IN ($4, $5)",
    )
    .bind(StepState::Cancelled)
    .bind(now())
    .bind(id)
    .bind(pending)
    .bind(dispatched)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The span a report is applied in: its orchestration's, in the trace its task carried.
fn apply_span(report: &ActivityReport) -> tracing::Span {
    let span = tracing::info_span!(
        "orchestration",
        orchestration = %report.task.orchestration_id,
        participant = %report.task.participant_id
    );
    cfm_telemetry::continue_trace(&span, report.task.trace_parent.as_deref());
    span
}

/// The orchestration columns [`read_current`] reads.
const CURRENT: &str = "correlation_id, definition_id, definition_version, orchestration_type, orchestrations.state AS orchestration_state,
  processing_data, output_data, participant_id, participant_context_id, trace_parent";

fn read_current(row: &store::Row) -> Result<Current> {
    let processing_data: Properties = from_json(row.get("processing_data"), "processing data")?;
    let mut participant = Participant {
        id: row.get("participant_id"),
        context_id: row.get("participant_context_id"),
        trace_parent: row.get("trace_parent"),
    };
    // A manager of the release before these columns, running beside this one during an
    // upgrade, leaves them empty; its rows' base keys are still its own.
    if participant.context_id.is_empty() {
        participant = Participant::of(&processing_data);
    }
    Ok(Current {
        participant,
        correlation_id: row.get("correlation_id"),
        definition_id: row.get("definition_id"),
        definition_version: row.get("definition_version"),
        orchestration_type: row.get("orchestration_type"),
        state: row.get("orchestration_state"),
        processing_data,
        output_data: from_json(row.get("output_data"), "output data")?,
    })
}

/// Records an orchestration's change of state as a lifecycle event of `tenant`.
async fn record_event(conn: &mut Conn, tenant: Option<&str>, id: &str, data: Value) -> Result<()> {
    events::record(conn, events::kinds::ORCHESTRATION, tenant, id, data).await
}

/// Steps one INSERT writes at most: 9 parameters each, far below either backend's limit.
const STEPS_PER_INSERT: usize = 100;

/// Writes the steps of the new orchestration `id`, those `done` carries completed and the
/// rest pending, and returns them as a read would: a multi-row INSERT
/// rather than one statement per step and a read back, so starting an orchestration of
/// five activities is one round trip where it was six.
async fn insert_steps(
    conn: &mut Conn,
    id: &str,
    activities: &[ActivitySpec],
    done: &BTreeMap<String, CarriedStep>,
    timestamp: &str,
) -> Result<Vec<StepRow>> {
    const COLUMNS: usize = 9;
    let mut steps = Vec::with_capacity(activities.len());
    for (chunk, activities) in activities.chunks(STEPS_PER_INSERT).enumerate() {
        let rows: Vec<String> = (0..activities.len())
            .map(|row| {
                let marks: Vec<String> = (1..=COLUMNS)
                    .map(|column| format!("${}", row * COLUMNS + column))
                    .collect();
                format!("({})", marks.join(", "))
            })
            .collect();
        let mut insert = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO orchestration_steps (orchestration_id, activity_id, position, activity_type, depends_on, state,
               output, completed_at, plugin_digest)
             VALUES {}",
            rows.join(", ")
        )));
        for (offset, activity) in activities.iter().enumerate() {
            let (state, output, completed_at, plugin_digest) = match done.get(&activity.id) {
                Some(carried) => (
                    StepState::Completed,
                    Some(to_json(&carried.output)?),
                    Some(timestamp.to_string()),
                    carried.plugin_digest.clone(),
                ),
                None => (StepState::Pending, None, None, None),
            };
            insert = insert
                .bind(id.to_string())
                .bind(activity.id.clone())
                .bind((chunk * STEPS_PER_INSERT + offset) as i64)
                .bind(activity.activity_type.clone())
                .bind(to_json(&activity.depends_on)?)
                .bind(state)
                .bind(output)
                .bind(completed_at)
                .bind(plugin_digest.clone());
            steps.push(StepRow {
                activity_id: activity.id.clone(),
                activity_type: activity.activity_type.clone(),
                depends_on: activity.depends_on.clone(),
                state,
                // The columns' defaults.
                attempt: 0,
                retries: 0,
                plugin_digest,
            });
        }
        insert.execute(&mut *conn).await?;
    }
    Ok(steps)
}
