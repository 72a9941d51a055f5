//! Undoing a deploy step that ran after its participant's dispose began.
//!
//! A queue server that lost an acknowledgement hands a task out again, minutes later if
//! it restarts, and an activity still running when its deploy failed finishes after the
//! compensation started: what such a late run made must not outlive the dispose.

use std::collections::BTreeMap;

use cfm_protocol::{ActivityTask, keys, orchestration_types};
use sqlx::Row;

use super::output::holds_nul;
use super::read::step_state;
use super::{CLEANUP_SUFFIX, Current, Engine, Start};
use crate::error::Result;
use crate::model::{ActivitySpec, Properties, StepState};
use crate::provision::definitions;
use crate::store::Conn;

impl Engine {
    /// A deploy step that ran after its participant's dispose began may have made again
    /// what the dispose removed: a queue server that lost an acknowledgement hands the task
    /// out again, minutes later if it restarts, and an activity still running when its
    /// deploy failed finishes after the compensation started. Its outcome arrives here as
    /// stale. When a dispose of the same correlation exists, that step's dispose activity
    /// runs again, alone, in an orchestration of its own correlated with
    /// `<correlation>/cleanup` (so the profile's own lifecycle ignores it). It starts after
    /// the late run ended, so it removes what that run made; a later stale run starts
    /// another. True when one was started.
    pub(super) async fn undo_late_run(
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
            "SELECT o.definition_id, o.definition_version, s.state FROM orchestrations o
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
        let step_state: Option<StepState> = step_state(&dispose)?;
        if step_state == Some(StepState::Pending) {
            return Ok(false);
        }
        let template: String = dispose.get("definition_id");
        let version: i64 = dispose.get("definition_version");
        let definition = match definitions::provisioned_with(tx, &template, version).await? {
            Some(definition) => Some(definition),
            // As a compensation does: the newest template that disposes.
            None => definitions::select(tx, orchestration_types::VPA_DISPOSE, None).await?,
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
}
