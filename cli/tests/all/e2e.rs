//! End-to-end tests: the real `cfm serve` binary on a free loopback port with a
//! temporary data directory, driven over HTTP like a user would.
//!
//! They need the built-in plugins (`scripts/build-plugins.sh`, which the test script runs).

use std::time::Duration;

use cfm_manager::on_both_backends;
use cfm_manager::testing::TestBackend;
use cfm_test_support::{Server, assert_each_created_at_most_once, audit_effects, read_audit};
use serde_json::{Value, json};

on_both_backends!(
    walkthrough_turns_all_four_vpas_active,
    a_killed_server_resumes_every_orchestration_with_side_effects_once,
    bad_input_gets_upstream_errors_and_never_a_500,
);

async fn walkthrough_turns_all_four_vpas_active(backend: TestBackend) {
    let server = Server::start_on(backend, &[]).await;
    let api = server.client();
    let env = api.dataspace_with_cell("cell-eu-1").await;
    let tenant = api
        .post_ok(
            "/tenants",
            json!({"properties": {"name": "Consumer Tenant"}}),
            201,
        )
        .await;
    let tenant_id = tenant["id"].as_str().unwrap();

    let profile = api
        .post_ok(
            &format!("/tenants/{tenant_id}/participant-profiles"),
            json!({"identifier": "did:web:consumer.example", "cellId": env.cell_id,
                   "dataspaceProfileIds": [env.dataspace_id],
                   "participantRoles": {env.dataspace_id.clone(): ["manufacturer"]},
                   "vpaProperties": {"cfm.issuer": {"key1": "value1"}}}),
            202,
        )
        .await;
    let types: Vec<&str> = profile["vpas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "cfm.connector",
            "cfm.credentialservice",
            "cfm.dataplane",
            "cfm.issuer"
        ]
    );
    assert!(
        profile["vpas"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["state"] == "pending")
    );
    assert_eq!(profile["vpas"][3]["properties"], json!({"key1": "value1"}));
    assert_eq!(profile["error"], false);

    let profile_id = profile["id"].as_str().unwrap().to_string();
    let active = api
        .wait_active(tenant_id, &profile_id, Duration::from_secs(30))
        .await;
    let pc = active["properties"]["cfm.vpa.state"]["participantContextId"]
        .as_str()
        .unwrap();
    assert_eq!(pc, profile_id);

    // The plugins' side effects are in the data directory.
    let data = server.data_dir();
    let secret =
        std::fs::read_to_string(data.join(format!("secrets/participants/{pc}/api-key.secret")))
            .unwrap();
    assert_eq!(secret.len(), 64, "a 32-byte hex credential");
    assert!(
        !active.to_string().contains(&secret),
        "the secret leaked into the API"
    );
    let config_map = std::fs::read_to_string(data.join(format!(
        "cluster/{}/cfm-{pc}/ConfigMap/participant-context.yaml",
        env.cell_id
    )))
    .unwrap();
    assert!(
        config_map.contains("did:web:consumer.example"),
        "{config_map}"
    );
    assert!(
        data.join(format!(
            "cluster/{}/_cluster/Namespace/cfm-{pc}.yaml",
            env.cell_id
        ))
        .exists()
    );
    let zone = std::fs::read_to_string(data.join("dns/participants.cfm.local.zone")).unwrap();
    assert!(
        zone.contains(&format!("{pc} 300 IN CNAME cell-eu-1.cells.cfm.local.")),
        "{zone}"
    );
    assert!(
        !server.log().contains(&secret),
        "the secret leaked into the log"
    );

    // The orchestration is complete, with every step done once.
    let found = api
        .post_ok(
            "/participant-profiles/query",
            json!({"predicate": "identifier like '%consumer%'"}),
            200,
        )
        .await;
    assert_eq!(found.as_array().unwrap().len(), 1);
    let none = api
        .post_ok(
            "/participant-profiles/query",
            json!({"predicate": "identifier like '%provider%'"}),
            200,
        )
        .await;
    assert_eq!(none, json!([]));
    let tenants = api.get("/tenants?offset=0&limit=10").await;
    assert_eq!(tenants.status(), 200);
    assert_eq!(tenants.headers()["x-total-count"], "1");
    assert!(
        tenants.headers()["link"]
            .to_str()
            .unwrap()
            .contains("rel=\"last\"")
    );

    // Decommissioning runs the dispose template and undoes what the deploy did.
    let path = format!("/tenants/{tenant_id}/participant-profiles/{profile_id}");
    let disposing = api.raw(reqwest::Method::DELETE, &path, None, None).await;
    assert_eq!(disposing.status(), 202);
    let disposing: Value = disposing.json().await.unwrap();
    assert!(
        disposing["vpas"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["state"] == "disposing"),
        "{disposing}"
    );
    api.wait_vpas(tenant_id, &profile_id, "disposed", Duration::from_secs(30))
        .await;
    assert!(
        !data
            .join(format!("secrets/participants/{pc}/api-key.secret"))
            .exists()
    );
    assert!(
        !data
            .join(format!(
                "cluster/{}/cfm-{pc}/ConfigMap/participant-context.yaml",
                env.cell_id
            ))
            .exists()
    );
    assert!(
        !data
            .join(format!(
                "cluster/{}/_cluster/Namespace/cfm-{pc}.yaml",
                env.cell_id
            ))
            .exists()
    );
    let zone = std::fs::read_to_string(data.join("dns/participants.cfm.local.zone")).unwrap();
    assert!(!zone.contains(&format!("{pc} 300 IN CNAME")), "{zone}");
    // Asking again changes nothing; another tenant cannot see or dispose it.
    let again = api.raw(reqwest::Method::DELETE, &path, None, None).await;
    assert_eq!(again.status(), 202);
    let other = api.post_ok("/tenants", json!({}), 201).await;
    let foreign = format!(
        "/tenants/{}/participant-profiles/{profile_id}",
        other["id"].as_str().unwrap()
    );
    assert_eq!(
        api.raw(reqwest::Method::DELETE, &foreign, None, None)
            .await
            .status(),
        404
    );
}

