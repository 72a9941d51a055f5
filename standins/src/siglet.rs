//! Siglet's management API: transfer-type mappings and signing-key mappings per participant
//! context, as Siglet's axum handlers answer them.
//!
//! Bodies go through axum's `Json` (another content type 415, malformed JSON 400, a missing
//! or mistyped field 422), so `PUT /transfer-type-mappings/{pc}`, which takes the **bare
//! map** `{"<name>": TransferType}`, refuses the wrapped `{"participantContextId","mappings"}`
//! body with 422. `TransferType` is camelCase with snake_case aliases; `transferType` and
//! `endpointType` are required, `tokenSource` (`client`|`provider`|`dataplane`) defaults to
//! `provider`, `endpointMappings` and `claimMappings` to `[]`, `txRenewalSupport` to false.
//! Errors are `{"error": ...}`. GET wants `siglet-mgmt-api:read`, the rest
//! `siglet-mgmt-api:write` (exactly). Stricter than Siglet, which does not bind `{id}` to
//! the token: here the path's (or body's) participant context must be the token's `sub`
//! (403), so a cfm that sends one participant's token for another's mapping fails here.

use std::collections::BTreeMap;

use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::bearer::{self, Principal};
use crate::route::{Route, Service, path_of};
use crate::{EdcV, Shared};

/// Where a transfer's token comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum TokenSource {
    Client,
    #[default]
    Provider,
    Dataplane,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EndpointMapping {
    key: String,
    value: String,
    endpoint: String,
    #[serde(
        default,
        alias = "claim_mappings",
        skip_serializing_if = "Vec::is_empty"
    )]
    claim_mappings: Vec<Value>,
}

/// Siglet's `TransferType`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TransferType {
    #[serde(alias = "transfer_type")]
    transfer_type: String,
    #[serde(alias = "endpoint_type")]
    endpoint_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    endpoint: Option<String>,
    #[serde(default, alias = "token_source")]
    token_source: TokenSource,
    #[serde(default, alias = "endpoint_mappings")]
    endpoint_mappings: Vec<EndpointMapping>,
    #[serde(default, alias = "tx_renewal_support")]
    tx_renewal_support: bool,
    #[serde(default, alias = "claim_mappings")]
    claim_mappings: Vec<Value>,
}

type Mappings = BTreeMap<String, TransferType>;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TransferTypeMapping {
    #[serde(alias = "participant_context_id")]
    participant_context_id: String,
    mappings: Mappings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeyMapping {
    #[serde(alias = "participant_context_id")]
    participant_context_id: String,
    #[serde(alias = "key_name")]
    key_name: String,
    kid: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeyMappingUpdate {
    #[serde(alias = "key_name")]
    key_name: String,
    kid: String,
}

/// Siglet's state.
#[derive(Default)]
pub(crate) struct SigletStore {
    /// Participant context id → transfer-type name → transfer type.
    transfer_type_mappings: BTreeMap<String, Mappings>,
    /// Participant context id → signing-key mapping.
    key_mappings: BTreeMap<String, KeyMapping>,
}

impl SigletStore {
    pub fn holds(&self, pc: &str) -> Vec<String> {
        let mut held = Vec::new();
        if self.transfer_type_mappings.contains_key(pc) {
            held.push(format!("siglet transfer-type mapping {pc}"));
        }
        if self.key_mappings.contains_key(pc) {
            held.push(format!("siglet key mapping {pc}"));
        }
        held
    }
}

pub(crate) fn router(inner: Shared) -> Router {
    let router = Router::new()
        .route(path_of(Route::TransferTypeCreate), post(create_transfer))
        .route(
            path_of(Route::TransferTypeGet),
            get(get_transfer)
                .put(replace_transfer)
                .delete(delete_transfer),
        )
        .route(path_of(Route::KeyMappingCreate), post(create_key))
        .route(
            path_of(Route::KeyMappingGet),
            get(get_key).put(replace_key).delete(delete_key),
        );
    bearer::guarded(router, &inner, Service::Siglet)
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

/// A path segment Siglet accepts as a participant context id, and the token's own.
fn check(principal: &Principal, pc: &str) -> Result<(), Response> {
    let bad = |c: char| c.is_whitespace() || "/?#%\\".contains(c);
    if pc.is_empty() || pc == "." || pc == ".." || pc.chars().any(bad) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "Invalid participant context id",
        ));
    }
    if principal.sub != pc {
        let message = format!("token for '{}' may not manage '{pc}'", principal.sub);
        return Err(error(StatusCode::FORBIDDEN, &message));
    }
    Ok(())
}

const TT_EXISTS: &str = "Transfer type mapping already exists";
const TT_MISSING: &str = "Transfer type mapping not found";
const KEY_EXISTS: &str = "Signing key mapping already exists";
const KEY_MISSING: &str = "Signing key mapping not found";

