//! Local stand-ins for services cfm integrates with that cannot run on its test machines:
//! the EDC services an EDC-V onboarding calls (the Identity Hub, the Control Plane and the
//! Issuer Service, here) and the Kubernetes API server ([`kubernetes`]).
//!
//! Those are Java services that cannot run on cfm's test machines. These servers implement
//! exactly the request and response shapes cfm's plugins rely on (see docs/operator-guide.md,
//! "Production backends") and refuse anything else: an unknown path is 404, a wrong method
//! 405, a body that is not `application/json` 415, a missing or mistyped field 400, a
//! missing or wrong `x-api-key` 401, a second create 409. Each service listens on its own
//! loopback port, so a plugin that sends a request to the wrong service gets a 404 as it
//! would in production. Tests script failures (`fail_next`), choose how a credential
//! request ends (`credential_outcome`), and read what is stored to prove that a dispose
//! left nothing behind.

// Over 500 lines, one job: the three EDC services share one store and one router, so a test
// sees what each was asked in one place. (The EDC-V work replaces them with token-exchange
// versions; they split then.)

// Stand-ins run inside tests: a panic fails the test that started them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use serde_json::{Value, json};

pub mod kubernetes;

/// The JSON-LD context the Control Plane's management API v5 expects.
pub const MANAGEMENT_CONTEXT: &str = "https://w3id.org/edc/connector/management/v2";

/// The routes whose answers a test can script.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Route {
    /// Identity Hub: `POST /v1beta/participants`, creating a participant context.
    IdentityHubCreate,
    /// Identity Hub: `DELETE /v1beta/participants/{pc}`.
    IdentityHubDelete,
    /// Identity Hub: `POST /v1beta/participants/{pc}/credentials/request`.
    CredentialRequest,
    /// Identity Hub: `GET /v1beta/participants/{pc}/credentials/request/{pid}`, a poll.
    CredentialStatus,
    /// Control Plane: `POST /v5beta/participants`.
    ControlPlaneCreate,
    /// Control Plane: `PATCH /v5beta/participants/{pc}/config`.
    ControlPlaneConfig,
    /// Control Plane: `DELETE /v5beta/participants/{pc}`.
    ControlPlaneDelete,
    /// Issuer Service: `POST /v1beta/participants/{issuer}/holders`, registering a holder.
    HolderCreate,
    /// Issuer Service: `DELETE /v1beta/participants/{issuer}/holders/{did}`.
    HolderDelete,
}

