//! The `cfm.edc.participant-context` activity: the participant's context in the EDC
//! Identity Hub (its DID, key and service endpoints) and in the Control Plane (a
//! `ParticipantContext` and its configuration). Outputs `participantContextId`.
//!
//! Both services are called with the operator's administration API key, read from a
//! granted secret. The Identity Hub answers a new participant with its own API credentials;
//! they are kept in the participant's secrets folder, never in the output.

use cfm_plugin_sdk::{
    Activity, CapabilityResultExt, Error, Outcome, Plugin, http, log, required_secret,
    required_setting, secrets,
};
use serde_json::json;

/// The plugin's `[plugin.settings]` table.
#[derive(serde::Deserialize, Default, Clone)]
#[serde(rename_all = "camelCase", default)]
struct Settings {
    /// Base URL of the Identity Hub's identity API, e.g. `https://ih.example/api/identity`.
    identity_hub_url: String,
    /// Base URL of the Control Plane's management API, e.g. `https://cp.example/api/management`.
    control_plane_url: String,
    /// The granted secret holding the administration API key (`x-api-key`).
    admin_api_key_secret: String,
    /// The participant's public endpoints; `{participantContextId}` is replaced.
    protocol_endpoint: String,
    credential_service_endpoint: String,
    data_service_endpoint: String,
}

/// Where the Identity Hub's answer (the participant's own API credentials) is kept.
const IDENTITY_HUB_CREDENTIALS: &str = "identity-hub-credentials";

struct EdcContext;

impl Plugin for EdcContext {
    type Settings = Settings;

    fn deploy(activity: &Activity<Settings>) -> Result<Outcome, Error> {
        let settings = &configured(activity)?;
        let api_key = required_secret(&settings.admin_api_key_secret)?;
        let pc = activity.participant_context_id();
        let did = activity.participant_id();
        let endpoint = |template: &str| template.replace("{participantContextId}", pc);

        let identity = json!({
            "participantContextId": pc,
            "did": did,
            "active": true,
            "roles": [],
            "serviceEndpoints": [
                {"id": "credential-service", "type": "CredentialService",
                 "serviceEndpoint": endpoint(&settings.credential_service_endpoint)},
                {"id": "protocol", "type": "ProtocolEndpoint",
                 "serviceEndpoint": endpoint(&settings.protocol_endpoint)},
                {"id": "data", "type": "DataService",
                 "serviceEndpoint": endpoint(&settings.data_service_endpoint)},
            ],
            "key": {
                "keyId": format!("{did}#key1"),
                "privateKeyAlias": format!("{pc}-key1"),
                "keyGeneratorParams": {"algorithm": "EDDSA", "curve": "Ed25519"},
            },
        });
        identity_hub_participant(activity, settings, &api_key, &identity)?;

        let context = json!({
            "@context": ["https://w3id.org/edc/connector/management/v2"],
            "@type": "ParticipantContext",
            "@id": pc,
            "identity": did,
            "properties": {},
            "state": "ACTIVATED",
        });
        http::Request::post(http::join(
            &settings.control_plane_url,
            "/v5beta/participants",
        ))
        .header("x-api-key", &api_key)
        .json(&context)?
        .send()
        .context("create the Control Plane participant context")?
        .error_for_status_unless(409, "create the Control Plane participant context")?;
        let config = json!({
            "edc.participant.id": did,
            "edc.iam.issuer.id": did,
            "edc.iam.sts.oauth.client.id": did,
            "edc.dsp.callback.address": endpoint(&settings.protocol_endpoint),
        });
        http::Request::new(
            http::Method::Patch,
            http::join(
                &settings.control_plane_url,
                &format!("/v5beta/participants/{pc}/config"),
            ),
        )
        .header("x-api-key", &api_key)
        .json(&config)?
        .send()
        .context("configure the Control Plane participant context")?
        .error_for_status("configure the Control Plane participant context")?;
        log::info(&format!(
            "Control Plane participant context {pc}: configured"
        ));
        Outcome::complete(json!({ "participantContextId": pc }))
    }

