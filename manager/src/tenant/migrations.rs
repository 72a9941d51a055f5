//! Moving a participant between cells, make-before-break.
//!
//! A migration is three orchestrations of the participant's own template, chained by the
//! engine's hooks in the transactions that end them:
//!
//! 1. `cfm.orchestration.vpa.migrate` provisions the participant in the target cell: the
//!    template's own migrate activities, or its deploy activities when it defines none,
//!    run with VPA data that names the target cell.
//! 2. When it completes, the switch: the profile and its VPAs point at the target, in the
//!    transaction that ends provisioning, and `cfm.orchestration.vpa.migrate.source` runs
//!    the template's dispose activities with what provisioned the source.
//! 3. When provisioning fails instead, `cfm.orchestration.vpa.migrate.rollback` runs the
//!    dispose activities with what provisioning made in the target; the participant never
//!    left its source.
//!
//! Every activity sees `cfm.migration`: the migration's id, its phase (`target`, `source`
//! or `rollback`) and both cells, so that a plugin whose backend two cells share (one
//! secrets store, one DNS zone) knows not to remove what the other cell now uses. The
//! participant's VPAs stay `active` throughout; at most one migration of a participant
//! is under way, whichever replica or drain starts it.

use cfm_protocol::{keys, orchestration_types};
use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, Row};

use crate::error::{ManagerError, Result};
use crate::lifecycle::{MigrationState, OrchestrationState};
use crate::model::{Cell, Migration, OrchestrationDefinition, Properties, VpaState, new_id, now};
use crate::provision::{Engine, Finished, Start, definitions};
use crate::store::{self, Conn, Table, to_json};
use crate::tenant::{cells, placement, profiles};

/// Starts moving a tenant's participant to `target_cell_id` (by id or external id).
pub async fn start(
    engine: &Engine,
    tenant_id: &str,
    profile_id: &str,
    target_cell_id: &str,
) -> Result<Migration> {
    let engine = &engine.claiming();
    let mut tx = store::write(engine.db()).await?;
    store::lock_row(&mut tx, Table::ParticipantProfiles, profile_id).await?;
    // Reads through the tenant: another tenant's participant is "not found".
    profiles::fetch(&mut tx, tenant_id, profile_id).await?;
    let target = cells::find(&mut tx, target_cell_id).await?.ok_or_else(|| {
        ManagerError::bad_request(format!("target cell '{target_cell_id}' does not exist"))
    })?;
    let migration = start_in(engine, &mut tx, profile_id, Some(&target.id), None).await?;
    tx.commit().await?;
    engine.committed();
    Ok(migration)
}

/// A participant's migrations, newest first: its history.
pub async fn list(engine: &Engine, tenant_id: &str, profile_id: &str) -> Result<Vec<Migration>> {
    let mut conn = engine.db().acquire().await?;
    profiles::fetch(&mut conn, tenant_id, profile_id).await?;
    let rows = sqlx::query(AssertSqlSafe(format!(
        "{SELECT} WHERE profile_id = $1 ORDER BY created_at DESC, id"
    )))
    .bind(profile_id)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(read).collect()
}

/// The migration of `profile_id` under way, if one is.
pub(crate) async fn unfinished(conn: &mut Conn, profile_id: &str) -> Result<Option<Migration>> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "{SELECT} WHERE profile_id = $1 AND state IN ({})",
        MigrationState::UNFINISHED_SQL
    )))
    .bind(profile_id)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(read).transpose()
}

/// A scalar subquery: the id of the migration under way of the profile whose id is the
/// outer query's `profile_id` column, or NULL when none is.
pub(crate) fn unfinished_id_sql(profile_id: &str) -> String {
    format!(
        "(SELECT m.id FROM migrations AS m WHERE m.profile_id = {profile_id} AND m.state IN ({}) LIMIT 1)",
        MigrationState::UNFINISHED_SQL
    )
}

