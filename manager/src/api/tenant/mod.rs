//! Tenant Manager routes: tenants and participant profiles here, cells and dataspace
//! profiles in [`infrastructure`].

pub(super) mod infrastructure;
pub(super) mod rollouts;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};

use super::error::{ApiError, ApiResult, ErrorBody};
use super::json::JsonBody;
use super::requests::{
    CellPatch, NewCell, NewDataspaceDeployment, NewDataspaceProfile, NewDecommission, NewDrain,
    NewMigration, NewParticipantProfileDeployment, NewRebalancePlan, NewTenant, ProfilePatch,
    QueryRequest, TenantPatch,
};
use super::{AppState, Caller};
use crate::capability_calls::{CapabilityCallRecord, Filter};
use crate::model::{
    Cell, DataspaceDeployment, DataspaceProfile, Drain, HistoryEntry, Migration,
    ParticipantProfile, RebalancePlan, Tenant, TenantDecommission,
};
use crate::query::{Literal, Predicate};
use crate::store::{Page, Paged, Total};
use crate::tenant::{
    cells, dataspaces, decommissions, drains, migrations, profiles, rebalance, reconciles, tenants,
    updates,
};

pub fn routes() -> Router<AppState> {
    use infrastructure::*;
    use rollouts::*;
    Router::new()
        .route("/tenants", get(list_tenants).post(create_tenant))
        .route("/tenants/query", post(query_tenants))
        .route(
            "/tenants/{id}",
            get(get_tenant).patch(patch_tenant).delete(delete_tenant),
        )
        .route(
            "/tenants/{id}/decommission",
            get(get_decommission).post(decommission_tenant),
        )
        .route(
            "/tenants/{tid}/participant-profiles",
            get(list_profiles).post(deploy_profile),
        )
        .route(
            "/tenants/{tid}/participant-profiles/{pid}",
            get(get_profile)
                .patch(patch_profile)
                .delete(dispose_profile),
        )
        .route(
            "/tenants/{tid}/participant-profiles/{pid}/retry",
            post(retry_profile),
        )
        .route(
            "/tenants/{tid}/participant-profiles/{pid}/verify",
            post(verify_profile),
        )
        .route(
            "/tenants/{tid}/participant-profiles/{pid}/reconcile",
            post(reconcile_profile),
        )
        .route(
            "/tenants/{tid}/participant-profiles/{pid}/history",
            get(profile_history),
        )
        .route(
            "/tenants/{tid}/participant-profiles/{pid}/capability-calls",
            get(profile_capability_calls),
        )
        .route("/participant-profiles/query", post(query_profiles))
        .route("/cells", get(list_cells).post(create_cell))
        .route(
            "/cells/{id}",
            get(get_cell).patch(patch_cell).delete(delete_cell),
        )
        .route("/cells/{id}/drain", get(get_drain).post(drain_cell))
        .route("/cells/{id}/drain/{action}", post(control_drain))
        .route(
            "/rebalance-plans",
            get(list_rebalance_plans).post(plan_rebalance),
        )
        .route("/rebalance-plans/{id}", get(get_rebalance_plan))
        .route(
            "/rebalance-plans/{id}/{action}",
            post(control_rebalance_plan),
        )
        .route("/rollouts", get(list_rollouts).post(create_rollout))
        .route("/rollouts/{id}", get(get_rollout))
        .route(
            "/rollouts/{id}/participants",
            get(list_rollout_participants),
        )
        .route("/rollouts/{id}/{action}", post(control_rollout))
        .route(
            "/tenants/{tid}/participant-profiles/{pid}/migrations",
            get(list_migrations).post(migrate_profile),
        )
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

/// The last value of the query string's parameter `name` (as [`page_of`] takes repeated
/// ones), decoded.
pub(super) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
        .last()
}

