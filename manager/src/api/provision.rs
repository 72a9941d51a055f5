//! Provision Manager routes: activity and orchestration definitions, orchestrations.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

use super::AppState;
use super::error::ApiResult;
use super::json::JsonBody;
use super::requests::NewOrchestrationDefinition;
use crate::model::ActivityDefinition;
use crate::provision::definitions;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/activity-definitions",
            get(list_activities).post(put_activity),
        )
        .route(
            "/orchestration-definitions",
            get(list_orchestrations).post(create_orchestration),
        )
        .route(
            "/orchestration-definitions/{id}",
            get(get_orchestration_definition),
        )
        .route("/orchestrations/{id}", get(get_orchestration))
}

async fn list_activities(State(state): State<AppState>) -> ApiResult<impl IntoResponse> {
    Ok(Json(definitions::list_activities(state.engine.db()).await?))
}

async fn put_activity(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<ActivityDefinition>,
) -> ApiResult<impl IntoResponse> {
    let mut conn = state.engine.db().writer().acquire().await?;
    definitions::put_activity(&mut conn, &body).await?;
    Ok((StatusCode::CREATED, Json(body)))
}

async fn list_orchestrations(State(state): State<AppState>) -> ApiResult<impl IntoResponse> {
    Ok(Json(
        definitions::list_orchestrations(state.engine.db()).await?,
    ))
}

async fn create_orchestration(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<NewOrchestrationDefinition>,
) -> ApiResult<impl IntoResponse> {
    let mut conn = state.engine.db().writer().acquire().await?;
    let definition = definitions::create_orchestration(
        &mut conn,
        None,
        body.description,
        body.schema,
        body.activities,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(definition)))
}

async fn get_orchestration_definition(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let mut conn = state.engine.db().acquire().await?;
    Ok(Json(definitions::get_orchestration(&mut conn, &id).await?))
}

async fn get_orchestration(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(state.engine.get(&id).await?))
}
