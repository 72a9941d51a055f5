//! What plugins did through their capabilities for each participant: every refusal and
//! every write the agent hosts audited, reported with each attempt's outcome
//! ([`ActivityReport::capability_calls`]) and kept here for the API and the dashboard.
//!
//! The calls are written in the transaction that applies their report, whether or not the
//! outcome still counts: a stale run's writes happened all the same. A report delivered
//! twice is one run, and `(run_id, seq)` keeps its calls once. Rows older than
//! [`RETENTION`] are pruned; each agent host's `audit.jsonl` keeps the complete record.

use cfm_protocol::{ActivityReport, CapabilityCall, printable};
use serde::Serialize;
use sqlx::{AssertSqlSafe, Row};

use crate::error::Result;
use crate::model::now;
use crate::store::{self, Conn, Db, Page, Paged};

/// How long calls are kept.
pub const RETENTION: chrono::Duration = chrono::Duration::days(30);
/// Calls kept of one report. The agent host reports at most 201 (`MAX_REPORTED_CALLS`
/// and a last line saying the rest were not); this bounds what any report can write.
const MAX_PER_REPORT: usize = 256;
/// Columns written per call.
const COLUMNS: usize = 16;
/// Longest text kept of any field a report names (the agent host cuts targets to 256
/// bytes). Each is made [`printable`] here too: a plugin chooses its targets, a NUL in one
/// would fail the transaction applying the report on PostgreSQL, again on every
/// redelivery, and this holds whatever agent sent it.
const MAX_TEXT: usize = 1024;

/// One capability call of a participant's plugins, as the API serves it.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CapabilityCallRecord {
    /// When the agent host decided (RFC 3339).
    pub at: String,
    /// The plugin that made the call.
    pub plugin: String,
    /// `secrets`, `cluster`, `dns`, `http` or `tokens`.
    pub capability: String,
    /// The operation called (`put`, `apply`, `upsert`, `request`, ...).
    pub operation: String,
    /// What the call named (a path, an object, a record, a request), as the plugin passed
    /// it, cut to 256 bytes.
    pub target: String,
    /// `allowed` or `denied` (outside the plugin's grants, or malformed).
    pub decision: String,
    /// What an allowed call did: `created`, `updated`, `unchanged`, `deleted`, `absent`,
    /// `sent` (an outbound request) or `issued` (a token handed to the plugin).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effect: Option<String>,
    /// A verify's dry run: nothing was changed.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// The orchestration the call was made in.
    pub orchestration_id: String,
    /// The activity within it.
    pub activity_id: String,
    /// The activity's type.
    pub activity_type: String,
    /// Which attempt of the activity made it.
    pub attempt: i64,
}

/// Which calls a listing holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Every call.
    All,
    /// Only `allowed` or only `denied` calls.
    Decision(&'static str),
}

/// Keeps the calls of `report` in the caller's transaction; a report seen before adds
/// nothing.
pub async fn record(tx: &mut Conn, report: &ActivityReport) -> Result<()> {
    let calls = &report.capability_calls[..report.capability_calls.len().min(MAX_PER_REPORT)];
    if calls.is_empty() {
        return Ok(());
    }
    let run = report
        .run
        .clone()
        .unwrap_or_else(|| format!("{}#{}", report.message_id, report.delivery));
    let rows: Vec<String> = (0..calls.len())
        .map(|row| {
            let first = row * COLUMNS + 1;
            let marks: Vec<String> = (first..first + COLUMNS).map(|n| format!("${n}")).collect();
            format!("({})", marks.join(", "))
        })
        .collect();
    let sql = format!(
        "INSERT INTO capability_calls (run_id, seq, participant_context_id, orchestration_id,
           activity_id, activity_type, attempt, plugin, capability, operation, target, decision,
           effect, dry_run, at, recorded_at)
         VALUES {} ON CONFLICT (run_id, seq) DO NOTHING",
        rows.join(", ")
    );
    let task = &report.task;
    let recorded_at = now();
    // Each count of calls is a statement of its own: not worth a place in the
    // connection's statement cache.
    let mut insert = sqlx::query(AssertSqlSafe(sql)).persistent(false);
    for (seq, call) in calls.iter().enumerate() {
        let CapabilityCall {
            at,
            plugin,
            capability,
            operation,
            target,
            decision,
            dry_run,
        } = call;
        insert = insert
            .bind(run.clone())
            .bind(seq as i64)
            .bind(task.participant_context_id.clone())
            .bind(task.orchestration_id.clone())
            .bind(task.activity_id.clone())
            .bind(task.activity_type.clone())
            .bind(task.attempt as i64)
            .bind(printable(plugin, MAX_TEXT))
            .bind(printable(capability, MAX_TEXT))
            .bind(printable(operation, MAX_TEXT))
            .bind(printable(target, MAX_TEXT))
            .bind(decision.as_str())
            .bind(decision.effect())
            .bind(*dry_run as i64)
            .bind(printable(at, MAX_TEXT))
            .bind(recorded_at.clone());
    }
    insert.execute(&mut *tx).await?;
    Ok(())
}

/// A page of a participant's calls, newest first.
pub async fn list(
    conn: &mut Conn,
    participant_context_id: &str,
    filter: Filter,
    page: Page,
) -> Result<Paged<CapabilityCallRecord>> {
    // '' matches every decision: one statement for both listings.
    let decision = match filter {
        Filter::All => "",
        Filter::Decision(decision) => decision,
    };
    const MATCHING: &str = "FROM capability_calls
        WHERE participant_context_id = $1 AND ($2 = '' OR decision = $2)";
    let total: i64 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT COUNT(*) {MATCHING}")))
        .bind(participant_context_id.to_string())
        .bind(decision)
        .fetch_one(&mut *conn)
        .await?;
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT at, plugin, capability, operation, target, decision, effect, dry_run,
           orchestration_id, activity_id, activity_type, attempt {MATCHING}
         ORDER BY at DESC, run_id DESC, seq DESC LIMIT $3 OFFSET $4"
    )))
    .bind(participant_context_id.to_string())
    .bind(decision)
    .bind(page.limit)
    .bind(page.offset)
    .fetch_all(&mut *conn)
    .await?;
    let items = rows
        .iter()
        .map(|row| CapabilityCallRecord {
            at: row.get("at"),
            plugin: row.get("plugin"),
            capability: row.get("capability"),
            operation: row.get("operation"),
            target: row.get("target"),
            decision: row.get("decision"),
            effect: row.get("effect"),
            dry_run: row.get::<i64, _>("dry_run") != 0,
            orchestration_id: row.get("orchestration_id"),
            activity_id: row.get("activity_id"),
            activity_type: row.get("activity_type"),
            attempt: row.get("attempt"),
        })
        .collect();
    Ok(Paged {
        items,
        total: store::Total::Exact(total),
        page,
    })
}

/// Deletes calls recorded longer than [`RETENTION`] ago, by the managers' clock (an agent's
/// may be off).
pub async fn prune(db: &Db) -> Result<u64> {
    let cutoff =
        (chrono::Utc::now() - RETENTION).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let deleted = sqlx::query("DELETE FROM capability_calls WHERE recorded_at < $1")
        .bind(cutoff)
        .execute(db.writer())
        .await?;
    Ok(deleted.rows_affected())
}
