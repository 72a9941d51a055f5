//! Draining a cell: moving every participant out of it, a few at a time.
//!
//! A drain is a row, not a task in a process: each tick of every manager replica's fleet
//! loop ([`super::operations::run`]) locks each running drain's row in turn and tops its
//! migrations up to its parallelism. So a drain survives the loss of any replica, two replicas never start the
//! same participant's migration (the drain's row lock, and the unique index on unfinished
//! migrations), and pausing, resuming or cancelling is a change of the row's state.

use sqlx::{AssertSqlSafe, Row};

use crate::error::{ManagerError, Result};
use crate::lifecycle::{DrainState, MigrationState};
use crate::model::{Drain, new_id, now};
use crate::provision::Engine;
use crate::store::{self, Conn, Table};
use crate::tenant::{cells, migrations};

/// Migrations a drain runs at once, unless asked otherwise.
pub const DEFAULT_PARALLELISM: i64 = 4;
/// The most a drain may run at once.
pub const MAX_PARALLELISM: i64 = 256;
/// Failed migrations of one participant after which a drain stops trying it.
pub const ATTEMPTS_PER_PARTICIPANT: i64 = 3;

/// Starts draining a cell: it takes no new participants, and its participants are moved
/// to other cells, `parallelism` at a time. Asking again while a drain of the cell is
/// under way answers that drain.
pub async fn start(engine: &Engine, cell_id: &str, parallelism: Option<i64>) -> Result<Drain> {
    let parallelism = parallelism.unwrap_or(DEFAULT_PARALLELISM);
    if !(1..=MAX_PARALLELISM).contains(&parallelism) {
        return Err(ManagerError::bad_request(format!(
            "parallelism must be 1 to {MAX_PARALLELISM}"
        )));
    }
    let mut tx = store::write(engine.db()).await?;
    if !store::lock_row(&mut tx, Table::Cells, cell_id).await? {
        return Err(ManagerError::not_found(format!(
            "cell '{cell_id}' not found"
        )));
    }
    if let Some(drain) = unfinished_of(&mut tx, cell_id).await? {
        let drain = progress(&mut tx, drain).await?;
        tx.commit().await?;
        return Ok(drain);
    }
    let cell = cells::get(&mut tx, cell_id).await?;
    let timestamp = now();
    let drain = Drain {
        id: new_id(),
        version: 0,
        cell_id: cell_id.to_string(),
        state: DrainState::Running,
        parallelism,
        total: cell.usage.participants,
        moved: 0,
        in_flight: 0,
        failed: 0,
        remaining: cell.usage.participants,
        detail: None,
        created_at: timestamp.clone(),
        updated_at: timestamp,
    };
    sqlx::query(
        "INSERT INTO drains (id, version, cell_id, state, parallelism, total, created_at, updated_at)
         VALUES ($1, 0, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&drain.id)
    .bind(&drain.cell_id)
    .bind(drain.state)
    .bind(drain.parallelism)
    .bind(drain.total)
    .bind(&drain.created_at)
    .bind(&drain.updated_at)
    .execute(&mut *tx)
    .await?;
    cells::set_state(&mut tx, cell_id, "draining").await?;
    tx.commit().await?;
    tracing::info!(cell = %cell_id, drain = %drain.id, parallelism, participants = drain.total, "drain started");
    Ok(drain)
}

/// The cell's latest drain with its progress; "not found" when it was never drained.
pub async fn latest(engine: &Engine, cell_id: &str) -> Result<Drain> {
    let mut conn = engine.db().acquire().await?;
    cells::get(&mut conn, cell_id).await?;
    let row = sqlx::query(AssertSqlSafe(format!(
        "{SELECT} WHERE cell_id = $1 ORDER BY created_at DESC, id DESC LIMIT 1"
    )))
    .bind(cell_id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| ManagerError::not_found(format!("cell '{cell_id}' has not been drained")))?;
    let drain = read(&row)?;
    progress(&mut conn, drain).await
}

/// What an operator can do to a drain under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Start no further migrations; those under way finish.
    Pause,
    /// Start migrations again (also after the drain stalled).
    Resume,
    /// Stop for good: no further migrations; the cell stays cordoned.
    Cancel,
}

