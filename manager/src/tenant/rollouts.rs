//! Rollouts: bringing the participants a selector picks to another version of their
//! template, in batches, within a failure budget.
//!
//! A rollout is rows, like a drain: the rollout, and one target row per selected
//! participant written when it is created (so none is skipped, whatever dies). Every
//! manager replica's fleet loop ([`super::operations::run`]) locks each running
//! rollout's row in turn and starts the next upgrade of its current batch while it is
//! under its parallelism, one per transaction. An upgrade is the orchestration
//! `cfm.orchestration.vpa.upgrade`; the engine's hook ([`finished`]) records its end on
//! the profile and the target in the transaction that ends it. A participant is upgraded
//! once at a time (a unique index over upgrading targets, and no upgrade starts while
//! another orchestration of the participant runs), and a failed upgrade leaves it on its
//! old version, active: an aborted rollout leaves each participant on one version or the
//! other, never between.

use cfm_protocol::{keys, orchestration_types};
use serde_json::{Map, Value, json};
use sqlx::{AssertSqlSafe, Row};
use tracing::Instrument;

use crate::error::{ManagerError, Result};
use crate::events;
use crate::lifecycle::{OrchestrationState, RolloutState, RolloutTargetState};
use crate::model::{
    FailureBudget, Rollout, RolloutProgress, RolloutTarget, VPA_STATE_PROPERTY, VpaState, new_id,
    now,
};
use crate::provision::{Engine, Finished, Start, definitions};
use crate::query::{Literal, Predicate};
use crate::store::{self, Conn, Page, Paged, Table, Total, from_json, to_json};
use crate::tenant::{cells, migrations, profiles};

/// Participants per batch, unless asked otherwise.
pub const DEFAULT_BATCH_SIZE: i64 = 25;
/// The largest batch.
pub const MAX_BATCH_SIZE: i64 = 10_000;
/// The most upgrades a rollout runs at once.
pub const MAX_PARALLEL: i64 = 256;
/// The most participants one rollout selects: narrow the selector, or run several.
pub const MAX_TARGETS: usize = 100_000;
/// The longest pause between batches: a day.
pub const MAX_PAUSE_MS: i64 = 86_400_000;
/// Targets listed on one page, at most.
const MAX_LISTED: i64 = 1_000;

/// What `POST /rollouts` asks for.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewRollout {
    /// The orchestration definition whose participants are upgraded.
    pub template_id: String,
    /// The version to bring them to; the definition's newest when absent.
    pub version: Option<i64>,
    /// A predicate over participant profiles (as `/participant-profiles/query` takes),
    /// e.g. `templateVersion = 3 AND tenantId = '...'`; every participant of the
    /// template not on the version yet when absent.
    pub selector: Option<String>,
    /// Participants per batch, 1 to 10,000; 25 when absent. A batch starts when the one
    /// before has finished.
    pub batch_size: Option<i64>,
    /// Upgrades at once, 1 to 256; the batch size (at most 256) when absent.
    pub max_parallel: Option<i64>,
    /// Failed upgrades tolerated before the rollout pauses itself: `{"count": n}` or
    /// `{"percent": p}` of the selected participants; none (the first failure pauses it)
    /// when absent.
    pub failure_budget: Option<FailureBudget>,
    /// How long to wait between batches, 0 to 86,400,000 ms; 0 when absent.
    pub pause_between_batches_ms: Option<i64>,
}

