//! Swapping a running host's plugins for those of a changed configuration, all or none,
//! by request or whenever the files on disk change.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::AgentHost;
use super::load::load_all;
use crate::config::HostConfig;
use crate::error::HostError;

impl AgentHost {
    /// Replaces the plugins with those of `config`, all or none: a configuration that
    /// fails to load leaves the running set in place. Invocations already running finish
    /// on the version they started with. Activity types a worker did not pull at start
    /// need a restart to be pulled.
    pub fn reload(&self, config: &HostConfig) -> Result<(), HostError> {
        if let Some(plugin) = config
            .plugins
            .iter()
            .find(|p| p.limits.memory_bytes() > self.inner.max_memory)
        {
            return Err(HostError::Config(format!(
                "plugin '{}': memory-mib above what this host started with ({} MiB); restart to raise it",
                plugin.name,
                self.inner.max_memory >> 20
            )));
        }
        let loaded = load_all(
            &self.inner.engine,
            config,
            self.inner.compile_cache.as_ref(),
        )?;
        *self
            .inner
            .by_activity_type
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(loaded);
        tracing::info!("plugin configuration reloaded");
        Ok(())
    }

    /// Reloads whenever the configuration file or a plugin file it names changes
    /// (checked every `every`), until the returned task is aborted. A change that fails
    /// to load is logged and the running plugins stay.
    pub fn watch(&self, config_path: PathBuf, every: Duration) -> tokio::task::JoinHandle<()> {
        let host = self.clone();
        tokio::spawn(async move {
            let mut seen = fingerprint(&config_path);
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                ticks.tick().await;
                let now = fingerprint(&config_path);
                if now == seen {
                    continue;
                }
                seen = now;
                // Compiling a changed plugin takes a while: off the async workers.
                let (path, reloading) = (config_path.clone(), host.clone());
                let outcome = tokio::task::spawn_blocking(move || {
                    HostConfig::load(&path).and_then(|config| reloading.reload(&config))
                })
                .await
                .unwrap_or_else(|e| Err(HostError::Engine(format!("reload task: {e}"))));
                if let Err(e) = outcome {
                    tracing::error!(
                        "plugin configuration not reloaded, keeping the running plugins: {e}"
                    );
                }
            }
        })
    }
}

/// What a configuration file and the plugin files it names look like on disk (size and
/// modification time): a change means a reload.
fn fingerprint(config_path: &Path) -> Vec<(PathBuf, Option<(u64, SystemTime)>)> {
    let stat = |path: &Path| {
        std::fs::metadata(path)
            .ok()
            .and_then(|m| Some((m.len(), m.modified().ok()?)))
    };
    let mut seen = vec![(config_path.to_path_buf(), stat(config_path))];
    if let Ok(config) = HostConfig::load(config_path) {
        for plugin in &config.plugins {
            let path = config.plugin_path(plugin);
            seen.push((path.clone(), stat(&path)));
        }
    }
    seen
}
