//! Lifecycle events: orchestration and fleet-operation state changes, for dashboards and
//! tooling that follow them (`GET /api/v1alpha1/events`, server-sent events).
//!
//! An event is a row written in the transaction that makes the change, so it exists
//! exactly when the change does, and every replica serves every event. Rows are read in
//! `seq` order. On PostgreSQL two transactions may commit out of their sequence order: a
//! reader that finds a gap waits for it to fill, and passes over it only once every
//! transaction that was running when it found the gap has ended (the missing one rolled
//! back), so a long transaction's event is never lost behind later ones. SQLite's writers
//! take turns, so there a gap is only ever a rolled-back write.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::Row;

use crate::error::Result;
use crate::model::now;
use crate::store::{Conn, Db, from_json, to_json};

/// How long a reader waits for a gap in the sequence to fill at least, whatever the
/// database says of the transactions then running.
pub const GAP_WAIT: Duration = Duration::from_millis(200);
/// How long events are kept.
pub const RETENTION: chrono::Duration = chrono::Duration::days(7);
/// Events read from the database at once.
const BATCH: i64 = 500;

/// What an event is about.
pub mod kinds {
    /// An orchestration started, completed or errored.
    pub const ORCHESTRATION: &str = "orchestration";
    /// A rollout changed state.
    pub const ROLLOUT: &str = "rollout";
    /// One participant of a rollout changed state.
    pub const ROLLOUT_PARTICIPANT: &str = "rollout.participant";
    /// A tenant decommission changed state.
    pub const DECOMMISSION: &str = "decommission";
    /// A participant's verify or reconcile ended: its drift state and what was found.
    pub const DRIFT: &str = "drift";
}

/// One lifecycle event as stored and served.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Its place in the order of all events; the SSE `id`.
    pub seq: i64,
    /// When it happened (RFC 3339).
    pub at: String,
    /// What it is about: one of [`kinds`]; the SSE `event`.
    pub kind: String,
    /// The tenant it belongs to; None for operator-wide events (a rollout's).
    pub tenant_id: Option<String>,
    /// The id of what changed.
    pub subject: String,
    /// The change: the new state and what goes with it.
    pub data: Value,
}

/// Records an event inside the caller's transaction.
pub async fn record(
    conn: &mut Conn,
    kind: &str,
    tenant_id: Option<&str>,
    subject: &str,
    data: Value,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO events (at, kind, tenant_id, subject, data) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(now())
    .bind(kind)
    .bind(tenant_id)
    .bind(subject)
    .bind(to_json(&data)?)
    .execute(conn)
    .await?;
    Ok(())
}

/// The newest event's `seq` (0 when there is none): where a reader starts that wants
/// only what happens from now on.
pub async fn newest(db: &Db) -> Result<i64> {
    let newest: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM events")
        .fetch_one(db.read())
        .await?;
    Ok(newest.unwrap_or(0))
}

/// Deletes events older than [`RETENTION`].
pub async fn prune(db: &Db) -> Result<u64> {
    let cutoff =
        (chrono::Utc::now() - RETENTION).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let deleted = sqlx::query("DELETE FROM events WHERE at < $1")
        .bind(cutoff)
        .execute(db.writer())
        .await?;
    Ok(deleted.rows_affected())
}

/// Reads events in order from after a given `seq`, for one subscriber.
pub struct Reader {
    db: Db,
    /// The last event handed out (or passed over).
    last: i64,
    /// The gap after `last`, while the event there is missing and later ones exist.
    gap: Option<Gap>,
    ready: VecDeque<Event>,
}

impl Reader {
    /// A reader that hands out the events after `after`.
    pub fn after(db: Db, after: i64) -> Self {
        Self {
            db,
            last: after,
            gap: None,
            ready: VecDeque::new(),
        }
    }

    /// The next events in order, possibly none yet: call again after a pause.
    pub async fn poll(&mut self) -> Result<Vec<Event>> {
        if self.ready.is_empty() {
            self.fetch().await?;
        }
        Ok(self.ready.drain(..).collect())
    }

    async fn fetch(&mut self) -> Result<()> {
        let rows = sqlx::query(
            "SELECT seq, at, kind, tenant_id, subject, data FROM events WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(self.last)
        .bind(BATCH)
        .fetch_all(self.db.read())
        .await?;
        for row in &rows {
            let seq: i64 = row.get("seq");
            if seq != self.last + 1 {
                // A gap: an earlier transaction not committed yet, or rolled back.
                if self.gap.is_none() {
                    self.gap = Some(Gap {
                        since: Instant::now(),
                        running_before: next_transaction(&self.db).await?,
                    });
                }
                if !self.gap_closed().await? {
                    return Ok(());
                }
            }
            self.gap = None;
            self.last = seq;
            self.ready.push_back(Event {
                seq,
                at: row.get("at"),
                kind: row.get("kind"),
                tenant_id: row.get("tenant_id"),
                subject: row.get("subject"),
                data: from_json(row.get("data"), "event data")?,
            });
        }
        Ok(())
    }

    /// Whether the gap can be passed over: waited for long enough, and (on PostgreSQL)
    /// every transaction that was running when it was found has ended.
    async fn gap_closed(&self) -> Result<bool> {
        let Some(gap) = &self.gap else {
            return Ok(true);
        };
        if gap.since.elapsed() < GAP_WAIT {
            return Ok(false);
        }
        let Some(running_before) = gap.running_before else {
            return Ok(true);
        };
        let oldest: String =
            sqlx::query_scalar("SELECT CAST(pg_snapshot_xmin(pg_current_snapshot()) AS TEXT)")
                .fetch_one(self.db.read())
                .await?;
        Ok(oldest
            .parse::<u64>()
            .is_ok_and(|oldest| oldest >= running_before))
    }
}

/// A gap in the sequence a reader waits on.
struct Gap {
    since: Instant,
    /// On PostgreSQL, the id the next transaction would get when the gap was found: once
    /// the oldest running transaction is at least that, the one that held the gap ended.
    running_before: Option<u64>,
}

/// On PostgreSQL, the id the next transaction will get; None on SQLite.
async fn next_transaction(db: &Db) -> Result<Option<u64>> {
    if db.backend() != crate::store::Backend::Postgres {
        return Ok(None);
    }
    let next: String =
        sqlx::query_scalar("SELECT CAST(pg_snapshot_xmax(pg_current_snapshot()) AS TEXT)")
            .fetch_one(db.read())
            .await?;
    Ok(next.parse().ok())
}