/// Selects the participants provisioned with the template on another version than the
/// target (and matching the selector), writes them as the rollout's targets in batches,
/// and starts the rollout. Refused while another rollout of the template is running or
/// paused.
pub async fn create(engine: &Engine, new: NewRollout) -> Result<Rollout> {
    let bad = |m: String| Err(ManagerError::bad_request(m));
    let batch_size = new.batch_size.unwrap_or(DEFAULT_BATCH_SIZE);
    if !(1..=MAX_BATCH_SIZE).contains(&batch_size) {
        return bad(format!("batchSize must be 1 to {MAX_BATCH_SIZE}"));
    }
    let max_parallel = new.max_parallel.unwrap_or(batch_size.min(MAX_PARALLEL));
    if !(1..=MAX_PARALLEL).contains(&max_parallel) {
        return bad(format!("maxParallel must be 1 to {MAX_PARALLEL}"));
    }
    let pause_ms = new.pause_between_batches_ms.unwrap_or(0);
    if !(0..=MAX_PAUSE_MS).contains(&pause_ms) {
        return bad(format!(
            "pauseBetweenBatchesMs must be 0 to {MAX_PAUSE_MS} (a day)"
        ));
    }
    let budget = new.failure_budget.unwrap_or(FailureBudget::Count(0));
    match budget {
        FailureBudget::Count(n) if n < 0 => {
            return bad("failureBudget.count must be 0 or more".into());
        }
        FailureBudget::Percent(p) if !(0.0..=100.0).contains(&p) => {
            return bad("failureBudget.percent must be 0 to 100".into());
        }
        _ => {}
    }
    definitions::check_template_ref(&new.template_id)?;
    let selector_text = new.selector.unwrap_or_default();
    let selector = Predicate::parse(&selector_text)?;

    let mut tx = store::write(engine.db()).await?;
    // Two rollouts of one template asked at once take turns here, so the second sees the
    // first and is refused (rather than failing on the unique index).
    sqlx::query("UPDATE orchestration_definitions SET version = version WHERE id = $1")
        .bind(&new.template_id)
        .execute(&mut *tx)
        .await?;
    let current = match definitions::get_orchestration(&mut tx, &new.template_id).await {
        Ok(definition) => definition,
        Err(ManagerError::NotFound(_)) => {
            return bad(format!(
                "orchestration definition '{}' does not exist",
                new.template_id
            ));
        }
        Err(e) => return Err(e),
    };
    let target_version = new.version.unwrap_or(current.version);
    let target = match definitions::get_version(&mut tx, &new.template_id, target_version).await {
        Ok(definition) => definition,
        Err(ManagerError::NotFound(message)) => return bad(message),
        Err(e) => return Err(e),
    };
    definitions::redeploying(target, orchestration_types::VPA_UPGRADE)?;
    if let Some(running) = sqlx::query_scalar::<_, String>(
        "SELECT id FROM rollouts WHERE template_id = $1 AND state IN ($2, $3)",
    )
    .bind(&new.template_id)
    .bind(RolloutState::Running)
    .bind(RolloutState::Paused)
    .fetch_optional(&mut *tx)
    .await?
    {
        return Err(ManagerError::conflict(format!(
            "rollout '{running}' of orchestration definition '{}' is under way; abort it or wait for it to finish",
            new.template_id
        )));
    }
    let selected = selected(&mut tx, &selector, &new.template_id, target_version).await?;
    let total = selected.len() as i64;
    let max_failures = match budget {
        FailureBudget::Count(n) => n,
        FailureBudget::Percent(p) => ((total as f64) * p / 100.0).floor() as i64,
    };
    let timestamp = now();
    let id = new_id();
    sqlx::query(
        "INSERT INTO rollouts (id, version, template_id, target_version, selector, batch_size, max_parallel,
           failure_budget, max_failures, pause_ms, state, total, batch, failures, created_at, updated_at)
         VALUES ($1, 0, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 0, 0, $12, $12)",
    )
    .bind(&id)
    .bind(&new.template_id)
    .bind(target_version)
    .bind(&selector_text)
    .bind(batch_size)
    .bind(max_parallel)
    .bind(to_json(&budget)?)
    .bind(max_failures)
    .bind(pause_ms)
    .bind(RolloutState::Running)
    .bind(total)
    .bind(&timestamp)
    .execute(&mut *tx)
    .await?;
    insert_targets(&mut tx, &id, &selected, batch_size, &timestamp).await?;
    let rollout = fetch(&mut tx, &id).await?;
    rollout_event(&mut tx, &rollout.id, rollout.state, None).await?;
    tx.commit().await?;
    tracing::info!(rollout = %id, template = %new.template_id, version = target_version, participants = total,
        batch_size, max_parallel, max_failures, "rollout started");
    Ok(rollout)
}

