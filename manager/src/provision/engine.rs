//! The orchestration engine: starts orchestrations and applies activity outcomes.
//!
//! An activity is dispatched as soon as all its dependencies are complete. Applying an
//! outcome, recording what it changed, acknowledging its message and dispatching the
//! activities it unblocks happen in one transaction: a crash before the commit leaves the
//! message to be delivered again, a crash after leaves nothing to redo.

use std::collections::BTreeMap;

use cfm_protocol::{ActivityOutcome, ActivityTask, keys, orchestration_types};
use serde_json::Value;
use sqlx::Row;
use tracing::Instrument;

use crate::error::{ManagerError, Result};
use crate::model::{
    ActivitySpec, Orchestration, OrchestrationDefinition, OrchestrationState, Properties, Step,
    new_id, now,
};
use crate::provision::definitions;
use crate::query::{Field, Literal, Predicate};
use crate::queue::{self, Signal};
use crate::store::{self, Conn, Db, Page, from_json, to_json};

/// What the correlation id of an orchestration that undoes a late deploy step ends with.
pub const CLEANUP_SUFFIX: &str = "/cleanup";

/// Tunables of the engine.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Wall-clock budget of one activity attempt.
    pub activity_timeout_ms: u64,
    /// Retries an activity may ask for before it counts as failed.
    pub max_retries: u32,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// Deliveries without a result (crashes mid-activity) before a message is given up.
    pub max_deliveries: u64,
    /// Longest reschedule delay honoured.
    pub max_reschedule_ms: u64,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            activity_timeout_ms: 60_000,
            max_retries: 5,
            retry_base_ms: 1_000,
            retry_max_ms: 60_000,
            max_deliveries: 10,
            max_reschedule_ms: 3_600_000,
        }
    }
}

#[derive(Clone)]
pub struct Engine {
    db: Db,
    settings: EngineSettings,
    outbox: Signal,
}

/// What to start: one orchestration type of a definition, with its base data.
pub struct Start {
    pub correlation_id: String,
    pub orchestration_type: String,
    pub definition: OrchestrationDefinition,
    /// Must hold `cfm.participant.id` and `cfm.participant.contextId`.
    pub processing_data: Properties,
}

/// An orchestration that has just completed or errored, as the tenant manager sees it.
pub struct Finished<'a> {
    pub id: &'a str,
    pub correlation_id: &'a str,
    /// The template it ran from: compensation runs that template's dispose.
    pub definition_id: &'a str,
    pub orchestration_type: &'a str,
    pub state: OrchestrationState,
    /// Base data plus every completed activity's output: what compensation starts from.
    pub processing_data: &'a Properties,
    pub output_data: &'a Properties,
    pub error_detail: Option<&'a str>,
}

/// The orchestration row fields `apply` works with.
struct Current {
    /// Whom the orchestration works for, from its own columns: every task it sends is
    /// addressed from here, whatever its processing data says.
    participant: Participant,
    correlation_id: String,
    definition_id: String,
    orchestration_type: String,
    state: i64,
    processing_data: Properties,
    output_data: Properties,
}