async fn create_transfer(
    State(inner): State<Shared>,
    Extension(principal): Extension<Principal>,
    Json(body): Json<TransferTypeMapping>,
) -> Response {
    let pc = body.participant_context_id;
    if let Err(refusal) = check(&principal, &pc) {
        return refusal;
    }
    let mut store = inner.store();
    if store.siglet.transfer_type_mappings.contains_key(&pc) {
        return error(StatusCode::CONFLICT, TT_EXISTS);
    }
    store
        .siglet
        .transfer_type_mappings
        .insert(pc, body.mappings);
    StatusCode::CREATED.into_response()
}

async fn get_transfer(
    State(inner): State<Shared>,
    Extension(principal): Extension<Principal>,
    Path(pc): Path<String>,
) -> Response {
    if let Err(refusal) = check(&principal, &pc) {
        return refusal;
    }
    match inner.store().siglet.transfer_type_mappings.get(&pc) {
        Some(mappings) => {
            Json(json!({"participantContextId": pc, "mappings": mappings})).into_response()
        }
        None => error(StatusCode::NOT_FOUND, TT_MISSING),
    }
}

async fn replace_transfer(
    State(inner): State<Shared>,
    Extension(principal): Extension<Principal>,
    Path(pc): Path<String>,
    Json(mappings): Json<Mappings>,
) -> Response {
    if let Err(refusal) = check(&principal, &pc) {
        return refusal;
    }
    match inner.store().siglet.transfer_type_mappings.get_mut(&pc) {
        Some(existing) => {
            *existing = mappings;
            StatusCode::NO_CONTENT.into_response()
        }
        None => error(StatusCode::NOT_FOUND, TT_MISSING),
    }
}

async fn delete_transfer(
    State(inner): State<Shared>,
    Extension(principal): Extension<Principal>,
    Path(pc): Path<String>,
) -> Response {
    if let Err(refusal) = check(&principal, &pc) {
        return refusal;
    }
    match inner.store().siglet.transfer_type_mappings.remove(&pc) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => error(StatusCode::NOT_FOUND, TT_MISSING),
    }
}

async fn create_key(
    State(inner): State<Shared>,
    Extension(principal): Extension<Principal>,
    Json(body): Json<KeyMapping>,
) -> Response {
    if let Err(refusal) = check(&principal, &body.participant_context_id) {
        return refusal;
    }
    if body.kid.trim().is_empty() {
        return error(StatusCode::BAD_REQUEST, "kid must not be blank");
    }
    let mut store = inner.store();
    if store
        .siglet
        .key_mappings
        .contains_key(&body.participant_context_id)
    {
        return error(StatusCode::CONFLICT, KEY_EXISTS);
    }
    let pc = body.participant_context_id.clone();
    store.siglet.key_mappings.insert(pc, body);
    StatusCode::CREATED.into_response()
}

async fn get_key(
    State(inner): State<Shared>,
    Extension(principal): Extension<Principal>,
    Path(pc): Path<String>,
) -> Response {
    if let Err(refusal) = check(&principal, &pc) {
        return refusal;
    }
    match inner.store().siglet.key_mappings.get(&pc) {
        Some(mapping) => Json(mapping.clone()).into_response(),
        None => error(StatusCode::NOT_FOUND, KEY_MISSING),
    }
}

async fn replace_key(
    State(inner): State<Shared>,
    Extension(principal): Extension<Principal>,
    Path(pc): Path<String>,
    Json(body): Json<KeyMappingUpdate>,
) -> Response {
    if let Err(refusal) = check(&principal, &pc) {
        return refusal;
    }
    if body.kid.trim().is_empty() {
        return error(StatusCode::BAD_REQUEST, "kid must not be blank");
    }
    match inner.store().siglet.key_mappings.get_mut(&pc) {
        Some(existing) => {
            existing.key_name = body.key_name;
            existing.kid = body.kid;
            StatusCode::NO_CONTENT.into_response()
        }
        None => error(StatusCode::NOT_FOUND, KEY_MISSING),
    }
}

async fn delete_key(
    State(inner): State<Shared>,
    Extension(principal): Extension<Principal>,
    Path(pc): Path<String>,
) -> Response {
    if let Err(refusal) = check(&principal, &pc) {
        return refusal;
    }
    match inner.store().siglet.key_mappings.remove(&pc) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => error(StatusCode::NOT_FOUND, KEY_MISSING),
    }
}

impl EdcV {
    /// Siglet transfer-type mappings: participant context id → `{"<name>": TransferType}`
    /// with defaults filled in, as `GET` answers `mappings`.
    pub fn siglet_transfer_type_mappings(&self) -> BTreeMap<String, Value> {
        let store = self.inner.store();
        let all = store.siglet.transfer_type_mappings.iter();
        all.map(|(pc, m)| (pc.clone(), json!(m))).collect()
    }

    /// Siglet signing-key mappings: participant context id → `{"participantContextId",
    /// "keyName", "kid"}`.
    pub fn siglet_key_mappings(&self) -> BTreeMap<String, Value> {
        let store = self.inner.store();
        let all = store.siglet.key_mappings.iter();
        all.map(|(pc, m)| (pc.clone(), json!(m))).collect()
    }
}
