//! SQLite's writer and the work that holds it, kept on one CPU.
//!
//! sqlx runs each SQLite connection on a thread of its own: every statement is handed to
//! that thread and its answer handed back, two thread wake-ups per statement. SQLite has
//! one writer, so the write transactions' statements run one after another and their
//! hand-offs add up to the engine's throughput. When the two threads sit on different
//! CPUs, each wake-up is an inter-processor interrupt; on a virtual machine an idle
//! virtual CPU takes tens of microseconds to wake, five times the statement. Measured on
//! a 2-vCPU machine: an idle `SELECT $1` took 41 µs through the driver across CPUs and
//! 7.4 µs with both threads on one.
//!
//! So the write connection is opened from a thread pinned to one CPU (its worker thread
//! inherits the pinning), and that thread runs a runtime of its own for the writer's
//! busiest users ([`crate::store::Db::writer_runtime`]): the engine applying activity outcomes
//! and the API starting onboardings hand their statements over without leaving the CPU.
//! Everything else runs on the process's runtime, on every CPU. The connection is never
//! recycled: opened again from another thread, its worker would not be pinned.

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::error::{ManagerError, Result};

/// A thread pinned to one CPU, running a current-thread runtime until dropped.
pub(crate) struct WriterThread {
    handle: Handle,
    /// Dropped with this, which ends the thread's runtime.
    _stop: oneshot::Sender<()>,
}

impl WriterThread {
    /// Starts the thread on one of the CPUs this process may use, or unpinned where the
    /// affinity cannot be read or set (the pinning is a speed-up, never a requirement).
    pub(crate) fn start() -> Result<Self> {
        let (ready, started) = std::sync::mpsc::sync_channel(1);
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("cfm-sqlite-writer".into())
            .spawn(move || {
                pin_to_one_cpu();
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                let _ = ready.send(Ok(runtime.handle().clone()));
                // Until the sender is dropped: nothing is ever sent.
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })
            .map_err(|e| ManagerError::Io(format!("starting the SQLite writer thread: {e}")))?;
        let handle = started
            .recv()
            .map_err(|_| ManagerError::Io("the SQLite writer thread did not start".into()))?
            .map_err(|e| ManagerError::Io(format!("the SQLite writer thread's runtime: {e}")))?;
        Ok(Self {
            handle,
            _stop: stop,
        })
    }

    /// Where to spawn work that should share the writer's CPU.
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }
}

/// Restricts the calling thread to one of the CPUs it may run on, chosen by process id
/// so that several servers on one host do not all crowd the same CPU.
fn pin_to_one_cpu() {
    use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};
    let Ok(allowed) = sched_getaffinity(None) else {
        return;
    };
    let allowed: Vec<usize> = (0..CpuSet::MAX_CPU)
        .filter(|&cpu| allowed.is_set(cpu))
        .collect();
    if allowed.is_empty() {
        return;
    }
    let mut one = CpuSet::new();
    one.set(allowed[std::process::id() as usize % allowed.len()]);
    if let Err(e) = sched_setaffinity(None, &one) {
        tracing::debug!("the SQLite writer thread stays unpinned: {e}");
    }
}
