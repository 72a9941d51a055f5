//! The messages the provision manager and agent hosts exchange.
//!
//! Agent hosts hold no database credentials: everything an activity needs travels in an
//! [`ActivityTask`], and everything the engine learns comes back as an [`ActivityOutcome`].
//! Both are plain serde types so that any queue (the embedded one, JetStream) can carry them.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Processing-data keys every activity input carries (upstream CFM's names).
pub mod keys {
    /// The participant's DID.
    pub const PARTICIPANT_ID: &str = "cfm.participant.id";
    /// The participant profile's id: one stable id through migrations and upgrades.
    pub const PARTICIPANT_CONTEXT_ID: &str = "cfm.participant.contextId";
    /// One object per VPA of the profile: its id, type, properties and the cell it runs in.
    pub const VPA_DATA: &str = "cfm.vpa.data";
    /// The credential specs of the participant's dataspaces that apply to its roles.
    pub const VPA_CREDENTIALS: &str = "cfm.vpa.credentials";
    /// A migration's cells and phase: `{"id", "phase": "target"|"source"|"rollback",
    /// "source": {cellId, externalCellId, cellProperties}, "target": {...}}`.
    pub const MIGRATION: &str = "cfm.migration";
    /// An upgrade's versions: `{"templateId", "fromVersion", "toVersion", "rolloutId"}`
    /// (`rolloutId` absent when no rollout started it).
    pub const UPGRADE: &str = "cfm.upgrade";
    /// In a verify's step outputs, the drift it found: a list of
    /// `{"capability", "operation", "target", "change"}`, written by the agent host.
    pub const DRIFT: &str = "cfm.drift";
    /// In a verify's step output, why the plugin could not check that activity.
    pub const UNVERIFIED: &str = "cfm.unverified";
    /// Set (`true`) by the agent host in a verify's processing data, and only there: the
    /// plugin's writes are dry runs. A plugin asked to verify without it runs on a host
    /// that cannot dry-run, and must refuse rather than write.
    pub const DRY_RUN: &str = "cfm.dryRun";
    /// A reconcile's request, in its verify's processing data: `{"repair": bool}`.
    pub const RECONCILE: &str = "cfm.reconcile";
    /// What every orchestration's processing data starts with.
    pub const BASE: [&str; 4] = [
        PARTICIPANT_ID,
        PARTICIPANT_CONTEXT_ID,
        VPA_DATA,
        VPA_CREDENTIALS,
    ];
    /// Namespaces of keys the server writes and activities only read: an activity
    /// output naming one is refused, so no plugin can re-address later activities.
    pub const SERVER_OWNED_PREFIXES: [&str; 6] = [
        "cfm.participant.",
        "cfm.vpa.",
        "cfm.migration",
        "cfm.upgrade",
        "cfm.reconcile",
        "cfm.dryRun",
    ];

    /// Whether `key` belongs to the server (see [`SERVER_OWNED_PREFIXES`]).
    pub fn is_server_owned(key: &str) -> bool {
        SERVER_OWNED_PREFIXES
            .iter()
            .any(|prefix| key.starts_with(prefix))
    }
}

