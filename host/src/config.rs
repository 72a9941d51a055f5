//! The agent host's plugin configuration (TOML).
//!
//! Strict on purpose: an unknown key is a typo that would otherwise silently widen or
//! drop a limit or a grant, so it is rejected with the key's name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::HostError;
use crate::grants::Grants;

/// Every plugin this host may run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// The plugins, as the file lists them.
    #[serde(default, rename = "plugin")]
    pub plugins: Vec<PluginConfig>,
    /// Where the file was read from; plugin paths are relative to its folder.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// One plugin: the component file, what it serves, its limits and its grants.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PluginConfig {
    /// Names the plugin in logs, audit records and errors; unique in the file.
    pub name: String,
    /// The component file, relative to the configuration file's folder.
    pub path: PathBuf,
    /// Hex sha256 of the `.wasm` file; a file with another digest is refused.
    pub sha256: String,
    /// The activity types it serves; no two plugins serve the same one.
    pub activity_types: Vec<String>,
    /// Base64 Ed25519 public keys; when any are listed, the plugin loads only with a
    /// signature file (`<path>.sig`) one of them made (see `cfm plugin sign`).
    #[serde(default)]
    pub trusted_keys: Vec<String>,
    /// What one invocation may use.
    #[serde(default)]
    pub limits: Limits,
    /// Free-form settings handed to the plugin as a JSON object.
    #[serde(default)]
    pub settings: toml::Table,
    /// What it may reach; nothing unless granted.
    #[serde(default)]
    pub grants: Grants,
}

/// Resource limits for one invocation. On by default: a plugin that names none gets these.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Limits {
    /// Linear memory a single instance may grow to.
    pub memory_mib: u32,
    /// Wall-clock budget of one invocation, CPU and waiting included.
    pub timeout_ms: u64,
    /// Largest output JSON a plugin may return.
    pub max_output_kib: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_mib: 64,
            timeout_ms: 30_000,
            max_output_kib: 1024,
        }
    }
}

impl Limits {
    /// [`Self::memory_mib`] in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.memory_mib as usize * 1024 * 1024
    }
}

/// The most memory any plugin may ask for: the pooling allocator reserves slots of this size.
pub const MAX_MEMORY_MIB: u32 = 4096;

impl HostConfig {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, HostError> {
        let text = std::fs::read_to_string(path).map_err(|source| HostError::Io {
            what: format!("reading plugin configuration {}", path.display()),
            source,
        })?;
        let mut config = Self::parse(&text).map_err(|e| match e {
            HostError::Config(msg) => HostError::Config(format!("{}: {msg}", path.display())),
            other => other,
        })?;
        config.base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Ok(config)
    }

    /// Parses configuration text; plugin paths stay relative until [`Self::plugin_path`].
    pub fn parse(text: &str) -> Result<Self, HostError> {
        let config: HostConfig =
            toml::from_str(text).map_err(|e| HostError::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// The absolute location of a plugin's component file.
    pub fn plugin_path(&self, plugin: &PluginConfig) -> PathBuf {
        self.base_dir.join(&plugin.path)
    }

    fn validate(&self) -> Result<(), HostError> {
        let mut served: BTreeMap<&str, &str> = BTreeMap::new();
        let mut names = std::collections::BTreeSet::new();
        for plugin in &self.plugins {
            let bad = |msg: String| HostError::Config(format!("plugin '{}': {msg}", plugin.name));
            if !names.insert(plugin.name.as_str()) {
                return Err(bad("the name is used twice".into()));
            }
            if plugin.sha256.len() != 64 || !plugin.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(format!(
                    "sha256 must be 64 hex digits, got '{}'",
                    plugin.sha256
                )));
            }
            if plugin.activity_types.is_empty() {
                return Err(bad("activity-types is empty".into()));
            }
            for key in &plugin.trusted_keys {
                crate::signature::public_key(key).map_err(|e| bad(format!("trusted-keys: {e}")))?;
            }
            for activity_type in &plugin.activity_types {
                if let Some(other) = served.insert(activity_type, &plugin.name) {
                    return Err(bad(format!(
                        "activity type '{activity_type}' is already served by plugin '{other}'"
                    )));
                }
            }
            let limits = plugin.limits;
            if limits.memory_mib == 0 || limits.memory_mib > MAX_MEMORY_MIB {
                return Err(bad(format!(
                    "limits.memory-mib must be between 1 and {MAX_MEMORY_MIB}"
                )));
            }
            if limits.timeout_ms == 0 || limits.max_output_kib == 0 {
                return Err(bad("limits must be greater than zero".into()));
            }
            plugin.grants.validate().map_err(|e| bad(e.to_string()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    fn plugin(extra: &str) -> String {
        format!(
            "[[plugin]]\nname = \"p\"\npath = \"p.wasm\"\nsha256 = \"{DIGEST}\"\nactivity-types = [\"t\"]\n{extra}"
        )
    }

    #[test]
    fn defaults_apply_when_limits_are_missing() {
        let config = HostConfig::parse(&plugin("")).unwrap();
        assert_eq!(config.plugins[0].limits, Limits::default());
        assert!(config.plugins[0].grants.secrets.is_empty());
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let err = HostConfig::parse(&plugin("[plugin.grants]\nsecret = [\"x\"]\n")).unwrap_err();
        assert!(err.to_string().contains("secret"), "{err}");
        let err = HostConfig::parse(&plugin("[plugin.limits]\nmemory = 1\n")).unwrap_err();
        assert!(err.to_string().contains("memory"), "{err}");
    }

    #[test]
    fn bad_digest_and_duplicate_types_are_rejected() {
        let text = plugin("").replace(DIGEST, "abc");
        assert!(
            HostConfig::parse(&text)
                .unwrap_err()
                .to_string()
                .contains("sha256")
        );
        let twice = format!(
            "{}{}",
            plugin(""),
            plugin("").replace("name = \"p\"", "name = \"q\"")
        );
        let err = HostConfig::parse(&twice).unwrap_err().to_string();
        assert!(err.contains("already served"), "{err}");
    }

    #[test]
    fn grants_with_unknown_placeholders_are_rejected() {
        let err = HostConfig::parse(&plugin(
            "[plugin.grants]\nsecrets = [\"participants/{tenant}/**\"]\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("{tenant}"), "{err}");
    }
}