/// Starts a migration inside the caller's transaction, which has locked the profile: to
/// `target` when given, else to where placement puts the participant (a drain). Refused
/// while the participant is not active or is migrating already; a target that cannot
/// take it is refused with placement's reasons.
pub(crate) async fn start_in(
    engine: &Engine,
    conn: &mut Conn,
    profile_id: &str,
    target: Option<&str>,
    drain_id: Option<&str>,
) -> Result<Migration> {
    let profile = profiles::find(conn, profile_id).await?.ok_or_else(|| {
        ManagerError::not_found(format!("participant profile '{profile_id}' not found"))
    })?;
    if profile.vpas.is_empty() || profile.vpas.iter().any(|v| v.state != VpaState::Active) {
        return Err(ManagerError::conflict(format!(
            "participant profile '{profile_id}' is not active; only an active participant migrates"
        )));
    }
    if let Some(under_way) = unfinished(conn, profile_id).await? {
        return Err(ManagerError::conflict(format!(
            "participant profile '{profile_id}' is being migrated already (migration '{}' is {})",
            under_way.id, under_way.state
        )));
    }
    profiles::refuse_while_busy(conn, profile_id, "migrated").await?;
    let source_cell_id = profile.vpas[0].cell_id.clone();
    let source = cells::get(conn, &source_cell_id).await?;
    let needs = placement::Requirements::of_moving(conn, &profile).await?;
    if target == Some(source_cell_id.as_str()) {
        return Err(ManagerError::conflict(format!(
            "participant profile '{profile_id}' is in cell '{source_cell_id}' already"
        )));
    }
    let target = placement::place(conn, target, &needs, engine.settings().placement).await?;
    let provisioned = profiles::last_provisioning(conn, profile_id)
        .await?
        .ok_or_else(|| {
            ManagerError::Corrupt(format!(
                "participant profile '{profile_id}' has no deploy orchestration"
            ))
        })?;
    let definition = migration_template(conn, &provisioned.template, provisioned.version).await?;

    let migration = Migration {
        id: new_id(),
        profile_id: profile.id.clone(),
        tenant_id: profile.tenant_id.clone(),
        source_cell_id,
        target_cell_id: target.id.clone(),
        state: MigrationState::Provisioning,
        drain_id: drain_id.map(str::to_string),
        error_detail: None,
        created_at: now(),
        updated_at: now(),
    };
    sqlx::query(
        "INSERT INTO migrations (id, profile_id, tenant_id, source_cell_id, target_cell_id, source_orchestration_id,
           state, drain_id, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&migration.id)
    .bind(&migration.profile_id)
    .bind(&migration.tenant_id)
    .bind(&migration.source_cell_id)
    .bind(&migration.target_cell_id)
    .bind(&provisioned.id)
    .bind(migration.state)
    .bind(&migration.drain_id)
    .bind(&migration.created_at)
    .bind(&migration.updated_at)
    .execute(&mut *conn)
    .await?;

    // The target starts from the participant's identity alone: what provisioning learnt
    // in the source (its ids, its outputs) belongs to the source.
    let mut data: Properties = provisioned
        .data
        .into_iter()
        .filter(|(k, _)| keys::BASE.contains(&k.as_str()))
        .collect();
    data.insert(
        keys::VPA_DATA.into(),
        profiles::vpa_data(&profile.vpas, &target),
    );
    data.insert(
        keys::MIGRATION.into(),
        phase(&migration, "target", &source, &target),
    );
    engine
        .start(
            conn,
            Start {
                correlation_id: profile.id.clone(),
                orchestration_type: orchestration_types::VPA_MIGRATE.into(),
                definition,
                processing_data: data,
            },
        )
        .await?;
    tracing::info!(profile = %profile.id, migration = %migration.id, source = %migration.source_cell_id,
        target = %migration.target_cell_id, "migration started");
    Ok(migration)
}

