//! `onboarding-activity` (upstream's onboarding agent): the participant's Identity Hub
//! requests the dataspace profile's credentials from their issuer, and the activity polls
//! the request until it is issued. Dispose revokes what the issuer issued to the participant.

use std::collections::BTreeSet;
use std::time::Duration;

use cfm_plugin_sdk::{Activity, Error, Outcome, http, keys, log, required_setting};
use serde_json::{Value, json};

use crate::common::{Settings, participant_did, path_segment, send};
use crate::registration;

/// The activity type this module serves.
pub const ACTIVITY_TYPE: &str = "onboarding-activity";
const AGENT: &str = "onboarding";
const WRITE_SCOPE: &str = "identity-api:credentials:write";
const READ_SCOPE: &str = "identity-api:credentials:read";
/// How many credentials one query of the Issuer Service asks for.
const QUERY_PAGE: usize = 50;

/// One credential of the dataspace profile (`cfm.vpa.credentials`).
#[derive(serde::Deserialize, Debug, Default)]
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

/// What a pending request hands to the next look at it.
#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
struct Pending {
    holder_pid: String,
    credential_request: String,
}

/// Where a credential request stands.
#[derive(Debug, PartialEq)]
enum Progress {
    Issued,
    Failed,
    /// `CREATED`, `REQUESTED` or anything else not final yet.
    Pending,
}

impl Progress {
    fn of(status: &str) -> Self {
        match status {
            "ISSUED" => Progress::Issued,
            "ERROR" => Progress::Failed,
            _ => Progress::Pending,
        }
    }
}

/// First run: request the credentials and reschedule. Later runs: look at the request,
/// rescheduling until it is issued (complete with `holderPid`, `credentialRequest`,
/// `participantContextId`) or failed (fatal).
pub fn deploy(activity: &Activity<Settings>, settings: &Settings) -> Result<Outcome, Error> {
    let identity_hub = required_setting(AGENT, "identityHubUrl", &settings.identity_hub_url)?;
    match activity.state::<Pending>()? {
        None => request(activity, settings, identity_hub),
        Some(pending) => poll(activity, settings, identity_hub, pending),
    }
}

fn request(
    activity: &Activity<Settings>,
    settings: &Settings,
    identity_hub: &str,
) -> Result<Outcome, Error> {
    let pc = activity.participant_context_id();
    let specs: Vec<CredentialSpec> = activity
        .data_value(keys::VPA_CREDENTIALS)?
        .unwrap_or_default();
    // The orchestration id: stable across redeliveries, so a first run that is delivered
    // again finds its own request (409) instead of making a second one.
    let holder_pid = activity.request().orchestration_id.clone();
    let body = credential_request(&specs, &holder_pid)?;
    let status_url = request_url(identity_hub, pc, &holder_pid);

    let action = format!("request the credentials of participant context {pc}");
    let request = http::Request::post(http::join(
        identity_hub,
        &format!("/v1beta/participants/{pc}/credentials/request"),
    ))
    .json(&body)?;
    let response = send(AGENT, settings, WRITE_SCOPE, request, &action)?;
    let credential_request = if response.status == 409 {
        log::info(&format!(
            "credential request {holder_pid} of participant context {pc}: already made"
        ));
        status_url
    } else {
        let response = response.error_for_status(&action)?;
        log::info(&format!(
            "credential request {holder_pid} of participant context {pc}: made"
        ));
        match response.header("location") {
            Some(location) if !location.is_empty() => location.to_string(),
            _ => status_url,
        }
    };
    reschedule(
        settings,
        Pending {
            holder_pid,
            credential_request,
        },
    )
}

fn poll(
    activity: &Activity<Settings>,
    settings: &Settings,
    identity_hub: &str,
    pending: Pending,
) -> Result<Outcome, Error> {
    let pc = activity.participant_context_id();
    let holder_pid = &pending.holder_pid;
    let action = format!("look at credential request {holder_pid} of participant context {pc}");
    let request = http::Request::get(request_url(identity_hub, pc, holder_pid));
    let response =
        send(AGENT, settings, READ_SCOPE, request, &action)?.error_for_status(&action)?;
    let answer: Value = response.json()?;
    let status = answer
        .get("status")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::Fatal(format!("{action}: the answer has no status")))?;
    match Progress::of(status) {
        Progress::Issued => {
            log::info(&format!(
                "credential request {holder_pid} of participant context {pc}: issued"
            ));
            Outcome::complete(json!({
                "holderPid": pending.holder_pid,
                "credentialRequest": pending.credential_request,
                "participantContextId": pc,
            }))
        }
        Progress::Failed => Err(Error::Fatal(format!(
            "credential request {holder_pid} of participant context {pc} ended in {status}"
        ))),
        Progress::Pending => {
            log::debug(&format!(
                "credential request {holder_pid} of participant context {pc}: {status}"
            ));
            reschedule(settings, pending)
        }
    }
}

