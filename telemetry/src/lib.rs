//! Traces across cfm's processes. A trace starts at the REST call (or continues the
//! caller's `traceparent`), is stored with the orchestration it starts, travels in each
//! activity task to the agent host that runs it, and from there into the `traceparent`
//! header of the plugin's outbound HTTP. Spans are exported over OTLP when an endpoint
//! is configured; without one every function here does nothing.

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use tracing::Span;
use tracing::subscriber::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

mod export_failures;

/// The W3C header (and task field) that carries the trace context.
pub const TRACEPARENT: &str = "traceparent";

/// Why spans cannot be exported.
#[derive(Debug, thiserror::Error)]
#[error("cannot export traces to {endpoint}: {detail}")]
pub struct TelemetryError {
    endpoint: String,
    detail: String,
}

/// Whether `value` has the form of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`):
/// what a carrier that is not HTTP (a queue message's header) may take, since a malformed
/// value could fail the message it rides on or win over a well-formed copy elsewhere.
pub fn is_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex =
        |part: &str, len: usize| part.len() == len && part.bytes().all(|b| b.is_ascii_hexdigit());
    parts.len() == 4
        && hex(parts[0], 2)
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
}

/// The `traceparent` of the current span, when it belongs to an exported trace.
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&Span::current())
}

