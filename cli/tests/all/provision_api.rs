//! Provision Manager routes over HTTP against the real `cfm serve`, on both backends:
//! querying and cancelling orchestrations, validating and deleting definitions.

use std::time::Duration;

use cfm_manager::on_both_backends;
use cfm_manager::testing::TestBackend;
use cfm_test_support::Server;
use reqwest::Method;
use serde_json::{Value, json};

on_both_backends!(
    orchestrations_are_found_by_predicate,
    definitions_in_use_cannot_be_deleted,
    definitions_whose_data_does_not_flow_are_refused,
    a_cancelled_deploy_stops_and_is_compensated,
    a_dataspace_profile_or_cell_selects_the_template,
    a_client_chosen_template_id_is_kept,
    a_manifest_starts_its_orchestration_once,
);

async fn orchestrations_are_found_by_predicate(backend: TestBackend) {
    let server = Server::start_on(backend, &[]).await;
    let api = server.client();
    let env = api.dataspace_with_cell("cell-o").await;
    let tenant = api.post_ok("/tenants", json!({}), 201).await;
    let tenant_id = tenant["id"].as_str().unwrap();
    let profiles = api
        .onboard_active(tenant_id, &env.dataspace_id, &["one", "two"])
        .await;

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
    // A page of several orchestrations reads each one's own steps, in order.
    let deploys = api
        .post_ok(
            "/orchestrations/query",
            json!({"predicate": "orchestrationType = 'cfm.orchestration.vpa.deploy'"}),
            200,
        )
        .await;
    let deploys = deploys.as_array().unwrap();
    assert_eq!(deploys.len(), 2, "{deploys:?}");
    for deploy in deploys {
        assert!(!deploy["steps"].as_array().unwrap().is_empty(), "{deploy}");
        let id = deploy["id"].as_str().unwrap();
        assert_eq!(
            deploy,
            &api.get_json(&format!("/orchestrations/{id}")).await
        );
    }

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

async fn definitions_whose_data_does_not_flow_are_refused(backend: TestBackend) {
    let server = Server::start_on(backend, &["--no-seed"]).await;
    let api = server.client();
    api.post_ok(
        "/activity-definitions",
        json!({"type": "x.makes", "outputSchema": {"type": "object", "properties": {"token": {"type": "string"}}}}),
        201,
    )
    .await;
    api.post_ok(
        "/activity-definitions",
        json!({"type": "x.needs", "inputSchema": {"type": "object",
               "required": ["token", "cfm.participant.contextId"]}}),
        201,
    )
    .await;
    let template = |needs_depends_on: Vec<&str>| {
        json!({"activities": {"cfm.orchestration.vpa.deploy": [
            {"id": "makes", "type": "x.makes"},
            {"id": "needs", "type": "x.needs", "dependsOn": needs_depends_on}]}})
    };
    let (status, body) = api
        .call(
            Method::POST,
            "/orchestration-definitions",
            Some(template(vec![])),
            None,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("'needs'") && message.contains("'token'"),
        "{message}"
    );
    api.post_ok("/orchestration-definitions", template(vec!["makes"]), 201)
        .await;

    for bad in [
        json!({"type": "a..b"}),
        json!({"type": "a.*"}),
        json!({"type": "x.y", "inputSchema": {"required": "token"}}),
        json!({"type": "x.y", "outputSchema": {"properties": []}}),
    ] {
        let (status, body) = api
            .call(
                Method::POST,
                "/activity-definitions",
                Some(bad.clone()),
                None,
            )
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
}

async fn a_cancelled_deploy_stops_and_is_compensated(backend: TestBackend) {
    let server = Server::start_on(backend, &["--no-seed"]).await;
    let api = server.client();
    api.slow_template(true).await;
    let env = api.dataspace_with_cell("cell-c").await;
    let tenant = api.post_ok("/tenants", json!({}), 201).await;
    let tenant_id = tenant["id"].as_str().unwrap();
    let profile = api
        .post_ok(
            &format!("/tenants/{tenant_id}/participant-profiles"),
            json!({"identifier": "did:web:cancel.example", "dataspaceProfileIds": [env.dataspace_id]}),
            202,
        )
        .await;
    let profile_id = profile["id"].as_str().unwrap();
    let deploy = api.orchestrations_of(profile_id, "deploy").await;
    let deploy_id = deploy[0]["id"].as_str().unwrap().to_string();

    // The slow activity (200 ms) is still ahead or running.
    let cancel = format!("/orchestrations/{deploy_id}/cancel");
    let (status, cancelled) = api.call(Method::POST, &cancel, None, None).await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["state"], 3, "{cancelled}");
    assert!(
        cancelled["errorDetail"]
            .as_str()
            .unwrap()
            .starts_with("cancelled by "),
        "{cancelled}"
    );
    let steps = cancelled["steps"].as_array().unwrap();
    assert!(
        steps.iter().any(|s| s["state"] == "cancelled"),
        "{cancelled}"
    );
    assert!(
        steps
            .iter()
            .all(|s| s["state"] != "dispatched" && s["state"] != "pending"),
        "{cancelled}"
    );

    let (status, body) = api.call(Method::POST, &cancel, None, None).await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = api
        .call(
            Method::POST,
            "/orchestrations/no-such-id/cancel",
            None,
            None,
        )
        .await;
    assert_eq!(status, 404, "{body}");

    // Compensation: the dispose template runs and the VPAs end disposed.
    let started = std::time::Instant::now();
    loop {
        let profile = api
            .get_json(&format!(
                "/tenants/{tenant_id}/participant-profiles/{profile_id}"
            ))
            .await;
        if profile["vpas"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["state"] == "disposed")
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not disposed: {profile}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dispose = api.orchestrations_of(profile_id, "dispose").await;
    assert_eq!(dispose[0]["state"], 2, "{dispose}");
    // The deploy stays as cancelled: a late outcome of its running attempt changed nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = api.get_json(&format!("/orchestrations/{deploy_id}")).await;
    assert_eq!(after["state"], 3);
    assert_eq!(after["steps"], cancelled["steps"]);
}

async fn a_dataspace_profile_or_cell_selects_the_template(backend: TestBackend) {
    let server = Server::start_on(backend, &[]).await;
    let api = server.client();
    // Newer than the seeded `cfm-default`, so it is what nothing-selected gets.
    let newest = api
        .post_ok(
            "/orchestration-definitions",
            json!({"activities": {
                "cfm.orchestration.vpa.deploy": [{"id": "dns", "type": "cfm.dns.routing"}],
                "cfm.orchestration.vpa.dispose": [{"id": "dns", "type": "cfm.dns.routing"}]}}),
            201,
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let select = |id: &str| json!({"cfm.orchestrationDefinitionId": id});
    let cell = |external: &str, properties: Value| {
        let api = &api;
        let external = external.to_string();
        async move {
            api.post_ok(
                "/cells",
                json!({"externalId": external, "properties": properties}),
                201,
            )
            .await;
        }
    };
    let dataspace = |cell: &str, properties: Value| {
        let api = &api;
        let cell = cell.to_string();
        async move {
            let id = api
                .post_ok(
                    "/dataspace-profiles",
                    json!({"dataspaceSpec": {"protocolStack": ["dsp-2025-1"]}, "properties": properties}),
                    201,
                )
                .await["id"]
                .as_str()
                .unwrap()
                .to_string();
            api.post_ok(
                &format!("/dataspace-profiles/{id}/deployments"),
                json!({"profileId": id, "cellId": cell}),
                202,
            )
            .await;
            id
        }
    };
    cell("plain", json!({})).await;
    cell("pinned", select("cfm-default")).await;
    let by_dataspace = dataspace("plain", select("cfm-default")).await;
    let other_choice = dataspace("plain", select(&newest)).await;
    let unselected = dataspace("plain", json!({})).await;
    let on_pinned_cell = dataspace("pinned", json!({})).await;

    let tenant = api.post_ok("/tenants", json!({}), 201).await;
    let tenant_id = tenant["id"].as_str().unwrap();
    let onboard = |name: &str, dataspaces: Vec<&str>, cell: &str| {
        let api = &api;
        let body = json!({"identifier": format!("did:web:{name}.example"), "cellId": cell,
                          "dataspaceProfileIds": dataspaces});
        let path = format!("/tenants/{tenant_id}/participant-profiles");
        async move { api.call(Method::POST, &path, Some(body), None).await }
    };
    let template_of = |profile: String, orchestration_type: &'static str| {
        let api = &api;
        async move {
            let found = api
                .post_ok(
                    "/orchestrations/query",
                    json!({"predicate": format!("correlationId = '{profile}' AND orchestrationType = '{orchestration_type}'")}),
                    200,
                )
                .await;
            found[0]["definitionId"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        }
    };
    let deploy = "cfm.orchestration.vpa.deploy";
    let dispose = "cfm.orchestration.vpa.dispose";

    let mut expected = Vec::new();
    for (name, dataspaces, cell, template) in [
        (
            "by-dataspace",
            vec![by_dataspace.as_str()],
            "plain",
            "cfm-default",
        ),
        (
            "by-cell",
            vec![on_pinned_cell.as_str()],
            "pinned",
            "cfm-default",
        ),
        (
            "newest",
            vec![unselected.as_str()],
            "plain",
            newest.as_str(),
        ),
    ] {
        let (status, profile) = onboard(name, dataspaces, cell).await;
        assert_eq!(status, 202, "{name}: {profile}");
        let id = profile["id"].as_str().unwrap().to_string();
        assert_eq!(template_of(id.clone(), deploy).await, template, "{name}");
        expected.push((id, template));
    }
    let (status, body) = onboard("torn", vec![&by_dataspace, &other_choice], "plain").await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("different orchestration definitions"),
        "{body}"
    );

    // Decommissioning runs the dispose of the template the deploy ran.
    for (id, template) in expected {
        api.wait_active(tenant_id, &id, Duration::from_secs(30))
            .await;
        let path = format!("/tenants/{tenant_id}/participant-profiles/{id}");
        assert_eq!(api.call(Method::DELETE, &path, None, None).await.0, 202);
        assert_eq!(template_of(id.clone(), dispose).await, template, "{id}");
        api.wait_vpas(tenant_id, &id, "disposed", Duration::from_secs(30))
            .await;
    }
}

/// Upstream's clients (JAD's seed job) register templates under their own id, the
/// templateRef, and read them back by it.
async fn a_client_chosen_template_id_is_kept(backend: TestBackend) {
    let server = Server::start_on(backend, &[]).await;
    let api = server.client();
    let template = |id: &str| {
        json!({"id": id, "description": "JAD's onboarding",
               "activities": {"cfm.orchestration.vpa.deploy": [
                   {"id": "dns", "type": "cfm.dns.routing"}]}})
    };
    let created = api
        .post_ok(
            "/orchestration-definitions",
            template("jad:onboarding-v1"),
            201,
        )
        .await;
    assert_eq!(created["id"], "jad:onboarding-v1");
    assert_eq!(created["description"], "JAD's onboarding");
    let read = api
        .get_json("/orchestration-definitions/jad:onboarding-v1")
        .await;
    assert_eq!(read["activities"], created["activities"]);

    let (status, body) = api
        .call(
            Method::POST,
            "/orchestration-definitions",
            Some(template("jad:onboarding-v1")),
            None,
        )
        .await;
    assert_eq!(status, 409, "{body}");
    for bad in ["", "a/b", "two words", &"x".repeat(129)] {
        let (status, body) = api
            .call(
                Method::POST,
                "/orchestration-definitions",
                Some(template(bad)),
                None,
            )
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    // Without an id the server chooses one, as before.
    let chosen = api
        .post_ok(
            "/orchestration-definitions",
            json!({"activities": {"cfm.orchestration.vpa.deploy": [
                {"id": "dns", "type": "cfm.dns.routing"}]}}),
            201,
        )
        .await;
    assert_eq!(chosen["id"].as_str().map(str::len), Some(36), "{chosen}");
}

/// Upstream's tenant manager starts orchestrations with a manifest: the default template's
/// deploy runs for the participant it names, and the same manifest again starts nothing.
async fn a_manifest_starts_its_orchestration_once(backend: TestBackend) {
    let server = Server::start_on(backend, &[]).await;
    let api = server.client();
    let context = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
    let manifest = json!({
        "id": "manifest-1", "correlationId": context,
        "orchestrationType": "cfm.orchestration.vpa.deploy",
        "payload": {"cfm.participant.id": "did:web:manifest.example",
                    "cfm.vpa.data": [{"id": "v1", "vpaType": "cfm.connector", "cellId": "c1",
                                      "externalCellId": "cell-m", "properties": {}}],
                    "cfm.vpa.credentials": []}});
    for _ in 0..2 {
        let sent = api
            .raw(
                Method::POST,
                "/orchestrations",
                Some(&manifest.to_string()),
                None,
            )
            .await;
        assert_eq!(sent.status(), 202);
        // Upstream answers with the orchestration, the one started before on a repeat.
        let answered: Value = sent.json().await.unwrap();
        assert_eq!(answered["id"], "manifest-1", "{answered}");
        assert_eq!(
            answered["orchestrationType"],
            "cfm.orchestration.vpa.deploy"
        );
    }
    let started = std::time::Instant::now();
    let orchestration = loop {
        let found = api.get_json("/orchestrations/manifest-1").await;
        if found["state"] == 2 {
            break found;
        }
        assert!(found["state"] != 3, "{found}");
        assert!(started.elapsed() < Duration::from_secs(30), "{found}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(orchestration["correlationId"], context);
    assert_eq!(
        orchestration["processingData"]["cfm.participant.contextId"],
        context
    );
    let all = api
        .post_ok(
            "/orchestrations/query",
            json!({"predicate": format!("correlationId = '{context}'")}),
            200,
        )
        .await;
    assert_eq!(all.as_array().unwrap().len(), 1, "{all}");

    // A taken id for another participant, and a participant of cfm's own tenant manager,
    // are conflicts.
    let mut other = manifest.clone();
    other["correlationId"] = json!("another-participant");
    let (status, body) = api
        .call(Method::POST, "/orchestrations", Some(other), None)
        .await;
    assert_eq!(status, 409, "{body}");
    let env = api.dataspace_with_cell("cell-m").await;
    let tenant = api.post_ok("/tenants", json!({}), 201).await;
    let profile = api
        .post_ok(
            &format!("/tenants/{}/participant-profiles", tenant["id"].as_str().unwrap()),
            json!({"identifier": "did:web:owned.example", "dataspaceProfileIds": [env.dataspace_id]}),
            202,
        )
        .await;
    let mut owned = manifest.clone();
    owned["id"] = json!("manifest-owned");
    owned["correlationId"] = profile["id"].clone();
    let (status, body) = api
        .call(Method::POST, "/orchestrations", Some(owned), None)
        .await;
    assert_eq!(status, 409, "{body}");
    // Nor may another correlation run in that participant's context, which its plugins'
    // grants are scoped by.
    let mut borrowed = manifest.clone();
    borrowed["id"] = json!("manifest-borrowed");
    borrowed["correlationId"] = json!("a-participant-of-its-own");
    borrowed["payload"]["cfm.participant.contextId"] = profile["id"].clone();
    let (status, body) = api
        .call(Method::POST, "/orchestrations", Some(borrowed), None)
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|d| d.contains("cfm.participant.contextId")),
        "{body}"
    );
    let (status, body) = api
        .call(Method::GET, "/orchestrations/manifest-borrowed", None, None)
        .await;
    assert_eq!(status, 404, "nothing was started: {body}");

    for (bad, why) in [
        (
            json!({"id": "..", "correlationId": context, "orchestrationType": "cfm.orchestration.vpa.deploy",
                "payload": {"cfm.participant.id": "did:web:x"}}),
            "orchestration id",
        ),
        (
            json!({"id": "m-7", "correlationId": "a.b", "orchestrationType": "cfm.orchestration.vpa.deploy",
                "payload": {"cfm.participant.id": "did:web:x"}}),
            "participant context",
        ),
        (
            json!({"id": "m/2", "correlationId": context, "orchestrationType": "cfm.orchestration.vpa.deploy",
                "payload": {"cfm.participant.id": "did:web:x"}}),
            "orchestration id",
        ),
        (
            json!({"id": "m-3", "correlationId": "../etc", "orchestrationType": "cfm.orchestration.vpa.deploy",
                "payload": {"cfm.participant.id": "did:web:x"}}),
            "correlationId",
        ),
        (
            json!({"id": "m-4", "correlationId": context, "orchestrationType": "cfm.orchestration.vpa.deploy",
                "payload": {}}),
            "cfm.participant.id",
        ),
        (
            json!({"id": "m-5", "correlationId": context, "orchestrationType": "no.such.type",
                "payload": {"cfm.participant.id": "did:web:x"}}),
            "no orchestration definition",
        ),
        (
            json!({"id": "m-6", "correlationId": context, "orchestrationType": "cfm.orchestration.vpa.deploy",
                "payload": {"cfm.participant.id": "did:web:x", "note": "a\u{0}b"}}),
            "U+0000",
        ),
    ] {
        let refused = api
            .raw(
                Method::POST,
                "/orchestrations",
                Some(&bad.to_string()),
                None,
            )
            .await;
        assert_eq!(refused.status(), 400, "{bad}");
        let body: Value = refused.json().await.unwrap();
        assert!(body.to_string().contains(why), "{body}");
    }
}