/// Orchestration types with a meaning of their own to the tenant manager.
pub mod orchestration_types {
    /// Deploys a participant's VPAs; on completion they become active.
    pub const VPA_DEPLOY: &str = "cfm.orchestration.vpa.deploy";
    /// Disposes of a participant's VPAs; also compensates a failed deploy.
    pub const VPA_DISPOSE: &str = "cfm.orchestration.vpa.dispose";
    /// Moves a participant to another cell, make-before-break: provisions it in the
    /// target cell (plugins run their deploy with the target's VPA data). Processing data
    /// carries [`keys::MIGRATION`].
    pub const VPA_MIGRATE: &str = "cfm.orchestration.vpa.migrate";
    /// After a migration's switch: disposes of what the participant left in its source
    /// cell (plugins run their dispose with the source's VPA data).
    pub const VPA_MIGRATE_SOURCE: &str = "cfm.orchestration.vpa.migrate.source";
    /// A migration that failed before its switch: disposes of what it made in the target
    /// cell; the participant stays where it was.
    pub const VPA_MIGRATE_ROLLBACK: &str = "cfm.orchestration.vpa.migrate.rollback";
    /// What keypair lifecycle events start: `<KEYPAIR_PREFIX>activated`, `…revoked`,
    /// `…rotated`. They change the participant's services, never its VPAs' state.
    pub const KEYPAIR_PREFIX: &str = "cfm.orchestration.keypair.";
    /// Brings an active participant to another version of its template: the target
    /// version's own upgrade activities, or its deploy activities re-run (plugins deploy
    /// idempotently). Processing data carries [`keys::UPGRADE`] and what provisioned the
    /// participant so far; its VPAs stay active whatever the outcome.
    pub const VPA_UPGRADE: &str = "cfm.orchestration.vpa.upgrade";
    /// Applies a change of a participant's VPA properties (its runtime's replicas or
    /// resources, say): the template's own update activities, or its deploy activities
    /// re-run with the new VPA data. Its VPAs stay active whatever the outcome.
    pub const VPA_UPDATE: &str = "cfm.orchestration.vpa.update";
    /// Checks that an active participant's effects exist and match, changing nothing: the
    /// template's own verify activities, or its deploy activities run by the agent host
    /// as dry runs. Each step's output carries the drift it found ([`keys::DRIFT`]).
    pub const VPA_VERIFY: &str = "cfm.orchestration.vpa.verify";
    /// Repairs what a verify found drifted: the drifted deploy activities, and those
    /// depending on them, re-run (plugins deploy idempotently). Its VPAs stay active
    /// whatever the outcome.
    pub const VPA_RECONCILE: &str = "cfm.orchestration.vpa.reconcile";
}

/// One activity to run: what the agent host hands to a plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivityTask {
    /// The orchestration this activity belongs to.
    pub orchestration_id: String,
    /// The activity's id within its orchestration definition.
    pub activity_id: String,
    /// Chooses the plugin that runs the activity, and the queue topic it travels on.
    pub activity_type: String,
    /// The orchestration type (deploy, dispose, ...).
    pub discriminator: String,
    /// 1 on the first run; grows with every retry, reschedule or redelivery.
    pub attempt: u32,
    /// The participant's DID.
    pub participant_id: String,
    /// The participant profile's id.
    pub participant_context_id: String,
    /// Base data merged with the outputs of every completed activity.
    pub processing_data: Map<String, Value>,
    /// State handed back by this activity's previous reschedule.
    pub state: Option<Value>,
    /// Wall-clock budget the engine allows this attempt, in milliseconds.
    pub timeout_ms: u64,
    /// The W3C `traceparent` of the trace the orchestration belongs to (the REST call
    /// that started it), when traces are exported: the agent host's spans join it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_parent: Option<String>,
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
    Complete {
        /// Keys this activity adds for later activities and the orchestration's output.
        output: Map<String, Value>,
    },
    /// Run again after `delay_ms`, handing `state` back.
    #[serde(rename_all = "camelCase")]
    Reschedule {
        /// How long to wait before the next attempt, in milliseconds; the engine caps it.
        delay_ms: u64,
        /// Handed to the next attempt as [`ActivityTask::state`].
        state: Value,
    },
    /// Transient failure: retry with backoff while attempts remain.
    Retry {
        /// What went wrong: logged and kept as the step's last error.
        reason: String,
    },
    /// Permanent failure: the orchestration errors.
    Fatal {
        /// What went wrong: kept as the step's last error and in the orchestration's error detail.
        reason: String,
    },
}