/// A participant as an orchestration addresses it.
#[derive(Debug, Clone)]
struct Participant {
    id: String,
    context_id: String,
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

struct StepRow {
    activity_id: String,
    activity_type: String,
    depends_on: Vec<String>,
    state: String,
    attempt: i64,
    retries: i64,
}

impl Engine {
    pub fn new(db: Db, settings: EngineSettings) -> Self {
        Self {
            db,
            settings,
            outbox: Signal::default(),
        }
    }

    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

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
        let participant = Participant::of(&start.processing_data);
        let id = new_id();
        let timestamp = now();
        sqlx::query(
            "INSERT INTO orchestrations (id, version, correlation_id, definition_id, orchestration_type, state,
               state_timestamp, created_timestamp, processing_data, output_data, participant_id, participant_context_id)
             VALUES ($1, 0, $2, $3, $4, $5, $6, $7, $8, '{}', $9, $10)",
        )
        .bind(&id)
        .bind(&start.correlation_id)
        .bind(&start.definition.id)
        .bind(&start.orchestration_type)
        .bind(OrchestrationState::Running as i64)
        .bind(&timestamp)
        .bind(&timestamp)
        .bind(to_json(&start.processing_data))
        .bind(&participant.id)
        .bind(&participant.context_id)
        .execute(&mut *conn)
        .await?;
        for (position, activity) in activities.iter().enumerate() {
            sqlx::query(
                "INSERT INTO orchestration_steps (orchestration_id, activity_id, position, activity_type, depends_on, state)
                 VALUES ($1, $2, $3, $4, $5, 'pending')",
            )
            .bind(&id)
            .bind(&activity.id)
            .bind(position as i64)
            .bind(&activity.activity_type)
            .bind(to_json(&activity.depends_on))
            .execute(&mut *conn)
            .await?;
        }
        let all = steps(conn, &id).await?;
        self.dispatch_ready(
            conn,
            &id,
            &participant,
            &start.orchestration_type,
            &start.processing_data,
            &all,
        )
        .await?;
        tracing::info!(orchestration = %id, correlation = %start.correlation_id,
            orchestration_type = %start.orchestration_type, "orchestration started");
        Ok(id)
    }

    /// Applies the outcome of the attempt that `message_id` carried. Outcomes of stale
    /// attempts (a redelivery whose twin already reported) are acknowledged and dropped.
    pub async fn apply(
        &self,
        message_id: &str,
        task: &ActivityTask,
        outcome: ActivityOutcome,
    ) -> Result<()> {
        let span = tracing::info_span!("orchestration", id = %task.orchestration_id);
        self.apply_in_span(message_id, task, outcome)
            .instrument(span)
            .await
    }

    async fn apply_in_span(
        &self,
        message_id: &str,
        task: &ActivityTask,
        outcome: ActivityOutcome,
    ) -> Result<()> {
        let mut tx = store::write(&self.db).await?;
        // The orchestration's row first, then its queue rows: the order cancel takes them
        // in too, so the two never deadlock on PostgreSQL.
        let current = self.current(&mut tx, &task.orchestration_id).await?;
        queue::ack(&mut tx, message_id).await?;
        let Some(current) = current else {
            tx.commit().await?;
            return Ok(());
        };
        let all = steps(&mut tx, &task.orchestration_id).await?;
        let step = all.iter().find(|s| s.activity_id == task.activity_id);
        let live = current.state == OrchestrationState::Running as i64;
        let Some(step) =
            step.filter(|s| live && s.state == "dispatched" && s.attempt == task.attempt as i64)
        else {
            tracing::debug!(activity = %task.activity_id, attempt = task.attempt, "stale outcome dropped");
            let late_output = match &outcome {
                ActivityOutcome::Complete { output } => Some(output),
                _ => None,
            };
            let undoing = self
                .undo_late_run(&mut tx, &current, task, late_output)
                .await?;
            tx.commit().await?;
            if undoing {
                self.wake();
            }
            return Ok(());
        };
        let retries = step.retries;
        match refuse_unfit_output(outcome) {
            ActivityOutcome::Complete { output } => {
                self.complete(&mut tx, task, current, output, all).await?;
            }
            ActivityOutcome::Reschedule { delay_ms, state } => {
                let delay = delay_ms.min(self.settings.max_reschedule_ms);
                self.dispatch(
                    &mut tx,
                    task,
                    &current,
                    task.attempt + 1,
                    delay,
                    Some(state),
                )
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
                    &mut tx,
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
                self.fail(&mut tx, task, &current, &reason).await?;
            }
            ActivityOutcome::Fatal { reason } => {
                self.fail(&mut tx, task, &current, &reason).await?;
            }
        }
        tx.commit().await?;
        self.wake();
        Ok(())
    }

    /// Stops a running orchestration: its queued work is dropped, its unfinished steps
    /// are marked cancelled, and it ends errored, which compensates like any failure (a
    /// cancelled deploy runs the dispose template). Outcomes of attempts already running
    /// arrive later and are dropped as stale.
    pub async fn cancel(&self, id: &str, by: &str) -> Result<Orchestration> {
        let mut tx = store::write(&self.db).await?;
        let current = self
            .current(&mut tx, id)
            .await?
            .ok_or_else(|| ManagerError::not_found(format!("orchestration '{id}' not found")))?;
        if current.state != OrchestrationState::Running as i64 {
            return Err(ManagerError::conflict(format!(
                "orchestration '{id}' is not running (state {}); only a running orchestration can be cancelled",
                current.state
            )));
        }
        queue::purge_prefix(&mut tx, &format!("{id}/")).await?;
        sqlx::query(
            "UPDATE orchestration_steps SET state = 'cancelled', completed_at = $1
             WHERE orchestration_id = $2 AND state IN ('pending', 'dispatched')",
        )
        .bind(now())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let detail = format!("cancelled by {by}");
        tracing::warn!(orchestration = %id, %by, "orchestration cancelled");
        self.finish(
            &mut tx,
            id,
            &current,
            OrchestrationState::Errored,
            Some(&detail),
        )
        .await?;
        tx.commit().await?;
        self.wake();
        self.get(id).await
    }

    /// Reads an orchestration with its steps.
    pub async fn get(&self, id: &str) -> Result<Orchestration> {
        let predicate = Predicate::default().and_equals("id", Literal::Text(id.to_string()));
        // A read by id is cheap and the engine's own: not queued behind API predicates.
        self.read(self.db.read(), &predicate, Page::default())
            .await?
            .pop()
            .ok_or_else(|| ManagerError::not_found(format!("orchestration '{id}' not found")))
    }

    /// Orchestrations matching a predicate (upstream's `/orchestrations/query`), sorted by
    /// id, each with its steps.
    pub async fn query(&self, predicate: &Predicate, page: Page) -> Result<Vec<Orchestration>> {
        self.read(self.db.queries(), predicate, page).await
    }

    async fn read(
        &self,
        pool: &sqlx::AnyPool,
        predicate: &Predicate,
        page: Page,
    ) -> Result<Vec<Orchestration>> {
        let select = "SELECT id, correlation_id, definition_id, orchestration_type, state,
              state_timestamp, created_timestamp, processing_data, output_data, error_detail
            FROM orchestrations";
        let mut conn = pool.acquire().await?;
        let rows = predicate
            .select_page(select, &orchestration_field, self.db.backend(), page)?
            .fetch_all(&mut *conn)
            .await?;
        let mut found = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: String = row.get("id");
            let step_rows = sqlx::query(
                "SELECT activity_id, activity_type, depends_on, state, attempt, last_error, started_at, completed_at
                 FROM orchestration_steps WHERE orchestration_id = $1 ORDER BY position",
            )
            .bind(&id)
            .fetch_all(&mut *conn)
            .await?;
            found.push(read_orchestration(row, &step_rows)?);
        }
        Ok(found)
    }

    async fn complete(
        &self,
        tx: &mut Conn,
        task: &ActivityTask,
        mut current: Current,
        output: Properties,
        mut all: Vec<StepRow>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE orchestration_steps SET state = 'completed', completed_at = $1, output = $2, last_error = NULL
             WHERE orchestration_id = $3 AND activity_id = $4",
        )
        .bind(now())
        .bind(to_json(&output))
        .bind(&task.orchestration_id)
        .bind(&task.activity_id)
        .execute(&mut *tx)
        .await?;
        for (key, value) in output {
            current.processing_data.insert(key.clone(), value.clone());
            current.output_data.insert(key, value);
        }
        sqlx::query("UPDATE orchestrations SET processing_data = $1, output_data = $2, version = version + 1 WHERE id = $3")
            .bind(to_json(&current.processing_data))
            .bind(to_json(&current.output_data))
            .bind(&task.orchestration_id)
            .execute(&mut *tx)
            .await?;
        // The steps as read at the start of this transaction, which holds the
        // orchestration's lock, with this one now completed.
        for step in all.iter_mut().filter(|s| s.activity_id == task.activity_id) {
            step.state = "completed".into();
        }
        let remaining = all.iter().filter(|s| s.state != "completed").count();
        if remaining == 0 {
            self.finish(
                tx,
                &task.orchestration_id,
                &current,
                OrchestrationState::Completed,
                None,
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
            "UPDATE orchestration_steps SET state = 'failed', completed_at = $1, last_error = $2
             WHERE orchestration_id = $3 AND activity_id = $4",
        )
        .bind(now())
        .bind(reason)
        .bind(&task.orchestration_id)
        .bind(&task.activity_id)
        .execute(&mut *tx)
        .await?;
        // Nothing else of an errored orchestration should run.
        queue::purge_prefix(tx, &format!("{}/", task.orchestration_id)).await?;
        let detail = format!("activity '{}' failed: {reason}", task.activity_id);
        tracing::warn!(activity = %task.activity_id, %reason, "orchestration errored");
        self.finish(
            tx,
            &task.orchestration_id,
            current,
            OrchestrationState::Errored,
            Some(&detail),
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
    ) -> Result<()> {
        sqlx::query(
            "UPDATE orchestrations SET state = $1, state_timestamp = $2, error_detail = $3, version = version + 1 WHERE id = $4",
        )
        .bind(state as i64)
        .bind(now())
        .bind(error_detail)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tracing::info!(orchestration = %id, state = ?state, "orchestration finished");
        let finished = Finished {
            id,
            correlation_id: &current.correlation_id,
            definition_id: &current.definition_id,
            orchestration_type: &current.orchestration_type,
            state,
            processing_data: &current.processing_data,
            output_data: &current.output_data,
            error_detail,
        };
        crate::tenant::profiles::on_orchestration_finished(self, tx, &finished).await
    }

    /// Dispatches every pending activity whose dependencies are all complete.
    async fn dispatch_ready(
        &self,
        tx: &mut Conn,
        id: &str,
        participant: &Participant,
        orchestration_type: &str,
        data: &Properties,
        all: &[StepRow],
    ) -> Result<()> {
        let done: Vec<&str> = all
            .iter()
            .filter(|s| s.state == "completed")
            .map(|s| s.activity_id.as_str())
            .collect();
        for step in all.iter().filter(|s| s.state == "pending") {
            if step.depends_on.iter().all(|d| done.contains(&d.as_str())) {
                let task = self.first_attempt(id, participant, orchestration_type, step, data);
                self.publish(tx, &task, 0).await?;
            }
        }
        Ok(())
    }

    /// Dispatches a further attempt of the activity `task` ran.
    async fn dispatch(
        &self,
        tx: &mut Conn,
        task: &ActivityTask,
        current: &Current,
        attempt: u32,
        delay_ms: u64,
        state: Option<Value>,
    ) -> Result<()> {
        // Only the step's identity is taken from the reported task; whom it works for
        // and what it reads come from the orchestration row.
        let next = ActivityTask {
            attempt,
            state,
            participant_id: current.participant.id.clone(),
            participant_context_id: current.participant.context_id.clone(),
            processing_data: current.processing_data.clone(),
            ..task.clone()
        };
        self.publish(tx, &next, delay_ms).await
    }

    /// The first attempt of a step; later attempts are derived from the previous one.
    fn first_attempt(
        &self,
        id: &str,
        participant: &Participant,
        orchestration_type: &str,
        step: &StepRow,
        data: &Properties,
    ) -> ActivityTask {
        ActivityTask {
            orchestration_id: id.to_string(),
            activity_id: step.activity_id.clone(),
            activity_type: step.activity_type.clone(),
            discriminator: orchestration_type.to_string(),
            attempt: 1,
            participant_id: participant.id.clone(),
            participant_context_id: participant.context_id.clone(),
            processing_data: data.clone(),
            state: None,
            timeout_ms: self.settings.activity_timeout_ms,
        }
    }

    /// Writes the task's message into the outbox and marks its step dispatched.
    async fn publish(&self, tx: &mut Conn, task: &ActivityTask, delay_ms: u64) -> Result<()> {
        let message_id = format!(
            "{}/{}/{}",
            task.orchestration_id, task.activity_id, task.attempt
        );
        let available_at = queue::now_ms() + delay_ms as i64;
        queue::publish(
            tx,
            &message_id,
            &cfm_queue::activity_topic(&task.activity_type),
            &to_json(task),
            available_at,
        )
        .await?;
        sqlx::query(
            "UPDATE orchestration_steps SET state = 'dispatched', attempt = $1, started_at = COALESCE(started_at, $2)
             WHERE orchestration_id = $3 AND activity_id = $4",
        )
        .bind(task.attempt as i64)
        .bind(now())
        .bind(&task.orchestration_id)
        .bind(&task.activity_id)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    /// Reads an orchestration for changing it, locking it for the rest of the transaction.
    async fn current(&self, tx: &mut Conn, id: &str) -> Result<Option<Current>> {
        let row = sqlx::query(
            // An UPDATE that changes nothing, to lock the row: outcomes of one
            // orchestration's parallel activities are applied one after the other.
            "UPDATE orchestrations SET version = version WHERE id = $1
             RETURNING correlation_id, definition_id, orchestration_type, state, processing_data, output_data,
               participant_id, participant_context_id",
        )
        .bind(id)
        .fetch_optional(tx)
        .await?;
        row.map(|row| {
            let processing_data: Properties =
                from_json(row.get("processing_data"), "processing data")?;
            let mut participant = Participant {
                id: row.get("participant_id"),
                context_id: row.get("participant_context_id"),
            };
            // A manager of the release before these columns, running beside this one
            // during an upgrade, leaves them empty; its rows' base keys are still its own.
            if participant.context_id.is_empty() {
                participant = Participant::of(&processing_data);
            }
            Ok(Current {
                participant,
                correlation_id: row.get("correlation_id"),
                definition_id: row.get("definition_id"),
                orchestration_type: row.get("orchestration_type"),
                state: row.get("state"),
                processing_data,
                output_data: from_json(row.get("output_data"), "output data")?,
            })
        })
        .transpose()
    }

    /// A deploy step that ran after its participant's dispose began may have made again
    /// what the dispose removed: a queue server that lost an acknowledgement hands the task
    /// out again, minutes later if it restarts, and an activity still running when its
    /// deploy failed finishes after the compensation started. Its outcome arrives here as
    /// stale. When a dispose of the same correlation exists, that step's dispose activity
    /// runs again, alone, in an orchestration of its own correlated with
    /// `<correlation>/cleanup` (so the profile's own lifecycle ignores it). It starts after
    /// the late run ended, so it removes what that run made; a later stale run starts
    /// another. True when one was started.
    async fn undo_late_run(
        &self,
        tx: &mut Conn,
        current: &Current,
        task: &ActivityTask,
        late_output: Option<&Properties>,
    ) -> Result<bool> {
        if current.orchestration_type != orchestration_types::VPA_DEPLOY {
            return Ok(false);
        }
        // The newest dispose, and whether it has reached this activity type yet: while
        // its own step waits, it will undo the late run itself.
        let dispose = sqlx::query(
            "SELECT o.definition_id, s.state FROM orchestrations o
               LEFT JOIN orchestration_steps s ON s.orchestration_id = o.id AND s.activity_type = $3
             WHERE o.correlation_id = $1 AND o.orchestration_type = $2
             ORDER BY o.created_timestamp DESC LIMIT 1",
        )
        .bind(&current.correlation_id)
        .bind(orchestration_types::VPA_DISPOSE)
        .bind(&task.activity_type)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(dispose) = dispose else {
            return Ok(false);
        };
        let step_state: Option<String> = dispose.get("state");
        if step_state.as_deref() == Some("pending") {
            return Ok(false);
        }
        let template: String = dispose.get("definition_id");
        let definition = match definitions::get_orchestration(tx, &template).await {
            Ok(definition) => Some(definition),
            // As a compensation does: the newest template that disposes.
            Err(ManagerError::NotFound(_)) => {
                definitions::select(tx, orchestration_types::VPA_DISPOSE, None).await?
            }
            Err(e) => return Err(e),
        };
        let Some(mut definition) = definition else {
            return Ok(false);
        };
        let undo = definition
            .activities
            .get(orchestration_types::VPA_DISPOSE)
            .and_then(|steps| steps.iter().find(|s| s.activity_type == task.activity_type))
            .cloned();
        let Some(undo) = undo else {
            tracing::warn!(activity = %task.activity_id, %template,
                "a deploy step ran after its dispose began, and no dispose step undoes its type");
            return Ok(false);
        };
        definition.activities = BTreeMap::from([(
            orchestration_types::VPA_DISPOSE.to_string(),
            vec![ActivitySpec {
                depends_on: Vec::new(),
                ..undo
            }],
        )]);
        // What the deploy knew, what the late run made (ids of what it created), and
        // whom it works for from the orchestration row.
        let mut data = current.processing_data.clone();
        if let Some(output) = late_output {
            let fit = output
                .iter()
                .filter(|(k, v)| !keys::is_server_owned(k) && !k.contains('\0') && !holds_nul(v));
            data.extend(fit.map(|(k, v)| (k.clone(), v.clone())));
        }
        current.participant.stamp(&mut data);
        let cleanup = self
            .start(
                tx,
                Start {
                    correlation_id: format!("{}{CLEANUP_SUFFIX}", current.correlation_id),
                    orchestration_type: orchestration_types::VPA_DISPOSE.into(),
                    definition,
                    processing_data: data,
                },
            )
            .await?;
        tracing::warn!(activity = %task.activity_id, attempt = task.attempt, %cleanup,
            "a deploy step ran after its participant's dispose began; running its dispose again");
        Ok(true)
    }

    /// Exponential backoff with ±20% jitter, so retries of many activities spread out.
    fn backoff(&self, retries: u32) -> u64 {
        let base = self
            .settings
            .retry_base_ms
            .saturating_mul(1u64 << retries.min(20))
            .min(self.settings.retry_max_ms);
        let jitter = rand::random_range(0.8..=1.2);
        (base as f64 * jitter) as u64
    }
}

/// An output the server will not keep turns the outcome fatal. One naming a key the server
/// owns: a plugin that could write `cfm.participant.contextId` would choose whose data the
/// next activity touches. One holding U+0000: PostgreSQL cannot keep it in a JSON document,
/// so applying it would fail, and the report would come back for ever.
fn refuse_unfit_output(outcome: ActivityOutcome) -> ActivityOutcome {
    let ActivityOutcome::Complete { output } = outcome else {
        return outcome;
    };
    let reason = if let Some(key) = output.keys().find(|k| keys::is_server_owned(k)) {
        format!(
            "its output names '{key}', a key the server owns ({}*): an activity may not change whom an orchestration works for",
            keys::SERVER_OWNED_PREFIXES.join("*, ")
        )
    } else if output
        .iter()
        .any(|(key, value)| key.contains('\0') || holds_nul(value))
    {
        "its output holds U+0000, which no backend stores".to_string()
    } else {
        return ActivityOutcome::Complete { output };
    };
    ActivityOutcome::Fatal { reason }
}

/// Whether a JSON value holds U+0000 anywhere. Recursion is bounded: outputs arrive as
/// parsed JSON, whose parser stops at 128 levels.
fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

async fn steps(conn: &mut Conn, id: &str) -> Result<Vec<StepRow>> {
    let rows = sqlx::query(
        "SELECT activity_id, activity_type, depends_on, state, attempt, retries
         FROM orchestration_steps WHERE orchestration_id = $1 ORDER BY position",
    )
    .bind(id)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(StepRow {
                activity_id: r.get("activity_id"),
                activity_type: r.get("activity_type"),
                depends_on: from_json(r.get("depends_on"), "step dependencies")?,
                state: r.get("state"),
                attempt: r.get("attempt"),
                retries: r.get("retries"),
            })
        })
        .collect()
}

