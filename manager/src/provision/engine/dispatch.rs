//! How work leaves the engine: each attempt of a step becomes an outbox row, written in
//! the transaction that decided it, and the step is marked `dispatched`.

use std::borrow::Cow;

use cfm_protocol::ActivityTask;
use serde_json::Value;

use super::read::StepRow;
use super::{Current, Engine, Participant, lock};
use crate::error::Result;
use crate::model::{Properties, StepState, now};
use crate::queue::{self, AnyQuery};
use crate::store::{self, Backend, Conn, to_json};

impl Engine {
    /// Dispatches every pending activity whose dependencies are all complete; `riding`
    /// is written with the first of them (see [`Engine::publish`]), and must only be given
    /// when there is one.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn dispatch_ready(
        &self,
        tx: &mut Conn,
        id: &str,
        participant: &Participant,
        orchestration_type: &str,
        data: &Properties,
        all: &[StepRow],
        mut riding: Option<Completion>,
    ) -> Result<()> {
        for step in ready(all) {
            let task = self.first_attempt(id, participant, orchestration_type, step, data);
            self.publish(tx, &task, 0, riding.take()).await?;
        }
        debug_assert!(riding.is_none(), "a completion rode on no dispatch");
        Ok(())
    }

    /// Dispatches a further attempt of the activity `task` ran.
    pub(super) async fn dispatch(
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
            trace_parent: current.participant.trace_parent.clone(),
            ..task.clone()
        };
        self.publish(tx, &next, delay_ms, None).await
    }

    /// The first attempt of a step; later attempts are derived from the previous one.
    pub(super) fn first_attempt(
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
            trace_parent: participant.trace_parent.clone(),
        }
    }

    /// Writes the task's message into the outbox and marks its step dispatched, with
    /// `riding` (the completion that made it due) in the same round trip.
    pub(super) async fn publish(
        &self,
        tx: &mut Conn,
        task: &ActivityTask,
        delay_ms: u64,
        riding: Option<Completion>,
    ) -> Result<()> {
        let message_id = format!(
            "{}/{}/{}",
            task.orchestration_id, task.activity_id, task.attempt
        );
        let topic = cfm_queue::activity_topic(&task.activity_type);
        let payload = to_json(task)?;
        // The step is marked dispatched in the round trip that writes its message.
        let (attempt, orchestration_id, activity_id) = (
            task.attempt as i64,
            task.orchestration_id.clone(),
            task.activity_id.clone(),
        );
        let started_at = now();
        let mut sql = vec![Cow::Borrowed(
            "UPDATE orchestration_steps SET state = $7, attempt = $8, started_at = COALESCE(started_at, $9)
             WHERE orchestration_id = $10 AND activity_id = $11",
        )];
        // The completion's statements, numbered after the six of the row and the five above.
        if riding.is_some() {
            sql.extend(
                Completion::STATEMENTS
                    .iter()
                    .map(|s| Cow::Owned(store::shift_parameters(s, 11))),
            );
        }
        let dispatched = queue::Alongside {
            sql,
            bind: Box::new(move |query| {
                let query = query
                    .bind(StepState::Dispatched)
                    .bind(attempt)
                    .bind(started_at.clone())
                    .bind(orchestration_id.clone())
                    .bind(activity_id.clone());
                match &riding {
                    Some(completion) => completion.bind(query),
                    None => query,
                }
            }),
        };
        let claim = match (&self.express, &self.claims) {
            (Some(express), Some(claims)) if delay_ms == 0 => {
                let room = {
                    let claims = lock(claims);
                    claims.open.then_some(claims.room)
                };
                room.and_then(|room| express.claimed_until_ms(room))
                    .map(|until| (until, claims))
            }
            _ => None,
        };
        match claim {
            Some((until, claims)) => {
                let row = queue::publish_claimed(
                    tx,
                    &message_id,
                    &topic,
                    payload,
                    until,
                    Some(dispatched),
                )
                .await?;
                if let Some(row) = row {
                    lock(claims).rows.push(row);
                }
            }
            None => {
                let available_at = queue::now_ms() + delay_ms as i64;
                queue::publish_alongside(
                    tx,
                    &message_id,
                    &topic,
                    &payload,
                    available_at,
                    Some(dispatched),
                )
                .await?;
                if let Some(claims) = &self.claims {
                    lock(claims).unclaimed.insert(topic);
                }
            }
        }
        self.tally(super::Tally::Dispatched {
            activity_type: task.activity_type.clone(),
        });
        Ok(())
    }

    /// Exponential backoff with ±20% jitter, so retries of many activities spread out.
    pub(super) fn backoff(&self, retries: u32) -> u64 {
        let base = self
            .settings
            .retry_base_ms
            .saturating_mul(1u64 << retries.min(20))
            .min(self.settings.retry_max_ms);
        let jitter = rand::random_range(0.8..=1.2);
        (base as f64 * jitter) as u64
    }
}

/// The pending steps whose dependencies are all complete: the ones to dispatch.
pub(super) fn ready(all: &[StepRow]) -> impl Iterator<Item = &StepRow> {
    let done: Vec<&str> = all
        .iter()
        .filter(|s| s.state == StepState::Completed)
        .map(|s| s.activity_id.as_str())
        .collect();
    all.iter().filter(move |s| {
        s.state == StepState::Pending && s.depends_on.iter().all(|d| done.contains(&d.as_str()))
    })
}

/// What completing a step writes: the step, and what its orchestration now knows. Alone,
/// one round trip ([`Completion::write`]); or riding on the one that dispatches a step it
/// made due ([`Engine::publish`]).
pub(super) struct Completion {
    /// The step: its orchestration and activity.
    pub orchestration_id: String,
    pub activity_id: String,
    /// The step's output, as JSON.
    pub output: String,
    /// The plugin that ran it, when the agent said.
    pub plugin_digest: Option<String>,
    /// The orchestration's processing and output data with the output in, as JSON.
    pub processing_data: String,
    pub output_data: String,
}

impl Completion {
    /// Numbered as [`Completion::bind`] binds, shared by both.
    const STATEMENTS: [&str; 2] = [
        "UPDATE orchestration_steps SET state = $1, completed_at = $2, output = $3,
           last_error = NULL, plugin_digest = $6
         WHERE orchestration_id = $4 AND activity_id = $5",
        "UPDATE orchestrations SET processing_data = $7, output_data = $8,
           version = version + 1 WHERE id = $4",
    ];

    /// Binds the parameters of [`Completion::STATEMENTS`], after whatever `query` has.
    fn bind<'q>(&self, query: AnyQuery<'q>) -> AnyQuery<'q> {
        query
            .bind(StepState::Completed)
            .bind(now())
            .bind(self.output.clone())
            .bind(self.orchestration_id.clone())
            .bind(self.activity_id.clone())
            .bind(self.plugin_digest.clone())
            .bind(self.processing_data.clone())
            .bind(self.output_data.clone())
    }

    /// Writes the completion on its own, in one round trip.
    pub(super) async fn write(&self, tx: &mut Conn) -> Result<()> {
        let [step, orchestration] = Self::STATEMENTS;
        let sql = match store::backend_of(tx) {
            Backend::Postgres => format!("WITH step AS ({step}) {orchestration}"),
            Backend::Sqlite => store::sqlite_batch(&Self::STATEMENTS),
        };
        self.bind(sqlx::query(sqlx::AssertSqlSafe(sql)))
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}
