//! The agent host's error type.

/// Why the host could not start or load a plugin. Invocation failures are not errors:
/// they become `ActivityOutcome`s.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The configuration is invalid; the message says where and why.
    #[error("invalid plugin configuration: {0}")]
    Config(String),
    /// A file could not be read.
    #[error("{what}: {source}")]
    Io {
        /// What was being read.
        what: String,
        /// Why it could not be.
        #[source]
        source: std::io::Error,
    },
    #[error(
        "plugin '{plugin}': {path} has sha256 {actual}, but the configuration pins {expected}; refusing to load it"
    )]
    /// The plugin file is not the one the configuration pins.
    Digest {
        /// The plugin's name.
        plugin: String,
        /// Its file.
        path: String,
        /// The digest the configuration pins.
        expected: String,
        /// The digest of the file.
        actual: String,
    },
    /// The plugin does not load: not a component, an import its grants do not open, or a
    ///  misfit with the contract.
    #[error("plugin '{plugin}': {message}")]
    Load {
        /// The plugin's name.
        plugin: String,
        /// Why it does not load.
        message: String,
    },
    /// The plugin's signature is missing or was not made by a trusted key.
    #[error("plugin '{plugin}': {path}: {reason}; refusing to load it")]
    Signature {
        /// The plugin's name.
        plugin: String,
        /// The signature file.
        path: String,
        /// Why it was refused.
        reason: String,
    },
    /// The wasm engine could not be set up.
    #[error("wasm engine: {0}")]
    Engine(String),
}