fn read_orchestration(row: &store::Row, step_rows: &[store::Row]) -> Result<Orchestration> {
    let mut steps = Vec::with_capacity(step_rows.len());
    let mut completed = serde_json::Map::new();
    for s in step_rows {
        let step = Step {
            id: s.get("activity_id"),
            activity_type: s.get("activity_type"),
            depends_on: from_json(s.get("depends_on"), "step dependencies")?,
            state: s.get("state"),
            attempts: s.get("attempt"),
            last_error: s.get("last_error"),
            started_timestamp: s.get("started_at"),
            completed_timestamp: s.get("completed_at"),
        };
        if step.state == "completed" {
            completed.insert(step.id.clone(), Value::Bool(true));
        }
        steps.push(step);
    }
    Ok(Orchestration {
        id: row.get("id"),
        correlation_id: row.get("correlation_id"),
        definition_id: row.get("definition_id"),
        state: row.get("state"),
        state_timestamp: row.get("state_timestamp"),
        created_timestamp: row.get("created_timestamp"),
        orchestration_type: row.get("orchestration_type"),
        steps,
        processing_data: from_json(row.get("processing_data"), "processing data")?,
        output_data: from_json(row.get("output_data"), "output data")?,
        completed,
        error_detail: row.get("error_detail"),
    })
}

/// Query fields of orchestrations and where they are stored.
fn orchestration_field(field: &str) -> Option<Field> {
    Some(match field {
        "id" => Field::Text("id"),
        "correlationId" => Field::Text("correlation_id"),
        "definitionId" => Field::Text("definition_id"),
        "orchestrationType" => Field::Text("orchestration_type"),
        "state" => Field::Integer("state"),
        "stateTimestamp" => Field::Text("state_timestamp"),
        "createdTimestamp" => Field::Text("created_timestamp"),
        "errorDetail" => Field::Text("error_detail"),
        _ => return None,
    })
}
