//! Participant profiles: a participant's DID, roles, and the VPAs provisioned for it.
//!
//! Creating a profile places it in a cell, writes it with four `pending` VPAs and starts
//! the deploy orchestration, all in one transaction. The engine tells [`ProfileLifecycle`]
//! (its hooks) in the transaction that ends the orchestration, so a profile's state never
//! disagrees with its orchestration.

use cfm_protocol::{keys, orchestration_types};
use serde_json::{Map, Value, json};
use sqlx::{AssertSqlSafe, Row};

use crate::capability_calls;
use crate::error::{ManagerError, Result};
use crate::lifecycle::{VpaState, VpaTransition};
use crate::model::{
    Cell, CredentialSpec, DataspaceProfile, HistoryEntry, OrchestrationDefinition,
    ParticipantProfile, PluginDigest, Properties, VPA_STATE_PROPERTY, VPA_TYPES, Vpa, new_id,
    new_participant_context_id, now,
};
use crate::provision::{CarriedStep, Engine, Finished, OrchestrationHooks, Start, definitions};
use crate::query::{Field, JsonColumn, KeyTable, Literal, Predicate};
use crate::store::{self, Conn, Db, Paged, Table, from_json, to_json};
use crate::tenant::{
    dataspaces, decommissions, migrations, placement, reconciles, rollouts, tenants, updates,
};

/// A request to deploy a participant (upstream's NewParticipantProfileDeployment).
#[derive(Debug, Clone, Default)]
pub struct NewDeployment {
    /// The participant's DID.
    pub identifier: String,
    /// The cell asked for, by id or external id; an unknown one falls back to placement.
    pub cell_id: Option<String>,
    /// The dataspaces the participant joins; the cell must serve one of them.
    pub dataspace_profile_ids: Vec<String>,
    /// Dataspace profile id → the participant's roles there (an array of strings): which
    /// of that dataspace's credential specs apply to it.
    pub participant_roles: Map<String, Value>,
    /// VPA type → the properties that VPA starts with.
    pub vpa_properties: Map<String, Value>,
    /// The profile's own properties.
    pub properties: Properties,
}

/// Places the participant in a cell, writes its profile with four `pending` VPAs and
/// starts the deploy orchestration, in one transaction (see the module docs), on the
/// database's writer thread where it has one ([`store::Db::on_writer`]).
pub async fn deploy(
    engine: &Engine,
    tenant_id: &str,
    new: NewDeployment,
) -> Result<ParticipantProfile> {
    let (owned, tenant_id) = (engine.clone(), tenant_id.to_string());
    engine
        .db()
        .on_writer(async move { deploy_here(&owned, &tenant_id, new).await })
        .await
}