/// `offset` and `limit` from a query string. Parsed by hand rather than with axum's
/// `Query`, whose rejections are plain text: a repeated parameter keeps its last value
/// (as duplicate JSON keys do) and a bad number is a 400 in the standard error body.
pub(super) fn page_of(query: Option<&str>) -> ApiResult<Page> {
    let (mut offset, mut limit) = (None, None);
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let slot = match name.as_ref() {
            "offset" => &mut offset,
            "limit" => &mut limit,
            _ => continue,
        };
        *slot = Some(value.parse::<i64>().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("{name} must be an integer, got '{value}'"),
            )
        })?);
    }
    Ok(Page::new(offset, limit))
}

#[utoipa::path(
    get,
    path = "/tenants",
    tag = "tenants",
    summary = "List tenants (paginated; Link and X-Total-Count headers)",
    params(("offset" = Option<i64>, Query, description = "Items to skip"), ("limit" = Option<i64>, Query, description = "Page size, 1 to 10000 (default 10000)")),
    responses(
        (status = 200, description = "Tenants sorted by id", body = [Tenant]),
        (status = 400, description = "Malformed body or parameters", body = ErrorBody)
    )
)]
pub(super) async fn list_tenants(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> ApiResult<impl IntoResponse> {
    let page = page_of(query.as_deref())?;
    let paged = tenants::list(state.engine.db(), caller.tenant.as_deref(), page).await?;
    Ok((paging_headers("/tenants", &paged), Json(paged.items)))
}

#[utoipa::path(
    post,
    path = "/tenants",
    tag = "tenants",
    summary = "Create a tenant",
    request_body = NewTenant,
    responses(
        (status = 201, description = "Created", body = Tenant),
        (status = 400, description = "Malformed body or parameters", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody)
    )
)]
pub(super) async fn create_tenant(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<NewTenant>,
) -> ApiResult<impl IntoResponse> {
    let tenant = tenants::create(state.engine.db(), body.properties).await?;
    Ok((StatusCode::CREATED, Json(tenant)))
}

#[utoipa::path(
    get,
    path = "/tenants/{id}",
    tag = "tenants",
    summary = "Read a tenant (ETag carries its version)",
    params(("id" = String, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "The tenant", body = Tenant),
        (status = 404, description = "No such tenant", body = ErrorBody)
    )
)]
pub(super) async fn get_tenant(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let mut conn = state.engine.db().acquire().await?;
    let tenant = tenants::get(&mut conn, &id).await?;
    Ok((etag(tenant.version), Json(tenant)))
}

/// Sets `properties` and removes the `removed` keys. `If-Match` (or the body's
/// `version`) makes it conditional on the version the client read.
#[utoipa::path(
    patch,
    path = "/tenants/{id}",
    tag = "tenants",
    summary = "Set and remove tenant properties",
    params(("id" = String, Path, description = "Tenant id"), ("If-Match" = Option<String>, Header, description = "Version the change is based on, e.g. \"3\"; a stale one is a 409")),
    request_body = TenantPatch,
    responses(
        (status = 200, description = "The changed tenant", body = Tenant),
        (status = 400, description = "Malformed body or parameters", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
        (status = 409, description = "Stale version", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody)
    )
)]
pub(super) async fn patch_tenant(
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

/// Without `cascade`, upstream's delete: refused while a participant is not disposed.
/// With `cascade=true`, a decommission: every participant is disposed, then the tenant
/// deleted (as `POST /tenants/{id}/decommission`).
#[utoipa::path(
    delete,
    path = "/tenants/{id}",
    tag = "tenants",
    summary = "Delete a tenant whose participants are all disposed, or decommission it (cascade=true)",
    params(
        ("id" = String, Path, description = "Tenant id"),
        ("cascade" = Option<bool>, Query, description = "true: dispose every participant first (202 with the decommission)"),
        ("If-Match" = Option<String>, Header, description = "Version the change is based on, e.g. \"3\"; a stale one is a 409")
    ),
    responses(
        (status = 200, description = "Deleted"),
        (status = 202, description = "cascade=true: the decommission, running", body = TenantDecommission),
        (status = 400, description = "A malformed If-Match or cascade", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
        (status = 409, description = "Participants not yet disposed (reason participants-not-disposed), or a stale version", body = ErrorBody)
    )
)]
pub(super) async fn delete_tenant(
    State(state): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> ApiResult<axum::response::Response> {
    let mut cascade = false;
    for (name, value) in
        url::form_urlencoded::parse(query.as_deref().unwrap_or_default().as_bytes())
    {
        if name == "cascade" {
            cascade = value
                .parse()
                .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "cascade is true or false"))?;
        }
    }
    if cascade {
        let decommission =
            decommissions::start(&state.engine, &id, None, if_match(&headers)?).await?;
        return Ok((StatusCode::ACCEPTED, Json(decommission)).into_response());
    }
    tenants::delete(state.engine.db(), &id, if_match(&headers)?).await?;
    Ok(StatusCode::OK.into_response())
}