/// An outcome on its way from an agent host to the managers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivityReport {
    /// The id of the message that carried the task: which attempt this reports.
    pub message_id: String,
    /// The task the attempt ran.
    pub task: ActivityTask,
    /// How the attempt ended.
    pub outcome: ActivityOutcome,
    /// Which delivery of the message ran it (1 for the first). A redelivered task runs
    /// again, and its report must reach the managers even when the first delivery's did:
    /// a run that came late is how the engine learns to undo what it made. Absent (0)
    /// from agents that predate it.
    #[serde(default)]
    pub delivery: u64,
    /// The run this reports, unique to it: publishing one run's report again is dropped as
    /// a duplicate, another run's report never is. The delivery count alone does not tell
    /// runs apart: a queue server restarted before it stored a count delivers again under
    /// the count of the delivery before, and that run's report would be dropped as the
    /// first's twin, so an effect it made after its participant's dispose would never be
    /// undone. Absent from agents that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// The sha256 of the plugin that ran the attempt, when the executor knows it: a
    /// participant records which plugin versions provisioned it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_digest: Option<String>,
    /// The capability calls the agent host audited during the attempt, in the order they
    /// were made: every refusal and every write (reads are not audited), so the managers
    /// keep each participant's calls. Bounded by the host; absent when there were none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capability_calls: Vec<CapabilityCall>,
}

/// One audited capability call of a plugin: who made it, on what, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CapabilityCall {
    /// When the host decided, as an RFC 3339 UTC timestamp with milliseconds.
    pub at: String,
    /// The plugin that made the call.
    pub plugin: String,
    /// The capability called: `secrets`, `cluster`, `dns`, `http` or `tokens`.
    pub capability: String,
    /// The operation called (`put`, `apply`, `upsert`, `request`, ...).
    pub operation: String,
    /// What the call named (a path, an object, a record, a request), bounded in length.
    pub target: String,
    /// Whether it was allowed, and what an allowed write did.
    #[serde(flatten)]
    pub decision: Decision,
    /// A verify's dry run: the effect is what the write would have done; nothing changed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

/// What became of a capability call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", content = "effect", rename_all = "camelCase")]
pub enum Decision {
    /// Allowed, with what it did.
    Allowed(Effect),
    /// Refused: outside the grants, or malformed.
    Denied,
}

/// What an allowed write (or outbound request) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Effect {
    /// Something new was written.
    Created,
    /// Something was changed.
    Updated,
    /// It was already so: nothing was written.
    Unchanged,
    /// Something was removed.
    Deleted,
    /// A deletion found nothing to remove.
    Absent,
    /// An outbound request went out (whatever the server answered).
    Sent,
    /// A token was handed to the plugin (never recorded itself).
    Issued,
}

impl Decision {
    /// `allowed` or `denied`, as stored and served.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed(_) => "allowed",
            Decision::Denied => "denied",
        }
    }

    /// An allowed call's effect, as stored and served (`created`, `sent`, ...).
    pub fn effect(self) -> Option<&'static str> {
        match self {
            Decision::Allowed(effect) => Some(effect.as_str()),
            Decision::Denied => None,
        }
    }
}

impl Effect {
    /// The effect's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Created => "created",
            Effect::Updated => "updated",
            Effect::Unchanged => "unchanged",
            Effect::Deleted => "deleted",
            Effect::Absent => "absent",
            Effect::Sent => "sent",
            Effect::Issued => "issued",
        }
    }
}

/// `text` fit to be stored, logged and shown, whoever chose it: control characters (NUL
/// included, which PostgreSQL cannot store) and those that reorder the text around them
/// (bidirectional overrides and isolates) replaced with U+FFFD, so it can neither forge
/// a log line, drive a terminal nor read as another; then cut to at most `max` bytes on
/// a character boundary, with `…` saying so.
pub fn printable(text: &str, max: usize) -> String {
    let shown_as_is = |c: char| {
        !c.is_control() && !matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
    };
    let cleaned: String = text
        .chars()
        .map(|c| if shown_as_is(c) { c } else { '\u{FFFD}' })
        .collect();
    let kept = &cleaned[..cleaned.floor_char_boundary(max)];
    if kept.len() < cleaned.len() {
        format!("{kept}…")
    } else {
        cleaned
    }
}

