//! The embedded queue: a table in the manager's own database that is both the
//! transactional outbox and the work queue.
//!
//! A message is written in the transaction that causes it, leased by a dispatcher
//! (at-least-once: an unacknowledged lease expires and the message is delivered again),
//! and deleted in the transaction that applies its result. One process owns an embedded
//! queue; deployments with several managers use JetStream instead.

use sqlx::{AssertSqlSafe, Row};

use crate::error::Result;
use crate::store::{Backend, Conn, Db};

/// Activity work for agent hosts.
pub const ACTIVITY_TOPIC: &str = "activity";

/// A leased message.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: String,
    pub payload: String,
    /// How many times it has been leased, this time included.
    pub deliveries: i64,
}

/// Adds a message, available from `available_at_ms` (Unix milliseconds). Publishing the
/// same id twice keeps the first: message ids are stable, so a replayed write is harmless.
pub async fn publish(
    conn: &mut Conn,
    id: &str,
    topic: &str,
    payload: &str,
    available_at_ms: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO queue (id, topic, payload, available_at) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
    )
    .bind(id)
    .bind(topic)
    .bind(payload)
    .bind(available_at_ms)
    .execute(conn)
    .await?;
    Ok(())
}

/// Leases up to `max` available messages of `topic` for `lease_ms`, oldest first.
pub async fn lease(db: &Db, topic: &str, max: i64, lease_ms: i64) -> Result<Vec<Delivery>> {
    let now = now_ms();
    // One statement: choosing and leasing cannot interleave with another dispatcher. On
    // PostgreSQL the chosen rows are locked as they are picked and rows another
    // dispatcher holds are skipped; the lease test is repeated in the outer WHERE so a
    // row leased meanwhile is never leased twice.
    let sql = match db.backend() {
        Backend::Sqlite => LEASE_SQL.replace(" FOR UPDATE SKIP LOCKED", ""),
        Backend::Postgres => LEASE_SQL.to_string(),
    };
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(now + lease_ms)
        .bind(topic)
        .bind(now)
        .bind(max)
        .fetch_all(db.writer())
        .await?;
    Ok(rows
        .iter()
        .map(|row| Delivery {
            id: row.get("id"),
            payload: row.get("payload"),
            deliveries: row.get("deliveries"),
        })
        .collect())
}

const LEASE_SQL: &str = "UPDATE queue SET leased_until = $1, deliveries = deliveries + 1
     WHERE id IN (SELECT id FROM queue
                  WHERE topic = $2 AND available_at <= $3 AND (leased_until IS NULL OR leased_until <= $3)
                  ORDER BY available_at, id LIMIT $4 FOR UPDATE SKIP LOCKED)
       AND (leased_until IS NULL OR leased_until <= $3)
     RETURNING id, payload, deliveries";

/// Removes a message whose result has been applied (in that same transaction).
pub async fn ack(conn: &mut Conn, id: &str) -> Result<()> {
    sqlx::query("DELETE FROM queue WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Removes every message whose id starts with `prefix` (an orchestration's pending work).
pub async fn purge_prefix(conn: &mut Conn, prefix: &str) -> Result<()> {
    sqlx::query("DELETE FROM queue WHERE substr(id, 1, length($1)) = $1")
        .bind(prefix)
        .execute(conn)
        .await?;
    Ok(())
}

/// Makes every leased message available again. Only safe at start-up, before any
/// dispatcher runs: leases held by a process that no longer exists would otherwise delay
/// recovery by a whole lease period.
pub async fn release_all(db: &Db) -> Result<u64> {
    let released =
        sqlx::query("UPDATE queue SET leased_until = NULL WHERE leased_until IS NOT NULL")
            .execute(db.writer())
            .await?;
    Ok(released.rows_affected())
}

/// When the next message of `topic` becomes available, if any is waiting.
pub async fn next_available_at(db: &Db, topic: &str) -> Result<Option<i64>> {
    Ok(sqlx::query_scalar(
        "SELECT MIN(CASE WHEN leased_until > available_at THEN leased_until ELSE available_at END)
         FROM queue WHERE topic = $1",
    )
    .bind(topic)
    .fetch_one(db.read())
    .await?)
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