/// A page of rollouts, newest first, with their progress.
pub async fn list(engine: &Engine, page: Page) -> Result<Paged<Rollout>> {
    let page = Page::new(Some(page.offset), Some(page.limit.min(MAX_LISTED)));
    let mut conn = engine.db().acquire().await?;
    let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM rollouts")
        .fetch_one(&mut *conn)
        .await?;
    let rows = sqlx::query(AssertSqlSafe(format!(
        "{SELECT} ORDER BY created_at DESC, id LIMIT $1 OFFSET $2"
    )))
    .bind(page.limit)
    .bind(page.offset)
    .fetch_all(&mut *conn)
    .await?;
    let mut items = Vec::with_capacity(rows.len());
    for row in &rows {
        let mut rollout = read(row)?;
        rollout.progress = progress(&mut conn, &rollout.id).await?;
        items.push(rollout);
    }
    Ok(Paged {
        items,
        total: Total::Exact(total),
        page,
    })
}

/// One rollout with its progress.
pub async fn get(engine: &Engine, id: &str) -> Result<Rollout> {
    let mut conn = engine.db().acquire().await?;
    fetch(&mut conn, id).await
}

/// A page of a rollout's participants in the order they are upgraded, only those in
/// `state` when given: per-participant results.
pub async fn targets(
    engine: &Engine,
    id: &str,
    state: Option<RolloutTargetState>,
    page: Page,
) -> Result<Paged<RolloutTarget>> {
    let page = Page::new(Some(page.offset), Some(page.limit.min(MAX_LISTED)));
    let mut conn = engine.db().acquire().await?;
    fetch(&mut conn, id).await?;
    // `$2 IS NULL` needs a typed parameter on PostgreSQL; an empty text stands for "any".
    let state = state.map(|s| s.as_str()).unwrap_or_default();
    let total: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM rollout_targets WHERE rollout_id = $1 AND ($2 = '' OR state = $2)",
    )
    .bind(id)
    .bind(state)
    .fetch_one(&mut *conn)
    .await?;
    let rows = sqlx::query(
        "SELECT profile_id, tenant_id, batch, state, from_version, orchestration_id, attempts, detail, updated_at
         FROM rollout_targets WHERE rollout_id = $1 AND ($2 = '' OR state = $2)
         ORDER BY position LIMIT $3 OFFSET $4",
    )
    .bind(id)
    .bind(state)
    .bind(page.limit)
    .bind(page.offset)
    .fetch_all(&mut *conn)
    .await?;
    let items = rows.iter().map(read_target).collect::<Result<_>>()?;
    Ok(Paged {
        items,
        total: Total::Exact(total),
        page,
    })
}

/// What an operator can do to a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Start no further upgrades; those under way finish.
    Pause,
    /// Start upgrades again; the failed ones are tried again and the budget starts over.
    Resume,
    /// Stop for good: no further upgrades; untouched participants stay on their version.
    Abort,
}

