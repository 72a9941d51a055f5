//! `identityhub-activity` (upstream's ih agent): the participant in the Identity Hub, with
//! its DID, a generated Ed25519 key, its service endpoints and its Vault folder.

use cfm_plugin_sdk::{Activity, Error, Outcome, http, log, random_hex, required_setting};
use serde_json::{Value, json};

use crate::common::{Settings, created, deleted, expand, participant_did, send};

/// The activity type this module serves.
pub const ACTIVITY_TYPE: &str = "identityhub-activity";
const AGENT: &str = "identityhub";
/// The scope of every Identity Hub administration call.
const SCOPE: &str = "identity-api:admin";

/// The participant's public endpoints, announced in its DID document.
#[derive(Debug)]
struct Endpoints {
    credential_service: String,
    protocol: String,
    data_service: String,
}

/// Creates the participant; one found already there was created by an earlier delivery.
pub fn deploy(activity: &Activity<Settings>, settings: &Settings) -> Result<Outcome, Error> {
    let identity_hub = required_setting(AGENT, "identityHubUrl", &settings.identity_hub_url)?;
    let vault = required_setting(AGENT, "vaultUrl", &settings.vault_url)?;
    let did = participant_did(activity)?;
    if !did.starts_with("did:web:") {
        log::warn(&format!("participant DID '{did}' is not a did:web DID"));
    }
    let pc = activity.participant_context_id();
    let endpoints = Endpoints {
        credential_service: endpoint(
            activity,
            "credentialServiceUrl",
            &settings.credential_service_url,
            "cfm.participant.credentialservice",
        )?,
        protocol: endpoint(
            activity,
            "protocolServiceUrl",
            &settings.protocol_service_url,
            "cfm.participant.protocolservice",
        )?,
        data_service: endpoint(
            activity,
            "dataServiceUrl",
            &settings.data_service_url,
            "cfm.participant.dataservice",
        )?,
    };
    let key_alias = uuid_v4(&random_hex(16)?);
    let body = participant(pc, did, &endpoints, &key_alias, vault);

    let action = format!("create the Identity Hub participant {pc}");
    let request =
        http::Request::post(http::join(identity_hub, "/v1beta/participants")).json(&body)?;
    let outcome = if created(send(AGENT, settings, SCOPE, request, &action)?, &action)? {
        "created"
    } else {
        "already there"
    };
    log::info(&format!("Identity Hub participant {pc} ({did}): {outcome}"));
    Ok(Outcome::empty())
}

/// Deletes the participant; already gone is fine.
pub fn dispose(activity: &Activity<Settings>, settings: &Settings) -> Result<Outcome, Error> {
    let identity_hub = required_setting(AGENT, "identityHubUrl", &settings.identity_hub_url)?;
    let pc = activity.participant_context_id();
    let action = format!("delete the Identity Hub participant {pc}");
    let request = http::Request::delete(http::join(
        identity_hub,
        &format!("/v1beta/participants/{pc}"),
    ));
    let outcome = if deleted(send(AGENT, settings, SCOPE, request, &action)?, &action)? {
        "deleted"
    } else {
        "already gone"
    };
    log::info(&format!("Identity Hub participant {pc}: {outcome}"));
    Ok(Outcome::empty())
}

/// One endpoint: the setting's template when configured, else what the processing data
/// says under `data_key`; fatal when neither has one.
fn endpoint(
    activity: &Activity<Settings>,
    setting: &str,
    template: &str,
    data_key: &str,
) -> Result<String, Error> {
    if !template.is_empty() {
        return Ok(expand(template, activity.participant_context_id()));
    }
    match activity.data_value::<String>(data_key)? {
        Some(url) if !url.is_empty() => Ok(url),
        _ => Err(Error::Fatal(format!(
            "setting '{setting}' is not configured for the {AGENT} plugin, \
             and the processing data has no '{data_key}'"
        ))),
    }
}

/// The Identity Hub's participant manifest, as upstream sends it.
fn participant(
    participant_context_id: &str,
    did: &str,
    endpoints: &Endpoints,
    key_alias: &str,
    vault_url: &str,
) -> Value {
    let pc = participant_context_id;
    json!({
        "roles": ["participant"],
        "provisionStsAccount": false,
        "provisionApiKey": false,
        "serviceEndpoints": [
            {"type": "CredentialService", "id": format!("{pc}-credentialservice"),
             "serviceEndpoint": endpoints.credential_service},
            {"type": "ProtocolEndpoint", "id": format!("{pc}-dsp"),
             "serviceEndpoint": endpoints.protocol},
            {"type": "DataService", "id": format!("{pc}-dataservice"),
             "serviceEndpoint": endpoints.data_service},
        ],
        "active": true,
        "participantContextId": pc,
        "did": did,
        "key": {
            "keyId": format!("{did}#key1"),
            "privateKeyAlias": key_alias,
            "keyGeneratorParams": {"algorithm": "EDDSA", "curve": "Ed25519"},
        },
        "additionalProperties": {
            "edc.vault.hashicorp.config": {
                "config": {
                    "secretPath": "v1/participants",
                    "folderPath": format!("{pc}/identityhub"),
                    "vaultUrl": vault_url,
                },
            },
        },
    })
}

/// A version 4 UUID, in its dashed form, from 32 random hex digits.
fn uuid_v4(hex: &str) -> String {
    let mut digits: Vec<char> = hex.chars().collect();
    digits.resize(32, '0');
    // Version 4, and variant 10xx in the top bits of the 17th digit.
    digits[12] = '4';
    digits[16] = match digits[16].to_digit(16).unwrap_or(0) & 0b11 {
        0 => '8',
        1 => '9',
        2 => 'a',
        _ => 'b',
    };
    let text: String = digits.into_iter().collect();
    format!(
        "{}-{}-{}-{}-{}",
        &text[..8],
        &text[8..12],
        &text[12..16],
        &text[16..20],
        &text[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids() {
        assert_eq!(
            uuid_v4("0123456789abcdef0123456789abcdef"),
            "01234567-89ab-4def-8123-456789abcdef"
        );
        assert_eq!(
            uuid_v4("ffffffffffffffffffffffffffffffff"),
            "ffffffff-ffff-4fff-bfff-ffffffffffff"
        );
    }

    #[test]
    fn participant_manifest() {
        let endpoints = Endpoints {
            credential_service: "https://cs/pc1".into(),
            protocol: "https://dsp/pc1".into(),
            data_service: "https://data/pc1".into(),
        };
        let body = participant("pc1", "did:web:p", &endpoints, "alias", "http://vault:8200");
        assert_eq!(
            body,
            json!({"roles":["participant"],"provisionStsAccount":false,"provisionApiKey":false,
             "serviceEndpoints":[
                {"type":"CredentialService","id":"pc1-credentialservice","serviceEndpoint":"https://cs/pc1"},
                {"type":"ProtocolEndpoint","id":"pc1-dsp","serviceEndpoint":"https://dsp/pc1"},
                {"type":"DataService","id":"pc1-dataservice","serviceEndpoint":"https://data/pc1"}],
             "active":true,"participantContextId":"pc1","did":"did:web:p",
             "key":{"keyId":"did:web:p#key1","privateKeyAlias":"alias",
                    "keyGeneratorParams":{"algorithm":"EDDSA","curve":"Ed25519"}},
             "additionalProperties":{"edc.vault.hashicorp.config":{"config":{
                "secretPath":"v1/participants","folderPath":"pc1/identityhub",
                "vaultUrl":"http://vault:8200"}}}})
        );
    }
}
