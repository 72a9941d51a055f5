//! The one place errors become HTTP responses, in upstream CFM's error body:
//! `{"error":"<status text>","message":"<text>","code":<status>}`, plus a stable
//! `reason` where a client can act on which rule refused it (`predicate-depth`, ...).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::ManagerError;
use crate::store;

/// An error answer of the API; its response is the [`ErrorBody`].
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status answered.
    pub status: StatusCode,
    /// What went wrong, for people; server errors say only "see the server log".
    pub message: String,
    /// Seconds after which the same request is worth sending again (`Retry-After`).
    pub retry_after: Option<u32>,
    /// Which rule refused the request, when one did: stable across releases.
    pub reason: Option<&'static str>,
    /// Structured facts behind the refusal (the cells placement considered, ...).
    pub details: Option<serde_json::Value>,
}

impl ApiError {
    /// An answer with `status` and `message`, no reason and no `Retry-After`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
            reason: None,
            details: None,
        }
    }

    /// The same answer naming the rule that refused the request.
    pub fn with_reason(self, reason: &'static str) -> Self {
        Self {
            reason: Some(reason),
            ..self
        }
    }
}

/// Upstream's error body.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The HTTP status text, e.g. `Not Found`.
    pub error: String,
    /// What went wrong, for people.
    pub message: String,
    /// The HTTP status code.
    pub code: u16,
    /// Which rule refused the request, for clients to match on (`predicate-depth`,
    /// `query-timeout`, ...); absent where the status says it all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Structured facts behind the refusal: for `no-cell-fits`, `{"cells": [{cellId,
    /// reason}]}`, every cell considered and why it was refused; for `stale-plan`,
    /// `{"reasons": [...]}`, what changed since the plan was computed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self
                .status
                .canonical_reason()
                .unwrap_or("Error")
                .to_string(),
            message: self.message,
            code: self.status.as_u16(),
            reason: self.reason.map(str::to_string),
            details: self.details,
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// A refused predicate answers as the manager's own refusals do.
impl From<cfm_query::QueryError> for ApiError {
    fn from(error: cfm_query::QueryError) -> Self {
        ManagerError::from(error).into()
    }
}

impl From<ManagerError> for ApiError {
    fn from(error: ManagerError) -> Self {
        let status = match &error {
            ManagerError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ManagerError::OverLimit { limit, message } => {
                return Self::new(StatusCode::BAD_REQUEST, message.clone()).with_reason(limit);
            }
            ManagerError::Database(e) if store::is_query_timeout(e) => {
                return Self::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "the query ran past its {} ms budget and was stopped; narrow the predicate",
                        store::QUERY_TIMEOUT.as_millis()
                    ),
                )
                .with_reason("query-timeout");
            }
            ManagerError::NotFound(_) => StatusCode::NOT_FOUND,
            ManagerError::Conflict(_) => StatusCode::CONFLICT,
            ManagerError::Busy(_) => {
                return Self {
                    retry_after: Some(1),
                    ..Self::new(StatusCode::CONFLICT, error.to_string())
                }
                .with_reason("participant-busy");
            }
            ManagerError::ParticipantsNotDisposed { .. } => {
                return Self::new(StatusCode::CONFLICT, error.to_string())
                    .with_reason("participants-not-disposed");
            }
            ManagerError::NoCellFits { cells } => {
                return Self {
                    details: Some(serde_json::json!({ "cells": cells })),
                    ..Self::new(StatusCode::CONFLICT, error.to_string())
                }
                .with_reason("no-cell-fits");
            }
            ManagerError::StalePlan { reasons } => {
                return Self {
                    details: Some(serde_json::json!({ "reasons": reasons })),
                    ..Self::new(StatusCode::CONFLICT, error.to_string())
                }
                .with_reason("stale-plan");
            }
            ManagerError::Database(e) if store::is_transient(e) => {
                // The transaction was rolled back whole: nothing half-written, and the
                // same request can simply be sent again.
                tracing::warn!("request refused for now: {error}");
                return Self {
                    retry_after: Some(1),
                    ..Self::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the database is busy and nothing was changed; send the request again",
                    )
                };
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            // Details stay in the log: they can name tables, files or internal state.
            tracing::error!("request failed: {error}");
            return Self::new(status, "internal error; see the server log");
        }
        Self::new(status, error.to_string())
    }
}

/// What API handlers return.
pub type ApiResult<T> = Result<T, ApiError>;

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        ManagerError::from(error).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::ScratchDatabase;
    use sqlx::{Connection, Executor, PgConnection};

    /// Two transactions locking two rows in opposite orders: PostgreSQL aborts one.
    #[tokio::test]
    async fn a_deadlock_victim_is_told_to_retry_not_given_a_500() {
        let scratch = ScratchDatabase::create().await;
        let mut setup = PgConnection::connect(scratch.url()).await.unwrap();
        setup
            .execute(
                "CREATE TABLE t (id INT PRIMARY KEY, v INT); INSERT INTO t VALUES (1, 0), (2, 0)",
            )
            .await
            .unwrap();
        let run = |first: i32, second: i32| {
            let url = scratch.url().to_string();
            tokio::spawn(async move {
                let mut conn = PgConnection::connect(&url).await.unwrap();
                let mut tx = conn.begin().await.unwrap();
                sqlx::query("UPDATE t SET v = v + 1 WHERE id = $1")
                    .bind(first)
                    .execute(&mut *tx)
                    .await?;
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                sqlx::query("UPDATE t SET v = v + 1 WHERE id = $1")
                    .bind(second)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await
            })
        };
        let (a, b) = (run(1, 2), run(2, 1));
        let outcomes = [a.await.unwrap(), b.await.unwrap()];
        let victim = outcomes
            .into_iter()
            .find_map(Result::err)
            .expect("one transaction is the deadlock's victim");
        assert!(store::is_transient(&victim), "{victim}");

        let response = ApiError::from(victim).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        // Anything else from the database stays an internal error.
        let other = ApiError::from(sqlx::Error::RowNotFound);
        assert_eq!(other.status, StatusCode::INTERNAL_SERVER_ERROR);
    }

    /// API predicate queries run where PostgreSQL stops them at their budget and never
    /// compiles them with JIT; the stopped one is a 400 naming the budget, not a 500.
    #[tokio::test]
    async fn a_query_past_its_budget_is_stopped_and_answered_400() {
        let scratch = ScratchDatabase::create().await;
        let db = store::Db::open(scratch.url()).await.unwrap();
        let jit: String = sqlx::query_scalar("SELECT current_setting('jit')")
            .fetch_one(db.queries())
            .await
            .unwrap();
        assert_eq!(jit, "off");
        let started = std::time::Instant::now();
        let stopped = sqlx::query("SELECT pg_sleep(60)")
            .execute(db.queries())
            .await
            .unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_secs(30));
        assert!(store::is_query_timeout(&stopped), "{stopped}");
        let answer = ApiError::from(stopped);
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
        assert_eq!(answer.reason, Some("query-timeout"));
        // The engine's own connections have no such budget: only API queries are cut.
        let budget: String = sqlx::query_scalar("SELECT current_setting('statement_timeout')")
            .fetch_one(db.writer())
            .await
            .unwrap();
        assert_eq!(budget, "0");
        db.close().await;
    }
}
