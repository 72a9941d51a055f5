//! The REST API under `/api/v1alpha1`, wire-compatible with upstream CFM.

pub mod error;
mod events;
pub use events::close_streams;
pub mod json;
mod observe;
pub use observe::{Observed, Probe, Reading, probe_routes};
pub mod openapi;
mod provision;
pub mod requests;
mod tenant;
mod ui;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::auth::{self, Auth, AuthError};
use crate::provision::Engine;
use error::ApiError;

/// Where every API route lives, the OpenAPI document and a health check included.
pub const PREFIX: &str = "/api/v1alpha1";

/// What every handler can reach: one shared [`Shared`], since axum clones the state for
/// the middleware and the handler of every request, and the token checker's keys and
/// validation rules are allocations of their own.
#[derive(Clone)]
pub struct AppState(std::sync::Arc<Shared>);

/// The contents of an [`AppState`].
pub struct Shared {
    /// The orchestration engine, and through it the database.
    pub engine: Engine,
    /// Checks each request's bearer token.
    pub auth: Auth,
    /// What `/ready` checks, the database first, and its last answers.
    pub observed: std::sync::Arc<Observed>,
}

impl AppState {
    /// The state every route of [`router`] shares.
    pub fn new(shared: Shared) -> Self {
        Self(std::sync::Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The whole HTTP surface: authenticated API routes plus the open probes, metrics and
/// dashboard assets.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .merge(tenant::routes())
        .merge(provision::routes())
        .merge(events::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .route("/health", get(observe::health))
        .route(&format!("{PREFIX}/health"), get(observe::health))
        .route("/ready", get(observe::ready))
        .route("/metrics", get(observe::metrics))
        .route(&format!("{PREFIX}/openapi.json"), get(openapi_json))
        .merge(ui::routes())
        .nest(PREFIX, api)
        // Routed requests only, by their route's template: a scan of random paths
        // must not make a series per path.
        .route_layer(middleware::from_fn(observe::record_request))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // A bug in a handler answers 500 (rewritten to the error body below) instead
        // of dropping the connection.
        .layer(CatchPanicLayer::new())
        .layer(middleware::map_response(error_bodies_are_json))
        .layer(DefaultBodyLimit::max(json::MAX_BODY))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .with_state(state)
}

/// Each API request's span: the root of the trace of what the request starts, or a child
/// of the caller's span when it sent a `traceparent`. Probes, metrics, the dashboard's
/// assets and the health check get none: a scrape every few seconds is not a trace.
fn request_span(request: &Request) -> tracing::Span {
    let path = request.uri().path();
    let api = path
        .strip_prefix(PREFIX)
        .is_some_and(|rest| !matches!(rest, "/health" | "/openapi.json"));
    if !api {
        return tracing::Span::none();
    }
    let span = tracing::info_span!("http request", method = %request.method(), path = %path);
    cfm_telemetry::continue_from_headers(&span, request.headers());
    span
}

/// Rewrites the plain-text rejections of axum's extractors (a malformed path
/// parameter, say) into the standard error body, so every error a client sees has one shape.
async fn error_bodies_are_json(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let text = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    ApiError::new(status, message).into_response()
}

async fn openapi_json() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi::document(),
    )
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

/// Who is calling, as far as handlers need to know: set by [`authorize`].
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The token's `sub`: who acts, for records such as who cancelled an orchestration.
    pub subject: String,
    /// A token's `cfm_tenant`: the one tenant whose resources it may see and change.
    pub tenant: Option<String>,
}

/// The routes that take a POST but only read: their scope is `:read`.
const QUERY_ROUTES: [&str; 3] = [
    "/tenants/query",
    "/participant-profiles/query",
    "/orchestrations/query",
];
/// Route prefixes of the provision manager; the rest belong to the tenant manager.
const PROVISION_ROUTES: [&str; 3] = [
    "/activity-definitions",
    "/orchestration-definitions",
    "/orchestrations",
];

/// Checks the bearer token and the scope the route needs: provision routes need
/// `provision-manager-api:*`, the rest `tenant-manager-api:*`; reads (GET, and POST to
/// the query routes) need `:read`, everything else `:write`. The route is the one the
/// router matched (its template, `/tenants/{id}`), never the URL's text: a URL that only
/// looks like a query route (`DELETE /activity-definitions/query`) is a write. A token
/// confined to a tenant reaches that tenant's routes (another tenant's are "not found",
/// as if they did not exist), reads cells and dataspace profiles, and nothing else.
async fn authorize(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let claims = match token {
        None => Err(AuthError::Missing),
        Some(token) => state.auth.verify(token).await,
    };
    let claims = match claims {
        Ok(claims) => claims,
        Err(e) => return ApiError::new(StatusCode::UNAUTHORIZED, e.to_string()).into_response(),
    };
    let full_path = request.uri().path();
    if json::path_has_nul(full_path) {
        return ApiError::new(StatusCode::BAD_REQUEST, "the path contains U+0000").into_response();
    }
    // A route layer runs only for matched routes, so the template is always there; if it
    // were not, nothing could say which scope applies.
    let Some(route) = request.extensions().get::<MatchedPath>() else {
        return ApiError::new(StatusCode::FORBIDDEN, "Access not granted: unknown route")
            .into_response();
    };
    // Nested routes may see the template with or without the prefix; accept either.
    let route = route.as_str();
    let route = route.strip_prefix(PREFIX).unwrap_or(route).to_string();
    let path = full_path.strip_prefix(PREFIX).unwrap_or(full_path);
    let scope = required_scope(request.method(), &route);
    if !claims.has_scope(scope) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            format!("Access not granted: required scope '{scope}' not present"),
        )
        .into_response();
    }
    if let Some(tenant) = &claims.cfm_tenant
        && let Err(refused) = confine(tenant, &route, path, request.method())
    {
        return refused.into_response();
    }
    request.extensions_mut().insert(Caller {
        subject: claims.sub,
        tenant: claims.cfm_tenant,
    });
    next.run(request).await
}