/// Pauses, resumes or aborts a rollout. Asking for the state it is in changes nothing;
/// a finished rollout cannot be changed.
pub async fn control(engine: &Engine, id: &str, control: Control) -> Result<Rollout> {
    let mut tx = store::write(engine.db()).await?;
    if !store::lock_row(&mut tx, Table::Rollouts, id).await? {
        return Err(ManagerError::not_found(format!("rollout '{id}' not found")));
    }
    let rollout = fetch(&mut tx, id).await?;
    use RolloutState::*;
    let next = match (control, rollout.state) {
        (Control::Pause, Running | Paused) => Paused,
        (Control::Resume, Running | Paused) => Running,
        (Control::Abort, Running | Paused | Aborted) => Aborted,
        (_, state) => {
            return Err(ManagerError::conflict(format!(
                "rollout '{id}' is {state}; it can no longer be changed"
            )));
        }
    };
    if next == rollout.state {
        tx.commit().await?;
        return Ok(rollout);
    }
    match control {
        Control::Pause => set_state(&mut tx, id, Paused, Some("paused by the operator")).await?,
        Control::Resume => {
            let retried = sqlx::query(
                "UPDATE rollout_targets SET state = $1, detail = NULL, updated_at = $2
                 WHERE rollout_id = $3 AND state = $4",
            )
            .bind(RolloutTargetState::Pending)
            .bind(now())
            .bind(id)
            .bind(RolloutTargetState::Failed)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            sqlx::query("UPDATE rollouts SET failures = 0 WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            set_state(&mut tx, id, Running, None).await?;
            tracing::info!(rollout = %id, retried, "rollout resumed");
        }
        Control::Abort => {
            sqlx::query(
                "UPDATE rollout_targets SET state = $1, detail = $2, updated_at = $3
                 WHERE rollout_id = $4 AND state = $5",
            )
            .bind(RolloutTargetState::Skipped)
            .bind("the rollout was aborted first")
            .bind(now())
            .bind(id)
            .bind(RolloutTargetState::Pending)
            .execute(&mut *tx)
            .await?;
            set_state(&mut tx, id, Aborted, Some("aborted by the operator")).await?;
        }
    }
    let rollout = fetch(&mut tx, id).await?;
    tx.commit().await?;
    tracing::info!(rollout = %id, state = %rollout.state, "rollout changed by the operator");
    Ok(rollout)
}

/// One pass over the running rollouts; public so that tests can drive it.
pub async fn tick(engine: &Engine) -> Result<()> {
    let running: Vec<String> = sqlx::query_scalar("SELECT id FROM rollouts WHERE state = $1")
        .bind(RolloutState::Running)
        .fetch_all(engine.db().queries())
        .await?;
    for id in running {
        // Instrumented, not entered: a guard held across an await leaves the span entered
        // on whichever thread the task last ran, and the tracing registry then panics
        // (debug builds) or misattributes events when the task moves.
        let span = tracing::info_span!("rollout", id = %id);
        if let Err(e) = tick_rollout(engine, &id).instrument(span).await {
            tracing::warn!(rollout = %id, "rolling out: {e}");
        }
    }
    Ok(())
}

/// The engine's hook for upgrade orchestrations, in the transaction that ends one: a
/// completed upgrade moves the participant to its version (and records its outputs and
/// plugins); either way its rollout target records the end, and a failure past the
/// rollout's budget pauses the rollout.
pub(crate) async fn finished(conn: &mut Conn, finished: &Finished<'_>) -> Result<()> {
    let upgrade = finished
        .processing_data
        .get(keys::UPGRADE)
        .cloned()
        .unwrap_or(Value::Null);
    let completed = finished.state == OrchestrationState::Completed;
    if completed {
        store::lock_row(conn, Table::ParticipantProfiles, finished.correlation_id).await?;
        if let Some(mut profile) = profiles::find(conn, finished.correlation_id).await? {
            let vpa_state = profile
                .properties
                .entry(VPA_STATE_PROPERTY)
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(state) = vpa_state {
                state.extend(finished.output_data.clone());
            }
            profiles::merge_plugins(&mut profile.plugin_digests, finished.plugin_digests);
            sqlx::query(
                "UPDATE participant_profiles SET template_id = $1, template_version = $2, properties = $3,
                   plugin_digests = $4, version = version + 1 WHERE id = $5",
            )
            .bind(finished.definition_id)
            .bind(finished.definition_version)
            .bind(to_json(&profile.properties)?)
            .bind(to_json(&profile.plugin_digests)?)
            .bind(&profile.id)
            .execute(&mut *conn)
            .await?;
            tracing::info!(profile = %profile.id, template = %finished.definition_id,
                version = finished.definition_version, "participant upgraded");
        }
    }
    let Some(rollout_id) = upgrade.get("rolloutId").and_then(Value::as_str) else {
        return Ok(());
    };
    let (state, detail) = if completed {
        (RolloutTargetState::Upgraded, None)
    } else {
        (RolloutTargetState::Failed, finished.error_detail)
    };
    let ended: Option<String> = sqlx::query_scalar(
        "UPDATE rollout_targets SET state = $1, detail = $2, updated_at = $3
         WHERE rollout_id = $4 AND profile_id = $5 AND orchestration_id = $6 AND state = $7
         RETURNING tenant_id",
    )
    .bind(state)
    .bind(detail)
    .bind(now())
    .bind(rollout_id)
    .bind(finished.correlation_id)
    .bind(finished.id)
    .bind(RolloutTargetState::Upgrading)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(tenant_id) = ended else {
        return Ok(());
    };
    let to_version = upgrade.get("toVersion").cloned().unwrap_or(Value::Null);
    participant_event(
        conn,
        rollout_id,
        &tenant_id,
        finished.correlation_id,
        json!({"state": state, "toVersion": to_version, "detail": detail}),
    )
    .await?;
    if completed {
        return Ok(());
    }
    let row = sqlx::query(
        "UPDATE rollouts SET failures = failures + 1, version = version + 1, updated_at = $1 WHERE id = $2
         RETURNING failures, max_failures, state",
    )
    .bind(now())
    .bind(rollout_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(());
    };
    let (failures, budget): (i64, i64) = (row.get("failures"), row.get("max_failures"));
    let running = row.get::<String, _>("state") == RolloutState::Running.as_str();
    tracing::warn!(rollout = %rollout_id, profile = %finished.correlation_id, failures, budget, "upgrade failed");
    if running && failures > budget {
        let detail = format!(
            "failure budget spent: {failures} upgrade(s) failed, the budget is {budget}; fix the cause and resume (failed participants are tried again) or abort"
        );
        set_state(conn, rollout_id, RolloutState::Paused, Some(&detail)).await?;
        tracing::warn!(rollout = %rollout_id, "{detail}");
    }
    Ok(())
}

/// Starts upgrades of one rollout, one per transaction, while it is running and under
/// its parallelism; ends it when nothing is left.
async fn tick_rollout(engine: &Engine, id: &str) -> Result<()> {
    loop {
        let engine = engine.claiming();
        let mut tx = store::write(engine.db()).await?;
        store::lock_row(&mut tx, Table::Rollouts, id).await?;
        let rollout = fetch(&mut tx, id).await?;
        if rollout.state != RolloutState::Running {
            return Ok(());
        }
        let started = step(&engine, &mut tx, &rollout).await?;
        tx.commit().await?;
        engine.committed();
        if !started {
            return Ok(());
        }
    }
}

/// Moves the rollout one step: to its next batch (after its pause), to its end, or
/// starts one upgrade of its current batch. True when an upgrade started.
async fn step(engine: &Engine, tx: &mut Conn, rollout: &Rollout) -> Result<bool> {
    let progress = rollout.progress;
    if progress.pending == 0 && progress.upgrading == 0 {
        let detail = (progress.failed > 0).then(|| {
            format!(
                "{} upgraded, {} failed within the budget, {} skipped",
                progress.upgraded, progress.failed, progress.skipped
            )
        });
        set_state(tx, &rollout.id, RolloutState::Completed, detail.as_deref()).await?;
        tracing::info!(rollout = %rollout.id, upgraded = progress.upgraded, failed = progress.failed,
            skipped = progress.skipped, "rollout completed");
        return Ok(false);
    }
    let Some(batch): Option<i64> = sqlx::query_scalar(
        "SELECT MIN(batch) FROM rollout_targets WHERE rollout_id = $1 AND state IN ($2, $3)",
    )
    .bind(&rollout.id)
    .bind(RolloutTargetState::Pending)
    .bind(RolloutTargetState::Upgrading)
    .fetch_one(&mut *tx)
    .await?
    else {
        return Ok(false);
    };
    if batch > rollout.batch {
        // The batch before has finished: the next starts after the pause.
        let not_before = (chrono::Utc::now()
            + chrono::Duration::milliseconds(rollout.pause_between_batches_ms))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        sqlx::query(
            "UPDATE rollouts SET batch = $1, batch_not_before = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(batch)
        .bind(&not_before)
        .bind(now())
        .bind(&rollout.id)
        .execute(&mut *tx)
        .await?;
        tracing::info!(rollout = %rollout.id, batch, "next batch");
        if rollout.pause_between_batches_ms > 0 {
            return Ok(false);
        }
    } else if let Some(not_before) = batch_not_before(tx, &rollout.id).await?
        && now() < not_before
    {
        return Ok(false);
    }
    if progress.upgrading >= rollout.max_parallel {
        return Ok(false);
    }
    let candidates = sqlx::query(
        "SELECT position, profile_id FROM rollout_targets WHERE rollout_id = $1 AND batch = $2 AND state = $3
         ORDER BY position LIMIT $4",
    )
    .bind(&rollout.id)
    .bind(batch)
    .bind(RolloutTargetState::Pending)
    // Some may be busy with another operation; look a little further than one.
    .bind((rollout.max_parallel - progress.upgrading) * 4)
    .fetch_all(&mut *tx)
    .await?;
    for candidate in &candidates {
        let position: i64 = candidate.get("position");
        let profile_id: String = candidate.get("profile_id");
        match start_target(engine, tx, rollout, position, &profile_id).await? {
            Started::Upgrading => return Ok(true),
            Started::Skipped => return Ok(true),
            Started::Busy => continue,
        }
    }
    Ok(false)
}

enum Started {
    /// Its upgrade started.
    Upgrading,
    /// It no longer qualifies; marked so.
    Skipped,
    /// Another operation of the participant runs; tried again later.
    Busy,
}

/// Starts the upgrade of one target, or skips it when the participant no longer
/// qualifies.
async fn start_target(
    engine: &Engine,
    tx: &mut Conn,
    rollout: &Rollout,
    position: i64,
    profile_id: &str,
) -> Result<Started> {
    store::lock_row(tx, Table::ParticipantProfiles, profile_id).await?;
    let profile = profiles::find(tx, profile_id).await?;
    let not_active = |p: &crate::model::ParticipantProfile| {
        p.vpas.is_empty() || p.vpas.iter().any(|v| v.state != VpaState::Active)
    };
    let skip = match &profile {
        None => Some("the participant profile is gone".to_string()),
        Some(p) if not_active(p) => Some(format!(
            "not active (VPAs {})",
            p.vpas.first().map_or("missing", |v| v.state.as_str())
        )),
        Some(p) if p.template_id.as_deref() != Some(rollout.template_id.as_str()) => Some(format!(
            "provisioned with orchestration definition '{}' now",
            p.template_id.as_deref().unwrap_or("none")
        )),
        Some(p) if p.template_version == Some(rollout.target_version) => {
            Some(format!("on version {} already", rollout.target_version))
        }
        Some(_) => None,
    };
    if let Some(reason) = skip {
        set_target(
            tx,
            rollout,
            position,
            RolloutTargetState::Skipped,
            Some(&reason),
        )
        .await?;
        tracing::info!(rollout = %rollout.id, profile = %profile_id, %reason, "participant skipped");
        return Ok(Started::Skipped);
    }
    let Some(profile) = profile else {
        return Ok(Started::Skipped);
    };
    if migrations::unfinished(tx, profile_id).await?.is_some()
        || profiles::refuse_while_busy(tx, profile_id, "upgraded")
            .await
            .is_err()
    {
        return Ok(Started::Busy);
    }
    let definition =
        match definitions::get_version(tx, &rollout.template_id, rollout.target_version).await {
            Ok(definition) => {
                definitions::redeploying(definition, orchestration_types::VPA_UPGRADE)?
            }
            Err(ManagerError::NotFound(message)) => {
                let detail = format!("the target version is gone: {message}");
                set_state(tx, &rollout.id, RolloutState::Failed, Some(&detail)).await?;
                return Ok(Started::Skipped);
            }
            Err(e) => return Err(e),
        };
    let provisioned = profiles::last_provisioning(tx, profile_id)
        .await?
        .ok_or_else(|| {
            ManagerError::Corrupt(format!(
                "participant profile '{profile_id}' has no deploy orchestration"
            ))
        })?;
    let cell = cells::get(tx, &profile.vpas[0].cell_id).await?;
    let mut data = provisioned.data;
    data.insert(
        keys::VPA_DATA.into(),
        profiles::vpa_data(&profile.vpas, &cell),
    );
    let from_version = profile.template_version.unwrap_or(provisioned.version);
    data.insert(
        keys::UPGRADE.into(),
        json!({"templateId": rollout.template_id, "fromVersion": from_version,
               "toVersion": rollout.target_version, "rolloutId": rollout.id}),
    );
    let orchestration_id = engine
        .start(
            tx,
            Start {
                correlation_id: profile_id.to_string(),
                orchestration_type: orchestration_types::VPA_UPGRADE.into(),
                definition,
                processing_data: data,
            },
        )
        .await?;
    sqlx::query(
        "UPDATE rollout_targets SET state = $1, from_version = $2, orchestration_id = $3, attempts = attempts + 1,
           detail = NULL, updated_at = $4 WHERE rollout_id = $5 AND position = $6",
    )
    .bind(RolloutTargetState::Upgrading)
    .bind(from_version)
    .bind(&orchestration_id)
    .bind(now())
    .bind(&rollout.id)
    .bind(position)
    .execute(&mut *tx)
    .await?;
    participant_event(
        tx,
        &rollout.id,
        &profile.tenant_id,
        profile_id,
        json!({"state": RolloutTargetState::Upgrading, "fromVersion": from_version,
               "toVersion": rollout.target_version, "orchestrationId": orchestration_id}),
    )
    .await?;
    tracing::info!(rollout = %rollout.id, profile = %profile_id, orchestration = %orchestration_id,
        from_version, to_version = rollout.target_version, "upgrade started");
    Ok(Started::Upgrading)
}

/// Rows written per statement: a rollout of 100,000 participants takes 200 statements,
/// not 100,000, inside the transaction that creates it.
const TARGETS_PER_STATEMENT: usize = 500;

/// Writes the selected participants as the rollout's targets, in order, cut into batches.
async fn insert_targets(
    tx: &mut Conn,
    rollout_id: &str,
    selected: &[(String, String)],
    batch_size: i64,
    timestamp: &str,
) -> Result<()> {
    for (chunk_index, chunk) in selected.chunks(TARGETS_PER_STATEMENT).enumerate() {
        let rows: Vec<String> = (0..chunk.len())
            .map(|i| {
                let p = i * 4;
                format!(
                    "($1, ${}, ${}, ${}, ${}, $2, $3)",
                    p + 4,
                    p + 5,
                    p + 6,
                    p + 7
                )
            })
            .collect();
        let sql = format!(
            "INSERT INTO rollout_targets (rollout_id, position, batch, profile_id, tenant_id, state, updated_at)
             VALUES {}",
            rows.join(", ")
        );
        // $1..$3 are shared; then four per row: position, batch, profile, tenant.
        let mut query = sqlx::query(AssertSqlSafe(sql))
            .bind(rollout_id)
            .bind(RolloutTargetState::Pending)
            .bind(timestamp);
        for (i, (profile_id, tenant_id)) in chunk.iter().enumerate() {
            let position = (chunk_index * TARGETS_PER_STATEMENT + i) as i64;
            query = query
                .bind(position)
                .bind(position / batch_size)
                .bind(profile_id)
                .bind(tenant_id);
        }
        query.execute(&mut *tx).await?;
    }
    Ok(())
}

/// The live participants provisioned with `template_id` on another version than
/// `version` that `selector` matches, sorted by id: (profile id, tenant id).
async fn selected(
    conn: &mut Conn,
    selector: &Predicate,
    template_id: &str,
    version: i64,
) -> Result<Vec<(String, String)>> {
    let predicate = selector
        .clone()
        .and_equals("templateId", Literal::Text(template_id.to_string()));
    let mut selected = Vec::new();
    let mut page = Page::new(Some(0), None);
    loop {
        let rows = profiles::select_for_rollout(conn, &predicate, page).await?;
        let done = (rows.len() as i64) < page.limit;
        for row in rows {
            if row.live && row.template_version != Some(version) {
                selected.push((row.id, row.tenant_id));
            }
        }
        if selected.len() > MAX_TARGETS {
            return Err(ManagerError::bad_request(format!(
                "the selector picks more than {MAX_TARGETS} participants; narrow it (by tenantId, cellId, ...) and roll out in several rollouts"
            )));
        }
        if done {
            return Ok(selected);
        }
        page.offset += page.limit;
    }
}

async fn batch_not_before(conn: &mut Conn, id: &str) -> Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT batch_not_before FROM rollouts WHERE id = $1")
            .bind(id)
            .fetch_one(conn)
            .await?,
    )
}

