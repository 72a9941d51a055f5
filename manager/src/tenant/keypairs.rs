//! Keypair lifecycle events: the CloudEvents the Identity Hub publishes on
//! `events.keypair.activated|revoked|rotated` when a participant's signing key changes.
//!
//! Each event becomes an orchestration of the participant it names
//! (`cfm.orchestration.keypair.<kind>`), run by plugins like any other (upstream's
//! keymanagement agent called Siglet and the Control Plane directly). The orchestration's
//! id is derived from the event's id, so a redelivered event starts nothing new.

use cfm_protocol::{keys, orchestration_types};
use serde_json::{Map, Value};

use crate::error::{ManagerError, Result};
use crate::provision::{Engine, Start, definitions};
use crate::store;
use crate::tenant::profiles;

/// Where in an event orchestration's processing data the event's `data` object is.
pub const EVENT_DATA_KEY: &str = "keypair";

/// The kinds of keypair event, as the last token of their subject.
pub const KINDS: [&str; 3] = ["activated", "revoked", "rotated"];

/// What became of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventOutcome {
    /// An orchestration with this id started.
    Started(String),
    /// This event started its orchestration before: a redelivery.
    AlreadyStarted(String),
    /// Nothing to do, and why (not a keypair event, malformed, a participant cfm does not
    /// manage, no template for it). Redelivering it would not change that.
    Ignored(String),
}

/// Starts the orchestration for one event, received on `subject`, once.
pub async fn on_event(engine: &Engine, subject: &str, payload: &[u8]) -> Result<EventOutcome> {
    let ignored = |why: String| Ok(EventOutcome::Ignored(why));
    let Some(kind) = subject.rsplit('.').next().filter(|k| KINDS.contains(k)) else {
        return ignored(format!("'{subject}' is not a keypair event subject"));
    };
    let event = match Event::parse(payload) {
        Ok(event) => event,
        Err(why) => return ignored(format!("malformed event: {why}")),
    };
    let orchestration_type = format!("{}{kind}", orchestration_types::KEYPAIR_PREFIX);
    // CloudEvents ids are unique per source.
    let name = format!("{}\n{}", event.source, event.id);
    let id = uuid::Uuid::new_v5(&EVENT_NAMESPACE, name.as_bytes()).to_string();

    let engine = &engine.claiming();
    let mut tx = store::write(engine.db()).await?;
    let pc = &event.participant_context_id;
    let Some(profile) = profiles::find(&mut tx, pc).await? else {
        return ignored(format!("participant context '{pc}' is not one of cfm's"));
    };
    if profile.vpas.iter().any(|v| v.state.is_disposing_or_gone()) {
        return ignored(format!("participant context '{pc}' is being disposed"));
    }
    let Some((deployed, template, version)) = profiles::last_deploy(&mut tx, pc).await? else {
        return ignored(format!("participant context '{pc}' was never deployed"));
    };
    // The template the participant was deployed with, if it handles the event; else the
    // newest that does.
    let definition = match definitions::provisioned_with(&mut tx, &template, version).await {
        Ok(Some(d))
            if d.activities
                .get(&orchestration_type)
                .is_some_and(|a| !a.is_empty()) =>
        {
            Some(d)
        }
        _ => definitions::select(&mut tx, &orchestration_type, None).await?,
    };
    let Some(definition) = definition else {
        return ignored(format!(
            "no orchestration definition defines {orchestration_type}"
        ));
    };
    let mut data: Map<String, Value> = deployed
        .into_iter()
        .filter(|(k, _)| keys::BASE.contains(&k.as_str()))
        .collect();
    data.insert(EVENT_DATA_KEY.into(), event.data);
    let start = Start {
        correlation_id: profile.id.clone(),
        orchestration_type,
        definition,
        processing_data: data,
    };
    if !engine.start_once(&mut tx, &id, start).await? {
        return Ok(EventOutcome::AlreadyStarted(id));
    }
    tx.commit().await?;
    engine.committed();
    tracing::info!(orchestration = %id, participant_context = %pc, event = %event.id, kind, "keypair event started an orchestration");
    Ok(EventOutcome::Started(id))
}

/// Consumes keypair events for good: each is started once and acknowledged; one that
/// cannot be handled now (the database is away) comes back after a pause.
pub async fn run(engine: Engine, mut consumer: Box<dyn cfm_queue::Consumer>) {
    loop {
        let batch =
            cfm_queue::pull_retrying(consumer.as_mut(), 16, PULL_WAIT, "keypair events").await;
        for delivery in batch {
            let subject = delivery.subject().to_string();
            let acked = match on_event(&engine, &subject, delivery.payload()).await {
                Ok(EventOutcome::Ignored(why)) => {
                    tracing::warn!(%subject, "keypair event ignored: {why}");
                    delivery.ack().await
                }
                Ok(_) => delivery.ack().await,
                // The database is away: the same event will work later.
                Err(e @ (ManagerError::Database(_) | ManagerError::Io(_))) => {
                    tracing::warn!(%subject, "keypair event not handled, retrying: {e}");
                    delivery.nak(RETRY_AFTER).await
                }
                // Anything else would fail the same way every time.
                Err(e) => {
                    tracing::warn!(%subject, "keypair event dropped: {e}");
                    delivery.ack().await
                }
            };
            if let Err(e) = acked {
                tracing::warn!(%subject, "keypair event not acknowledged: {e}");
            }
        }
    }
}

const PULL_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// Names orchestration ids made from event ids (UUID v5), apart from any other use.
const EVENT_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6b2f_0c1e_58a4_4d3e_9b1f_2c7a_e0d4_11f3);

/// What cfm reads of a CloudEvent.
struct Event {
    id: String,
    source: String,
    participant_context_id: String,
    data: Value,
}

impl Event {
    fn parse(payload: &[u8]) -> std::result::Result<Self, String> {
        let envelope: Value = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
        // A string the database cannot store would fail the event every time it came.
        if crate::provision::engine::holds_nul(&envelope) {
            return Err("it holds U+0000".into());
        }
        let text = |value: Option<&Value>, name: &str| {
            value
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .ok_or_else(|| format!("no {name}"))
        };
        let id = text(envelope.get("id"), "id")?;
        let source = envelope
            .get("source")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let data = envelope
            .get("data")
            .filter(|d| d.is_object())
            .cloned()
            .ok_or("no data object")?;
        let participant_context_id = text(
            data.get("participantContextId"),
            "data.participantContextId",
        )?;
        Ok(Self {
            id,
            source,
            participant_context_id,
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_needs_an_id_and_a_participant_context() {
        let ok = br#"{"specversion":"1.0","id":"e1","source":"ih","type":"KeyPairActivated",
            "data":{"participantContextId":"pc1","keyId":"k1"}}"#;
        let event = Event::parse(ok).unwrap();
        assert_eq!(event.id, "e1");
        assert_eq!(event.participant_context_id, "pc1");
        assert_eq!(event.data["keyId"], "k1");
        for bad in [
            &b"not json"[..],
            br#"{"data":{"participantContextId":"pc1"}}"#,
            br#"{"id":"e1"}"#,
            br#"{"id":"e1","data":{"keyId":"k1"}}"#,
            br#"{"id":"","data":{"participantContextId":"pc1"}}"#,
            br#"{"id":"e1","data":{"participantContextId":"pc1","keyId":"k\u0000"}}"#,
        ] {
            assert!(
                Event::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
