//! Decommissioning a tenant through the real `cfm serve` on the embedded backends: every
//! participant disposed (a plugin build that fails one participant's dispose keeps the
//! tenant, with the reason), a crash mid-way resumed, then the tenant deleted with
//! nothing of it left in the zone, the cluster or the secrets store, and a neighbouring
//! tenant untouched. The same on a split deployment with production backends.

use std::path::Path;
use std::time::{Duration, Instant};

use cfm_host::testing::{Bind, OpenBao};
use cfm_manager::on_both_backends;
use cfm_manager::testing::TestBackend;
use cfm_standins::kubernetes::KubeApi;
use cfm_test_support::{Api, Deployment, Server, nats_url};
use reqwest::Method;
use serde_json::{Value, json};

use super::fleet::{create_cell, deploy};
use super::fleet_load::onboard_concurrently;
use super::rollout_load::{reloads_of, wait_reloaded};
use super::rollouts::{noop_failing, reconfigure_noop};

on_both_backends!(a_tenant_is_deleted_only_once_every_participant_is_disposed);

const PARTICIPANTS: usize = 50;
/// The participant whose dispose fails until the plugin is reconfigured.
const FAILING: usize = 3;

async fn a_tenant_is_deleted_only_once_every_participant_is_disposed(backend: TestBackend) {
    let dir = tempfile::tempdir().unwrap();
    let plugins = noop_failing(dir.path(), "failDisposesOf", &[FAILING]);
    let plugins = plugins.display().to_string();
    let mut server = Server::start_on(backend, &["--no-seed", "--plugins", &plugins]).await;
    let api = server.client();
    template(&api).await;
    create_cell(&api, "a", 100, "eu").await;
    let tenant = api.post_ok("/tenants", json!({}), 201).await;
    let tenant = tenant["id"].as_str().unwrap().to_string();
    let neighbour = api.post_ok("/tenants", json!({}), 201).await;
    let neighbour = neighbour["id"].as_str().unwrap().to_string();
    let mut profiles = Vec::new();
    for n in 0..PARTICIPANTS {
        profiles.push(onboard(&api, &tenant, n).await);
    }
    let neighbours = [
        onboard(&api, &neighbour, 100).await,
        onboard(&api, &neighbour, 101).await,
    ];
    for id in &profiles {
        api.wait_active(&tenant, id, Duration::from_secs(120)).await;
    }
    for id in &neighbours {
        api.wait_active(&neighbour, id, Duration::from_secs(60))
            .await;
    }
    let data = server.data_dir();
    assert!(profiles.iter().all(|pc| holds_anything(&data, pc)));

    // Upstream's plain DELETE is unchanged.
    let (status, refused) = api
        .call(Method::DELETE, &format!("/tenants/{tenant}"), None, None)
        .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["reason"], "participants-not-disposed");

    let started = api
        .post_ok(
            &format!("/tenants/{tenant}/decommission"),
            json!({"parallelism": 8}),
            202,
        )
        .await;
    assert_eq!(started["state"], "running");
    assert_eq!(started["total"], PARTICIPANTS as i64);
    let (status, refused) = deploy(&api, &tenant, 999, json!({})).await;
    assert_eq!(
        status, 409,
        "no new participants while decommissioning: {refused}"
    );
    let again = api
        .post_ok(&format!("/tenants/{tenant}/decommission"), json!({}), 202)
        .await;
    assert_eq!(
        again["id"], started["id"],
        "asking again answers the running one"
    );

    // A crash mid-way: the decommission resumes on restart.
    under_way(&api, &tenant).await;
    server.kill();
    let server = server.restart().await;
    let api = server.client();

    let failed = wait_decommission(&api, &tenant, "failed").await;
    let detail = failed["detail"].as_str().unwrap();
    assert!(
        detail.contains(&profiles[FAILING]) && detail.contains("failDisposesOf"),
        "the reason names the participant and its error: {failed}"
    );
    assert_eq!(failed["remaining"], 1, "{failed}");
    let kept = api.get_json(&format!("/tenants/{tenant}")).await;
    assert_eq!(kept["id"], tenant.as_str(), "the tenant is kept");
    for (n, pc) in profiles.iter().enumerate() {
        assert_eq!(holds_anything(&data, pc), n == FAILING, "{pc}");
    }

    // Fixed by a reload; the cascading DELETE tries again and finishes.
    reconfigure_noop(&server, dir.path(), "failDisposesOf", &[]).await;
    let cascade = cascade(&api, &tenant).await;
    assert_ne!(cascade["id"], started["id"], "a new decommission");
    let done = wait_decommission(&api, &tenant, "completed").await;
    assert_eq!(done["remaining"], 0, "{done}");
    let (status, _) = api
        .call(Method::GET, &format!("/tenants/{tenant}"), None, None)
        .await;
    assert_eq!(status, 404, "the tenant is deleted");
    for pc in &profiles {
        assert!(!holds_anything(&data, pc), "{pc} left something behind");
    }
    for pc in &neighbours {
        let profile = api
            .wait_active(&neighbour, pc, Duration::from_secs(5))
            .await;
        assert_eq!(profile["tenantId"], neighbour.as_str());
        assert!(
            holds_anything(&data, pc),
            "the neighbour's {pc} is untouched"
        );
    }
    let (status, _) = api
        .call(
            Method::DELETE,
            &format!("/tenants/{neighbour}?cascade=maybe"),
            None,
            None,
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = api
        .call(
            Method::POST,
            &format!("/tenants/{neighbour}/decommission"),
            Some(json!({"parallelism": 0})),
            None,
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = api
        .call(
            Method::POST,
            "/tenants/missing/decommission",
            Some(json!({})),
            None,
        )
        .await;
    assert_eq!(status, 404);
}

/// The same on a split deployment (two managers, two agents, PostgreSQL and JetStream)
/// with production backends: a cascading DELETE of a tenant of 50 disposes every
/// participant through both managers, one of them SIGKILLed mid-way, stops with the tenant
/// intact and the reason shown while one dispose fails, and once that is fixed by a hot
/// reload leaves nothing of the tenant in OpenBao, BIND9 or the Kubernetes stand-in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_a_cascade_leaves_nothing_in_openbao_bind_or_kubernetes() {
    let bao = OpenBao::start();
    let bind = Bind::start("participants.cfm.local");
    let kube = KubeApi::start().await;
    let mut deployment = Deployment::start(&nats_url(), 2).await;
    let config_dir = deployment.dir().join("plugin-config");
    std::fs::create_dir_all(&config_dir).unwrap();
    let plugins = noop_failing(&config_dir, "failDisposesOf", &[FAILING]);
    let backends =
        cfm_test_support::production_backends(deployment.dir(), &bao, &bao.address, &bind, &kube);
    deployment.start_agents_with(&["agents", "agents"], 8, &plugins, &backends);
    let apis = [deployment.api(0), deployment.api(1)];
    template(&apis[0]).await;
    create_cell(&apis[0], "a", 100, "eu").await;
    let tenant = apis[0].post_ok("/tenants", json!({}), 201).await;
    let tenant = tenant["id"].as_str().unwrap().to_string();
    let profiles = onboard_concurrently(&apis, &tenant, 0..PARTICIPANTS).await;
    let mut failing = String::new();
    for id in &profiles {
        let profile = apis[0]
            .wait_active(&tenant, id, Duration::from_secs(120))
            .await;
        if profile["identifier"] == format!("did:web:p{FAILING}.example") {
            failing = id.clone();
        }
    }
    let holds = |records: &[(String, String)], objects: &[String], pc: &str| {
        records.iter().any(|(name, _)| name == pc)
            || objects.iter().any(|o| o.contains(&format!("cfm-{pc}")))
    };
    let records = bind.records("CNAME").unwrap();
    let objects = kube.names();
    for pc in &profiles {
        assert!(holds(&records, &objects, pc), "{pc} was not provisioned");
        let (status, _) = bao.read(&format!("participants/{pc}/api-key")).await;
        assert_eq!(status, 200);
    }

    let started = cascade(&apis[1], &tenant).await;
    assert_eq!(started["total"], PARTICIPANTS as i64, "{started}");
    under_way(&apis[1], &tenant).await;
    deployment.managers[0].kill();
    std::thread::sleep(Duration::from_millis(500));
    deployment.managers[0].try_restart().unwrap();
    // The restarted manager listens on a new port.
    let apis = [deployment.api(0), deployment.api(1)];

    let failed = wait_decommission(&apis[1], &tenant, "failed").await;
    let detail = failed["detail"].as_str().unwrap();
    assert!(
        detail.contains(&failing) && detail.contains("failDisposesOf"),
        "the reason names the participant and its error: {failed}"
    );
    let kept = apis[0].get_json(&format!("/tenants/{tenant}")).await;
    assert_eq!(kept["id"], tenant.as_str(), "the tenant is kept");
    let records = bind.records("CNAME").unwrap();
    let objects = kube.names();
    for pc in &profiles {
        assert_eq!(holds(&records, &objects, pc), *pc == failing, "{pc}");
    }

    // Fixed by a hot reload on both agents; the cascade runs again and finishes.
    let reloads: Vec<usize> = deployment.agents.iter().map(reloads_of).collect();
    noop_failing(&config_dir, "failDisposesOf", &[]);
    wait_reloaded(&deployment, &reloads).await;
    let again = cascade(&apis[0], &tenant).await;
    assert_ne!(again["id"], started["id"], "a new decommission");
    let done = wait_decommission(&apis[0], &tenant, "completed").await;
    assert_eq!(done["remaining"], 0, "{done}");
    let records = bind.records("CNAME").unwrap();
    let objects = kube.names();
    for pc in &profiles {
        assert!(!holds(&records, &objects, pc), "{pc} left something behind");
        let (status, _) = bao.read(&format!("participants/{pc}/api-key")).await;
        assert_eq!(status, 404, "{pc} left its key behind");
    }
}

