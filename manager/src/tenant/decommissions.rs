//! Decommissioning a tenant: disposing every participant, a few at a time, then deleting
//! the tenant.
//!
//! Like a drain, a decommission is a row that every manager replica's fleet loop
//! ([`super::operations::run`]) tops up, so it survives any replica's death. While it
//! runs, the tenant takes no new participants. A participant whose dispose fails (its
//! VPAs end in `error`) is not tried again; once every other participant is disposed,
//! the decommission is `failed` with those participants and their errors, the tenant is
//! kept, and asking again (once the cause is fixed) tries their disposes again.

use sqlx::{AssertSqlSafe, Row};

use crate::error::{ManagerError, Result};
use crate::events;
use crate::lifecycle::{DecommissionState, OrchestrationState, VpaState};
use crate::model::{TenantDecommission, Vpa, new_id, now};
use crate::provision::Engine;
use crate::store::{self, Conn, Table, from_json};
use crate::tenant::{profiles, tenants};

/// Disposes that run at once, unless asked otherwise.
pub const DEFAULT_PARALLELISM: i64 = 8;
/// The most disposes a decommission runs at once.
pub const MAX_PARALLELISM: i64 = 256;
/// Failed participants named in a failed decommission's detail, at most.
const NAMED_FAILURES: usize = 5;

/// Starts decommissioning a tenant (`expected_version` as for a delete). Asking while one
/// runs answers it; asking after one failed starts another, which tries the failed
/// participants again.
pub async fn start(
    engine: &Engine,
    tenant_id: &str,
    parallelism: Option<i64>,
    expected_version: Option<i64>,
) -> Result<TenantDecommission> {
    let parallelism = parallelism.unwrap_or(DEFAULT_PARALLELISM);
    if !(1..=MAX_PARALLELISM).contains(&parallelism) {
        return Err(ManagerError::bad_request(format!(
            "parallelism must be 1 to {MAX_PARALLELISM}"
        )));
    }
    let mut tx = store::write(engine.db()).await?;
    // Waits for deployments under way (they share the tenant's row), so none slips in
    // after the decommission began.
    tenants::lock_checked(&mut tx, tenant_id, expected_version).await?;
    if let Some(running) = running_of(&mut tx, tenant_id).await? {
        let running = progress(&mut tx, running).await?;
        tx.commit().await?;
        return Ok(running);
    }
    let total: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM participant_profiles WHERE tenant_id = $1 AND disposed = 0",
    )
    .bind(tenant_id)
    .fetch_one(&mut *tx)
    .await?;
    let id = new_id();
    let timestamp = now();
    sqlx::query(
        "INSERT INTO tenant_decommissions (id, version, tenant_id, state, parallelism, total, created_at, updated_at)
         VALUES ($1, 0, $2, $3, $4, $5, $6, $6)",
    )
    .bind(&id)
    .bind(tenant_id)
    .bind(DecommissionState::Running)
    .bind(parallelism)
    .bind(total)
    .bind(&timestamp)
    .execute(&mut *tx)
    .await?;
    event(&mut tx, &id, tenant_id, DecommissionState::Running, None).await?;
    let decommission = get(&mut tx, &id).await?;
    let decommission = progress(&mut tx, decommission).await?;
    tx.commit().await?;
    tracing::info!(tenant = %tenant_id, decommission = %id, participants = total, parallelism, "tenant decommission started");
    Ok(decommission)
}

/// The tenant's latest decommission with its progress; readable after the tenant is gone.
pub async fn latest(engine: &Engine, tenant_id: &str) -> Result<TenantDecommission> {
    let mut conn = engine.db().acquire().await?;
    let row = sqlx::query(AssertSqlSafe(format!(
        "{SELECT} WHERE tenant_id = $1 ORDER BY created_at DESC, id DESC LIMIT 1"
    )))
    .bind(tenant_id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| {
        ManagerError::not_found(format!("tenant '{tenant_id}' has not been decommissioned"))
    })?;
    let decommission = read(&row)?;
    progress(&mut conn, decommission).await
}

