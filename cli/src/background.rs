//! What a server runs besides its API, and what its `/ready` checks besides the
//! database: the engine's background work, the agent worker with its drain on shutdown,
//! and the probes of JetStream and the plugins.

use std::sync::Arc;
use std::time::Duration;

use cfm_host::AgentHost;
use cfm_manager::api::{Probe, Reading};
use cfm_queue::jetstream::JetStreamQueue;
use cfm_queue::worker::Worker;

/// What a server runs besides its API. Either part ending is fatal: a manager that
/// cannot move work must not look healthy.
pub(crate) struct Background {
    /// The relay and the reports of a manager over JetStream.
    pub(crate) engine: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// The agent worker of a process that runs activities itself.
    pub(crate) agent: Option<AgentWork>,
}

/// An agent worker running until told to drain ([`Worker::run_until`]).
pub(crate) struct AgentWork {
    pub(crate) task: tokio::task::JoinHandle<anyhow::Result<()>>,
    drain: tokio::sync::oneshot::Sender<()>,
    grace: Duration,
}

impl AgentWork {
    pub(crate) fn start(worker: Worker, grace: Duration) -> Self {
        let (drain, drained) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            worker
                .run_until(async {
                    let _ = drained.await;
                })
                .await
                .map_err(anyhow::Error::from)
        });
        Self { task, drain, grace }
    }

    /// Takes no new task and waits (up to the grace period) for the running ones to
    /// report.
    pub(crate) async fn drain(mut self) {
        let _ = self.drain.send(());
        tracing::info!(
            grace_secs = self.grace.as_secs(),
            "draining: running activities finish and report"
        );
        match tokio::time::timeout(self.grace, &mut self.task).await {
            Ok(Ok(Ok(()))) => tracing::info!("drained"),
            Ok(Ok(Err(e))) => tracing::error!("the agent worker failed while draining: {e:#}"),
            Ok(Err(e)) => tracing::error!("the agent worker stopped while draining: {e}"),
            Err(_) => {
                tracing::warn!(
                    "activities still running after the grace period are handed back to the queue"
                );
                self.task.abort();
            }
        }
    }
}

/// Ready while the JetStream server answers for this installation's stream; read at
/// scrapes for how far its consumers are behind.
pub(crate) struct JetStreamProbe(pub(crate) Arc<JetStreamQueue>);

#[async_trait::async_trait]
impl Probe for JetStreamProbe {
    fn name(&self) -> &'static str {
        "jetstream"
    }

    async fn check(&self) -> Result<(), String> {
        self.0.messages().await.map(drop).map_err(|e| e.to_string())
    }
}

#[async_trait::async_trait]
impl Reading for JetStreamProbe {
    async fn read(&self) {
        match self.0.outstanding().await {
            Ok(outstanding) => {
                let outstanding = i64::try_from(outstanding).unwrap_or(i64::MAX);
                cfm_metrics::metrics()
                    .jetstream_outstanding
                    .set(outstanding);
            }
            Err(e) => tracing::warn!("cannot read the JetStream consumers for /metrics: {e}"),
        }
    }
}

/// Ready while the host has a plugin for at least one activity type.
pub(crate) struct PluginsProbe(pub(crate) Arc<AgentHost>);

#[async_trait::async_trait]
impl Probe for PluginsProbe {
    fn name(&self) -> &'static str {
        "plugins"
    }

    async fn check(&self) -> Result<(), String> {
        let types = cfm_protocol::ActivityExecutor::activity_types(self.0.as_ref());
        if types.is_empty() {
            return Err("no plugin is loaded".into());
        }
        Ok(())
    }
}
