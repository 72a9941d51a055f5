//! Drift repair. A verify (`cfm.orchestration.vpa.verify`) runs the template version that
//! provisioned an active participant with every write a dry run (see the agent host), so
//! each step's output says what its deploy would change now: drift. Its hook records the
//! drift on the profile and, when the verify was asked to repair, starts a reconcile
//! (`cfm.orchestration.vpa.reconcile`): the drifted deploy activities, and those that
//! depend on them, re-run over the data that provisioned the participant. Both run as
//! orchestrations, so a crash anywhere resumes where it stopped, and both refuse to start
//! while another orchestration of the participant runs.
//!
//! `POST .../participant-profiles/{id}/reconcile` starts one; with `--reconcile-interval`
//! every manager replica's fleet loop ([`super::operations::run`]) also walks the fleet,
//! the participants checked longest ago first, with at most `max_parallel` verifies and
//! reconciles running at once.

use std::collections::BTreeSet;
use std::time::Duration;

use cfm_protocol::{keys, orchestration_types};
use serde_json::{Value, json};
use sqlx::Connection;

use crate::error::{ManagerError, Result};
use crate::events;
use crate::lifecycle::{OrchestrationState, VpaState};
use crate::model::{ActivityDrift, ActivitySpec, Drift, DriftState, ParticipantProfile, now};
use crate::provision::{Engine, Finished, Start};
use crate::store::{self, Conn, Table, from_json, to_json};
use crate::tenant::{decommissions, migrations, profiles};

/// How the periodic reconciler walks the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Each active participant is verified (and repaired) again once this has passed, as
    /// `max_parallel` allows.
    pub interval: Duration,
    /// Most verifies and reconciles running at once, across every replica.
    pub max_parallel: i64,
}

/// Default of [`Schedule::max_parallel`]: a fleet walk is background work and must leave
/// the agents to onboarding.
pub const DEFAULT_MAX_PARALLEL: i64 = 4;

/// Starts verifying a participant of `tenant_id` and, with `repair`, reconciling what
/// drifted. Refused unless the participant is active and nothing else of it runs.
pub async fn start(
    engine: &Engine,
    tenant_id: &str,
    id: &str,
    repair: bool,
) -> Result<ParticipantProfile> {
    let engine = &engine.claiming();
    let mut tx = store::write(engine.db()).await?;
    store::lock_row(&mut tx, Table::ParticipantProfiles, id).await?;
    let mut profile = profiles::fetch(&mut tx, tenant_id, id).await?;
    decommissions::refuse_while_running(&mut tx, tenant_id).await?;
    profile.drift = Some(begin(engine, &mut tx, &profile, repair).await?);
    tx.commit().await?;
    engine.committed();
    tracing::info!(profile = %id, repair, "verify started");
    Ok(profile)
}

/// One pass of the periodic reconciler: starts verifies of the participants due, as many
/// as `schedule.max_parallel` leaves room for. Public so that tests can drive it.
pub async fn tick(engine: &Engine, schedule: &Schedule) -> Result<()> {
    let room =
        schedule.max_parallel - running(&mut *engine.db().queries().acquire().await?).await?;
    if room <= 0 {
        return Ok(());
    }
    let interval = chrono::Duration::from_std(schedule.interval)
        .map_err(|e| ManagerError::bad_request(format!("reconcile interval: {e}")))?;
    let due = (chrono::Utc::now() - interval).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    // Never checked first, then the longest ago (two queries, so each uses the index); a
    // participant that cannot be checked now (busy, not active) counts as checked, so it
    // does not hold up the rest. Looking further than the room: some will be skipped.
    let look = room.saturating_mul(4);
    let mut candidates: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM participant_profiles WHERE drift_checked_at IS NULL ORDER BY id LIMIT $1",
    )
    .bind(look)
    .fetch_all(engine.db().queries())
    .await?;
    let left = look - i64::try_from(candidates.len()).unwrap_or(look);
    if left > 0 {
        let checked: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM participant_profiles WHERE drift_checked_at < $1
             ORDER BY drift_checked_at, id LIMIT $2",
        )
        .bind(&due)
        .bind(left)
        .fetch_all(engine.db().queries())
        .await?;
        candidates.extend(checked);
    }
    let mut started = 0;
    for id in candidates {
        if started >= room {
            break;
        }
        match start_due(engine, schedule, &id, &due).await {
            Ok(true) => started += 1,
            Ok(false) => {}
            Err(e) => tracing::warn!(profile = %id, "periodic verify: {e}"),
        }
    }
    Ok(())
}