async fn set_target(
    conn: &mut Conn,
    rollout: &Rollout,
    position: i64,
    state: RolloutTargetState,
    detail: Option<&str>,
) -> Result<()> {
    let row = sqlx::query(
        "UPDATE rollout_targets SET state = $1, detail = $2, updated_at = $3 WHERE rollout_id = $4 AND position = $5
         RETURNING tenant_id, profile_id",
    )
    .bind(state)
    .bind(detail)
    .bind(now())
    .bind(&rollout.id)
    .bind(position)
    .fetch_one(&mut *conn)
    .await?;
    participant_event(
        conn,
        &rollout.id,
        &row.get::<String, _>("tenant_id"),
        &row.get::<String, _>("profile_id"),
        json!({"state": state, "detail": detail}),
    )
    .await
}

async fn set_state(
    conn: &mut Conn,
    id: &str,
    state: RolloutState,
    detail: Option<&str>,
) -> Result<()> {
    store::set_operation_state(conn, Table::Rollouts, id, state.as_str(), detail).await?;
    rollout_event(conn, id, state, detail).await
}

/// A rollout's change of state, as an operator-wide event.
async fn rollout_event(
    conn: &mut Conn,
    id: &str,
    state: RolloutState,
    detail: Option<&str>,
) -> Result<()> {
    let data = json!({"id": id, "state": state, "detail": detail});
    events::record(conn, events::kinds::ROLLOUT, None, id, data).await
}

