//! Plugin failures and how they map onto the engine's retry/fatal distinction.

use crate::{ActivityResult, CapabilityError};

/// Why an activity invocation did not complete.
///
/// Converting it into an [`ActivityResult`] decides whether the engine retries:
/// only [`Error::Retry`] and capability calls that failed with `unavailable` are
/// worth another attempt; bad input and denied access will fail the same way again.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A permanent failure: the orchestration fails and is compensated.
    #[error("{0}")]
    Fatal(String),
    /// A transient failure: the engine retries with backoff.
    #[error("{0}")]
    Retry(String),
    /// A capability call failed.
    #[error("{action}: {}", describe(source))]
    Capability {
        /// What the plugin was doing, for the failure message.
        action: String,
        /// The host's answer.
        source: CapabilityError,
    },
    /// Settings, processing data or state did not have the expected shape.
    #[error("invalid {what}: {source}")]
    Json {
        /// Which input was malformed.
        what: String,
        /// The parser's complaint.
        source: serde_json::Error,
    },
}

impl Error {
    /// Whether the engine should run the activity again.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Retry(_)
                | Error::Capability {
                    source: CapabilityError::Unavailable(_),
                    ..
                }
        )
    }

    pub(crate) fn json(what: impl Into<String>, source: serde_json::Error) -> Self {
        Error::Json {
            what: what.into(),
            source,
        }
    }
}

impl From<Error> for ActivityResult {
    fn from(error: Error) -> Self {
        if error.is_transient() {
            ActivityResult::Retry(error.to_string())
        } else {
            ActivityResult::Fatal(error.to_string())
        }
    }
}

/// Attaches what the plugin was doing to a failed capability call.
pub trait CapabilityResultExt<T> {
    /// Turns a [`CapabilityError`] into an [`Error::Capability`] labelled `action`
    /// (for example `"store the api key"`).
    fn context(self, action: impl Into<String>) -> Result<T, Error>;
}

impl<T> CapabilityResultExt<T> for Result<T, CapabilityError> {
    fn context(self, action: impl Into<String>) -> Result<T, Error> {
        self.map_err(|source| Error::Capability {
            action: action.into(),
            source,
        })
    }
}

// The generated `Display` is the `Debug` form; this one reads well in an
// orchestration's failure message.
fn describe(error: &CapabilityError) -> String {
    match error {
        CapabilityError::Denied(message) => format!("denied: {message}"),
        CapabilityError::Invalid(message) => format!("invalid: {message}"),
        CapabilityError::Unavailable(message) => format!("unavailable: {message}"),
    }
}
