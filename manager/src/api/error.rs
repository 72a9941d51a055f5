//! The one place errors become HTTP responses, in upstream CFM's error body:
//! `{"error":"<status text>","message":"<text>","code":<status>}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::error::ManagerError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
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
        (self.status, Json(body)).into_response()
    }
}

impl From<ManagerError> for ApiError {
    fn from(error: ManagerError) -> Self {
        let status = match &error {
            ManagerError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ManagerError::NotFound(_) => StatusCode::NOT_FOUND,
            ManagerError::Conflict(_) => StatusCode::CONFLICT,
            ManagerError::Database(sqlx::Error::PoolTimedOut) => StatusCode::SERVICE_UNAVAILABLE,
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