/// Disposes every participant of the tenant, `parallelism` at a time, then deletes it.
#[utoipa::path(
    post,
    path = "/tenants/{id}/decommission",
    tag = "tenants",
    summary = "Decommission a tenant: dispose every participant, then delete it",
    params(("id" = String, Path, description = "Tenant id"), ("If-Match" = Option<String>, Header, description = "Version the change is based on; a stale one is a 409")),
    request_body = NewDecommission,
    responses(
        (status = 202, description = "The decommission, running (the one under way, if one is)", body = TenantDecommission),
        (status = 400, description = "Malformed body or parallelism", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
        (status = 409, description = "A stale version", body = ErrorBody)
    )
)]
pub(super) async fn decommission_tenant(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<NewDecommission>,
) -> ApiResult<impl IntoResponse> {
    let decommission =
        decommissions::start(&state.engine, &id, body.parallelism, if_match(&headers)?).await?;
    Ok((StatusCode::ACCEPTED, Json(decommission)))
}

#[utoipa::path(
    get,
    path = "/tenants/{id}/decommission",
    tag = "tenants",
    summary = "Read the progress of a tenant's latest decommission (also once the tenant is gone)",
    params(("id" = String, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "The decommission: state, remaining, disposing, detail", body = TenantDecommission),
        (status = 404, description = "Never decommissioned", body = ErrorBody)
    )
)]
pub(super) async fn get_decommission(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(decommissions::latest(&state.engine, &id).await?))
}

#[utoipa::path(
    post,
    path = "/tenants/query",
    tag = "tenants",
    summary = "Query tenants with a predicate (Link and X-Total-Count headers)",
    request_body = QueryRequest,
    responses(
        (status = 200, description = "Matching tenants sorted by id", body = [Tenant]),
        (status = 400, description = "Malformed body or predicate; a predicate past a limit (reason predicate-bytes, -depth, -terms, -in-values, -values, -path-segments, -text-bytes, -wildcards) or a query past its time budget (reason query-timeout)", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody)
    )
)]
pub(super) async fn query_tenants(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody<QueryRequest>,
) -> ApiResult<impl IntoResponse> {
    let predicate = caller.scope(Predicate::parse(&body.predicate)?, "id");
    let db = state.engine.db();
    let page = body.page();
    let items = tenants::query(db, &predicate, page).await?;
    let paged = Paged::counting_if_needed(items, page, tenants::count(db, &predicate)).await?;
    Ok((paging_headers("/tenants/query", &paged), Json(paged.items)))
}

