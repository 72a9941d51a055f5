//! The wasmtime runtime: loads pinned plugin components once and runs every invocation in
//! a fresh `Store` with its own limits and participant-scoped grants.
//!
//! Isolation per invocation costs tens of microseconds with the pooling allocator, far
//! below any capability call, and means no state leaks between participants.

pub mod cache;
mod invoke;
mod load;
mod outcome;
mod pool;
mod reload;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use cfm_protocol::{ActivityExecutor, ActivityOutcome, ActivityTask, CapabilityCall, Executed};
use tracing::Instrument;
use wasmtime::Engine;

use crate::audit::Audit;
use crate::capability::Backends;
use crate::config::{HostConfig, PluginConfig};
use crate::error::HostError;
use cache::CompileCache;
pub use load::signature_path;
use load::{LoadedPlugin, load, load_all};
use pool::EpochTicker;

/// Engine-wide settings.
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// Invocations running at once; more wait for a slot (and the pool is sized by it).
    pub max_concurrent_invocations: u32,
    /// Where compiled plugins are kept between runs; None compiles at every start. The
    /// key that authenticates them is kept beside it (see [`cache`]).
    pub compile_cache: Option<PathBuf>,
}

impl Default for HostOptions {
    fn default() -> Self {
        Self {
            max_concurrent_invocations: 64,
            compile_cache: None,
        }
    }
}

/// Runs activities with the plugins of one configuration.
#[derive(Clone)]
pub struct AgentHost {
    inner: Arc<Inner>,
}

impl AgentHost {
    /// Loads, verifies and compiles every plugin of `config`. Fails on the first plugin
    /// whose file is missing, whose digest differs from the pinned one, or that does not
    /// fit the contract.
    pub fn new(
        config: &HostConfig,
        backends: Backends,
        audit: Audit,
        options: HostOptions,
    ) -> Result<Self, HostError> {
        let max_memory = config
            .plugins
            .iter()
            .map(|p| p.limits.memory_bytes())
            .max()
            .unwrap_or(1 << 20);
        let engine = pool::engine(max_memory, options.max_concurrent_invocations)?;
        let compile_cache = options.compile_cache.as_deref().and_then(|dir| {
            CompileCache::open(dir)
                .inspect_err(|e| tracing::warn!("compiling without a cache: {e}"))
                .ok()
        });
        let by_activity_type = load_all(&engine, config, compile_cache.as_ref())?;
        let ticker = EpochTicker::start(engine.clone())?;
        Ok(Self {
            inner: Arc::new(Inner {
                _ticker: ticker,
                engine,
                by_activity_type: std::sync::RwLock::new(Arc::new(by_activity_type)),
                max_memory,
                compile_cache,
                backends,
                audit,
                slots: tokio::sync::Semaphore::new(options.max_concurrent_invocations as usize),
            }),
        })
    }

    /// Runs one activity attempt to an outcome; never panics on plugin behaviour.
    pub async fn run(&self, task: &ActivityTask) -> ActivityOutcome {
        self.run_traced(task).await.outcome
    }

    /// [`AgentHost::run`], with the digest of the plugin that ran and the capability calls
    /// it made.
    pub async fn run_traced(&self, task: &ActivityTask) -> Executed {
        let plugins = self.plugins();
        let Some(plugin) = plugins.get(&task.activity_type) else {
            return Executed {
                outcome: ActivityOutcome::Fatal {
                    reason: format!("no plugin serves activity type '{}'", task.activity_type),
                },
                plugin_digest: None,
                capability_calls: Vec::new(),
            };
        };
        let (outcome, capability_calls) = self.run_plugin(plugin, task).await;
        Executed {
            outcome,
            plugin_digest: Some(plugin.sha256.to_string()),
            capability_calls,
        }
    }

    async fn run_plugin(
        &self,
        plugin: &Arc<LoadedPlugin>,
        task: &ActivityTask,
    ) -> (ActivityOutcome, Vec<CapabilityCall>) {
        let span = tracing::info_span!(
            "activity",
            orchestration = %task.orchestration_id,
            activity = %task.activity_id,
            participant = %task.participant_id,
            plugin = %plugin.name,
            attempt = task.attempt,
        );
        async {
            let Ok(_slot) = self.inner.slots.acquire().await else {
                let outcome = ActivityOutcome::Retry {
                    reason: "the agent host is shutting down".into(),
                };
                return (outcome, Vec::new());
            };
            let started = std::time::Instant::now();
            let (outcome, calls) = self.invoke(plugin, task).await;
            cfm_metrics::metrics().plugin_invoked(&plugin.name, started.elapsed());
            match &outcome {
                ActivityOutcome::Complete { .. } => tracing::info!("activity complete"),
                other => tracing::warn!(outcome = ?other, "activity not complete"),
            }
            (outcome, calls)
        }
        .instrument(span)
        .await
    }

    /// The plugin table as it is now; a reload swaps it without touching this copy.
    fn plugins(&self) -> Arc<HashMap<String, Arc<LoadedPlugin>>> {
        self.inner
            .by_activity_type
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

#[async_trait::async_trait]
impl ActivityExecutor for AgentHost {
    async fn execute(&self, task: ActivityTask) -> ActivityOutcome {
        self.run(&task).await
    }

    async fn execute_traced(&self, task: ActivityTask) -> Executed {
        self.run_traced(&task).await
    }

    fn activity_types(&self) -> Vec<String> {
        let plugins = self.plugins();
        let mut types: Vec<String> = plugins.keys().cloned().collect();
        types.sort();
        types
    }
}

/// Loads one plugin of `config` exactly as the host would (digest, signature, grants,
/// contract) without running it.
pub fn verify_plugin(config: &HostConfig, plugin: &PluginConfig) -> Result<(), HostError> {
    let engine = pool::engine(plugin.limits.memory_bytes(), 1)?;
    load(&engine, config, plugin, None, &mut Default::default()).map(|_| ())
}

struct Inner {
    engine: Engine,
    /// Swapped whole by a reload; an invocation keeps the plugin it started with.
    by_activity_type: std::sync::RwLock<Arc<HashMap<String, Arc<LoadedPlugin>>>>,
    /// Memory the engine's pool was sized for: a reload cannot raise a plugin above it.
    max_memory: usize,
    compile_cache: Option<CompileCache>,
    backends: Backends,
    audit: Audit,
    slots: tokio::sync::Semaphore,
    _ticker: EpochTicker,
}
