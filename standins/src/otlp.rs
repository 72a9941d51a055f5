//! An OpenTelemetry collector's OTLP/HTTP trace receiver (`POST /v1/traces`, the JSON
//! encoding of `ExportTraceServiceRequest`), keeping every span it is sent for a test to
//! read. No collector is packaged for this machine's registries.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use serde_json::{Map, Value};

/// One span as received.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The sending process's `service.name`.
    pub service: String,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// Empty for a trace's root.
    pub parent_span_id: String,
    /// The span's name (tracing's span name).
    pub name: String,
    /// The span's attributes, each value as its string form.
    pub attributes: Map<String, Value>,
}

/// The receiver on a free loopback port; stops when dropped.
pub struct OtlpCollector {
    url: String,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    task: tokio::task::JoinHandle<()>,
}

impl OtlpCollector {
    /// Starts the receiver with nothing received.
    pub async fn start() -> Self {
        let spans: Arc<Mutex<Vec<ReceivedSpan>>> = Arc::default();
        let app = Router::new()
            .route("/v1/traces", post(receive))
            .with_state(spans.clone());
        let (url, task) = crate::serve(app).await;
        Self { url, spans, task }
    }

    /// The base URL exporters are given (they post to `/v1/traces` under it).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().clone()
    }
}

impl Drop for OtlpCollector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Refuses what is not an OTLP JSON export, as a collector does (400), so a malformed
/// export fails the test that reads nothing.
async fn receive(
    State(spans): State<Arc<Mutex<Vec<ReceivedSpan>>>>,
    body: Bytes,
) -> impl IntoResponse {
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "not JSON").into_response();
    };
    let Some(resource_spans) = request["resourceSpans"].as_array() else {
        return (StatusCode::BAD_REQUEST, "no resourceSpans").into_response();
    };
    let mut received = Vec::new();
    for resource in resource_spans {
        let service = attributes(&resource["resource"]["attributes"])
            .get("service.name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                let text = |key: &str| span[key].as_str().unwrap_or_default().to_string();
                received.push(ReceivedSpan {
                    service: service.clone(),
                    trace_id: text("traceId"),
                    span_id: text("spanId"),
                    parent_span_id: text("parentSpanId"),
                    name: text("name"),
                    attributes: attributes(&span["attributes"]),
                });
            }
        }
    }
    spans.lock().unwrap().extend(received);
    ([(header::CONTENT_TYPE, "application/json")], "{}").into_response()
}

/// OTLP's `[{"key", "value": {"stringValue": ...}}]` as a map of plain values.
fn attributes(list: &Value) -> Map<String, Value> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|kv| {
            let key = kv["key"].as_str()?.to_string();
            let value = kv["value"].as_object()?.values().next()?.clone();
            Some((key, value))
        })
        .collect()
}
