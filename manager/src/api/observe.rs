//! What operators and their tooling read without a token: liveness, readiness and
//! Prometheus metrics. None of it names a tenant, a participant or a secret.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value, json};

use super::AppState;
use super::error::ApiError;
use crate::store::Db;

/// One dependency `/ready` checks: the database always, and whatever the process adds
/// (the JetStream connection of a manager, the plugins of an agent host).
#[async_trait]
pub trait Probe: Send + Sync {
    /// What is checked, as `/ready` names it.
    fn name(&self) -> &'static str;
    /// Why it is not usable now, or `Ok`.
    async fn check(&self) -> Result<(), String>;
}

/// How long one readiness check may take before it counts as failed: a probe that
/// hangs must not hang the kubelet's request with it.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /health`: the process answers.
pub(super) async fn health() -> impl IntoResponse {
    axum::Json(json!({"message": "OK"}))
}

/// `GET /ready`: 200 when the database and every added probe answer, else 503 with
/// reason `not-ready` and each failing check's error in `details.checks`.
pub(super) async fn ready(State(state): State<AppState>) -> Response {
    let database: Arc<dyn Probe> = Arc::new(DatabaseProbe(state.engine.db().clone()));
    readiness(std::iter::once(&database).chain(state.probes.iter())).await
}

/// The probes and metrics alone, for a process that serves no API (`cfm agent
/// --listen`): `/health`, `/ready` over `probes`, and `/metrics`.
pub fn probe_routes(probes: Probes) -> Router {
    Router::new()
        .route("/health", get(health))
        .route(
            "/ready",
            get(move || async move { readiness(probes.iter()).await }),
        )
        .route("/metrics", get(|| async { exposition() }))
}

/// Runs every probe at once, each within [`PROBE_TIMEOUT`]: 200 with each check's
/// `ok`, or 503 (`not-ready`) naming the failing ones with their errors.
async fn readiness(probes: impl Iterator<Item = &Arc<dyn Probe>>) -> Response {
    let results = futures_util::future::join_all(probes.map(|probe| async move {
        let outcome = match tokio::time::timeout(PROBE_TIMEOUT, probe.check()).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
        };
        (probe.name(), outcome)
    }))
    .await;
    let mut checks = Map::new();
    let mut failing = Vec::new();
    for (name, outcome) in results {
        match outcome {
            Ok(()) => checks.insert(name.into(), "ok".into()),
            Err(e) => {
                failing.push(name);
                checks.insert(name.into(), Value::String(e))
            }
        };
    }
    if failing.is_empty() {
        return axum::Json(json!({"status": "ready", "checks": checks})).into_response();
    }
    ApiError {
        details: Some(json!({ "checks": checks })),
        ..ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}", failing.join(", ")),
        )
        .with_reason("not-ready")
    }
    .into_response()
}

/// `GET /metrics`: this process's metrics in the OpenMetrics text format, with the
/// outbox and connection-pool gauges read now.
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    let db = state.engine.db();
    let m = cfm_metrics::metrics();
    for (name, pool) in db.pools() {
        m.pool(name, pool.size(), pool.num_idle());
    }
    match crate::queue::depth(db).await {
        Ok(depth) => {
            m.queue_messages.set(depth.messages);
            m.queue_oldest_due_seconds
                .set(depth.oldest_due.as_secs_f64());
        }
        // The counters are still worth a scrape; the gauges keep their last reading.
        Err(e) => tracing::warn!("cannot read the outbox depth for /metrics: {e}"),
    }
    exposition()
}

/// This process's metrics as they are.
fn exposition() -> Response {
    (
        [(header::CONTENT_TYPE, cfm_metrics::CONTENT_TYPE)],
        cfm_metrics::encode(),
    )
        .into_response()
}

/// Records every routed request's duration by method, route template and status.
pub(super) async fn record_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    cfm_metrics::metrics().http_request(
        method.as_str(),
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

struct DatabaseProbe(Db);

#[async_trait]
impl Probe for DatabaseProbe {
    fn name(&self) -> &'static str {
        "database"
    }

    async fn check(&self) -> Result<(), String> {
        sqlx::query("SELECT 1")
            .execute(self.0.read())
            .await
            .map(drop)
            .map_err(|e| crate::error::ManagerError::from(e).to_string())
    }
}

/// The probes a router checks besides the database.
pub type Probes = Arc<[Arc<dyn Probe>]>;
