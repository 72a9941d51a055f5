//! Local stand-ins for the services an EDC-V onboarding talks to, which cannot run on cfm's
//! test machines: jwtlet (RFC 8693 token exchange and its management API), the EDC Identity
//! Hub, Control Plane and Issuer Service, and Siglet's management API ([`EdcV`]); the
//! Kubernetes API server ([`kubernetes`]); and an OpenTelemetry collector's trace receiver
//! ([`otlp`]).
//!
//! They follow today's wire contracts of those services (docs: the upstream agents' contract
//! notes, "UPSTREAM-AGENTS.md") and refuse what the real services refuse. There are no API
//! keys: every EDC and Siglet route wants `Authorization: Bearer <token>` issued by this
//! jwtlet (401 otherwise) carrying the scope the route requires (403), and a token's `sub`
//! (the participant context it was exchanged for) only reaches that participant's resources
//! unless it carries the service's admin scope. jwtlet's management API wants a Kubernetes
//! service-account token ([`EdcV::service_account_token`]) whose account holds the route's
//! role. Each service listens on its own loopback port and all share one in-memory store, so
//! a test reads what a dispose left behind ([`EdcV::leftovers`]), which `Authorization`
//! headers the services saw ([`EdcV::auth_records`]), and scripts failures
//! ([`EdcV::fail_next`], [`EdcV::set_token_endpoint_down`]).

// Stand-ins run inside tests: a panic fails the test that started them.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// A refusal is the whole HTTP answer, built at most once per request: boxing it buys nothing.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

mod bearer;
mod control_plane;
mod identity_hub;
mod issuer_service;
mod jwtlet;
pub mod kubernetes;
pub mod otlp;
mod route;
mod siglet;

pub use bearer::{AuthRecord, TokenKind};
pub use identity_hub::CredentialRequest;
pub use issuer_service::IssuedCredential;
pub use jwtlet::{JWT_TOKEN_TYPE, ResourceMapping, TOKEN_EXCHANGE_GRANT};
pub use route::{Route, Service};

/// The JSON-LD context the Control Plane's management API v5 requires in `@context`.
pub const MANAGEMENT_CONTEXT: &str = "https://w3id.org/edc/connector/management/v2";
/// jwtlet management role: list mappings and scope mappings.
pub const ROLE_READ: &str = "jwtlet:management:read";
/// jwtlet management role: create, replace and delete resource mappings.
pub const ROLE_MAPPINGS_WRITE: &str = "jwtlet:management:mappings:write";
/// jwtlet management role: create, replace and delete scope mappings.
pub const ROLE_SCOPE_WRITE: &str = "jwtlet:management:scope:write";
/// The scopes the upstream jwtlet agent maps for `cfm-agents`, each seeded 1:1 as a scope
/// mapping `{"scope": s, "claims": {"scope": s}}` unless [`Options::seed_scope_mappings`] is off.
pub const AGENT_SCOPES: [&str; 9] = [
    "management-api:admin",
    "identity-api:admin",
    "identity-api:credentials:read",
    "identity-api:credentials:write",
    "issuer-admin-api:admin",
    "siglet-mgmt-api:read",
    "siglet-mgmt-api:write",
    "read",
    "write",
];

/// How the stand-ins start; [`Options::default`] is the test cluster of the upstream agents.
#[derive(Debug, Clone)]
pub struct Options {
    /// jwtlet's `token.client_audience` (a subject token's `aud` must hold it) and its default
    /// audience for issued tokens (the agents' `tokenexchange.audience`). Default `edcv`.
    pub audience: String,
    /// Service accounts (`system:serviceaccount:<ns>:<name>`) and their jwtlet management
    /// roles. Default: `system:serviceaccount:edc-v:cfm-agents` holds all three roles.
    pub service_accounts: BTreeMap<String, BTreeSet<String>>,
    /// Seed the 1:1 scope mappings of [`AGENT_SCOPES`], as the cluster's seed job does.
    /// Without them exchanged tokens carry no `scope` claim and every EDC route answers 403.
    pub seed_scope_mappings: bool,
    /// The Issuer Service's own participant context (the agents' `issuer.id`). Default `issuer`.
    pub issuer_id: String,
    /// The issuer's DID: credential requests naming another `issuerDid` end in `ERROR`.
    pub issuer_did: String,
}

impl Default for Options {
    fn default() -> Self {
        let roles = [ROLE_READ, ROLE_MAPPINGS_WRITE, ROLE_SCOPE_WRITE]
            .map(String::from)
            .into();
        Self {
            audience: "edcv".into(),
            service_accounts: BTreeMap::from([(
                "system:serviceaccount:edc-v:cfm-agents".to_string(),
                roles,
            )]),
            seed_scope_mappings: true,
            issuer_id: "issuer".into(),
            issuer_did: "did:web:issuer".into(),
        }
    }
}