async fn deploy_here(
    engine: &Engine,
    tenant_id: &str,
    new: NewDeployment,
) -> Result<ParticipantProfile> {
    validate_did(&new.identifier)?;
    for (profile, roles) in &new.participant_roles {
        if !roles
            .as_array()
            .is_some_and(|r| r.iter().all(Value::is_string))
        {
            return Err(ManagerError::bad_request(format!(
                "participantRoles['{profile}'] must be an array of strings"
            )));
        }
    }
    let engine = &engine.claiming();
    let mut tx = store::write(engine.db()).await?;
    tenants::share(&mut tx, tenant_id).await?;
    decommissions::refuse_while_running(&mut tx, tenant_id).await?;
    refuse_a_live_twin(&mut tx, &new.identifier).await?;
    let mut dataspace_profiles = joined(&mut tx, &new.dataspace_profile_ids).await?;
    let needs = placement::Requirements {
        serving: placement::Requirements::serving_of(&dataspace_profiles),
        labels: placement::Requirements::labels_of(&new.properties, &dataspace_profiles)?,
        excluded: None,
    };
    let policy = engine.settings().placement;
    let cell = placement::place(&mut tx, new.cell_id.as_deref(), &needs, policy).await?;
    let mut dataspace_profile_ids = new.dataspace_profile_ids.clone();
    if dataspace_profile_ids.is_empty() {
        // Upstream's clients (JAD's) name no dataspace; the participant then gets the
        // credentials of those its cell serves.
        dataspace_profile_ids = placement::implied_dataspaces(&mut tx, &cell.id).await?;
        dataspace_profiles = joined(&mut tx, &dataspace_profile_ids).await?;
    }
    let chosen = placement::chosen_template(&dataspace_profiles, &cell)?;
    let definition =
        definitions::select(&mut tx, orchestration_types::VPA_DEPLOY, chosen.as_deref())
            .await?
            .ok_or_else(|| {
                ManagerError::conflict(match &chosen {
                    Some(id) => format!(
                        "the selected orchestration definition '{id}' does not define {}",
                        orchestration_types::VPA_DEPLOY
                    ),
                    None => format!(
                        "no orchestration definition defines {}; create one first",
                        orchestration_types::VPA_DEPLOY
                    ),
                })
            })?;

    let id = new_participant_context_id();
    let timestamp = now();
    let vpas: Vec<Vpa> = VPA_TYPES
        .iter()
        .map(|vpa_type| Vpa {
            id: new_id(),
            version: 0,
            state: VpaState::Pending,
            state_timestamp: timestamp.clone(),
            vpa_type: vpa_type.to_string(),
            cell_id: cell.id.clone(),
            properties: new
                .vpa_properties
                .get(*vpa_type)
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
        })
        .collect();
    let profile = ParticipantProfile {
        id: id.clone(),
        version: 0,
        identifier: new.identifier.clone(),
        tenant_id: tenant_id.to_string(),
        participant_roles: new.participant_roles.clone(),
        dataspace_profile_ids,
        vpas,
        properties: new.properties,
        error: false,
        error_detail: None,
        migration: None,
        pending_vpa_properties: None,
        template_id: Some(definition.id.clone()),
        template_version: Some(definition.version),
        plugin_digests: Vec::new(),
        drift: None,
        drift_count: 0,
    };
    sqlx::query(
        "INSERT INTO participant_profiles (id, version, tenant_id, identifier, cell_id, dataspace_profile_ids,
           participant_roles, vpas, properties, template_id, template_version)
         VALUES ($1, 0, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&profile.id)
    .bind(&profile.tenant_id)
    .bind(&profile.identifier)
    .bind(&cell.id)
    .bind(to_json(&profile.dataspace_profile_ids)?)
    .bind(to_json(&profile.participant_roles)?)
    .bind(to_json(&profile.vpas)?)
    .bind(to_json(&profile.properties)?)
    .bind(&profile.template_id)
    .bind(profile.template_version)
    .execute(&mut *tx)
    .await?;

    let credentials: Vec<&CredentialSpec> = dataspace_profiles
        .iter()
        .flat_map(|dp| {
            let roles = new.participant_roles.get(&dp.id).and_then(Value::as_array);
            dp.dataspace_spec
                .credential_specs
                .iter()
                .filter(move |spec| {
                    spec.role.is_empty()
                        || roles.is_some_and(|r| {
                            r.iter().any(|x| x.as_str() == Some(spec.role.as_str()))
                        })
                })
        })
        .collect();
    let mut data = Map::new();
    data.insert(keys::PARTICIPANT_ID.into(), json!(profile.identifier));
    // The participant context is the profile: one stable id through migrations and upgrades.
    data.insert(keys::PARTICIPANT_CONTEXT_ID.into(), json!(profile.id));
    data.insert(keys::VPA_DATA.into(), vpa_data(&profile.vpas, &cell));
    data.insert(
        keys::VPA_CREDENTIALS.into(),
        serde_json::to_value(&credentials)
            .map_err(|e| ManagerError::Corrupt(format!("credential specs: {e}")))?,
    );
    engine
        .start(
            &mut tx,
            Start {
                correlation_id: profile.id.clone(),
                orchestration_type: orchestration_types::VPA_DEPLOY.into(),
                definition,
                processing_data: data,
            },
        )
        .await?;
    tx.commit().await?;
    engine.committed();
    Ok(profile)
}

/// `cfm.vpa.data`: each VPA with the cell it runs in, as plugins read it.
pub(crate) fn vpa_data(vpas: &[Vpa], cell: &Cell) -> Value {
    vpas.iter()
        .map(|vpa| {
            json!({"id": vpa.id, "vpaType": vpa.vpa_type, "cellId": cell.id,
                   "externalCellId": cell.external_id, "properties": vpa.properties,
                   // Per-cell service endpoints and settings for the plugins.
                   "cellProperties": cell.properties})
        })
        .collect()
}

/// One DID is one participant: services key holders and credentials by it, so a second
/// live profile with another's DID (in any tenant) would adopt, and on dispose revoke,
/// what belongs to the first.
async fn refuse_a_live_twin(conn: &mut Conn, identifier: &str) -> Result<()> {
    let rows = sqlx::query(AssertSqlSafe(format!("{SELECT} WHERE identifier = $1")))
        .bind(identifier)
        .fetch_all(&mut *conn)
        .await?;
    for row in &rows {
        let twin = read(row)?;
        if twin.vpas.iter().any(|v| v.state != VpaState::Disposed) {
            return Err(ManagerError::conflict(format!(
                "a participant with identifier '{identifier}' exists; dispose it before deploying the DID again"
            )));
        }
    }
    Ok(())
}

/// The dataspace profiles `ids` names, each share-locked so none is deleted under the
/// deployment; an unknown id is the client's mistake.
async fn joined(conn: &mut Conn, ids: &[String]) -> Result<Vec<DataspaceProfile>> {
    let mut profiles = Vec::with_capacity(ids.len());
    for id in ids {
        let profile = dataspaces::share(conn, id).await.map_err(|e| match e {
            ManagerError::NotFound(_) => {
                ManagerError::bad_request(format!("dataspace profile '{id}' does not exist"))
            }
            other => other,
        })?;
        profiles.push(profile);
    }
    Ok(profiles)
}

/// Reads a profile of `tenant_id`, with the migration under way if one is; one of
/// another tenant is "not found".
pub async fn get(db: &Db, tenant_id: &str, id: &str) -> Result<ParticipantProfile> {
    let mut conn = db.acquire().await?;
    // Whether a migration is under way rides on the profile's row: one round trip unless
    // the participant is migrating, which is when the migration is read.
    let migration_id = format!(
        ", {} AS migration_id",
        migrations::unfinished_id_sql("participant_profiles.id")
    );
    let row = tenant_row(&mut conn, tenant_id, id, &migration_id).await?;
    let mut profile = read(&row)?;
    if row.get::<Option<String>, _>("migration_id").is_some() {
        profile.migration = migrations::unfinished(&mut conn, id).await?;
    }
    Ok(profile)
}