/// The `traceparent` of `span`, when it belongs to an exported trace.
pub fn traceparent_of(span: &Span) -> Option<String> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Makes `span` a child of the span `traceparent` names (another process's, say). A
/// malformed value starts no trace of its own making: the span stays a root.
pub fn continue_trace(span: &Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent else {
        return;
    };
    let carrier = HashMap::from([(TRACEPARENT.to_string(), traceparent.to_string())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    if context.span().span_context().is_valid() {
        let _ = span.set_parent(context);
    }
}

/// [`continue_trace`] from a request's `traceparent` header.
pub fn continue_from_headers(span: &Span, headers: &http::HeaderMap) {
    let traceparent = headers.get(TRACEPARENT).and_then(|v| v.to_str().ok());
    continue_trace(span, traceparent);
}

/// Sets `traceparent` on outgoing headers, replacing what was there; without one,
/// removes it, so a caller cannot pass a trace of its own choosing on as cfm's.
pub fn inject(headers: &mut http::HeaderMap, traceparent: Option<&str>) {
    headers.remove(TRACEPARENT);
    // Vendor state belongs to the trace it came with, which is not the one set here.
    headers.remove("tracestate");
    if let Some(value) = traceparent.and_then(|t| http::HeaderValue::from_str(t).ok()) {
        headers.insert(TRACEPARENT, value);
    }
}

/// A layer that gives spans trace ids without exporting them anywhere: for tests of
/// propagation, which need spans that belong to a trace.
pub fn unexported_layer<S>() -> impl Layer<S>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    let tracer = SdkTracerProvider::builder().build().tracer("cfm-test");
    tracing_opentelemetry::layer().with_tracer(tracer)
}

/// Whether a log event is kept beside an [`Exporter`]: not the OTLP exporter's line for
/// each batch it gave up on (`Export.Failed.*`), since the exporter logs its failures
/// itself, the first and then a summary a minute. For the log lines' layer.
pub fn not_a_per_batch_export_failure(event: &tracing::Metadata<'_>) -> bool {
    !(event.target() == "opentelemetry-otlp" && event.name().starts_with("Export.Failed"))
}

/// Exports the spans of a process to an OTLP collector; flushes what is buffered when
/// shut down. A collector that is away is logged once, then summed up once a minute
/// ([`not_a_per_batch_export_failure`] keeps the exporter's own line per batch out).
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// An exporter to `endpoint` (the collector's base URL, e.g. `http://otel:4318`; spans
    /// go to `/v1/traces` as OTLP/HTTP JSON) naming the process `service`, and the layer
    /// that feeds it tracing's spans.
    ///
    /// Built on a thread of its own: the exporter's HTTP client runs its own runtime,
    /// which may be neither made nor dropped inside an async one.
    pub fn start<S>(
        endpoint: &str,
        service: &'static str,
    ) -> Result<(Exporter, impl Layer<S>), TelemetryError>
    where
        S: Subscriber + for<'span> LookupSpan<'span>,
    {
        let fail = |detail: String| TelemetryError {
            endpoint: export_failures::without_credentials(endpoint),
            detail,
        };
        // The exporter's client is built without TLS: spans go to a collector on the
        // node or in the cluster (an agent or sidecar), which forwards them onward.
        let base = endpoint.trim_end_matches('/');
        match base.split_once("://") {
            Some(("http", rest)) if !rest.is_empty() => {}
            Some(("https", _)) => {
                return Err(fail(
                    "https is not supported: send to a collector over http (a node-local agent or sidecar)".into(),
                ));
            }
            _ => return Err(fail("not an http:// URL".into())),
        }
        let url = format!("{base}/v1/traces");
        let built = std::thread::spawn(move || {
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpJson)
                .with_endpoint(url)
                .with_timeout(Duration::from_secs(5))
                .build()
                .map_err(|e| e.to_string())
        })
        .join()
        .map_err(|_| fail("the exporter could not be built".into()))?
        .map_err(fail)?;
        // A second between exports: traces show up while an onboarding runs.
        let built = export_failures::Reporting::new(built, base);
        let processor = BatchSpanProcessor::builder(built)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_scheduled_delay(Duration::from_secs(1))
                    .build(),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            // Every span is recorded: a caller's `traceparent` flags cannot switch
            // tracing off for the work its request starts.
            .with_sampler(Sampler::AlwaysOn)
            .with_resource(Resource::builder().with_service_name(service).build())
            .build();
        let tracer = provider.tracer("cfm");
        Ok((
            Exporter { provider },
            tracing_opentelemetry::layer().with_tracer(tracer),
        ))
    }

    /// Exports what is buffered and stops; on a thread of its own, as [`Exporter::start`].
    pub fn shutdown(self) {
        let provider = self.provider;
        let _ = std::thread::spawn(move || provider.shutdown()).join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::prelude::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// Records the targets and names of the events it sees.
    #[derive(Clone, Default)]
    struct Seen(std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>);

    impl<S: Subscriber> Layer<S> for Seen {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let meta = event.metadata();
            let mut seen = self.0.lock().unwrap();
            seen.push((meta.target().to_string(), meta.name().to_string()));
        }
    }

    #[test]
    fn the_exporters_line_per_failed_batch_is_left_out_of_the_log() {
        let seen = Seen::default();
        let filter = tracing_subscriber::filter::filter_fn(not_a_per_batch_export_failure);
        let subscriber = tracing_subscriber::registry().with(seen.clone().with_filter(filter));
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(name: "Export.Failed.Exhausted", target: "opentelemetry-otlp", "lost");
            tracing::warn!(name: "Export.Failed.Exhausted", target: "cfm", "not the exporter's");
            tracing::warn!(name: "HttpTraceClient.PartialSuccess", target: "opentelemetry-otlp", "kept");
        });
        let seen = seen.0.lock().unwrap().clone();
        let kept: Vec<(&str, &str)> = seen.iter().map(|(t, n)| (t.as_str(), n.as_str())).collect();
        assert_eq!(
            kept,
            [
                ("cfm", "Export.Failed.Exhausted"),
                ("opentelemetry-otlp", "HttpTraceClient.PartialSuccess")
            ]
        );
    }

    #[test]
    fn only_a_w3c_traceparent_is_one() {
        assert!(is_traceparent(PARENT));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e473x-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nx: y",
        ] {
            assert!(!is_traceparent(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_span_continues_the_trace_it_is_given_and_passes_it_on() {
        let subscriber = tracing_subscriber::registry().with(unexported_layer());
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("activity");
            continue_trace(&span, Some(PARENT));
            let child = traceparent_of(&span).expect("a span of an exported trace");
            assert!(
                child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
                "{child}"
            );
            assert_ne!(child, PARENT, "its own span id");

            let mut headers = http::HeaderMap::new();
            headers.insert(TRACEPARENT, http::HeaderValue::from_static("00-forged"));
            inject(&mut headers, Some(&child));
            assert_eq!(headers[TRACEPARENT], child.as_str());
            inject(&mut headers, None);
            assert!(
                headers.get(TRACEPARENT).is_none(),
                "a caller's header is not passed on"
            );
        });
    }

    #[test]
    fn a_malformed_traceparent_leaves_the_span_a_root() {
        let subscriber = tracing_subscriber::registry().with(unexported_layer());
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("activity");
            continue_trace(&span, Some("not-a-traceparent"));
            let own = traceparent_of(&span).expect("its own trace");
            assert!(!own.contains("4bf92f3577b34da6a3ce929d0e0e4736"));
        });
    }

    #[test]
    fn without_an_exporting_layer_there_is_nothing_to_pass_on() {
        let span = tracing::info_span!("activity");
        assert_eq!(traceparent_of(&span), None);
    }

    #[test]
    fn only_http_collectors_are_accepted() {
        type Registry = tracing_subscriber::Registry;
        for endpoint in ["https://otel:4318", "", "otel:4318", "http://"] {
            assert!(
                Exporter::start::<Registry>(endpoint, "cfm").is_err(),
                "{endpoint}"
            );
        }
        let refused = Exporter::start::<Registry>("https://cfm:s3cret@otel:4318", "cfm")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(refused.contains("https://otel:4318"), "{refused}");
        assert!(!refused.contains("s3cret"), "{refused}");
    }
}
