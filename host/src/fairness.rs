//! CPU fairness between invocations that share the executor's threads.
//!
//! At every epoch tick a running guest yields, so other invocations on its thread get a
//! turn and a guest past its deadline can be dropped. That alone still lets a runaway
//! guest hold a whole core until its deadline; on a small host that slows everyone else.
//! So a guest that has computed for more than [`FULL_SPEED`] is slowed to a fifth of a
//! core: at each further tick it sleeps [`THROTTLE_PAUSE`]. Compute time is the time
//! spent polling the invocation's future, so waiting on the network or a backend never
//! counts; only a plugin that really computes that long is slowed.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wasmtime::{StoreContextMut, UpdateDeadline};

/// Compute an invocation may use at full speed.
pub const FULL_SPEED: Duration = Duration::from_millis(200);
/// What a guest past [`FULL_SPEED`] sleeps at each epoch tick (four ticks of 10 ms).
pub const THROTTLE_PAUSE: Duration = Duration::from_millis(40);

/// How long one invocation has been executing: the sum of its polls so far, plus the
/// poll running now.
#[derive(Debug)]
pub struct CpuMeter {
    base: Instant,
    busy_nanos: AtomicU64,
    /// Nanoseconds after `base` when the running poll started; 0 between polls.
    polling_since: AtomicU64,
}

impl CpuMeter {
    /// A meter that has counted nothing yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            busy_nanos: AtomicU64::new(0),
            polling_since: AtomicU64::new(0),
        })
    }

    /// Compute used so far.
    pub fn busy(&self) -> Duration {
        let running = match self.polling_since.load(Ordering::Relaxed) {
            0 => 0,
            since => self.now().saturating_sub(since),
        };
        Duration::from_nanos(self.busy_nanos.load(Ordering::Relaxed) + running)
    }

    /// Runs `future`, counting the time spent polling it.
    pub async fn measure<F: Future>(self: &Arc<Self>, future: F) -> F::Output {
        let mut future = std::pin::pin!(future);
        std::future::poll_fn(|cx| {
            // Never 0, which means "not polling".
            let started = self.now().max(1);
            self.polling_since.store(started, Ordering::Relaxed);
            let poll = future.as_mut().poll(cx);
            self.polling_since.store(0, Ordering::Relaxed);
            self.busy_nanos
                .fetch_add(self.now().saturating_sub(started), Ordering::Relaxed);
            poll
        })
        .await
    }

    /// The store's epoch callback: yield at every tick, and sleep once past [`FULL_SPEED`].
    pub fn epoch_callback<T>(
        self: &Arc<Self>,
    ) -> impl FnMut(StoreContextMut<'_, T>) -> wasmtime::Result<UpdateDeadline> + Send + Sync + 'static
    {
        let meter = self.clone();
        move |_| {
            let pause: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> =
                if meter.busy() < FULL_SPEED {
                    Box::pin(tokio::task::yield_now())
                } else {
                    Box::pin(tokio::time::sleep(THROTTLE_PAUSE))
                };
            Ok(UpdateDeadline::YieldCustom(1, pause))
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiting_does_not_count_as_compute() {
        let meter = CpuMeter::new();
        meter
            .measure(tokio::time::sleep(Duration::from_millis(50)))
            .await;
        assert!(
            meter.busy() < Duration::from_millis(20),
            "{:?}",
            meter.busy()
        );
        meter
            .measure(async {
                let started = Instant::now();
                while started.elapsed() < Duration::from_millis(30) {
                    std::hint::spin_loop();
                }
            })
            .await;
        assert!(
            meter.busy() >= Duration::from_millis(30),
            "{:?}",
            meter.busy()
        );
    }
}