#[utoipa::path(
    get,
    path = "/tenants/{tid}/participant-profiles",
    tag = "participant profiles",
    summary = "List a tenant's participant profiles (paginated)",
    params(
        ("tid" = String, Path, description = "Tenant id"),
        ("offset" = Option<i64>, Query, description = "Items to skip"),
        ("limit" = Option<i64>, Query, description = "Page size, 1 to 10000 (default 10000)")
    ),
    responses(
        (status = 200, description = "Profiles sorted by id", body = [ParticipantProfile]),
        (status = 400, description = "Malformed paging parameters", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody)
    )
)]
pub(super) async fn list_profiles(
    State(state): State<AppState>,
    Path(tid): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult<impl IntoResponse> {
    let page = page_of(query.as_deref())?;
    let paged = profiles::list(state.engine.db(), &tid, page).await?;
    let path = format!("/tenants/{tid}/participant-profiles");
    Ok((paging_headers(&path, &paged), Json(paged.items)))
}

#[utoipa::path(
    post,
    path = "/tenants/{tid}/participant-profiles",
    tag = "participant profiles",
    summary = "Create a participant profile and start its deploy orchestration",
    params(("tid" = String, Path, description = "Tenant id")),
    request_body = NewParticipantProfileDeployment,
    responses(
        (status = 202, description = "Accepted; VPAs pending", body = ParticipantProfile),
        (status = 400, description = "Malformed body or parameters", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
        (status = 409, description = "No cell can take the participant, no deploy template, or the DID belongs to a live participant", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody)
    )
)]
pub(super) async fn deploy_profile(
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

#[utoipa::path(
    get,
    path = "/tenants/{tid}/participant-profiles/{pid}",
    tag = "participant profiles",
    summary = "Read a participant profile",
    params(("tid" = String, Path, description = "Tenant id"), ("pid" = String, Path, description = "Participant profile id")),
    responses(
        (status = 200, description = "The profile", body = ParticipantProfile),
        (status = 404, description = "No such profile in this tenant", body = ErrorBody)
    )
)]
pub(super) async fn get_profile(
    State(state): State<AppState>,
    Path((tid, pid)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(profiles::get(state.engine.db(), &tid, &pid).await?))
}

#[utoipa::path(
    delete,
    path = "/tenants/{tid}/participant-profiles/{pid}",
    tag = "participant profiles",
    summary = "Decommission a participant (starts its dispose orchestration)",
    params(("tid" = String, Path, description = "Tenant id"), ("pid" = String, Path, description = "Participant profile id")),
    responses(
        (status = 202, description = "Accepted; VPAs disposing", body = ParticipantProfile),
        (status = 404, description = "No such profile in this tenant", body = ErrorBody),
        (status = 409, description = "Still being deployed", body = ErrorBody)
    )
)]
pub(super) async fn dispose_profile(
    State(state): State<AppState>,
    Path((tid, pid)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    let profile = profiles::dispose(&state.engine, &tid, &pid).await?;
    Ok((StatusCode::ACCEPTED, Json(profile)))
}

/// Changes a live participant's VPA properties (scaling its runtime, say): the change is
/// pending on the profile until an update orchestration has applied it.
#[utoipa::path(
    patch,
    path = "/tenants/{tid}/participant-profiles/{pid}",
    tag = "participant profiles",
    summary = "Change a participant's VPA properties (applied by an update orchestration)",
    params(
        ("tid" = String, Path, description = "Tenant id"),
        ("pid" = String, Path, description = "Participant profile id"),
        ("If-Match" = Option<String>, Header, description = "The profile version the change is based on; a stale one is a 409")
    ),
    request_body = ProfilePatch,
    responses(
        (status = 202, description = "Accepted; pendingVpaProperties shows the change until it is applied", body = ParticipantProfile),
        (status = 400, description = "Malformed body, an unknown VPA type, or a change that is not an object", body = ErrorBody),
        (status = 404, description = "No such profile in this tenant", body = ErrorBody),
        (status = 409, description = "A stale version, not active, a change pending, or another orchestration of it runs", body = ErrorBody)
    )
)]
pub(super) async fn patch_profile(
    State(state): State<AppState>,
    Path((tid, pid)): Path<(String, String)>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ProfilePatch>,
) -> ApiResult<impl IntoResponse> {
    let expected = if_match(&headers)?.or(body.version);
    let profile =
        updates::change_vpa_properties(&state.engine, &tid, &pid, body.vpa_properties, expected)
            .await?;
    Ok((StatusCode::ACCEPTED, etag(profile.version), Json(profile)))
}