/// An attempt's outcome with the plugin that produced it.
#[derive(Debug, Clone, PartialEq)]
pub struct Executed {
    /// How the attempt ended.
    pub outcome: ActivityOutcome,
    /// The sha256 of the plugin that ran it; None when no plugin ran (no plugin serves
    /// the type, the host is shutting down) or the executor does not know.
    pub plugin_digest: Option<String>,
    /// What the attempt's plugin did through its capabilities ([`ActivityReport::capability_calls`]).
    pub capability_calls: Vec<CapabilityCall>,
}

/// Runs activities. The agent host implements it; the engine's queue workers call it.
#[async_trait::async_trait]
pub trait ActivityExecutor: Send + Sync {
    /// Runs one attempt. Infrastructure trouble is reported as `Retry`, a plugin
    /// that breaks its limits or contract as `Fatal`: this never fails otherwise.
    async fn execute(&self, task: ActivityTask) -> ActivityOutcome;

    /// [`ActivityExecutor::execute`], saying which plugin ran the attempt. The digest
    /// must be that of the plugin invoked, not the one loaded now: a reload may swap
    /// plugins while an attempt runs.
    async fn execute_traced(&self, task: ActivityTask) -> Executed {
        Executed {
            outcome: self.execute(task).await,
            plugin_digest: None,
            capability_calls: Vec::new(),
        }
    }

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

    #[test]
    fn capability_calls_travel_flat_and_come_back() {
        let call = |decision, dry_run| CapabilityCall {
            at: "2026-12-05T12:00:00.000Z".into(),
            plugin: "vault".into(),
            capability: "secrets".into(),
            operation: "put".into(),
            target: "participants/p/api-key".into(),
            decision,
            dry_run,
        };
        let allowed = call(Decision::Allowed(Effect::Created), false);
        let json = serde_json::to_value(&allowed).unwrap();
        assert_eq!(json["decision"], "allowed");
        assert_eq!(json["effect"], "created");
        assert!(json.get("dryRun").is_none(), "{json}");
        let denied = call(Decision::Denied, true);
        let json = serde_json::to_value(&denied).unwrap();
        assert_eq!(json["decision"], "denied");
        assert!(json.get("effect").is_none(), "{json}");
        assert_eq!(json["dryRun"], true);
        for call in [allowed, denied] {
            let text = serde_json::to_string(&call).unwrap();
            let back: CapabilityCall = serde_json::from_str(&text).unwrap();
            assert_eq!(back, call);
        }
    }

    #[test]
    fn printable_text_replaces_what_could_mislead_and_says_where_it_is_cut() {
        assert_eq!(printable("a/b", 256), "a/b");
        assert_eq!(
            printable("x\u{0}y\u{1b}[2J\n", 256),
            "x\u{FFFD}y\u{FFFD}[2J\u{FFFD}"
        );
        assert_eq!(printable("a\u{202E}b\u{2066}", 256), "a\u{FFFD}b\u{FFFD}");
        // Cut after cleaning, on a character boundary: never more than the bound.
        let cut = printable(&"\u{7}".repeat(100), 10);
        assert_eq!(cut, format!("{}…", "\u{FFFD}".repeat(3)));
        assert_eq!(printable("aé", 2), "a…");
    }

    #[test]
    fn reports_without_calls_keep_their_old_shape() {
        let json = serde_json::json!({"messageId": "m", "outcome": {"kind": "retry", "reason": "r"},
            "task": {"orchestrationId": "o", "activityId": "a", "activityType": "t",
                "discriminator": "d", "attempt": 1, "participantId": "did:web:x",
                "participantContextId": "p", "processingData": {}, "state": null, "timeoutMs": 1}});
        let report: ActivityReport = serde_json::from_value(json).unwrap();
        assert!(report.capability_calls.is_empty());
        let back = serde_json::to_value(&report).unwrap();
        assert!(back.get("capabilityCalls").is_none(), "{back}");
    }
}
