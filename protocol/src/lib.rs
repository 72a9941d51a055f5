//! The messages the provision manager and agent hosts exchange.
//!
//! Agent hosts hold no database credentials: everything an activity needs travels in an
//! [`ActivityTask`], and everything the engine learns comes back as an [`ActivityOutcome`].
//! Both are plain serde types so that any queue (the embedded one, JetStream) can carry them.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Processing-data keys every activity input carries (upstream CFM's names).
pub mod keys {
    pub const PARTICIPANT_ID: &str = "cfm.participant.id";
    pub const PARTICIPANT_CONTEXT_ID: &str = "cfm.participant.contextId";
    pub const VPA_DATA: &str = "cfm.vpa.data";
    pub const VPA_CREDENTIALS: &str = "cfm.vpa.credentials";
    /// What every orchestration's processing data starts with.
    pub const BASE: [&str; 4] = [
        PARTICIPANT_ID,
        PARTICIPANT_CONTEXT_ID,
        VPA_DATA,
        VPA_CREDENTIALS,
    ];
    /// Namespaces of keys the server writes and activities only read: an activity
    /// output naming one is refused, so no plugin can re-address later activities.
    pub const SERVER_OWNED_PREFIXES: [&str; 2] = ["cfm.participant.", "cfm.vpa."];

    /// Whether `key` belongs to the server (see [`SERVER_OWNED_PREFIXES`]).
    pub fn is_server_owned(key: &str) -> bool {
        SERVER_OWNED_PREFIXES
            .iter()
            .any(|prefix| key.starts_with(prefix))
    }
}

/// Orchestration types with a meaning of their own to the tenant manager.
pub mod orchestration_types {
    pub const VPA_DEPLOY: &str = "cfm.orchestration.vpa.deploy";
    pub const VPA_DISPOSE: &str = "cfm.orchestration.vpa.dispose";
}

/// One activity to run: what the agent host hands to a plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivityTask {
    pub orchestration_id: String,
    pub activity_id: String,
    pub activity_type: String,
    /// The orchestration type (deploy, dispose, ...).
    pub discriminator: String,
    /// 1 on the first run; grows with every retry, reschedule or redelivery.
    pub attempt: u32,
    pub participant_id: String,
    pub participant_context_id: String,
    /// Base data merged with the outputs of every completed activity.
    pub processing_data: Map<String, Value>,
    /// State handed back by this activity's previous reschedule.
    pub state: Option<Value>,
    /// Wall-clock budget the engine allows this attempt, in milliseconds.
    pub timeout_ms: u64,
}

impl ActivityTask {
    /// Stable across redeliveries, so plugins can make their side effects happen once.
    pub fn idempotency_key(&self) -> String {
        format!("{}/{}", self.orchestration_id, self.activity_id)
    }
}

/// How an activity attempt ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum ActivityOutcome {
    /// Done; `output` is merged into the processing data.
    Complete { output: Map<String, Value> },
    /// Run again after `delay_ms`, handing `state` back.
    #[serde(rename_all = "camelCase")]
    Reschedule { delay_ms: u64, state: Value },
    /// Transient failure: retry with backoff while attempts remain.
    Retry { reason: String },
    /// Permanent failure: the orchestration errors.
    Fatal { reason: String },
}

/// An outcome on its way from an agent host to the managers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivityReport {
    /// The id of the message that carried the task: which attempt this reports.
    pub message_id: String,
    pub task: ActivityTask,
    pub outcome: ActivityOutcome,
}

/// Runs activities. The agent host implements it; the engine's queue workers call it.
#[async_trait::async_trait]
pub trait ActivityExecutor: Send + Sync {
    /// Runs one attempt. Infrastructure trouble is reported as `Retry`, a plugin
    /// that breaks its limits or contract as `Fatal`: this never fails otherwise.
    async fn execute(&self, task: ActivityTask) -> ActivityOutcome;

    /// The activity types this executor can run.
    fn activity_types(&self) -> Vec<String>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_wire_shape_is_tagged() {
        let outcome = ActivityOutcome::Reschedule {
            delay_ms: 5,
            state: Value::from("x"),
        };
        let json = serde_json::to_value(&outcome).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"kind":"reschedule","delayMs":5,"state":"x"})
        );
        let back: ActivityOutcome = serde_json::from_value(json).unwrap();
        assert_eq!(back, outcome);
    }
}
