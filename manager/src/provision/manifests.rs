//! Orchestrations started from a manifest (`POST /orchestrations`), as upstream's tenant
//! manager starts them: an id of the client's, the participant it concerns and a payload
//! of base data. The id makes the start idempotent, so a client that retries a request it
//! lost the answer to starts nothing twice.

use cfm_protocol::keys;
use serde_json::{Map, Value};

use super::{Engine, Start, definitions};
use crate::error::{ManagerError, Result};
use crate::store;

/// What a manifest asks for.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The orchestration's id, chosen by the client (1 to 128 of `[A-Za-z0-9._:-]`).
    pub id: String,
    /// Whom it is for: upstream sends the participant profile's id.
    pub correlation_id: String,
    /// Which activity list runs, from the newest definition that defines it.
    pub orchestration_type: String,
    /// The base data: `cfm.participant.id` (required), `cfm.vpa.data`,
    /// `cfm.vpa.credentials`, optionally `cfm.participant.contextId` (else the correlation id).
    pub payload: Map<String, Value>,
}

/// Starts the manifest's orchestration unless one with its id exists; true when it started.
pub async fn start(engine: &Engine, manifest: Manifest) -> Result<bool> {
    check_id("orchestration id", &manifest.id)?;
    check_id("correlationId", &manifest.correlation_id)?;
    let mut data = manifest.payload;
    if super::engine::holds_nul(&Value::Object(data.clone())) {
        return Err(ManagerError::bad_request(
            "the payload holds U+0000, which cannot be stored",
        ));
    }
    let participant = data.get(keys::PARTICIPANT_ID).and_then(Value::as_str);
    if participant.is_none_or(str::is_empty) {
        return Err(ManagerError::bad_request(format!(
            "payload needs '{}', the participant's DID",
            keys::PARTICIPANT_ID
        )));
    }
    // Grants are templated by the context id: it must be a plain id, never a path.
    let context = match data.get(keys::PARTICIPANT_CONTEXT_ID) {
        None => manifest.correlation_id.clone(),
        Some(Value::String(context)) => context.clone(),
        Some(_) => {
            return Err(ManagerError::bad_request(format!(
                "'{}' must be a string",
                keys::PARTICIPANT_CONTEXT_ID
            )));
        }
    };
    // Stricter than an id: plugins put it into URL paths and Kubernetes names.
    if !(1..=128).contains(&context.len())
        || !context
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ManagerError::bad_request(format!(
            "the participant context ('{}' or the correlationId) must be 1 to 128 letters, digits, '-' or '_'",
            keys::PARTICIPANT_CONTEXT_ID
        )));
    }
    data.insert(
        keys::PARTICIPANT_CONTEXT_ID.into(),
        Value::String(context.clone()),
    );
    for key in [keys::VPA_DATA, keys::VPA_CREDENTIALS] {
        data.entry(key).or_insert_with(|| Value::Array(Vec::new()));
    }

    let engine = &engine.claiming();
    let mut tx = store::write(engine.db()).await?;
    // Neither the correlation nor the context may be one of the tenant manager's profiles.
    // A profile's context is its id, and plugins' grants are templated by the context: a
    // manifest naming it under another correlation would run activities on that
    // participant's secrets, namespace and records.
    let mut named = vec![("correlationId", &manifest.correlation_id)];
    if context != manifest.correlation_id {
        named.push((keys::PARTICIPANT_CONTEXT_ID, &context));
    }
    for (key, id) in named {
        if engine.is_claimed(&mut tx, id).await? {
            return Err(ManagerError::conflict(format!(
                "{key} '{id}' is a participant profile of this tenant manager: deploy and dispose it through /tenants/{{tenantId}}/participant-profiles"
            )));
        }
    }
    let definition = definitions::select(&mut tx, &manifest.orchestration_type, None)
        .await?
        .ok_or_else(|| {
            ManagerError::bad_request(format!(
                "no orchestration definition defines '{}'",
                manifest
                    .orchestration_type
                    .chars()
                    .take(128)
                    .collect::<String>()
            ))
        })?;
    let start = Start {
        correlation_id: manifest.correlation_id,
        orchestration_type: manifest.orchestration_type,
        definition,
        processing_data: data,
    };
    let (correlation_id, orchestration_type) = (
        start.correlation_id.clone(),
        start.orchestration_type.clone(),
    );
    let started = engine.start_once(&mut tx, &manifest.id, start).await?;
    if !started {
        // The same manifest again is fine; another one under a taken id is not.
        let existing = sqlx::query(
            "SELECT 1 FROM orchestrations WHERE id = $1 AND correlation_id = $2 AND orchestration_type = $3",
        )
        .bind(&manifest.id)
        .bind(&correlation_id)
        .bind(&orchestration_type)
        .fetch_optional(&mut *tx)
        .await?;
        if existing.is_none() {
            return Err(ManagerError::conflict(format!(
                "orchestration '{}' exists for another correlationId or orchestrationType",
                manifest.id
            )));
        }
    }
    tx.commit().await?;
    engine.committed();
    Ok(started)
}

/// `value` is 1 to 128 letters, digits, `.`, `_`, `-` or `:`.
pub(super) fn check_id(what: &str, value: &str) -> Result<()> {
    let fits = (1..=128).contains(&value.len())
        && value != "."
        && value != ".."
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'));
    if fits {
        Ok(())
    } else {
        Err(ManagerError::bad_request(format!(
            "{what} must be 1 to 128 letters, digits, '.', '_', '-' or ':'"
        )))
    }
}
