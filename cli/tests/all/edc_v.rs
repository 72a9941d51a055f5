//! An EDC-V (JAD) deployment on cfm, end to end: upstream's activity types, served by the
//! built-in `edc-v` plugin under the real agent host, against stand-ins of jwtlet, the
//! Identity Hub, the Control Plane, the Issuer Service and Siglet (cfm-standins), which
//! accept only tokens their jwtlet exchanged. The agent host holds the service-account
//! subject token and exchanges it; plugins see only participant-scoped tokens.
//!
//! A deployment without `dataspaceProfileIds`, with a stale `cellId` and a duplicated key
//! onboards with the three outputs; decommissioning leaves nothing in any service; a token
//! service that is down is waited out, one that refuses fails the onboarding naming the
//! audience and scope; on PostgreSQL and JetStream with `cfm manager` and `cfm agent`
//! apart, a keypair event updates Siglet and the Control Plane once, however often it is
//! delivered.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cfm_standins::{AuthRecord, EdcV, Route, Service, TokenKind};
use cfm_test_support::{Api, Deployment, Server};
use serde_json::{Value, json};

/// The EDC-V plugins' names in the built-in configuration.
const EDC_V_PLUGINS: [&str; 7] = [
    "jwtlet",
    "identityhub",
    "edcv",
    "registration",
    "onboarding",
    "siglet",
    "keymanagement",
];

/// What an operator sets to run JAD on cfm: the plugin settings and origins, and the
/// agent host's two token flags. Returns the plugin configuration and the flags.
fn jad_configuration(dir: &Path, edc: &EdcV) -> (PathBuf, Vec<String>) {
    let subject_token = dir.join("sa-token");
    std::fs::write(
        &subject_token,
        edc.service_account_token("edc-v", "cfm-agents"),
    )
    .unwrap();
    let origins: Vec<toml::Value> = [
        &edc.jwtlet_management_url,
        &edc.identity_hub_url,
        &edc.control_plane_url,
        &edc.issuer_url,
        &edc.siglet_management_url,
    ]
    .iter()
    .map(|u| toml::Value::String(u.to_string()))
    .collect();
    let settings = [
        ("jwtletUrl", edc.jwtlet_management_url.as_str()),
        ("identityHubUrl", &edc.identity_hub_url),
        ("controlPlaneUrl", &edc.control_plane_url),
        ("issuerUrl", &edc.issuer_url),
        ("issuerId", &edc.options.issuer_id),
        ("vaultUrl", "http://vault.edc-v.svc:8200"),
        (
            "credentialServiceUrl",
            "http://ih.example/api/credentials/v1/participants/{participantContextId}",
        ),
        (
            "protocolServiceUrl",
            "http://cp.example/api/dsp/{participantContextId}/2025-1",
        ),
        (
            "dataServiceUrl",
            "http://dp.example/api/data/{participantContextId}",
        ),
        ("sigletUrl", &edc.siglet_management_url),
        ("sigletSignalingUrl", "http://siglet.edc-v.svc:8081"),
    ];
    let plugins = cfm_test_support::plugins_config_with(dir, |plugin| {
        let name = plugin["name"].as_str().unwrap().to_string();
        if !EDC_V_PLUGINS.contains(&name.as_str()) {
            return;
        }
        let table = plugin["settings"].as_table_mut().unwrap();
        for (key, value) in settings {
            table.insert(key.into(), value.into());
        }
        table.insert("pollIntervalMs".into(), 100.into());
        let http = plugin["grants"]["http"].as_table_mut().unwrap();
        http.insert("origins".into(), toml::Value::Array(origins.clone()));
        if name == "jwtlet" {
            http.insert(
                "subject-token-origin".into(),
                edc.jwtlet_management_url.clone().into(),
            );
            http.insert(
                "subject-token-paths".into(),
                toml::Value::Array(vec![
                    "/api/v1/mappings".into(),
                    "/api/v1/mappings/*/{participantContextId}".into(),
                ]),
            );
        }
    });
    let flags = vec![
        "--token-exchange-url".to_string(),
        edc.jwtlet_token_url.clone(),
        "--subject-token-file".to_string(),
        subject_token.display().to_string(),
    ];
    (plugins, flags)
}