/// Refused (409) while the tenant is being decommissioned: what deploys a participant asks.
pub(crate) async fn refuse_while_running(conn: &mut Conn, tenant_id: &str) -> Result<()> {
    match running_of(conn, tenant_id).await? {
        Some(running) => Err(ManagerError::conflict(format!(
            "tenant '{tenant_id}' is being decommissioned (decommission '{}'); it takes no new participants",
            running.id
        ))),
        None => Ok(()),
    }
}

/// One pass over the running decommissions; public so that tests can drive it.
pub async fn tick(engine: &Engine) -> Result<()> {
    let running: Vec<String> =
        sqlx::query_scalar("SELECT id FROM tenant_decommissions WHERE state = $1")
            .bind(DecommissionState::Running)
            .fetch_all(engine.db().queries())
            .await?;
    for id in running {
        if let Err(e) = tick_one(engine, &id).await {
            tracing::warn!(decommission = %id, "decommissioning: {e}");
        }
    }
    Ok(())
}

/// A participant of the tenant as the decommission weighs it.
struct Participant {
    id: String,
    state: VpaState,
    error_detail: Option<String>,
}

/// Starts disposes up to the parallelism (profile rows locked in id order, under the
/// decommission's row), or ends the decommission.
async fn tick_one(engine: &Engine, id: &str) -> Result<()> {
    let engine = &engine.claiming();
    let mut tx = store::write(engine.db()).await?;
    store::lock_row(&mut tx, Table::TenantDecommissions, id).await?;
    let decommission = get(&mut tx, id).await?;
    if decommission.state != DecommissionState::Running {
        return Ok(());
    }
    let tenant_id = decommission.tenant_id.clone();
    let live = live_participants(&mut tx, &tenant_id).await?;
    if live.is_empty() {
        match tenants::delete_in(&mut tx, &tenant_id, None).await {
            Ok(()) | Err(ManagerError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        set_state(&mut tx, id, DecommissionState::Completed, None).await?;
        tx.commit().await?;
        tracing::info!(tenant = %tenant_id, decommission = %id, "tenant decommissioned and deleted");
        return Ok(());
    }
    let disposing = live
        .iter()
        .filter(|p| p.state == VpaState::Disposing)
        .count() as i64;
    let mut failed = Vec::new();
    let mut candidates = Vec::new();
    for participant in &live {
        match participant.state {
            VpaState::Active => candidates.push(participant),
            VpaState::Error => {
                if failed_since(&mut tx, &participant.id, &decommission.created_at).await? {
                    failed.push(participant);
                } else {
                    // In error before the decommission began: its dispose is tried.
                    candidates.push(participant);
                }
            }
            // Deploying: disposed once its deploy ends. Disposing: counted above.
            VpaState::Pending | VpaState::Disposing | VpaState::Disposed => {}
        }
    }
    let deploying = live.iter().any(|p| p.state == VpaState::Pending);
    // The others are disposed first (those deploying once their deploy ends): one that
    // cannot be leaves the rest no reason to stay.
    if !failed.is_empty() && candidates.is_empty() && !deploying {
        if disposing == 0 {
            let named: Vec<String> = failed
                .iter()
                .take(NAMED_FAILURES)
                .map(|p| {
                    format!(
                        "{}: {}",
                        p.id,
                        p.error_detail.as_deref().unwrap_or("its dispose failed")
                    )
                })
                .collect();
            let detail = format!(
                "{} participant(s) could not be disposed; the tenant is kept. Fix the cause and decommission again. {}",
                failed.len(),
                named.join("; ")
            );
            set_state(&mut tx, id, DecommissionState::Failed, Some(&detail)).await?;
            tracing::warn!(tenant = %tenant_id, decommission = %id, "{detail}");
            tx.commit().await?;
        }
        // Those under way finish first.
        return Ok(());
    }
    let slots = (decommission.parallelism - disposing).max(0) as usize;
    let mut started = 0;
    for participant in candidates.into_iter().take(slots) {
        match profiles::dispose_in(engine, &mut tx, &tenant_id, &participant.id).await {
            Ok(_) => started += 1,
            // Migrating or busy with another operation: disposed on a later tick.
            Err(ManagerError::Conflict(_) | ManagerError::Busy(_)) => {}
            Err(e) => return Err(e),
        }
    }
    tx.commit().await?;
    engine.committed();
    if started > 0 {
        tracing::info!(tenant = %tenant_id, decommission = %id, started, "participants disposing");
    }
    Ok(())
}

/// The tenant's participants that are not disposed, by id.
async fn live_participants(conn: &mut Conn, tenant_id: &str) -> Result<Vec<Participant>> {
    let rows = sqlx::query(
        "SELECT id, vpas, error_detail FROM participant_profiles WHERE tenant_id = $1 AND disposed = 0 ORDER BY id",
    )
    .bind(tenant_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut live = Vec::with_capacity(rows.len());
    for row in &rows {
        let vpas: Vec<Vpa> = from_json(row.get("vpas"), "vpas")?;
        let state = vpas.first().map_or(VpaState::Disposed, |v| v.state);
        if state != VpaState::Disposed {
            live.push(Participant {
                id: row.get("id"),
                state,
                error_detail: row.get("error_detail"),
            });
        }
    }
    Ok(live)
}

/// Whether the participant's latest dispose began after `since` and errored: it failed
/// under this decommission.
async fn failed_since(conn: &mut Conn, profile_id: &str, since: &str) -> Result<bool> {
    let state: Option<i64> = sqlx::query_scalar(
        "SELECT state FROM orchestrations WHERE correlation_id = $1 AND orchestration_type = $2
           AND created_timestamp >= $3 ORDER BY created_timestamp DESC LIMIT 1",
    )
    .bind(profile_id)
    .bind(cfm_protocol::orchestration_types::VPA_DISPOSE)
    .bind(since)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(state == Some(OrchestrationState::Errored.code()))
}

async fn running_of(conn: &mut Conn, tenant_id: &str) -> Result<Option<TenantDecommission>> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "{SELECT} WHERE tenant_id = $1 AND state = $2"
    )))
    .bind(tenant_id)
    .bind(DecommissionState::Running)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(read).transpose()
}

