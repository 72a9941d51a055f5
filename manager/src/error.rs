//! The manager's error type. `api::error` is the one place that maps it to HTTP.

/// Everything a manager operation can fail with; `api::error` answers each with its status.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The request is malformed or refers to something it may not.
    #[error("{0}")]
    BadRequest(String),
    /// The request asks for more than the server gives one request (a predicate too deep,
    /// a query past its time budget); `limit` names which, for clients to match on.
    #[error("{message}")]
    OverLimit {
        /// The rule that refused the request (`predicate-depth`, ...), sent as `reason`.
        limit: &'static str,
        /// What was asked and what is allowed, for people.
        message: String,
    },
    /// The resource does not exist, or belongs to another tenant.
    #[error("{0}")]
    NotFound(String),
    /// The request clashes with current state (duplicate, stale version, no capacity).
    #[error("{0}")]
    Conflict(String),
    /// Another orchestration of the participant runs (an upgrade, an update, a keypair
    /// event's): one operation of a participant at a time. Asking again later may work.
    #[error("{0}")]
    Busy(String),
    /// A tenant, cell or dataspace profile cannot be deleted while participants of it
    /// are not disposed.
    #[error("{owner} has {live} participant profile(s) that are not disposed; dispose them first")]
    ParticipantsNotDisposed {
        /// The resource being deleted, as the message names it.
        owner: String,
        /// How many of its participant profiles are not disposed.
        live: i64,
    },
    /// No cell can take a participant: each cell considered, with why it was refused.
    #[error("no cell can take the participant: {}", describe_refusals(.cells))]
    NoCellFits {
        /// The cells considered and the reason each was refused.
        cells: Vec<CellRefusal>,
    },
    /// A rebalance plan was computed for a fleet that has changed since: each reason says
    /// what changed.
    #[error("the rebalance plan is stale; compute a new one: {}", describe_reasons(.reasons))]
    StalePlan {
        /// What changed since the plan was computed.
        reasons: Vec<String>,
    },
    /// A database call failed. A query past its time budget is answered 400, a busy
    /// database 503 (send again), anything else 500.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The schema could not be brought up to date when the database was opened.
    #[error("database migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// Stored data that cannot be read back: a bug or a hand-edited database.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// A file of the data directory, the signing key or an identity provider's key set
    /// could not be read, written or used.
    #[error("{0}")]
    Io(String),
    /// A part of this process that the request needs has stopped: it panicked, or the
    /// process is shutting down. Nothing was changed.
    #[error("{0}")]
    Stopped(&'static str),
    /// The queue of a distributed deployment failed (relaying work, consuming reports).
    #[error(transparent)]
    Queue(#[from] cfm_queue::QueueError),
}

/// A cell placement refused (or left out of a plan), and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CellRefusal {
    /// The cell's id.
    pub cell_id: String,
    /// Why it cannot take the participant, for people.
    pub reason: String,
}

/// Reasons listed in a message; the rest are counted.
const REASONS_SHOWN: usize = 20;

/// `reasons` joined for people, at most [`REASONS_SHOWN`] of them.
pub(crate) fn describe_reasons(reasons: &[String]) -> String {
    let mut text = reasons
        .iter()
        .take(REASONS_SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if reasons.len() > REASONS_SHOWN {
        text.push_str(&format!("; and {} more", reasons.len() - REASONS_SHOWN));
    }
    text
}

fn describe_refusals(cells: &[CellRefusal]) -> String {
    if cells.is_empty() {
        return "there are no cells".into();
    }
    cells
        .iter()
        .map(|c| format!("cell '{}' {}", c.cell_id, c.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

/// What manager operations return.
pub type Result<T, E = ManagerError> = std::result::Result<T, E>;

impl From<cfm_query::QueryError> for ManagerError {
    fn from(error: cfm_query::QueryError) -> Self {
        match error {
            cfm_query::QueryError::Invalid(message) => Self::BadRequest(message),
            cfm_query::QueryError::OverLimit { limit, message } => {
                Self::OverLimit { limit, message }
            }
        }
    }
}

impl ManagerError {
    /// A [`ManagerError::BadRequest`] saying `message`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest(message.into())
    }
    /// A [`ManagerError::OverLimit`] for the rule `limit`.
    pub fn over_limit(limit: &'static str, message: impl Into<String>) -> Self {
        Self::OverLimit {
            limit,
            message: message.into(),
        }
    }
    /// A [`ManagerError::NotFound`] saying `message`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound(message.into())
    }
    /// A [`ManagerError::Conflict`] saying `message`.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::Conflict(message.into())
    }
}