/// JAD's seeding, as its seed jobs do it over the APIs: the activity definitions, the
/// orchestration definition (here cfm's `templates/edc-v.json`, which also undoes what
/// JAD's leaves behind) under a template reference of the client's, a cell and a dataspace
/// profile deployed to it. Returns the tenant's id and the cell's external id.
async fn seed(api: &Api, edc: &EdcV) -> (String, String) {
    for activity_type in cfm_manager::seed::EDC_V_ACTIVITIES {
        api.post_ok(
            "/activity-definitions",
            json!({"type": activity_type, "description": activity_type,
                   "inputSchema": {}, "outputSchema": {}}),
            201,
        )
        .await;
    }
    let mut template: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates/edc-v.json"),
        )
        .unwrap(),
    )
    .unwrap();
    template["id"] = json!("edcv-onboarding");
    let created = api
        .post_ok("/orchestration-definitions", template, 201)
        .await;
    assert_eq!(created["id"], "edcv-onboarding");
    let cell = "cell-jad";
    api.post_ok("/cells", json!({"externalId": cell}), 201)
        .await;
    let dataspace = api
        .post_ok(
            "/dataspace-profiles",
            json!({
                "dataspaceSpec": {"protocolStack": ["dsp-2025-1", "dcp-2025-1"],
                    "credentialSpecs": [{"id": "membership-credential-def", "type": "MembershipCredential",
                                         "issuer": edc.options.issuer_did, "format": "vc20-bssl/jwt"}]},
                "properties": {"cfm.orchestrationDefinitionId": "edcv-onboarding"},
            }),
            201,
        )
        .await;
    let dataspace_id = dataspace["id"].as_str().unwrap();
    api.post_ok(
        &format!("/dataspace-profiles/{dataspace_id}/deployments"),
        json!({"profileId": dataspace_id, "cellId": cell}),
        202,
    )
    .await;
    let tenant = api
        .post_ok(
            "/tenants",
            json!({"properties": {"name": "Consumer Tenant"}}),
            201,
        )
        .await;
    (tenant["id"].as_str().unwrap().to_string(), cell.to_string())
}

/// A participant deployed as JAD's Bruno request does it: no `dataspaceProfileIds`, a
/// `cellId` that names no cell any more, and a key sent twice (the last one counts, as in
/// upstream's JSON decoding). The data plane VPA maps one transfer type to Siglet.
async fn deploy_participant(api: &Api, tenant: &str, did: &str) -> String {
    let body = format!(
        r#"{{"identifier": "did:web:placeholder", "identifier": "{did}",
            "cellId": "a-stale-cell-id",
            "participantRoles": {{}},
            "vpaProperties": {{"cfm.dataplane": {{"transferTypeMappings": {{
                "HttpData-PULL": {{"transferType": "HttpData-PULL", "endpointType": "HTTP",
                                   "endpoint": "https://dp.example/public"}}}}}}}},
            "properties": {{}}}}"#
    );
    let path = format!("/tenants/{tenant}/participant-profiles");
    let response = api
        .raw(reqwest::Method::POST, &path, Some(&body), None)
        .await;
    let status = response.status();
    let profile: Value = response.json().await.unwrap();
    assert_eq!(status, 202, "{profile}");
    assert_eq!(profile["identifier"], did);
    profile["id"].as_str().unwrap().to_string()
}

/// Every request the EDC services and Siglet received carried a token jwtlet exchanged for
/// one of `contexts`; jwtlet's management API only the agent host's service-account token.
fn assert_only_participant_scoped_tokens(records: &[AuthRecord], contexts: &[&str]) {
    assert!(!records.is_empty());
    for record in records {
        match record.service {
            Service::JwtletToken => {}
            Service::JwtletManagement => {
                assert_eq!(record.kind, TokenKind::ServiceAccount, "{record:?}");
                assert_eq!(
                    record.sub.as_deref(),
                    Some("system:serviceaccount:edc-v:cfm-agents")
                );
            }
            _ => {
                assert_eq!(record.kind, TokenKind::Exchanged, "{record:?}");
                let sub = record.sub.as_deref().unwrap_or_default();
                assert!(contexts.contains(&sub), "{record:?}");
            }
        }
    }
}

