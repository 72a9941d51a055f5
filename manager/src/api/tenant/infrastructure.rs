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