/// The engine's hook for verify orchestrations, in the transaction that ends one: the
/// drift its steps found goes on the profile, and a drifted participant whose verify was
/// asked to repair gets its reconcile.
pub(crate) async fn verified(
    engine: &Engine,
    conn: &mut Conn,
    finished: &Finished<'_>,
) -> Result<()> {
    let id = finished.correlation_id;
    store::lock_row(conn, Table::ParticipantProfiles, id).await?;
    let Some(mut drift) = recorded(conn, id).await? else {
        return Ok(());
    };
    let drifted = if finished.state == OrchestrationState::Completed {
        drift.activities = found(conn, finished.id).await?;
        let drifted = drift.activities.iter().any(|a| !a.findings.is_empty());
        drift.state = if drifted {
            DriftState::Drifted
        } else {
            DriftState::InSync
        };
        drifted
    } else {
        drift.state = DriftState::Unverified;
        drift.detail = Some(finished.error_detail.unwrap_or("the verify failed").into());
        false
    };
    let repair = finished
        .processing_data
        .get(keys::RECONCILE)
        .and_then(|r| r.get("repair"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if drifted && repair {
        // The verify's end must commit whatever becomes of the repair: it starts under a
        // savepoint, and a repair that cannot start is the drift's news.
        let mut savepoint = conn.begin().await?;
        match start_repair(engine, &mut savepoint, id, &drift.activities).await {
            Ok(reconcile_id) => {
                savepoint.commit().await?;
                drift.state = DriftState::Repairing;
                drift.reconcile_id = Some(reconcile_id);
            }
            Err(e) => {
                savepoint.rollback().await?;
                tracing::warn!(profile = %id, "the repair could not start: {e}");
                drift.state = DriftState::RepairFailed;
                drift.detail = Some(format!("the repair could not start: {e}"));
            }
        }
    }
    tracing::info!(profile = %id, state = drift.state.as_str(), "participant verified");
    save(conn, id, &drift, drifted).await
}

/// The engine's hook for reconcile orchestrations, in the transaction that ends one.
pub(crate) async fn repaired(conn: &mut Conn, finished: &Finished<'_>) -> Result<()> {
    let id = finished.correlation_id;
    store::lock_row(conn, Table::ParticipantProfiles, id).await?;
    let Some(mut drift) = recorded(conn, id).await? else {
        return Ok(());
    };
    if finished.state == OrchestrationState::Completed {
        drift.state = DriftState::Repaired;
        profiles::record_plugins(conn, id, finished.plugin_digests).await?;
    } else {
        drift.state = DriftState::RepairFailed;
        drift.detail = Some(finished.error_detail.unwrap_or("the repair failed").into());
    }
    tracing::info!(profile = %id, state = drift.state.as_str(), "participant reconciled");
    save(conn, id, &drift, false).await
}

/// Writes the end of a verify or reconcile on the profile (counting it when `drifted`),
/// and its event.
async fn save(conn: &mut Conn, id: &str, drift: &Drift, drifted: bool) -> Result<()> {
    let tenant: Option<String> = sqlx::query_scalar(
        "UPDATE participant_profiles SET drift = $1, drift_state = $2,
           drift_count = drift_count + $3 WHERE id = $4 RETURNING tenant_id",
    )
    .bind(to_json(drift)?)
    .bind(drift.state.as_str())
    .bind(i64::from(drifted))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let findings: usize = drift.activities.iter().map(|a| a.findings.len()).sum();
    let data = json!({
        "state": drift.state.as_str(),
        "verifyId": drift.verify_id,
        "reconcileId": drift.reconcile_id,
        "findings": findings,
    });
    events::record(conn, events::kinds::DRIFT, tenant.as_deref(), id, data).await
}

/// Starts the verify of `profile`, whose row the caller has locked: the drift it records.
async fn begin(
    engine: &Engine,
    conn: &mut Conn,
    profile: &ParticipantProfile,
    repair: bool,
) -> Result<Drift> {
    let id = profile.id.as_str();
    if profile.vpas.is_empty() || profile.vpas.iter().any(|v| v.state != VpaState::Active) {
        return Err(ManagerError::conflict(format!(
            "participant profile '{id}' is not active (its VPAs are {}); only an active participant is verified",
            profile.vpas.first().map_or("missing", |v| v.state.as_str())
        )));
    }
    if migrations::unfinished(conn, id).await?.is_some() {
        return Err(ManagerError::conflict(format!(
            "participant profile '{id}' is being migrated; verify it once the migration has ended"
        )));
    }
    profiles::refuse_while_busy(conn, id, "verified").await?;
    let (mut data, definition) =
        profiles::rerunning(conn, profile, orchestration_types::VPA_VERIFY, "verified").await?;
    data.insert(keys::RECONCILE.into(), json!({ "repair": repair }));
    let verify_id = engine
        .start(
            conn,
            Start {
                correlation_id: id.to_string(),
                orchestration_type: orchestration_types::VPA_VERIFY.into(),
                definition,
                processing_data: data,
            },
        )
        .await?;
    let drift = Drift {
        state: DriftState::Verifying,
        checked_at: now(),
        verify_id,
        reconcile_id: None,
        activities: Vec::new(),
        detail: None,
    };
    sqlx::query(
        "UPDATE participant_profiles SET drift = $1, drift_state = $2, drift_checked_at = $3 WHERE id = $4",
    )
    .bind(to_json(&drift)?)
    .bind(drift.state.as_str())
    .bind(&drift.checked_at)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(drift)
}

/// Starts the periodic verify of `id` if it is still due and there is room: whether it
/// did. One that cannot start now is marked checked all the same, so that no participant
/// holds up the walk, and one that fails is marked checked too, then reported.
async fn start_due(engine: &Engine, schedule: &Schedule, id: &str, due: &str) -> Result<bool> {
    let engine = &engine.claiming();
    let mut tx = store::write(engine.db()).await?;
    // Replicas take turns here, so that together they never run more than the bound.
    store::lock_named(&mut tx, "cfm.reconciler").await?;
    if running(&mut tx).await? >= schedule.max_parallel
        || !store::lock_row(&mut tx, Table::ParticipantProfiles, id).await?
    {
        return Ok(false);
    }
    // Another replica may have started it since the candidates were read.
    let checked: Option<String> =
        sqlx::query_scalar("SELECT drift_checked_at FROM participant_profiles WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
    if checked.is_some_and(|at| at.as_str() >= due) {
        return Ok(false);
    }
    let profile = profiles::fetch_any(&mut tx, id).await?;
    let refused = match decommissions::refuse_while_running(&mut tx, &profile.tenant_id).await {
        Ok(()) => begin(engine, &mut tx, &profile, true).await.err(),
        Err(e) => Some(e),
    };
    let Some(refused) = refused else {
        tx.commit().await?;
        engine.committed();
        tracing::info!(profile = %id, "periodic verify started");
        return Ok(true);
    };
    tx.rollback().await?;
    let mut tx = store::write(engine.db()).await?;
    sqlx::query("UPDATE participant_profiles SET drift_checked_at = $1 WHERE id = $2")
        .bind(now())
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    match refused {
        ManagerError::Conflict(why) | ManagerError::Busy(why) => {
            tracing::debug!(profile = %id, "periodic verify skipped: {why}");
            Ok(false)
        }
        e => Err(e),
    }
}

/// How many verifies and reconciles run.
async fn running(conn: &mut Conn) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT COUNT(*) FROM orchestrations WHERE state = $1 AND orchestration_type IN ($2, $3)",
    )
    .bind(OrchestrationState::Running.code())
    .bind(orchestration_types::VPA_VERIFY)
    .bind(orchestration_types::VPA_RECONCILE)
    .fetch_one(conn)
    .await?)
}

