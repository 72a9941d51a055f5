//! Tenant Manager routes: tenants, cells, dataspace profiles, participant profiles.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;

use super::error::{ApiError, ApiResult};
use super::json::JsonBody;
use super::requests::{
    NewCell, NewDataspaceDeployment, NewDataspaceProfile, NewParticipantProfileDeployment,
    NewTenant, TenantPatch,
};
use super::{AppState, Caller};
use crate::query::{Literal, Predicate};
use crate::store::{Page, Paged};
use crate::tenant::{cells, dataspaces, profiles, tenants};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/tenants", get(list_tenants).post(create_tenant))
        .route("/tenants/query", post(query_tenants))
        .route(
            "/tenants/{id}",
            get(get_tenant).patch(patch_tenant).delete(delete_tenant),
        )
        .route(
            "/tenants/{tid}/participant-profiles",
            get(list_profiles).post(deploy_profile),
        )
        .route(
            "/tenants/{tid}/participant-profiles/{pid}",
            get(get_profile).delete(dispose_profile),
        )
        .route("/participant-profiles/query", post(query_profiles))
        .route("/cells", get(list_cells).post(create_cell))
        .route("/cells/{id}", get(get_cell).delete(delete_cell))
        .route(
            "/dataspace-profiles",
            get(list_dataspaces).post(create_dataspace),
        )
        .route(
            "/dataspace-profiles/{id}",
            get(get_dataspace).delete(delete_dataspace),
        )
        .route(
            "/dataspace-profiles/{id}/deployments",
            post(deploy_dataspace),
        )
}

#[derive(Debug, Deserialize)]
struct PageParams {
    offset: Option<String>,
    limit: Option<String>,
}

impl PageParams {
    fn page(&self) -> ApiResult<Page> {
        let number = |name: &str, v: &Option<String>| -> ApiResult<Option<i64>> {
            v.as_deref()
                .map(|s| {
                    s.parse::<i64>().map_err(|_| {
                        ApiError::new(
                            StatusCode::BAD_REQUEST,
                            format!("{name} must be an integer, got '{s}'"),
                        )
                    })
                })
                .transpose()
        };
        Ok(Page::new(
            number("offset", &self.offset)?,
            number("limit", &self.limit)?,
        ))
    }
}

async fn list_tenants(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<PageParams>,
) -> ApiResult<impl IntoResponse> {
    let page = params.page()?;
    let paged = tenants::list(state.engine.db(), caller.tenant.as_deref(), page).await?;
    Ok((paging_headers("/tenants", &paged), Json(paged.items)))
}

async fn create_tenant(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<NewTenant>,
) -> ApiResult<impl IntoResponse> {
    let tenant = tenants::create(state.engine.db(), body.properties).await?;
    Ok((StatusCode::CREATED, Json(tenant)))
}

async fn get_tenant(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let mut conn = state.engine.db().acquire().await?;
    let tenant = tenants::get(&mut conn, &id).await?;
    Ok((etag(tenant.version), Json(tenant)))
}

/// Sets `properties` and removes the `removed` keys. `If-Match` (or the body's
/// `version`) makes it conditional on the version the client read.
async fn patch_tenant(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<TenantPatch>,
) -> ApiResult<impl IntoResponse> {
    let expected = if_match(&headers)?.or(body.version);
    let patch = tenants::Patch {
        properties: body.properties,
        removed: body.removed,
    };
    let tenant = tenants::patch(state.engine.db(), &id, patch, expected).await?;
    Ok((etag(tenant.version), Json(tenant)))
}

async fn delete_tenant(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<impl IntoResponse> {
    tenants::delete(state.engine.db(), &id, if_match(&headers)?).await?;
    Ok(StatusCode::OK)
}

async fn query_tenants(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody<super::requests::Query>,
) -> ApiResult<impl IntoResponse> {
    let predicate = caller.scope(Predicate::parse(&body.predicate)?, "id");
    let page = Page::new(Some(body.offset), Some(body.limit));
    Ok(Json(
        tenants::query(state.engine.db(), &predicate, page).await?,
    ))
}

async fn list_profiles(
    State(state): State<AppState>,
    Path(tid): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(profiles::list(state.engine.db(), &tid).await?))
}

async fn deploy_profile(
    State(state): State<AppState>,
    Path(tid): Path<String>,
    JsonBody(body): JsonBody<NewParticipantProfileDeployment>,
) -> ApiResult<impl IntoResponse> {
    let new = profiles::NewDeployment {
        identifier: body.identifier,
        cell_id: body.cell_id,
        dataspace_profile_ids: body.dataspace_profile_ids,
        participant_roles: body.participant_roles,
        vpa_properties: body.vpa_properties,
        properties: body.properties,
    };
    let profile = profiles::deploy(&state.engine, &tid, new).await?;
    Ok((StatusCode::ACCEPTED, Json(profile)))
}

