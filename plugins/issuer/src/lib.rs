//! The `cfm.issuer.credentials` activity: registers the participant as a holder with the
//! Issuer Service, asks its Identity Hub to request the dataspace's credentials from that
//! issuer, and polls the request (rescheduling itself) until it is `ISSUED`. Outputs
//! `holderPid` and `credentialRequest` (the request's URL). A request that ends in `ERROR`
//! fails the activity, so the orchestration is compensated.

use std::time::Duration;

use cfm_plugin_sdk::{
    Activity, CapabilityResultExt, Error, Outcome, Plugin, http, keys, log, required_secret,
    required_setting,
};
use serde_json::{Value, json};

/// The plugin's `[plugin.settings]` table.
#[derive(serde::Deserialize, Clone)]
#[serde(rename_all = "camelCase", default)]
struct Settings {
    /// Base URL of the Issuer Service's administration API.
    issuer_url: String,
    /// The issuer's own participant context id in the Issuer Service.
    issuer_id: String,
    /// The issuer's DID: credentials of the dataspace profile with this issuer are requested.
    issuer_did: String,
    /// Base URL of the Identity Hub's identity API.
    identity_hub_url: String,
    /// The granted secret holding the administration API key (`x-api-key`).
    admin_api_key_secret: String,
    /// Time between two looks at a pending credential request.
    poll_interval_ms: u64,
    /// Looks at a pending request before the activity gives up.
    max_polls: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            issuer_url: String::new(),
            issuer_id: String::new(),
            issuer_did: String::new(),
            identity_hub_url: String::new(),
            admin_api_key_secret: String::new(),
            poll_interval_ms: 2_000,
            max_polls: 150,
        }
    }
}

/// One credential of the dataspace profile (`cfm.vpa.credentials`).
#[derive(serde::Deserialize)]
struct CredentialSpec {
    #[serde(default)]
    id: String,
    #[serde(default, rename = "type")]
    credential_type: String,
    #[serde(default)]
    issuer: String,
    #[serde(default)]
    format: String,
}

/// What a pending request hands to the next poll.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Pending {
    holder_pid: String,
    credential_request: String,
    polls: u32,
}

struct Issuer;

impl Plugin for Issuer {
    type Settings = Settings;

    fn deploy(activity: &Activity<Settings>) -> Result<Outcome, Error> {
        let settings = &configured(activity)?;
        let api_key = required_secret(&settings.admin_api_key_secret)?;
        match activity.state::<Pending>()? {
            None => request(activity, settings, &api_key),
            Some(pending) => poll(settings, &api_key, pending),
        }
    }

    fn dispose(activity: &Activity<Settings>) -> Result<Outcome, Error> {
        let settings = &configured(activity)?;
        let api_key = required_secret(&settings.admin_api_key_secret)?;
        let did = activity.participant_id();
        http::Request::delete(holder_url(settings, Some(did)))
            .header("x-api-key", &api_key)
            .send()
            .context("remove the holder from the Issuer Service")?
            .error_for_status_unless(404, "remove the holder from the Issuer Service")?;
        log::info(&format!("holder {did}: removed from the Issuer Service"));
        Ok(Outcome::empty())
    }
}