/// A participant's orchestration history, newest first: its deploy, upgrades, updates,
/// migrations, keypair events and dispose, however each ended.
pub async fn history(
    db: &Db,
    tenant_id: &str,
    id: &str,
    page: store::Page,
) -> Result<Paged<HistoryEntry>> {
    let mut conn = db.acquire().await?;
    fetch(&mut conn, tenant_id, id).await?;
    let total: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM orchestrations WHERE correlation_id = $1")
            .bind(id)
            .fetch_one(&mut *conn)
            .await?;
    let rows = sqlx::query(
        "SELECT id, orchestration_type, definition_id, definition_version, state, created_timestamp,
           state_timestamp, error_detail
         FROM orchestrations WHERE correlation_id = $1
         ORDER BY created_timestamp DESC, id LIMIT $2 OFFSET $3",
    )
    .bind(id)
    .bind(page.limit)
    .bind(page.offset)
    .fetch_all(&mut *conn)
    .await?;
    let items = rows
        .iter()
        .map(|row| HistoryEntry {
            orchestration_id: row.get("id"),
            orchestration_type: row.get("orchestration_type"),
            definition_id: row.get("definition_id"),
            definition_version: row.get("definition_version"),
            state: row.get("state"),
            created_timestamp: row.get("created_timestamp"),
            state_timestamp: row.get("state_timestamp"),
            error_detail: row.get("error_detail"),
        })
        .collect();
    Ok(Paged {
        items,
        total: store::Total::Exact(total),
        page,
    })
}

/// A page of what the participant's plugins did through their capabilities, newest
/// first: every refusal and every write the agent hosts audited.
pub async fn capability_calls(
    db: &Db,
    tenant_id: &str,
    id: &str,
    filter: capability_calls::Filter,
    page: store::Page,
) -> Result<Paged<capability_calls::CapabilityCallRecord>> {
    let mut conn = db.acquire().await?;
    fetch(&mut conn, tenant_id, id).await?;
    capability_calls::list(&mut conn, id, filter, page).await
}

/// Starts decommissioning a participant: its dispose orchestration runs with everything
/// its deploy learned, and the VPAs go `disposing`, then `disposed`. Without a dispose
/// template there is nothing to undo and the VPAs are `disposed` at once. Asking again
/// while that is under way or done changes nothing.
pub async fn dispose(engine: &Engine, tenant_id: &str, id: &str) -> Result<ParticipantProfile> {
    let engine = &engine.claiming();
    let mut tx = store::write(engine.db()).await?;
    let profile = dispose_in(engine, &mut tx, tenant_id, id).await?;
    tx.commit().await?;
    engine.committed();
    Ok(profile)
}

/// [`dispose`] inside the caller's transaction; the caller wakes the engine after
/// committing.
pub(crate) async fn dispose_in(
    engine: &Engine,
    tx: &mut Conn,
    tenant_id: &str,
    id: &str,
) -> Result<ParticipantProfile> {
    // Two DELETEs at once must not both start a dispose.
    store::lock_row(tx, Table::ParticipantProfiles, id).await?;
    let mut profile = fetch(tx, tenant_id, id).await?;
    if profile.vpas.iter().any(|v| v.state.is_disposing_or_gone()) {
        return Ok(profile);
    }
    if let Some(migration) = migrations::unfinished(tx, id).await? {
        return Err(ManagerError::conflict(format!(
            "participant profile '{id}' is being migrated (migration '{}' is {}); dispose it once the migration has ended",
            migration.id, migration.state
        )));
    }
    if profile.vpas.iter().any(|v| v.state == VpaState::Pending) {
        return Err(ManagerError::conflict(format!(
            "participant profile '{id}' is still being deployed; dispose it once its VPAs are active or in error"
        )));
    }
    refuse_while_busy(tx, id, "disposed").await?;
    let (data, template, version) = last_deploy(tx, id).await?.ok_or_else(|| {
        ManagerError::Corrupt(format!(
            "participant profile '{id}' has no deploy orchestration"
        ))
    })?;
    let state = if start_dispose(engine, tx, id, data, &template, version).await? {
        VpaState::Disposing
    } else {
        VpaState::Disposed
    };
    set_vpa_state(tx, &mut profile, state, None).await?;
    Ok(profile)
}