/// One participant's change of state in a rollout, as an event of its tenant; `data`
/// holds the state and what goes with it.
async fn participant_event(
    conn: &mut Conn,
    rollout_id: &str,
    tenant_id: &str,
    profile_id: &str,
    mut data: Value,
) -> Result<()> {
    data["rolloutId"] = json!(rollout_id);
    data["profileId"] = json!(profile_id);
    events::record(
        conn,
        events::kinds::ROLLOUT_PARTICIPANT,
        Some(tenant_id),
        profile_id,
        data,
    )
    .await
}

async fn fetch(conn: &mut Conn, id: &str) -> Result<Rollout> {
    let row = sqlx::query(AssertSqlSafe(format!("{SELECT} WHERE id = $1")))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| ManagerError::not_found(format!("rollout '{id}' not found")))?;
    let mut rollout = read(&row)?;
    rollout.progress = progress(conn, id).await?;
    Ok(rollout)
}

/// A rollout's targets per state, by one grouped count.
async fn progress(conn: &mut Conn, id: &str) -> Result<RolloutProgress> {
    let rows = sqlx::query(
        "SELECT state, COUNT(*) AS n FROM rollout_targets WHERE rollout_id = $1 GROUP BY state",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    let mut progress = RolloutProgress::default();
    for row in rows {
        let n: i64 = row.get("n");
        let state: RolloutTargetState = row
            .get::<String, _>("state")
            .parse()
            .map_err(|e| ManagerError::Corrupt(format!("rollout target state: {e}")))?;
        *match state {
            RolloutTargetState::Pending => &mut progress.pending,
            RolloutTargetState::Upgrading => &mut progress.upgrading,
            RolloutTargetState::Upgraded => &mut progress.upgraded,
            RolloutTargetState::Failed => &mut progress.failed,
            RolloutTargetState::Skipped => &mut progress.skipped,
        } += n;
    }
    Ok(progress)
}

const SELECT: &str = "SELECT id, version, template_id, target_version, selector, batch_size, max_parallel,
    failure_budget, max_failures, pause_ms, state, total, batch, failures, detail, created_at, updated_at FROM rollouts";

fn read(row: &crate::store::Row) -> Result<Rollout> {
    Ok(Rollout {
        id: row.get("id"),
        version: row.get("version"),
        template_id: row.get("template_id"),
        target_version: row.get("target_version"),
        selector: row.get("selector"),
        batch_size: row.get("batch_size"),
        max_parallel: row.get("max_parallel"),
        failure_budget: from_json(row.get("failure_budget"), "failure budget")?,
        max_failures: row.get("max_failures"),
        pause_between_batches_ms: row.get("pause_ms"),
        state: row
            .get::<String, _>("state")
            .parse()
            .map_err(|e| ManagerError::Corrupt(format!("rollout state: {e}")))?,
        total: row.get("total"),
        batch: row.get("batch"),
        failures: row.get("failures"),
        progress: RolloutProgress::default(),
        detail: row.get("detail"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    })
}

fn read_target(row: &crate::store::Row) -> Result<RolloutTarget> {
    Ok(RolloutTarget {
        profile_id: row.get("profile_id"),
        tenant_id: row.get("tenant_id"),
        batch: row.get("batch"),
        state: row
            .get::<String, _>("state")
            .parse()
            .map_err(|e| ManagerError::Corrupt(format!("rollout target state: {e}")))?,
        from_version: row.get("from_version"),
        orchestration_id: row.get("orchestration_id"),
        attempts: row.get("attempts"),
        detail: row.get("detail"),
        updated_at: row.get("updated_at"),
    })
}