/// First run: register the holder and start the credential request.
fn request(
    activity: &Activity<Settings>,
    settings: &Settings,
    api_key: &str,
) -> Result<Outcome, Error> {
    let pc = activity.participant_context_id();
    let did = activity.participant_id();
    // 409: registered by an earlier delivery of this activity.
    http::Request::post(holder_url(settings, None))
        .header("x-api-key", api_key)
        .json(&json!({"did": did, "holderId": pc, "name": did, "properties": {}}))?
        .send()
        .context("register the holder with the Issuer Service")?
        .error_for_status_unless(409, "register the holder with the Issuer Service")?;

    let specs: Vec<CredentialSpec> = activity
        .data_value(keys::VPA_CREDENTIALS)?
        .unwrap_or_default();
    let credentials: Vec<Value> = specs
        .iter()
        .filter(|spec| spec.issuer.is_empty() || spec.issuer == settings.issuer_did)
        .map(|spec| json!({"format": spec.format, "type": spec.credential_type, "id": spec.id}))
        .collect();
    if credentials.is_empty() {
        return Err(Error::Fatal(format!(
            "the dataspace profile names no credential issued by {}",
            settings.issuer_did
        )));
    }
    // One request per onboarding: the orchestration id is stable across redeliveries.
    let holder_pid = activity.request().orchestration_id.clone();
    let path = format!("/v1beta/participants/{pc}/credentials/request");
    let requested = http::Request::post(http::join(&settings.identity_hub_url, &path))
        .header("x-api-key", api_key)
        .json(&json!({
            "issuerDid": settings.issuer_did,
            "holderPid": holder_pid,
            "credentials": credentials,
        }))?
        .send()
        .context("request the credentials through the Identity Hub")?;
    let location = if requested.status == 409 {
        format!("{path}/{holder_pid}")
    } else {
        let requested = requested.error_for_status("request the credentials")?;
        requested
            .header("location")
            .map(str::to_string)
            .unwrap_or_else(|| format!("{path}/{holder_pid}"))
    };
    log::info(&format!(
        "holder {did}: {} credential(s) requested as {holder_pid}",
        credentials.len()
    ));
    Outcome::reschedule(
        Duration::from_millis(settings.poll_interval_ms),
        Pending {
            holder_pid,
            credential_request: http::resolve(&settings.identity_hub_url, &location),
            polls: 0,
        },
    )
}

/// Later runs: look at the request until it is issued or failed.
fn poll(settings: &Settings, api_key: &str, mut pending: Pending) -> Result<Outcome, Error> {
    let status = http::Request::get(&pending.credential_request)
        .header("x-api-key", api_key)
        .send()
        .context("read the credential request")?
        .error_for_status("read the credential request")?
        .json::<Value>()?;
    match status["status"].as_str() {
        Some("ISSUED") => Outcome::complete(json!({
            "holderPid": pending.holder_pid,
            "credentialRequest": pending.credential_request,
        })),
        Some("ERROR") => Err(Error::Fatal(format!(
            "credential request {} ended in ERROR: {}",
            pending.holder_pid,
            status.get("errorDetail").unwrap_or(&Value::Null)
        ))),
        _ if pending.polls + 1 >= settings.max_polls => Err(Error::Fatal(format!(
            "credential request {} still pending after {} looks",
            pending.holder_pid, settings.max_polls
        ))),
        _ => {
            pending.polls += 1;
            Outcome::reschedule(Duration::from_millis(settings.poll_interval_ms), pending)
        }
    }
}

/// The Issuer Service's holders of this issuer, or one of them.
fn holder_url(settings: &Settings, did: Option<&str>) -> String {
    let holders = format!("/v1beta/participants/{}/holders", settings.issuer_id);
    match did {
        Some(did) => http::join(&settings.issuer_url, &format!("{holders}/{did}")),
        None => http::join(&settings.issuer_url, &holders),
    }
}

/// The settings with the participant's cell's service URLs (cell properties
/// `cfm.edc.issuerUrl`, `cfm.edc.identityHubUrl`) in place of the configured ones, checked
/// complete: a missing one is a configuration error, not worth retrying.
fn configured(activity: &Activity<Settings>) -> Result<Settings, Error> {
    let mut settings = activity.settings().clone();
    settings.issuer_url = activity.cell_setting("cfm.edc.issuerUrl", &settings.issuer_url)?;
    settings.identity_hub_url =
        activity.cell_setting("cfm.edc.identityHubUrl", &settings.identity_hub_url)?;
    for (name, value) in [
        ("issuerUrl", &settings.issuer_url),
        ("issuerId", &settings.issuer_id),
        ("issuerDid", &settings.issuer_did),
        ("identityHubUrl", &settings.identity_hub_url),
        ("adminApiKeySecret", &settings.admin_api_key_secret),
    ] {
        required_setting("issuer", name, value)?;
    }
    Ok(settings)
}

cfm_plugin_sdk::export_plugin!(Issuer);
