//! Versioned templates and rollouts, through the real `cfm serve` with the built-in
//! plugins on the embedded backends: participants record the template version and the
//! plugins that provisioned them; a rollout upgrades them in batches, pauses itself at
//! its failure budget (a plugin that fails chosen upgrades), resumes once the plugin is
//! fixed by a reload, and an aborted rollout leaves each participant on one version.

use std::path::Path;
use std::time::{Duration, Instant};

use cfm_manager::on_both_backends;
use cfm_manager::testing::TestBackend;
use cfm_test_support::{Api, Server, plugins_config_with};
use reqwest::Method;
use serde_json::{Value, json};

use super::fleet::{create_cell, deploy};

on_both_backends!(
    a_rollout_pauses_at_its_budget_resumes_after_a_fix_and_completes,
    rollout_routes_refuse_bad_input
);

pub(super) const TEMPLATE: &str = "participant";
/// The participant whose upgrades the noop plugin fails until it is reconfigured.
const FAILING: usize = 1;

async fn a_rollout_pauses_at_its_budget_resumes_after_a_fix_and_completes(backend: TestBackend) {
    let dir = tempfile::tempdir().unwrap();
    let plugins = failing_upgrades(dir.path(), &[FAILING]);
    let plugins = plugins.display().to_string();
    let server = Server::start_on(backend, &["--no-seed", "--plugins", &plugins]).await;
    let api = server.client();
    template_v1(&api).await;
    let tenant = api.post_ok("/tenants", json!({}), 201).await;
    let tenant = tenant["id"].as_str().unwrap().to_string();
    create_cell(&api, "a", 20, "eu").await;

    // Six participants on version 1: no DNS name yet.
    let mut profiles = Vec::new();
    for n in 0..6 {
        let (status, profile) = deploy(&api, &tenant, n, json!({})).await;
        assert_eq!(status, 202, "{profile}");
        profiles.push(profile["id"].as_str().unwrap().to_string());
    }
    for id in &profiles {
        let profile = api.wait_active(&tenant, id, Duration::from_secs(60)).await;
        assert_eq!(profile["templateId"], TEMPLATE, "{profile}");
        assert_eq!(profile["templateVersion"], 1, "{profile}");
        let digests = profile["pluginDigests"].as_array().unwrap();
        assert_eq!(digests.len(), 2, "vault and k8s ran: {profile}");
        assert!(
            digests
                .iter()
                .all(|d| d["sha256"].as_str().unwrap().len() == 64),
            "{profile}"
        );
    }
    let data = server.data_dir();
    assert!(profiles.iter().all(|pc| record(&data, pc).is_none()));

    // Version 2 adds the DNS name and a check; new participants get it at once.
    add_version_2(&api).await;
    let (_, newcomer) = deploy(&api, &tenant, 6, json!({})).await;
    let newcomer = newcomer["id"].as_str().unwrap().to_string();
    let profile = api
        .wait_active(&tenant, &newcomer, Duration::from_secs(60))
        .await;
    assert_eq!(profile["templateVersion"], 2, "{profile}");
    assert!(record(&data, &newcomer).is_some());
    let on_v1 = api
        .post_ok(
            "/participant-profiles/query",
            json!({"predicate": format!("templateId = '{TEMPLATE}' AND templateVersion = 1")}),
            200,
        )
        .await;
    assert_eq!(on_v1.as_array().unwrap().len(), 6, "{on_v1}");
    let dns_plugin = profile["pluginDigests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["activityType"] == "cfm.dns.routing")
        .unwrap()["sha256"]
        .clone();
    let by_plugin = api
        .post_ok(
            "/participant-profiles/query",
            json!({"predicate": format!("pluginDigests.sha256 = '{}'", dns_plugin.as_str().unwrap())}),
            200,
        )
        .await;
    assert_eq!(
        by_plugin.as_array().unwrap().len(),
        1,
        "only the newcomer ran dns: {by_plugin}"
    );

    // The rollout: batches of two, no failure tolerated.
    let rollout = api
        .post_ok(
            "/rollouts",
            json!({"templateId": TEMPLATE, "batchSize": 2, "maxParallel": 2}),
            201,
        )
        .await;
    let id = rollout["id"].as_str().unwrap().to_string();
    assert_eq!(rollout["targetVersion"], 2);
    assert_eq!(
        rollout["total"], 6,
        "the newcomer is on version 2: {rollout}"
    );
    assert_eq!(rollout["maxFailures"], 0);
    let (status, refused) = api
        .call(
            Method::POST,
            "/rollouts",
            Some(json!({"templateId": TEMPLATE})),
            None,
        )
        .await;
    assert_eq!(
        status, 409,
        "one rollout of a template at a time: {refused}"
    );

    let paused = wait_rollout(&api, &id, "paused").await;
    assert!(
        paused["detail"]
            .as_str()
            .unwrap()
            .contains("failure budget spent"),
        "{paused}"
    );
    let failed = api
        .get_json(&format!("/rollouts/{id}/participants?state=failed"))
        .await;
    let failed = failed.as_array().unwrap();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["profileId"], profiles[FAILING].as_str());
    assert!(
        failed[0]["detail"]
            .as_str()
            .unwrap()
            .contains("failUpgradesOf"),
        "{failed:?}"
    );
    let stuck = api
        .get_json(&format!(
            "/tenants/{tenant}/participant-profiles/{}",
            profiles[FAILING]
        ))
        .await;
    assert_eq!(stuck["templateVersion"], 1, "a failed upgrade: {stuck}");
    assert!(
        stuck["vpas"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["state"] == "active"),
        "a failed upgrade leaves the participant active: {stuck}"
    );

    // Fix the plugin by reloading its settings, then resume: the failed one is retried.
    reconfigure_noop(&server, dir.path(), "failUpgradesOf", &[]).await;
    let resumed = api
        .post_ok(&format!("/rollouts/{id}/resume"), json!({}), 200)
        .await;
    assert_eq!(resumed["state"], "running");
    assert_eq!(resumed["failures"], 0);
    let done = wait_rollout(&api, &id, "completed").await;
    assert_eq!(
        done["progress"],
        json!({"pending": 0, "upgrading": 0, "upgraded": 6, "failed": 0, "skipped": 0}),
        "{done}"
    );
    let targets = api.get_json(&format!("/rollouts/{id}/participants")).await;
    for target in targets.as_array().unwrap() {
        let retried = target["profileId"] == profiles[FAILING].as_str();
        assert_eq!(target["attempts"], if retried { 2 } else { 1 }, "{target}");
        assert_eq!(target["fromVersion"], 1, "{target}");
    }
    for pc in &profiles {
        let profile = api
            .get_json(&format!("/tenants/{tenant}/participant-profiles/{pc}"))
            .await;
        assert_eq!(profile["templateVersion"], 2, "{profile}");
        assert_eq!(profile["pluginDigests"].as_array().unwrap().len(), 4);
        assert!(record(&data, pc).is_some(), "the upgrade added {pc}'s name");
        let upgrades = api.orchestrations_of(pc, "upgrade").await;
        let completed = upgrades
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o["state"] == 2)
            .count();
        assert_eq!(completed, 1, "upgraded exactly once: {upgrades}");
    }

    // Aborted after its first batch: one participant on version 3, the rest on 2.
    api.post_ok(
        &format!("/orchestration-definitions/{TEMPLATE}/versions"),
        version_2_activities(),
        201,
    )
    .await;
    let slow = api
        .post_ok(
            "/rollouts",
            json!({"templateId": TEMPLATE, "batchSize": 1, "pauseBetweenBatchesMs": 600000}),
            201,
        )
        .await;
    assert_eq!(slow["total"], 7);
    let slow_id = slow["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rollout = api.get_json(&format!("/rollouts/{slow_id}")).await;
        if rollout["progress"]["upgraded"] == 1 && rollout["batch"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "{rollout}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let aborted = api
        .post_ok(&format!("/rollouts/{slow_id}/abort"), json!({}), 200)
        .await;
    assert_eq!(aborted["state"], "aborted");
    assert_eq!(aborted["progress"]["upgraded"], 1, "{aborted}");
    assert_eq!(aborted["progress"]["skipped"], 6, "{aborted}");
    let (status, _) = api
        .call(
            Method::POST,
            &format!("/rollouts/{slow_id}/resume"),
            None,
            None,
        )
        .await;
    assert_eq!(status, 409, "an aborted rollout stays aborted");
    let mut versions: Vec<i64> = Vec::new();
    for pc in profiles.iter().chain([&newcomer]) {
        let profile = api
            .get_json(&format!("/tenants/{tenant}/participant-profiles/{pc}"))
            .await;
        versions.push(profile["templateVersion"].as_i64().unwrap());
    }
    versions.sort();
    assert_eq!(versions, [2, 2, 2, 2, 2, 2, 3]);
    let listed = api.get_json("/rollouts").await;
    assert_eq!(listed[0]["id"], slow_id.as_str(), "newest first");

    // The history of the participant whose first upgrade failed, newest first.
    let history = api
        .get_json(&format!(
            "/tenants/{tenant}/participant-profiles/{}/history",
            profiles[FAILING]
        ))
        .await;
    let entries: Vec<(&str, i64, i64)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["orchestrationType"].as_str().unwrap(),
                e["definitionVersion"].as_i64().unwrap(),
                e["state"].as_i64().unwrap(),
            )
        })
        .filter(|(_, version, _)| *version <= 2)
        .collect();
    assert_eq!(
        entries,
        [
            ("cfm.orchestration.vpa.upgrade", 2, 2),
            ("cfm.orchestration.vpa.upgrade", 2, 3),
            ("cfm.orchestration.vpa.deploy", 1, 2),
        ],
        "{history}"
    );

    // Disposing an upgraded participant runs its version's dispose: the name goes too.
    api.dispose(&tenant, &profiles[0]).await;
    assert!(record(&data, &profiles[0]).is_none());
    let history = api
        .get_json(&format!(
            "/tenants/{tenant}/participant-profiles/{}/history",
            profiles[0]
        ))
        .await;
    assert_eq!(
        history[0]["orchestrationType"],
        "cfm.orchestration.vpa.dispose"
    );
}

