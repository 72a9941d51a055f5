//! How work leaves the engine: each attempt of a step becomes an outbox row, written in
//! the transaction that decided it, and the step is marked `dispatched`.

use cfm_protocol::ActivityTask;
use serde_json::Value;

use super::read::StepRow;
use super::{Current, Engine, Participant, lock};
use crate::error::Result;
use crate::model::{Properties, StepState, now};
use crate::queue;
use crate::store::{Conn, to_json};

impl Engine {
    /// Dispatches every pending activity whose dependencies are all complete.
    pub(super) async fn dispatch_ready(
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
            .filter(|s| s.state == StepState::Completed)
            .map(|s| s.activity_id.as_str())
            .collect();
        for step in all.iter().filter(|s| s.state == StepState::Pending) {
            if step.depends_on.iter().all(|d| done.contains(&d.as_str())) {
                let task = self.first_attempt(id, participant, orchestration_type, step, data);
                self.publish(tx, &task, 0).await?;
            }
        }
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
            ..task.clone()
        };
        self.publish(tx, &next, delay_ms).await
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
        }
    }

    /// Writes the task's message into the outbox and marks its step dispatched.
    pub(super) async fn publish(
        &self,
        tx: &mut Conn,
        task: &ActivityTask,
        delay_ms: u64,
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
        let dispatched = queue::Alongside {
            sql: "UPDATE orchestration_steps SET state = $7, attempt = $8, started_at = COALESCE(started_at, $9)
                  WHERE orchestration_id = $10 AND activity_id = $11",
            bind: Box::new(move |query| {
                query
                    .bind(StepState::Dispatched)
                    .bind(attempt)
                    .bind(now())
                    .bind(orchestration_id)
                    .bind(activity_id)
            }),
        };
        match (&self.express, &self.claims) {
            (Some(express), Some(claims)) if delay_ms == 0 && lock(claims).open => {
                let until = express.claimed_until_ms();
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
            _ => {
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
