//! The one place errors become HTTP responses, in upstream CFM's error body:
//! `{"error":"<status text>","message":"<text>","code":<status>}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::ManagerError;
use crate::store;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Seconds after which the same request is worth sending again (`Retry-After`).
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
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

impl From<ManagerError> for ApiError {
    fn from(error: ManagerError) -> Self {
        let status = match &error {
            ManagerError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ManagerError::NotFound(_) => StatusCode::NOT_FOUND,
            ManagerError::Conflict(_) => StatusCode::CONFLICT,
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
}
