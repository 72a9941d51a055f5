//! Routes of the infrastructure participants are placed on: cells and dataspace profiles
//! with their deployments to cells.

use super::*;

#[utoipa::path(
    get,
    path = "/cells",
    tag = "cells",
    summary = "List cells (paginated)",
    params(
        ("offset" = Option<i64>, Query, description = "Items to skip"),
        ("limit" = Option<i64>, Query, description = "Page size, 1 to 10000 (default 10000)")
    ),
    responses(
        (status = 200, description = "Cells sorted by id", body = [Cell]),
        (status = 400, description = "Malformed paging parameters", body = ErrorBody)
    )
)]
pub(crate) async fn list_cells(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> ApiResult<impl IntoResponse> {
    let paged = cells::list(state.engine.db(), page_of(query.as_deref())?).await?;
    Ok((paging_headers("/cells", &paged), Json(paged.items)))
}

#[utoipa::path(
    post,
    path = "/cells",
    tag = "cells",
    summary = "Register a cell",
    request_body = NewCell,
    responses(
        (status = 201, description = "Created", body = Cell),
        (status = 400, description = "Malformed body or parameters", body = ErrorBody),
        (status = 409, description = "Duplicate externalId", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody)
    )
)]
pub(crate) async fn create_cell(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<NewCell>,
) -> ApiResult<impl IntoResponse> {
    let new = cells::NewCell {
        external_id: body.external_id,
        state: body.state,
        state_timestamp: body.state_timestamp,
        properties: body.properties,
        labels: body.labels,
        capacity: body.capacity,
    };
    Ok((
        StatusCode::CREATED,
        Json(cells::create(state.engine.db(), new).await?),
    ))
}

#[utoipa::path(
    get,
    path = "/cells/{id}",
    tag = "cells",
    summary = "Read a cell",
    params(("id" = String, Path, description = "Cell id")),
    responses(
        (status = 200, description = "The cell", body = Cell),
        (status = 404, description = "No such cell", body = ErrorBody)
    )
)]
pub(crate) async fn get_cell(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let mut conn = state.engine.db().acquire().await?;
    let cell = cells::get(&mut conn, &id).await?;
    Ok((etag(cell.version), Json(cell)))
}

/// Changes a cell's state (`active` ⇄ `cordoned`, ...), labels, capacity or properties.
/// `If-Match` (or the body's `version`) makes it conditional on the version the client read.
#[utoipa::path(
    patch,
    path = "/cells/{id}",
    tag = "cells",
    summary = "Change a cell's state, labels, capacity or properties",
    params(("id" = String, Path, description = "Cell id"), ("If-Match" = Option<String>, Header, description = "Version the change is based on, e.g. \"3\"; a stale one is a 409")),
    request_body = CellPatch,
    responses(
        (status = 200, description = "The changed cell, with its usage", body = Cell),
        (status = 400, description = "Malformed body, a state only a drain sets, bad labels or capacity", body = ErrorBody),
        (status = 404, description = "No such cell", body = ErrorBody),
        (status = 409, description = "Stale version, or the cell is being drained", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody)
    )
)]
pub(crate) async fn patch_cell(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CellPatch>,
) -> ApiResult<impl IntoResponse> {
    let expected = if_match(&headers)?.or(body.version);
    let patch = cells::Patch {
        state: body.state,
        labels: body.labels,
        removed_labels: body.removed_labels,
        capacity: body.capacity,
        properties: body.properties,
        removed_properties: body.removed_properties,
    };
    let cell = cells::patch(state.engine.db(), &id, patch, expected).await?;
    Ok((etag(cell.version), Json(cell)))
}

/// Starts moving every participant out of the cell (see the operator guide); asking
/// again while a drain is under way answers that drain.
#[utoipa::path(
    post,
    path = "/cells/{id}/drain",
    tag = "cells",
    summary = "Drain a cell: move its participants to other cells",
    params(("id" = String, Path, description = "Cell id")),
    request_body = NewDrain,
    responses(
        (status = 202, description = "The drain, with its progress", body = Drain),
        (status = 400, description = "Malformed body or parallelism", body = ErrorBody),
        (status = 404, description = "No such cell", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody)
    )
)]
pub(crate) async fn drain_cell(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<NewDrain>,
) -> ApiResult<impl IntoResponse> {
    let drain = drains::start(&state.engine, &id, body.parallelism).await?;
    Ok((StatusCode::ACCEPTED, Json(drain)))
}

