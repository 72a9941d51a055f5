//! Prometheus metrics every part of cfm records, and their text exposition.
//!
//! One registry per process: the engine, the agent worker, the plugin host and the API
//! record into it wherever they run (`cfm serve` holds them all; `cfm manager` and
//! `cfm agent` each their half), and [`encode`] writes it out for a `/metrics` route.
//! Labels are activity types, orchestration types, plugin names, capabilities, routes:
//! never a tenant, participant or anything a request carried, so that the series stay
//! few and a scrape shows nothing one tenant could learn about another.

use std::sync::LazyLock;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The content type of [`encode`]'s output (OpenMetrics text, which Prometheus reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// This process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS.metrics
}

/// Every metric of this process in the OpenMetrics text format.
pub fn encode() -> String {
    let mut text = String::new();
    // Writing to a String cannot fail; an encoder error would be a bug in a label.
    let _ = prometheus_client::encoding::text::encode(&mut text, &METRICS.registry);
    text
}

/// What cfm measures. Counters count events since the process started; gauges are set
/// when they are read (see the manager's `/metrics` route).
pub struct Metrics {
    /// Orchestrations started, by orchestration type (`cfm.orchestration.vpa.deploy`, ...).
    pub orchestrations_started: Family<OrchestrationLabels, Counter>,
    /// Orchestrations finished, by type and end state (`completed`, `errored`).
    pub orchestrations_finished: Family<OrchestrationEndLabels, Counter>,
    /// Activities sent to the agents, by activity type.
    pub activities_dispatched: Family<ActivityLabels, Counter>,
    /// Activity outcomes the engine applied, by activity type and what it did
    /// (`completed`, `rescheduled`, `retried`, `failed`).
    pub activity_outcomes: Family<ActivityOutcomeLabels, Counter>,
    /// How long activities ran in an agent worker, from taking the task to its outcome,
    /// by activity type and outcome kind.
    pub activity_duration: Family<ActivityOutcomeLabels, Histogram, fn() -> Histogram>,
    /// How long one plugin invocation took in the host, by plugin.
    pub plugin_invocation_duration: Family<PluginLabels, Histogram, fn() -> Histogram>,
    /// Audited capability calls (writes and every denial), by plugin, capability and
    /// decision (`allowed`, `denied`).
    pub capability_calls: Family<CapabilityLabels, Counter>,
    /// API requests, by method, route template and status.
    pub http_request_duration: Family<HttpLabels, Histogram, fn() -> Histogram>,
    /// Messages in the outbox table: activities waiting for an agent or running.
    pub queue_messages: Gauge,
    /// Age of the oldest outbox message that is due and not yet taken, in seconds.
    pub queue_oldest_due_seconds: Gauge<f64, AtomicU64>,
    /// Messages of the JetStream stream its consumers have not delivered yet or not had
    /// acknowledged: how far the agents (and the managers, for reports) are behind.
    pub jetstream_outstanding: Gauge,
    /// Database connections, by pool (`read`, `write`, `queries`) and state (`idle`, `busy`).
    pub db_connections: Family<PoolLabels, Gauge>,
    /// Batches of spans the trace exporter gave up on (the collector away), their spans
    /// dropped.
    pub trace_export_failures: Counter,
}

/// Labels of an orchestration count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OrchestrationLabels {
    /// The orchestration type.
    pub orchestration_type: String,
}

/// Labels of a finished orchestration's count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OrchestrationEndLabels {
    /// The orchestration type.
    pub orchestration_type: String,
    /// `completed` or `errored`.
    pub state: &'static str,
}

/// Labels of an activity count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActivityLabels {
    /// The activity type.
    pub activity_type: String,
}

/// Labels of an activity outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActivityOutcomeLabels {
    /// The activity type.
    pub activity_type: String,
    /// What the outcome was or did.
    pub outcome: &'static str,
}

