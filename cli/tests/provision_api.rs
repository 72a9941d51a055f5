//! Provision Manager routes over HTTP against the real `cfm serve`, on both backends:
//! querying orchestrations and deleting definitions.

mod support;

use std::time::Duration;

use cfm_manager::on_both_backends;
use cfm_manager::testing::TestBackend;
use reqwest::Method;
use serde_json::json;
use support::Server;

on_both_backends!(
    orchestrations_are_found_by_predicate,
    definitions_in_use_cannot_be_deleted,
);

async fn orchestrations_are_found_by_predicate(backend: TestBackend) {
    let server = Server::start_on(backend, &[]).await;
    let api = server.client();
    let env = api.dataspace_with_cell("cell-o").await;
    let tenant = api.post_ok("/tenants", json!({}), 201).await;
    let tenant_id = tenant["id"].as_str().unwrap();
    let mut profiles = Vec::new();
    for name in ["one", "two"] {
        let profile = api
            .post_ok(
                &format!("/tenants/{tenant_id}/participant-profiles"),
                json!({"identifier": format!("did:web:{name}.example"),
                       "dataspaceProfileIds": [env.dataspace_id]}),
                202,
            )
            .await;
        profiles.push(profile["id"].as_str().unwrap().to_string());
    }
    for profile in &profiles {
        api.wait_active(tenant_id, profile, Duration::from_secs(30))
            .await;
    }

    let found = api
        .post_ok(
            "/orchestrations/query",
            json!({"predicate": format!("correlationId = '{}'", profiles[0])}),
            200,
        )
        .await;
    let found = found.as_array().unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["state"], 2);
    assert_eq!(
        found[0]["orchestrationType"],
        "cfm.orchestration.vpa.deploy"
    );
    assert!(
        found[0]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["state"] == "completed")
    );
    let single = api
        .get_json(&format!(
            "/orchestrations/{}",
            found[0]["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(single, found[0]);

    let completed = api
        .post_ok(
            "/orchestrations/query",
            json!({"predicate": "state = 2 AND orchestrationType STARTS_WITH 'cfm.orchestration.vpa.'",
                   "limit": 1}),
            200,
        )
        .await;
    assert_eq!(completed.as_array().unwrap().len(), 1);
    for bad in ["state = 'done'", "nope = 1", "correlationId ="] {
        let (status, body) = api
            .call(
                Method::POST,
                "/orchestrations/query",
                Some(json!({"predicate": bad})),
                None,
            )
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
}

async fn definitions_in_use_cannot_be_deleted(backend: TestBackend) {
    let server = Server::start_on(backend, &[]).await;
    let api = server.client();
    let (status, body) = api
        .call(
            Method::DELETE,
            "/activity-definitions/cfm.vault.credentials",
            None,
            None,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["message"].as_str().unwrap().contains("referenced"));

    api.post_ok(
        "/activity-definitions",
        json!({"type": "x.unused", "description": "nobody runs it"}),
        201,
    )
    .await;
    let path = "/activity-definitions/x.unused";
    assert_eq!(api.call(Method::DELETE, path, None, None).await.0, 200);
    assert_eq!(api.call(Method::DELETE, path, None, None).await.0, 404);

    // Without the only template, a new participant has nothing to run.
    let templates = api.get_json("/orchestration-definitions").await;
    for template in templates.as_array().unwrap() {
        let path = format!(
            "/orchestration-definitions/{}",
            template["id"].as_str().unwrap()
        );
        assert_eq!(api.call(Method::DELETE, &path, None, None).await.0, 200);
        assert_eq!(api.get(&path).await.status(), 404);
    }
    let env = api.dataspace_with_cell("cell-d").await;
    let tenant = api.post_ok("/tenants", json!({}), 201).await;
    let (status, body) = api
        .call(
            Method::POST,
            &format!(
                "/tenants/{}/participant-profiles",
                tenant["id"].as_str().unwrap()
            ),
            Some(json!({"identifier": "did:web:late.example",
                        "dataspaceProfileIds": [env.dataspace_id]})),
            None,
        )
        .await;
    assert_eq!(status, 409, "{body}");
    // Now nothing uses the activity types either.
    let (status, body) = api
        .call(
            Method::DELETE,
            "/activity-definitions/cfm.vault.credentials",
            None,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
}