async fn a_killed_server_resumes_every_orchestration_with_side_effects_once(backend: TestBackend) {
    const PARTICIPANTS: usize = 12;
    const SLOW_MS: i64 = 1_000;
    // Two activities at a time and a slow activity in every onboarding: the kill below
    // lands while most orchestrations are still running.
    let dir = tempfile::tempdir().unwrap();
    let plugins = cfm_test_support::plugins_config_with(dir.path(), |plugin| {
        if plugin["name"].as_str() == Some("slow") {
            let settings = plugin["settings"].as_table_mut().unwrap();
            settings.insert("delayMs".into(), SLOW_MS.into());
        }
    });
    let plugins = plugins.display().to_string();
    let args = ["--no-seed", "--concurrency", "2", "--plugins", &plugins];
    let mut server = Server::start_on(backend, &args).await;
    let api = server.client();
    api.slow_template(false).await;
    let env = api.dataspace_with_cell("cell-a").await;
    let tenant = api.post_ok("/tenants", json!({}), 201).await;
    let tenant_id = tenant["id"].as_str().unwrap().to_string();
    let mut ids = Vec::new();
    for i in 0..PARTICIPANTS {
        let profile = api
            .post_ok(
                &format!("/tenants/{tenant_id}/participant-profiles"),
                json!({"identifier": format!("did:web:p{i}.example"), "dataspaceProfileIds": [env.dataspace_id]}),
                202,
            )
            .await;
        ids.push(profile["id"].as_str().unwrap().to_string());
    }
    // Killed as soon as a slow activity has written its marker: it then waits a second
    // before completing, so the kill lands inside it even when the look at the audit log
    // and the count below take a while on a loaded machine (at 200 ms they sometimes
    // took longer, and no interrupted activity was left to redeliver).
    let started = std::time::Instant::now();
    while !read_audit(&server.data_dir()).iter().any(|r| {
        r["operation"] == "put-if-absent"
            && r["effect"] == "created"
            && r["target"]
                .as_str()
                .is_some_and(|t| t.ends_with("/slow-marker"))
    }) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no slow activity started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let pending_before_kill = api.count_not_active(&tenant_id).await;
    server.kill();
    assert!(
        pending_before_kill > 0,
        "every onboarding finished before the kill; the test proves nothing"
    );

    let server = server.restart().await;
    let api = server.client();
    for id in &ids {
        let profile = api
            .wait_active(&tenant_id, id, Duration::from_secs(60))
            .await;
        assert_eq!(
            profile["properties"]["cfm.vpa.state"]["slowDelayMs"],
            SLOW_MS
        );
    }

    // Each object was created once, however often its activity was delivered.
    assert_each_created_at_most_once(&audit_effects(&[server.data_dir()]), &ids);
    // The kill interrupted activities that had already written their marker; their
    // redelivery found it and changed nothing.
    let redelivered = read_audit(&server.data_dir())
        .iter()
        .filter(|r| r["operation"] == "put-if-absent" && r["effect"] == "unchanged")
        .count();
    assert!(
        redelivered > 0,
        "no activity was interrupted and redelivered"
    );
}

