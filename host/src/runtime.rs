//! The wasmtime runtime: loads pinned plugin components once and runs every invocation in
//! a fresh `Store` with its own limits and participant-scoped grants.
//!
//! Isolation per invocation costs tens of microseconds with the pooling allocator, far
//! below any capability call, and means no state leaks between participants.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cfm_protocol::{ActivityExecutor, ActivityOutcome, ActivityTask};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tracing::Instrument;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits,
    StoreLimitsBuilder,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::audit::Audit;
use crate::bindings::ActivityPluginPre;
use crate::bindings::cfm::plugin::types::{ActivityRequest, ActivityResult};
use crate::bindings::cfm::plugin::{cluster, dns, log, secrets};
use crate::capability::http::{OutboundHttp, PluginHttp};
use crate::capability::{Backends, CallContext};
use crate::compile_cache::CompileCache;
use crate::config::{HostConfig, Limits, PluginConfig};
use crate::error::HostError;
use crate::fairness::CpuMeter;
use crate::grants::{CAPABILITIES, Grants};

/// Engine-wide settings.
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// Invocations running at once; more wait for a slot (and the pool is sized by it).
    pub max_concurrent_invocations: u32,
    /// Where compiled plugins are kept between runs; None compiles at every start. The
    /// key that authenticates them is kept beside it (see [`crate::compile_cache`]).
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

struct LoadedPlugin {
    name: Arc<str>,
    pre: ActivityPluginPre<Invocation>,
    limits: Limits,
    grants: Grants,
    settings: String,
    /// Present when the plugin has an `http` grant.
    http: Option<PluginHttp>,
}

/// The per-invocation store data: WASI state with nothing granted, plus the capability context.
pub struct Invocation {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    pub(crate) calls: Arc<CallContext>,
    http_ctx: WasiHttpCtx,
    http: OutboundHttp,
    pub(crate) log_lines: u32,
    pub(crate) logs_dropped: u32,
}

impl WasiView for Invocation {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Linked only for plugins with an `http` grant; every request passes [`OutboundHttp`].
impl WasiHttpView for Invocation {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http_ctx,
            table: &mut self.table,
            hooks: &mut self.http,
        }
    }
}

