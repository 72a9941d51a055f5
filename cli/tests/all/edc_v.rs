//! The `edc-v` template end to end through `cfm serve`: secrets in a real OpenBao (behind
//! a gate the tests can close), DNS in a real BIND9, the Identity Hub, Control Plane and
//! Issuer Service as documented-API stand-ins (cfm-standins), cluster objects in the
//! Kubernetes API-server stand-in.
//! A successful onboarding leaves all four VPAs active with the EDC outputs in
//! `cfm.vpa.state` and a runtime credential that reads the participant's secrets only; an
//! Issuer Service answering 500 and an unreachable OpenBao are retried through; a
//! credential request that ends in ERROR fails the deploy, and compensation removes what it
//! had created.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cfm_host::testing::{Bind, OpenBao};
use cfm_standins::kubernetes::KubeApi;
use cfm_standins::{Route, Standins};
use cfm_test_support::{Api, Gate, Server, handed_over};
use serde_json::{Value, json};

const ISSUER_DID: &str = "did:web:issuer.example";
const ADMIN_KEY_PATH: &str = "operator/edc-admin-api-key";

struct Deployment {
    server: Server,
    standins: Standins,
    bao: OpenBao,
    /// Between cfm and OpenBao.
    vault_gate: Gate,
    bind: Bind,
    kube: KubeApi,
    _dir: tempfile::TempDir,
}

