//! `keymanagement-activity` (upstream's keymanagement lifecycle agent, as an activity):
//! follows the participant's key pair lifecycle in the Identity Hub. An activated key
//! becomes the participant's Siglet signing key and the Control Plane's STS signature key;
//! a revoked one loses its Siglet mapping.
//!
//! Served for the orchestration types `cfm.orchestration.keypair.{activated,revoked,rotated}`;
//! the key pair event's `data` is in the processing data under `keypair`.

use cfm_plugin_sdk::{Activity, Error, Outcome, http, log, required_setting};
use serde_json::{Value, json};

use crate::common::{Settings, created, deleted, found, replaced, send};
use crate::control_plane;
use crate::siglet::{READ_SCOPE, WRITE_SCOPE};

/// The activity type this module serves.
pub const ACTIVITY_TYPE: &str = "keymanagement-activity";
const AGENT: &str = "keymanagement";
/// Processing data: the key pair event's `data`.
const KEYPAIR: &str = "keypair";

const ACTIVATED: &str = "cfm.orchestration.keypair.activated";
const REVOKED: &str = "cfm.orchestration.keypair.revoked";
const ROTATED: &str = "cfm.orchestration.keypair.rotated";

/// A key pair event's `data`; only what the lifecycle needs.
#[derive(serde::Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase", default)]
struct KeyPairEvent {
    participant_context_id: String,
    key_id: String,
    key_pair_resource: KeyPairResource,
}

#[derive(serde::Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase", default)]
struct KeyPairResource {
    key_id: String,
    private_key_alias: String,
}

/// A Siglet signing key mapping: the key the participant's tokens are signed with.
#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
struct KeyMapping {
    participant_context_id: String,
    key_name: String,
    kid: String,
}

/// Handles one key pair event, chosen by the discriminator.
pub fn handle(activity: &Activity<Settings>, settings: &Settings) -> Result<Outcome, Error> {
    let discriminator = activity.request().discriminator.as_str();
    match discriminator {
        ACTIVATED => activated(activity, settings, &key_mapping(activity)?),
        REVOKED => revoked(activity, settings, &key_mapping(activity)?),
        ROTATED => {
            // The new key arrives with its own `activated` event; the old one with `revoked`.
            log::info(&format!(
                "key pair of participant context {} rotated: nothing to do",
                activity.participant_context_id()
            ));
            Ok(Outcome::empty())
        }
        other => Err(Error::Fatal(format!(
            "unsupported orchestration type '{other}' for {ACTIVITY_TYPE}: expected \
             {ACTIVATED}, {REVOKED} or {ROTATED}"
        ))),
    }
}

/// Makes the key the participant's Siglet signing key (creating or replacing the mapping),
/// then the Control Plane's STS signature key.
fn activated(
    activity: &Activity<Settings>,
    settings: &Settings,
    mapping: &KeyMapping,
) -> Result<Outcome, Error> {
    let siglet = required_setting(AGENT, "sigletUrl", &settings.siglet_url)?;
    let control_plane = required_setting(AGENT, "controlPlaneUrl", &settings.control_plane_url)?;
    let pc = activity.participant_context_id();
    let kid = &mapping.kid;

    let action = format!("look up the Siglet key mapping of {pc}");
    let request = http::Request::get(key_mapping_url(siglet, pc));
    let mut create = found(
        send(AGENT, settings, READ_SCOPE, request, &action)?,
        &action,
    )?
    .is_none();
    if create {
        let action = format!("create the Siglet key mapping of {pc}");
        let request = http::Request::post(http::join(siglet, "/key-mappings")).json(mapping)?;
        // 409: made meanwhile; replace it below.
        create = created(
            send(AGENT, settings, WRITE_SCOPE, request, &action)?,
            &action,
        )?;
    }
    if !create {
        let action = format!("replace the Siglet key mapping of {pc}");
        let request = http::Request::put(key_mapping_url(siglet, pc)).json(mapping)?;
        replaced(
            send(AGENT, settings, WRITE_SCOPE, request, &action)?,
            &action,
        )?;
    }
    log::info(&format!(
        "Siglet key mapping of {pc}: key {kid} ({})",
        if create { "created" } else { "replaced" }
    ));

    let action = format!("make key {kid} the STS signature key of {pc}");
    let request =
        control_plane::config_request(control_plane, pc).json(&sts_config(pc, mapping))?;
    let response = send(AGENT, settings, control_plane::SCOPE, request, &action)?;
    if response.status == 404 {
        // The key is activated as the Identity Hub participant is made, which may be
        // before the Control Plane participant context exists: wait for it.
        return Err(Error::Retry(format!(
            "{action}: HTTP 404: the participant context is not in the Control Plane yet"
        )));
    }
    response.error_for_status(&action)?;
    log::info(&format!("STS signature key of {pc}: key {kid}"));
    Ok(Outcome::empty())
}