async fn bad_input_gets_upstream_errors_and_never_a_500(backend: TestBackend) {
    let server = Server::start_on(backend, &[]).await;
    let api = server.client();

    // Authentication and scopes.
    let anonymous = api
        .raw(reqwest::Method::GET, "/tenants", None, Some(""))
        .await;
    assert_eq!(anonymous.status(), 401);
    let body: Value = anonymous.json().await.unwrap();
    assert_eq!(body["error"], "Unauthorized");
    assert_eq!(body["code"], 401);
    let forged = api
        .raw(
            reqwest::Method::GET,
            "/tenants",
            None,
            Some("eyJhbGciOiJFZERTQSJ9.e30.AAAA"),
        )
        .await;
    assert_eq!(forged.status(), 401);
    let reader = server.token_with(&["tenant-manager-api:read"]);
    assert_eq!(
        api.raw(reqwest::Method::GET, "/tenants", None, Some(&reader))
            .await
            .status(),
        200
    );
    let denied = api
        .raw(reqwest::Method::POST, "/tenants", Some("{}"), Some(&reader))
        .await;
    assert_eq!(denied.status(), 403);
    let body: Value = denied.json().await.unwrap();
    assert_eq!(
        body["message"],
        "Access not granted: required scope 'tenant-manager-api:write' not present"
    );
    let health = reqwest::get(format!("{}/health", server.base()))
        .await
        .unwrap();
    assert_eq!(
        health.json::<Value>().await.unwrap(),
        json!({"message": "OK"})
    );

    // Bad JSON.
    let bad = api
        .raw(
            reqwest::Method::POST,
            "/tenants",
            Some("{\"properties\":"),
            None,
        )
        .await;
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    assert_eq!(body["error"], "Bad Request");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("Invalid JSON"),
        "{body}"
    );

    // Client-sent ids and versions, unknown fields and duplicate keys are ignored.
    let text = r#"{"id":"mine","version":7,"extra":1,"properties":{"a":1},"properties":{"a":2}}"#;
    let created = api
        .raw(reqwest::Method::POST, "/tenants", Some(text), None)
        .await;
    assert_eq!(created.status(), 201);
    let tenant: Value = created.json().await.unwrap();
    assert_ne!(tenant["id"], "mine");
    assert_eq!(tenant["version"], 0);
    assert_eq!(tenant["properties"], json!({"a": 2}));
    let tenant_id = tenant["id"].as_str().unwrap();

    // Typed errors for bad references.
    assert_eq!(
        api.get("/tenants/00000000-0000-0000-0000-000000000000")
            .await
            .status(),
        404
    );
    assert_eq!(api.get("/orchestrations/nope").await.status(), 404);
    let profiles = format!("/tenants/{tenant_id}/participant-profiles");
    let not_did = api
        .raw(
            reqwest::Method::POST,
            &profiles,
            Some(r#"{"identifier":"consumer"}"#),
            None,
        )
        .await;
    assert_eq!(not_did.status(), 400);
    let unknown_dataspace = api
        .raw(
            reqwest::Method::POST,
            &profiles,
            Some(r#"{"identifier":"did:web:x","dataspaceProfileIds":["nope"]}"#),
            None,
        )
        .await;
    assert_eq!(unknown_dataspace.status(), 400);
    assert!(unknown_dataspace.text().await.unwrap().contains("'nope'"));
    let no_cell = api
        .raw(
            reqwest::Method::POST,
            &profiles,
            Some(r#"{"identifier":"did:web:x"}"#),
            None,
        )
        .await;
    assert_eq!(no_cell.status(), 409, "no cell exists yet");
    assert_eq!(
        api.get_json(&profiles).await,
        json!([]),
        "a refused profile left a record"
    );
    let predicate = api
        .raw(
            reqwest::Method::POST,
            "/participant-profiles/query",
            Some(r#"{"predicate":"identifier like"}"#),
            None,
        )
        .await;
    assert_eq!(predicate.status(), 400);
    assert!(predicate.text().await.unwrap().contains("position"));
    // Just over the 1 MiB limit.
    let huge = format!(
        "{{\"properties\":{{\"x\":\"{}\"}}}}",
        "a".repeat(1024 * 1024)
    );
    assert_eq!(api.status_of_large_post("/tenants", &huge).await, 413);
    let cycle = r#"{"activities":{"x":[{"id":"a","type":"cfm.vault.credentials","dependsOn":["b"]},{"id":"b","type":"cfm.vault.credentials","dependsOn":["a"]}]}}"#;
    let cyclic = api
        .raw(
            reqwest::Method::POST,
            "/orchestration-definitions",
            Some(cycle),
            None,
        )
        .await;
    assert_eq!(cyclic.status(), 400);
    let cell = r#"{"externalId":"dup"}"#;
    assert_eq!(
        api.raw(reqwest::Method::POST, "/cells", Some(cell), None)
            .await
            .status(),
        201
    );
    assert_eq!(
        api.raw(reqwest::Method::POST, "/cells", Some(cell), None)
            .await
            .status(),
        409
    );

    // No body, however malformed, makes a write route answer 5xx; errors keep the upstream body.
    let routes = [
        "/tenants".to_string(),
        profiles.clone(),
        "/participant-profiles/query".into(),
        "/cells".into(),
        "/dataspace-profiles".into(),
        "/dataspace-profiles/nope/deployments".into(),
        "/activity-definitions".into(),
        "/orchestration-definitions".into(),
    ];
    let bodies = [
        "",
        "null",
        "[]",
        "42",
        "\"s\"",
        "{",
        "{}",
        r#"{"properties":[]}"#,
        r#"{"identifier":5}"#,
        r#"{"identifier":"did:web:x","cellId":7}"#,
        r#"{"predicate":"((("}"#,
        r#"{"type":"bad type!"}"#,
        r#"{"activities":{}}"#,
        r#"{"activities":{"t":[{"id":"a","type":"unknown"}]}}"#,
        r#"{"dataspaceSpec":{"credentialSpecs":"x"}}"#,
        r#"{"cellId":"nope","profileId":"x"}"#,
        r#"{"identifier":"did:web:x","participantRoles":{"a":"b"}}"#,
        "{\"\u{0}\":1}",
    ];
    for route in &routes {
        for body in bodies {
            let response = api
                .raw(reqwest::Method::POST, route, Some(body), None)
                .await;
            let status = response.status();
            assert!(
                !status.is_server_error(),
                "POST {route} {body:?} answered {status}"
            );
            let answer: Value = response.json().await.unwrap();
            if status.is_client_error() {
                assert_eq!(answer["code"], status.as_u16(), "{route} {body}");
                assert!(answer["message"].is_string(), "{route} {body}");
            }
        }
    }
}

/// The data directory holds the signing key, the admin token, the database, secrets,
/// manifests, zone files and the compile cache: after an onboarding, nothing in it may be
/// open to another user (the directory was once 0755 and the database 0644).
#[tokio::test]
async fn the_data_directory_and_everything_in_it_is_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let server = Server::start(&[]).await;
    let api = server.client();
    let env = api.dataspace_with_cell("cell-private").await;
    let tenant = api.post_ok("/tenants", json!({}), 201).await;
    let tenant_id = tenant["id"].as_str().unwrap();
    let profile = api
        .post_ok(
            &format!("/tenants/{tenant_id}/participant-profiles"),
            json!({"identifier": "did:web:private.example", "dataspaceProfileIds": [env.dataspace_id]}),
            202,
        )
        .await;
    api.wait_active(
        tenant_id,
        profile["id"].as_str().unwrap(),
        Duration::from_secs(30),
    )
    .await;

    let mut pending = vec![server.data_dir()];
    let mut seen = Vec::new();
    while let Some(path) = pending.pop() {
        let mode = std::fs::symlink_metadata(&path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode & 0o077, 0, "{} has mode {mode:o}", path.display());
        if path.is_dir() {
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
        seen.push(path);
    }
    let names: Vec<String> = seen
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    for expected in [
        "cfm.db",
        "signing.key",
        "admin.token",
        "secrets",
        "audit.jsonl",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "no {expected} in {names:?}"
        );
    }
}

/// A plugin's output once merged into the processing data as it was, so a plugin that
/// answered `cfm.participant.contextId: <victim>` made the next activity (the vault step)
/// work on the victim's secrets, and its own profile's dispose deleted the victim's key.
/// Now such an output fails the activity, and every task is addressed from the
/// orchestration's own row.
#[tokio::test]
async fn a_plugin_cannot_redirect_later_activities_to_another_participant() {
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let config = cfm_test_support::plugins_config_with(dir.path(), |_| {});
    let hostile = cfm_test_support::plugins_config().with_file_name("hostile.wasm");
    let digest = hex::encode(sha2::Sha256::digest(std::fs::read(&hostile).unwrap()));
    let mut table: toml::Table =
        toml::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    let server = {
        // Named once the victim exists; the host reloads its configuration.
        let victim_placeholder = "VICTIM";
        let entry: toml::Table = toml::from_str(&format!(
            r#"
            name = "hostile"
            path = "{}"
            sha256 = "{digest}"
            activity-types = ["example.hostile"]
            [settings]
            mode = "output"
            target = '{{"cfm.participant.contextId": "{victim_placeholder}", "cfm.participant.id": "did:web:victim.example"}}'
            # It imports every capability, so each needs a grant to load; none is used.
            [grants]
            secrets = ["participants/{{participantContextId}}/hostile"]
            [grants.cluster]
            namespaces = ["cfm-{{participantContextId}}"]
            kinds = ["ConfigMap"]
            [grants.dns]
            zones = ["participants.cfm.local"]
            names = []
            record-types = ["CNAME"]
            [grants.http]
            origins = []
            [grants.tokens]
            audiences = []
            scopes = []
            "#,
            hostile.display()
        ))
        .unwrap();
        table["plugin"].as_array_mut().unwrap().push(entry.into());
        std::fs::write(&config, toml::to_string(&table).unwrap()).unwrap();
        Server::start(&["--plugins", config.to_str().unwrap()]).await
    };
    let api = server.client();
    let env = api.dataspace_with_cell("cell-v").await;
    let tenant = api.post_ok("/tenants", json!({}), 201).await;
    let tenant_id = tenant["id"].as_str().unwrap();
    let onboard = |did: &'static str| {
        let api = api.clone();
        let path = format!("/tenants/{tenant_id}/participant-profiles");
        let dataspace = env.dataspace_id.clone();
        async move {
            let profile = api
                .post_ok(
                    &path,
                    json!({"identifier": did, "dataspaceProfileIds": [dataspace]}),
                    202,
                )
                .await;
            profile["id"].as_str().unwrap().to_string()
        }
    };
    let victim = onboard("did:web:victim.example").await;
    api.wait_active(tenant_id, &victim, Duration::from_secs(30))
        .await;
    let key_file = server
        .data_dir()
        .join(format!("secrets/participants/{victim}/api-key.secret"));
    let key = std::fs::read_to_string(&key_file).unwrap();

    // The hostile plugin now names the victim; its template, the newest, runs it first.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("VICTIM", &victim);
    std::fs::write(&config, text).unwrap();
    api.post_ok(
        "/activity-definitions",
        json!({"type": "example.hostile", "description": "answers with server-owned keys"}),
        201,
    )
    .await;
    api.post_ok(
        "/orchestration-definitions",
        json!({"activities": {
            "cfm.orchestration.vpa.deploy": [
                {"id": "hostile", "type": "example.hostile"},
                {"id": "vault", "type": "cfm.vault.credentials", "dependsOn": ["hostile"]}],
            "cfm.orchestration.vpa.dispose": [
                {"id": "vault", "type": "cfm.vault.credentials"}]}}),
        201,
    )
    .await;
    // The host picks up the changed configuration within its reload period.
    let started = std::time::Instant::now();
    while !server.log().contains("plugin configuration reloaded") {
        assert!(started.elapsed() < Duration::from_secs(20), "no reload");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let attacker = onboard("did:web:attacker.example").await;
    // Refused, then compensated: the VPAs end disposed with the error kept.
    let path = format!("/tenants/{tenant_id}/participant-profiles/{attacker}");
    let started = std::time::Instant::now();
    let profile = loop {
        let profile = api.get_json(&path).await;
        if profile["vpas"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["state"] == "disposed")
        {
            break profile;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{profile}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(profile["error"], true, "{profile}");
    let detail = profile["errorDetail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("cfm.participant.contextId") && detail.contains("server owns"),
        "{profile}"
    );
    let deploy = api.orchestrations_of(&attacker, "deploy").await;
    let steps = deploy[0]["steps"].as_array().unwrap();
    let vault = steps.iter().find(|s| s["id"] == "vault").unwrap();
    assert_eq!(
        (&vault["state"], &vault["attempts"]),
        (&json!("cancelled"), &json!(0)),
        "vault ran after the refused output: {deploy}"
    );

    // The victim keeps its key and stays active; nothing was done in its name.
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), key);
    let victim_now = api
        .get_json(&format!(
            "/tenants/{tenant_id}/participant-profiles/{victim}"
        ))
        .await;
    assert!(
        victim_now["vpas"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["state"] == "active"),
        "{victim_now}"
    );
    // Every capability call the attacker's orchestrations made was for the attacker.
    let dispose = api.orchestrations_of(&attacker, "dispose").await;
    let runs: Vec<&str> = [&deploy, &dispose]
        .iter()
        .flat_map(|found| found.as_array().unwrap())
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    assert_eq!(runs.len(), 2, "{deploy} {dispose}");
    let audit = cfm_test_support::read_audit(&server.data_dir());
    let mut checked = 0;
    for record in &audit {
        if runs.contains(&record["orchestrationId"].as_str().unwrap_or_default()) {
            assert_eq!(
                record["participantContextId"],
                attacker.as_str(),
                "{record}"
            );
            assert!(
                !record["target"].as_str().unwrap().contains(&victim),
                "{record}"
            );
            checked += 1;
        }
    }
    assert!(
        checked > 0,
        "the compensation made no capability call: {audit:?}"
    );
}

/// `cfm serve --max-deliveries N` without NATS: the embedded worker gives up on a task
/// whose host died under it N times, as an agent fed by JetStream does.
#[tokio::test]
async fn embedded_serve_honours_max_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    // Long enough to kill the server while the activity runs, short of its time limit.
    let plugins = cfm_test_support::plugins_config_with(dir.path(), |plugin| {
        if plugin["name"].as_str() == Some("slow") {
            let settings = plugin["settings"].as_table_mut().unwrap();
            settings.insert("delayMs".into(), 8_000.into());
        }
    });
    let plugins = plugins.display().to_string();
    let args = ["--no-seed", "--plugins", &plugins, "--max-deliveries", "1"];
    let mut server = Server::start(&args).await;
    let api = server.client();
    api.slow_template(false).await;
    let env = api.dataspace_with_cell("cell-a").await;
    let tenant = api.post_ok("/tenants", json!({}), 201).await;
    let tenant_id = tenant["id"].as_str().unwrap().to_string();
    let profile = api
        .post_ok(
            &format!("/tenants/{tenant_id}/participant-profiles"),
            json!({"identifier": "did:web:crashing.example", "dataspaceProfileIds": [env.dataspace_id]}),
            202,
        )
        .await;
    let profile_id = profile["id"].as_str().unwrap().to_string();
    let slow_step = |orchestrations: &Value| -> Value {
        orchestrations[0]["steps"]
            .as_array()
            .and_then(|steps| steps.iter().find(|s| s["id"] == "slow"))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let started = std::time::Instant::now();
    while slow_step(&api.orchestrations_of(&profile_id, "deploy").await)["state"] != "dispatched" {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the slow step never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The plugin is running now (it sleeps 8 s): kill its host under it, once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.kill();
    let server = server.restart().await;
    let api = server.client();

    // Its second delivery is over the limit of one: the step fails at once instead of
    // running again, and the participant is in error.
    let path = format!("/tenants/{tenant_id}/participant-profiles/{profile_id}");
    let started = std::time::Instant::now();
    let profile = loop {
        let profile = api.get_json(&path).await;
        if profile["error"] == true {
            break profile;
        }
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "the redelivered task was not given up within 6 s (a second run takes 8 s): {profile}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let step = slow_step(&api.orchestrations_of(&profile_id, "deploy").await);
    assert_eq!(step["state"], "failed", "{step}");
    let error = step["lastError"].as_str().unwrap_or_default();
    assert!(
        error.contains("delivered 1 times without a result"),
        "{step}"
    );
    assert!(
        profile["errorDetail"]
            .as_str()
            .unwrap_or_default()
            .contains("slow"),
        "{profile}"
    );
}
