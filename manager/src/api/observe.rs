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

/// Something `/metrics` reads when it is scraped, at most once per [`FRESH_FOR`]: the
/// outbox's depth, the JetStream consumers' lag.
#[async_trait]
pub trait Reading: Send + Sync {
    /// Sets its gauges in [`cfm_metrics::metrics`]; a failure leaves the last reading.
    async fn read(&self);
}

/// How long one readiness check may take before it counts as failed: a probe that
/// hangs must not hang the kubelet's request with it.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one run of the probes, or one reading of the outbox, answers every request:
/// these routes need no token, so a flood of requests must not become a flood of
/// database queries.
const FRESH_FOR: Duration = Duration::from_secs(1);

/// What `/ready` checks, and the last answers of the probes and the outbox reading.
pub struct Observed {
    probes: Vec<Arc<dyn Probe>>,
    readings: Vec<Arc<dyn Reading>>,
    /// One request at a time runs the probes; the others wait and take its answer.
    last_checks: tokio::sync::Mutex<Option<(Instant, Checks)>>,
    last_read: tokio::sync::Mutex<Option<Instant>>,
}

/// Each probe's name and whether it passed.
type Checks = Vec<(&'static str, bool)>;

impl Observed {
    /// Readiness over `probes`, and `readings` taken at scrapes.
    pub fn new(probes: Vec<Arc<dyn Probe>>, readings: Vec<Arc<dyn Reading>>) -> Arc<Self> {
        Arc::new(Self {
            probes,
            readings,
            last_checks: tokio::sync::Mutex::new(None),
            last_read: tokio::sync::Mutex::new(None),
        })
    }

    /// [`Observed::new`] with the database checked first and the outbox read.
    pub(crate) fn with_database(
        db: Db,
        mut probes: Vec<Arc<dyn Probe>>,
        mut readings: Vec<Arc<dyn Reading>>,
    ) -> Arc<Self> {
        probes.insert(0, Arc::new(DatabaseProbe(db.clone())));
        readings.insert(0, Arc::new(OutboxReading(db)));
        Self::new(probes, readings)
    }

    /// Takes every reading, unless the last ones are under [`FRESH_FOR`] old.
    async fn read(&self) {
        let mut last = self.last_read.lock().await;
        if last.is_none_or(|at| at.elapsed() >= FRESH_FOR) {
            futures_util::future::join_all(self.readings.iter().map(|r| r.read())).await;
            *last = Some(Instant::now());
        }
    }

    /// The probes' answers, at most [`FRESH_FOR`] old. Why one failed goes to the log,
    /// not to the unauthenticated answer (an error can name hosts, users, databases).
    async fn checks(&self) -> Checks {
        let mut last = self.last_checks.lock().await;
        if let Some((at, checks)) = last.as_ref()
            && at.elapsed() < FRESH_FOR
        {
            return checks.clone();
        }
        let checks = futures_util::future::join_all(self.probes.iter().map(|probe| async move {
            let outcome = match tokio::time::timeout(PROBE_TIMEOUT, probe.check()).await {
                Ok(outcome) => outcome,
                Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
            };
            if let Err(e) = &outcome {
                tracing::warn!(check = probe.name(), "not ready: {e}");
            }
            (probe.name(), outcome.is_ok())
        }))
        .await;
        *last = Some((Instant::now(), checks.clone()));
        checks
    }
}

/// `GET /health`: the process answers.
pub(super) async fn health() -> impl IntoResponse {
    axum::Json(json!({"message": "OK"}))
}

/// `GET /ready`: 200 when every probe answers (the database first), else 503 with
/// reason `not-ready` and each check's `ok` or `unavailable` in `details.checks`.
pub(super) async fn ready(State(state): State<AppState>) -> Response {
    readiness(&state.observed).await
}

/// The probes and metrics alone, for a process that serves no API (`cfm agent
/// --listen`): `/health`, `/ready` over `probes`, and `/metrics`.
pub fn probe_routes(probes: Vec<Arc<dyn Probe>>) -> Router {
    let observed = Observed::new(probes, Vec::new());
    Router::new()
        .route("/health", get(health))
        .route(
            "/ready",
            get(move || async move { readiness(&observed).await }),
        )
        .route("/metrics", get(|| async { exposition() }))
}

async fn readiness(observed: &Observed) -> Response {
    let checks = observed.checks().await;
    let failing: Vec<&str> = checks
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(name, _)| *name)
        .collect();
    let checks: Map<String, Value> = checks
        .iter()
        .map(|(name, ok)| {
            (
                (*name).into(),
                if *ok { "ok" } else { "unavailable" }.into(),
            )
        })
        .collect();
    if failing.is_empty() {
        return axum::Json(json!({"status": "ready", "checks": checks})).into_response();
    }
    ApiError {
        details: Some(json!({ "checks": checks })),
        ..ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: {} (the server log says why)",
                failing.join(", ")
            ),
        )
        .with_reason("not-ready")
    }
    .into_response()
}

/// `GET /metrics`: this process's metrics in the OpenMetrics text format, with the
/// pool gauges read now and the [`Reading`]s at most [`FRESH_FOR`] old.
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    let m = cfm_metrics::metrics();
    for (name, pool) in state.engine.db().pools() {
        m.pool(name, pool.size(), pool.num_idle());
    }
    state.observed.read().await;
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

struct OutboxReading(Db);

#[async_trait]
impl Reading for OutboxReading {
    async fn read(&self) {
        match crate::queue::depth(&self.0).await {
            Ok(depth) => {
                let m = cfm_metrics::metrics();
                m.queue_messages.set(depth.messages);
                m.queue_oldest_due_seconds
                    .set(depth.oldest_due.as_secs_f64());
            }
            Err(e) => tracing::warn!("cannot read the outbox depth for /metrics: {e}"),
        }
    }
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
