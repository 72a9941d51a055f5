//! One invocation: a fresh store with the plugin's limits, WASI with nothing granted and
//! the capabilities scoped to the task's participant, run against the time budget.

use std::sync::Arc;
use std::time::Duration;

use cfm_protocol::{ActivityOutcome, ActivityTask, CapabilityCall, orchestration_types};
use serde_json::Value;
use wasmtime::component::ResourceTable;
use wasmtime::{Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::load::LoadedPlugin;
use super::{AgentHost, outcome};
use crate::bindings::cfm::plugin::types::ActivityRequest;
use crate::capability::dry_run::DriftLog;
use crate::capability::{CallContext, Capabilities};
use crate::fairness::CpuMeter;

/// Why a started invocation returned no result.
pub(super) enum Failure {
    /// No instance could be made, for want of resources (pool slots) most likely.
    Instantiate(wasmtime::Error),
    /// The plugin trapped or ran out of memory while running.
    Call(wasmtime::Error),
}

impl AgentHost {
    /// Runs `task` in a fresh instance of `plugin`; the caller holds a slot. With the
    /// outcome come the capability calls the invocation made, whatever the outcome: a
    /// plugin that wrote and then timed out or trapped did write.
    pub(super) async fn invoke(
        &self,
        plugin: &LoadedPlugin,
        task: &ActivityTask,
    ) -> (ActivityOutcome, Vec<CapabilityCall>) {
        let mut store = Store::new(&self.inner.engine, self.invocation(plugin, task));
        store.limiter(|s| &mut s.limits);
        // Yield to the executor on every tick so a CPU-bound guest can be cancelled by
        // dropping its future and never starves other invocations; slow it down once it
        // has computed for long (see `fairness`).
        let meter = CpuMeter::new();
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(meter.epoch_callback());

        // The dry-run mark follows the backends the invocation really has.
        let request = request(plugin, task, store.data().capabilities.drift().is_some());
        let budget = Duration::from_millis(plugin.limits.timeout_ms.min(task.timeout_ms.max(1)));
        let call = async {
            let instance = plugin
                .pre
                .instantiate_async(&mut store)
                .await
                .map_err(Failure::Instantiate)?;
            instance
                .cfm_plugin_activity()
                .call_execute(&mut store, &request)
                .await
                .map_err(Failure::Call)
        };
        let finished = tokio::time::timeout(budget, meter.measure(call)).await;
        let dropped = store.data().capabilities.logs_dropped();
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "plugin logged more than {} lines; the rest were dropped",
                crate::capability::log::MAX_LINES
            );
        }
        let capabilities = &store.data().capabilities;
        let outcome = match finished {
            Err(_) => outcome::timed_out(plugin, budget),
            Ok(ran) => outcome::of_run(plugin, ran, capabilities),
        };
        (outcome, capabilities.take_reported_calls())
    }

    /// The store data of one invocation of `plugin` for `task`.
    fn invocation(&self, plugin: &LoadedPlugin, task: &ActivityTask) -> Invocation {
        let drift = (task.discriminator == orchestration_types::VPA_VERIFY)
            .then(|| Arc::new(DriftLog::default()));
        let backends = {
            let (cell_id, external_id) = acting_cell(task);
            self.inner.backends.for_cell(cell_id, external_id)
        };
        let calls = CallContext {
            plugin: plugin.name.clone(),
            orchestration_id: task.orchestration_id.clone(),
            activity_id: task.activity_id.clone(),
            activity_type: task.activity_type.clone(),
            participant_context_id: task.participant_context_id.clone(),
            idempotency_key: task.idempotency_key(),
            grants: plugin.grants.scoped(&task.participant_context_id),
            backends: match &drift {
                Some(drift) => backends.dry_run(drift.clone()),
                None => backends,
            },
            audit: self.inner.audit.clone(),
            denials: Default::default(),
            spans: Default::default(),
            used_tokens: Default::default(),
            reported: Default::default(),
            drift,
        };
        Invocation {
            // Nothing inherited: no environment, no files, no sockets, no stdio.
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(plugin.limits.memory_bytes())
                .trap_on_grow_failure(true)
                .build(),
            http_ctx: WasiHttpCtx::new(),
            capabilities: Capabilities::new(calls, plugin.http.clone()),
        }
    }
}

/// The per-invocation store data: WASI state with nothing granted, plus the capabilities.
pub(super) struct Invocation {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    http_ctx: WasiHttpCtx,
    capabilities: Capabilities,
}

impl Invocation {
    /// The projection every cfm capability interface is linked through.
    pub(super) fn capabilities(&mut self) -> &mut Capabilities {
        &mut self.capabilities
    }
}

impl WasiView for Invocation {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Linked only for plugins with an `http` grant; every request passes the capability's
/// hooks.
impl WasiHttpView for Invocation {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http_ctx,
            table: &mut self.table,
            hooks: self.capabilities.http(),
        }
    }
}

/// What the plugin's `execute` is called with.
/// `dry_run`: the invocation's writes are dry runs, which the plugin is told.
fn request(plugin: &LoadedPlugin, task: &ActivityTask, dry_run: bool) -> ActivityRequest {
    ActivityRequest {
        orchestration_id: task.orchestration_id.clone(),
        activity_id: task.activity_id.clone(),
        activity_type: task.activity_type.clone(),
        discriminator: task.discriminator.clone(),
        attempt: task.attempt,
        idempotency_key: task.idempotency_key(),
        participant_id: task.participant_id.clone(),
        participant_context_id: task.participant_context_id.clone(),
        processing_data: {
            let mut data = task.processing_data.clone();
            if dry_run {
                data.insert(cfm_protocol::keys::DRY_RUN.into(), Value::Bool(true));
            }
            Value::Object(data).to_string()
        },
        settings: plugin.settings.clone(),
        state: task.state.as_ref().map(Value::to_string),
    }
}

/// The cell an activity acts on, its id and external id: its first VPA's, from the
/// server-owned VPA data.
fn acting_cell(task: &ActivityTask) -> (&str, &str) {
    let vpa = task
        .processing_data
        .get(cfm_protocol::keys::VPA_DATA)
        .and_then(|vpas| vpas.get(0));
    let field = |name: &str| {
        vpa.and_then(|vpa| vpa.get(name))
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    (field("cellId"), field("externalCellId"))
}