/// Deploys an errored participant again, from where its deploy failed: the activities
/// that completed keep their outputs and do not run again, unless a dispose ran since
/// (a compensation that failed part way), in which case the whole deploy runs again
/// (plugins deploy idempotently). The VPAs go `pending`, the profile's error is cleared,
/// and its history keeps the failed orchestration.
pub async fn retry(engine: &Engine, tenant_id: &str, id: &str) -> Result<ParticipantProfile> {
    let engine = &engine.claiming();
    let mut tx = store::write(engine.db()).await?;
    store::lock_row(&mut tx, Table::ParticipantProfiles, id).await?;
    let mut profile = fetch(&mut tx, tenant_id, id).await?;
    if profile.vpas.is_empty() || profile.vpas.iter().any(|v| v.state != VpaState::Error) {
        return Err(ManagerError::conflict(format!(
            "participant profile '{id}' is not in error (its VPAs are {}); only an errored participant is retried",
            profile.vpas.first().map_or("missing", |v| v.state.as_str())
        )));
    }
    refuse_while_busy(&mut tx, id, "retried").await?;
    decommissions::refuse_while_running(&mut tx, tenant_id).await?;
    if migrations::unfinished(&mut tx, id).await?.is_some() {
        return Err(ManagerError::conflict(format!(
            "participant profile '{id}' is being migrated; retry it once the migration has ended"
        )));
    }
    let row = sqlx::query(
        "SELECT id, state, definition_id, definition_version, processing_data, created_timestamp FROM orchestrations
         WHERE correlation_id = $1 AND orchestration_type = $2 ORDER BY created_timestamp DESC LIMIT 1",
    )
    .bind(id)
    .bind(orchestration_types::VPA_DEPLOY)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| {
        ManagerError::Corrupt(format!(
            "participant profile '{id}' has no deploy orchestration"
        ))
    })?;
    let deploy_id: String = row.get("id");
    let (template, version): (String, i64) =
        (row.get("definition_id"), row.get("definition_version"));
    let undone: Option<String> = sqlx::query_scalar(
        "SELECT id FROM orchestrations WHERE correlation_id = $1 AND orchestration_type = $2
           AND created_timestamp >= $3 LIMIT 1",
    )
    .bind(id)
    .bind(orchestration_types::VPA_DISPOSE)
    .bind(row.get::<String, _>("created_timestamp"))
    .fetch_optional(&mut *tx)
    .await?;
    let mut done = std::collections::BTreeMap::new();
    if undone.is_none() {
        let steps = sqlx::query(
            "SELECT activity_id, output, plugin_digest FROM orchestration_steps
             WHERE orchestration_id = $1 AND state = $2",
        )
        .bind(&deploy_id)
        .bind(crate::lifecycle::StepState::Completed)
        .fetch_all(&mut *tx)
        .await?;
        for step in &steps {
            let output: Option<String> = step.get("output");
            let output: Properties = match output {
                Some(text) => from_json(&text, "step output")?,
                None => Properties::new(),
            };
            let carried = CarriedStep {
                output,
                plugin_digest: step.get("plugin_digest"),
            };
            done.insert(step.get::<String, _>("activity_id"), carried);
        }
    }
    let definition = definitions::provisioned_with(&mut tx, &template, version)
        .await?
        .filter(|d| d.activities.contains_key(orchestration_types::VPA_DEPLOY))
        .ok_or_else(|| {
            ManagerError::conflict(format!(
                "orchestration definition '{template}' (version {version}) no longer deploys; the participant cannot be retried"
            ))
        })?;
    let deployed: Properties = from_json(row.get("processing_data"), "deploy processing data")?;
    let data: Properties = deployed
        .into_iter()
        .filter(|(k, _)| keys::BASE.contains(&k.as_str()))
        .collect();
    let orchestration = engine
        .start_resuming(
            &mut tx,
            Start {
                correlation_id: id.to_string(),
                orchestration_type: orchestration_types::VPA_DEPLOY.into(),
                definition,
                processing_data: data,
            },
            &done,
        )
        .await?;
    profile.error = false;
    profile.error_detail = None;
    sqlx::query("UPDATE participant_profiles SET error = 0, error_detail = NULL WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    set_vpa_state(&mut tx, &mut profile, VpaState::Pending, None).await?;
    tx.commit().await?;
    engine.committed();
    tracing::info!(profile = %id, orchestration = %orchestration, failed = %deploy_id,
        kept = done.len(), "errored participant retried");
    Ok(profile)
}

/// The processing data of what last provisioned a profile where it is (the base keys and
/// every activity's output) and the template it ran; None before any deploy.
pub(crate) async fn last_deploy(
    conn: &mut Conn,
    profile_id: &str,
) -> Result<Option<(Properties, String, i64)>> {
    Ok(last_provisioning(conn, profile_id)
        .await?
        .map(|p| (p.data, p.template, p.version)))
}

/// What last provisioned a participant where it is: its latest deploy, or the latest
/// migration, upgrade or reconcile that completed since.
pub(crate) struct Provisioning {
    /// The orchestration's id.
    pub id: String,
    /// Its processing data, without a migration's phase or an upgrade's versions.
    pub data: Properties,
    /// The template it ran.
    pub template: String,
    /// Which version of the template.
    pub version: i64,
}

/// What re-running a live participant's provisioning as `orchestration_type` (an update,
/// a verify, a reconcile) starts from: the data that last provisioned it with the VPAs as
/// they are now (an update since changed their properties), and the template version that
/// provisioned it as [`definitions::redeploying`] makes it. `what` says, in a conflict,
/// what the participant cannot be ("changed", "verified").
pub(crate) async fn rerunning(
    conn: &mut Conn,
    profile: &ParticipantProfile,
    orchestration_type: &str,
    what: &str,
) -> Result<(Properties, OrchestrationDefinition)> {
    let profile_id = profile.id.as_str();
    let provisioned = last_provisioning(conn, profile_id).await?.ok_or_else(|| {
        ManagerError::Corrupt(format!(
            "participant profile '{profile_id}' has no deploy orchestration"
        ))
    })?;
    let definition =
        definitions::provisioned_with(conn, &provisioned.template, provisioned.version)
            .await?
            .ok_or_else(|| {
                ManagerError::conflict(format!(
                    "orchestration definition '{}' is gone; the participant cannot be {what}",
                    provisioned.template
                ))
            })?;
    let definition = definitions::redeploying(definition, orchestration_type)?;
    let mut data = provisioned.data;
    if let Some(vpa) = profile.vpas.first() {
        let cell = crate::tenant::cells::get(conn, &vpa.cell_id).await?;
        data.insert(keys::VPA_DATA.into(), vpa_data(&profile.vpas, &cell));
    }
    Ok((data, definition))
}