async fn rollout_routes_refuse_bad_input(backend: TestBackend) {
    let server = Server::start_on(backend, &["--no-seed"]).await;
    let api = server.client();
    template_v1(&api).await;
    let refused = |body: Value| {
        let api = api.clone();
        async move {
            let (status, answer) = api
                .call(Method::POST, "/rollouts", Some(body.clone()), None)
                .await;
            assert_eq!(status, 400, "{body}: {answer}");
            answer["message"].as_str().unwrap_or_default().to_string()
        }
    };
    assert!(
        refused(json!({"templateId": "nope"}))
            .await
            .contains("does not exist")
    );
    assert!(
        refused(json!({"templateId": TEMPLATE, "version": 9}))
            .await
            .contains("version 9")
    );
    refused(json!({"templateId": TEMPLATE, "selector": "templateVersion = "})).await;
    refused(json!({"templateId": TEMPLATE, "selector": "nosuchfield = 1"})).await;
    refused(json!({"templateId": TEMPLATE, "batchSize": 0})).await;
    refused(json!({"templateId": TEMPLATE, "maxParallel": 257})).await;
    refused(json!({"templateId": TEMPLATE, "failureBudget": {"percent": 101}})).await;
    refused(json!({"templateId": TEMPLATE, "failureBudget": {"count": -1}})).await;
    refused(json!({"templateId": TEMPLATE, "pauseBetweenBatchesMs": -5})).await;
    refused(json!({"templateId": TEMPLATE, "surprise": true})).await;
    refused(json!({"templateId": "../x"})).await;

    // Nothing selected: completed at once.
    let empty = api
        .post_ok("/rollouts", json!({"templateId": TEMPLATE}), 201)
        .await;
    assert_eq!(empty["total"], 0);
    let id = empty["id"].as_str().unwrap().to_string();
    wait_rollout(&api, &id, "completed").await;
    let (status, _) = api
        .call(Method::POST, &format!("/rollouts/{id}/pause"), None, None)
        .await;
    assert_eq!(status, 409, "a completed rollout cannot be paused");
    let (status, _) = api
        .call(Method::POST, &format!("/rollouts/{id}/restart"), None, None)
        .await;
    assert_eq!(status, 400);
    let (status, _) = api
        .call(
            Method::GET,
            &format!("/rollouts/{id}/participants?state=odd"),
            None,
            None,
        )
        .await;
    assert_eq!(status, 400);
    for path in ["/rollouts/missing", "/rollouts/missing/participants"] {
        let (status, _) = api.call(Method::GET, path, None, None).await;
        assert_eq!(status, 404, "{path}");
    }
    let (status, _) = api
        .call(Method::POST, "/rollouts/missing/abort", None, None)
        .await;
    assert_eq!(status, 404);

    // Versions of definitions.
    let (status, _) = api
        .call(
            Method::POST,
            "/orchestration-definitions/missing/versions",
            Some(version_2_activities()),
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, answer) = api
        .call(
            Method::POST,
            &format!("/orchestration-definitions/{TEMPLATE}/versions"),
            Some(json!({"activities": {"cfm.orchestration.vpa.deploy": [
                {"id": "x", "type": "unknown.type"}]}})),
            None,
        )
        .await;
    assert_eq!(status, 400, "validated as on create: {answer}");
    let listed = api
        .get_json(&format!("/orchestration-definitions/{TEMPLATE}/versions"))
        .await;
    assert_eq!(
        listed.as_array().unwrap().len(),
        1,
        "a refused version is not kept"
    );
    for (path, expected) in [
        (
            format!("/orchestration-definitions/{TEMPLATE}/versions/1"),
            200,
        ),
        (
            format!("/orchestration-definitions/{TEMPLATE}/versions/2"),
            404,
        ),
        (
            format!("/orchestration-definitions/{TEMPLATE}/versions/one"),
            400,
        ),
    ] {
        let (status, _) = api.call(Method::GET, &path, None, None).await;
        assert_eq!(status, expected, "{path}");
    }
}