/// Pauses, resumes or cancels the cell's latest drain. Asking for the state it is in
/// changes nothing; a finished drain cannot be changed.
pub async fn control(engine: &Engine, cell_id: &str, control: Control) -> Result<Drain> {
    let mut tx = store::write(engine.db()).await?;
    let id: Option<String> = sqlx::query_scalar(
        "SELECT id FROM drains WHERE cell_id = $1 ORDER BY created_at DESC, id DESC LIMIT 1",
    )
    .bind(cell_id)
    .fetch_optional(&mut *tx)
    .await?;
    let id = id
        .ok_or_else(|| ManagerError::not_found(format!("cell '{cell_id}' has not been drained")))?;
    store::lock_row(&mut tx, Table::Drains, &id).await?;
    let mut drain = get(&mut tx, &id).await?;
    let next = match (control, drain.state) {
        (Control::Pause, DrainState::Running | DrainState::Paused) => DrainState::Paused,
        (Control::Resume, DrainState::Running | DrainState::Paused | DrainState::Stalled) => {
            DrainState::Running
        }
        (Control::Cancel, DrainState::Running | DrainState::Paused | DrainState::Stalled) => {
            DrainState::Cancelled
        }
        (Control::Cancel, DrainState::Cancelled) => DrainState::Cancelled,
        (_, state) => {
            return Err(ManagerError::conflict(format!(
                "drain '{id}' is {state}; it can no longer be changed"
            )));
        }
    };
    if next != drain.state {
        set_state(&mut tx, &id, next, None).await?;
        match next {
            DrainState::Cancelled => cells::set_state(&mut tx, cell_id, "cordoned").await?,
            // A stalled drain handed its cell back; resuming takes it again.
            DrainState::Running => cells::set_state(&mut tx, cell_id, "draining").await?,
            _ => {}
        }
        drain.state = next;
    }
    let drain = progress(&mut tx, drain).await?;
    tx.commit().await?;
    tracing::info!(cell = %cell_id, drain = %id, state = %drain.state, "drain changed by the operator");
    Ok(drain)
}

/// One pass over the running drains; public so that tests can drive it.
pub async fn tick(engine: &Engine) -> Result<()> {
    let running: Vec<String> = sqlx::query_scalar("SELECT id FROM drains WHERE state = $1")
        .bind(DrainState::Running)
        .fetch_all(engine.db().queries())
        .await?;
    for id in running {
        if let Err(e) = tick_drain(engine, &id).await {
            tracing::warn!(drain = %id, "draining: {e}");
        }
    }
    Ok(())
}

/// Tops one drain up, one migration per transaction: a transaction that started several
/// would hold cells' locks while taking another participant's, against the order an
/// API-started migration takes them (participant, then cells).
async fn tick_drain(engine: &Engine, id: &str) -> Result<()> {
    loop {
        let engine = engine.claiming();
        let mut tx = store::write(engine.db()).await?;
        store::lock_row(&mut tx, Table::Drains, id).await?;
        let drain = get(&mut tx, id).await?;
        if drain.state != DrainState::Running {
            return Ok(());
        }
        let started = top_up(&engine, &mut tx, &drain).await?;
        tx.commit().await?;
        engine.committed();
        if started == 0 {
            return Ok(());
        }
    }
}