/// Every service on its own free loopback port, sharing one store; stopped on drop.
pub struct EdcV {
    /// jwtlet's token-exchange listener (`POST {url}/token`, `GET {url}/health`).
    pub jwtlet_token_url: String,
    /// jwtlet's management listener (`{url}/api/v1/mappings`, `{url}/api/v1/scopes`, `{url}/health`).
    pub jwtlet_management_url: String,
    /// The Identity Hub's identity API (`{url}/v1beta/participants...`).
    pub identity_hub_url: String,
    /// The Control Plane's management API (`{url}/v5beta/participants...`).
    pub control_plane_url: String,
    /// The Issuer Service's admin API (`{url}/v1beta/participants/{issuer}/...`).
    pub issuer_url: String,
    /// Siglet's management API (`{url}/transfer-type-mappings`, `{url}/key-mappings`).
    pub siglet_management_url: String,
    /// The options the stand-ins started with.
    pub options: Options,
    pub(crate) inner: Shared,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

pub(crate) type Shared = Arc<Inner>;

/// What every service shares: the signing keys and the store.
pub(crate) struct Inner {
    pub keys: bearer::Keys,
    pub options: Options,
    store: Mutex<Store>,
}

impl Inner {
    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// All services' state, behind one lock.
#[derive(Default)]
pub(crate) struct Store {
    pub jwtlet: jwtlet::JwtletStore,
    pub identity_hub: identity_hub::IdentityHubStore,
    pub control_plane: control_plane::ControlPlaneStore,
    pub issuer: issuer_service::IssuerStore,
    pub siglet: siglet::SigletStore,
    pub auth_log: Vec<AuthRecord>,
    pub scripted: BTreeMap<Route, VecDeque<u16>>,
    pub calls: BTreeMap<Route, usize>,
}

impl EdcV {
    /// Starts every service with [`Options::default`].
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    /// Starts every service with these options.
    pub async fn start_with(options: Options) -> Self {
        let store = Store {
            jwtlet: jwtlet::JwtletStore::new(&options),
            identity_hub: identity_hub::IdentityHubStore::new(),
            ..Store::default()
        };
        let inner: Shared = Arc::new(Inner {
            keys: bearer::Keys::generate(),
            options: options.clone(),
            store: Mutex::new(store),
        });
        let routers = [
            jwtlet::token_router(inner.clone()),
            jwtlet::management_router(inner.clone()),
            identity_hub::router(inner.clone()),
            control_plane::router(inner.clone()),
            issuer_service::router(inner.clone()),
            siglet::router(inner.clone()),
        ];
        let mut urls = Vec::new();
        let mut tasks = Vec::new();
        for router in routers {
            let (url, task) = serve(router).await;
            urls.push(url);
            tasks.push(task);
        }
        let [token, management, ih, cp, issuer, siglet] = urls.try_into().unwrap();
        Self {
            jwtlet_token_url: token,
            jwtlet_management_url: management,
            identity_hub_url: ih,
            control_plane_url: cp,
            issuer_url: issuer,
            siglet_management_url: siglet,
            options,
            inner,
            tasks,
        }
    }

    /// The next calls of `route` answer these statuses (with an error body), whatever they
    /// carry, before it behaves normally again. Scripted answers are counted and recorded.
    pub fn fail_next(&self, route: Route, statuses: &[u16]) {
        let mut store = self.inner.store();
        store.scripted.entry(route).or_default().extend(statuses);
    }

    /// How many requests reached `route`, refused and scripted ones included.
    pub fn calls(&self, route: Route) -> usize {
        self.inner.store().calls.get(&route).copied().unwrap_or(0)
    }

    /// The `Authorization` header of every request to a guarded route, in order: each EDC,
    /// Siglet and jwtlet management route, and `/token` when a request carried one.
    pub fn auth_records(&self) -> Vec<AuthRecord> {
        self.inner.store().auth_log.clone()
    }