/// The three services, each on a free loopback port; stopped on drop.
pub struct Standins {
    /// Base URL of the Identity Hub's identity API (`http://127.0.0.1:<port>`).
    pub identity_hub_url: String,
    /// Base URL of the Control Plane's management API.
    pub control_plane_url: String,
    /// Base URL of the Issuer Service's administration API.
    pub issuer_url: String,
    /// The `x-api-key` every service requires.
    pub api_key: String,
    state: Shared,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

type Shared = Arc<Mutex<Store>>;

#[derive(Default)]
struct Store {
    api_key: String,
    identity_hub: BTreeMap<String, Value>,
    control_plane: BTreeMap<String, Value>,
    /// (issuer id, holder did) → registration.
    holders: BTreeMap<(String, String), Value>,
    /// (participant context, holder pid) → request and polls so far.
    requests: BTreeMap<(String, String), (Value, u32)>,
    scripted: BTreeMap<Route, VecDeque<u16>>,
    calls: BTreeMap<Route, usize>,
    /// Polls answered CREATED before the outcome, and the outcome (ISSUED or ERROR).
    polls_before_outcome: u32,
    outcome: String,
}

impl Standins {
    /// Starts the three services; every request must carry `x-api-key: <api_key>`.
    pub async fn start(api_key: &str) -> Self {
        let state: Shared = Arc::new(Mutex::new(Store {
            api_key: api_key.to_string(),
            polls_before_outcome: 1,
            outcome: "ISSUED".into(),
            ..Store::default()
        }));
        let identity_hub = Router::new()
            .route("/v1beta/participants", post(ih_create))
            .route("/v1beta/participants/{pc}", delete(ih_delete))
            .route(
                "/v1beta/participants/{pc}/credentials/request",
                post(credential_request),
            )
            .route(
                "/v1beta/participants/{pc}/credentials/request/{pid}",
                get(credential_status),
            );
        let control_plane = Router::new()
            .route("/v5beta/participants", post(cp_create))
            .route("/v5beta/participants/{pc}", delete(cp_delete))
            .route("/v5beta/participants/{pc}/config", patch(cp_config));
        let issuer = Router::new()
            .route("/v1beta/participants/{issuer}/holders", post(holder_create))
            .route(
                "/v1beta/participants/{issuer}/holders/{did}",
                delete(holder_delete),
            );
        let mut urls = Vec::new();
        let mut tasks = Vec::new();
        for router in [identity_hub, control_plane, issuer] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("binding a loopback port");
            urls.push(format!(
                "http://{}",
                listener.local_addr().expect("local address")
            ));
            let app = router.with_state(state.clone());
            tasks.push(tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            }));
        }
        Self {
            identity_hub_url: urls[0].clone(),
            control_plane_url: urls[1].clone(),
            issuer_url: urls[2].clone(),
            api_key: api_key.to_string(),
            state,
            tasks,
        }
    }

    /// The next calls of `route` answer these statuses (with an error body) before it
    /// behaves normally again.
    pub fn fail_next(&self, route: Route, statuses: &[u16]) {
        self.store()
            .scripted
            .entry(route)
            .or_default()
            .extend(statuses);
    }

    /// Credential requests answer `CREATED` to `polls` status queries, then `status`
    /// (`ISSUED` or `ERROR`).
    pub fn credential_outcome(&self, status: &str, polls: u32) {
        let mut store = self.store();
        store.outcome = status.to_string();
        store.polls_before_outcome = polls;
    }

    /// How many requests reached `route` (scripted failures included).
    pub fn calls(&self, route: Route) -> usize {
        self.store().calls.get(&route).copied().unwrap_or(0)
    }

    /// Participant context ids with an Identity Hub participant.
    pub fn identity_hub_participants(&self) -> Vec<String> {
        self.store().identity_hub.keys().cloned().collect()
    }

    /// The Identity Hub participant's registration as received.
    pub fn identity_hub_participant(&self, pc: &str) -> Option<Value> {
        self.store().identity_hub.get(pc).cloned()
    }

    /// Participant context ids with a Control Plane participant context (and its config).
    pub fn control_plane_participants(&self) -> BTreeMap<String, Value> {
        self.store().control_plane.clone()
    }

    /// Holder DIDs registered with the Issuer Service.
    pub fn holders(&self) -> Vec<String> {
        self.store()
            .holders
            .keys()
            .map(|(_, did)| did.clone())
            .collect()
    }

    /// Credential requests as received, by holder pid.
    pub fn credential_requests(&self) -> BTreeMap<String, Value> {
        self.store()
            .requests
            .iter()
            .map(|((_, pid), (body, _))| (pid.clone(), body.clone()))
            .collect()
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Standins {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

// --- Identity Hub ---

async fn ih_create(State(state): State<Shared>, headers: HeaderMap, body: String) -> Response {
    handle(
        &state,
        Route::IdentityHubCreate,
        &headers,
        &body,
        |store, body| {
            let body = body?;
            let pc = string(&body, "participantContextId")?;
            let did = string(&body, "did")?;
            strings(&body, "roles")?;
            let endpoints = array(&body, "serviceEndpoints")?;
            for endpoint in endpoints {
                for field in ["id", "type", "serviceEndpoint"] {
                    string(endpoint, field)?;
                }
            }
            let key = object(&body, "key")?;
            string(key, "keyId")?;
            let params = object(key, "keyGeneratorParams")?;
            string(params, "algorithm")?;
            boolean(&body, "active")?;
            if store.identity_hub.contains_key(&pc) {
                return Err(conflict(&format!(
                    "participant context {pc} already exists"
                )));
            }
            store.identity_hub.insert(pc, body.clone());
            Ok(axum::Json(
                json!({"apiKey": token(), "clientId": did, "clientSecret": token()}),
            ))
        },
    )
}

async fn ih_delete(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(pc): Path<String>,
) -> Response {
    handle(
        &state,
        Route::IdentityHubDelete,
        &headers,
        "",
        |store, _| {
            store.requests.retain(|(owner, _), _| *owner != pc);
            deleted(
                store.identity_hub.remove(&pc),
                &format!("participant context {pc}"),
            )
        },
    )
}

async fn credential_request(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(pc): Path<String>,
    body: String,
) -> Response {
    handle(
        &state,
        Route::CredentialRequest,
        &headers,
        &body,
        |store, body| {
            let body = body?;
            string(&body, "issuerDid")?;
            let pid = string(&body, "holderPid")?;
            let credentials = array(&body, "credentials")?;
            if credentials.is_empty() {
                return Err(bad_request("credentials must not be empty"));
            }
            for credential in credentials {
                for field in ["format", "type", "id"] {
                    string(credential, field)?;
                }
            }
            if !store.identity_hub.contains_key(&pc) {
                return Err(not_found(&format!("participant context {pc}")));
            }
            let key = (pc.clone(), pid.clone());
            if store.requests.contains_key(&key) {
                return Err(conflict(&format!(
                    "credential request {pid} already exists"
                )));
            }
            store.requests.insert(key, (body.clone(), 0));
            let location = format!("/v1beta/participants/{pc}/credentials/request/{pid}");
            Ok((StatusCode::CREATED, [(header::LOCATION, location)]).into_response())
        },
    )
}

async fn credential_status(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((pc, pid)): Path<(String, String)>,
) -> Response {
    handle(&state, Route::CredentialStatus, &headers, "", |store, _| {
        let before = store.polls_before_outcome;
        let outcome = store.outcome.clone();
        let Some((body, polls)) = store.requests.get_mut(&(pc.clone(), pid.clone())) else {
            return Err(not_found(&format!("credential request {pid}")));
        };
        *polls += 1;
        let status = if *polls > before {
            outcome
        } else {
            "CREATED".into()
        };
        Ok(axum::Json(json!({
            "holderPid": pid,
            "issuerDid": body["issuerDid"],
            "status": status,
        })))
    })
}

// --- Control Plane ---

async fn cp_create(State(state): State<Shared>, headers: HeaderMap, body: String) -> Response {
    handle(
        &state,
        Route::ControlPlaneCreate,
        &headers,
        &body,
        |store, body| {
            let body = body?;
            let context = array(&body, "@context")?;
            if !context.iter().any(|c| c == MANAGEMENT_CONTEXT) {
                return Err(bad_request(&format!(
                    "@context must include {MANAGEMENT_CONTEXT}"
                )));
            }
            if body["@type"] != "ParticipantContext" {
                return Err(bad_request("@type must be ParticipantContext"));
            }
            let pc = string(&body, "@id")?;
            string(&body, "identity")?;
            object(&body, "properties")?;
            if body["state"] != "ACTIVATED" {
                return Err(bad_request("state must be ACTIVATED"));
            }
            if store.control_plane.contains_key(&pc) {
                return Err(conflict(&format!(
                    "participant context {pc} already exists"
                )));
            }
            store
                .control_plane
                .insert(pc.clone(), json!({"context": body, "config": null}));
            Ok(axum::Json(json!({"@id": pc})))
        },
    )
}

async fn cp_config(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(pc): Path<String>,
    body: String,
) -> Response {
    handle(
        &state,
        Route::ControlPlaneConfig,
        &headers,
        &body,
        |store, body| {
            let body = body?;
            if !body.is_object() {
                return Err(bad_request("the configuration must be a JSON object"));
            }
            match store.control_plane.get_mut(&pc) {
                Some(entry) => {
                    entry["config"] = body;
                    Ok(StatusCode::NO_CONTENT.into_response())
                }
                None => Err(not_found(&format!("participant context {pc}"))),
            }
        },
    )
}

async fn cp_delete(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(pc): Path<String>,
) -> Response {
    handle(
        &state,
        Route::ControlPlaneDelete,
        &headers,
        "",
        |store, _| {
            deleted(
                store.control_plane.remove(&pc),
                &format!("participant context {pc}"),
            )
        },
    )
}

// --- Issuer Service ---

async fn holder_create(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(issuer): Path<String>,
    body: String,
) -> Response {
    handle(
        &state,
        Route::HolderCreate,
        &headers,
        &body,
        |store, body| {
            let body = body?;
            let did = string(&body, "did")?;
            string(&body, "holderId")?;
            string(&body, "name")?;
            object(&body, "properties")?;
            let key = (issuer.clone(), did.clone());
            if store.holders.contains_key(&key) {
                return Err(conflict(&format!("holder {did} already exists")));
            }
            store.holders.insert(key, body.clone());
            Ok(StatusCode::CREATED.into_response())
        },
    )
}

async fn holder_delete(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((issuer, did)): Path<(String, String)>,
) -> Response {
    handle(&state, Route::HolderDelete, &headers, "", |store, _| {
        deleted(
            store.holders.remove(&(issuer.clone(), did.clone())),
            &format!("holder {did}"),
        )
    })
}

// --- what every route does ---

/// Counts the call, answers a scripted failure if one is due, checks the API key and
/// (for requests with a body) the content type and JSON, then runs the route.
fn handle<R: IntoResponse>(
    state: &Shared,
    route: Route,
    headers: &HeaderMap,
    body: &str,
    run: impl FnOnce(&mut Store, Result<Value, Refusal>) -> Result<R, Refusal>,
) -> Response {
    let mut store = state.lock().unwrap_or_else(|p| p.into_inner());
    *store.calls.entry(route).or_default() += 1;
    if let Some(status) = store.scripted.get_mut(&route).and_then(VecDeque::pop_front) {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return error(status, "scripted failure").into_response();
    }
    if headers.get("x-api-key").and_then(|v| v.to_str().ok()) != Some(store.api_key.as_str()) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong x-api-key").into_response();
    }
    let parsed = if body.is_empty() && headers.get(header::CONTENT_TYPE).is_none() {
        Err(bad_request("a JSON body is required"))
    } else {
        json_body(headers, body)
    };
    match run(&mut store, parsed) {
        Ok(response) => response.into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

fn json_body(headers: &HeaderMap, body: &str) -> Result<Value, Refusal> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = content_type.split(';').next().unwrap_or("").trim();
    if media != "application/json" {
        return Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &format!("content-type must be application/json, got '{content_type}'"),
        ));
    }
    serde_json::from_str(body).map_err(|e| bad_request(&format!("the body is not JSON: {e}")))
}