/// The scope a request to `route` (a matched template without the prefix) needs.
fn required_scope(method: &Method, route: &str) -> &'static str {
    let provision = is_provision(route);
    let read = *method == Method::GET
        || *method == Method::HEAD
        || (*method == Method::POST && QUERY_ROUTES.contains(&route));
    match (provision, read) {
        (true, true) => auth::PROVISION_READ,
        (true, false) => auth::PROVISION_WRITE,
        (false, true) => auth::TENANT_READ,
        (false, false) => auth::TENANT_WRITE,
    }
}

fn is_provision(route: &str) -> bool {
    PROVISION_ROUTES.iter().any(|prefix| {
        route
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// What a token confined to `tenant` may not do. `route` is the matched template and
/// `path` the request's path, both without the prefix.
fn confine(tenant: &str, route: &str, path: &str, method: &Method) -> Result<(), ApiError> {
    let forbidden = |what: &str| {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("Access not granted: a token confined to tenant '{tenant}' cannot {what}"),
        ))
    };
    let read = *method == Method::GET || *method == Method::HEAD;
    if is_provision(route) {
        return forbidden("use the provision manager's routes");
    }
    if route == "/tenants/query" || route == "/participant-profiles/query" || route == "/events" {
        // The handlers narrow these to the caller's tenant.
        return Ok(());
    }
    if route.starts_with("/tenants/{") {
        // The id as sent, before any decoding: an id that only decodes to the tenant's
        // is refused too, which costs nothing since ids are plain UUIDs.
        let id = path
            .strip_prefix("/tenants/")
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_default();
        if id != tenant {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("tenant '{id}' not found"),
            ));
        }
        if route.ends_with("/migrations") && !read {
            return forbidden("migrate participants: moving between cells is the operator's");
        }
        if route == "/tenants/{tid}/participant-profiles/{pid}" && *method == Method::PATCH {
            return forbidden(
                "change VPA properties: sizing participants on shared cells is the operator's",
            );
        }
        return Ok(());
    }
    if route == "/tenants" {
        return if read {
            Ok(())
        } else {
            forbidden("create tenants")
        };
    }
    if route.starts_with("/cells") || route.starts_with("/dataspace-profiles") {
        return if read {
            Ok(())
        } else {
            forbidden("change cells or dataspace profiles")
        };
    }
    // A route added later is closed to confined tokens until someone decides otherwise.
    forbidden("use this route")
}
