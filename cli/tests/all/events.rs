//! The lifecycle event stream (`GET /events`, server-sent events) through the real
//! `cfm serve`: a client with a tenant-confined token sees every state change of a
//! rollout that upgrades its participants, in order, and nothing of another tenant; an
//! operator sees everything; a client that reconnects with `Last-Event-ID` misses nothing.
//! The same on a split deployment, the stream read from another manager than the one
//! that started the rollout.

use std::path::Path;
use std::time::{Duration, Instant};

use cfm_manager::auth::{ALL_SCOPES, TENANT_READ};
use cfm_manager::on_both_backends;
use cfm_manager::testing::TestBackend;
use cfm_test_support::{Api, Deployment, Server, nats_url};
use serde_json::{Value, json};

use super::fleet::{create_cell, deploy};
use super::rollouts::{TEMPLATE, add_version_2, template_v1, wait_rollout};

on_both_backends!(a_tenant_follows_a_rollout_of_its_participants_and_sees_nothing_else);

async fn a_tenant_follows_a_rollout_of_its_participants_and_sees_nothing_else(
    backend: TestBackend,
) {
    let server = Server::start_on(backend, &["--no-seed"]).await;
    follow_a_rollout(&server.client(), server.base(), &server.data_dir()).await;
}

/// Two managers and two agents on PostgreSQL and JetStream: the client follows the
/// rollout on the manager that did not start it, while both managers' fleet loops drive it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_split_deployment_a_tenant_follows_a_rollout_through_another_manager() {
    let mut deployment = Deployment::start(&nats_url(), 2).await;
    deployment.start_agents(&["agents", "agents"], 4);
    let other = deployment.managers[1].base.clone().unwrap();
    let keys = deployment.dir().join("manager");
    follow_a_rollout(&deployment.api(0), &other, &keys).await;
}

/// Runs a rollout over two tenants' participants through `api`, with the event streams
/// read from the manager at `stream_base`, whose signing key is in `keys`.
async fn follow_a_rollout(api: &Api, stream_base: &str, keys: &Path) {
    let auth = cfm_manager::auth::Auth::load_or_create(keys).unwrap();
    template_v1(api).await;
    create_cell(api, "a", 20, "eu").await;
    let mut tenants = Vec::new();
    let mut participants: Vec<Vec<String>> = Vec::new();
    for t in 0..2 {
        let tenant = api.post_ok("/tenants", json!({}), 201).await;
        let tenant = tenant["id"].as_str().unwrap().to_string();
        let mut ids = Vec::new();
        for n in 0..2 {
            let (status, profile) = deploy(api, &tenant, t * 10 + n, json!({})).await;
            assert_eq!(status, 202, "{profile}");
            ids.push(profile["id"].as_str().unwrap().to_string());
        }
        for id in &ids {
            api.wait_active(&tenant, id, Duration::from_secs(60)).await;
        }
        tenants.push(tenant);
        participants.push(ids);
    }
    add_version_2(api).await;

    let token = auth
        .issue_for("tenant", &[TENANT_READ], Some(&tenants[0]), 600)
        .unwrap();
    let operator = auth.issue("test", &ALL_SCOPES, 600).unwrap();
    let mut mine = Stream::open(stream_base, &token, None).await;
    let mut everything = Stream::open(stream_base, &operator, None).await;
    let rollout = api
        .post_ok(
            "/rollouts",
            json!({"templateId": TEMPLATE, "batchSize": 1, "maxParallel": 1}),
            201,
        )
        .await;
    let id = rollout["id"].as_str().unwrap().to_string();
    wait_rollout(api, &id, "completed").await;
    let done = |e: &Value| e["kind"] == "rollout" && e["data"]["state"] == "completed";
    let seen = mine.until(done).await;
    let all = everything.until(done).await;

    // In order, and the rollout's own changes without fleet-wide counts.
    assert!(
        seen.windows(2)
            .all(|w| w[0]["seq"].as_i64() < w[1]["seq"].as_i64())
    );
    let rollout_states: Vec<&str> = seen
        .iter()
        .filter(|e| e["kind"] == "rollout")
        .map(|e| e["data"]["state"].as_str().unwrap())
        .collect();
    assert_eq!(rollout_states, ["running", "completed"], "{seen:?}");
    assert!(
        seen.iter()
            .filter(|e| e["kind"] == "rollout")
            .all(|e| e["data"].get("detail").is_none())
    );
    for pc in &participants[0] {
        let states: Vec<&str> = seen
            .iter()
            .filter(|e| e["kind"] == "rollout.participant" && e["subject"] == pc.as_str())
            .map(|e| e["data"]["state"].as_str().unwrap())
            .collect();
        assert_eq!(states, ["upgrading", "upgraded"], "{pc}: {seen:?}");
        let orchestration: Vec<&str> = seen
            .iter()
            .filter(|e| e["kind"] == "orchestration" && e["data"]["correlationId"] == pc.as_str())
            .map(|e| e["data"]["state"].as_str().unwrap())
            .collect();
        assert_eq!(orchestration, ["running", "completed"], "{pc}: {seen:?}");
    }
    // Nothing of the other tenant.
    let other = &tenants[1];
    for event in &seen {
        assert_ne!(event["tenantId"], other.as_str(), "{event}");
        let text = event.to_string();
        for pc in &participants[1] {
            assert!(
                !text.contains(pc.as_str()),
                "B's participant in A's stream: {event}"
            );
        }
    }
    // The operator sees both tenants' upgrades and the rollout's detail fields.
    for pc in participants.iter().flatten() {
        assert!(
            all.iter().any(|e| e["kind"] == "rollout.participant"
                && e["subject"] == pc.as_str()
                && e["data"]["state"] == "upgraded"),
            "{pc}"
        );
    }

    // Reconnecting after the first event replays what followed it.
    let first = seen[0]["seq"].as_i64().unwrap();
    let mut again = Stream::open(stream_base, &token, Some(first)).await;
    let replayed = again.until(done).await;
    let seqs = |events: &[Value]| -> Vec<i64> {
        events.iter().map(|e| e["seq"].as_i64().unwrap()).collect()
    };
    assert_eq!(seqs(&replayed), seqs(&seen[1..]));

    let refused = reqwest::Client::new()
        .get(format!("{stream_base}/api/v1alpha1/events"))
        .bearer_auth(&token)
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
}

/// A client of the event stream, parsing server-sent events as they arrive.
struct Stream {
    response: reqwest::Response,
    buffer: String,
}

impl Stream {
    async fn open(base: &str, token: &str, after: Option<i64>) -> Stream {
        let mut request = reqwest::Client::new()
            .get(format!("{base}/api/v1alpha1/events"))
            .bearer_auth(token);
        if let Some(seq) = after {
            request = request.header("Last-Event-ID", seq.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Stream {
            response,
            buffer: String::new(),
        }
    }

    /// Every event up to and including the first that `last` accepts.
    async fn until(&mut self, last: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut events = Vec::new();
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data:")) else {
                    continue; // a keep-alive comment
                };
                let event: Value = serde_json::from_str(data.trim()).unwrap();
                let id = frame.lines().find_map(|l| l.strip_prefix("id:")).unwrap();
                assert_eq!(id.trim(), event["seq"].to_string(), "{frame}");
                let stop = last(&event);
                events.push(event);
                if stop {
                    return events;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no end in the stream: {events:?}");
            match tokio::time::timeout(left, self.response.chunk()).await {
                Ok(chunk) => {
                    let chunk = chunk.unwrap().expect("the stream ended");
                    self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
                }
                Err(_) => panic!("no end in the stream: {events:?}"),
            }
        }
    }
}