/// The drift the steps of verify `verify_id` found, per activity: those with findings or
/// that could not be checked.
async fn found(conn: &mut Conn, verify_id: &str) -> Result<Vec<ActivityDrift>> {
    let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT activity_id, activity_type, output FROM orchestration_steps
         WHERE orchestration_id = $1 ORDER BY position",
    )
    .bind(verify_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut activities = Vec::new();
    for (activity_id, activity_type, output) in rows {
        let output: Value = match output {
            Some(text) => from_json(&text, "step output")?,
            None => continue,
        };
        let findings = match output.get(keys::DRIFT) {
            Some(Value::Array(findings)) => findings.clone(),
            _ => Vec::new(),
        };
        let unverified = output
            .get(keys::UNVERIFIED)
            .and_then(Value::as_str)
            .map(str::to_string);
        if !findings.is_empty() || unverified.is_some() {
            activities.push(ActivityDrift {
                activity_id,
                activity_type,
                findings,
                unverified,
            });
        }
    }
    Ok(activities)
}

/// Starts the reconcile of `id` for `drifted` activities: they and every activity that
/// depends on them re-run, over the data that last provisioned the participant.
async fn start_repair(
    engine: &Engine,
    conn: &mut Conn,
    id: &str,
    drifted: &[ActivityDrift],
) -> Result<String> {
    let profile = profiles::fetch_any(conn, id).await?;
    decommissions::refuse_while_running(conn, &profile.tenant_id).await?;
    let (data, mut definition) = profiles::rerunning(
        conn,
        &profile,
        orchestration_types::VPA_RECONCILE,
        "repaired",
    )
    .await?;
    let drifted: BTreeSet<&str> = drifted
        .iter()
        .filter(|a| !a.findings.is_empty())
        .map(|a| a.activity_id.as_str())
        .collect();
    if let Some(activities) = definition
        .activities
        .get_mut(orchestration_types::VPA_RECONCILE)
    {
        *activities = affected(activities, &drifted);
    }
    engine
        .start(
            conn,
            Start {
                correlation_id: id.to_string(),
                orchestration_type: orchestration_types::VPA_RECONCILE.into(),
                definition,
                processing_data: data,
            },
        )
        .await
}