/// Deploys an errored participant again, resuming from its failed steps.
#[utoipa::path(
    post,
    path = "/tenants/{tid}/participant-profiles/{pid}/retry",
    tag = "participant profiles",
    summary = "Retry an errored participant's deploy from its failed steps",
    params(("tid" = String, Path, description = "Tenant id"), ("pid" = String, Path, description = "Participant profile id")),
    responses(
        (status = 202, description = "Accepted; VPAs pending again", body = ParticipantProfile),
        (status = 404, description = "No such profile in this tenant", body = ErrorBody),
        (status = 409, description = "Not in error, another orchestration of it runs, or its template no longer deploys", body = ErrorBody)
    )
)]
pub(super) async fn retry_profile(
    State(state): State<AppState>,
    Path((tid, pid)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    let profile = profiles::retry(&state.engine, &tid, &pid).await?;
    Ok((StatusCode::ACCEPTED, Json(profile)))
}

/// Checks that an active participant's effects exist and match, changing nothing.
#[utoipa::path(
    post,
    path = "/tenants/{tid}/participant-profiles/{pid}/verify",
    tag = "participant profiles",
    summary = "Verify an active participant's effects in its backends; drift goes on the profile",
    params(("tid" = String, Path, description = "Tenant id"), ("pid" = String, Path, description = "Participant profile id")),
    responses(
        (status = 202, description = "Accepted; `drift.state` is `verifying` until the verify ends", body = ParticipantProfile),
        (status = 404, description = "No such profile in this tenant", body = ErrorBody),
        (status = 409, description = "Not active, migrating, its tenant being decommissioned, another orchestration of it runs (reason participant-busy), or its template is gone", body = ErrorBody)
    )
)]
pub(super) async fn verify_profile(
    State(state): State<AppState>,
    Path((tid, pid)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    let profile = reconciles::start(&state.engine, &tid, &pid, false).await?;
    Ok((StatusCode::ACCEPTED, Json(profile)))
}

/// Verifies an active participant, then re-applies what drifted.
#[utoipa::path(
    post,
    path = "/tenants/{tid}/participant-profiles/{pid}/reconcile",
    tag = "participant profiles",
    summary = "Verify an active participant, then repair what drifted",
    params(("tid" = String, Path, description = "Tenant id"), ("pid" = String, Path, description = "Participant profile id")),
    responses(
        (status = 202, description = "Accepted; `drift.state` goes `verifying`, then `in-sync`, or `repairing` then `repaired`", body = ParticipantProfile),
        (status = 404, description = "No such profile in this tenant", body = ErrorBody),
        (status = 409, description = "Not active, migrating, its tenant being decommissioned, another orchestration of it runs (reason participant-busy), or its template is gone", body = ErrorBody)
    )
)]
pub(super) async fn reconcile_profile(
    State(state): State<AppState>,
    Path((tid, pid)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    let profile = reconciles::start(&state.engine, &tid, &pid, true).await?;
    Ok((StatusCode::ACCEPTED, Json(profile)))
}

#[utoipa::path(
    post,
    path = "/participant-profiles/query",
    tag = "participant profiles",
    summary = "Query participant profiles with a predicate (Link and X-Total-Count headers)",
    request_body = QueryRequest,
    responses(
        (status = 200, description = "Matching profiles sorted by id", body = [ParticipantProfile]),
        (status = 400, description = "Malformed body or predicate; a predicate past a limit (reason predicate-bytes, -depth, -terms, -in-values, -values, -path-segments, -text-bytes, -wildcards) or a query past its time budget (reason query-timeout)", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody)
    )
)]
pub(super) async fn query_profiles(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody<QueryRequest>,
) -> ApiResult<impl IntoResponse> {
    let predicate = caller.scope(Predicate::parse(&body.predicate)?, "tenantId");
    let db = state.engine.db();
    let page = body.page();
    let items = profiles::query(db, &predicate, page).await?;
    let paged = Paged::counting_if_needed(items, page, profiles::count(db, &predicate)).await?;
    Ok((
        paging_headers("/participant-profiles/query", &paged),
        Json(paged.items),
    ))
}