async fn get_profile(
    State(state): State<AppState>,
    Path((tid, pid)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(profiles::get(state.engine.db(), &tid, &pid).await?))
}

async fn dispose_profile(
    State(state): State<AppState>,
    Path((tid, pid)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    let profile = profiles::dispose(&state.engine, &tid, &pid).await?;
    Ok((StatusCode::ACCEPTED, Json(profile)))
}

async fn query_profiles(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody<super::requests::Query>,
) -> ApiResult<impl IntoResponse> {
    let predicate = caller.scope(Predicate::parse(&body.predicate)?, "tenantId");
    let page = Page::new(Some(body.offset), Some(body.limit));
    Ok(Json(
        profiles::query(state.engine.db(), &predicate, page).await?,
    ))
}

async fn list_cells(State(state): State<AppState>) -> ApiResult<impl IntoResponse> {
    Ok(Json(cells::list(state.engine.db()).await?))
}

async fn create_cell(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<NewCell>,
) -> ApiResult<impl IntoResponse> {
    let new = cells::NewCell {
        external_id: body.external_id,
        state: body.state,
        properties: body.properties,
    };
    Ok((
        StatusCode::CREATED,
        Json(cells::create(state.engine.db(), new).await?),
    ))
}

async fn get_cell(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let mut conn = state.engine.db().acquire().await?;
    let cell = cells::get(&mut conn, &id).await?;
    Ok((etag(cell.version), Json(cell)))
}

async fn delete_cell(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<impl IntoResponse> {
    cells::delete(state.engine.db(), &id, if_match(&headers)?).await?;
    Ok(StatusCode::OK)
}

async fn list_dataspaces(State(state): State<AppState>) -> ApiResult<impl IntoResponse> {
    Ok(Json(dataspaces::list(state.engine.db()).await?))
}

async fn create_dataspace(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<NewDataspaceProfile>,
) -> ApiResult<impl IntoResponse> {
    let profile =
        dataspaces::create(state.engine.db(), body.dataspace_spec, body.properties).await?;
    Ok((StatusCode::CREATED, Json(profile)))
}

async fn get_dataspace(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let mut conn = state.engine.db().acquire().await?;
    Ok(Json(dataspaces::get(&mut conn, &id).await?))
}

async fn delete_dataspace(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    dataspaces::delete(state.engine.db(), &id).await?;
    Ok(StatusCode::OK)
}

async fn deploy_dataspace(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<NewDataspaceDeployment>,
) -> ApiResult<impl IntoResponse> {
    let deployment = dataspaces::deploy(state.engine.db(), &id, &body.cell_id).await?;
    Ok((StatusCode::ACCEPTED, Json(deployment)))
}

/// `X-Total-Count` and a `Link` header with self/first/prev/next/last pages.
fn paging_headers<T>(path: &str, paged: &Paged<T>) -> HeaderMap {
    let Page { offset, limit } = paged.page;
    let total = paged.total;
    let url = |offset: i64| format!("<{}{path}?offset={offset}&limit={limit}>", super::PREFIX);
    let last = if total == 0 {
        0
    } else {
        ((total - 1) / limit) * limit
    };
    let mut links = vec![
        format!("{}; rel=\"self\"", url(offset)),
        format!("{}; rel=\"first\"", url(0)),
    ];
    if offset > 0 {
        links.push(format!("{}; rel=\"prev\"", url((offset - limit).max(0))));
    }
    if offset + limit < total {
        links.push(format!("{}; rel=\"next\"", url(offset + limit)));
    }
    links.push(format!("{}; rel=\"last\"", url(last)));
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&links.join(", ")) {
        headers.insert(header::LINK, v);
    }
    headers.insert("x-total-count", HeaderValue::from(total));
    headers
}

/// The version an `If-Match` header asks for: `3`, `"3"` or `W/"3"`; `*` asks for none.
fn if_match(headers: &HeaderMap) -> ApiResult<Option<i64>> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    if text == "*" {
        return Ok(None);
    }
    let bare = text.trim_start_matches("W/").trim_matches('"');
    bare.parse().map(Some).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("If-Match must name a version, like \"3\"; got '{text}'"),
        )
    })
}

/// The `ETag` of a resource at `version`, for a later `If-Match`.
fn etag(version: i64) -> [(header::HeaderName, String); 1] {
    [(header::ETAG, format!("\"{version}\""))]
}

impl Caller {
    /// Narrows a query to the caller's tenant, when its token is confined to one.
    fn scope(&self, predicate: Predicate, tenant_field: &str) -> Predicate {
        match &self.tenant {
            Some(tenant) => predicate.and_equals(tenant_field, Literal::Text(tenant.clone())),
            None => predicate,
        }
    }
}