    /// What is left of participant context `pc` (holder DID `did`) in any service: empty
    /// after a complete decommissioning. Revoked credentials do not count: the Issuer keeps
    /// them, revoked, as the real one does.
    pub fn leftovers(&self, pc: &str, did: &str) -> Vec<String> {
        let store = self.inner.store();
        let mut left = Vec::new();
        for m in store.jwtlet.mappings.values() {
            if m.participant_context == pc {
                left.push(format!("jwtlet mapping {} -> {pc}", m.client_identifier));
            }
        }
        if store.identity_hub.participants.contains_key(pc) {
            left.push(format!("identity hub participant {pc}"));
        }
        for (pid, r) in &store.identity_hub.requests {
            if r.participant_context == pc {
                left.push(format!("identity hub credential request {pid}"));
            }
        }
        if store.control_plane.participants.contains_key(pc) {
            left.push(format!("control plane participant context {pc}"));
        }
        if store.control_plane.configs.contains_key(pc) {
            left.push(format!("control plane config of {pc}"));
        }
        for (id, d) in &store.control_plane.dataplanes {
            if d.participant_context == pc {
                left.push(format!("control plane dataplane {id}"));
            }
        }
        for h in store.issuer.holders.values() {
            if h["holderId"] == did || h["did"] == did {
                left.push(format!("issuer holder {did}"));
            }
        }
        for c in store.issuer.credentials.values() {
            if c.holder_id == did && !c.revoked {
                left.push(format!("unrevoked credential {}", c.id));
            }
        }
        left.extend(store.siglet.holds(pc));
        left
    }
}

impl Drop for EdcV {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Serves `router` on a free loopback port: its base URL, and the task to abort on drop.
async fn serve(router: Router) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a loopback port");
    let url = format!("http://{}", listener.local_addr().expect("local address"));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (url, task)
}

// --- answers shared by the EDC services (Jersey, EDC's exception mapper) ---

/// A handler's answer with its refusal on the `Err` side, so that `?` answers a failed
/// check as it is; axum answers either side.
pub(crate) type Reply = Result<Response, Response>;

/// An EDC error answer: `[{"message", "type"}]` as EDC's exception mapper writes it.
pub(crate) fn edc_error(status: StatusCode, message: &str) -> Response {
    let kind = match status {
        StatusCode::NOT_FOUND => "ObjectNotFound",
        StatusCode::CONFLICT => "ObjectConflict",
        StatusCode::FORBIDDEN => "NotAuthorized",
        StatusCode::BAD_REQUEST => "ValidationFailure",
        _ => "InvalidRequest",
    };
    (
        status,
        axum::Json(json!([{"message": message, "type": kind}])),
    )
        .into_response()
}

/// EDC's 400 validation failure.
pub(crate) fn edc_bad(message: &str) -> Response {
    edc_error(StatusCode::BAD_REQUEST, message)
}

/// EDC's 404 for the object `id` of type `kind`.
pub(crate) fn edc_not_found(kind: &str, id: &str) -> Response {
    edc_error(
        StatusCode::NOT_FOUND,
        &format!("Object of type {kind} with ID={id} was not found"),
    )
}

/// The record `id` of `records` if `owned` finds it the path's context's, else EDC's 404 for
/// `kind`: EDC looks such records up by (owner, id), so another context's record is not
/// found either.
pub(crate) fn edc_owned<'a, T>(
    records: &'a mut BTreeMap<String, T>,
    id: &str,
    kind: &str,
    owned: impl FnOnce(&T) -> bool,
) -> Result<&'a mut T, Response> {
    let record = records.get_mut(id).filter(|record| owned(record));
    record.ok_or_else(|| edc_not_found(kind, id))
}

/// A JSON body as Jersey takes it: another content type 415, malformed JSON 400. Taken as
/// an extractor, like axum's `Json`, so handlers start from the parsed body.
pub(crate) struct EdcJson(pub Value);

impl<S: Send + Sync> FromRequest<S> for EdcJson {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        // The body first: one axum cannot read (over its size limit) is refused as such,
        // whatever its content type.
        let headers = request.headers().clone();
        let body = Bytes::from_request(request, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let media = content_type.split(';').next().unwrap_or("").trim();
        if !media.eq_ignore_ascii_case("application/json") {
            return Err(StatusCode::UNSUPPORTED_MEDIA_TYPE.into_response());
        }
        serde_json::from_slice(&body)
            .map(EdcJson)
            .map_err(|e| edc_bad(&format!("the body is not JSON: {e}")))
    }
}

/// A required non-blank string field, else EDC's 400 validation failure.
pub(crate) fn edc_string(body: &Value, name: &str) -> Result<String, Response> {
    match body.get(name).and_then(Value::as_str) {
        Some(s) if !s.trim().is_empty() => Ok(s.to_string()),
        _ => Err(edc_bad(&format!("'{name}' must be a non-blank string"))),
    }
}

/// An optional object whose values must all be strings (config entries), else 400.
pub(crate) fn edc_string_map(
    body: &Value,
    name: &str,
) -> Result<BTreeMap<String, String>, Response> {
    let refuse = || edc_bad(&format!("'{name}' must be an object of string values"));
    match body.get(name) {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.as_str().ok_or_else(refuse)?.to_string())))
            .collect(),
        Some(_) => Err(refuse()),
    }
}

/// A JSON-LD body's `@context` must name the management context and `@type` be `kind`.
pub(crate) fn edc_json_ld(body: &Value, kind: &str) -> Result<(), Response> {
    let names_context = match body.get("@context") {
        Some(Value::Array(items)) => items.iter().any(|c| c == MANAGEMENT_CONTEXT),
        Some(Value::String(c)) => c == MANAGEMENT_CONTEXT,
        _ => false,
    };
    if !names_context {
        return Err(edc_bad(&format!(
            "@context must include {MANAGEMENT_CONTEXT}"
        )));
    }
    if body.get("@type").and_then(Value::as_str) != Some(kind) {
        return Err(edc_bad(&format!("@type must be {kind}")));
    }
    Ok(())
}

/// A fresh random identifier (UUID v4).
pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
