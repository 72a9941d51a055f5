//! Scaling a participant through the real `cfm serve`: a change of its VPA properties
//! (`PATCH` with `If-Match`) is pending on the profile until an update orchestration has
//! applied it, and then reaches the participant's objects in the (embedded) cluster,
//! where a reconcile finds it no drift.

use std::time::{Duration, Instant};

use cfm_manager::auth::ALL_SCOPES;
use cfm_manager::on_both_backends;
use cfm_manager::testing::TestBackend;
use cfm_test_support::Server;
use reqwest::Method;
use serde_json::{Value, json};

use super::fleet::{create_cell, template};

on_both_backends!(a_vpa_properties_change_reaches_the_cluster);

async fn a_vpa_properties_change_reaches_the_cluster(backend: TestBackend) {
    let server = Server::start_on(backend, &["--no-seed"]).await;
    let api = server.client();
    template(&api).await;
    let cell = create_cell(&api, "a", 10, "eu").await;
    let tenant = api.post_ok("/tenants", json!({}), 201).await;
    let tenant = tenant["id"].as_str().unwrap().to_string();
    let profile = api
        .post_ok(
            &format!("/tenants/{tenant}/participant-profiles"),
            json!({"identifier": "did:web:scaled.example",
                   "vpaProperties": {"cfm.connector": {"replicas": 1, "memory": "1Gi"}}}),
            202,
        )
        .await;
    let id = profile["id"].as_str().unwrap().to_string();
    let path = format!("/tenants/{tenant}/participant-profiles/{id}");
    let active = api.wait_active(&tenant, &id, Duration::from_secs(60)).await;
    let config_map = server.data_dir().join(format!(
        "cluster/{cell}/cfm-{id}/ConfigMap/participant-context.yaml"
    ));
    let connector = |text: &str| -> Value {
        let line = text
            .replace('\\', "")
            .lines()
            .find(|l| l.contains("vpa.cfm.connector"))
            .map(str::to_string)
            .unwrap_or_default();
        let start = line.find('{').unwrap_or(0);
        let end = line.rfind('}').map_or(0, |e| e + 1);
        serde_json::from_str(&line[start..end]).unwrap_or(Value::Null)
    };
    let read = || std::fs::read_to_string(&config_map).unwrap();
    assert_eq!(connector(&read()), json!({"replicas": 1, "memory": "1Gi"}));

    // Sizing on shared cells is the operator's: a tenant's own token may not.
    let own = server.client_with(server.tenant_token(&tenant, &ALL_SCOPES));
    let (status, refused) = own
        .call(
            Method::PATCH,
            &path,
            Some(json!({"vpaProperties": {"cfm.connector": {"replicas": 99}}})),
            None,
        )
        .await;
    assert_eq!(status, 403, "{refused}");

    // Conditional on the version read.
    let version = active["version"].as_i64().unwrap();
    let scale = json!({"vpaProperties": {"cfm.connector": {"replicas": 3, "memory": null}}});
    let stale = format!("\"{}\"", version - 1);
    let (status, refused) = api
        .call(Method::PATCH, &path, Some(scale.clone()), Some(&stale))
        .await;
    assert_eq!(status, 409, "{refused}");
    let current = format!("\"{version}\"");
    let (status, pending) = api
        .call(Method::PATCH, &path, Some(scale), Some(&current))
        .await;
    assert_eq!(status, 202, "{pending}");
    assert_eq!(
        pending["pendingVpaProperties"],
        json!({"cfm.connector": {"replicas": 3}}),
        "the change shows until it is applied: {pending}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let applied = loop {
        let profile = api.get_json(&path).await;
        if profile.get("pendingVpaProperties").is_none() {
            break profile;
        }
        assert!(Instant::now() < deadline, "never applied: {profile}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let vpa = applied["vpas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["type"] == "cfm.connector")
        .unwrap()
        .clone();
    assert_eq!(vpa["properties"], json!({"replicas": 3}), "{applied}");
    assert!(
        applied["vpas"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["state"] == "active")
    );
    assert_eq!(connector(&read()), json!({"replicas": 3}), "{}", read());
    let updates = api.orchestrations_of(&id, "update").await;
    assert_eq!(updates.as_array().unwrap().len(), 1, "{updates}");

    // A reconcile starts from the VPAs as they are now: the change is no drift, and
    // nothing undoes it.
    api.post_ok(&format!("{path}/reconcile"), json!({}), 202)
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let reconciled = loop {
        let profile = api.get_json(&path).await;
        if profile["drift"]["state"] != "verifying" {
            break profile;
        }
        assert!(Instant::now() < deadline, "never verified: {profile}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(reconciled["drift"]["state"], "in-sync", "{reconciled}");
    assert_eq!(connector(&read()), json!({"replicas": 3}), "{}", read());

    // Bad changes.
    for bad in [
        json!({"vpaProperties": {"cfm.nothing": {"replicas": 2}}}),
        json!({"vpaProperties": {"cfm.connector": 2}}),
        json!({"vpaProperties": {}}),
        json!({"vpaProperties": {"cfm.connector": {}}, "surprise": 1}),
        json!({}),
    ] {
        let (status, answer) = api
            .call(Method::PATCH, &path, Some(bad.clone()), None)
            .await;
        assert_eq!(status, 400, "{bad}: {answer}");
    }
    let (status, _) = api
        .call(
            Method::PATCH,
            &format!("/tenants/{tenant}/participant-profiles/missing"),
            Some(json!({"vpaProperties": {"cfm.connector": {}}})),
            None,
        )
        .await;
    assert_eq!(status, 404);
}
