//! What operators watch and do: the log, the probes and the metrics of a real `cfm
//! serve` (scraped by a real Prometheus), and stopping it gracefully.

use std::time::Duration;

use cfm_manager::lifecycle::OrchestrationState;
use cfm_manager::testing::TestBackend;
use cfm_standins::otlp::{OtlpCollector, ReceivedSpan};
use cfm_test_support::{
    Api, Deployment, JetStreamServer, PrometheusServer, Server, nats_url, plugins_config,
    plugins_config_with,
};
use serde_json::{Value, json};
use sqlx::Row;

/// Participants onboarded while Prometheus scrapes.
const BURST: usize = 12;

#[tokio::test]
async fn prometheus_scrapes_counts_that_match_the_database_and_duration_histograms() {
    let server = Server::start(&[]).await;
    let target = server.base().trim_start_matches("http://").to_string();
    let prometheus = PrometheusServer::start(&target).await;
    let api = server.client();
    let (tenant_id, dataspace_id) = tenant_and_dataspace(&api, "cell-metrics").await;
    let names: Vec<String> = (0..BURST).map(|i| format!("metrics-{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    api.onboard_active(&tenant_id, &dataspace_id, &names).await;

    // What the engine wrote, read from its database: the counters must agree with it.
    let db = read_only(&server).await;
    let count = |sql: String| {
        let db = db.clone();
        async move {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_one(&db)
                .await
                .unwrap();
            row.get::<i64, _>(0) as f64
        }
    };
    let steps =
        count("SELECT COUNT(*) FROM orchestration_steps WHERE state = 'completed'".into()).await;
    let completed = count(format!(
        "SELECT COUNT(*) FROM orchestrations WHERE state = {}",
        OrchestrationState::Completed.code()
    ))
    .await;
    let started = count("SELECT COUNT(*) FROM orchestrations".into()).await;
    assert!(completed >= BURST as f64 && steps > completed);

    let expected = [
        (
            r#"sum(cfm_activity_outcomes_total{outcome="completed"})"#,
            steps,
        ),
        (r#"sum(cfm_activities_dispatched_total)"#, steps),
        (r#"sum(cfm_orchestrations_started_total)"#, started),
        (
            r#"sum(cfm_orchestrations_finished_total{state="completed"})"#,
            completed,
        ),
        // Every activity ran a plugin in this process's host and its worker, once.
        (
            r#"sum(cfm_activity_duration_seconds_count{outcome="complete"})"#,
            steps,
        ),
        (
            r#"sum(cfm_plugin_invocation_duration_seconds_count)"#,
            steps,
        ),
        // Each POST of a profile, by its route's template, not its path.
        (
            r#"sum(cfm_http_request_duration_seconds_count{method="POST",route="/api/v1alpha1/tenants/{tid}/participant-profiles",status="202"})"#,
            BURST as f64,
        ),
        // The gauges are read at each scrape: the burst is over, so the outbox is empty.
        ("cfm_queue_messages", 0.0),
        (r#"cfm_db_connections{pool="write",state="idle"}"#, 1.0),
    ];
    for (query, value) in expected {
        prometheus.value_when(query, |v| v == value).await;
    }
    // The histograms have buckets a quantile can be read from.
    let median = prometheus
        .value_when(
            r#"histogram_quantile(0.5, sum by (le) (cfm_plugin_invocation_duration_seconds_bucket))"#,
            |v| v.is_finite(),
        )
        .await;
    assert!(median > 0.0 && median < 16.0, "median {median}");
    // No tenant or participant reaches a label.
    let text = reqwest::get(format!("{}/metrics", server.base()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !text.contains(&tenant_id) && !text.contains("did:web:"),
        "{text}"
    );
}

#[tokio::test]
async fn split_replicas_each_count_their_half_and_the_agent_serves_probes() {
    let mut deployment = Deployment::start(&nats_url(), 1).await;
    let listen = ["--listen", "127.0.0.1:0"].map(String::from);
    deployment.start_agents_with(&["agent"], 4, &plugins_config(), &listen);
    let manager = deployment.managers[0].base.clone().unwrap();
    let agent = deployment.agents[0]
        .base
        .clone()
        .expect("the agent's listener");
    let api = deployment.api(0);
    api.slow_template(false).await;
    let (tenant_id, dataspace_id) = tenant_and_dataspace(&api, "cell-split-metrics").await;
    api.onboard_active(&tenant_id, &dataspace_id, &["split-a", "split-b"])
        .await;

    let sample = |text: &str, series: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(series))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    let scrape = |base: String| async move {
        reqwest::get(format!("{base}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let (manager_text, agent_text) = (scrape(manager.clone()).await, scrape(agent.clone()).await);
    // The manager applied what the agent ran: one plugin invocation per outcome.
    let applied = sample(&manager_text, "cfm_activity_outcomes_total{");
    assert!(applied >= 8.0, "{manager_text}");
    assert_eq!(
        sample(&agent_text, "cfm_plugin_invocation_duration_seconds_count{"),
        applied,
        "{agent_text}"
    );
    assert_eq!(
        sample(
            &agent_text,
            r#"cfm_plugin_invocation_duration_seconds_count{plugin="slow"}"#
        ),
        2.0
    );
    // Each process counts only its own half.
    assert_eq!(
        sample(
            &manager_text,
            "cfm_plugin_invocation_duration_seconds_count{"
        ),
        0.0
    );
    assert_eq!(sample(&agent_text, "cfm_activity_outcomes_total{"), 0.0);

    // The manager reads how far the stream's consumers are behind: nothing, once the
    // last acknowledgements are in.
    until(
        || scrape(manager.clone()),
        |text| {
            text.lines()
                .any(|l| l.starts_with("cfm_jetstream_outstanding ") && l.ends_with(" 0"))
        },
    )
    .await;

    let ready: Value = reqwest::get(format!("{agent}/ready"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["checks"], json!({"plugins": "ok", "jetstream": "ok"}));
    let ready: Value = reqwest::get(format!("{manager}/ready"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        ready["checks"],
        json!({"database": "ok", "jetstream": "ok"})
    );
}

#[tokio::test]
async fn a_log_written_to_a_file_has_no_colour_codes() {
    let server = Server::start(&[]).await;
    let api = server.client();
    let (tenant_id, dataspace_id) = tenant_and_dataspace(&api, "cell-plain-log").await;
    api.onboard_active(&tenant_id, &dataspace_id, &["plain"])
        .await;
    let log = server.log();
    assert!(log.contains("orchestration finished"), "{log}");
    assert!(!log.contains('\u{1b}'), "{log}");
}

#[tokio::test]
async fn json_log_lines_carry_the_orchestration_activity_and_participant() {
    let server = Server::start(&["--log-format", "json"]).await;
    let api = server.client();
    let (tenant_id, dataspace_id) = tenant_and_dataspace(&api, "cell-json-log").await;
    api.onboard_active(&tenant_id, &dataspace_id, &["json-log"])
        .await;
    let log = server.log();
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let ran = lines
        .iter()
        .filter(|l| l["message"] == "activity complete")
        .filter(|l| {
            l["spans"].as_array().is_some_and(|spans| {
                spans.iter().any(|s| {
                    s["name"] == "activity"
                        && s["participant"] == "did:web:json-log.example"
                        && s["orchestration"].as_str().is_some_and(|o| !o.is_empty())
                        && s["activity"].as_str().is_some_and(|a| !a.is_empty())
                })
            })
        })
        .count();
    assert!(ran > 0, "no activity line carries its ids:\n{log}");
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["timestamp"].is_string())
    );
}

#[tokio::test]
async fn ready_names_the_dependency_that_is_down_until_it_is_back() {
    let mut nats = JetStreamServer::start();
    let server = Server::start(&["--nats-url", &nats.url()]).await;
    let ready = |server: &Server| {
        let url = format!("{}/ready", server.base());
        async move {
            let response = reqwest::get(url).await.unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    let (status, body) = ready(&server).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["checks"],
        json!({"database": "ok", "plugins": "ok", "jetstream": "ok"})
    );

    nats.stop();
    let body = until(|| ready(&server), |(status, _)| *status == 503)
        .await
        .1;
    assert_eq!(body["reason"], "not-ready", "{body}");
    assert_eq!(body["details"]["checks"]["database"], "ok", "{body}");
    assert_ne!(body["details"]["checks"]["jetstream"], "ok", "{body}");
    // Liveness is not readiness: the process still answers.
    let health = reqwest::get(format!("{}/health", server.base()))
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);

    nats.restart();
    until(|| ready(&server), |(status, _)| *status == 200).await;
}

#[tokio::test]
async fn sigterm_lets_a_running_activity_finish_and_report_before_the_server_exits() {
    // `example.slow` waits 3 s, long enough to be caught running.
    let dir = tempfile::tempdir().unwrap();
    let plugins = plugins_config_with(dir.path(), |plugin| {
        if plugin["name"].as_str() == Some("slow") {
            plugin["settings"]
                .as_table_mut()
                .unwrap()
                .insert("delayMs".into(), 3000.into());
        }
    });
    let plugins = plugins.display().to_string();
    // The worker says at debug level when it takes a task: the sign the activity runs.
    let mut server = Server::start_logging(
        TestBackend::Sqlite,
        &["--no-seed", "--plugins", &plugins],
        "info,cfm_queue::worker=debug",
    )
    .await;
    let api = server.client();
    api.slow_template(false).await;
    let (tenant_id, dataspace_id) = tenant_and_dataspace(&api, "cell-drain").await;
    let profile = api
        .post_ok(
            &format!("/tenants/{tenant_id}/participant-profiles"),
            json!({"identifier": "did:web:drained.example", "dataspaceProfileIds": [dataspace_id]}),
            202,
        )
        .await;
    let profile_id = profile["id"].as_str().unwrap().to_string();

    let db = read_only(&server).await;
    let slow_step = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT state FROM orchestration_steps WHERE activity_id = 'slow'",
        )
        .fetch_optional(&db)
        .await
        .unwrap()
    };
    // Running: taken by the worker, and not yet reported.
    until(
        || async { server.log() },
        |log| {
            log.lines()
                .any(|l| l.contains("activity_type=example.slow") && l.contains("task received"))
        },
    )
    .await;
    assert_eq!(slow_step().await.as_deref(), Some("dispatched"));

    let status = server.terminate();
    assert!(status.success(), "exit status {status}: {}", server.log());
    // The activity ran to its end and its outcome was applied before the exit: without
    // the drain it would still be dispatched, waiting for its lease to run out.
    assert_eq!(slow_step().await.as_deref(), Some("completed"));
    let log = server.log();
    assert!(log.contains("draining") && log.contains("drained"), "{log}");

    // What became due meanwhile waits in the outbox for the next start.
    let server = server.restart().await;
    server
        .client()
        .wait_active(&tenant_id, &profile_id, Duration::from_secs(30))
        .await;
}

#[tokio::test]
async fn each_onboarding_is_one_trace_from_the_rest_call_through_the_manager_into_the_agent() {
    let collector = OtlpCollector::start().await;
    let otlp = ["--otlp-endpoint".to_string(), collector.url().to_string()];
    let mut deployment = Deployment::start_with(&nats_url(), 1, &otlp).await;
    deployment.start_agents_with(&["agent"], 4, &plugins_config(), &otlp);
    let api = deployment.api(0);
    api.slow_template(false).await;
    let (tenant_id, dataspace_id) = tenant_and_dataspace(&api, "cell-traces").await;
    let names = ["traced-a", "traced-b", "traced-c"];
    api.onboard_active(&tenant_id, &dataspace_id, &names).await;
    one_trace_each(&collector, &tenant_id, &names, "cfm-manager", "cfm-agent").await;
}

#[tokio::test]
async fn cfm_serve_on_sqlite_keeps_the_request_trace_through_its_writer_thread() {
    let collector = OtlpCollector::start().await;
    let server = Server::start(&["--otlp-endpoint", collector.url()]).await;
    let api = server.client();
    api.slow_template(false).await;
    let (tenant_id, dataspace_id) = tenant_and_dataspace(&api, "cell-traces-serve").await;
    let names = ["served-a", "served-b"];
    api.onboard_active(&tenant_id, &dataspace_id, &names).await;
    one_trace_each(&collector, &tenant_id, &names, "cfm", "cfm").await;
}

/// Each onboarding of `names` is one trace: the agent's spans of its four activities
/// (slow_template) in it, whose one root is the manager's POST of the profile, holding
/// the manager's applies of the reports, every span's parent in it, shared with no other.
async fn one_trace_each(
    collector: &OtlpCollector,
    tenant_id: &str,
    names: &[&str],
    manager: &str,
    agent: &str,
) {
    let mut traces = std::collections::BTreeSet::new();
    for name in names {
        let did = format!("did:web:{name}.example");
        // The agent's spans of this participant's activities, once all four arrived.
        let activities = |spans: &[ReceivedSpan]| -> Vec<ReceivedSpan> {
            spans
                .iter()
                .filter(|s| {
                    s.service == agent && s.attributes.get("participant") == Some(&json!(did))
                })
                .filter(|s| s.attributes.contains_key("activity_type"))
                .cloned()
                .collect()
        };
        let spans = until(
            || async { collector.spans() },
            |spans| {
                let mut ids: Vec<_> = activities(spans)
                    .iter()
                    .map(|s| s.attributes["activity"].clone())
                    .collect();
                ids.sort_by_key(|v| v.to_string());
                ids.dedup();
                // The manager exports on its own tick: its applies of the four reports
                // (and, before them, the request's span) must have arrived too.
                let applies = spans
                    .iter()
                    .filter(|s| s.service == manager && s.name == "orchestration")
                    .filter(|s| s.attributes.get("participant") == Some(&json!(did)))
                    .count();
                ids.len() == 4 && applies >= 4 && capability_calls(spans, &did).len() >= 3
            },
        )
        .await;
        let agent_side = activities(&spans);
        let trace_id = agent_side[0].trace_id.clone();
        assert!(
            agent_side.iter().all(|s| s.trace_id == trace_id),
            "every activity of {did} in one trace: {agent_side:#?}"
        );
        let trace: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
        // Its root is the REST call that created the participant, on the manager.
        let roots: Vec<_> = trace
            .iter()
            .filter(|s| s.parent_span_id.is_empty())
            .collect();
        assert_eq!(roots.len(), 1, "one root: {trace:#?}");
        assert_eq!(roots[0].service, manager);
        assert_eq!(roots[0].name, "http request");
        assert_eq!(roots[0].attributes["method"], "POST");
        assert_eq!(
            roots[0].attributes["path"],
            format!("/api/v1alpha1/tenants/{tenant_id}/participant-profiles")
        );
        // The manager applied each report inside the same trace.
        let applied = trace
            .iter()
            .filter(|s| s.service == manager && s.name == "orchestration")
            .count();
        assert!(
            applied >= 4,
            "the manager's applies of the four reports: {trace:#?}"
        );
        // Inside the agent's activities, a span per capability call: the key, the
        // namespace and the name written, each allowed.
        let calls = capability_calls(&spans, &did);
        for (capability, operation) in [
            ("secrets", "put-if-absent"),
            ("cluster", "apply"),
            ("dns", "upsert"),
        ] {
            let call = calls
                .iter()
                .find(|s| {
                    s.attributes["capability"] == capability
                        && s.attributes["operation"] == operation
                })
                .unwrap_or_else(|| panic!("no {capability} {operation} span: {calls:#?}"));
            assert_eq!(call.trace_id, trace_id, "{call:#?}");
            assert_eq!(call.attributes["decision"], "allowed", "{call:#?}");
            let parent = trace
                .iter()
                .find(|s| s.span_id == call.parent_span_id)
                .unwrap_or_else(|| panic!("{call:#?} has no parent in {trace:#?}"));
            assert_eq!(
                (parent.service.as_str(), parent.name.as_str()),
                (agent, "activity")
            );
        }
        // Connected: every span's parent is a span of the same trace.
        let ids: std::collections::BTreeSet<_> = trace.iter().map(|s| s.span_id.as_str()).collect();
        for span in &trace {
            assert!(
                span.parent_span_id.is_empty() || ids.contains(span.parent_span_id.as_str()),
                "{} has a parent outside the trace: {trace:#?}",
                span.name
            );
        }
        assert!(
            traces.insert(trace_id),
            "each onboarding has a trace of its own"
        );
    }
}

/// The capability-call spans in the traces of the participant `did`'s spans.
fn capability_calls(spans: &[ReceivedSpan], did: &str) -> Vec<ReceivedSpan> {
    let traces: std::collections::BTreeSet<&str> = spans
        .iter()
        .filter(|s| s.attributes.get("participant") == Some(&json!(did)))
        .map(|s| s.trace_id.as_str())
        .collect();
    spans
        .iter()
        .filter(|s| s.name == "capability" && traces.contains(s.trace_id.as_str()))
        .cloned()
        .collect()
}

/// Calls `probe` until `done` accepts its answer (30 s at most); returns that answer.
async fn until<T, F: Future<Output = T>>(probe: impl Fn() -> F, done: impl Fn(&T) -> bool) -> T {
    let started = std::time::Instant::now();
    loop {
        let answer = probe().await;
        if done(&answer) {
            return answer;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never became so"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The embedded database of `server`, read-only.
async fn read_only(server: &Server) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    let url = format!(
        "sqlite://{}?mode=ro",
        server.data_dir().join("cfm.db").display()
    );
    sqlx::AnyPool::connect(&url).await.unwrap()
}

async fn tenant_and_dataspace(api: &Api, cell: &str) -> (String, String) {
    let env = api.dataspace_with_cell(cell).await;
    let tenant = api
        .post_ok("/tenants", json!({"properties": {"name": "Observed"}}), 201)
        .await;
    (tenant["id"].as_str().unwrap().to_string(), env.dataspace_id)
}