/// Starts the drain's next migration while it is under its parallelism, or ends it;
/// returns how many started (0 or 1).
async fn top_up(engine: &Engine, tx: &mut Conn, drain: &Drain) -> Result<usize> {
    let drain = progress(tx, drain.clone()).await?;
    if drain.remaining == 0 && drain.in_flight == 0 {
        set_state(tx, &drain.id, DrainState::Completed, None).await?;
        cells::set_state(tx, &drain.cell_id, "drained").await?;
        tracing::info!(cell = %drain.cell_id, drain = %drain.id, moved = drain.moved, "drain completed");
        return Ok(0);
    }
    let slots = (drain.parallelism - drain.in_flight).max(0);
    if slots == 0 {
        return Ok(0);
    }
    let candidates: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT p.id FROM participant_profiles p WHERE p.cell_id = $1 AND p.disposed = 0
           AND NOT EXISTS (SELECT 1 FROM migrations m WHERE m.profile_id = p.id AND m.state IN ({}))
           AND (SELECT COUNT(*) FROM migrations m WHERE m.profile_id = p.id AND m.drain_id = $2
                AND m.state IN ({})) < $3
         ORDER BY p.id LIMIT $4",
        MigrationState::UNFINISHED_SQL,
        MigrationState::UNMOVED_SQL
    )))
    .bind(&drain.cell_id)
    .bind(&drain.id)
    .bind(ATTEMPTS_PER_PARTICIPANT)
    // Some may not be active yet; look a little further than the free slots.
    .bind(slots * 4)
    .fetch_all(&mut *tx)
    .await?;
    let mut started = 0usize;
    let mut detail = None;
    for profile_id in &candidates {
        if started == 1 {
            break;
        }
        store::lock_row(tx, Table::ParticipantProfiles, profile_id).await?;
        match migrations::start_in(engine, tx, profile_id, None, Some(&drain.id)).await {
            Ok(_) => started += 1,
            Err(e @ ManagerError::NoCellFits { .. }) => {
                // Room may appear (a cell added, a capacity raised): keep running.
                detail = Some(format!("waiting for room: {e}"));
                break;
            }
            // Busy with another operation (an upgrade, say): tried again, and the drain
            // waits for it rather than stalling.
            Err(e @ ManagerError::Busy(_)) => detail = Some(format!("waiting: {e}")),
            // Not active yet (still deploying, disposing, in error): passed over this tick.
            Err(ManagerError::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
    }
    if started == 0 && drain.in_flight == 0 && detail.is_none() {
        let stalled = format!(
            "{} participant(s) remain that cannot be moved: not active, or their migration failed {ATTEMPTS_PER_PARTICIPANT} times",
            drain.remaining
        );
        set_state(tx, &drain.id, DrainState::Stalled, Some(&stalled)).await?;
        tracing::warn!(cell = %drain.cell_id, drain = %drain.id, "{stalled}");
        return Ok(0);
    }
    if detail != drain.detail {
        sqlx::query("UPDATE drains SET detail = $1, updated_at = $2 WHERE id = $3")
            .bind(&detail)
            .bind(now())
            .bind(&drain.id)
            .execute(&mut *tx)
            .await?;
    }
    Ok(started)
}

/// The drain of `cell_id` that is running or paused, if one is.
pub(crate) async fn unfinished_of(conn: &mut Conn, cell_id: &str) -> Result<Option<Drain>> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "{SELECT} WHERE cell_id = $1 AND state IN ($2, $3)"
    )))
    .bind(cell_id)
    .bind(DrainState::Running)
    .bind(DrainState::Paused)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(read).transpose()
}

async fn get(conn: &mut Conn, id: &str) -> Result<Drain> {
    let row = sqlx::query(AssertSqlSafe(format!("{SELECT} WHERE id = $1")))
        .bind(id)
        .fetch_one(&mut *conn)
        .await?;
    read(&row)
}

/// Fills in the counts a drain's progress shows.
async fn progress(conn: &mut Conn, mut drain: Drain) -> Result<Drain> {
    let rows = sqlx::query(
        "SELECT state, COUNT(*) AS n FROM migrations WHERE drain_id = $1 GROUP BY state",
    )
    .bind(&drain.id)
    .fetch_all(&mut *conn)
    .await?;
    (drain.moved, drain.in_flight, drain.failed) = (0, 0, 0);
    for row in rows {
        let n: i64 = row.get("n");
        let state: MigrationState = row
            .get::<String, _>("state")
            .parse()
            .map_err(|e| ManagerError::Corrupt(format!("migration state: {e}")))?;
        use MigrationState::*;
        // A switched migration has moved its participant and is still cleaning up.
        if matches!(state, Switched | Completed | CleanupFailed) {
            drain.moved += n;
        }
        if matches!(state, Provisioning | Switched | RollingBack) {
            drain.in_flight += n;
        }
        if matches!(state, RolledBack | Failed) {
            drain.failed += n;
        }
    }
    drain.remaining = cells::usage_of(conn, &drain.cell_id, None)
        .await?
        .participants;
    Ok(drain)
}

async fn set_state(
    conn: &mut Conn,
    id: &str,
    state: DrainState,
    detail: Option<&str>,
) -> Result<()> {
    store::set_operation_state(conn, Table::Drains, id, state.as_str(), detail).await
}

const SELECT: &str = "SELECT id, version, cell_id, state, parallelism, total, detail, created_at, updated_at FROM drains";

fn read(row: &crate::store::Row) -> Result<Drain> {
    Ok(Drain {
        id: row.get("id"),
        version: row.get("version"),
        cell_id: row.get("cell_id"),
        state: row
            .get::<String, _>("state")
            .parse()
            .map_err(|e| ManagerError::Corrupt(format!("drain state: {e}")))?,
        parallelism: row.get("parallelism"),
        total: row.get("total"),
        moved: 0,
        in_flight: 0,
        failed: 0,
        remaining: 0,
        detail: row.get("detail"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    })
}