async fn deploy() -> Deployment {
    let standins = Standins::start("edc-admin-key").await;
    let bao = OpenBao::start();
    bao.write(ADMIN_KEY_PATH, &standins.api_key).await;
    let vault_gate = Gate::start(bao.address.trim_start_matches("http://").parse().unwrap()).await;
    let bind = Bind::start("participants.cfm.local");
    let kube = KubeApi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let plugins = edc_plugins_config(dir.path(), &standins);
    let mut args = vec!["--plugins".to_string(), plugins.display().to_string()];
    args.extend(cfm_test_support::production_backends(
        dir.path(),
        &bao,
        &vault_gate.address(),
        &bind,
        &kube,
    ));
    let server = Server::start(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    Deployment {
        server,
        standins,
        bao,
        vault_gate,
        bind,
        kube,
        _dir: dir,
    }
}

/// The built-in configuration with the EDC-V plugins pointed at the stand-ins.
fn edc_plugins_config(dir: &Path, standins: &Standins) -> PathBuf {
    let origins = toml::Value::Array(
        [
            &standins.identity_hub_url,
            &standins.control_plane_url,
            &standins.issuer_url,
        ]
        .map(|u| toml::Value::String(u.clone()))
        .to_vec(),
    );
    cfm_test_support::plugins_config_with(dir, |plugin| {
        // Each runtime gets a credential for its own secrets.
        cfm_test_support::runtime_access(plugin);
        // The edc-context plugin finds its services in the cell's properties (see
        // `edc_v_dataspace`), the issuer plugin in its configuration.
        let settings: &[(&str, &str)] = match plugin["name"].as_str().unwrap() {
            "edc-context" => &[],
            "issuer" => &[
                ("issuerUrl", &standins.issuer_url),
                ("issuerId", "issuer-1"),
                ("issuerDid", ISSUER_DID),
                ("identityHubUrl", &standins.identity_hub_url),
            ],
            _ => return,
        };
        let table = plugin["settings"].as_table_mut().unwrap();
        for (key, value) in settings {
            table.insert(key.to_string(), value.to_string().into());
        }
        table.insert("pollIntervalMs".into(), 100.into());
        plugin["grants"]["http"]
            .as_table_mut()
            .unwrap()
            .insert("origins".into(), origins.clone());
    })
}

/// A tenant, a cell (naming its Identity Hub and Control Plane) and a dataspace profile that
/// selects the shipped `edc-v` template.
async fn edc_v_dataspace(api: &Api, cell: &str, standins: &Standins) -> (String, String) {
    let template: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates/edc-v.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let template = api
        .post_ok("/orchestration-definitions", template, 201)
        .await;
    let endpoints = json!({
        "cfm.edc.identityHubUrl": standins.identity_hub_url,
        "cfm.edc.controlPlaneUrl": standins.control_plane_url,
    });
    api.post_ok(
        "/cells",
        json!({"externalId": cell, "properties": endpoints}),
        201,
    )
    .await;
    let dataspace = api
        .post_ok(
            "/dataspace-profiles",
            json!({
                "dataspaceSpec": {"protocolStack": ["dsp-2025-1", "dcp-2025-1"],
                    "credentialSpecs": [{"id": "membership", "type": "MembershipCredential",
                                         "issuer": ISSUER_DID, "format": "vc20-bssl/jwt"}]},
                "properties": {"cfm.orchestrationDefinitionId": template["id"]},
            }),
            201,
        )
        .await;
    let dataspace_id = dataspace["id"].as_str().unwrap().to_string();
    api.post_ok(
        &format!("/dataspace-profiles/{dataspace_id}/deployments"),
        json!({"profileId": dataspace_id, "cellId": cell}),
        202,
    )
    .await;
    let tenant = api.post_ok("/tenants", json!({}), 201).await;
    (tenant["id"].as_str().unwrap().to_string(), dataspace_id)
}

async fn onboard(api: &Api, tenant: &str, dataspace: &str, did: &str) -> String {
    let profile = api
        .post_ok(
            &format!("/tenants/{tenant}/participant-profiles"),
            json!({"identifier": did, "dataspaceProfileIds": [dataspace]}),
            202,
        )
        .await;
    profile["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edc_v_onboarding_reaches_every_service() {
    let d = deploy().await;
    // The Issuer Service fails the first two registrations: retried with backoff.
    d.standins.fail_next(Route::HolderCreate, &[500, 500]);
    let api = d.server.client();
    let (tenant, dataspace) = edc_v_dataspace(&api, "cell-e", &d.standins).await;
    let did = "did:web:e.example";
    let pc = onboard(&api, &tenant, &dataspace, did).await;
    let profile = api.wait_active(&tenant, &pc, Duration::from_secs(60)).await;
    assert_eq!(d.standins.calls(Route::HolderCreate), 3);
    let other = onboard(&api, &tenant, &dataspace, "did:web:other.example").await;
    api.wait_active(&tenant, &other, Duration::from_secs(60))
        .await;

    let state = &profile["properties"]["cfm.vpa.state"];
    assert_eq!(state["participantContextId"], pc.as_str(), "{profile}");
    let holder_pid = state["holderPid"].as_str().unwrap();
    assert!(
        state["credentialRequest"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/credentials/request/{holder_pid}")),
        "{state}"
    );
    assert!(d.standins.identity_hub_participants().contains(&pc));
    assert!(d.standins.control_plane_participants().contains_key(&pc));
    assert!(d.standins.holders().iter().any(|h| h == did));
    assert_eq!(
        d.standins.credential_requests()[holder_pid]["issuerDid"],
        ISSUER_DID
    );
    let (status, _) = d.bao.read(&format!("participants/{pc}/api-key")).await;
    assert_eq!(status, 200);
    let (status, kept) = d
        .bao
        .read(&format!("participants/{pc}/identity-hub-credentials"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(d.bind.dig(&pc, "CNAME"), ["cell-e.cells.cfm.local."]);
    assert!(
        d.kube
            .object(
                "v1",
                "configmaps",
                &format!("cfm-{pc}"),
                "participant-context"
            )
            .is_some()
    );
    // The operator's administration API key and the credentials the Identity Hub issued
    // never show in the log, the audit records or what the API answers about the participant.
    let mut secrets = vec![d.standins.api_key.clone()];
    for value in kept["data"]["data"].as_object().unwrap().values() {
        secrets.extend(value.as_str().filter(|v| v.len() >= 8).map(String::from));
    }
    assert!(secrets.len() > 1, "no Identity Hub credential kept: {kept}");
    let orchestrations = api.orchestrations_of(&pc, "deploy").await.to_string();
    let audit = std::fs::read_to_string(d.server.data_dir().join("audit.jsonl")).unwrap();
    for secret in &secrets {
        assert!(
            !d.server.log().contains(secret.as_str()),
            "a secret is in the log"
        );
        assert!(
            !audit.contains(secret.as_str()),
            "a secret is in the audit log"
        );
        assert!(
            !profile.to_string().contains(secret.as_str()),
            "a secret is in the profile"
        );
        assert!(
            !orchestrations.contains(secret.as_str()),
            "a secret is in an orchestration"
        );
    }

    // The runtime's credential, handed over in its namespace, reads its secrets only.
    let (role_id, secret_id) = handed_over(&d.kube, &pc);
    let token = d.bao.login(&role_id, &secret_id).await.unwrap();
    let own = format!("participants/{pc}/api-key");
    assert_eq!(d.bao.read_as(&token, &own).await, 200);
    let others = format!("participants/{other}/api-key");
    assert_eq!(d.bao.read_as(&token, &others).await, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_openbao_is_waited_out() {
    let d = deploy().await;
    let api = d.server.client();
    let (tenant, dataspace) = edc_v_dataspace(&api, "cell-g", &d.standins).await;
    d.vault_gate.close();
    let pc = onboard(&api, &tenant, &dataspace, "did:web:g.example").await;
    let started = Instant::now();
    // The vault activity fails against the closed gate and is retried.
    loop {
        let deploys = api.orchestrations_of(&pc, "deploy").await;
        let retried = deploys[0]["steps"].as_array().is_some_and(|steps| {
            steps.iter().any(|s| {
                s["id"] == "vault" && s["lastError"].as_str().is_some_and(|e| e.contains("vault"))
            })
        });
        if retried {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{deploys}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let profile = api
        .get_json(&format!("/tenants/{tenant}/participant-profiles/{pc}"))
        .await;
    assert!(
        profile["vpas"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["state"] != "active"),
        "{profile}"
    );
    d.vault_gate.open();
    api.wait_active(&tenant, &pc, Duration::from_secs(60)).await;
    let (status, _) = d.bao.read(&format!("participants/{pc}/api-key")).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_credential_request_is_compensated_everywhere() {
    let d = deploy().await;
    d.standins.credential_outcome("ERROR", 1);
    let api = d.server.client();
    let (tenant, dataspace) = edc_v_dataspace(&api, "cell-f", &d.standins).await;
    let pc = onboard(&api, &tenant, &dataspace, "did:web:f.example").await;

    let started = Instant::now();
    let profile = loop {
        let profile = api
            .get_json(&format!("/tenants/{tenant}/participant-profiles/{pc}"))
            .await;
        let vpas = profile["vpas"].as_array().unwrap();
        if vpas.iter().all(|v| v["state"] == "disposed") {
            break profile;
        }
        assert!(
            vpas.iter().all(|v| v["state"] != "active"),
            "the deploy succeeded: {profile}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not compensated: {profile}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let deploys = api.orchestrations_of(&pc, "deploy").await;
    assert_eq!(
        deploys[0]["state"], 3,
        "the deploy did not error: {deploys}"
    );
    assert!(
        deploys[0]["errorDetail"]
            .as_str()
            .unwrap()
            .contains("ended in ERROR"),
        "{deploys}"
    );

    // Nothing the deploy created is left anywhere.
    let (status, _) = d.bao.read(&format!("participants/{pc}/api-key")).await;
    assert_eq!(status, 404, "{profile}");
    assert!(d.bind.dig(&pc, "CNAME").is_empty());
    assert!(d.kube.names().is_empty(), "{:?}", d.kube.names());
    assert!(d.standins.identity_hub_participants().is_empty());
    assert!(d.standins.control_plane_participants().is_empty());
    assert!(d.standins.holders().is_empty());
}
