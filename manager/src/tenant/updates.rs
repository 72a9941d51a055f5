//! Changing a live participant's VPA properties (its runtime's replicas or resources,
//! say): `PATCH .../participant-profiles/{id}` records the change as pending and starts
//! `cfm.orchestration.vpa.update`, which applies it (the template's own update
//! activities, or its deploy activities re-run with the new VPA data). The engine's hook
//! moves the change onto the VPAs in the transaction that ends the update; a failed
//! update leaves them as they were, with the reason on the profile.

use cfm_protocol::orchestration_types;
use serde_json::{Map, Value};

use crate::error::{ManagerError, Result};
use crate::lifecycle::{OrchestrationState, VpaState};
use crate::model::{ParticipantProfile, Vpa};
use crate::provision::{Engine, Finished, Start};
use crate::store::{self, Conn, Table, to_json};
use crate::tenant::{migrations, profiles};

/// The most bytes the changed properties of one participant may take, as JSON.
const MAX_PROPERTIES_BYTES: usize = 64 * 1024;

/// Asks for `changes` (VPA type → properties to set; a null value removes the key) on a
/// live participant of `tenant_id`, and starts applying them. `expected_version` (the
/// profile's `version` the client read) makes it conditional. Refused while another
/// orchestration of the participant runs or a change is pending.
pub async fn change_vpa_properties(
    engine: &Engine,
    tenant_id: &str,
    id: &str,
    changes: Map<String, Value>,
    expected_version: Option<i64>,
) -> Result<ParticipantProfile> {
    if changes.is_empty() {
        return Err(ManagerError::bad_request(
            "vpaProperties must name at least one VPA type",
        ));
    }
    if to_json(&changes)?.len() > MAX_PROPERTIES_BYTES {
        return Err(ManagerError::bad_request(format!(
            "vpaProperties must be at most {MAX_PROPERTIES_BYTES} bytes of JSON"
        )));
    }
    let engine = &engine.claiming();
    let mut tx = store::write(engine.db()).await?;
    store::lock_row(&mut tx, Table::ParticipantProfiles, id).await?;
    let mut profile = profiles::fetch(&mut tx, tenant_id, id).await?;
    if let Some(expected) = expected_version
        && expected != profile.version
    {
        return Err(ManagerError::conflict(format!(
            "participant profile '{id}' is at version {}, not {expected}: it changed since it was read",
            profile.version
        )));
    }
    if profile.vpas.is_empty() || profile.vpas.iter().any(|v| v.state != VpaState::Active) {
        return Err(ManagerError::conflict(format!(
            "participant profile '{id}' is not active; only an active participant's VPAs change"
        )));
    }
    if profile.pending_vpa_properties.is_some() {
        return Err(ManagerError::conflict(format!(
            "a change of participant profile '{id}''s VPA properties is being applied; wait for it"
        )));
    }
    if migrations::unfinished(&mut tx, id).await?.is_some() {
        return Err(ManagerError::conflict(format!(
            "participant profile '{id}' is being migrated; change it once the migration has ended"
        )));
    }
    profiles::refuse_while_busy(&mut tx, id, "changed").await?;
    let wanted = apply_changes(&profile.vpas, &changes)?;

    // The update runs with the VPAs as they will be.
    let mut changed = profile.clone();
    for vpa in &mut changed.vpas {
        if let Some(Value::Object(properties)) = wanted.get(&vpa.vpa_type) {
            vpa.properties = properties.clone();
        }
    }
    let (data, definition) = profiles::rerunning(
        &mut tx,
        &changed,
        orchestration_types::VPA_UPDATE,
        "changed",
    )
    .await?;
    engine
        .start(
            &mut tx,
            Start {
                correlation_id: id.to_string(),
                orchestration_type: orchestration_types::VPA_UPDATE.into(),
                definition,
                processing_data: data,
            },
        )
        .await?;
    sqlx::query(
        "UPDATE participant_profiles SET pending_vpa_properties = $1, version = version + 1 WHERE id = $2",
    )
    .bind(to_json(&wanted)?)
    .bind(id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    engine.committed();
    profile.version += 1;
    profile.pending_vpa_properties = Some(wanted);
    tracing::info!(profile = %id, "VPA properties change started");
    Ok(profile)
}

/// The engine's hook for update orchestrations, in the transaction that ends one: the
/// pending change becomes the VPAs' properties, or, when the update failed, is dropped
/// with the reason on the profile.
pub(crate) async fn finished(conn: &mut Conn, finished: &Finished<'_>) -> Result<()> {
    store::lock_row(conn, Table::ParticipantProfiles, finished.correlation_id).await?;
    let Some(mut profile) = profiles::find(conn, finished.correlation_id).await? else {
        return Ok(());
    };
    let pending = profile.pending_vpa_properties.take().unwrap_or_default();
    let detail = if finished.state == OrchestrationState::Completed {
        for vpa in &mut profile.vpas {
            if let Some(Value::Object(properties)) = pending.get(&vpa.vpa_type) {
                vpa.properties = properties.clone();
                vpa.version += 1;
            }
        }
        profiles::merge_plugins(&mut profile.plugin_digests, finished.plugin_digests);
        tracing::info!(profile = %profile.id, "VPA properties change applied");
        profile.error_detail
    } else {
        let reason = finished.error_detail.unwrap_or("the update failed");
        tracing::warn!(profile = %profile.id, %reason, "VPA properties change failed");
        Some(format!(
            "changing the VPA properties failed, they are as they were: {reason}"
        ))
    };
    sqlx::query(
        "UPDATE participant_profiles SET vpas = $1, pending_vpa_properties = NULL, error_detail = $2,
           plugin_digests = $3, version = version + 1 WHERE id = $4",
    )
    .bind(to_json(&profile.vpas)?)
    .bind(detail)
    .bind(to_json(&profile.plugin_digests)?)
    .bind(&profile.id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Each changed VPA type's properties after `changes`: keys set, null values removed.
/// An unknown VPA type or a change that is not an object is the client's mistake.
fn apply_changes(vpas: &[Vpa], changes: &Map<String, Value>) -> Result<Map<String, Value>> {
    let mut wanted = Map::new();
    for (vpa_type, change) in changes {
        let vpa = vpas
            .iter()
            .find(|v| v.vpa_type == *vpa_type)
            .ok_or_else(|| {
                ManagerError::bad_request(format!(
                    "the participant has no VPA of type '{}'",
                    vpa_type.chars().take(128).collect::<String>()
                ))
            })?;
        let Value::Object(change) = change else {
            return Err(ManagerError::bad_request(format!(
                "vpaProperties['{vpa_type}'] must be an object"
            )));
        };
        let mut properties = vpa.properties.clone();
        for (key, value) in change {
            match value {
                Value::Null => properties.remove(key),
                value => properties.insert(key.clone(), value.clone()),
            };
        }
        wanted.insert(vpa_type.clone(), Value::Object(properties));
    }
    Ok(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vpa(vpa_type: &str, properties: Value) -> Vpa {
        Vpa {
            id: "v".into(),
            version: 0,
            state: VpaState::Active,
            state_timestamp: String::new(),
            vpa_type: vpa_type.into(),
            cell_id: "c".into(),
            properties: properties.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn changes_merge_into_each_vpa_and_null_removes() {
        let vpas = [vpa(
            "cfm.connector",
            json!({"replicas": 1, "memory": "1Gi", "keep": true}),
        )];
        let changes = json!({"cfm.connector": {"replicas": 3, "memory": null}});
        let wanted = apply_changes(&vpas, changes.as_object().unwrap()).unwrap();
        assert_eq!(
            Value::Object(wanted),
            json!({"cfm.connector": {"replicas": 3, "keep": true}})
        );
        let unknown = json!({"cfm.nothing": {}});
        assert!(apply_changes(&vpas, unknown.as_object().unwrap()).is_err());
        let not_an_object = json!({"cfm.connector": 3});
        assert!(apply_changes(&vpas, not_an_object.as_object().unwrap()).is_err());
    }
}