async fn template(api: &Api) {
    api.define_activities(&[
        "cfm.vault.credentials",
        "cfm.k8s.runtime",
        "cfm.dns.routing",
        "example.noop.1",
    ])
    .await;
    // The check runs first on dispose: a participant whose check fails keeps everything.
    api.post_ok(
        "/orchestration-definitions",
        json!({"activities": {
            "cfm.orchestration.vpa.deploy": [
                {"id": "vault", "type": "cfm.vault.credentials"},
                {"id": "k8s", "type": "cfm.k8s.runtime", "dependsOn": ["vault"]},
                {"id": "dns", "type": "cfm.dns.routing", "dependsOn": ["k8s"]}],
            "cfm.orchestration.vpa.dispose": [
                {"id": "check", "type": "example.noop.1"},
                {"id": "dns", "type": "cfm.dns.routing", "dependsOn": ["check"]},
                {"id": "k8s", "type": "cfm.k8s.runtime", "dependsOn": ["dns"]},
                {"id": "vault", "type": "cfm.vault.credentials", "dependsOn": ["k8s"]}]}}),
        201,
    )
    .await;
}

async fn onboard(api: &Api, tenant: &str, n: usize) -> String {
    let (status, profile) = deploy(api, tenant, n, json!({})).await;
    assert_eq!(status, 202, "{profile}");
    profile["id"].as_str().unwrap().to_string()
}

