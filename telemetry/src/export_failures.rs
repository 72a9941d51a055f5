//! Failed exports, logged once and then summed up, not once per batch.
//!
//! While the collector is away every batch fails, once a second when spans are made; the
//! SDK logs each failure as an error of its own. [`Reporting`] takes the failures from the
//! exporter before the SDK sees them: it logs the first, then at most one line per
//! [`SUMMARY_EVERY`] with how many batches and spans were lost meanwhile, and one line
//! when exports go through again. Each failure counts in `cfm_trace_export_failures_total`,
//! for an alert on a collector that stays away.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

/// How often a collector that stays away is logged again.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// An exporter whose failures are logged by [`Failures`]' rule; the batch processor
/// sees every export succeed.
pub struct Reporting<E> {
    inner: E,
    endpoint: String,
    failures: Mutex<Failures>,
}

impl<E> Reporting<E> {
    /// `inner`, sending to `endpoint` (named in the log lines without any credentials
    /// its URL carries).
    pub fn new(inner: E, endpoint: &str) -> Self {
        Self {
            inner,
            endpoint: without_credentials(endpoint),
            failures: Mutex::new(Failures::new(SUMMARY_EVERY)),
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, Failures> {
        // Nothing panics while holding it, so a poisoned lock still guards sound data.
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<E: fmt::Debug> fmt::Debug for Reporting<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reporting")
            .field("inner", &self.inner)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl<E: SpanExporter> SpanExporter for Reporting<E> {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        let spans = batch.len() as u64;
        let export = self.inner.export(batch);
        async move {
            let result = export.await;
            let noted = match &result {
                Ok(()) => self.failures().succeeded(),
                Err(_) => {
                    cfm_metrics::metrics().trace_export_failures.inc();
                    self.failures().failed(Instant::now(), spans)
                }
            };
            match (noted, result) {
                (Some(lost), Err(e)) => tracing::warn!(
                    endpoint = %self.endpoint,
                    batches = lost.batches,
                    spans = lost.spans,
                    "cannot export traces ({e}); spans are dropped until the collector answers, logged again in {} s",
                    SUMMARY_EVERY.as_secs()
                ),
                (Some(lost), Ok(())) => tracing::info!(
                    endpoint = %self.endpoint,
                    batches = lost.batches,
                    spans = lost.spans,
                    "exporting traces again; dropped while the collector was away"
                ),
                (None, _) => {}
            }
            Ok(())
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// `url` without the `user:password@` of its authority, if it has one.
pub(crate) fn without_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_ends = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_ends].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// What was lost since the last line logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lost {
    /// Batches whose export failed.
    pub batches: u64,
    /// The spans in them.
    pub spans: u64,
}

/// When a failed or a recovered export is logged: the first failure, then one summary
/// per `every` while they go on, and the first success after them.
#[derive(Debug)]
struct Failures {
    every: Duration,
    /// When the last failure was logged; `None` while exports go through.
    logged_at: Option<Instant>,
    /// Lost since that line, and over the whole outage.
    since_logged: Lost,
    outage: Lost,
}

impl Failures {
    fn new(every: Duration) -> Self {
        Self {
            every,
            logged_at: None,
            since_logged: Lost::default(),
            outage: Lost::default(),
        }
    }

    /// A batch of `spans` failed at `now`: what to log, if anything.
    fn failed(&mut self, now: Instant, spans: u64) -> Option<Lost> {
        for lost in [&mut self.since_logged, &mut self.outage] {
            lost.batches += 1;
            lost.spans += spans;
        }
        if self
            .logged_at
            .is_some_and(|at| now.saturating_duration_since(at) < self.every)
        {
            return None;
        }
        self.logged_at = Some(now);
        Some(std::mem::take(&mut self.since_logged))
    }

    /// A batch went through: the whole outage's losses when it ends one.
    fn succeeded(&mut self) -> Option<Lost> {
        self.logged_at.take()?;
        self.since_logged = Lost::default();
        Some(std::mem::take(&mut self.outage))
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::{Context, Poll, Waker};

    use opentelemetry_sdk::error::OTelSdkError;

    use super::*;

    #[test]
    fn the_first_failure_is_logged_then_one_summary_a_period_and_the_recovery() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut failures = Failures::new(Duration::from_secs(60));
        assert_eq!(
            failures.succeeded(),
            None,
            "nothing to say while exports work"
        );
        let first = failures.failed(at(0), 3);
        assert_eq!(
            first,
            Some(Lost {
                batches: 1,
                spans: 3
            })
        );
        for s in 1..60 {
            assert_eq!(failures.failed(at(s), 2), None, "quiet at {s} s");
        }
        assert_eq!(
            failures.failed(at(60), 2),
            Some(Lost {
                batches: 60,
                spans: 120
            }),
            "a minute on: the batches since the first line"
        );
        assert_eq!(failures.failed(at(61), 5), None);
        assert_eq!(
            failures.succeeded(),
            Some(Lost {
                batches: 62,
                spans: 128
            }),
            "the recovery sums up the whole outage"
        );
        assert_eq!(failures.succeeded(), None, "said once");
        assert_eq!(
            failures.failed(at(62), 1),
            Some(Lost {
                batches: 1,
                spans: 1
            }),
            "a new outage is logged at once"
        );
    }

    /// Fails or succeeds as told; remembers being given a resource.
    #[derive(Debug, Default)]
    struct Told {
        fail: AtomicBool,
        resource: AtomicBool,
    }

    impl SpanExporter for Told {
        fn export(&self, _batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
            std::future::ready(if self.fail.load(Ordering::SeqCst) {
                Err(OTelSdkError::InternalFailure("connection refused".into()))
            } else {
                Ok(())
            })
        }

        fn set_resource(&mut self, _resource: &Resource) {
            self.resource.store(true, Ordering::SeqCst);
        }
    }

    fn export(exporter: &Reporting<Told>) -> OTelSdkResult {
        let mut export = pin!(exporter.export(Vec::new()));
        match export
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            Poll::Ready(result) => result,
            Poll::Pending => panic!("the export waits on nothing"),
        }
    }

    #[test]
    fn the_endpoint_is_logged_without_credentials() {
        let exporter = Reporting::new(Told::default(), "http://cfm:s3cret@otel:4318/base");
        assert_eq!(exporter.endpoint, "http://otel:4318/base");
        assert_eq!(
            without_credentials("http://otel:4318/a@b"),
            "http://otel:4318/a@b"
        );
        assert_eq!(without_credentials("http://otel:4318"), "http://otel:4318");
    }

    #[test]
    fn the_batch_processor_sees_no_failure_and_the_exporter_gets_its_resource() {
        let mut exporter = Reporting::new(Told::default(), "http://127.0.0.1:9");
        exporter.set_resource(&Resource::builder().with_service_name("cfm").build());
        assert!(exporter.inner.resource.load(Ordering::SeqCst));
        exporter.inner.fail.store(true, Ordering::SeqCst);
        let counted = cfm_metrics::metrics().trace_export_failures.get();
        assert!(export(&exporter).is_ok(), "failures stop here");
        assert!(export(&exporter).is_ok());
        assert_eq!(exporter.failures().outage.batches, 2, "and are counted");
        assert_eq!(
            cfm_metrics::metrics().trace_export_failures.get() - counted,
            2,
            "in the metrics too"
        );
        exporter.inner.fail.store(false, Ordering::SeqCst);
        assert!(export(&exporter).is_ok());
        assert_eq!(
            exporter.failures().outage,
            Lost::default(),
            "the outage ended"
        );
    }
}