/// See [`Provisioning`]; None before any deploy.
pub(crate) async fn last_provisioning(
    conn: &mut Conn,
    profile_id: &str,
) -> Result<Option<Provisioning>> {
    let Some(row) = sqlx::query(
        "SELECT id, processing_data, definition_id, definition_version FROM orchestrations WHERE correlation_id = $1
           AND (orchestration_type = $2 OR (orchestration_type IN ($3, $5, $6) AND state = $4))
         ORDER BY created_timestamp DESC LIMIT 1",
    )
    .bind(profile_id)
    .bind(orchestration_types::VPA_DEPLOY)
    .bind(orchestration_types::VPA_MIGRATE)
    .bind(crate::lifecycle::OrchestrationState::Completed.code())
    .bind(orchestration_types::VPA_UPGRADE)
    // A repair re-applied part of the deploy over all of the data before it.
    .bind(orchestration_types::VPA_RECONCILE)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    provisioning(&row)
}

/// The orchestration `id` as a [`Provisioning`]; None when it is gone.
pub(crate) async fn provisioning_by_id(conn: &mut Conn, id: &str) -> Result<Option<Provisioning>> {
    let row = sqlx::query(
        "SELECT id, processing_data, definition_id, definition_version FROM orchestrations WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some(row) => provisioning(&row),
        None => Ok(None),
    }
}

fn provisioning(row: &crate::store::Row) -> Result<Option<Provisioning>> {
    let mut data: Properties = from_json(row.get("processing_data"), "deploy processing data")?;
    // A migration's phase or an upgrade's versions are no business of what runs next.
    data.remove(keys::MIGRATION);
    data.remove(keys::UPGRADE);
    Ok(Some(Provisioning {
        id: row.get("id"),
        data,
        template: row.get("definition_id"),
        version: row.get("definition_version"),
    }))
}

/// A profile of any tenant by its id (its participant context id); None when there is none.
pub(crate) async fn find(conn: &mut Conn, id: &str) -> Result<Option<ParticipantProfile>> {
    let row = sqlx::query(AssertSqlSafe(format!("{SELECT} WHERE id = $1")))
        .bind(id)
        .fetch_optional(conn)
        .await?;
    row.map(|row| read(&row)).transpose()
}

/// A profile of any tenant by its id, or "not found": for the server's own work on it.
pub(crate) async fn fetch_any(conn: &mut Conn, id: &str) -> Result<ParticipantProfile> {
    find(conn, id)
        .await?
        .ok_or_else(|| ManagerError::not_found(format!("participant profile '{id}' not found")))
}

/// A profile of `tenant_id`; one of another tenant is "not found".
pub(crate) async fn fetch(
    conn: &mut Conn,
    tenant_id: &str,
    id: &str,
) -> Result<ParticipantProfile> {
    read(&tenant_row(conn, tenant_id, id, "").await?)
}

/// The row of a profile of `tenant_id`: the columns [`read`] reads and then `extra`
/// (empty, or `, <expression> AS <name>`); one of another tenant is "not found".
async fn tenant_row(conn: &mut Conn, tenant_id: &str, id: &str, extra: &str) -> Result<store::Row> {
    sqlx::query(AssertSqlSafe(format!(
        "SELECT {}{extra} FROM participant_profiles WHERE id = $1 AND tenant_id = $2",
        profile_columns!()
    )))
    .bind(id)
    .bind(tenant_id)
    .fetch_optional(conn)
    .await?
    .ok_or_else(|| ManagerError::not_found(format!("participant profile '{id}' not found")))
}

/// A page of a tenant's profiles, sorted by id.
pub async fn list(
    db: &Db,
    tenant_id: &str,
    page: store::Page,
) -> Result<Paged<ParticipantProfile>> {
    tenants::get(&mut *db.acquire().await?, tenant_id).await?;
    let (rows, total) = store::paged(db, SELECT, Some(("tenant_id", tenant_id)), page).await?;
    let items = rows.iter().map(read).collect::<Result<_>>()?;
    Ok(Paged { items, total, page })
}

/// Profiles matching a predicate, sorted by id.
pub async fn query(
    db: &Db,
    predicate: &Predicate,
    page: store::Page,
) -> Result<Vec<ParticipantProfile>> {
    let rows = predicate
        .select_page(SELECT, &profile_field, db.backend(), page)?
        .fetch_all(db.queries())
        .await?;
    rows.iter().map(read).collect()
}

/// A profile as a rollout weighs it.
pub(crate) struct RolloutCandidate {
    pub id: String,
    pub tenant_id: String,
    pub template_version: Option<i64>,
    /// Every VPA active: deployed, not disposing, not in error.
    pub live: bool,
}

