//! Audit records of capability calls: every denial (a malformed call, such as a path
//! that tries traversal, is recorded as one) and every write, with who asked,
//! for which participant, on what target, and what happened. Written as JSON lines
//! (one file, append-only) and to the `cfm::audit` log target.
//!
//! A record follows the write it describes (its effect is known only then), so a host
//! killed between the two loses that one record; the redelivered activity finds the
//! object in place and records it `unchanged`.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::Serialize;

pub use cfm_protocol::{Decision, Effect};

/// Where audit records go: always the `cfm::audit` log target, and a JSON-lines file
///  when one is opened ([`Audit::to_file`]); the default writes to the log only.
#[derive(Clone, Default)]
pub struct Audit {
    sink: Option<Arc<Mutex<File>>>,
}

/// One capability call worth recording.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent<'a> {
    /// The plugin that made the call.
    pub plugin: &'a str,
    /// The orchestration the invocation belongs to.
    pub orchestration_id: &'a str,
    /// The activity within that orchestration.
    pub activity_id: &'a str,
    /// The activity type the plugin was run for.
    pub activity_type: &'a str,
    /// The participant context the grants were scoped to.
    pub participant_context_id: &'a str,
    /// The invocation's idempotency key, shared by its redeliveries.
    pub idempotency_key: &'a str,
    /// The capability called: `secrets`, `cluster`, `dns` or `http`.
    pub capability: &'static str,
    /// The operation called (`put`, `apply`, `upsert`, `request`, ...).
    pub operation: &'static str,
    /// What the call named (a path, an object, a record, a request), bounded in length.
    pub target: &'a str,
    /// Whether it was allowed, and what an allowed write did.
    #[serde(flatten)]
    pub decision: Decision,
    /// A verify's dry run: the effect is what the write would have done; nothing changed.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

impl Audit {
    /// Appends records to `path` (created 0600 if missing).
    pub fn to_file(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        Ok(Self {
            sink: Some(Arc::new(Mutex::new(file))),
        })
    }

    /// Records `event` in the log and, if one is open, the file. A record that cannot be
    /// written is logged as an error, not returned: the call it describes has happened.
    pub fn record(&self, event: AuditEvent<'_>) {
        match event.decision {
            Decision::Denied => tracing::warn!(
                target: "cfm::audit",
                plugin = event.plugin,
                participant = event.participant_context_id,
                capability = event.capability,
                operation = event.operation,
                target_name = event.target,
                "capability call denied"
            ),
            Decision::Allowed(effect) => tracing::debug!(
                target: "cfm::audit",
                plugin = event.plugin,
                participant = event.participant_context_id,
                capability = event.capability,
                operation = event.operation,
                target_name = event.target,
                ?effect,
                "capability call"
            ),
        }
        let Some(sink) = &self.sink else { return };
        #[derive(Serialize)]
        struct Line<'a> {
            time: String,
            #[serde(flatten)]
            event: &'a AuditEvent<'a>,
        }
        let line = Line {
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            event: &event,
        };
        let Ok(mut json) = serde_json::to_vec(&line) else {
            return;
        };
        json.push(b'\n');
        // One write per record keeps lines whole; a poisoned lock still holds a usable file.
        let mut file = sink.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = file.write_all(&json) {
            tracing::error!(target: "cfm::audit", "cannot write the audit log: {e}");
        }
    }
}
