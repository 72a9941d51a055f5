//! Provision Manager routes: activity and orchestration definitions, orchestrations.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use axum::{Json, Router};

use super::AppState;
use super::error::{ApiError, ApiResult, ErrorBody};
use super::json::JsonBody;
use super::requests::{NewOrchestrationDefinition, OrchestrationManifest, QueryRequest};
use crate::model::{ActivityDefinition, Orchestration, OrchestrationDefinition};
use crate::provision::{definitions, manifests};
use crate::query::Predicate;
use crate::store::Paged;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/activity-definitions",
            get(list_activities).post(put_activity),
        )
        .route("/activity-definitions/{type}", delete(delete_activity))
        .route(
            "/orchestration-definitions",
            get(list_orchestrations).post(create_orchestration),
        )
        .route(
            "/orchestration-definitions/{id}",
            get(get_orchestration_definition).delete(delete_orchestration_definition),
        )
        .route(
            "/orchestration-definitions/{id}/versions",
            get(list_orchestration_versions).post(add_orchestration_version),
        )
        .route(
            "/orchestration-definitions/{id}/versions/{version}",
            get(get_orchestration_version),
        )
        .route("/orchestrations", post(start_orchestration))
        .route("/orchestrations/query", post(query_orchestrations))
        .route("/orchestrations/{id}", get(get_orchestration))
        .route("/orchestrations/{id}/cancel", post(cancel_orchestration))
}

#[utoipa::path(
    get,
    path = "/activity-definitions",
    tag = "definitions",
    summary = "List activity definitions",
    responses(
        (status = 200, description = "Definitions", body = [ActivityDefinition])
    )
)]
pub(super) async fn list_activities(State(state): State<AppState>) -> ApiResult<impl IntoResponse> {
    Ok(Json(definitions::list_activities(state.engine.db()).await?))
}

#[utoipa::path(
    post,
    path = "/activity-definitions",
    tag = "definitions",
    summary = "Create or replace an activity definition",
    request_body = ActivityDefinition,
    responses(
        (status = 201, description = "Stored", body = ActivityDefinition),
        (status = 400, description = "Malformed body or parameters", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody)
    )
)]
pub(super) async fn put_activity(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<ActivityDefinition>,
) -> ApiResult<impl IntoResponse> {
    let mut conn = state.engine.db().writer().acquire().await?;
    definitions::put_activity(&mut conn, &body).await?;
    Ok((StatusCode::CREATED, Json(body)))
}

#[utoipa::path(
    post,
    path = "/orchestrations",
    tag = "orchestrations",
    summary = "Start an orchestration from a manifest (once per id)",
    request_body = OrchestrationManifest,
    responses(
        (status = 202, description = "Started, or started before under this id: the orchestration", body = Orchestration),
        (status = 400, description = "Malformed manifest, or no definition defines its type", body = ErrorBody),
        (status = 409, description = "The id is taken by another orchestration, or the correlationId or the payload's participant context is a participant profile of this tenant manager", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody)
    )
)]
pub(super) async fn start_orchestration(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<OrchestrationManifest>,
) -> ApiResult<impl IntoResponse> {
    let id = body.id.clone();
    let manifest = manifests::Manifest {
        id: body.id,
        correlation_id: body.correlation_id,
        orchestration_type: body.orchestration_type,
        payload: body.payload,
    };
    manifests::start(&state.engine, manifest).await?;
    Ok((StatusCode::ACCEPTED, Json(state.engine.get(&id).await?)))
}

#[utoipa::path(
    get,
    path = "/orchestration-definitions",
    tag = "definitions",
    summary = "List orchestration definitions",
    responses(
        (status = 200, description = "Definitions", body = [OrchestrationDefinition])
    )
)]
pub(super) async fn list_orchestrations(
    State(state): State<AppState>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(
        definitions::list_orchestrations(state.engine.db()).await?,
    ))
}

#[utoipa::path(
    post,
    path = "/orchestration-definitions",
    tag = "definitions",
    summary = "Create an orchestration definition (validated)",
    request_body = NewOrchestrationDefinition,
    responses(
        (status = 201, description = "Created", body = OrchestrationDefinition),
        (status = 400, description = "Malformed body or parameters", body = ErrorBody),
        (status = 409, description = "A definition with this id exists", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody)
    )
)]
pub(super) async fn create_orchestration(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<NewOrchestrationDefinition>,
) -> ApiResult<impl IntoResponse> {
    if let Some(id) = &body.id {
        definitions::check_template_ref(id)?;
    }
    let mut tx = crate::store::write(state.engine.db()).await?;
    let definition = definitions::create_orchestration(
        &mut tx,
        body.id,
        body.description,
        body.schema,
        body.activities,
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(definition)))
}

/// Adds the next version of a definition: new deployments run it, participants on older
/// versions keep theirs until a rollout upgrades them. The body is a definition's; an `id`
/// in it must be the path's. `cfm.orchestration.vpa.upgrade` is what a rollout runs to
/// bring a participant to this version; without it, a rollout re-runs the deploy.
#[utoipa::path(
    post,
    path = "/orchestration-definitions/{id}/versions",
    tag = "definitions",
    summary = "Add a version of an orchestration definition (validated); it becomes what the id names",
    params(("id" = String, Path, description = "Definition id")),
    request_body = NewOrchestrationDefinition,
    responses(
        (status = 201, description = "The new version", body = OrchestrationDefinition),
        (status = 400, description = "Malformed body, a failed validation, or another id in the body", body = ErrorBody),
        (status = 404, description = "No such definition", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody)
    )
)]
pub(super) async fn add_orchestration_version(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<NewOrchestrationDefinition>,
) -> ApiResult<impl IntoResponse> {
    if body.id.as_ref().is_some_and(|named| *named != id) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the body's id is not the path's; leave it out",
        ));
    }
    let mut tx = crate::store::write(state.engine.db()).await?;
    let definition =
        definitions::add_version(&mut tx, &id, body.description, body.schema, body.activities)
            .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(definition)))
}