/// Labels of a plugin's invocations.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    /// The plugin's configured name.
    pub plugin: String,
}

/// Labels of a capability call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CapabilityLabels {
    /// The plugin's configured name.
    pub plugin: String,
    /// `secrets`, `cluster`, `dns`, `http` or `tokens`.
    pub capability: &'static str,
    /// `allowed` or `denied`.
    pub decision: &'static str,
}

/// Labels of an API request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The HTTP method.
    pub method: String,
    /// The matched route template (`/api/v1alpha1/tenants/{id}`), or `unmatched`.
    pub route: String,
    /// The response status code.
    pub status: u16,
}

/// Labels of a connection pool gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    /// `read`, `write` or `queries`.
    pub pool: &'static str,
    /// `idle` or `busy`.
    pub state: &'static str,
}

impl Metrics {
    /// Counts one orchestration started.
    pub fn orchestration_started(&self, orchestration_type: &str) {
        self.orchestrations_started
            .get_or_create(&OrchestrationLabels {
                orchestration_type: orchestration_type.to_string(),
            })
            .inc();
    }

    /// Counts one orchestration finished in `state`.
    pub fn orchestration_finished(&self, orchestration_type: &str, state: &'static str) {
        self.orchestrations_finished
            .get_or_create(&OrchestrationEndLabels {
                orchestration_type: orchestration_type.to_string(),
                state,
            })
            .inc();
    }

    /// Counts one activity dispatched.
    pub fn activity_dispatched(&self, activity_type: &str) {
        self.activities_dispatched
            .get_or_create(&ActivityLabels {
                activity_type: activity_type.to_string(),
            })
            .inc();
    }

    /// Counts one applied activity outcome.
    pub fn activity_outcome(&self, activity_type: &str, outcome: &'static str) {
        self.activity_outcomes
            .get_or_create(&ActivityOutcomeLabels {
                activity_type: activity_type.to_string(),
                outcome,
            })
            .inc();
    }

    /// Records one activity run by an agent worker.
    pub fn activity_ran(&self, activity_type: &str, outcome: &'static str, took: Duration) {
        self.activity_duration
            .get_or_create(&ActivityOutcomeLabels {
                activity_type: activity_type.to_string(),
                outcome,
            })
            .observe(took.as_secs_f64());
    }

    /// Records one plugin invocation.
    pub fn plugin_invoked(&self, plugin: &str, took: Duration) {
        self.plugin_invocation_duration
            .get_or_create(&PluginLabels {
                plugin: plugin.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// Counts one audited capability call.
    pub fn capability_call(&self, plugin: &str, capability: &'static str, allowed: bool) {
        self.capability_calls
            .get_or_create(&CapabilityLabels {
                plugin: plugin.to_string(),
                capability,
                decision: if allowed { "allowed" } else { "denied" },
            })
            .inc();
    }

    /// Records one API request.
    pub fn http_request(&self, method: &str, route: &str, status: u16, took: Duration) {
        self.http_request_duration
            .get_or_create(&HttpLabels {
                method: method.to_string(),
                route: route.to_string(),
                status,
            })
            .observe(took.as_secs_f64());
    }

    /// Sets a pool's connection gauges.
    pub fn pool(&self, pool: &'static str, size: u32, idle: usize) {
        let idle = i64::try_from(idle).unwrap_or(i64::MAX);
        let busy = i64::from(size).saturating_sub(idle).max(0);
        for (state, value) in [("idle", idle), ("busy", busy)] {
            self.db_connections
                .get_or_create(&PoolLabels { pool, state })
                .set(value);
        }
    }
}

/// From half a millisecond to about two minutes, doubling: a no-op plugin takes tens
/// of microseconds, a real one waits on a backend for seconds, and an activity may run
/// up to its timeout (a minute by default).
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 19))
}

struct Registered {
    metrics: Metrics,
    registry: Registry,
}

