//! The split deployment against real servers: `cfm manager` and `cfm agent` replicas that
//! meet only in PostgreSQL (managers) and NATS JetStream (everyone). Replicas are killed
//! with SIGKILL, the queue server is restarted and database connections are cut; every
//! onboarding must still finish exactly once, with each side effect once per key.

use std::collections::HashMap;
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use cfm_queue::jetstream::{JetStreamQueue, JetStreamSettings};
use cfm_test_support::{
    Api, Deployment, JetStreamServer, assert_each_created_at_most_once, assert_each_written_once,
    audit_effects, nats_url, read_audit, served_effects,
};
use rand::Rng;
use serde_json::{Value, json};

/// Definitions with a 200 ms activity in every onboarding, so work is in flight long
/// enough to be interrupted; returns the tenant id and the dataspace profile id.
async fn prepare(api: &Api) -> (String, String) {
    api.slow_template(false).await;
    let env = api.dataspace_with_cell("cell-a").await;
    let tenant = api.post_ok("/tenants", json!({}), 201).await;
    (tenant["id"].as_str().unwrap().to_string(), env.dataspace_id)
}

async fn onboard(api: &Api, tenant: &str, dataspace: &str, count: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(count);
    // A DID is one live participant: each batch names its own.
    let batch = &uuid::Uuid::new_v4().simple().to_string()[..8];
    for i in 0..count {
        let profile = api
            .post_ok(
                &format!("/tenants/{tenant}/participant-profiles"),
                json!({"identifier": format!("did:web:p{i}-{batch}.example"), "dataspaceProfileIds": [dataspace]}),
                202,
            )
            .await;
        ids.push(profile["id"].as_str().unwrap().to_string());
    }
    ids
}