/// The engine's hook for the three migration orchestrations (see the module docs); runs
/// in the transaction that ends one.
pub(crate) async fn finished(
    engine: &Engine,
    conn: &mut Conn,
    finished: &Finished<'_>,
) -> Result<()> {
    let Some(migration) = unfinished(conn, finished.correlation_id).await? else {
        tracing::warn!(orchestration = %finished.id, "a migration orchestration ended without its migration");
        return Ok(());
    };
    let completed = finished.state == OrchestrationState::Completed;
    let detail = finished.error_detail.map(str::to_string);
    match (finished.orchestration_type, completed) {
        (orchestration_types::VPA_MIGRATE, true) => {
            profiles::record_plugins(conn, &migration.profile_id, finished.plugin_digests).await?;
            switch(engine, conn, &migration).await
        }
        (orchestration_types::VPA_MIGRATE, false) => {
            let mut data = finished.processing_data.clone();
            let (source, target) = cells_of(conn, &migration).await?;
            data.insert(
                keys::MIGRATION.into(),
                phase(&migration, "rollback", &source, &target),
            );
            let definition =
                migration_template(conn, finished.definition_id, finished.definition_version)
                    .await?;
            let next = if start_phase(
                engine,
                conn,
                &migration,
                orchestration_types::VPA_MIGRATE_ROLLBACK,
                definition,
                data,
            )
            .await?
            {
                MigrationState::RollingBack
            } else {
                MigrationState::RolledBack
            };
            set_state(conn, &migration.id, next, detail.as_deref()).await
        }
        (orchestration_types::VPA_MIGRATE_ROLLBACK, true) => {
            set_state(conn, &migration.id, MigrationState::RolledBack, None).await
        }
        (orchestration_types::VPA_MIGRATE_ROLLBACK, false) => {
            set_state(
                conn,
                &migration.id,
                MigrationState::Failed,
                detail.as_deref(),
            )
            .await
        }
        (orchestration_types::VPA_MIGRATE_SOURCE, true) => {
            set_state(conn, &migration.id, MigrationState::Completed, None).await
        }
        (orchestration_types::VPA_MIGRATE_SOURCE, false) => {
            set_state(
                conn,
                &migration.id,
                MigrationState::CleanupFailed,
                detail.as_deref(),
            )
            .await
        }
        (other, _) => {
            tracing::warn!(orchestration = %finished.id, r#type = %other, "not a migration orchestration");
            Ok(())
        }
    }
}

/// The switch: the participant now lives in the target (profile, VPAs, placement counts),
/// and the source's dispose starts from what provisioned the source.
async fn switch(engine: &Engine, conn: &mut Conn, migration: &Migration) -> Result<()> {
    store::lock_row(conn, Table::ParticipantProfiles, &migration.profile_id).await?;
    let Some(mut profile) = profiles::find(conn, &migration.profile_id).await? else {
        return set_state(conn, &migration.id, MigrationState::Completed, None).await;
    };
    let timestamp = now();
    for vpa in &mut profile.vpas {
        vpa.cell_id = migration.target_cell_id.clone();
        vpa.state_timestamp = timestamp.clone();
        vpa.version += 1;
    }
    sqlx::query(
        "UPDATE participant_profiles SET cell_id = $1, vpas = $2, version = version + 1 WHERE id = $3",
    )
    .bind(&migration.target_cell_id)
    .bind(to_json(&profile.vpas)?)
    .bind(&profile.id)
    .execute(&mut *conn)
    .await?;
    tracing::info!(profile = %profile.id, migration = %migration.id, target = %migration.target_cell_id,
        "participant switched to its target cell");

    let source_orchestration: String =
        sqlx::query_scalar("SELECT source_orchestration_id FROM migrations WHERE id = $1")
            .bind(&migration.id)
            .fetch_one(&mut *conn)
            .await?;
    let Some(source_provisioning) =
        profiles::provisioning_by_id(conn, &source_orchestration).await?
    else {
        return set_state(
            conn,
            &migration.id,
            MigrationState::CleanupFailed,
            Some("what provisioned the source is gone; its objects must be removed by hand"),
        )
        .await;
    };
    let (source, target) = cells_of(conn, migration).await?;
    let mut data = source_provisioning.data;
    data.insert(
        keys::MIGRATION.into(),
        phase(migration, "source", &source, &target),
    );
    let definition = migration_template(
        conn,
        &source_provisioning.template,
        source_provisioning.version,
    )
    .await?;
    let next = if start_phase(
        engine,
        conn,
        migration,
        orchestration_types::VPA_MIGRATE_SOURCE,
        definition,
        data,
    )
    .await?
    {
        MigrationState::Switched
    } else {
        MigrationState::Completed
    };
    set_state(conn, &migration.id, next, None).await
}

/// Starts one of the dispose-side phases; false when the template has nothing to dispose.
async fn start_phase(
    engine: &Engine,
    conn: &mut Conn,
    migration: &Migration,
    orchestration_type: &str,
    definition: OrchestrationDefinition,
    data: Properties,
) -> Result<bool> {
    if !definition.activities.contains_key(orchestration_type) {
        return Ok(false);
    }
    engine
        .start(
            conn,
            Start {
                correlation_id: migration.profile_id.clone(),
                orchestration_type: orchestration_type.into(),
                definition,
                processing_data: data,
            },
        )
        .await?;
    Ok(true)
}

/// The template a participant migrates with: its own, with the migration's three
/// activity lists derived where it defines none: provisioning the target runs the deploy
/// activities, the source and rollback phases the dispose activities. A template deleted
/// since the participant was deployed falls back to the newest one that deploys.
async fn migration_template(
    conn: &mut Conn,
    template: &str,
    version: i64,
) -> Result<OrchestrationDefinition> {
    let mut definition = match definitions::provisioned_with(conn, template, version).await? {
        Some(definition) => definition,
        None => definitions::select(conn, orchestration_types::VPA_DEPLOY, None)
            .await?
            .ok_or_else(|| {
                ManagerError::conflict(format!(
                    "orchestration definition '{template}' is gone and none defines {}",
                    orchestration_types::VPA_DEPLOY
                ))
            })?,
    };
    let derived = [
        (
            orchestration_types::VPA_MIGRATE,
            orchestration_types::VPA_DEPLOY,
        ),
        (
            orchestration_types::VPA_MIGRATE_SOURCE,
            orchestration_types::VPA_DISPOSE,
        ),
        (
            orchestration_types::VPA_MIGRATE_ROLLBACK,
            orchestration_types::VPA_DISPOSE,
        ),
    ];
    for (phase, from) in derived {
        if definition
            .activities
            .get(phase)
            .is_none_or(|a| a.is_empty())
        {
            match definition
                .activities
                .get(from)
                .filter(|a| !a.is_empty())
                .cloned()
            {
                Some(activities) => {
                    definition.activities.insert(phase.into(), activities);
                }
                None => {
                    definition.activities.remove(phase);
                }
            }
        }
    }
    if !definition
        .activities
        .contains_key(orchestration_types::VPA_MIGRATE)
    {
        return Err(ManagerError::conflict(format!(
            "orchestration definition '{}' defines neither {} nor {}: the participant cannot be provisioned elsewhere",
            definition.id,
            orchestration_types::VPA_MIGRATE,
            orchestration_types::VPA_DEPLOY
        )));
    }
    Ok(definition)
}

/// `cfm.migration` for one phase.
fn phase(migration: &Migration, phase: &str, source: &Cell, target: &Cell) -> Value {
    let cell = |cell: &Cell| json!({"cellId": cell.id, "externalCellId": cell.external_id, "cellProperties": cell.properties});
    json!({"id": migration.id, "phase": phase, "source": cell(source), "target": cell(target)})
}

async fn cells_of(conn: &mut Conn, migration: &Migration) -> Result<(Cell, Cell)> {
    Ok((
        cells::get(conn, &migration.source_cell_id).await?,
        cells::get(conn, &migration.target_cell_id).await?,
    ))
}

async fn set_state(
    conn: &mut Conn,
    id: &str,
    state: MigrationState,
    error_detail: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "UPDATE migrations SET state = $1, error_detail = COALESCE($2, error_detail), updated_at = $3 WHERE id = $4",
    )
    .bind(state)
    .bind(error_detail)
    .bind(now())
    .bind(id)
    .execute(conn)
    .await?;
    tracing::info!(migration = %id, %state, "migration moved on");
    Ok(())
}

const SELECT: &str = "SELECT id, profile_id, tenant_id, source_cell_id, target_cell_id, state, drain_id, error_detail,
    created_at, updated_at FROM migrations";

fn read(row: &crate::store::Row) -> Result<Migration> {
    Ok(Migration {
        id: row.get("id"),
        profile_id: row.get("profile_id"),
        tenant_id: row.get("tenant_id"),
        source_cell_id: row.get("source_cell_id"),
        target_cell_id: row.get("target_cell_id"),
        state: row
            .get::<String, _>("state")
            .parse()
            .map_err(|e| ManagerError::Corrupt(format!("migration state: {e}")))?,
        drain_id: row.get("drain_id"),
        error_detail: row.get("error_detail"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    })
}