/// A page of the profiles `predicate` matches, sorted by id, as rollouts weigh them.
pub(crate) async fn select_for_rollout(
    conn: &mut Conn,
    predicate: &Predicate,
    page: store::Page,
) -> Result<Vec<RolloutCandidate>> {
    let rows = predicate
        .select_page(
            "SELECT id, tenant_id, template_version, vpas FROM participant_profiles",
            &profile_field,
            store::backend_of(conn),
            page,
        )?
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|row| {
            let vpas: Vec<crate::model::Vpa> = from_json(row.get("vpas"), "vpas")?;
            Ok(RolloutCandidate {
                id: row.get("id"),
                tenant_id: row.get("tenant_id"),
                template_version: row.get("template_version"),
                live: !vpas.is_empty() && vpas.iter().all(|v| v.state == VpaState::Active),
            })
        })
        .collect()
}

/// How many profiles match a predicate in all, counted up to [`store::COUNT_LIMIT`] + 1 (see
/// [`store::Total::counted`]).
pub async fn count(db: &Db, predicate: &Predicate) -> Result<i64> {
    let count = predicate.select_count_capped(SELECT, &profile_field, db.backend())?;
    store::count(db.queries(), count).await
}

/// Whose participants [`refuse_while_participants_live`] counts.
#[derive(Debug, Clone, Copy)]
pub enum Owner<'a> {
    /// The participants of the tenant with this id.
    Tenant(&'a str),
    /// The participants placed in the cell with this id.
    Cell(&'a str),
    /// The participants of the dataspace profile with this id.
    DataspaceProfile(&'a str),
}

/// The one guard in front of deleting a tenant, cell or dataspace profile: refused while
/// any participant profile of it has a VPA that is not `disposed`, so that nothing a
/// participant runs on is deleted under it.
pub(crate) async fn refuse_while_participants_live(
    conn: &mut Conn,
    owner: Owner<'_>,
) -> Result<()> {
    let (field, id, what) = match owner {
        Owner::Tenant(id) => ("tenantId", id, format!("tenant '{id}'")),
        Owner::Cell(id) => ("cellId", id, format!("cell '{id}'")),
        Owner::DataspaceProfile(id) => (
            "dataspaceProfileIds",
            id,
            format!("dataspace profile '{id}'"),
        ),
    };
    let predicate = Predicate::parse(&format!("vpas.state != '{}'", VpaState::Disposed))?
        .and_equals(field, Literal::Text(id.to_string()));
    let count = predicate.select_count(SELECT, &profile_field, store::backend_of(conn))?;
    let live = store::count(conn, count).await?;
    if live > 0 {
        return Err(ManagerError::ParticipantsNotDisposed { owner: what, live });
    }
    Ok(())
}

/// The tenant manager's side of the engine: a profile's VPAs follow the orchestrations
/// correlated with it ([`VpaState::after`]). A failed deploy is compensated: the dispose
/// template runs with everything the deploy got done, the VPAs go `disposing` then
/// `disposed`, and the profile keeps the error that caused it.
pub struct ProfileLifecycle;

#[async_trait::async_trait]
impl OrchestrationHooks for ProfileLifecycle {
    async fn claims(&self, conn: &mut Conn, correlation_id: &str) -> Result<bool> {
        Ok(find(conn, correlation_id).await?.is_some())
    }

    fn tenant_sql(&self) -> &'static str {
        "(SELECT tenant_id FROM participant_profiles WHERE participant_profiles.id = orchestrations.correlation_id)"
    }

    async fn finished(
        &self,
        engine: &Engine,
        conn: &mut Conn,
        finished: &Finished<'_>,
    ) -> Result<()> {
        if finished
            .orchestration_type
            .starts_with(orchestration_types::VPA_MIGRATE)
        {
            return migrations::finished(engine, conn, finished).await;
        }
        if finished.orchestration_type == orchestration_types::VPA_UPGRADE {
            return rollouts::finished(conn, finished).await;
        }
        if finished.orchestration_type == orchestration_types::VPA_UPDATE {
            return updates::finished(conn, finished).await;
        }
        if finished.orchestration_type == orchestration_types::VPA_VERIFY {
            return reconciles::verified(engine, conn, finished).await;
        }
        if finished.orchestration_type == orchestration_types::VPA_RECONCILE {
            return reconciles::repaired(conn, finished).await;
        }
        let Some(row) = sqlx::query(AssertSqlSafe(format!("{SELECT} WHERE id = $1")))
            .bind(finished.correlation_id)
            .fetch_optional(&mut *conn)
            .await?
        else {
            return Ok(());
        };
        let mut profile = read(&row)?;
        let vpa_state = match VpaState::after(finished.orchestration_type, finished.state) {
            VpaTransition::Unchanged => return Ok(()),
            VpaTransition::To(state) => state,
            VpaTransition::Compensate => {
                let data = finished.processing_data.clone();
                let (template, version) = (finished.definition_id, finished.definition_version);
                if start_dispose(engine, conn, &profile.id, data, template, version).await? {
                    VpaState::Disposing
                } else {
                    VpaState::Error
                }
            }
        };
        if vpa_state == VpaState::Active {
            profile.properties.insert(
                VPA_STATE_PROPERTY.into(),
                Value::Object(finished.output_data.clone()),
            );
            merge_plugins(&mut profile.plugin_digests, finished.plugin_digests);
        }
        let failed = finished.state == crate::lifecycle::OrchestrationState::Errored;
        let error_detail = finished.error_detail.filter(|_| failed);
        set_vpa_state(conn, &mut profile, vpa_state, error_detail).await?;
        tracing::info!(profile = %profile.id, orchestration = %finished.id, state = %vpa_state, "participant VPAs updated");
        Ok(())
    }
}

/// Records which plugins ran for the participant `profile_id` (per activity type, the
/// sha256) over what earlier orchestrations recorded, for hooks that do not hold the
/// profile; those that do merge with [`merge_plugins`] and write it with the rest.
pub(crate) async fn record_plugins(
    conn: &mut Conn,
    profile_id: &str,
    ran: &[PluginDigest],
) -> Result<()> {
    if ran.is_empty() {
        return Ok(());
    }
    let recorded: Option<String> =
        sqlx::query_scalar("SELECT plugin_digests FROM participant_profiles WHERE id = $1")
            .bind(profile_id)
            .fetch_optional(&mut *conn)
            .await?;
    let Some(recorded) = recorded else {
        return Ok(());
    };
    let mut digests: Vec<PluginDigest> = from_json(&recorded, "plugin digests")?;
    merge_plugins(&mut digests, ran);
    sqlx::query("UPDATE participant_profiles SET plugin_digests = $1 WHERE id = $2")
        .bind(to_json(&digests)?)
        .bind(profile_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// `recorded` with what `ran` names replacing the entry of its activity type, in
/// activity type order.
pub(crate) fn merge_plugins(recorded: &mut Vec<PluginDigest>, ran: &[PluginDigest]) {
    let mut by_type: std::collections::BTreeMap<String, String> = std::mem::take(recorded)
        .into_iter()
        .map(|d| (d.activity_type, d.sha256))
        .collect();
    for digest in ran {
        by_type.insert(digest.activity_type.clone(), digest.sha256.clone());
    }
    *recorded = by_type
        .into_iter()
        .map(|(activity_type, sha256)| PluginDigest {
            activity_type,
            sha256,
        })
        .collect();
}

/// One operation of a participant at a time: refused (naming what runs) while any
/// orchestration of the participant is running, so that a dispose, a migration or an
/// upgrade never races another over the same objects. `what` says what was asked.
pub(crate) async fn refuse_while_busy(conn: &mut Conn, profile_id: &str, what: &str) -> Result<()> {
    let running: Option<String> = sqlx::query_scalar(
        "SELECT orchestration_type FROM orchestrations WHERE correlation_id = $1 AND state = $2 LIMIT 1",
    )
    .bind(profile_id)
    .bind(crate::lifecycle::OrchestrationState::Running.code())
    .fetch_optional(&mut *conn)
    .await?;
    match running {
        Some(running) => Err(ManagerError::Busy(format!(
            "participant profile '{profile_id}' cannot be {what} while its {running} orchestration runs"
        ))),
        None => Ok(()),
    }
}

/// Starts the dispose orchestration of a profile from `data` (base keys plus what the
/// deploy produced), from the template version that provisioned it. False when that
/// template defines no dispose: there is nothing to run. A template deleted since falls
/// back to the newest one that defines dispose, rather than leaving the deploy's work behind.
async fn start_dispose(
    engine: &Engine,
    conn: &mut Conn,
    profile_id: &str,
    data: Properties,
    template: &str,
    version: i64,
) -> Result<bool> {
    let definition = match definitions::provisioned_with(conn, template, version).await? {
        Some(definition) => definition
            .activities
            .get(orchestration_types::VPA_DISPOSE)
            .is_some_and(|a| !a.is_empty())
            .then_some(definition),
        None => {
            tracing::warn!(profile = %profile_id, %template,
                "the deploy's template is gone; disposing with the newest dispose template");
            definitions::select(conn, orchestration_types::VPA_DISPOSE, None).await?
        }
    };
    let Some(definition) = definition else {
        return Ok(false);
    };
    let start = Start {
        correlation_id: profile_id.to_string(),
        orchestration_type: orchestration_types::VPA_DISPOSE.into(),
        definition,
        processing_data: data,
    };
    engine.start(conn, start).await?;
    Ok(true)
}

/// Moves every VPA of `profile` to `state` and stores the profile. An error detail
/// marks the profile as failed; without one, an earlier failure stays on record.
async fn set_vpa_state(
    conn: &mut Conn,
    profile: &mut ParticipantProfile,
    state: VpaState,
    error_detail: Option<&str>,
) -> Result<()> {
    let timestamp = now();
    for vpa in &mut profile.vpas {
        vpa.state = state;
        vpa.state_timestamp = timestamp.clone();
        vpa.version += 1;
    }
    profile.version += 1;
    if let Some(detail) = error_detail {
        profile.error = true;
        profile.error_detail = Some(detail.to_string());
    }
    sqlx::query(
        "UPDATE participant_profiles SET vpas = $1, properties = $2, error = $3, error_detail = $4, disposed = $5,
           plugin_digests = $6, version = version + 1 WHERE id = $7",
    )
    .bind(to_json(&profile.vpas)?)
    .bind(to_json(&profile.properties)?)
    .bind(profile.error as i64)
    .bind(&profile.error_detail)
    .bind((state == VpaState::Disposed) as i64)
    .bind(to_json(&profile.plugin_digests)?)
    .bind(&profile.id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

fn validate_did(identifier: &str) -> Result<()> {
    let mut parts = identifier.splitn(3, ':');
    let ok = parts.next() == Some("did")
        && parts.next().is_some_and(|m| {
            !m.is_empty()
                && m.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
        && parts.next().is_some_and(is_method_specific_id);
    if ok {
        Ok(())
    } else {
        Err(ManagerError::bad_request(format!(
            "identifier '{}' is not a DID (did:<method>:<id>, the id of letters, digits, '.', '-', '_', ':' and %-escapes)",
            identifier.chars().take(256).collect::<String>()
        )))
    }
}

/// W3C DID syntax: `*( *idchar ":" ) 1*idchar`, idchar = ALPHA / DIGIT / "." / "-" /
/// "_" / pct-encoded. Strict on purpose: plugins put the DID into URLs (the Issuer
/// Service's holder path), so a `/`, `?` or `#` in it would address something else.
fn is_method_specific_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if bytes
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) =>
            {
                i += 3;
                continue;
            }
            b if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':') => {}
            _ => return false,
        }
        i += 1;
    }
    !id.is_empty() && !id.ends_with(':')
}

/// The states each profile's VPAs are in, kept by triggers (migration 0010).
const VPA_STATES: KeyTable = KeyTable {
    key: "state",
    table: "participant_vpa_states",
    value: "state",
    row: "profile_id",
};

/// Query fields of profiles and where they are stored.
fn profile_field(field: &str) -> Option<Field> {
    let json = |column| {
        Field::Json(JsonColumn {
            column,
            scalar_keys: &[],
            key_tables: &[],
        })
    };
    Some(match field {
        "id" => Field::Text("id"),
        "identifier" => Field::Text("identifier"),
        "tenantId" => Field::Text("tenant_id"),
        "cellId" => Field::Text("cell_id"),
        "version" => Field::Integer("version"),
        "error" => Field::Bool("error"),
        "errorDetail" => Field::Text("error_detail"),
        "vpas" => Field::Json(JsonColumn {
            column: "vpas",
            scalar_keys: &["id", "type", "state", "cellId", "stateTimestamp"],
            key_tables: &[VPA_STATES],
        }),
        "properties" => json("properties"),
        "participantRoles" => json("participant_roles"),
        "dataspaceProfileIds" => json("dataspace_profile_ids"),
        "templateId" => Field::Text("template_id"),
        "templateVersion" => Field::Integer("template_version"),
        "pluginDigests" => Field::Json(JsonColumn {
            column: "plugin_digests",
            scalar_keys: &["activityType", "sha256"],
            key_tables: &[],
        }),
        "driftState" => Field::Text("drift_state"),
        "driftCount" => Field::Integer("drift_count"),
        _ => return None,
    })
}

/// The columns [`read`] reads.
macro_rules! profile_columns {
    () => {
        "id, version, tenant_id, identifier, participant_roles, dataspace_profile_ids, vpas, properties, error, error_detail,
      template_id, template_version, plugin_digests, pending_vpa_properties, drift, drift_count"
    };
}
use profile_columns;

const SELECT: &str = concat!("SELECT ", profile_columns!(), " FROM participant_profiles");

fn read(row: &crate::store::Row) -> Result<ParticipantProfile> {
    Ok(ParticipantProfile {
        id: row.get("id"),
        version: row.get("version"),
        identifier: row.get("identifier"),
        tenant_id: row.get("tenant_id"),
        participant_roles: from_json(row.get("participant_roles"), "participant roles")?,
        dataspace_profile_ids: from_json(
            row.get("dataspace_profile_ids"),
            "dataspace profile ids",
        )?,
        vpas: from_json(row.get("vpas"), "vpas")?,
        properties: from_json(row.get("properties"), "profile properties")?,
        error: row.get::<i64, _>("error") != 0,
        error_detail: row.get("error_detail"),
        migration: None,
        pending_vpa_properties: row
            .get::<Option<String>, _>("pending_vpa_properties")
            .map(|text| from_json(&text, "pending VPA properties"))
            .transpose()?,
        template_id: row.get("template_id"),
        template_version: row.get("template_version"),
        plugin_digests: from_json(row.get("plugin_digests"), "plugin digests")?,
        drift: row
            .get::<Option<String>, _>("drift")
            .map(|text| from_json(&text, "drift"))
            .transpose()?,
        drift_count: row.get("drift_count"),
    })
}

#[cfg(test)]
mod tests {
    use super::validate_did;

    #[test]
    fn identifiers_must_be_dids() {
        assert!(validate_did("did:web:provider.example").is_ok());
        assert!(validate_did("did:web:localhost%3A8080:provider").is_ok());
        for bad in [
            "",
            "did:",
            "did:web",
            "did:web:",
            "web:x",
            "did:Web:x",
            "did:web:a b",
            "did:web:x/../../other/holders/did:web:victim",
            "did:web:victim.example?x",
            "did:web:victim.example#key",
            "did:web:a%zz",
            "did:web:a:",
        ] {
            assert!(validate_did(bad).is_err(), "{bad} accepted");
        }
    }
}