fn field<'a>(body: &'a Value, name: &str) -> Result<&'a Value, Refusal> {
    body.get(name)
        .ok_or_else(|| bad_request(&format!("'{name}' is required")))
}

fn string(body: &Value, name: &str) -> Result<String, Refusal> {
    match field(body, name)?.as_str() {
        Some(s) if !s.is_empty() => Ok(s.to_string()),
        _ => Err(bad_request(&format!("'{name}' must be a non-empty string"))),
    }
}

fn strings(body: &Value, name: &str) -> Result<(), Refusal> {
    if array(body, name)?.iter().all(Value::is_string) {
        Ok(())
    } else {
        Err(bad_request(&format!(
            "'{name}' must be an array of strings"
        )))
    }
}

fn array<'a>(body: &'a Value, name: &str) -> Result<&'a Vec<Value>, Refusal> {
    field(body, name)?
        .as_array()
        .ok_or_else(|| bad_request(&format!("'{name}' must be an array")))
}

fn object<'a>(body: &'a Value, name: &str) -> Result<&'a Value, Refusal> {
    let value = field(body, name)?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(bad_request(&format!("'{name}' must be an object")))
    }
}

fn boolean(body: &Value, name: &str) -> Result<bool, Refusal> {
    field(body, name)?
        .as_bool()
        .ok_or_else(|| bad_request(&format!("'{name}' must be a boolean")))
}

