//! jwtlet: the RFC 8693 token exchange (`POST /token`) and its management API
//! (`/api/v1/mappings`, `/api/v1/scopes`), as jwtlet ≥ c61e29e answers them.
//!
//! `/token` takes a form (another content type 415, a missing field 422, as axum's `Form`):
//! `grant_type` must be the token-exchange grant (400 `unsupported_grant_type`),
//! `subject_token_type` the JWT type (400 `invalid_request`), `subject_token` a cluster
//! service-account token for the client audience (400 `invalid_grant`); its `sub` is the
//! client, which needs a mapping to `resource` granting every requested scope and the audience
//! (403 `unauthorized_client`). The access token carries `sub` = resource, `act` = the client,
//! and the claims of the requested scopes' scope mappings (string values of one key are
//! space-joined; any other clash is 400 `invalid_scope`). Management routes answer with empty
//! bodies, except a reserved claim key (400 with `{"error"}`).

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Form, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::bearer::{self, JWTLET_ISSUER, KUBE_ISSUER, now};
use crate::route::{Route, Service, path_of};
use crate::{EdcV, Options, Shared};

/// The only grant `/token` accepts.
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The only `subject_token_type` `/token` accepts, and the `issued_token_type` it answers.
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
const RESERVED_CLAIMS: [&str; 8] = ["sub", "iss", "aud", "exp", "iat", "nbf", "act", "jti"];
const TOKEN_TTL_SECS: i64 = 3600;

/// A jwtlet resource mapping: which scopes and audiences a client may get for a participant
/// context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceMapping {
    /// The client: a service account's `system:serviceaccount:<ns>:<name>`.
    pub client_identifier: String,
    /// The participant context (the exchange's `resource`).
    pub participant_context: String,
    /// The scopes the client may request.
    pub scopes: BTreeSet<String>,
    /// The audiences the client may request; empty means only the default one.
    #[serde(default)]
    pub audiences: BTreeSet<String>,
}

/// A jwtlet scope mapping: the claims a requested scope adds to the access token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ScopeMapping {
    scope: String,
    claims: Map<String, Value>,
}

/// jwtlet's state.
#[derive(Default)]
pub(crate) struct JwtletStore {
    pub mappings: BTreeMap<(String, String), ResourceMapping>,
    scopes: BTreeMap<String, Map<String, Value>>,
    pub roles: BTreeMap<String, BTreeSet<String>>,
    pub down: bool,
    exchanges: usize,
}

impl JwtletStore {
    pub fn new(options: &Options) -> Self {
        let mut store = Self {
            roles: options.service_accounts.clone(),
            ..Self::default()
        };
        if options.seed_scope_mappings {
            for scope in crate::AGENT_SCOPES {
                let claims = json!({"scope": scope}).as_object().cloned().unwrap();
                store.scopes.insert(scope.to_string(), claims);
            }
        }
        store
    }
}

/// The token-exchange listener.
pub(crate) fn token_router(inner: Shared) -> Router {
    let router = Router::new()
        .route(path_of(Route::Token), post(token))
        .route("/health", get(health));
    bearer::guarded(router, &inner, Service::JwtletToken)
}

/// The management listener.
pub(crate) fn management_router(inner: Shared) -> Router {
    let router = Router::new()
        .route(
            path_of(Route::MappingCreate),
            get(list_mappings).post(create_mapping),
        )
        .route(
            path_of(Route::MappingReplace),
            put(replace_mapping).delete(delete_mapping),
        )
        .route(
            path_of(Route::ClientMappingsDelete),
            axum::routing::delete(delete_client_mappings),
        )
        .route(
            path_of(Route::ScopeCreate),
            get(list_scopes).post(create_scope),
        )
        .route(
            path_of(Route::ScopeReplace),
            put(replace_scope).delete(delete_scope),
        )
        .route("/health", get(health));
    bearer::guarded(router, &inner, Service::JwtletManagement)
}

async fn health() -> Json<Value> {
    Json(json!({"status": "UP"}))
}

#[derive(Deserialize)]
struct TokenForm {
    grant_type: String,
    subject_token: String,
    subject_token_type: String,
    resource: String,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    audience: Option<String>,
}

fn oauth_error(status: StatusCode, error: &str) -> Response {
    (status, Json(json!({"error": error}))).into_response()
}