/// `cfm serve` configured as the README's "Running JAD on cfm" says, seeded as JAD's jobs
/// seed it, beside the EDC-V stand-ins.
struct Jad {
    edc: EdcV,
    /// Holds the plugin configuration and the subject token file.
    dir: tempfile::TempDir,
    server: Server,
    api: Api,
    tenant: String,
}

impl Jad {
    async fn start() -> Self {
        let edc = EdcV::start().await;
        let dir = tempfile::tempdir().unwrap();
        let (plugins, mut args) = jad_configuration(dir.path(), &edc);
        args.extend(["--plugins".to_string(), plugins.display().to_string()]);
        let server = Server::start(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
        let api = server.client();
        let (tenant, _) = seed(&api, &edc).await;
        Self {
            edc,
            dir,
            server,
            api,
            tenant,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jad_onboarding_runs_on_cfm_and_decommissioning_leaves_nothing_behind() {
    let Jad {
        edc,
        dir,
        server,
        api,
        tenant,
    } = Jad::start().await;

    let participants = [
        (
            "did:web:consumer.example",
            deploy_participant(&api, &tenant, "did:web:consumer.example").await,
        ),
        (
            "did:web:provider.example",
            deploy_participant(&api, &tenant, "did:web:provider.example").await,
        ),
    ];
    for (did, pc) in &participants {
        let profile = api.wait_active(&tenant, pc, Duration::from_secs(20)).await;
        let state = &profile["properties"]["cfm.vpa.state"];
        assert_eq!(state["participantContextId"], pc.as_str(), "{profile}");
        assert!(
            pc.len() == 32 && pc.bytes().all(|b| b.is_ascii_hexdigit()),
            "{pc}"
        );
        let holder_pid = state["holderPid"].as_str().unwrap();
        let request = state["credentialRequest"].as_str().unwrap();
        assert!(
            request.ends_with(&format!("/credentials/request/{holder_pid}")),
            "{state}"
        );
        // The credentials came from the dataspace deployed to the participant's cell.
        assert!(edc.credential_requests().contains_key(holder_pid));
        assert!(edc.holders().iter().any(|h| h["did"] == *did));
        assert!(edc.control_plane_participants().contains_key(pc.as_str()));
        assert!(
            edc.siglet_transfer_type_mappings()
                .contains_key(pc.as_str())
        );
    }
    let contexts: Vec<&str> = participants.iter().map(|(_, pc)| pc.as_str()).collect();
    assert_only_participant_scoped_tokens(&edc.auth_records(), &contexts);

    // No token shows in the log, the audit records or what the API answers.
    let subject = std::fs::read_to_string(dir.path().join("sa-token")).unwrap();
    let audit = std::fs::read_to_string(server.data_dir().join("audit.jsonl")).unwrap();
    assert!(
        audit.contains("\"capability\":\"tokens\""),
        "no token exchange audited"
    );
    for (_, pc) in &participants {
        let shown = api.orchestrations_of(pc, "deploy").await.to_string();
        for text in [&server.log(), &audit, &shown] {
            assert!(!text.contains(subject.trim()), "the subject token leaked");
            assert!(!text.contains("eyJ"), "a JWT leaked");
        }
    }

    // A verify changes nothing: the EDC-V activities, with no read-only check yet, say so
    // rather than pass for in sync.
    let verified = verify(&api, &tenant, &participants[0].1).await;
    assert_eq!(verified["drift"]["state"], "in-sync", "{verified}");
    let activities = verified["drift"]["activities"].as_array().unwrap();
    assert!(!activities.is_empty(), "{verified}");
    assert!(
        activities
            .iter()
            .all(|a| a["unverified"].is_string() && a.get("findings").is_none()),
        "{verified}"
    );

    for (_, pc) in &participants {
        api.dispose(&tenant, pc).await;
    }
    for (did, pc) in &participants {
        assert_eq!(edc.leftovers(pc, did), Vec::<String>::new());
    }
    assert_eq!(edc.revoked_credentials().len(), 2);
    assert_only_participant_scoped_tokens(&edc.auth_records(), &contexts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_service_that_is_down_is_waited_out_and_one_that_refuses_fails_naming_the_request()
{
    // Held to the end: dropping them would stop the server.
    let Jad {
        edc,
        dir: _dir,
        server: _server,
        api,
        tenant,
    } = Jad::start().await;

    edc.set_token_endpoint_down(true);
    let pc = deploy_participant(&api, &tenant, "did:web:patient.example").await;
    let started = Instant::now();
    while edc.calls(Route::Token) < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no retried exchange"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let waiting = api
        .get_json(&format!("/tenants/{tenant}/participant-profiles/{pc}"))
        .await;
    assert_eq!(waiting["vpas"][0]["state"], "pending", "{waiting}");
    edc.set_token_endpoint_down(false);
    api.wait_active(&tenant, &pc, Duration::from_secs(30)).await;

    // The first exchange of the next onboarding is refused.
    let before = edc.calls(Route::Token);
    edc.fail_next(Route::Token, &[403]);
    let refused = deploy_participant(&api, &tenant, "did:web:refused.example").await;
    let profile = wait_failed(&api, &tenant, &refused).await;
    assert!(edc.calls(Route::Token) > before);
    let detail = profile["errorDetail"].as_str().unwrap_or_default();
    assert!(detail.contains("audience 'edcv'"), "{profile}");
    assert!(detail.contains("scope '"), "{profile}");
    assert!(!detail.contains("eyJ"), "{profile}");
}

/// Polls a profile until its onboarding has failed.
/// Verifies participant `pc` and waits for the verify to end.
async fn verify(api: &Api, tenant: &str, pc: &str) -> Value {
    let path = format!("/tenants/{tenant}/participant-profiles/{pc}");
    api.post_ok(&format!("{path}/verify"), json!({}), 202).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let profile = api.get_json(&path).await;
        if profile["drift"]["state"] != "verifying" {
            return profile;
        }
        assert!(std::time::Instant::now() < deadline, "{profile}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_failed(api: &Api, tenant: &str, pc: &str) -> Value {
    let started = Instant::now();
    loop {
        let profile = api
            .get_json(&format!("/tenants/{tenant}/participant-profiles/{pc}"))
            .await;
        if profile["error"] == true {
            return profile;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "did not fail: {profile}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_on_postgres_and_jetstream_a_keypair_event_updates_siglet_and_the_control_plane_once()
{
    let nats = cfm_test_support::nats_url();
    let edc = EdcV::start().await;
    let scratch = tempfile::tempdir().unwrap();
    let (plugins, flags) = jad_configuration(scratch.path(), &edc);

    // The Identity Hub's event stream, as JAD's EDC creates it; subjects of this test's own.
    let prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let stream_name = format!("EDC_EVENTS_{prefix}");
    let client = async_nats::connect(&nats).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    jetstream
        .create_stream(async_nats::jetstream::stream::Config {
            name: stream_name.clone(),
            subjects: vec![format!("{prefix}.events.>")],
            ..Default::default()
        })
        .await
        .unwrap();

    let mut deployment = Deployment::start_with(
        &nats,
        1,
        &[
            "--keypair-events-stream".to_string(),
            stream_name.clone(),
            "--keypair-events-subject".to_string(),
            format!("{prefix}.events.keypair.>"),
        ],
    )
    .await;
    deployment.start_agents_with(&["agent"], 4, &plugins, &flags);
    let api = deployment.api(0);
    let (tenant, _) = seed(&api, &edc).await;
    let did = "did:web:keyholder.example";
    let pc = deploy_participant(&api, &tenant, did).await;
    api.wait_active(&tenant, &pc, Duration::from_secs(30)).await;

    let event = json!({
        "specversion": "1.0", "id": format!("{prefix}-event-1"), "source": "identityhub",
        "type": "KeyPairActivated", "time": "2026-12-02T10:00:00Z",
        "data": {"participantContextId": pc, "keyId": format!("{did}#key2"),
                 "keyPairResource": {"keyId": format!("{did}#key2"), "privateKeyAlias": "alias-2",
                                     "keyContext": "JsonWebKey2020", "defaultPair": true,
                                     "useDuration": 0, "rotationDuration": 0,
                                     "serializedPublicKey": "{}", "usage": ["sign_token"]}},
    });
    // Delivered twice, as a publisher that retried would.
    for _ in 0..2 {
        jetstream
            .publish(
                format!("{prefix}.events.keypair.activated"),
                event.to_string().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let started = Instant::now();
    loop {
        let mapped = edc.siglet_key_mappings().get(pc.as_str()).cloned();
        let configured = edc
            .control_plane_configs()
            .get(pc.as_str())
            .map(|c| c.to_string())
            .unwrap_or_default();
        if let Some(mapped) = mapped
            && configured.contains("alias-2")
        {
            assert_eq!(mapped["kid"], format!("{did}#key2"));
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the key event did not arrive"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The second delivery started nothing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let runs = api
        .post_ok(
            "/orchestrations/query",
            json!({"predicate": format!(
                "correlationId = '{pc}' AND orchestrationType = 'cfm.orchestration.keypair.activated'")}),
            200,
        )
        .await;
    assert_eq!(runs.as_array().unwrap().len(), 1, "{runs}");
    assert_eq!(edc.calls(Route::KeyMappingCreate), 1);

    api.dispose(&tenant, &pc).await;
    assert_eq!(edc.leftovers(&pc, did), Vec::<String>::new());
    jetstream.delete_stream(&stream_name).await.unwrap();
}

/// A JAD participant moved to another cell that uses the same EDC-V services: the move
/// completes with the participant active in its new cell, and leaving the old cell removes
/// nothing the shared services hold for it (no context deleted, no credential revoked);
/// decommissioning it afterwards still leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_between_cells_sharing_the_services_keeps_the_participant_whole() {
    let Jad {
        edc,
        dir: _dir,
        server: _server,
        api,
        tenant,
    } = Jad::start().await;
    let did = "did:web:mover.example";
    let pc = deploy_participant(&api, &tenant, did).await;
    api.wait_active(&tenant, &pc, Duration::from_secs(20)).await;
    let held_before = edc.leftovers(&pc, did);
    assert!(!held_before.is_empty());

    let target = api
        .post_ok("/cells", json!({"externalId": "cell-jad-2"}), 201)
        .await;
    let target = target["id"].as_str().unwrap().to_string();
    let dataspaces = api.get_json("/dataspace-profiles").await;
    let dataspace = dataspaces[0]["id"].as_str().unwrap();
    api.post_ok(
        &format!("/dataspace-profiles/{dataspace}/deployments"),
        json!({"profileId": dataspace, "cellId": target}),
        202,
    )
    .await;
    let path = format!("/tenants/{tenant}/participant-profiles/{pc}/migrations");
    api.post_ok(&path, json!({"targetCellId": target}), 202)
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let history = api.get_json(&path).await;
        match history[0]["state"].as_str().unwrap() {
            "completed" => break,
            "provisioning" | "switched" => {}
            other => panic!("the migration ended {other}: {history}"),
        }
        assert!(Instant::now() < deadline, "{history}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let profile = api.wait_active(&tenant, &pc, Duration::from_secs(5)).await;
    assert!(
        profile["vpas"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["cellId"] == target.as_str()),
        "{profile}"
    );
    let held_after = edc.leftovers(&pc, did);
    for kept in [
        "identity hub participant",
        "control plane participant context",
    ] {
        assert!(
            held_after.iter().any(|h| h.starts_with(kept)),
            "{kept} was removed: {held_after:?}"
        );
    }
    assert!(
        edc.revoked_credentials().is_empty(),
        "a credential was revoked"
    );

    api.dispose(&tenant, &pc).await;
    assert_eq!(edc.leftovers(&pc, did), Vec::<String>::new());
}
