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
use crate::{EdcV, Reply, Shared};

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

/// One of Siglet's maps from a participant context to its mapping, with the messages of
/// its refusals: both kinds of mapping are created, read, replaced and deleted alike.
struct Table<T> {
    map: fn(&mut SigletStore) -> &mut BTreeMap<String, T>,
    exists: &'static str,
    missing: &'static str,
}

const TRANSFER_TYPES: Table<Mappings> = Table {
    map: |siglet| &mut siglet.transfer_type_mappings,
    exists: "Transfer type mapping already exists",
    missing: "Transfer type mapping not found",
};

const KEYS: Table<KeyMapping> = Table {
    map: |siglet| &mut siglet.key_mappings,
    exists: "Signing key mapping already exists",
    missing: "Signing key mapping not found",
};

impl<T> Table<T> {
    /// Stores `pc`'s mapping: 201, or 409 when it has one.
    fn create(&self, inner: &Shared, pc: String, mapping: T) -> Reply {
        let mut store = inner.store();
        let map = (self.map)(&mut store.siglet);
        if map.contains_key(&pc) {
            return Err(error(StatusCode::CONFLICT, self.exists));
        }
        map.insert(pc, mapping);
        Ok(StatusCode::CREATED.into_response())
    }

    /// `pc`'s mapping as `show` answers it, or 404.
    fn read(&self, inner: &Shared, pc: &str, show: impl FnOnce(&T) -> Response) -> Reply {
        let mut store = inner.store();
        Ok(show(self.find(&mut store.siglet, pc)?))
    }

    /// Changes `pc`'s mapping with `update`: 204, or 404.
    fn replace(&self, inner: &Shared, pc: &str, update: impl FnOnce(&mut T)) -> Reply {
        let mut store = inner.store();
        update(self.find(&mut store.siglet, pc)?);
        Ok(StatusCode::NO_CONTENT.into_response())
    }

    /// Removes `pc`'s mapping: 204, or 404.
    fn delete(&self, inner: &Shared, pc: &str) -> Reply {
        let mut store = inner.store();
        if (self.map)(&mut store.siglet).remove(pc).is_none() {
            return Err(self.not_found());
        }
        Ok(StatusCode::NO_CONTENT.into_response())
    }

    /// `pc`'s mapping, else 404.
    fn find<'a>(&self, siglet: &'a mut SigletStore, pc: &str) -> Result<&'a mut T, Response> {
        (self.map)(siglet)
            .get_mut(pc)
            .ok_or_else(|| self.not_found())
    }

    fn not_found(&self) -> Response {
        error(StatusCode::NOT_FOUND, self.missing)
    }
}

/// Siglet refuses a blank `kid` on create and replace alike.
fn nonblank_kid(kid: &str) -> Result<(), Response> {
    if kid.trim().is_empty() {
        return Err(error(StatusCode::BAD_REQUEST, "kid must not be blank"));
    }
    Ok(())
}

async fn create_transfer(
    State(inner): State<Shared>,
    Extension(principal): Extension<Principal>,
    Json(body): Json<TransferTypeMapping>,
) -> Reply {
    let pc = body.participant_context_id;
    check(&principal, &pc)?;
    TRANSFER_TYPES.create(&inner, pc, body.mappings)
}

async fn get_transfer(
    State(inner): State<Shared>,
    Extension(principal): Extension<Principal>,
    Path(pc): Path<String>,
) -> Reply {
    check(&principal, &pc)?;
    TRANSFER_TYPES.read(&inner, &pc, |mappings| {
        Json(json!({"participantContextId": pc, "mappings": mappings})).into_response()
    })
}

async fn replace_transfer(
    State(inner): State<Shared>,
    Extension(principal): Extension<Principal>,
    Path(pc): Path<String>,
    Json(mappings): Json<Mappings>,
) -> Reply {
    check(&principal, &pc)?;
    TRANSFER_TYPES.replace(&inner, &pc, |existing| *existing = mappings)
}

async fn delete_transfer(
    State(inner): State<Shared>,
    Extension(principal): Extension<Principal>,
    Path(pc): Path<String>,
) -> Reply {
    check(&principal, &pc)?;
    TRANSFER_TYPES.delete(&inner, &pc)
}

async fn create_key(
    State(inner): State<Shared>,
    Extension(principal): Extension<Principal>,
    Json(body): Json<KeyMapping>,
) -> Reply {
    check(&principal, &body.participant_context_id)?;
    nonblank_kid(&body.kid)?;
    KEYS.create(&inner, body.participant_context_id.clone(), body)
}

async fn get_key(
    State(inner): State<Shared>,
    Extension(principal): Extension<Principal>,
    Path(pc): Path<String>,
) -> Reply {
    check(&principal, &pc)?;
    KEYS.read(&inner, &pc, |mapping| Json(mapping).into_response())
}

async fn replace_key(
    State(inner): State<Shared>,
    Extension(principal): Extension<Principal>,
    Path(pc): Path<String>,
    Json(body): Json<KeyMappingUpdate>,
) -> Reply {
    check(&principal, &pc)?;
    nonblank_kid(&body.kid)?;
    KEYS.replace(&inner, &pc, |existing| {
        existing.key_name = body.key_name;
        existing.kid = body.kid;
    })
}

async fn delete_key(
    State(inner): State<Shared>,
    Extension(principal): Extension<Principal>,
    Path(pc): Path<String>,
) -> Reply {
    check(&principal, &pc)?;
    KEYS.delete(&inner, &pc)
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
