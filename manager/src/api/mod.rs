//! The REST API under `/api/v1alpha1`, wire-compatible with upstream CFM.

pub mod error;
pub mod json;
mod provision;
pub mod requests;
mod tenant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::trace::TraceLayer;

use crate::auth::{self, Auth, AuthError};
use crate::provision::Engine;
use error::ApiError;

pub const PREFIX: &str = "/api/v1alpha1";

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    pub auth: Auth,
}

/// The whole HTTP surface: authenticated API routes plus the open health check.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .merge(tenant::routes())
        .merge(provision::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .route("/health", get(health))
        .route(&format!("{PREFIX}/health"), get(health))
        .nest(PREFIX, api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(json::MAX_BODY))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn health() -> impl IntoResponse {
    axum::Json(serde_json::json!({"message": "OK"}))
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
    )
}

/// Checks the bearer token and the scope the route needs: provision routes need
/// `provision-manager-api:*`, the rest `tenant-manager-api:*`; reads (GET and the
/// `/query` routes) need `:read`, everything else `:write`.
async fn authorize(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let claims = match token
        .ok_or(AuthError::Missing)
        .and_then(|t| state.auth.verify(t))
    {
        Ok(claims) => claims,
        Err(e) => return ApiError::new(StatusCode::UNAUTHORIZED, e.to_string()).into_response(),
    };
    let path = request.uri().path();
    let provision = [
        "/activity-definitions",
        "/orchestration-definitions",
        "/orchestrations",
    ]
    .iter()
    .any(|p| path.starts_with(&format!("{PREFIX}{p}")) || path.starts_with(p));
    let read = request.method() == Method::GET
        || request.method() == Method::HEAD
        || path.ends_with("/query");
    let scope = match (provision, read) {
        (true, true) => auth::PROVISION_READ,
        (true, false) => auth::PROVISION_WRITE,
        (false, true) => auth::TENANT_READ,
        (false, false) => auth::TENANT_WRITE,
    };
    if !claims.has_scope(scope) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            format!("Access not granted: required scope '{scope}' not present"),
        )
        .into_response();
    }
    next.run(request).await
}