#[utoipa::path(
    get,
    path = "/orchestration-definitions/{id}/versions",
    tag = "definitions",
    summary = "List every version of an orchestration definition, oldest first",
    params(("id" = String, Path, description = "Definition id")),
    responses(
        (status = 200, description = "The versions", body = [OrchestrationDefinition]),
        (status = 404, description = "No such definition", body = ErrorBody)
    )
)]
pub(super) async fn list_orchestration_versions(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(
        definitions::list_versions(state.engine.db(), &id).await?,
    ))
}

#[utoipa::path(
    get,
    path = "/orchestration-definitions/{id}/versions/{version}",
    tag = "definitions",
    summary = "Read one version of an orchestration definition",
    params(("id" = String, Path, description = "Definition id"), ("version" = i64, Path, description = "Version, from 1")),
    responses(
        (status = 200, description = "The version", body = OrchestrationDefinition),
        (status = 400, description = "The version is not a number", body = ErrorBody),
        (status = 404, description = "No such definition or version", body = ErrorBody)
    )
)]
pub(super) async fn get_orchestration_version(
    State(state): State<AppState>,
    Path((id, version)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    let version: i64 = version.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the version must be a whole number, got '{version}'"),
        )
    })?;
    let mut conn = state.engine.db().acquire().await?;
    Ok(Json(
        definitions::get_version(&mut conn, &id, version).await?,
    ))
}

#[utoipa::path(
    get,
    path = "/orchestration-definitions/{id}",
    tag = "definitions",
    summary = "Read an orchestration definition",
    params(("id" = String, Path, description = "Definition id")),
    responses(
        (status = 200, description = "The definition", body = OrchestrationDefinition),
        (status = 404, description = "No such definition", body = ErrorBody)
    )
)]
pub(super) async fn get_orchestration_definition(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let mut conn = state.engine.db().acquire().await?;
    Ok(Json(definitions::get_orchestration(&mut conn, &id).await?))
}

#[utoipa::path(
    get,
    path = "/orchestrations/{id}",
    tag = "orchestrations",
    summary = "Read an orchestration with its steps",
    params(("id" = String, Path, description = "Orchestration id")),
    responses(
        (status = 200, description = "The orchestration", body = Orchestration),
        (status = 404, description = "No such orchestration", body = ErrorBody)
    )
)]
pub(super) async fn get_orchestration(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(state.engine.get(&id).await?))
}

#[utoipa::path(
    post,
    path = "/orchestrations/{id}/cancel",
    tag = "orchestrations",
    summary = "Cancel a running orchestration (extension); a cancelled deploy is compensated by the dispose template",
    params(("id" = String, Path, description = "Orchestration id")),
    responses(
        (status = 200, description = "The cancelled orchestration", body = Orchestration),
        (status = 404, description = "No such orchestration", body = ErrorBody),
        (status = 409, description = "The orchestration is not running", body = ErrorBody)
    )
)]
pub(super) async fn cancel_orchestration(
    State(state): State<AppState>,
    caller: axum::Extension<super::Caller>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(state.engine.cancel(&id, &caller.subject).await?))
}

#[utoipa::path(
    delete,
    path = "/activity-definitions/{type}",
    tag = "definitions",
    summary = "Delete an activity definition no orchestration definition uses",
    params(("type" = String, Path, description = "Activity type")),
    responses(
        (status = 200, description = "Deleted"),
        (status = 400, description = "An orchestration definition uses it", body = ErrorBody),
        (status = 404, description = "No such activity definition", body = ErrorBody)
    )
)]
pub(super) async fn delete_activity(
    State(state): State<AppState>,
    Path(activity_type): Path<String>,
) -> ApiResult<impl IntoResponse> {
    definitions::delete_activity(state.engine.db(), &activity_type).await?;
    Ok(StatusCode::OK)
}

#[utoipa::path(
    delete,
    path = "/orchestration-definitions/{id}",
    tag = "definitions",
    summary = "Delete an orchestration definition (running orchestrations keep their steps)",
    params(("id" = String, Path, description = "Definition id")),
    responses(
        (status = 200, description = "Deleted"),
        (status = 404, description = "No such definition", body = ErrorBody)
    )
)]
pub(super) async fn delete_orchestration_definition(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    definitions::delete_orchestration(state.engine.db(), &id).await?;
    Ok(StatusCode::OK)
}

#[utoipa::path(
    post,
    path = "/orchestrations/query",
    tag = "orchestrations",
    summary = "Query orchestrations with a predicate, e.g. correlationId = '<profile id>' (Link and X-Total-Count headers)",
    request_body = QueryRequest,
    responses(
        (status = 200, description = "Matching orchestrations sorted by id", body = [Orchestration]),
        (status = 400, description = "Malformed body or predicate; a predicate past a limit (reason predicate-bytes, -depth, -terms, -in-values, -values, -path-segments, -text-bytes, -wildcards) or a query past its time budget (reason query-timeout)", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody)
    )
)]
pub(super) async fn query_orchestrations(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<QueryRequest>,
) -> ApiResult<impl IntoResponse> {
    let predicate = Predicate::parse(&body.predicate)?;
    let page = body.page();
    let items = state.engine.query(&predicate, page).await?;
    let paged = Paged::counting_if_needed(items, page, state.engine.count(&predicate)).await?;
    Ok((
        super::tenant::paging_headers("/orchestrations/query", &paged),
        Json(paged.items),
    ))
}