/// `X-Total-Count` and a `Link` header with self/first/prev/next/last pages. When more
/// match than a count reads ([`Total::MoreThan`]), both the count and the `last` page
/// are left out rather than guessed, and `next` follows every full page.
pub(super) fn paging_headers<T>(path: &str, paged: &Paged<T>) -> HeaderMap {
    let Page { offset, limit } = paged.page;
    // A path may carry a filter of its own (`?state=failed`).
    let join = if path.contains('?') { '&' } else { '?' };
    let url = |offset: i64| {
        format!(
            "<{}{path}{join}offset={offset}&limit={limit}>",
            super::PREFIX
        )
    };
    let mut links = vec![
        format!("{}; rel=\"self\"", url(offset)),
        format!("{}; rel=\"first\"", url(0)),
    ];
    if offset > 0 {
        links.push(format!(
            "{}; rel=\"prev\"",
            url(offset.saturating_sub(limit).max(0))
        ));
    }
    let more = match paged.total {
        Total::Exact(total) => offset.saturating_add(limit) < total,
        Total::MoreThan(_) => i64::try_from(paged.items.len()).is_ok_and(|n| n >= limit),
    };
    if more {
        links.push(format!("{}; rel=\"next\"", url(offset + limit)));
    }
    let mut headers = HeaderMap::new();
    if let Total::Exact(total) = paged.total {
        let last = if total == 0 {
            0
        } else {
            ((total - 1) / limit) * limit
        };
        links.push(format!("{}; rel=\"last\"", url(last)));
        headers.insert("x-total-count", HeaderValue::from(total));
    }
    if let Ok(v) = HeaderValue::from_str(&links.join(", ")) {
        headers.insert(header::LINK, v);
    }
    headers
}

/// The version an `If-Match` header asks for: `3`, `"3"` or `W/"3"`; `*` asks for none.
pub(super) fn if_match(headers: &HeaderMap) -> ApiResult<Option<i64>> {
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
pub(super) fn etag(version: i64) -> [(header::HeaderName, String); 1] {
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

/// Moves the participant to another cell, make-before-break: it is provisioned in the
/// target, routing and its VPAs switch, then its source is disposed of. It stays `active`
/// throughout; a failure before the switch leaves it where it was.
#[utoipa::path(
    post,
    path = "/tenants/{tid}/participant-profiles/{pid}/migrations",
    tag = "participant profiles",
    summary = "Migrate a participant to another cell",
    params(("tid" = String, Path, description = "Tenant id"), ("pid" = String, Path, description = "Participant profile id")),
    request_body = NewMigration,
    responses(
        (status = 202, description = "The migration, started", body = Migration),
        (status = 400, description = "Malformed body, or no such target cell", body = ErrorBody),
        (status = 404, description = "No such tenant or profile", body = ErrorBody),
        (status = 409, description = "Not active, migrating already, already in the target, or the target cannot take it (reason no-cell-fits, with the reason in details)", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody)
    )
)]
pub(super) async fn migrate_profile(
    State(state): State<AppState>,
    Path((tid, pid)): Path<(String, String)>,
    JsonBody(body): JsonBody<NewMigration>,
) -> ApiResult<impl IntoResponse> {
    let migration = migrations::start(&state.engine, &tid, &pid, &body.target_cell_id).await?;
    Ok((StatusCode::ACCEPTED, Json(migration)))
}

