//! Applying many outcomes in one transaction: the group commit behind both report paths.
//!
//! Outcomes arrive from many tasks at once: the embedded workers, the reports consumer.
//! Applied alone, each costs a transaction of its own: a commit that waits for the disk,
//! a turn of SQLite's one writer, and on PostgreSQL two round trips for begin and commit.
//! A [`GroupCommit`] applies whatever queued up while its last transaction ran in the
//! next one, so transactions grow with the load, and an outcome arriving at an idle
//! engine waits for nobody.

use std::sync::Arc;

use cfm_protocol::ActivityReport;
use tokio::sync::{Mutex, mpsc, oneshot};
use tracing::Instrument;

use super::Engine;
use crate::error::{ManagerError, Result};
use crate::store;

/// Outcomes applied in one transaction at most: bounds how long one transaction holds
/// its orchestrations' locks, and how much one failure sends back to be applied alone.
const MAX_BATCH: usize = 64;

/// Applies outcomes handed to it from any number of tasks in as few transactions as
/// their arrival allows. Clones share the writers, which stop once every clone is gone.
#[derive(Clone)]
pub struct GroupCommit {
    waiting: mpsc::Sender<Waiting>,
}

/// An outcome in line, and who waits for it to be applied.
struct Waiting {
    report: ActivityReport,
    applied: oneshot::Sender<Result<()>>,
}

impl GroupCommit {
    /// Applies outcomes to `engine` in up to `writers` (at least 1) transactions at once;
    /// on SQLite, on the write connection's CPU ([`store::Db::writer_runtime`]).
    pub fn spawn(engine: Engine, writers: usize) -> Self {
        let writers = writers.max(1);
        let (waiting, line) = mpsc::channel(MAX_BATCH * writers);
        let line = Arc::new(Mutex::new(line));
        let runtime = engine.db().writer_runtime().cloned();
        for _ in 0..writers {
            let writer = write(engine.clone(), line.clone());
            match &runtime {
                Some(runtime) => runtime.spawn(writer),
                None => tokio::spawn(writer),
            };
        }
        Self { waiting }
    }

    /// Applies one outcome, in a transaction with whatever else is waiting; returns once
    /// that transaction committed (or this outcome, applied alone after all, failed).
    pub async fn apply(&self, report: ActivityReport) -> Result<()> {
        let (applied, outcome) = oneshot::channel();
        self.waiting
            .send(Waiting { report, applied })
            .await
            .map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }
}

/// One writer: takes what is in line (waiting for the first), applies it, answers.
async fn write(engine: Engine, line: Arc<Mutex<mpsc::Receiver<Waiting>>>) {
    let mut taken = Vec::with_capacity(MAX_BATCH);
    loop {
        // The line is held only while taking from it: other writers take the next batch
        // while this one is applied.
        if line.lock().await.recv_many(&mut taken, MAX_BATCH).await == 0 {
            return;
        }
        let (reports, answers): (Vec<_>, Vec<_>) = taken
            .drain(..)
            .map(|waiting| (waiting.report, waiting.applied))
            .unzip();
        let results = engine.apply_reports(reports).await;
        for (answer, result) in answers.into_iter().zip(results) {
            // Whoever asked may have stopped waiting (its task was aborted): the outcome
            // is applied all the same, and its redelivery is dropped as stale.
            let _ = answer.send(result);
        }
    }
}

fn stopped() -> ManagerError {
    ManagerError::Stopped("the writer applying activity outcomes has stopped")
}

impl Engine {
    /// Applies `reports` in one transaction; one result per report, in their order. When
    /// any of them fails, nothing of the transaction stays and each is applied alone
    /// instead, so a report that cannot be applied fails alone.
    ///
    /// Within the transaction, reports are applied in the order of their orchestrations'
    /// ids, so that transactions applying reports of the same orchestrations lock them in
    /// one order. Hooks of finished orchestrations lock other rows too, so transactions
    /// can still deadlock on PostgreSQL: the loser's reports are applied alone.
    pub async fn apply_reports(&self, reports: Vec<ActivityReport>) -> Vec<Result<()>> {
        if reports.len() <= 1 {
            return self.apply_reports_alone(reports).await;
        }
        match self.claiming_outcomes().apply_together(&reports).await {
            Ok(()) => {
                tracing::debug!(reports = reports.len(), "applied reports together");
                reports.iter().map(|_| Ok(())).collect()
            }
            Err(e) => {
                tracing::info!(
                    reports = reports.len(),
                    "cannot apply reports together, applying each alone: {e}"
                );
                self.apply_reports_alone(reports).await
            }
        }
    }

    async fn apply_reports_alone(&self, reports: Vec<ActivityReport>) -> Vec<Result<()>> {
        let mut results = Vec::with_capacity(reports.len());
        for report in reports {
            results.push(self.apply_report(report).await);
        }
        results
    }

    /// Applies every report in one transaction through a [`Engine::claiming_outcomes`] clone.
    async fn apply_together(&self, reports: &[ActivityReport]) -> Result<()> {
        let mut order: Vec<&ActivityReport> = reports.iter().collect();
        order.sort_by(|a, b| a.task.orchestration_id.cmp(&b.task.orchestration_id));
        let mut tx = store::write(self.db()).await?;
        for report in order {
            let span = super::apply_span(report);
            self.apply_within(&mut tx, report).instrument(span).await?;
        }
        tx.commit().await?;
        self.committed();
        Ok(())
    }
}