/// Asks for `tenant`'s cascading delete: 202 with its decommission.
async fn cascade(api: &Api, tenant: &str) -> Value {
    let (status, started) = api
        .call(
            Method::DELETE,
            &format!("/tenants/{tenant}?cascade=true"),
            None,
            None,
        )
        .await;
    assert_eq!(status, 202, "{started}");
    started
}

/// Waits until `tenant`'s decommission has disposed of 10 participants, or ended.
async fn under_way(api: &Api, tenant: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let progress = decommission(api, tenant).await;
        if progress["remaining"].as_i64().unwrap() < PARTICIPANTS as i64 - 10
            || progress["state"] != "running"
        {
            return;
        }
        assert!(Instant::now() < deadline, "{progress}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn decommission(api: &Api, tenant: &str) -> Value {
    api.get_json(&format!("/tenants/{tenant}/decommission"))
        .await
}

async fn wait_decommission(api: &Api, tenant: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let progress = decommission(api, tenant).await;
        if progress["state"] == state {
            return progress;
        }
        assert!(
            Instant::now() < deadline,
            "the decommission never reached {state}: {progress}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the embedded backends hold anything of the participant: its secrets, its
/// namespace in any cell, its name in the zone.
fn holds_anything(data: &Path, pc: &str) -> bool {
    let secrets = data.join(format!("secrets/participants/{pc}"));
    let has_secrets = std::fs::read_dir(&secrets).is_ok_and(|mut entries| entries.next().is_some());
    let namespace = std::fs::read_dir(data.join("cluster"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|cell| {
            cell.path()
                .join(format!("_cluster/Namespace/cfm-{pc}.yaml"))
                .exists()
        });
    let zone =
        std::fs::read_to_string(data.join("dns/participants.cfm.local.zone")).unwrap_or_default();
    let named = zone
        .lines()
        .any(|line| line.split_whitespace().next() == Some(pc));
    has_secrets || namespace || named
}
