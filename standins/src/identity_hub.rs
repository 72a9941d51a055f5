//! The EDC Identity Hub's identity API (`/v1beta/participants`): participant contexts and
//! the holder side of credential requests, as IdentityHub's controllers answer today.
//!
//! Create (`identity-api:admin`) validates the manifest as `ParticipantManifestValidator`
//! (400), answers 409 for a known context and 200 with `{"apiKey","clientId","clientSecret"}`
//! (the controller returns an entity, so Jersey answers 200, not 201). Delete
//! (`identity-api:participants:write`) answers 204 (a `void` method), 404 when unknown.
//! A credential request (`identity-api:credentials:write`) answers 201 with `Location`, 409
//! for a known `holderPid`; its status (`identity-api:credentials:read`) is `CREATED` for a
//! number of polls, then the scripted outcome ([`EdcV::credential_outcome`]). Reaching
//! `ISSUED` needs the issuer to be [`crate::Options::issuer_did`] and the holder's DID to be
//! registered with the Issuer Service, else the request ends in `ERROR` as a real issuance
//! would; the issued credentials are then stored by the Issuer Service stand-in.

use std::collections::BTreeMap;

use axum::extract::{Extension, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::bearer::{self, Principal};
use crate::route::{Route, Service, path_of};
use crate::{
    EdcJson, EdcV, Reply, Shared, edc_bad, edc_error, edc_not_found, edc_owned, edc_string,
};

const ADMIN: &str = "identity-api:admin";

/// A credential request as the Identity Hub holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct CredentialRequest {
    /// The requesting participant context.
    pub participant_context: String,
    /// The holder's process id (the request's id).
    pub holder_pid: String,
    /// The issuer's DID as requested.
    pub issuer_did: String,
    /// `CREATED`, then the outcome (`ISSUED`, `ERROR`, ...).
    pub status: String,
    /// The requested credentials, `{"format","type","id"}` each.
    pub credentials: Vec<Value>,
    /// Status queries answered so far.
    pub polls: u32,
}

/// The Identity Hub's state.
#[derive(Default)]
pub(crate) struct IdentityHubStore {
    /// Participant context id → manifest as received.
    pub participants: BTreeMap<String, Value>,
    /// Holder pid → request.
    pub requests: BTreeMap<String, CredentialRequest>,
    outcome: String,
    polls_before_outcome: u32,
}

impl IdentityHubStore {
    pub fn new() -> Self {
        Self {
            outcome: "ISSUED".into(),
            polls_before_outcome: 1,
            ..Self::default()
        }
    }
}

pub(crate) fn router(inner: Shared) -> Router {
    let router = Router::new()
        .route(path_of(Route::IdentityHubCreate), post(create))
        .route(path_of(Route::IdentityHubDelete), delete(remove))
        .route(path_of(Route::CredentialRequest), post(request))
        .route(path_of(Route::CredentialStatus), get(status));
    bearer::guarded(router, &inner, Service::IdentityHub)
}

/// `ParticipantManifestValidator` and `KeyDescriptorValidator`, plus the shapes Jackson binds.
fn validate_manifest(body: &Value) -> Result<String, Response> {
    let pc = edc_string(body, "participantContextId")?;
    edc_string(body, "did")?;
    let keys: Vec<&Value> = match (body.get("key"), body.get("keys")) {
        (Some(key), _) if key.is_object() => vec![key],
        (_, Some(Value::Array(keys))) => keys.iter().collect(),
        (_, Some(key)) if key.is_object() => vec![key],
        _ => return Err(edc_bad("key descriptor cannot be null.")),
    };
    if keys.is_empty() {
        return Err(edc_bad("key descriptor cannot be empty."));
    }
    for key in keys {
        edc_string(key, "keyId")?;
        edc_string(key, "privateKeyAlias")?;
        let material = ["keyGeneratorParams", "publicKeyJwk", "publicKeyPem"];
        if !material
            .iter()
            .any(|m| key.get(*m).is_some_and(|v| !v.is_null()))
        {
            return Err(edc_bad(
                "Either the public key is specified (PEM or JWK), or the generator parameters are provided.",
            ));
        }
    }
    match body.get("serviceEndpoints") {
        None | Some(Value::Null) => {}
        Some(Value::Array(endpoints)) => {
            for endpoint in endpoints {
                for field in ["id", "type", "serviceEndpoint"] {
                    edc_string(endpoint, field)?;
                }
            }
        }
        Some(_) => return Err(edc_bad("'serviceEndpoints' must be an array")),
    }
    for flag in ["active", "provisionStsAccount", "provisionApiKey"] {
        if body.get(flag).is_some_and(|v| !v.is_boolean()) {
            return Err(edc_bad(&format!("'{flag}' must be a boolean")));
        }
    }
    Ok(pc)
}

async fn create(State(inner): State<Shared>, EdcJson(body): EdcJson) -> Reply {
    let pc = validate_manifest(&body)?;
    let mut store = inner.store();
    if store.identity_hub.participants.contains_key(&pc) {
        let message = format!("ParticipantContext with ID '{pc}' already exists.");
        return Err(edc_error(StatusCode::CONFLICT, &message));
    }
    let flag = |name: &str| body.get(name).and_then(Value::as_bool);
    let api_key = (flag("provisionApiKey") != Some(false)).then(crate::new_id);
    let sts = flag("provisionStsAccount") == Some(true);
    let answer = json!({
        "apiKey": api_key,
        "clientId": sts.then(|| body["did"].clone()),
        "clientSecret": sts.then(crate::new_id),
    });
    store.identity_hub.participants.insert(pc, body);
    Ok((StatusCode::OK, Json(answer)).into_response())
}