static METRICS: LazyLock<Registered> = LazyLock::new(|| {
    let metrics = Metrics {
        orchestrations_started: Family::default(),
        orchestrations_finished: Family::default(),
        activities_dispatched: Family::default(),
        activity_outcomes: Family::default(),
        activity_duration: Family::new_with_constructor(seconds),
        plugin_invocation_duration: Family::new_with_constructor(seconds),
        capability_calls: Family::default(),
        http_request_duration: Family::new_with_constructor(seconds),
        queue_messages: Gauge::default(),
        queue_oldest_due_seconds: Gauge::default(),
        jetstream_outstanding: Gauge::default(),
        db_connections: Family::default(),
        trace_export_failures: Counter::default(),
    };
    let mut registry = Registry::with_prefix("cfm");
    let m = &metrics;
    registry.register(
        "orchestrations_started",
        "Orchestrations started, by type",
        m.orchestrations_started.clone(),
    );
    registry.register(
        "orchestrations_finished",
        "Orchestrations finished, by type and end state",
        m.orchestrations_finished.clone(),
    );
    registry.register(
        "activities_dispatched",
        "Activities sent to agents, by type",
        m.activities_dispatched.clone(),
    );
    registry.register(
        "activity_outcomes",
        "Activity outcomes applied by the engine, by type and outcome",
        m.activity_outcomes.clone(),
    );
    registry.register_with_unit(
        "activity_duration",
        "Time an agent worker spent on an activity, by type and outcome",
        prometheus_client::registry::Unit::Seconds,
        m.activity_duration.clone(),
    );
    registry.register_with_unit(
        "plugin_invocation_duration",
        "Time one plugin invocation took in the host, by plugin",
        prometheus_client::registry::Unit::Seconds,
        m.plugin_invocation_duration.clone(),
    );
    registry.register(
        "capability_calls",
        "Audited capability calls (writes and denials), by plugin, capability and decision",
        m.capability_calls.clone(),
    );
    registry.register_with_unit(
        "http_request_duration",
        "API requests, by method, route and status",
        prometheus_client::registry::Unit::Seconds,
        m.http_request_duration.clone(),
    );
    registry.register(
        "queue_messages",
        "Messages in the outbox table (due, waiting or taken)",
        m.queue_messages.clone(),
    );
    registry.register_with_unit(
        "queue_oldest_due",
        "Age of the oldest due outbox message not yet taken",
        prometheus_client::registry::Unit::Seconds,
        m.queue_oldest_due_seconds.clone(),
    );
    registry.register(
        "jetstream_outstanding",
        "JetStream messages not yet delivered or acknowledged, over every consumer",
        m.jetstream_outstanding.clone(),
    );
    registry.register(
        "db_connections",
        "Database connections, by pool and state",
        m.db_connections.clone(),
    );
    registry.register(
        "trace_export_failures",
        "Batches of spans the trace exporter gave up on, their spans dropped",
        m.trace_export_failures.clone(),
    );
    Registered { metrics, registry }
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_values_appear_in_the_exposition_with_their_labels() {
        let m = metrics();
        m.activity_outcome("test.metrics.outcome", "completed");
        m.activity_outcome("test.metrics.outcome", "completed");
        m.activity_ran("test.metrics.ran", "completed", Duration::from_millis(3));
        m.pool("write", 4, 1);
        let text = encode();
        assert!(
            text.contains(
                r#"cfm_activity_outcomes_total{activity_type="test.metrics.outcome",outcome="completed"} 2"#
            ),
            "{text}"
        );
        // 3 ms falls in the 4 ms bucket and every one above it, not in the 2 ms one.
        assert!(
            text.contains(r#"cfm_activity_duration_seconds_bucket{le="0.004",activity_type="test.metrics.ran",outcome="completed"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"cfm_activity_duration_seconds_bucket{le="0.002",activity_type="test.metrics.ran",outcome="completed"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"cfm_db_connections{pool="write",state="busy"} 3"#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
