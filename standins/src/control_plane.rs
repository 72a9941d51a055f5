//! The EDC Control Plane's management API v5beta: participant contexts, their configuration
//! and data-plane registrations, as EDC's v5 controllers answer today.
//!
//! Participant contexts and configs need `management-api:admin`; create validates the
//! JSON-LD body (`@context` naming the management context, `@type` `ParticipantContext`,
//! `@id`, `identity`; 400) and answers exactly 200 with an `IdResponse` (409 for a known id).
//! Delete and the config `PATCH` are `void` controller methods, so EDC answers 204 (404 when
//! the context is unknown); deleting a context drops its config, not its data planes, which
//! have their own `DELETE`. Data planes need `management-api:dataplanes:write` (any
//! `management-api:admin` or `:write` satisfies it) and a token for that participant context
//! unless it is admin: `PUT` answers 200 (an upsert for the same context, 409 when another
//! context owns the `dataplaneId`), `DELETE` 200 (404 unknown).

use std::collections::BTreeMap;

use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, patch, post, put};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::bearer::{self, Principal};
use crate::route::{Route, Service, path_of};
use crate::{
    EdcJson, EdcV, MANAGEMENT_CONTEXT, Reply, Shared, edc_bad, edc_error, edc_json_ld,
    edc_not_found, edc_owned, edc_string, edc_string_map,
};

const ADMIN: &str = "management-api:admin";

/// A registered data plane.
#[derive(Debug, Clone)]
pub(crate) struct Dataplane {
    pub participant_context: String,
    registration: Value,
}

/// The Control Plane's state.
#[derive(Default)]
pub(crate) struct ControlPlaneStore {
    /// Participant context id → body as received.
    pub participants: BTreeMap<String, Value>,
    /// Participant context id → `{"entries": {..}, "privateEntries": {..}}`, merged.
    pub configs: BTreeMap<String, Value>,
    /// Data plane id → registration.
    pub dataplanes: BTreeMap<String, Dataplane>,
}

pub(crate) fn router(inner: Shared) -> Router {
    let router = Router::new()
        .route(path_of(Route::ControlPlaneCreate), post(create))
        .route(path_of(Route::ControlPlaneDelete), delete(remove))
        .route(path_of(Route::ControlPlaneConfig), patch(config))
        .route(path_of(Route::DataplaneRegister), put(register))
        .route(path_of(Route::DataplaneDelete), delete(unregister));
    bearer::guarded(router, &inner, Service::ControlPlane)
}

fn validate_context(body: &Value) -> Result<String, Response> {
    edc_json_ld(body, "ParticipantContext")?;
    let pc = edc_string(body, "@id")?;
    edc_string(body, "identity")?;
    if body.get("properties").is_some_and(|p| !p.is_object()) {
        return Err(edc_bad("'properties' must be an object"));
    }
    match body.get("state") {
        None => {}
        Some(Value::String(s)) if ["CREATED", "ACTIVATED", "DEACTIVATED"].contains(&s.as_str()) => {
        }
        Some(_) => return Err(edc_bad("'state' must be CREATED, ACTIVATED or DEACTIVATED")),
    }
    Ok(pc)
}

async fn create(State(inner): State<Shared>, EdcJson(body): EdcJson) -> Reply {
    let pc = validate_context(&body)?;
    let mut store = inner.store();
    if store.control_plane.participants.contains_key(&pc) {
        let message = format!("ParticipantContext with ID '{pc}' already exists");
        return Err(edc_error(StatusCode::CONFLICT, &message));
    }
    store.control_plane.participants.insert(pc.clone(), body);
    let created_at = bearer::now() * 1000;
    let answer = json!({
        "@context": [MANAGEMENT_CONTEXT],
        "@type": "IdResponse",
        "@id": pc,
        "createdAt": created_at,
    });
    Ok((StatusCode::OK, Json(answer)).into_response())
}

