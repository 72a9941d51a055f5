//! Request-body extraction with upstream's leniency and our strictness: unknown fields
//! are ignored, duplicate keys keep the last value, and anything malformed is a 400 in
//! the standard error body rather than axum's plain-text rejections.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::ApiError;

/// Largest request body accepted.
pub const MAX_BODY: usize = 1024 * 1024;

/// A JSON request body read as the module docs say; use it in place of axum's `Json`.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|rejection| ApiError::new(rejection.status(), rejection.body_text()))?;
        // Through `Value` first: its maps keep the last of duplicate keys, where a derived
        // struct would reject them.
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("Invalid JSON: {e}")))?;
        if let Some(place) = nul_in(&value) {
            // PostgreSQL cannot store U+0000 in text or JSONB; refuse it on every backend
            // alike rather than let the database turn it into a 500.
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("Invalid JSON: {place} contains the character U+0000"),
            ));
        }
        if !value.is_object() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "Invalid JSON: the body must be a JSON object",
            ));
        }
        serde_json::from_value(value)
            .map(JsonBody)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("Invalid request: {e}")))
    }
}

/// Where a JSON document holds U+0000, if anywhere.
fn nul_in(value: &Value) -> Option<&'static str> {
    match value {
        Value::String(s) if s.contains('\0') => Some("a string"),
        Value::Array(items) => items.iter().find_map(nul_in),
        Value::Object(map) => map.iter().find_map(|(key, value)| {
            if key.contains('\0') {
                Some("a key")
            } else {
                nul_in(value)
            }
        }),
        _ => None,
    }
}

/// Whether a request path carries U+0000 (percent-encoded), which no id can contain.
pub fn path_has_nul(path: &str) -> bool {
    path.as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && w[1] == b'0' && w[2] == b'0')
}
