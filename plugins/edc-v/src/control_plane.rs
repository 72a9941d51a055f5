//! `edcv-activity` (upstream's edcv agent): the participant context in the Control Plane
//! and its configuration (identity and Vault folder).

use cfm_plugin_sdk::{Activity, Error, Outcome, http, log, required_setting};
use serde_json::{Value, json};

use crate::common::{Settings, created, deleted, participant_did, send};

/// The activity type this module serves.
pub const ACTIVITY_TYPE: &str = "edcv-activity";
const AGENT: &str = "edcv";
/// The scope of every Control Plane management call.
pub const SCOPE: &str = "management-api:admin";
/// The JSON-LD context of the Control Plane's management API v5.
pub const MANAGEMENT_CONTEXT: &str = "https://w3id.org/edc/connector/management/v2";

/// Creates the participant context (one already there was created by an earlier
/// delivery), then sets its configuration, which replaces the same entries on a redelivery.
pub fn deploy(activity: &Activity<Settings>, settings: &Settings) -> Result<Outcome, Error> {
    let control_plane = required_setting(AGENT, "controlPlaneUrl", &settings.control_plane_url)?;
    let vault = required_setting(AGENT, "vaultUrl", &settings.vault_url)?;
    let did = participant_did(activity)?;
    let pc = activity.participant_context_id();

    let action = format!("create the Control Plane participant context {pc}");
    let request = http::Request::post(http::join(control_plane, "/v5beta/participants"))
        .json(&participant_context(pc, did))?;
    let outcome = if created(send(AGENT, settings, SCOPE, request, &action)?, &action)? {
        "created"
    } else {
        "already there"
    };
    log::info(&format!(
        "Control Plane participant context {pc} ({did}): {outcome}"
    ));

    let action = format!("configure the Control Plane participant context {pc}");
    let request = config_request(control_plane, pc).json(&config(pc, did, vault))?;
    send(AGENT, settings, SCOPE, request, &action)?.error_for_status(&action)?;
    log::info(&format!(
        "Control Plane participant context {pc}: configured"
    ));
    Ok(Outcome::empty())
}

/// Deletes the participant context (its configuration goes with it); already gone is fine.
pub fn dispose(activity: &Activity<Settings>, settings: &Settings) -> Result<Outcome, Error> {
    let control_plane = required_setting(AGENT, "controlPlaneUrl", &settings.control_plane_url)?;
    let pc = activity.participant_context_id();
    let action = format!("delete the Control Plane participant context {pc}");
    let request = http::Request::delete(http::join(
        control_plane,
        &format!("/v5beta/participants/{pc}"),
    ));
    let outcome = if deleted(send(AGENT, settings, SCOPE, request, &action)?, &action)? {
        "deleted"
    } else {
        "already gone"
    };
    log::info(&format!(
        "Control Plane participant context {pc}: {outcome}"
    ));
    Ok(Outcome::empty())
}

/// `PATCH {cp}/v5beta/participants/{pc}/config`, which the key lifecycle uses too.
pub fn config_request(control_plane: &str, participant_context_id: &str) -> http::Request {
    http::Request::new(
        http::Method::Patch,
        http::join(
            control_plane,
            &format!("/v5beta/participants/{participant_context_id}/config"),
        ),
    )
}

/// A `ParticipantContext`: its id is the participant context, its identity the DID.
fn participant_context(participant_context_id: &str, did: &str) -> Value {
    json!({
        "@context": [MANAGEMENT_CONTEXT],
        "@type": "ParticipantContext",
        "@id": participant_context_id,
        "identity": did,
        "properties": {},
        "state": "ACTIVATED",
    })
}

/// The participant context's configuration. `identity` is the participant context id,
/// and the Vault configuration is a JSON document inside a string, as upstream sends it.
fn config(participant_context_id: &str, did: &str, vault_url: &str) -> Value {
    let vault = json!({
        "config": {
            "vaultUrl": vault_url,
            "secretPath": "v1/participants",
            "folderPath": format!("{participant_context_id}/controlplane"),
        },
    });
    json!({
        "@context": [MANAGEMENT_CONTEXT],
        "@type": "ParticipantContextConfig",
        "entries": {
            "edc.iam.issuer.id": did,
            "edc.participant.id": did,
        },
        "privateEntries": {
            "edc.vault.hashicorp.config": vault.to_string(),
        },
        "identity": participant_context_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies() {
        assert_eq!(
            participant_context("pc1", "did:web:p"),
            json!({"@context":["https://w3id.org/edc/connector/management/v2"],
                   "@type":"ParticipantContext","@id":"pc1","identity":"did:web:p",
                   "properties":{},"state":"ACTIVATED"})
        );
        let config = config("pc1", "did:web:p", "http://vault:8200");
        assert_eq!(config["identity"], "pc1");
        assert_eq!(config["@type"], "ParticipantContextConfig");
        assert_eq!(
            config["entries"],
            json!({"edc.iam.issuer.id":"did:web:p","edc.participant.id":"did:web:p"})
        );
        let vault = config["privateEntries"]["edc.vault.hashicorp.config"]
            .as_str()
            .unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(vault).unwrap(),
            json!({"config":{"vaultUrl":"http://vault:8200","secretPath":"v1/participants",
                             "folderPath":"pc1/controlplane"}})
        );
    }
}