/// How often the engine's epoch advances: the granularity of deadlines and of yielding.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Longest reason or error text handed on to the engine.
const MAX_REASON: usize = 2048;

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
        let engine = engine(max_memory, options.max_concurrent_invocations)?;
        let compile_cache = options.compile_cache.as_deref().and_then(|dir| {
            CompileCache::open(dir)
                .inspect_err(|e| tracing::warn!("compiling without a cache: {e}"))
                .ok()
        });
        let by_activity_type = load_all(&engine, config, compile_cache.as_ref())?;
        Ok(Self {
            inner: Arc::new(Inner {
                _ticker: EpochTicker::start(engine.clone()),
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

    /// The plugin table as it is now; a reload swaps it without touching this copy.
    fn plugins(&self) -> Arc<HashMap<String, Arc<LoadedPlugin>>> {
        self.inner
            .by_activity_type
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Runs one activity attempt to an outcome; never panics on plugin behaviour.
    pub async fn run(&self, task: &ActivityTask) -> ActivityOutcome {
        let plugins = self.plugins();
        let Some(plugin) = plugins.get(&task.activity_type) else {
            return ActivityOutcome::Fatal {
                reason: format!("no plugin serves activity type '{}'", task.activity_type),
            };
        };
        let span = tracing::info_span!(
            "activity",
            orchestration = %task.orchestration_id,
            activity = %task.activity_id,
            plugin = %plugin.name,
            attempt = task.attempt,
        );
        async {
            let Ok(_slot) = self.inner.slots.acquire().await else {
                return ActivityOutcome::Retry {
                    reason: "the agent host is shutting down".into(),
                };
            };
            let outcome = self.invoke(plugin, task).await;
            match &outcome {
                ActivityOutcome::Complete { .. } => tracing::info!("activity complete"),
                other => tracing::warn!(outcome = ?other, "activity not complete"),
            }
            outcome
        }
        .instrument(span)
        .await
    }

    async fn invoke(&self, plugin: &LoadedPlugin, task: &ActivityTask) -> ActivityOutcome {
        let calls = Arc::new(CallContext {
            plugin: plugin.name.clone(),
            orchestration_id: task.orchestration_id.clone(),
            activity_id: task.activity_id.clone(),
            activity_type: task.activity_type.clone(),
            participant_context_id: task.participant_context_id.clone(),
            idempotency_key: task.idempotency_key(),
            grants: plugin.grants.scoped(&task.participant_context_id),
            backends: self.inner.backends.clone(),
            audit: self.inner.audit.clone(),
            denials: Default::default(),
        });
        let state = Invocation {
            // Nothing inherited: no environment, no files, no sockets, no stdio.
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(plugin.limits.memory_bytes())
                .trap_on_grow_failure(true)
                .build(),
            http_ctx: WasiHttpCtx::new(),
            http: OutboundHttp {
                calls: calls.clone(),
                client: plugin.http.clone(),
            },
            calls,
            log_lines: 0,
            logs_dropped: 0,
        };
        let mut store = Store::new(&self.inner.engine, state);
        store.limiter(|s| &mut s.limits);
        // Yield to the executor on every tick so a CPU-bound guest can be cancelled by
        // dropping its future and never starves other invocations; slow it down once it
        // has computed for long (see `fairness`).
        let meter = CpuMeter::new();
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(meter.epoch_callback());

        let request = ActivityRequest {
            orchestration_id: task.orchestration_id.clone(),
            activity_id: task.activity_id.clone(),
            activity_type: task.activity_type.clone(),
            discriminator: task.discriminator.clone(),
            attempt: task.attempt,
            idempotency_key: task.idempotency_key(),
            participant_id: task.participant_id.clone(),
            participant_context_id: task.participant_context_id.clone(),
            processing_data: Value::Object(task.processing_data.clone()).to_string(),
            settings: plugin.settings.clone(),
            state: task.state.as_ref().map(Value::to_string),
        };
        let budget = Duration::from_millis(plugin.limits.timeout_ms.min(task.timeout_ms.max(1)));
        let call = async {
            let instance = plugin
                .pre
                .instantiate_async(&mut store)
                .await
                .map_err(|e| (true, e))?;
            instance
                .cfm_plugin_activity()
                .call_execute(&mut store, &request)
                .await
                .map_err(|e| (false, e))
        };
        let finished = tokio::time::timeout(budget, meter.measure(call)).await;
        let dropped = store.data().logs_dropped;
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "plugin logged more than {} lines; the rest were dropped",
                crate::capability::log::MAX_LINES
            );
        }
        match finished {
            Err(_) => ActivityOutcome::Retry {
                reason: format!(
                    "plugin '{}' did not finish within {} ms",
                    plugin.name,
                    budget.as_millis()
                ),
            },
            // Instantiation fails for want of resources (pool slots): worth another try.
            Ok(Err((true, e))) => ActivityOutcome::Retry {
                reason: truncate(format!(
                    "cannot instantiate plugin '{}': {e:#}",
                    plugin.name
                )),
            },
            Ok(Err((false, e))) => ActivityOutcome::Fatal {
                reason: truncate(describe_trap(&plugin.name, &e)),
            },
            Ok(Ok(result)) => outcome(plugin, result),
        }
    }
}

#[async_trait::async_trait]
impl ActivityExecutor for AgentHost {
    async fn execute(&self, task: ActivityTask) -> ActivityOutcome {
        self.run(&task).await
    }

    fn activity_types(&self) -> Vec<String> {
        let plugins = self.plugins();
        let mut types: Vec<String> = plugins.keys().cloned().collect();
        types.sort();
        types
    }
}

fn engine(max_memory: usize, slots: u32) -> Result<Engine, HostError> {
    let mut pool = PoolingAllocationConfig::default();
    // A Rust wasip2 component holds a handful of core instances and memories; leave room
    // for every concurrent invocation plus headroom.
    let instances = slots.saturating_mul(2).max(16);
    pool.total_component_instances(instances)
        .total_core_instances(instances.saturating_mul(8))
        .total_memories(instances.saturating_mul(4))
        .total_tables(instances.saturating_mul(8))
        .total_stacks(instances)
        .max_memory_size(max_memory);
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config).map_err(|e| HostError::Engine(format!("{e:#}")))
}

/// Every plugin of `config`, by the activity types it serves.
fn load_all(
    engine: &Engine,
    config: &HostConfig,
    cache: Option<&CompileCache>,
) -> Result<HashMap<String, Arc<LoadedPlugin>>, HostError> {
    let mut by_activity_type = HashMap::new();
    for plugin in &config.plugins {
        let loaded = Arc::new(load(engine, config, plugin, cache)?);
        for activity_type in &plugin.activity_types {
            by_activity_type.insert(activity_type.clone(), loaded.clone());
        }
        tracing::info!(plugin = %plugin.name, sha256 = %plugin.sha256, types = ?plugin.activity_types, "plugin loaded");
    }
    Ok(by_activity_type)
}

/// What a configuration file and the plugin files it names look like on disk (size and
/// modification time): a change means a reload.
fn fingerprint(config_path: &Path) -> Vec<(PathBuf, Option<(u64, std::time::SystemTime)>)> {
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

/// What a component file declares, for `cfm plugin inspect`.
#[derive(Debug, Clone)]
pub struct Inspection {
    pub sha256: String,
    pub size: usize,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

impl Inspection {
    /// The capabilities it imports (`secrets`, `cluster`, `dns`, `http`; `log` needs no
    /// grant): each needs a `[plugin.grants]` entry before the host will load it.
    pub fn capabilities(&self) -> Vec<String> {
        let mut needed: Vec<String> = self
            .imports
            .iter()
            .filter_map(|import| capability(import))
            .map(str::to_string)
            .collect();
        needed.sort_unstable();
        needed.dedup();
        needed
    }
}

/// Reads and compiles a component file to list what it imports and exports.
pub fn inspect(path: &Path) -> Result<Inspection, HostError> {
    let bytes = std::fs::read(path).map_err(|source| HostError::Io {
        what: format!("reading {}", path.display()),
        source,
    })?;
    let engine = Engine::new(&Config::new()).map_err(|e| HostError::Engine(format!("{e:#}")))?;
    let component = Component::new(&engine, &bytes).map_err(|e| HostError::Load {
        plugin: path.display().to_string(),
        message: format!("not a valid component: {e:#}"),
    })?;
    let ty = component.component_type();
    Ok(Inspection {
        sha256: hex::encode(Sha256::digest(&bytes)),
        size: bytes.len(),
        imports: ty
            .imports(&engine)
            .map(|(name, _)| name.to_string())
            .collect(),
        exports: ty
            .exports(&engine)
            .map(|(name, _)| name.to_string())
            .collect(),
    })
}

/// Loads one plugin of `config` exactly as the host would (digest, signature, grants,
/// contract) without running it, for `cfm plugin check`.
pub fn check(config: &HostConfig, plugin: &PluginConfig) -> Result<(), HostError> {
    let engine = engine(plugin.limits.memory_bytes(), 1)?;
    load(&engine, config, plugin, None).map(|_| ())
}

/// The plugin's signature file must verify with one of its trusted keys.
fn check_signature(plugin: &PluginConfig, path: &Path, digest: &str) -> Result<(), HostError> {
    let signature_path = signature_path(path);
    let refused = |reason: String| HostError::Signature {
        plugin: plugin.name.clone(),
        path: signature_path.display().to_string(),
        reason,
    };
    let signature = match std::fs::read_to_string(&signature_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(refused(
                "missing, and the configuration requires a signature by a trusted key".into(),
            ));
        }
        Err(e) => return Err(refused(e.to_string())),
    };
    crate::signature::verify(&plugin.trusted_keys, digest, &signature)
        .map_err(|e| refused(e.to_string()))
}

/// Where a plugin's signature lives: beside it, `.sig` appended.
pub fn signature_path(plugin: &Path) -> std::path::PathBuf {
    let mut name = plugin.as_os_str().to_owned();
    name.push(".sig");
    name.into()
}

fn load(
    engine: &Engine,
    config: &HostConfig,
    plugin: &PluginConfig,
    cache: Option<&CompileCache>,
) -> Result<LoadedPlugin, HostError> {
    let path = config.plugin_path(plugin);
    let failed = |message: String| HostError::Load {
        plugin: plugin.name.clone(),
        message,
    };
    let bytes = std::fs::read(&path).map_err(|source| HostError::Io {
        what: format!("plugin '{}': reading {}", plugin.name, path.display()),
        source,
    })?;
    let actual = hex::encode(Sha256::digest(&bytes));
    if !actual.eq_ignore_ascii_case(&plugin.sha256) {
        return Err(HostError::Digest {
            plugin: plugin.name.clone(),
            path: path.display().to_string(),
            expected: plugin.sha256.to_ascii_lowercase(),
            actual,
        });
    }
    if !plugin.trusted_keys.is_empty() {
        check_signature(plugin, &path, &actual)?;
    }
    let component = compile(engine, &bytes, &actual, cache).map_err(|e| {
        failed(format!(
            "{} is not a valid component: {e:#}",
            path.display()
        ))
    })?;

    // Deny by default: a plugin that imports a capability its configuration does not
    // grant is refused at load time, naming the capability, rather than failing later.
    let grants = &plugin.grants;
    for (import, _) in component.component_type().imports(engine) {
        let Some(needed) = capability(import) else {
            continue;
        };
        if CAPABILITIES.contains(&needed) && !grants.opens(needed) {
            return Err(failed(format!(
                "it imports the '{needed}' capability, but its configuration grants none; add a [plugin.grants] entry for it"
            )));
        }
    }

    let mut linker: Linker<Invocation> = Linker::new(engine);
    let link = |e: wasmtime::Error| failed(format!("linking: {e:#}"));
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(link)?;
    log::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(link)?;
    // Only granted capabilities are linked.
    if grants.opens("secrets") {
        secrets::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(link)?;
    }
    if grants.opens("cluster") {
        cluster::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(link)?;
    }
    if grants.opens("dns") {
        dns::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(link)?;
    }
    let http = match &grants.http {
        Some(grant) => {
            wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(link)?;
            Some(PluginHttp::new(grant).map_err(failed)?)
        }
        None => None,
    };
    let pre = linker
        .instantiate_pre(&component)
        .and_then(ActivityPluginPre::new)
        .map_err(|e| failed(format!("does not fit the cfm:plugin contract: {e:#}")))?;
    let settings = serde_json::to_string(&plugin.settings)
        .map_err(|e| failed(format!("settings cannot be turned into JSON: {e}")))?;
    Ok(LoadedPlugin {
        name: plugin.name.as_str().into(),
        pre,
        limits: plugin.limits,
        grants: plugin.grants.clone(),
        settings,
        http,
    })
}

/// The grant an import needs: a cfm capability interface, or `http` for `wasi:http`.
/// None for what every plugin gets (`log`, `types`, the rest of WASI).
fn capability(import: &str) -> Option<&str> {
    if import.starts_with("wasi:http/") {
        return Some("http");
    }
    let interface = import.strip_prefix("cfm:plugin/")?;
    let interface = interface.split('@').next().unwrap_or(interface);
    (interface != "log" && interface != "types").then_some(interface)
}

/// Compiles a component, or loads the artifact a previous run compiled from the same
/// bytes with the same engine settings and wasmtime version.
fn compile(
    engine: &Engine,
    bytes: &[u8],
    digest: &str,
    cache: Option<&CompileCache>,
) -> wasmtime::Result<Component> {
    let Some(cache) = cache else {
        return Component::new(engine, bytes);
    };
    if let Some(component) = cache.load(engine, digest) {
        return Ok(component);
    }
    let component = Component::new(engine, bytes)?;
    cache.store(engine, digest, &component);
    Ok(component)
}

/// Checks what a plugin returned against its limits and the contract.
fn outcome(plugin: &LoadedPlugin, result: ActivityResult) -> ActivityOutcome {
    let max = plugin.limits.max_output_kib as usize * 1024;
    let object = |what: &str, json: &str| -> Result<Value, String> {
        if json.len() > max {
            return Err(format!(
                "plugin '{}' returned {} bytes of {what}, over its limit of {max}",
                plugin.name,
                json.len()
            ));
        }
        serde_json::from_str(json).map_err(|e| {
            format!(
                "plugin '{}' returned {what} that is not JSON: {e}",
                plugin.name
            )
        })
    };
    match result {
        ActivityResult::Complete(json) => match object("output", &json) {
            Ok(Value::Object(output)) => ActivityOutcome::Complete { output },
            Ok(_) => ActivityOutcome::Fatal {
                reason: format!(
                    "plugin '{}' returned output that is not a JSON object",
                    plugin.name
                ),
            },
            Err(reason) => ActivityOutcome::Fatal { reason },
        },
        ActivityResult::Reschedule(r) => match object("reschedule state", &r.state) {
            Ok(state) => ActivityOutcome::Reschedule {
                delay_ms: r.delay_ms,
                state,
            },
            Err(reason) => ActivityOutcome::Fatal { reason },
        },
        ActivityResult::Retry(reason) => ActivityOutcome::Retry {
            reason: truncate(reason),
        },
        ActivityResult::Fatal(reason) => ActivityOutcome::Fatal {
            reason: truncate(reason),
        },
    }
}

fn describe_trap(plugin: &str, error: &wasmtime::Error) -> String {
    // A failed memory grow shows only in the error chain, not as a `Trap`; the wasm
    // backtrace is for the log, the engine gets the cause.
    tracing::debug!("plugin '{plugin}' trapped: {error:?}");
    if error
        .chain()
        .any(|c| c.to_string().contains("growing memory"))
    {
        return format!("plugin '{plugin}' exceeded its memory limit");
    }
    let cause = error
        .downcast_ref::<wasmtime::Trap>()
        .map(ToString::to_string)
        .unwrap_or_else(|| error.root_cause().to_string());
    format!("plugin '{plugin}' trapped: {cause}")
}

fn truncate(mut text: String) -> String {
    if text.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// Advances the engine's epoch from a plain thread, so deadlines fire even when every
/// tokio worker is busy running guests.
struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("cfm-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch thread");
        Self { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