async fn token(State(inner): State<Shared>, Form(form): Form<TokenForm>) -> Response {
    if form.grant_type != TOKEN_EXCHANGE_GRANT {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type");
    }
    if form.subject_token_type != JWT_TOKEN_TYPE {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
    }
    let default_audience = inner.options.audience.clone();
    let Some(subject) = inner
        .keys
        .verify_service_account(&form.subject_token, &default_audience)
    else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    };
    let client = subject["sub"].as_str().unwrap_or_default().to_string();
    let scopes: Vec<&str> = form
        .scope
        .as_deref()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let mut store = inner.store();
    let key = (client.clone(), form.resource.clone());
    let Some(mapping) = store.jwtlet.mappings.get(&key) else {
        return oauth_error(StatusCode::FORBIDDEN, "unauthorized_client");
    };
    if !scopes.iter().all(|s| mapping.scopes.contains(*s)) {
        return oauth_error(StatusCode::FORBIDDEN, "unauthorized_client");
    }
    let mut claims = Map::new();
    for scope in &scopes {
        for (k, v) in store.jwtlet.scopes.get(*scope).into_iter().flatten() {
            match (claims.get_mut(k), v) {
                (None, v) => {
                    claims.insert(k.clone(), v.clone());
                }
                (Some(Value::String(joined)), Value::String(more)) => {
                    joined.push(' ');
                    joined.push_str(more);
                }
                (Some(_), _) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_scope"),
            }
        }
    }
    let allowed = &mapping.audiences;
    let audience = match form.audience {
        None if allowed.is_empty() || allowed.contains(&default_audience) => default_audience,
        Some(a) if allowed.is_empty() && a == default_audience => a,
        Some(a) if allowed.contains(&a) => a,
        _ => return oauth_error(StatusCode::FORBIDDEN, "unauthorized_client"),
    };
    let now = now();
    claims.extend([
        ("sub".to_string(), json!(form.resource)),
        ("iss".to_string(), json!(JWTLET_ISSUER)),
        ("aud".to_string(), json!(audience)),
        ("iat".to_string(), json!(now)),
        ("nbf".to_string(), json!(now)),
        ("exp".to_string(), json!(now + TOKEN_TTL_SECS)),
        ("jti".to_string(), json!(crate::new_id())),
        (
            "act".to_string(),
            json!({"sub": client, "iss": subject["iss"]}),
        ),
    ]);
    let access_token = inner.keys.sign_access(&Value::Object(claims));
    store.jwtlet.exchanges += 1;
    let mut answer = json!({
        "access_token": access_token,
        "issued_token_type": JWT_TOKEN_TYPE,
        "token_type": "Bearer",
        "expires_in": TOKEN_TTL_SECS,
    });
    if let Some(scope) = form.scope {
        answer["scope"] = json!(scope);
    }
    (StatusCode::OK, Json(answer)).into_response()
}

async fn list_mappings(State(inner): State<Shared>) -> Json<Vec<ResourceMapping>> {
    Json(inner.store().jwtlet.mappings.values().cloned().collect())
}

async fn create_mapping(State(inner): State<Shared>, Json(m): Json<ResourceMapping>) -> StatusCode {
    let mut store = inner.store();
    let key = (m.client_identifier.clone(), m.participant_context.clone());
    if store.jwtlet.mappings.contains_key(&key) {
        return StatusCode::CONFLICT;
    }
    store.jwtlet.mappings.insert(key, m);
    StatusCode::CREATED
}

async fn replace_mapping(
    State(inner): State<Shared>,
    Path((client, pc)): Path<(String, String)>,
    Json(m): Json<ResourceMapping>,
) -> StatusCode {
    if m.client_identifier != client || m.participant_context != pc {
        return StatusCode::BAD_REQUEST;
    }
    let mut store = inner.store();
    match store.jwtlet.mappings.get_mut(&(client, pc)) {
        Some(existing) => {
            *existing = m;
            StatusCode::NO_CONTENT
        }
        None => StatusCode::NOT_FOUND,
    }
}

async fn delete_mapping(
    State(inner): State<Shared>,
    Path(key): Path<(String, String)>,
) -> StatusCode {
    inner.store().jwtlet.mappings.remove(&key);
    StatusCode::NO_CONTENT
}

async fn delete_client_mappings(
    State(inner): State<Shared>,
    Path(client): Path<String>,
) -> StatusCode {
    inner
        .store()
        .jwtlet
        .mappings
        .retain(|(c, _), _| *c != client);
    StatusCode::NO_CONTENT
}

