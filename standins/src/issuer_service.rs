//! The EDC Issuer Service's admin API (`/v1beta/participants/{ctx}/...`): holders, the
//! credentials it issued, their query and revocation, as its controllers answer today.
//!
//! The only participant context of the Issuer Service is [`crate::Options::issuer_id`]; a
//! path naming another is 404. Every route runs EDC's `AuthorizationService`: the resource
//! must exist under the path's context (404), and the token's `sub` must be that context
//! unless it carries `issuer-admin-api:admin` (403) — the agents exchange their tokens for
//! the holder's participant context, so they reach the issuer's paths through that admin
//! scope. Holders (`issuer-admin-api:holders:write`): create 201 + `Location` (409 for a
//! known `holderId`, 400 without `holderId` or `did`), delete 204. Query
//! (`issuer-admin-api:credentials:read`) answers 200 with `VerifiableCredentialResourceDto`s
//! of the path's context the token may see. Revoke (`issuer-admin-api:credentials:write`)
//! answers 204; under a context that does not own the credential it is 404, as the lookup
//! by (owner, id) finds nothing — so a revoke under the holder's context is refused.

use std::collections::BTreeMap;

use axum::extract::{Extension, Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{delete, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::bearer::{self, Principal};
use crate::route::{Route, Service, path_of};
use crate::{
    EdcJson, EdcV, Options, Reply, Shared, Store, edc_bad, edc_error, edc_not_found, edc_owned,
    edc_string,
};

const ADMIN: &str = "issuer-admin-api:admin";

/// A credential the Issuer Service issued.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuedCredential {
    /// The credential's id (also the resource id revocation takes).
    pub id: String,
    /// The issuer's participant context that owns it.
    pub participant_context: String,
    /// The holder's `holderId` at the issuer (the DID, as registration sends it).
    pub holder_id: String,
    /// The requested credential type (e.g. `MembershipCredential`).
    pub credential_type: String,
    /// The requested format (e.g. `VC1_0_JWT`).
    pub format: String,
    /// Whether it was revoked.
    pub revoked: bool,
    /// The credential itself: `{"id","type":[..],"issuer","credentialSubject",..}`.
    pub credential: Value,
}

/// The Issuer Service's state.
#[derive(Default)]
pub(crate) struct IssuerStore {
    /// (issuer context, holderId) → holder as received.
    pub holders: BTreeMap<(String, String), Value>,
    /// Credential id → credential.
    pub credentials: BTreeMap<String, IssuedCredential>,
}

pub(crate) fn router(inner: Shared) -> Router {
    let router = Router::new()
        .route(path_of(Route::HolderCreate), post(create_holder))
        .route(path_of(Route::HolderDelete), delete(delete_holder))
        .route(path_of(Route::CredentialQuery), post(query))
        .route(path_of(Route::CredentialRevoke), post(revoke));
    bearer::guarded(router, &inner, Service::IssuerService)
}

/// Issues the requested credentials (`{"format","type","id"}` each) to the holder registered
/// with DID `holder_did`; false when no such holder is registered.
pub(crate) fn issue(
    store: &mut Store,
    options: &Options,
    holder_did: &str,
    requested: &[Value],
) -> bool {
    let issuer = options.issuer_id.clone();
    let holder = store
        .issuer
        .holders
        .iter()
        .find(|((ctx, _), h)| *ctx == issuer && h["did"] == holder_did);
    let Some(((_, holder_id), _)) = holder else {
        return false;
    };
    let holder_id = holder_id.clone();
    for spec in requested {
        let id = crate::new_id();
        let kind = spec["type"].as_str().unwrap_or_default().to_string();
        let credential = json!({
            "id": id,
            "type": ["VerifiableCredential", kind],
            "issuer": options.issuer_did,
            "credentialSubject": [{"id": holder_did}],
            "issuanceDate": bearer::now(),
            "credentialDefinitionId": spec["id"],
        });
        let issued = IssuedCredential {
            id: id.clone(),
            participant_context: issuer.clone(),
            holder_id: holder_id.clone(),
            credential_type: kind,
            format: spec["format"].as_str().unwrap_or_default().to_string(),
            revoked: false,
            credential,
        };
        store.issuer.credentials.insert(id, issued);
    }
    true
}

async fn create_holder(
    State(inner): State<Shared>,
    Extension(principal): Extension<Principal>,
    Path(ctx): Path<String>,
    EdcJson(body): EdcJson,
) -> Reply {
    let holder_id = edc_string(&body, "holderId")?;
    edc_string(&body, "did")?;
    let name_ok = body
        .get("name")
        .is_none_or(|n| n.is_null() || n.is_string());
    let props_ok = body
        .get("properties")
        .is_none_or(|p| p.is_null() || p.is_object());
    if !name_ok || !props_ok {
        return Err(edc_bad(
            "'name' must be a string and 'properties' an object",
        ));
    }
    if ctx != inner.options.issuer_id {
        return Err(edc_not_found("ParticipantContext", &ctx));
    }
    principal.authorize(&ctx, ADMIN)?;
    let mut store = inner.store();
    let key = (ctx.clone(), holder_id.clone());
    if store.issuer.holders.contains_key(&key) {
        let message = format!("A Holder with ID '{holder_id}' already exists.");
        return Err(edc_error(StatusCode::CONFLICT, &message));
    }
    store.issuer.holders.insert(key, body);
    let location = format!("/v1beta/participants/{ctx}/holders/{holder_id}");
    Ok((StatusCode::CREATED, [(header::LOCATION, location)]).into_response())
}

async fn delete_holder(
    State(inner): State<Shared>,
    Extension(principal): Extension<Principal>,
    Path((ctx, holder_id)): Path<(String, String)>,
) -> Reply {
    let mut store = inner.store();
    let key = (ctx.clone(), holder_id.clone());
    if !store.issuer.holders.contains_key(&key) {
        return Err(edc_not_found("Holder", &holder_id));
    }
    principal.authorize(&ctx, ADMIN)?;
    store.issuer.holders.remove(&key);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// One criterion of a `QuerySpec`'s `filterExpression`.
struct Criterion {
    left: String,
    operator: String,
    right: Value,
}

fn criteria(body: &Value) -> Result<Vec<Criterion>, String> {
    let items = match body.get("filterExpression") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err("'filterExpression' must be an array".into()),
    };
    items
        .iter()
        .map(|c| {
            let left = c["operandLeft"]
                .as_str()
                .ok_or("'operandLeft' must be a string")?;
            let operator = c["operator"]
                .as_str()
                .ok_or("'operator' must be a string")?;
            if !["=", "contains", "in"].contains(&operator) {
                return Err(format!("unsupported operator '{operator}'"));
            }
            Ok(Criterion {
                left: left.to_string(),
                operator: operator.to_string(),
                right: c.get("operandRight").cloned().unwrap_or(Value::Null),
            })
        })
        .collect()
}

/// The value a criterion's left operand names on a credential resource.
fn operand(credential: &IssuedCredential, left: &str) -> Result<Value, String> {
    Ok(match left {
        "id" => json!(credential.id),
        "participantContextId" => json!(credential.participant_context),
        "holderId" => json!(credential.holder_id),
        "verifiableCredential.credential.type" => credential.credential["type"].clone(),
        "verifiableCredential.credential.id" => credential.credential["id"].clone(),
        other => return Err(format!("unsupported operand '{other}'")),
    })
}

fn matches(credential: &IssuedCredential, criterion: &Criterion) -> Result<bool, String> {
    let value = operand(credential, &criterion.left)?;
    Ok(match criterion.operator.as_str() {
        "=" => value == criterion.right,
        "contains" => match &value {
            Value::Array(items) => items.contains(&criterion.right),
            Value::String(s) => criterion.right.as_str().is_some_and(|r| s.contains(r)),
            _ => false,
        },
        _ => criterion
            .right
            .as_array()
            .is_some_and(|a| a.contains(&value)),
    })
}

async fn query(
    State(inner): State<Shared>,
    Extension(principal): Extension<Principal>,
    Path(ctx): Path<String>,
    EdcJson(body): EdcJson,
) -> Reply {
    let number = |name: &str, default: u64| match body.get(name) {
        None | Some(Value::Null) => Some(default),
        Some(v) => v.as_u64(),
    };
    let (Some(offset), Some(limit)) = (number("offset", 0), number("limit", 50)) else {
        return Err(edc_bad("'offset' and 'limit' must be numbers"));
    };
    let criteria = criteria(&body).map_err(|message| edc_bad(&message))?;
    let store = inner.store();
    let mut found = Vec::new();
    for credential in store.issuer.credentials.values() {
        if credential.participant_context != ctx || !principal.may_act_for(&ctx, ADMIN) {
            continue;
        }
        let mut all = true;
        for criterion in &criteria {
            all &= matches(credential, criterion).map_err(|message| edc_bad(&message))?;
        }
        if all {
            found.push(json!({
                "id": credential.id,
                "participantContextId": credential.participant_context,
                "format": credential.format,
                "credential": credential.credential,
            }));
        }
    }
    let page: Vec<Value> = found
        .into_iter()
        .skip(offset as usize)
        .take(limit as usize)
        .collect();
    Ok(Json(page).into_response())
}

async fn revoke(
    State(inner): State<Shared>,
    Extension(principal): Extension<Principal>,
    Path((ctx, id)): Path<(String, String)>,
) -> Reply {
    let mut store = inner.store();
    let credentials = &mut store.issuer.credentials;
    let credential = edc_owned(credentials, &id, "VerifiableCredentialResource", |c| {
        c.participant_context == ctx
    })?;
    principal.authorize(&ctx, ADMIN)?;
    credential.revoked = true;
    Ok(StatusCode::NO_CONTENT.into_response())
}

impl EdcV {
    /// Holders registered with the Issuer Service, as received, plus `participantContextId`
    /// (the issuer context they were registered under).
    pub fn holders(&self) -> Vec<Value> {
        let store = self.inner.store();
        let all = store.issuer.holders.iter();
        all.map(|((ctx, _), holder)| {
            let mut holder = holder.clone();
            holder["participantContextId"] = json!(ctx);
            holder
        })
        .collect()
    }

    /// Every credential the Issuer Service issued, revoked or not.
    pub fn issued_credentials(&self) -> Vec<IssuedCredential> {
        self.inner
            .store()
            .issuer
            .credentials
            .values()
            .cloned()
            .collect()
    }

    /// Ids of the revoked credentials.
    pub fn revoked_credentials(&self) -> Vec<String> {
        let store = self.inner.store();
        let all = store.issuer.credentials.values();
        all.filter(|c| c.revoked).map(|c| c.id.clone()).collect()
    }

    /// Ids of the credentials not revoked.
    pub fn unrevoked_credentials(&self) -> Vec<String> {
        let store = self.inner.store();
        let all = store.issuer.credentials.values();
        all.filter(|c| !c.revoked).map(|c| c.id.clone()).collect()
    }
}