#[utoipa::path(
    get,
    path = "/cells/{id}/drain",
    tag = "cells",
    summary = "Read the progress of a cell's latest drain",
    params(("id" = String, Path, description = "Cell id")),
    responses(
        (status = 200, description = "The drain, with its progress", body = Drain),
        (status = 404, description = "No such cell, or it was never drained", body = ErrorBody)
    )
)]
pub(crate) async fn get_drain(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(drains::latest(&state.engine, &id).await?))
}

/// `pause`, `resume` or `cancel` the cell's latest drain.
#[utoipa::path(
    post,
    path = "/cells/{id}/drain/{action}",
    tag = "cells",
    summary = "Pause, resume or cancel a cell's drain",
    params(("id" = String, Path, description = "Cell id"), ("action" = String, Path, description = "pause, resume or cancel")),
    responses(
        (status = 200, description = "The drain, with its progress", body = Drain),
        (status = 400, description = "An unknown action", body = ErrorBody),
        (status = 404, description = "No such cell, or it was never drained", body = ErrorBody),
        (status = 409, description = "The drain has finished", body = ErrorBody)
    )
)]
pub(crate) async fn control_drain(
    State(state): State<AppState>,
    Path((id, action)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    let control = match action.as_str() {
        "pause" => drains::Control::Pause,
        "resume" => drains::Control::Resume,
        "cancel" => drains::Control::Cancel,
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "the action is pause, resume or cancel",
            ));
        }
    };
    Ok(Json(drains::control(&state.engine, &id, control).await?))
}

#[utoipa::path(
    delete,
    path = "/cells/{id}",
    tag = "cells",
    summary = "Delete a cell without live participants",
    params(("id" = String, Path, description = "Cell id"), ("If-Match" = Option<String>, Header, description = "Version the change is based on, e.g. \"3\"; a stale one is a 409")),
    responses(
        (status = 200, description = "Deleted"),
        (status = 400, description = "Malformed body or parameters", body = ErrorBody),
        (status = 404, description = "No such cell", body = ErrorBody),
        (status = 409, description = "Participants placed there not yet disposed (reason participants-not-disposed), or a stale version", body = ErrorBody)
    )
)]
pub(crate) async fn delete_cell(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<impl IntoResponse> {
    cells::delete(state.engine.db(), &id, if_match(&headers)?).await?;
    Ok(StatusCode::OK)
}

#[utoipa::path(
    get,
    path = "/dataspace-profiles",
    tag = "dataspace profiles",
    summary = "List dataspace profiles (paginated)",
    params(
        ("offset" = Option<i64>, Query, description = "Items to skip"),
        ("limit" = Option<i64>, Query, description = "Page size, 1 to 10000 (default 10000)")
    ),
    responses(
        (status = 200, description = "Profiles sorted by id", body = [DataspaceProfile]),
        (status = 400, description = "Malformed paging parameters", body = ErrorBody)
    )
)]
pub(crate) async fn list_dataspaces(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> ApiResult<impl IntoResponse> {
    let paged = dataspaces::list(state.engine.db(), page_of(query.as_deref())?).await?;
    Ok((
        paging_headers("/dataspace-profiles", &paged),
        Json(paged.items),
    ))
}

#[utoipa::path(
    post,
    path = "/dataspace-profiles",
    tag = "dataspace profiles",
    summary = "Create a dataspace profile",
    request_body = NewDataspaceProfile,
    responses(
        (status = 201, description = "Created", body = DataspaceProfile),
        (status = 400, description = "Malformed body or parameters", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody)
    )
)]
pub(crate) async fn create_dataspace(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<NewDataspaceProfile>,
) -> ApiResult<impl IntoResponse> {
    let profile = dataspaces::create(
        state.engine.db(),
        body.dataspace_spec,
        body.artifacts,
        body.properties,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(profile)))
}

#[utoipa::path(
    get,
    path = "/dataspace-profiles/{id}",
    tag = "dataspace profiles",
    summary = "Read a dataspace profile with its deployments",
    params(("id" = String, Path, description = "Dataspace profile id")),
    responses(
        (status = 200, description = "The profile", body = DataspaceProfile),
        (status = 404, description = "No such dataspace profile", body = ErrorBody)
    )
)]
pub(crate) async fn get_dataspace(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let mut conn = state.engine.db().acquire().await?;
    Ok(Json(dataspaces::get(&mut conn, &id).await?))
}

