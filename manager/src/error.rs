//! The manager's error type. `api::error` is the one place that maps it to HTTP.

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The request is malformed or refers to something it may not.
    #[error("{0}")]
    BadRequest(String),
    /// The request asks for more than the server gives one request (a predicate too deep,
    /// a query past its time budget); `limit` names which, for clients to match on.
    #[error("{message}")]
    OverLimit {
        limit: &'static str,
        message: String,
    },
    #[error("{0}")]
    NotFound(String),
    /// The request clashes with current state (duplicate, stale version, no capacity).
    #[error("{0}")]
    Conflict(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// Stored data that cannot be read back: a bug or a hand-edited database.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    Queue(#[from] cfm_queue::QueueError),
}

pub type Result<T, E = ManagerError> = std::result::Result<T, E>;

impl ManagerError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest(message.into())
    }
    pub fn over_limit(limit: &'static str, message: impl Into<String>) -> Self {
        Self::OverLimit {
            limit,
            message: message.into(),
        }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound(message.into())
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::Conflict(message.into())
    }
}
