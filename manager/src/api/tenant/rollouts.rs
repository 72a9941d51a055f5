//! Routes of rollouts: bringing participants to another version of their template.

use super::*;
use crate::model::{Rollout, RolloutTarget, RolloutTargetState};
use crate::tenant::rollouts::{self, NewRollout};

/// Selects the participants and starts upgrading them, batch after batch.
#[utoipa::path(
    post,
    path = "/rollouts",
    tag = "rollouts",
    summary = "Start a rollout of a template version",
    request_body = NewRollout,
    responses(
        (status = 201, description = "The rollout, running, with its participants selected", body = Rollout),
        (status = 400, description = "Malformed body, an unknown template or version, a bad selector, batch size, parallelism, budget or pause, or too many participants selected", body = ErrorBody),
        (status = 409, description = "Another rollout of the template is under way, or the version neither upgrades nor deploys", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody)
    )
)]
pub(crate) async fn create_rollout(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<NewRollout>,
) -> ApiResult<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        Json(rollouts::create(&state.engine, body).await?),
    ))
}

#[utoipa::path(
    get,
    path = "/rollouts",
    tag = "rollouts",
    summary = "List rollouts, newest first (paginated), with their progress",
    params(
        ("offset" = Option<i64>, Query, description = "Items to skip"),
        ("limit" = Option<i64>, Query, description = "Page size, 1 to 1000 (default 1000)")
    ),
    responses(
        (status = 200, description = "Rollouts", body = [Rollout]),
        (status = 400, description = "Malformed paging parameters", body = ErrorBody)
    )
)]
pub(crate) async fn list_rollouts(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> ApiResult<impl IntoResponse> {
    let paged = rollouts::list(&state.engine, page_of(query.as_deref())?).await?;
    Ok((paging_headers("/rollouts", &paged), Json(paged.items)))
}

#[utoipa::path(
    get,
    path = "/rollouts/{id}",
    tag = "rollouts",
    summary = "Read a rollout and its progress",
    params(("id" = String, Path, description = "Rollout id")),
    responses(
        (status = 200, description = "The rollout", body = Rollout),
        (status = 404, description = "No such rollout", body = ErrorBody)
    )
)]
pub(crate) async fn get_rollout(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(rollouts::get(&state.engine, &id).await?))
}

/// Per-participant results, in the order the participants are upgraded.
#[utoipa::path(
    get,
    path = "/rollouts/{id}/participants",
    tag = "rollouts",
    summary = "List a rollout's participants and how each upgrade went (paginated)",
    params(
        ("id" = String, Path, description = "Rollout id"),
        ("state" = Option<String>, Query, description = "Only these: pending, upgrading, upgraded, failed or skipped"),
        ("offset" = Option<i64>, Query, description = "Items to skip"),
        ("limit" = Option<i64>, Query, description = "Page size, 1 to 1000 (default 1000)")
    ),
    responses(
        (status = 200, description = "The participants", body = [RolloutTarget]),
        (status = 400, description = "Malformed paging parameters or an unknown state", body = ErrorBody),
        (status = 404, description = "No such rollout", body = ErrorBody)
    )
)]
pub(crate) async fn list_rollout_participants(
    State(state): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult<impl IntoResponse> {
    let wanted = query_param(query.as_deref(), "state")
        .map(|value| {
            value.parse::<RolloutTargetState>().map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "state is pending, upgrading, upgraded, failed or skipped",
                )
            })
        })
        .transpose()?;
    let page = page_of(query.as_deref())?;
    let paged = rollouts::targets(&state.engine, &id, wanted, page).await?;
    let path = match wanted {
        Some(state) => format!("/rollouts/{id}/participants?state={state}"),
        None => format!("/rollouts/{id}/participants"),
    };
    Ok((paging_headers(&path, &paged), Json(paged.items)))
}

/// `pause` (no new upgrades; those under way finish), `resume` (failed participants are
/// tried again and the budget starts over) or `abort` (for good; untouched participants
/// stay on their version).
#[utoipa::path(
    post,
    path = "/rollouts/{id}/{action}",
    tag = "rollouts",
    summary = "Pause, resume or abort a rollout",
    params(("id" = String, Path, description = "Rollout id"), ("action" = String, Path, description = "pause, resume or abort")),
    responses(
        (status = 200, description = "The rollout, with its progress", body = Rollout),
        (status = 400, description = "An unknown action", body = ErrorBody),
        (status = 404, description = "No such rollout", body = ErrorBody),
        (status = 409, description = "The rollout has finished", body = ErrorBody)
    )
)]
pub(crate) async fn control_rollout(
    State(state): State<AppState>,
    Path((id, action)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    let control = match action.as_str() {
        "pause" => rollouts::Control::Pause,
        "resume" => rollouts::Control::Resume,
        "abort" => rollouts::Control::Abort,
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "the action is pause, resume or abort",
            ));
        }
    };
    Ok(Json(rollouts::control(&state.engine, &id, control).await?))
}