/// Waits until no profile of the tenant has a VPA that is not active.
async fn wait_all_active(api: &Api, tenant: &str, timeout: Duration) {
    let started = Instant::now();
    loop {
        let left = api.count_not_active(tenant).await;
        if left == 0 {
            return;
        }
        assert!(
            started.elapsed() < timeout,
            "{left} participants not active after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Each profile has exactly one deploy orchestration, completed, and none is left running.
async fn assert_each_onboarding_completed_once(api: &Api, ids: &[String]) {
    let (status, running) = api
        .call(
            reqwest::Method::POST,
            "/orchestrations/query",
            Some(json!({"predicate": "state = 1"})),
            None,
        )
        .await;
    assert_eq!(status, 200, "{running}");
    assert_eq!(
        running.as_array().unwrap().len(),
        0,
        "orchestrations stuck running: {running}"
    );
    let (status, all) = api
        .call(
            reqwest::Method::POST,
            "/orchestrations/query",
            Some(json!({"predicate": "orchestrationType = 'cfm.orchestration.vpa.deploy'", "limit": 10000})),
            None,
        )
        .await;
    assert_eq!(status, 200, "{all}");
    let mut per_profile: HashMap<&str, Vec<&Value>> = HashMap::new();
    for orchestration in all.as_array().unwrap() {
        per_profile
            .entry(orchestration["correlationId"].as_str().unwrap())
            .or_default()
            .push(orchestration);
    }
    for id in ids {
        let found = per_profile
            .get(id.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        assert_eq!(
            found.len(),
            1,
            "profile {id} has {} deploy orchestrations",
            found.len()
        );
        assert_eq!(found[0]["state"], 2, "{}", found[0]);
    }
}

/// One manager on a `nats-server` of the test's own (to restart at will), with the
/// definitions of [`prepare`] and a client of its stream.
struct OwnServer {
    nats: JetStreamServer,
    deployment: Deployment,
    tenant: String,
    dataspace: String,
    queue: JetStreamQueue,
}

impl OwnServer {
    async fn start() -> Self {
        let nats = JetStreamServer::start();
        let deployment = Deployment::start(&nats.url(), 1).await;
        let (tenant, dataspace) = prepare(&deployment.api(0)).await;
        let mut settings = JetStreamSettings::new(nats.url());
        settings.namespace = deployment.namespace.clone();
        let queue = JetStreamQueue::connect(settings).await.unwrap();
        Self {
            nats,
            deployment,
            tenant,
            dataspace,
            queue,
        }
    }

    async fn onboard(&self, count: usize) -> Vec<String> {
        onboard(
            &self.deployment.api(0),
            &self.tenant,
            &self.dataspace,
            count,
        )
        .await
    }

    /// Waits until the stream holds at least `count` messages.
    async fn wait_published(&self, count: u64) {
        let started = Instant::now();
        while self.queue.messages().await.unwrap() < count {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the managers never published the work"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Removes what the stream holds on `topic` (under the namespace) until `count`
    /// messages are gone.
    async fn lose(&self, topic: &str, count: u64) {
        let subject = format!("{}.{topic}", self.deployment.namespace);
        let nats = async_nats::connect(self.nats.url()).await.unwrap();
        let stream = async_nats::jetstream::new(nats)
            .get_stream(self.queue.stream_name())
            .await
            .unwrap();
        let started = Instant::now();
        let mut lost = 0;
        while lost < count {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "only {lost} of {count} messages on {subject} appeared"
            );
            lost += stream.purge().filter(&subject).await.unwrap().purged;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every onboarding in `ids` ends active within `timeout`, completed once, each
    /// object created at most once.
    async fn assert_all_onboarded_once(&self, ids: &[String], timeout: Duration) {
        let api = self.deployment.api(0);
        wait_all_active(&api, &self.tenant, timeout).await;
        assert_each_onboarding_completed_once(&api, ids).await;
        assert_each_created_at_most_once(
            &audit_effects(&[self.deployment.agent_dir("agents")]),
            ids,
        );
    }

    fn assert_recovery_reported(&self) {
        assert!(
            self.deployment.managers[0]
                .log()
                .contains("the queue lost messages handed to it"),
            "the recovery went unreported"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_managers_and_two_agents_share_the_work_and_run_each_activity_once() {
    // Separate agent directories: an activity run on both agents would show as two
    // creations, so this checks that each task ran on exactly one host.
    let mut deployment = Deployment::start(&nats_url(), 2).await;
    deployment.start_agents(&["agent-a", "agent-b"], 2);
    let (tenant, dataspace) = prepare(&deployment.api(0)).await;
    let mut ids = onboard(&deployment.api(0), &tenant, &dataspace, 20).await;
    ids.extend(onboard(&deployment.api(1), &tenant, &dataspace, 20).await);
    wait_all_active(&deployment.api(1), &tenant, Duration::from_secs(120)).await;

    assert_each_onboarding_completed_once(&deployment.api(0), &ids).await;
    let a = audit_effects(&[deployment.agent_dir("agent-a")]);
    let b = audit_effects(&[deployment.agent_dir("agent-b")]);
    assert!(
        !a.is_empty() && !b.is_empty(),
        "one agent did all the work: {} / {}",
        a.len(),
        b.len()
    );
    let audited = audit_effects(&[
        deployment.agent_dir("agent-a"),
        deployment.agent_dir("agent-b"),
    ]);
    assert_each_written_once(&audited, &ids);
    // The agents reported every call with their outcomes over JetStream: the calls the
    // API serves per participant are the agents' audit logs, record for record.
    let served = served_effects(&deployment.api(1), &tenant, &ids).await;
    assert_eq!(served, audited);
    // The steps ran once each: no redelivery, retry or reschedule in a clean run.
    let orchestration = deployment
        .api(1)
        .call(
            reqwest::Method::POST,
            "/orchestrations/query",
            Some(json!({"predicate": "state = 2", "limit": 1})),
            None,
        )
        .await
        .1;
    for step in orchestration[0]["steps"].as_array().unwrap() {
        assert_eq!(step["attempts"], 1, "{step}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_managers_and_agents_lose_no_onboarding() {
    let participants: usize = std::env::var("CFM_CRASH_PARTICIPANTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(500);
    // One shared agent directory, as agents share real backends: redelivered activities
    // meet the objects their first run created.
    let mut deployment = Deployment::start(&nats_url(), 2).await;
    let (tenant, dataspace) = prepare(&deployment.api(0)).await;
    // All in flight before any agent runs, so the kills land in the thick of it.
    let ids = onboard(&deployment.api(0), &tenant, &dataspace, participants).await;
    deployment.start_agents(&["agents", "agents"], 8);
    let mut rng = rand::rng();
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
        let manager = rng.random_range(0..deployment.managers.len());
        let agent = rng.random_range(0..deployment.agents.len());
        deployment.managers[manager].kill();
        deployment.agents[agent].kill();
        eprintln!("round {round}: killed manager {manager} and agent {agent}");
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..1000))).await;
        deployment.managers[manager].restart();
        deployment.agents[agent].restart();
    }
    let api = deployment.api(0);
    wait_all_active(&api, &tenant, Duration::from_secs(600)).await;
    assert_each_onboarding_completed_once(&api, &ids).await;
    assert_each_created_at_most_once(&audit_effects(&[deployment.agent_dir("agents")]), &ids);
    // Kills interrupted activities that had already written their marker; their
    // redelivery found it and changed nothing.
    let redelivered = read_audit(&deployment.agent_dir("agents"))
        .iter()
        .filter(|r| r["operation"] == "put-if-absent" && r["effect"] == "unchanged")
        .count();
    assert!(redelivered > 0, "no kill interrupted a running activity");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_queue_server_and_cut_database_connections_heal_by_themselves() {
    let mut own = OwnServer::start().await;
    let ids = own.onboard(60).await;
    own.deployment.start_agents(&["agents"], 4);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        own.deployment.api(0).count_not_active(&own.tenant).await > 0,
        "nothing was in flight"
    );

    own.nats.restart();
    // Every connection the manager holds to its database, cut by the server.
    let admin = std::env::var("CFM_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let database = own
        .deployment
        .scratch
        .url()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let pool = sqlx::PgPool::connect(&admin).await.unwrap();
    let cut: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&database)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        !cut.is_empty(),
        "the manager held no database connection to cut"
    );

    own.assert_all_onboarded_once(&ids, Duration::from_secs(180))
        .await;
}

/// A queue server that comes back without its storage has lost the work handed to it;
/// the managers still hold it and publish it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_a_queue_server_lost_is_published_again() {
    let mut own = OwnServer::start().await;
    let ids = own.onboard(10).await;
    // No agent yet: the first activities wait in the stream. Then the server loses it.
    own.wait_published(ids.len() as u64).await;
    own.nats.restart_without_storage();

    own.deployment.start_agents(&["agents"], 4);
    own.assert_all_onboarded_once(&ids, Duration::from_secs(90))
        .await;
    own.assert_recovery_reported();
}

/// A JetStream server confirms a publish before its file store is flushed, so one killed
/// at the wrong moment comes back without the last messages: a task waiting for an
/// agent, or the report of a task an agent ran and acknowledged. Both are lost here as
/// such a server loses them: removed from the stream, then the server SIGKILLed. The
/// managers publish the work again once they find the queue no longer holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_and_reports_the_queue_lost_are_published_again() {
    let mut own = OwnServer::start().await;
    // Tasks: no agent runs yet, so the first tasks of each onboarding (two roots, vault
    // and dns) wait, and are lost.
    let tasks_lost = own.onboard(3).await;
    own.lose("activity.>", 6).await;
    // Reports: the manager is down while an agent runs the next onboardings' first tasks
    // and acknowledges them; their reports are lost before the manager is back.
    let reports_lost = own.onboard(3).await;
    own.wait_published(6).await;
    own.deployment.managers[0].kill();
    own.deployment.start_agents(&["agents"], 4);
    own.lose("reports", 6).await;
    own.nats.restart();
    own.deployment.managers[0].restart();

    let ids: Vec<String> = tasks_lost.into_iter().chain(reports_lost).collect();
    own.assert_all_onboarded_once(&ids, Duration::from_secs(90))
        .await;
    own.assert_recovery_reported();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_real_servers_runs_both_halves_in_one_process() {
    let namespace = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let server = cfm_test_support::Server::start_on(
        cfm_manager::testing::TestBackend::Postgres,
        &["--nats-url", &nats_url(), "--nats-namespace", &namespace],
    )
    .await;
    let api = server.client();
    let env = api.dataspace_with_cell("cell-s").await;
    let tenant = api.post_ok("/tenants", json!({}), 201).await;
    let tenant_id = tenant["id"].as_str().unwrap();
    let ids = onboard(&api, tenant_id, &env.dataspace_id, 5).await;
    for id in &ids {
        api.wait_active(tenant_id, id, Duration::from_secs(60))
            .await;
    }
    assert_each_onboarding_completed_once(&api, &ids).await;
    let log = server.log();
    assert!(
        log.contains(&format!(
            "work goes through JetStream at {} (namespace {namespace})",
            nats_url()
        )),
        "{log}"
    );
    assert!(!log.contains("embedded queue"), "{log}");
}

#[test]
fn an_unreachable_queue_server_is_a_clear_error_without_its_password() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let data = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_cfm"))
        .args(["agent", "--data-dir"])
        .arg(data.path())
        .arg("--plugins")
        .arg(cfm_test_support::plugins_config())
        .args([
            "--nats-url",
            &format!("nats://cfm:hunter2@127.0.0.1:{port}"),
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("connecting to JetStream at nats://cfm:***@127.0.0.1"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}