async fn remove(
    State(inner): State<Shared>,
    Extension(principal): Extension<Principal>,
    Path(pc): Path<String>,
) -> Reply {
    principal.authorize(&pc, ADMIN)?;
    let mut store = inner.store();
    if store.identity_hub.participants.remove(&pc).is_none() {
        return Err(edc_not_found("ParticipantContext", &pc));
    }
    store
        .identity_hub
        .requests
        .retain(|_, r| r.participant_context != pc);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `AuthorizationService.authorize(pc, pc, ParticipantContext)`: 404 when the context is
/// unknown, 403 when the token may not act for it.
fn authorize(store: &crate::Store, principal: &Principal, pc: &str) -> Result<(), Response> {
    if !store.identity_hub.participants.contains_key(pc) {
        return Err(edc_not_found("IdentityHubParticipantContext", pc));
    }
    principal.authorize(pc, ADMIN)
}

async fn request(
    State(inner): State<Shared>,
    Extension(principal): Extension<Principal>,
    Path(pc): Path<String>,
    EdcJson(body): EdcJson,
) -> Reply {
    let issuer_did = edc_string(&body, "issuerDid")?;
    let holder_pid = match body.get("holderPid") {
        None | Some(Value::Null) => crate::new_id(),
        Some(Value::String(pid)) if !pid.trim().is_empty() => pid.clone(),
        Some(_) => return Err(edc_bad("'holderPid' must be a non-blank string")),
    };
    let credentials = match body.get("credentials") {
        Some(Value::Array(items)) if !items.is_empty() => items.clone(),
        _ => return Err(edc_bad("'credentials' must be a non-empty array")),
    };
    for credential in &credentials {
        for field in ["format", "type", "id"] {
            edc_string(credential, field)?;
        }
    }
    let mut store = inner.store();
    authorize(&store, &principal, &pc)?;
    if store.identity_hub.requests.contains_key(&holder_pid) {
        let message = format!("A HolderCredentialRequest with ID '{holder_pid}' already exists.");
        return Err(edc_error(StatusCode::CONFLICT, &message));
    }
    let location = format!("/v1beta/participants/{pc}/credentials/request/{holder_pid}");
    let request = CredentialRequest {
        participant_context: pc,
        holder_pid: holder_pid.clone(),
        issuer_did,
        status: "CREATED".into(),
        credentials,
        polls: 0,
    };
    store.identity_hub.requests.insert(holder_pid, request);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)]).into_response())
}

async fn status(
    State(inner): State<Shared>,
    Extension(principal): Extension<Principal>,
    Path((pc, pid)): Path<(String, String)>,
) -> Reply {
    let mut store = inner.store();
    authorize(&store, &principal, &pc)?;
    let (before, outcome) = (
        store.identity_hub.polls_before_outcome,
        store.identity_hub.outcome.clone(),
    );
    let holder_did = store.identity_hub.participants[&pc]["did"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let requests = &mut store.identity_hub.requests;
    let request = edc_owned(requests, &pid, "HolderCredentialRequest", |r| {
        r.participant_context == pc
    })?;
    let due = request.status == "CREATED" && request.polls >= before;
    request.polls += 1;
    let request = request.clone();
    if due {
        let mut status = outcome;
        if status == "ISSUED" {
            let issued = request.issuer_did == inner.options.issuer_did
                && crate::issuer_service::issue(
                    &mut store,
                    &inner.options,
                    &holder_did,
                    &request.credentials,
                );
            if !issued {
                status = "ERROR".into();
            }
        }
        store.identity_hub.requests.get_mut(&pid).unwrap().status = status;
    }
    let request = &store.identity_hub.requests[&pid];
    let issuer_pid =
        (request.status != "CREATED").then(|| format!("issuer-{}", request.holder_pid));
    let answer = json!({
        "issuerDid": request.issuer_did,
        "holderPid": request.holder_pid,
        "issuerPid": issuer_pid,
        "status": request.status,
        "typesAndFormats": request.credentials,
    });
    Ok(Json(answer).into_response())
}

impl EdcV {
    /// Credential requests answer `CREATED` to `polls` status queries, then `status`
    /// (`ISSUED`, `ERROR`, or anything else the agents must cope with). Default: one
    /// `CREATED`, then `ISSUED`.
    pub fn credential_outcome(&self, status: &str, polls: u32) {
        let mut store = self.inner.store();
        store.identity_hub.outcome = status.to_string();
        store.identity_hub.polls_before_outcome = polls;
    }

    /// Identity Hub participant contexts: id → manifest as received.
    pub fn identity_hub_participants(&self) -> BTreeMap<String, Value> {
        self.inner.store().identity_hub.participants.clone()
    }

    /// Identity Hub credential requests, by holder pid.
    pub fn credential_requests(&self) -> BTreeMap<String, CredentialRequest> {
        self.inner.store().identity_hub.requests.clone()
    }
}
