//! Retrying an errored participant through the real `cfm serve`: its deploy resumes from
//! the step that failed, the steps that completed neither run again nor lose their
//! outputs, and only a participant in error can be retried.

use std::time::{Duration, Instant};

use cfm_manager::on_both_backends;
use cfm_manager::testing::TestBackend;
use cfm_test_support::{Api, Server};
use reqwest::Method;
use serde_json::{Value, json};

use super::fleet::{create_cell, deploy};
use super::rollouts::{noop_failing, reconfigure_noop};

on_both_backends!(an_errored_participant_resumes_from_its_failed_step);

async fn an_errored_participant_resumes_from_its_failed_step(backend: TestBackend) {
    let dir = tempfile::tempdir().unwrap();
    let plugins = noop_failing(dir.path(), "failDeploysOf", &[0]);
    let plugins = plugins.display().to_string();
    let server = Server::start_on(backend, &["--no-seed", "--plugins", &plugins]).await;
    let api = server.client();
    vault_check_dns(&api).await;
    create_cell(&api, "a", 10, "eu").await;
    let tenant = api.post_ok("/tenants", json!({}), 201).await;
    let tenant = tenant["id"].as_str().unwrap().to_string();
    let (status, profile) = deploy(&api, &tenant, 0, json!({})).await;
    assert_eq!(status, 202, "{profile}");
    let id = profile["id"].as_str().unwrap().to_string();
    let errored = wait_state(&api, &tenant, &id, "error").await;
    assert_eq!(errored["error"], true);
    assert!(
        errored["errorDetail"]
            .as_str()
            .unwrap()
            .contains("failDeploysOf"),
        "{errored}"
    );
    let data = server.data_dir();
    let secret = data.join(format!("secrets/participants/{id}/api-key.secret"));
    let key = std::fs::read_to_string(&secret).unwrap();

    // Retrying before the fix fails the same way.
    let retried = api
        .post_ok(
            &format!("/tenants/{tenant}/participant-profiles/{id}/retry"),
            json!({}),
            202,
        )
        .await;
    assert_eq!(retried["vpas"][0]["state"], "pending");
    assert_eq!(retried["error"], false, "cleared while it runs again");
    wait_state(&api, &tenant, &id, "error").await;

    // Fixed by a reload, retried: the vault step is carried over, not run again.
    reconfigure_noop(&server, dir.path(), "failDeploysOf", &[]).await;
    api.post_ok(
        &format!("/tenants/{tenant}/participant-profiles/{id}/retry"),
        json!({}),
        202,
    )
    .await;
    let active = wait_state(&api, &tenant, &id, "active").await;
    assert_eq!(active["error"], false, "{active}");
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), key);
    assert!(
        active["properties"]["cfm.vpa.state"]["credentialPath"].is_string(),
        "the carried-over step's output reaches the profile: {active}"
    );
    let deploys = api.orchestrations_of(&id, "deploy").await;
    let deploys = deploys.as_array().unwrap();
    assert_eq!(deploys.len(), 3, "the history keeps the failed deploys");
    let last = deploys
        .iter()
        .find(|o| o["state"] == 2)
        .expect("one completed deploy");
    let step = |name: &str| {
        last["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(step("vault")["attempts"], 0, "carried over: {last}");
    assert!(step("check")["attempts"].as_i64().unwrap() >= 1, "{last}");
    assert!(step("dns")["attempts"].as_i64().unwrap() >= 1, "{last}");

    // Only a participant in error is retried.
    let (status, refused) = api
        .call(
            Method::POST,
            &format!("/tenants/{tenant}/participant-profiles/{id}/retry"),
            None,
            None,
        )
        .await;
    assert_eq!(status, 409, "{refused}");
    let (status, _) = api
        .call(
            Method::POST,
            &format!("/tenants/{tenant}/participant-profiles/missing/retry"),
            None,
            None,
        )
        .await;
    assert_eq!(status, 404);
}

async fn wait_state(api: &Api, tenant: &str, id: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let profile = api
            .get_json(&format!("/tenants/{tenant}/participant-profiles/{id}"))
            .await;
        if profile["vpas"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["state"] == state)
        {
            return profile;
        }
        assert!(Instant::now() < deadline, "never {state}: {profile}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A deploy of three steps in a row, `vault`, `check` (the noop plugin, which
/// [`noop_failing`] makes fail for chosen DIDs) and `dns`, without a dispose: a failed
/// deploy leaves the participant in error, its work kept.
pub(super) async fn vault_check_dns(api: &Api) {
    api.define_activities(&["cfm.vault.credentials", "cfm.dns.routing", "example.noop.1"])
        .await;
    api.post_ok(
        "/orchestration-definitions",
        json!({"activities": {"cfm.orchestration.vpa.deploy": [
            {"id": "vault", "type": "cfm.vault.credentials"},
            {"id": "check", "type": "example.noop.1", "dependsOn": ["vault"]},
            {"id": "dns", "type": "cfm.dns.routing", "dependsOn": ["check"]}]}}),
        201,
    )
    .await;
}
