//! The agent host's error type.

/// Why the host could not start or load a plugin. Invocation failures are not errors:
/// they become `ActivityOutcome`s.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("invalid plugin configuration: {0}")]
    Config(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "plugin '{plugin}': {path} has sha256 {actual}, but the configuration pins {expected}; refusing to load it"
    )]
    Digest {
        plugin: String,
        path: String,
        expected: String,
        actual: String,
    },
    #[error("plugin '{plugin}': {message}")]
    Load { plugin: String, message: String },
    #[error("plugin '{plugin}': {path}: {reason}; refusing to load it")]
    Signature {
        plugin: String,
        path: String,
        reason: String,
    },
    #[error("wasm engine: {0}")]
    Engine(String),
}