/// 204 when a delete removed something, 404 naming `what` when there was nothing.
fn deleted(removed: Option<Value>, what: &str) -> Result<Response, Refusal> {
    match removed {
        Some(_) => Ok(StatusCode::NO_CONTENT.into_response()),
        None => Err(not_found(what)),
    }
}

fn bad_request(message: &str) -> Refusal {
    error(StatusCode::BAD_REQUEST, message)
}

fn not_found(what: &str) -> Refusal {
    error(StatusCode::NOT_FOUND, &format!("{what} does not exist"))
}

fn conflict(message: &str) -> Refusal {
    error(StatusCode::CONFLICT, message)
}

/// A refused request: its status, with EDC's error shape, an array of `{message, type}`.
struct Refusal {
    status: StatusCode,
    message: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let kind = match self.status {
            StatusCode::NOT_FOUND => "ObjectNotFound",
            StatusCode::CONFLICT => "ObjectConflict",
            StatusCode::BAD_REQUEST | StatusCode::UNSUPPORTED_MEDIA_TYPE => "InvalidRequest",
            StatusCode::UNAUTHORIZED => "NotAuthorized",
            _ => "ServerError",
        };
        let body = json!([{"message": self.message, "type": kind}]);
        (self.status, axum::Json(body)).into_response()
    }
}

fn error(status: StatusCode, message: &str) -> Refusal {
    Refusal {
        status,
        message: message.to_string(),
    }
}

fn token() -> String {
    use rand::Rng as _;
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