fn reschedule(settings: &Settings, pending: Pending) -> Result<Outcome, Error> {
    Outcome::reschedule(Duration::from_millis(settings.poll_interval_ms), pending)
}

/// Revokes every credential the issuer issued to the participant's DID, for every
/// credential type of the profile. A revocation that fails does not stop the others.
pub fn dispose(activity: &Activity<Settings>, settings: &Settings) -> Result<Outcome, Error> {
    let issuer = required_setting(AGENT, "issuerUrl", &settings.issuer_url)?;
    let issuer_id = required_setting(AGENT, "issuerId", &settings.issuer_id)?;
    let did = participant_did(activity)?;
    let specs: Vec<CredentialSpec> = activity
        .data_value(keys::VPA_CREDENTIALS)?
        .unwrap_or_default();
    let mut types = Vec::new();
    for spec in &specs {
        if !spec.credential_type.is_empty() && !types.contains(&spec.credential_type.as_str()) {
            types.push(spec.credential_type.as_str());
        }
    }
    if types.is_empty() {
        log::info(&format!(
            "the dataspace profile names no credential type: nothing to revoke for {did}"
        ));
    }

    let mut failures = Vec::new();
    let mut revoked = 0;
    for credential_type in types {
        for id in credential_ids(settings, issuer, issuer_id, did, credential_type)? {
            let action = format!("revoke credential {id} ({credential_type}) of {did}");
            let request = http::Request::post(http::join(
                issuer,
                &format!(
                    "/v1beta/participants/{issuer_id}/credentials/{}/revoke",
                    path_segment(&id)
                ),
            ));
            match send(AGENT, settings, registration::SCOPE, request, &action)
                .and_then(|response| response.error_for_status(&action))
            {
                Ok(_) => revoked += 1,
                Err(error) => {
                    log::warn(&error.to_string());
                    failures.push(error);
                }
            }
        }
    }
    combine(failures)?;
    log::info(&format!("credentials of {did}: {revoked} revoked"));
    Ok(Outcome::empty())
}

/// The ids of the credentials of `credential_type` the issuer issued to `did`, page by page.
fn credential_ids(
    settings: &Settings,
    issuer: &str,
    issuer_id: &str,
    did: &str,
    credential_type: &str,
) -> Result<Vec<String>, Error> {
    /// The Issuer Service's `VerifiableCredentialDto`: only the credential's id matters.
    #[derive(serde::Deserialize)]
    struct Issued {
        #[serde(default)]
        credential: Credential,
    }
    #[derive(serde::Deserialize, Default)]
    struct Credential {
        #[serde(default)]
        id: Option<String>,
    }

    let action = format!("query the {credential_type} credentials of {did}");
    let url = http::join(
        issuer,
        &format!("/v1beta/participants/{issuer_id}/credentials/query"),
    );
    let mut ids = BTreeSet::new();
    let mut offset = 0;
    loop {
        let request = http::Request::post(&url).json(&query(offset, credential_type, did))?;
        let page: Vec<Issued> = send(AGENT, settings, registration::SCOPE, request, &action)?
            .error_for_status(&action)?
            .json()?;
        let count = page.len();
        let before = ids.len();
        for issued in page {
            match issued.credential.id {
                Some(id) if !id.is_empty() => {
                    ids.insert(id);
                }
                _ => log::warn(&format!("{action}: a credential without an id is skipped")),
            }
        }
        // A short page is the last; a page with nothing new means the service ignores
        // the offset, and asking again would never end.
        if count < QUERY_PAGE || ids.len() == before {
            break;
        }
        offset += QUERY_PAGE;
    }
    Ok(ids.into_iter().collect())
}

/// The Issuer Service query for one credential type of one holder.
fn query(offset: usize, credential_type: &str, did: &str) -> Value {
    json!({
        "offset": offset,
        "limit": QUERY_PAGE,
        "sortOrder": "DESC",
        "filterExpression": [
            {"operandLeft": "verifiableCredential.credential.type", "operator": "contains",
             "operandRight": credential_type},
            {"operandLeft": "holderId", "operator": "=", "operandRight": did},
        ],
    })
}