/// What ran for a participant, newest first: deploy, upgrades, updates, migrations,
/// keypair events, dispose.
#[utoipa::path(
    get,
    path = "/tenants/{tid}/participant-profiles/{pid}/history",
    tag = "participant profiles",
    summary = "A participant's orchestration history, newest first (paginated)",
    params(
        ("tid" = String, Path, description = "Tenant id"),
        ("pid" = String, Path, description = "Participant profile id"),
        ("offset" = Option<i64>, Query, description = "Items to skip"),
        ("limit" = Option<i64>, Query, description = "Page size, 1 to 10000 (default 10000)")
    ),
    responses(
        (status = 200, description = "Its orchestrations", body = [HistoryEntry]),
        (status = 400, description = "Malformed paging parameters", body = ErrorBody),
        (status = 404, description = "No such tenant or profile", body = ErrorBody)
    )
)]
pub(super) async fn profile_history(
    State(state): State<AppState>,
    Path((tid, pid)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> ApiResult<impl IntoResponse> {
    let page = page_of(query.as_deref())?;
    let paged = profiles::history(state.engine.db(), &tid, &pid, page).await?;
    let path = format!("/tenants/{tid}/participant-profiles/{pid}/history");
    Ok((paging_headers(&path, &paged), Json(paged.items)))
}

/// What the participant's plugins did through their capabilities, newest first: every
/// refusal, write, outbound request and token handed over that the agent hosts audited,
/// kept for 30 days. `decision=denied` lists only the refusals.
#[utoipa::path(
    get,
    path = "/tenants/{tid}/participant-profiles/{pid}/capability-calls",
    tag = "participant profiles",
    summary = "A participant's capability calls, newest first (paginated)",
    params(
        ("tid" = String, Path, description = "Tenant id"),
        ("pid" = String, Path, description = "Participant profile id"),
        ("decision" = Option<String>, Query, description = "allowed or denied; every call when left out"),
        ("offset" = Option<i64>, Query, description = "Items to skip"),
        ("limit" = Option<i64>, Query, description = "Page size, 1 to 10000 (default 10000)")
    ),
    responses(
        (status = 200, description = "Its capability calls", body = [CapabilityCallRecord]),
        (status = 400, description = "Malformed paging parameters or decision", body = ErrorBody),
        (status = 404, description = "No such tenant or profile", body = ErrorBody)
    )
)]
pub(super) async fn profile_capability_calls(
    State(state): State<AppState>,
    Path((tid, pid)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> ApiResult<impl IntoResponse> {
    let filter = match query_param(query.as_deref(), "decision").as_deref() {
        None => Filter::All,
        Some("allowed") => Filter::Decision("allowed"),
        Some("denied") => Filter::Decision("denied"),
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("decision is allowed or denied, got '{other}'"),
            ));
        }
    };
    let page = page_of(query.as_deref())?;
    let paged = profiles::capability_calls(state.engine.db(), &tid, &pid, filter, page).await?;
    let path = format!("/tenants/{tid}/participant-profiles/{pid}/capability-calls");
    let path = match filter {
        Filter::Decision(decision) => format!("{path}?decision={decision}"),
        Filter::All => path,
    };
    Ok((paging_headers(&path, &paged), Json(paged.items)))
}

#[utoipa::path(
    get,
    path = "/tenants/{tid}/participant-profiles/{pid}/migrations",
    tag = "participant profiles",
    summary = "A participant's migrations, newest first",
    params(("tid" = String, Path, description = "Tenant id"), ("pid" = String, Path, description = "Participant profile id")),
    responses(
        (status = 200, description = "Its migrations", body = [Migration]),
        (status = 404, description = "No such tenant or profile", body = ErrorBody)
    )
)]
pub(super) async fn list_migrations(
    State(state): State<AppState>,
    Path((tid, pid)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(migrations::list(&state.engine, &tid, &pid).await?))
}