/// The activities of `all` that `drifted` names, and every one depending on them, with
/// dependencies on activities left out dropped (what they output is in the data already).
/// A verify that ran other activities than deploy's (a template's own verify list) names
/// none of them: then all re-run.
fn affected(all: &[ActivitySpec], drifted: &BTreeSet<&str>) -> Vec<ActivitySpec> {
    if !drifted.iter().all(|id| all.iter().any(|a| a.id == *id)) {
        return all.to_vec();
    }
    let mut chosen: BTreeSet<String> = drifted.iter().map(|id| id.to_string()).collect();
    // A DAG of n activities settles within n passes.
    for _ in 0..all.len() {
        let before = chosen.len();
        for activity in all {
            if activity.depends_on.iter().any(|d| chosen.contains(d)) {
                chosen.insert(activity.id.clone());
            }
        }
        if chosen.len() == before {
            break;
        }
    }
    all.iter()
        .filter(|a| chosen.contains(&a.id))
        .map(|a| ActivitySpec {
            depends_on: a
                .depends_on
                .iter()
                .filter(|d| chosen.contains(*d))
                .cloned()
                .collect(),
            ..a.clone()
        })
        .collect()
}

/// The profile's drift as its verify started it; None when the profile is gone.
async fn recorded(conn: &mut Conn, id: &str) -> Result<Option<Drift>> {
    let text: Option<Option<String>> =
        sqlx::query_scalar("SELECT drift FROM participant_profiles WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    match text.flatten() {
        Some(text) => Ok(Some(from_json(&text, "drift")?)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, depends_on: &[&str]) -> ActivitySpec {
        ActivitySpec {
            id: id.into(),
            activity_type: format!("t.{id}"),
            depends_on: depends_on.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn a_repair_reruns_the_drifted_and_what_depends_on_them() {
        let all = [
            spec("vault", &[]),
            spec("dns", &[]),
            spec("k8s", &["vault"]),
            spec("edc", &["k8s", "dns"]),
        ];
        let ids = |specs: Vec<ActivitySpec>| {
            specs
                .into_iter()
                .map(|s| format!("{}<{}", s.id, s.depends_on.join(",")))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            ids(affected(&all, &BTreeSet::from(["vault"]))),
            ["vault<", "k8s<vault", "edc<k8s"]
        );
        assert_eq!(
            ids(affected(&all, &BTreeSet::from(["dns"]))),
            ["dns<", "edc<dns"]
        );
        assert_eq!(ids(affected(&all, &BTreeSet::from(["nowhere"]))).len(), 4);
    }
}