/// The Identity Hub's credential request body: one issuer, every credential of the profile.
fn credential_request(specs: &[CredentialSpec], holder_pid: &str) -> Result<Value, Error> {
    if specs.is_empty() {
        return Err(Error::Fatal(format!(
            "processing data has no credential specs in '{}'",
            keys::VPA_CREDENTIALS
        )));
    }
    for (index, spec) in specs.iter().enumerate() {
        for (field, value) in [
            ("id", &spec.id),
            ("type", &spec.credential_type),
            ("issuer", &spec.issuer),
            ("format", &spec.format),
        ] {
            if value.is_empty() {
                return Err(Error::Fatal(format!(
                    "credential spec {index} in '{}' has no '{field}'",
                    keys::VPA_CREDENTIALS
                )));
            }
        }
    }
    let issuers: BTreeSet<&str> = specs.iter().map(|spec| spec.issuer.as_str()).collect();
    if issuers.len() > 1 {
        return Err(Error::Fatal(format!(
            "the credential specs name several issuers ({}): one credential request \
             goes to one issuer",
            issuers.into_iter().collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(json!({
        "issuerDid": specs[0].issuer,
        "holderPid": holder_pid,
        "credentials": specs
            .iter()
            .map(|spec| json!({"format": spec.format, "type": spec.credential_type, "id": spec.id}))
            .collect::<Vec<_>>(),
    }))
}

/// The credential request's status resource.
fn request_url(identity_hub: &str, participant_context_id: &str, holder_pid: &str) -> String {
    http::join(
        identity_hub,
        &format!(
            "/v1beta/participants/{}/credentials/request/{}",
            path_segment(participant_context_id),
            path_segment(holder_pid)
        ),
    )
}

/// Several revocations' failures as one: retried when all of them may clear up, fatal
/// as soon as one will not.
fn combine(failures: Vec<Error>) -> Result<(), Error> {
    if failures.is_empty() {
        return Ok(());
    }
    let transient = failures.iter().all(Error::is_transient);
    let message = failures
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    Err(if transient {
        Error::Retry(message)
    } else {
        Error::Fatal(message)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, credential_type: &str, issuer: &str) -> CredentialSpec {
        CredentialSpec {
            id: id.into(),
            credential_type: credential_type.into(),
            issuer: issuer.into(),
            format: "VC1_0_JWT".into(),
        }
    }

    #[test]
    fn credential_requests() {
        let specs = [
            spec("m", "MembershipCredential", "did:web:issuer"),
            spec("d", "DataProcessorCredential", "did:web:issuer"),
        ];
        assert_eq!(
            credential_request(&specs, "o1").unwrap(),
            json!({"issuerDid":"did:web:issuer","holderPid":"o1","credentials":[
                {"format":"VC1_0_JWT","type":"MembershipCredential","id":"m"},
                {"format":"VC1_0_JWT","type":"DataProcessorCredential","id":"d"}]})
        );
        assert!(matches!(
            credential_request(&[], "o1"),
            Err(Error::Fatal(_))
        ));
        let Err(Error::Fatal(message)) =
            credential_request(&[spec("m", "", "did:web:issuer")], "o1")
        else {
            panic!("a spec without a type was accepted");
        };
        assert!(message.contains("'type'"), "{message}");
        let Err(Error::Fatal(message)) = credential_request(
            &[spec("m", "M", "did:web:a"), spec("n", "N", "did:web:b")],
            "o1",
        ) else {
            panic!("two issuers were accepted");
        };
        assert!(message.contains("did:web:a, did:web:b"), "{message}");
    }

    #[test]
    fn progress() {
        assert_eq!(Progress::of("ISSUED"), Progress::Issued);
        assert_eq!(Progress::of("ERROR"), Progress::Failed);
        assert_eq!(Progress::of("CREATED"), Progress::Pending);
        assert_eq!(Progress::of("REQUESTED"), Progress::Pending);
    }

    #[test]
    fn state_round_trips() {
        let state = serde_json::to_value(Pending {
            holder_pid: "o1".into(),
            credential_request: "http://ih/r/o1".into(),
        })
        .unwrap();
        assert_eq!(
            state,
            json!({"holderPid":"o1","credentialRequest":"http://ih/r/o1"})
        );
    }

    #[test]
    fn queries_and_urls() {
        assert_eq!(
            query(50, "MembershipCredential", "did:web:p"),
            json!({"offset":50,"limit":50,"sortOrder":"DESC","filterExpression":[
                {"operandLeft":"verifiableCredential.credential.type","operator":"contains",
                 "operandRight":"MembershipCredential"},
                {"operandLeft":"holderId","operator":"=","operandRight":"did:web:p"}]})
        );
        assert_eq!(
            request_url("http://ih/api/identity/", "pc1", "o1"),
            "http://ih/api/identity/v1beta/participants/pc1/credentials/request/o1"
        );
        assert_eq!(path_segment("urn:uuid:0a-1b"), "urn:uuid:0a-1b");
        assert_eq!(
            path_segment("https://i.example/c/1?x#y"),
            "https:%2F%2Fi.example%2Fc%2F1%3Fx%23y"
        );
    }

    #[test]
    fn failures_combine() {
        assert!(combine(Vec::new()).is_ok());
        assert!(matches!(
            combine(vec![Error::Retry("a".into()), Error::Retry("b".into())]),
            Err(Error::Retry(message)) if message == "a; b"
        ));
        assert!(matches!(
            combine(vec![Error::Retry("a".into()), Error::Fatal("b".into())]),
            Err(Error::Fatal(_))
        ));
    }
}
