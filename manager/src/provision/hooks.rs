//! How the engine tells the layer above it that an orchestration ended, without knowing
//! that layer: the tenant manager implements [`OrchestrationHooks`] and hands it to
//! [`Engine::with_hooks`], so the engine never imports the tenant manager.

use std::sync::Arc;

use crate::error::Result;
use crate::model::{OrchestrationState, PluginDigest, Properties};
use crate::provision::Engine;
use crate::store::Conn;

/// Called by the engine at the points of an orchestration's life that the layer above
/// it acts on.
#[async_trait::async_trait]
pub trait OrchestrationHooks: Send + Sync + 'static {
    /// An orchestration has just completed or errored. Runs inside the transaction that
    /// ends it, so what the hook writes (and any orchestration it starts through `engine`)
    /// commits or rolls back with the end itself.
    async fn finished(
        &self,
        engine: &Engine,
        conn: &mut Conn,
        finished: &Finished<'_>,
    ) -> Result<()>;

    /// Whether `correlation_id` is something this layer owns (a participant profile), so
    /// that orchestrations started from outside it (manifests) may not address it.
    async fn claims(&self, _conn: &mut Conn, _correlation_id: &str) -> Result<bool> {
        Ok(false)
    }

    /// The tenant whose events an orchestration is (a participant's tenant), as an SQL
    /// scalar expression over the `orchestrations` row, text or NULL: the engine reads it
    /// in the statements that start and end the orchestration rather than in a query
    /// of its own.
    fn tenant_sql(&self) -> &'static str {
        "CAST(NULL AS TEXT)"
    }
}

/// An orchestration that has just completed or errored.
pub struct Finished<'a> {
    /// The orchestration's id.
    pub id: &'a str,
    /// What it worked on: the participant profile's id for deploys and disposes.
    pub correlation_id: &'a str,
    /// The template it ran from: compensation runs that template's dispose.
    pub definition_id: &'a str,
    /// Which version of that template.
    pub definition_version: i64,
    /// Which of the template's activity lists it ran (deploy, dispose, ...).
    pub orchestration_type: &'a str,
    /// How it ended: [`OrchestrationState::Completed`] or [`OrchestrationState::Errored`].
    pub state: OrchestrationState,
    /// Base data plus every completed activity's output: what compensation starts from.
    pub processing_data: &'a Properties,
    /// The completed activities' outputs alone, without the base data.
    pub output_data: &'a Properties,
    /// Why it errored: which activity failed and how, or who cancelled it.
    pub error_detail: Option<&'a str>,
    /// Which plugin ran each activity of a completed orchestration, where the agent
    /// named it (carried steps keep theirs); empty when it errored.
    pub plugin_digests: &'a [PluginDigest],
}

/// Hooks that do nothing: an engine with nobody above it.
pub struct NoHooks;

#[async_trait::async_trait]
impl OrchestrationHooks for NoHooks {
    async fn finished(&self, _: &Engine, _: &mut Conn, _: &Finished<'_>) -> Result<()> {
        Ok(())
    }
}

pub(crate) fn none() -> Arc<dyn OrchestrationHooks> {
    Arc::new(NoHooks)
}