async fn list_scopes(State(inner): State<Shared>) -> Json<Vec<ScopeMapping>> {
    let store = inner.store();
    let all = store.jwtlet.scopes.iter();
    Json(
        all.map(|(scope, claims)| ScopeMapping {
            scope: scope.clone(),
            claims: claims.clone(),
        })
        .collect(),
    )
}

fn reserved(m: &ScopeMapping) -> Option<Response> {
    let key = m
        .claims
        .keys()
        .find(|k| RESERVED_CLAIMS.contains(&k.as_str()))?;
    let error = format!("Claim key '{key}' is reserved and cannot be set via scope mapping");
    Some((StatusCode::BAD_REQUEST, Json(json!({"error": error}))).into_response())
}

async fn create_scope(State(inner): State<Shared>, Json(m): Json<ScopeMapping>) -> Response {
    if let Some(refusal) = reserved(&m) {
        return refusal;
    }
    inner.store().jwtlet.scopes.insert(m.scope, m.claims);
    StatusCode::CREATED.into_response()
}

async fn replace_scope(
    State(inner): State<Shared>,
    Path(scope): Path<String>,
    Json(m): Json<ScopeMapping>,
) -> Response {
    if m.scope != scope {
        return StatusCode::BAD_REQUEST.into_response();
    }
    if let Some(refusal) = reserved(&m) {
        return refusal;
    }
    match inner.store().jwtlet.scopes.get_mut(&scope) {
        Some(claims) => {
            *claims = m.claims;
            StatusCode::NO_CONTENT.into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn delete_scope(State(inner): State<Shared>, Path(scope): Path<String>) -> StatusCode {
    inner.store().jwtlet.scopes.remove(&scope);
    StatusCode::NO_CONTENT
}

impl EdcV {
    /// A projected service-account token of the cluster, as the kubelet mounts it: `sub` =
    /// `system:serviceaccount:<namespace>:<name>`, `aud` = [`Options::audience`], valid for
    /// an hour, signed with the cluster key `/token` and the management API verify.
    pub fn service_account_token(&self, namespace: &str, name: &str) -> String {
        self.service_account_token_for_audience(namespace, name, &self.options.audience)
    }

    /// [`EdcV::service_account_token`] for another audience, which jwtlet refuses.
    pub fn service_account_token_for_audience(
        &self,
        namespace: &str,
        name: &str,
        audience: &str,
    ) -> String {
        let now = now();
        self.inner.keys.sign_service_account(&json!({
            "iss": KUBE_ISSUER,
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
            "aud": [audience],
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": crate::new_id()}},
        }))
    }

    /// An access token as `/token` would issue it to `cfm-agents` for participant context
    /// `pc` with these scopes (scope mappings seeded 1:1), without a mapping or an exchange.
    pub fn access_token(&self, pc: &str, scopes: &[&str]) -> String {
        let now = now();
        self.inner.keys.sign_access(&json!({
            "sub": pc,
            "iss": JWTLET_ISSUER,
            "aud": self.options.audience,
            "iat": now,
            "nbf": now,
            "exp": now + TOKEN_TTL_SECS,
            "jti": crate::new_id(),
            "act": {"sub": "system:serviceaccount:edc-v:cfm-agents", "iss": KUBE_ISSUER},
            "scope": scopes.join(" "),
        }))
    }

    /// Replaces the jwtlet management roles of a service account
    /// (`system:serviceaccount:<ns>:<name>`); no roles: every management route answers 403.
    pub fn set_roles(&self, account: &str, roles: &[&str]) {
        let roles = roles.iter().map(|r| r.to_string()).collect();
        self.inner
            .store()
            .jwtlet
            .roles
            .insert(account.to_string(), roles);
    }

    /// While `down`, `POST /token` answers 503 `{"error":"temporarily_unavailable"}`.
    pub fn set_token_endpoint_down(&self, down: bool) {
        self.inner.store().jwtlet.down = down;
    }

    /// How many token exchanges `/token` answered with an access token.
    pub fn token_exchanges(&self) -> usize {
        self.inner.store().jwtlet.exchanges
    }

    /// jwtlet's resource mappings.
    pub fn jwtlet_mappings(&self) -> Vec<ResourceMapping> {
        self.inner
            .store()
            .jwtlet
            .mappings
            .values()
            .cloned()
            .collect()
    }

    /// jwtlet's scope mappings: scope → the claims it adds.
    pub fn jwtlet_scope_mappings(&self) -> BTreeMap<String, Value> {
        let store = self.inner.store();
        let all = store.jwtlet.scopes.iter();
        all.map(|(s, c)| (s.clone(), Value::Object(c.clone())))
            .collect()
    }
}