async fn get(conn: &mut Conn, id: &str) -> Result<TenantDecommission> {
    let row = sqlx::query(AssertSqlSafe(format!("{SELECT} WHERE id = $1")))
        .bind(id)
        .fetch_one(&mut *conn)
        .await?;
    read(&row)
}

/// Fills in what is left and what is being disposed now.
async fn progress(
    conn: &mut Conn,
    mut decommission: TenantDecommission,
) -> Result<TenantDecommission> {
    let live = live_participants(conn, &decommission.tenant_id).await?;
    decommission.remaining = live.len() as i64;
    decommission.disposing = live
        .iter()
        .filter(|p| p.state == VpaState::Disposing)
        .count() as i64;
    Ok(decommission)
}

async fn set_state(
    conn: &mut Conn,
    id: &str,
    state: DecommissionState,
    detail: Option<&str>,
) -> Result<()> {
    store::set_operation_state(conn, Table::TenantDecommissions, id, state.as_str(), detail)
        .await?;
    let tenant_id: String =
        sqlx::query_scalar("SELECT tenant_id FROM tenant_decommissions WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *conn)
            .await?;
    event(conn, id, &tenant_id, state, detail).await
}

/// A decommission's change of state, as an event of its tenant.
async fn event(
    conn: &mut Conn,
    id: &str,
    tenant_id: &str,
    state: DecommissionState,
    detail: Option<&str>,
) -> Result<()> {
    let data =
        serde_json::json!({"id": id, "tenantId": tenant_id, "state": state, "detail": detail});
    events::record(conn, events::kinds::DECOMMISSION, Some(tenant_id), id, data).await
}

const SELECT: &str =
    "SELECT id, version, tenant_id, state, parallelism, total, detail, created_at, updated_at
    FROM tenant_decommissions";

fn read(row: &crate::store::Row) -> Result<TenantDecommission> {
    Ok(TenantDecommission {
        id: row.get("id"),
        version: row.get("version"),
        tenant_id: row.get("tenant_id"),
        state: row
            .get::<String, _>("state")
            .parse()
            .map_err(|e| ManagerError::Corrupt(format!("decommission state: {e}")))?,
        parallelism: row.get("parallelism"),
        total: row.get("total"),
        remaining: 0,
        disposing: 0,
        detail: row.get("detail"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    })
}