/// Removes the participant's Siglet key mapping when it is the revoked key's; a mapping
/// already moved on to a newer key stays.
fn revoked(
    activity: &Activity<Settings>,
    settings: &Settings,
    mapping: &KeyMapping,
) -> Result<Outcome, Error> {
    let siglet = required_setting(AGENT, "sigletUrl", &settings.siglet_url)?;
    let pc = activity.participant_context_id();
    let kid = &mapping.kid;

    let action = format!("look up the Siglet key mapping of {pc}");
    let request = http::Request::get(key_mapping_url(siglet, pc));
    let Some(response) = found(
        send(AGENT, settings, READ_SCOPE, request, &action)?,
        &action,
    )?
    else {
        log::info(&format!(
            "Siglet key mapping of {pc}: already gone (key {kid} revoked)"
        ));
        return Ok(Outcome::empty());
    };
    let current: Value = response.json()?;
    let current_kid = current.get("kid").and_then(Value::as_str).unwrap_or("");
    if !current_kid.is_empty() && current_kid != kid {
        log::info(&format!(
            "Siglet key mapping of {pc} is for key {current_kid}, not the revoked {kid}: kept"
        ));
        return Ok(Outcome::empty());
    }

    let outcome = if delete_key_mapping(AGENT, settings, siglet, pc)? {
        "deleted"
    } else {
        "already gone"
    };
    log::info(&format!(
        "Siglet key mapping of {pc}: {outcome} (key {kid} revoked)"
    ));
    Ok(Outcome::empty())
}

/// Deletes the Siglet key mapping of `pc` on behalf of `agent`; false when there was none.
pub fn delete_key_mapping(
    agent: &str,
    settings: &Settings,
    siglet: &str,
    pc: &str,
) -> Result<bool, Error> {
    let action = format!("delete the Siglet key mapping of {pc}");
    let request = http::Request::delete(key_mapping_url(siglet, pc));
    deleted(
        send(agent, settings, WRITE_SCOPE, request, &action)?,
        &action,
    )
}

/// The Siglet key mapping the event asks for, for the participant context being processed.
fn key_mapping(activity: &Activity<Settings>) -> Result<KeyMapping, Error> {
    let event: KeyPairEvent = activity.data_value(KEYPAIR)?.ok_or_else(|| {
        Error::Fatal(format!(
            "processing data has no key pair event under '{KEYPAIR}'"
        ))
    })?;
    mapping_for(activity.participant_context_id(), event)
}

fn mapping_for(participant_context_id: &str, event: KeyPairEvent) -> Result<KeyMapping, Error> {
    // The event is about the participant whose activity this is; another one's key
    // must not become this participant's.
    if !event.participant_context_id.is_empty()
        && event.participant_context_id != participant_context_id
    {
        return Err(Error::Fatal(format!(
            "the key pair event is for participant context {}, not {participant_context_id}",
            event.participant_context_id
        )));
    }
    let kid = if event.key_id.is_empty() {
        event.key_pair_resource.key_id
    } else {
        event.key_id
    };
    for (field, value) in [
        ("keyId", &kid),
        (
            "keyPairResource.privateKeyAlias",
            &event.key_pair_resource.private_key_alias,
        ),
    ] {
        if value.is_empty() {
            return Err(Error::Fatal(format!(
                "the key pair event under '{KEYPAIR}' has no '{field}'"
            )));
        }
    }
    Ok(KeyMapping {
        participant_context_id: participant_context_id.to_string(),
        key_name: event.key_pair_resource.private_key_alias,
        kid,
    })
}

fn key_mapping_url(siglet: &str, participant_context_id: &str) -> String {
    http::join(siglet, &format!("/key-mappings/{participant_context_id}"))
}

/// The Control Plane configuration that signs the participant's STS tokens with the key.
fn sts_config(participant_context_id: &str, mapping: &KeyMapping) -> Value {
    json!({
        "@context": [control_plane::MANAGEMENT_CONTEXT],
        "@type": "ParticipantContextConfig",
        "entries": {
            "edc.iam.sts.type": "signature",
            "edc.iam.sts.signature.keyname": mapping.key_name,
            "edc.iam.sts.signature.kid": mapping.kid,
        },
        "privateEntries": {},
        "identity": participant_context_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(value: Value) -> KeyPairEvent {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn mappings_from_events() {
        let mapping = mapping_for(
            "pc1",
            event(json!({
                "participantContextId": "pc1",
                "keyId": "did:web:p#key2",
                "keyPairResource": {"keyId": "did:web:p#key1", "privateKeyAlias": "alias2",
                                    "defaultPair": true},
                "publicKeySerialized": "..."
            })),
        )
        .unwrap();
        assert_eq!(
            serde_json::to_value(&mapping).unwrap(),
            json!({"participantContextId":"pc1","keyName":"alias2","kid":"did:web:p#key2"})
        );
        let mapping = mapping_for(
            "pc1",
            event(json!({"keyPairResource": {"keyId": "k1", "privateKeyAlias": "a1"}})),
        )
        .unwrap();
        assert_eq!(mapping.kid, "k1");
        assert!(matches!(
            mapping_for("pc1", event(json!({"participantContextId": "pc2", "keyId": "k",
                "keyPairResource": {"privateKeyAlias": "a"}}))),
            Err(Error::Fatal(message)) if message.contains("pc2")
        ));
        assert!(matches!(
            mapping_for("pc1", event(json!({"keyId": "k"}))),
            Err(Error::Fatal(message)) if message.contains("privateKeyAlias")
        ));
    }

    #[test]
    fn sts_configuration() {
        let mapping = KeyMapping {
            participant_context_id: "pc1".into(),
            key_name: "alias".into(),
            kid: "did:web:p#key1".into(),
        };
        assert_eq!(
            sts_config("pc1", &mapping),
            json!({"@context":["https://w3id.org/edc/connector/management/v2"],
                   "@type":"ParticipantContextConfig",
                   "entries":{"edc.iam.sts.type":"signature",
                              "edc.iam.sts.signature.keyname":"alias",
                              "edc.iam.sts.signature.kid":"did:web:p#key1"},
                   "privateEntries":{},"identity":"pc1"})
        );
    }
}
