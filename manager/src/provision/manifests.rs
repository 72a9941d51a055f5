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
    check_id(keys::PARTICIPANT_CONTEXT_ID, &context)?;
    data.insert(keys::PARTICIPANT_CONTEXT_ID.into(), Value::String(context));
    for key in [keys::VPA_DATA, keys::VPA_CREDENTIALS] {
        data.entry(key).or_insert_with(|| Value::Array(Vec::new()));
    }

    let mut tx = store::write(engine.db()).await?;
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
    let started = engine.start_once(&mut tx, &manifest.id, start).await?;
    tx.commit().await?;
    if started {
        engine.wake();
    }
    Ok(started)
}

/// `value` is 1 to 128 letters, digits, `.`, `_`, `-` or `:`.
pub(super) fn check_id(what: &str, value: &str) -> Result<()> {
    let fits = (1..=128).contains(&value.len())
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