#[utoipa::path(
    delete,
    path = "/dataspace-profiles/{id}",
    tag = "dataspace profiles",
    summary = "Delete a dataspace profile without live participants",
    params(("id" = String, Path, description = "Dataspace profile id")),
    responses(
        (status = 200, description = "Deleted"),
        (status = 404, description = "No such dataspace profile", body = ErrorBody),
        (status = 409, description = "Participants of it not yet disposed (reason participants-not-disposed)", body = ErrorBody)
    )
)]
pub(crate) async fn delete_dataspace(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    dataspaces::delete(state.engine.db(), &id).await?;
    Ok(StatusCode::OK)
}

#[utoipa::path(
    post,
    path = "/dataspace-profiles/{id}/deployments",
    tag = "dataspace profiles",
    summary = "Deploy a dataspace profile to a cell",
    params(("id" = String, Path, description = "Dataspace profile id")),
    request_body = NewDataspaceDeployment,
    responses(
        (status = 202, description = "Accepted", body = DataspaceDeployment),
        (status = 400, description = "Malformed body or unknown cell", body = ErrorBody),
        (status = 404, description = "No such dataspace profile", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody)
    )
)]
pub(crate) async fn deploy_dataspace(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<NewDataspaceDeployment>,
) -> ApiResult<impl IntoResponse> {
    let deployment = dataspaces::deploy(state.engine.db(), &id, &body.cell_id).await?;
    Ok((StatusCode::ACCEPTED, Json(deployment)))
}

/// Computes the moves that bring every active cell with a capacity within a utilisation
/// band, as a dry run: the plan is stored and nothing moves until it is executed.
#[utoipa::path(
    post,
    path = "/rebalance-plans",
    tag = "cells",
    summary = "Plan a rebalance (a dry run)",
    request_body = NewRebalancePlan,
    responses(
        (status = 201, description = "The plan: cells before and after, the moves, cells left out or left outside the band", body = RebalancePlan),
        (status = 400, description = "Malformed body, a bad band or parallelism, or an unknown cell", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody)
    )
)]
pub(crate) async fn plan_rebalance(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<NewRebalancePlan>,
) -> ApiResult<impl IntoResponse> {
    let new = rebalance::NewPlan {
        band: body.band,
        cell_ids: body.cell_ids,
        parallelism: body.parallelism,
    };
    Ok((
        StatusCode::CREATED,
        Json(rebalance::plan(&state.engine, new).await?),
    ))
}

#[utoipa::path(
    get,
    path = "/rebalance-plans",
    tag = "cells",
    summary = "List rebalance plans (paginated), with their progress but not their moves",
    params(
        ("offset" = Option<i64>, Query, description = "Items to skip"),
        ("limit" = Option<i64>, Query, description = "Page size, 1 to 10000 (default 10000)")
    ),
    responses(
        (status = 200, description = "Plans sorted by id", body = [RebalancePlan]),
        (status = 400, description = "Malformed paging parameters", body = ErrorBody)
    )
)]
pub(crate) async fn list_rebalance_plans(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> ApiResult<impl IntoResponse> {
    let paged = rebalance::list(&state.engine, page_of(query.as_deref())?).await?;
    Ok((
        paging_headers("/rebalance-plans", &paged),
        Json(paged.items),
    ))
}

#[utoipa::path(
    get,
    path = "/rebalance-plans/{id}",
    tag = "cells",
    summary = "Read a rebalance plan, its moves and its progress",
    params(("id" = String, Path, description = "Plan id")),
    responses(
        (status = 200, description = "The plan", body = RebalancePlan),
        (status = 404, description = "No such plan", body = ErrorBody)
    )
)]
pub(crate) async fn get_rebalance_plan(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(rebalance::get(&state.engine, &id).await?))
}

/// `execute` a planned plan (refused when the fleet changed since it was computed), or
/// `cancel` it (a running plan starts no further moves; those under way finish).
#[utoipa::path(
    post,
    path = "/rebalance-plans/{id}/{action}",
    tag = "cells",
    summary = "Execute or cancel a rebalance plan",
    params(("id" = String, Path, description = "Plan id"), ("action" = String, Path, description = "execute or cancel")),
    responses(
        (status = 200, description = "The plan, with its progress", body = RebalancePlan),
        (status = 400, description = "An unknown action", body = ErrorBody),
        (status = 404, description = "No such plan", body = ErrorBody),
        (status = 409, description = "The plan is stale (reason stale-plan, what changed in details.reasons), or has finished", body = ErrorBody)
    )
)]
pub(crate) async fn control_rebalance_plan(
    State(state): State<AppState>,
    Path((id, action)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    let plan = match action.as_str() {
        "execute" => rebalance::execute(&state.engine, &id).await?,
        "cancel" => rebalance::cancel(&state.engine, &id).await?,
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "the action is execute or cancel",
            ));
        }
    };
    Ok(Json(plan))
}