async fn remove(State(inner): State<Shared>, Path(pc): Path<String>) -> Reply {
    let mut store = inner.store();
    if store.control_plane.participants.remove(&pc).is_none() {
        return Err(edc_not_found("ParticipantContext", &pc));
    }
    store.control_plane.configs.remove(&pc);
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn config(
    State(inner): State<Shared>,
    Path(pc): Path<String>,
    EdcJson(body): EdcJson,
) -> Reply {
    edc_json_ld(&body, "ParticipantContextConfig")?;
    let entries = edc_string_map(&body, "entries")?;
    let private = edc_string_map(&body, "privateEntries")?;
    let mut store = inner.store();
    if !store.control_plane.participants.contains_key(&pc) {
        return Err(edc_not_found("ParticipantContext", &pc));
    }
    let config = store
        .control_plane
        .configs
        .entry(pc)
        .or_insert_with(|| json!({"entries": {}, "privateEntries": {}}));
    for (k, v) in entries {
        config["entries"][k] = json!(v);
    }
    for (k, v) in private {
        config["privateEntries"][k] = json!(v);
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn validate_registration(body: &Value) -> Result<String, Response> {
    let id = edc_string(body, "dataplaneId")?;
    edc_string(body, "endpoint")?;
    let strings = |v: &Value| v.as_array().is_some_and(|a| a.iter().all(Value::is_string));
    if !body.get("transferTypes").is_some_and(strings) {
        return Err(edc_bad("'transferTypes' must be an array of strings"));
    }
    if body
        .get("labels")
        .is_some_and(|l| !l.is_null() && !strings(l))
    {
        return Err(edc_bad("'labels' must be an array of strings"));
    }
    match body.get("authorization") {
        None | Some(Value::Null) => {}
        Some(a) if a.get("type").is_some_and(Value::is_string) => {}
        Some(_) => return Err(edc_bad("'authorization' must be an object with a 'type'")),
    }
    Ok(id)
}

async fn register(
    State(inner): State<Shared>,
    Extension(principal): Extension<Principal>,
    Path(pc): Path<String>,
    EdcJson(body): EdcJson,
) -> Reply {
    let id = validate_registration(&body)?;
    let mut store = inner.store();
    if !store.control_plane.participants.contains_key(&pc) {
        return Err(edc_not_found("ParticipantContext", &pc));
    }
    principal.authorize(&pc, ADMIN)?;
    if let Some(existing) = store.control_plane.dataplanes.get(&id)
        && existing.participant_context != pc
    {
        let message = format!("DataPlaneInstance with ID '{id}' already exists");
        return Err(edc_error(StatusCode::CONFLICT, &message));
    }
    let dataplane = Dataplane {
        participant_context: pc,
        registration: body,
    };
    store.control_plane.dataplanes.insert(id, dataplane);
    Ok(StatusCode::OK.into_response())
}

async fn unregister(
    State(inner): State<Shared>,
    Extension(principal): Extension<Principal>,
    Path((pc, id)): Path<(String, String)>,
) -> Reply {
    let mut store = inner.store();
    let dataplanes = &mut store.control_plane.dataplanes;
    edc_owned(dataplanes, &id, "DataPlaneInstance", |d| {
        d.participant_context == pc
    })?;
    principal.authorize(&pc, ADMIN)?;
    dataplanes.remove(&id);
    Ok(StatusCode::OK.into_response())
}

impl EdcV {
    /// Control Plane participant contexts: id → body as received.
    pub fn control_plane_participants(&self) -> BTreeMap<String, Value> {
        self.inner.store().control_plane.participants.clone()
    }

    /// Control Plane configs: participant context id → `{"entries", "privateEntries"}`.
    pub fn control_plane_configs(&self) -> BTreeMap<String, Value> {
        self.inner.store().control_plane.configs.clone()
    }

    /// Registered data planes: id → the registration as received, plus its
    /// `participantContextId`.
    pub fn dataplanes(&self) -> BTreeMap<String, Value> {
        let store = self.inner.store();
        let all = store.control_plane.dataplanes.iter();
        all.map(|(id, d)| {
            let mut registration = d.registration.clone();
            registration["participantContextId"] = json!(d.participant_context);
            (id.clone(), registration)
        })
        .collect()
    }
}