/// Activity definitions and version 1 of the template: the runtime and its credentials.
pub(super) async fn template_v1(api: &Api) {
    api.define_activities(&[
        "cfm.vault.credentials",
        "cfm.k8s.runtime",
        "cfm.dns.routing",
        "example.noop.1",
    ])
    .await;
    let v1 = api
        .post_ok(
            "/orchestration-definitions",
            json!({"id": TEMPLATE, "activities": {
                "cfm.orchestration.vpa.deploy": [
                    {"id": "vault", "type": "cfm.vault.credentials"},
                    {"id": "k8s", "type": "cfm.k8s.runtime", "dependsOn": ["vault"]}],
                "cfm.orchestration.vpa.dispose": [
                    {"id": "k8s", "type": "cfm.k8s.runtime"},
                    {"id": "vault", "type": "cfm.vault.credentials", "dependsOn": ["k8s"]}]}}),
            201,
        )
        .await;
    assert_eq!(v1["version"], 1);
}

pub(super) async fn add_version_2(api: &Api) {
    let v2 = api
        .post_ok(
            &format!("/orchestration-definitions/{TEMPLATE}/versions"),
            version_2_activities(),
            201,
        )
        .await;
    assert_eq!(v2["version"], 2);
    let current = api
        .get_json(&format!("/orchestration-definitions/{TEMPLATE}"))
        .await;
    assert_eq!(current["version"], 2, "the id names the newest: {current}");
    let v1 = api
        .get_json(&format!("/orchestration-definitions/{TEMPLATE}/versions/1"))
        .await;
    assert_eq!(
        v1["activities"]["cfm.orchestration.vpa.deploy"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

/// Version 2: a DNS name, and a check (the noop plugin) that fails chosen upgrades.
fn version_2_activities() -> Value {
    json!({"description": "with a DNS name", "activities": {
        "cfm.orchestration.vpa.deploy": [
            {"id": "vault", "type": "cfm.vault.credentials"},
            {"id": "k8s", "type": "cfm.k8s.runtime", "dependsOn": ["vault"]},
            {"id": "dns", "type": "cfm.dns.routing", "dependsOn": ["k8s"]},
            {"id": "check", "type": "example.noop.1", "dependsOn": ["dns"]}],
        "cfm.orchestration.vpa.dispose": [
            {"id": "dns", "type": "cfm.dns.routing"},
            {"id": "k8s", "type": "cfm.k8s.runtime", "dependsOn": ["dns"]},
            {"id": "vault", "type": "cfm.vault.credentials", "dependsOn": ["k8s"]}]}})
}

/// Writes the built-in plugins' configuration to `dir`, the noop plugin failing the
/// upgrades of the participants numbered `failing` (as [`deploy`] numbers their DIDs).
pub(super) fn failing_upgrades(dir: &Path, failing: &[usize]) -> std::path::PathBuf {
    noop_failing(dir, "failUpgradesOf", failing)
}

/// Writes the built-in plugins' configuration to `dir`, the noop plugin's `setting`
/// (`failDeploysOf`, `failUpgradesOf` or `failDisposesOf`) listing the participants
/// numbered `failing` (as [`deploy`] numbers their DIDs).
pub(super) fn noop_failing(dir: &Path, setting: &str, failing: &[usize]) -> std::path::PathBuf {
    let dids: Vec<toml::Value> = failing
        .iter()
        .map(|n| format!("did:web:p{n}.example").into())
        .collect();
    plugins_config_with(dir, |plugin| {
        if plugin["name"].as_str() == Some("noop") {
            let mut settings = toml::Table::new();
            settings.insert(setting.into(), toml::Value::Array(dids.clone()));
            plugin.insert("settings".into(), settings.into());
        }
    })
}

/// [`noop_failing`] on the configuration `server` runs with, then waits until the server
/// has reloaded its plugins.
pub(super) async fn reconfigure_noop(
    server: &Server,
    dir: &Path,
    setting: &str,
    failing: &[usize],
) {
    let reloaded = || {
        server
            .log()
            .matches("plugin configuration reloaded")
            .count()
    };
    let before = reloaded();
    noop_failing(dir, setting, failing);
    let deadline = Instant::now() + Duration::from_secs(30);
    while reloaded() == before {
        assert!(Instant::now() < deadline, "the plugins were not reloaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(super) async fn wait_rollout(api: &Api, id: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let rollout = api.get_json(&format!("/rollouts/{id}")).await;
        if rollout["state"] == state {
            return rollout;
        }
        assert!(
            Instant::now() < deadline,
            "rollout never reached {state}: {rollout}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The CNAME target of a participant's name in the embedded zone file, if it has one.
fn record(data: &Path, pc: &str) -> Option<String> {
    let zone =
        std::fs::read_to_string(data.join("dns/participants.cfm.local.zone")).unwrap_or_default();
    zone.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.len() == 5 && fields[0] == pc && fields[3] == "CNAME")
            .then(|| fields[4].to_string())
    })
}