    fn dispose(activity: &Activity<Settings>) -> Result<Outcome, Error> {
        let settings = &configured(activity)?;
        let api_key = required_secret(&settings.admin_api_key_secret)?;
        let pc = activity.participant_context_id();
        for (what, url) in [
            (
                "the Control Plane participant context",
                http::join(
                    &settings.control_plane_url,
                    &format!("/v5beta/participants/{pc}"),
                ),
            ),
            (
                "the Identity Hub participant",
                http::join(
                    &settings.identity_hub_url,
                    &format!("/v1beta/participants/{pc}"),
                ),
            ),
        ] {
            // Already gone is what a redelivered dispose finds.
            http::Request::delete(url)
                .header("x-api-key", &api_key)
                .send()
                .context(format!("delete {what}"))?
                .error_for_status_unless(404, &format!("delete {what}"))?;
        }
        let path = activity.secret_path(IDENTITY_HUB_CREDENTIALS);
        secrets::delete(&path).context(format!("delete {path}"))?;
        Ok(Outcome::empty())
    }
}

/// Creates the participant in the Identity Hub and keeps the API credentials it answers
/// with, which it gives out only once. A participant found already there is fine when its
/// credentials were kept; when they were not, an earlier attempt stopped between the
/// Identity Hub's answer and the secrets store, and the participant is deleted and made
/// again to get credentials nobody has lost. That is safe at this point: nothing later in
/// the onboarding has used the participant yet.
fn identity_hub_participant(
    activity: &Activity<Settings>,
    settings: &Settings,
    api_key: &str,
    identity: &serde_json::Value,
) -> Result<(), Error> {
    let pc = activity.participant_context_id();
    let path = activity.secret_path(IDENTITY_HUB_CREDENTIALS);
    let participants = http::join(&settings.identity_hub_url, "/v1beta/participants");
    let create = || {
        http::Request::post(&participants)
            .header("x-api-key", api_key)
            .json(identity)?
            .send()
            .context("create the Identity Hub participant")
    };
    let mut created = create()?;
    if created.status == 409 {
        if secrets::get(&path)
            .context(format!("read {path}"))?
            .is_some()
        {
            log::info(&format!("Identity Hub participant {pc}: already there"));
            return Ok(());
        }
        log::warn(&format!(
            "Identity Hub participant {pc} exists without kept credentials: recreating it"
        ));
        http::Request::delete(http::join(&participants, &format!("/{pc}")))
            .header("x-api-key", api_key)
            .send()
            .context("delete the Identity Hub participant")?
            .error_for_status_unless(404, "delete the Identity Hub participant")?;
        created = create()?;
    }
    let created = created.error_for_status("create the Identity Hub participant")?;
    // The participant's own credentials for the Identity Hub: a secret, so into the
    // participant's secrets folder and never into the output.
    secrets::put(&path, &created.text())
        .context(format!("keep the Identity Hub credentials at {path}"))?;
    log::info(&format!("Identity Hub participant {pc}: created"));
    Ok(())
}

/// The settings with the participant's cell's service URLs (cell properties
/// `cfm.edc.identityHubUrl`, `cfm.edc.controlPlaneUrl`) in place of the configured ones,
/// checked complete: a missing one is a configuration error, not worth retrying.
fn configured(activity: &Activity<Settings>) -> Result<Settings, Error> {
    let mut settings = activity.settings().clone();
    settings.identity_hub_url =
        activity.cell_setting("cfm.edc.identityHubUrl", &settings.identity_hub_url)?;
    settings.control_plane_url =
        activity.cell_setting("cfm.edc.controlPlaneUrl", &settings.control_plane_url)?;
    for (name, value) in [
        ("identityHubUrl", &settings.identity_hub_url),
        ("controlPlaneUrl", &settings.control_plane_url),
        ("adminApiKeySecret", &settings.admin_api_key_secret),
        ("protocolEndpoint", &settings.protocol_endpoint),
        (
            "credentialServiceEndpoint",
            &settings.credential_service_endpoint,
        ),
        ("dataServiceEndpoint", &settings.data_service_endpoint),
    ] {
        required_setting("edc-context", name, value)?;
    }
    Ok(settings)
}

cfm_plugin_sdk::export_plugin!(EdcContext);
