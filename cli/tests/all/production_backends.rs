//! `cfm serve` with production backends: the vault plugin's credential in a real OpenBao
//! (`--vault-addr`), the dns plugin's records in a real BIND9 through RFC 2136 with TSIG
//! (`--dns-server`), both still there once cfm is gone, and the k8s plugin's objects in
//! Kubernetes (`--kubernetes`, against the API-server stand-in), or each cell's in a
//! Kubernetes of its own (`--kubernetes-cell`).

use std::time::Duration;

use cfm_host::testing::{Bind, OpenBao};
use cfm_manager::testing::TestBackend;
use cfm_standins::kubernetes::KubeApi;
use cfm_test_support::{Api, Server, handed_over};
use reqwest::Method;
use serde_json::json;

/// Onboards one participant on a fresh tenant and waits for it; returns (tenant, profile).
async fn onboard(api: &Api, cell: &str, did: &str) -> (String, String) {
    let env = api.dataspace_with_cell(cell).await;
    let tenant = api.post_ok("/tenants", json!({}), 201).await;
    let tenant_id = tenant["id"].as_str().unwrap().to_string();
    let profile = api
        .post_ok(
            &format!("/tenants/{tenant_id}/participant-profiles"),
            json!({"identifier": did, "dataspaceProfileIds": [env.dataspace_id]}),
            202,
        )
        .await;
    let id = profile["id"].as_str().unwrap().to_string();
    api.wait_active(&tenant_id, &id, Duration::from_secs(60))
        .await;
    (tenant_id, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_keeps_dns_records_in_bind() {
    let bind = Bind::start("participants.cfm.local");
    let server = Server::start(&[
        "--dns-server",
        &bind.address().to_string(),
        "--dns-tsig-key-file",
        bind.key_file.to_str().unwrap(),
    ])
    .await;
    let api = server.client();
    let (tenant_id, id) = onboard(&api, "cell-d", "did:web:d.example").await;
    assert_eq!(bind.dig(&id, "CNAME"), ["cell-d.cells.cfm.local."]);
    assert!(
        !server.data_dir().join("dns").exists(),
        "the records went to zone files too"
    );
    assert!(server.log().contains("RFC 2136"));
    let secret = std::fs::read_to_string(&bind.key_file).unwrap();
    let secret = secret.split('"').nth(3).unwrap();
    assert!(
        !server.log().contains(secret),
        "the TSIG secret reached the log"
    );

    api.dispose(&tenant_id, &id).await;
    assert!(bind.dig(&id, "CNAME").is_empty(), "dispose left the record");
}

/// cfm is never in the trust path: once a participant is onboarded, stopping cfm takes
/// nothing away from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_keeps_its_secret_and_name_when_cfm_is_gone() {
    let mut d = serve_with_runtime_access().await;
    let (_, id) = onboard(&d.server.client(), "cell-t", "did:web:t.example").await;
    let (_, before) = d.bao.read(&format!("participants/{id}/api-key")).await;
    let (role_id, secret_id) = handed_over(&d.kube, &id);

    d.server.kill();
    let (status, after) = d.bao.read(&format!("participants/{id}/api-key")).await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(after["data"]["data"], before["data"]["data"]);
    // The runtime logs in with its own credential and reads its key, cfm or no cfm.
    let token = d.bao.login(&role_id, &secret_id).await.unwrap();
    assert_eq!(
        d.bao
            .read_as(&token, &format!("participants/{id}/api-key"))
            .await,
        200
    );
    assert_eq!(d.bind.dig(&id, "CNAME"), ["cell-t.cells.cfm.local."]);
}

/// `cfm serve` with secrets in OpenBao, DNS in BIND9, cluster objects in the API-server
/// stand-in, and the vault plugin issuing runtime credentials; the servers it runs on.
struct RuntimeAccess {
    server: Server,
    bao: OpenBao,
    bind: Bind,
    kube: KubeApi,
    _dir: tempfile::TempDir,
}

async fn serve_with_runtime_access() -> RuntimeAccess {
    serve_with_runtime_access_logging("info").await
}

async fn serve_with_runtime_access_logging(filter: &str) -> RuntimeAccess {
    let bao = OpenBao::start();
    let bind = Bind::start("participants.cfm.local");
    let kube = KubeApi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let plugins =
        cfm_test_support::plugins_config_with(dir.path(), cfm_test_support::runtime_access);
    let mut args = vec!["--plugins".to_string(), plugins.display().to_string()];
    args.extend(cfm_test_support::production_backends(
        dir.path(),
        &bao,
        &bao.address,
        &bind,
        &kube,
    ));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start_logging(TestBackend::Sqlite, &args, filter).await;
    RuntimeAccess {
        server,
        bao,
        bind,
        kube,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_keeps_plugin_secrets_in_openbao() {
    let bao = OpenBao::start();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("vault.token");
    std::fs::write(&token_file, format!("{}\n", bao.token)).unwrap();
    let server = Server::start(&[
        "--vault-addr",
        &bao.address,
        "--vault-token-file",
        token_file.to_str().unwrap(),
    ])
    .await;
    let (_, id) = onboard(&server.client(), "cell-v", "did:web:v.example").await;

    let (status, stored) = bao.read(&format!("participants/{id}/api-key")).await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["data"]["data"]["value"].as_str().unwrap().len(), 64);
    assert!(
        !server
            .data_dir()
            .join("secrets/participants")
            .join(&id)
            .exists(),
        "the secret went to the data directory too"
    );
    assert!(server.log().contains("plugin secrets are kept in Vault"));
    assert!(
        !server.log().contains(&bao.token),
        "the token reached the log"
    );
}

/// With `runtimeAccess`, each participant's runtime gets an AppRole credential (handed over
/// as a Secret in its namespace) that reads its own secrets in OpenBao and no one else's,
/// and stops working once the participant is disposed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_runtime_reads_only_its_own_secrets() {
    let d = serve_with_runtime_access().await;
    let api = d.server.client();
    let (tenant_a, a) = onboard(&api, "cell-a", "did:web:a.example").await;
    let (_, b) = onboard(&api, "cell-b", "did:web:b.example").await;

    let (role_id, secret_id) = handed_over(&d.kube, &a);
    let (role_id, secret_id) = (role_id.as_str(), secret_id.as_str());
    let token = d.bao.login(role_id, secret_id).await.unwrap();
    assert_eq!(
        d.bao
            .read_as(&token, &format!("participants/{a}/api-key"))
            .await,
        200
    );
    assert_eq!(
        d.bao
            .read_as(&token, &format!("participants/{b}/api-key"))
            .await,
        403
    );
    assert!(
        !d.server.log().contains(secret_id),
        "the secret id reached the log"
    );
    let profile = api
        .get_json(&format!("/tenants/{tenant_a}/participant-profiles/{a}"))
        .await;
    assert_eq!(
        profile["properties"]["cfm.vpa.state"]["vaultRoleId"],
        role_id
    );
    assert!(
        !profile.to_string().contains(secret_id),
        "the secret id is in the API"
    );

    api.dispose(&tenant_a, &a).await;
    assert!(
        d.bao.login(role_id, secret_id).await.is_err(),
        "the credential outlived dispose"
    );
    assert_eq!(
        d.bao
            .read_as(&token, &format!("participants/{a}/api-key"))
            .await,
        403
    );
    assert!(
        d.kube
            .object("v1", "secrets", &format!("cfm-{a}"), "vault-access")
            .is_none(),
        "dispose left the handed-over credential"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_keeps_cluster_objects_in_kubernetes() {
    let kube = KubeApi::start().await;
    let server = Server::start(&["--kubernetes", &kube.url]).await;
    let api = server.client();
    let (tenant_id, id) = onboard(&api, "cell-k", "did:web:k.example").await;
    let namespace = format!("cfm-{id}");
    let context = kube
        .object("v1", "configmaps", &namespace, "participant-context")
        .unwrap();
    assert_eq!(context["data"]["did"], "did:web:k.example");
    assert_eq!(context["metadata"]["managedFields"][0]["manager"], "cfm");
    assert!(!server.data_dir().join("cluster").exists());
    assert!(
        server
            .log()
            .contains("plugin cluster objects go to Kubernetes")
    );

    api.dispose(&tenant_id, &id).await;
    assert!(kube.names().is_empty(), "{:?}", kube.names());
}

/// `--kubernetes-cell`: each cell keeps its participants' objects in its own cluster
/// (named here by external id), so a migration moves them from one API server to the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_cell_keeps_its_objects_in_its_own_kubernetes() {
    let (east, west) = (KubeApi::start().await, KubeApi::start().await);
    let server = Server::start(&[
        "--kubernetes-cell",
        &format!("cell-east={}", east.url),
        "--kubernetes-cell",
        &format!("cell-west={}", west.url),
    ])
    .await;
    let api = server.client();
    let env = api.dataspace_with_cell("cell-east").await;
    let west_cell = api.cell_serving(&env.dataspace_id, "cell-west").await;
    let tenant = api.post_ok("/tenants", json!({}), 201).await;
    let tenant = tenant["id"].as_str().unwrap().to_string();
    let profile = api
        .post_ok(
            &format!("/tenants/{tenant}/participant-profiles"),
            json!({"identifier": "did:web:mover.example", "dataspaceProfileIds": [env.dataspace_id],
                   "cellId": env.cell_id}),
            202,
        )
        .await;
    let id = profile["id"].as_str().unwrap().to_string();
    api.wait_active(&tenant, &id, Duration::from_secs(60)).await;
    let namespace = format!("cfm-{id}");
    assert!(
        east.object("v1", "configmaps", &namespace, "participant-context")
            .is_some()
    );
    assert!(west.names().is_empty(), "{:?}", west.names());
    assert!(
        !server
            .data_dir()
            .join("cluster")
            .join(&env.cell_id)
            .exists()
    );

    let migrations = format!("/tenants/{tenant}/participant-profiles/{id}/migrations");
    api.post_ok(&migrations, json!({"targetCellId": west_cell["id"]}), 202)
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while api.get_json(&migrations).await[0]["state"] != "completed" {
        assert!(std::time::Instant::now() < deadline, "{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let context = west
        .object("v1", "configmaps", &namespace, "participant-context")
        .expect("the target cell's cluster holds the participant");
    assert_eq!(context["data"]["did"], "did:web:mover.example");
    assert!(
        east.names().is_empty(),
        "the source cell kept {:?}",
        east.names()
    );
    assert!(
        server
            .log()
            .contains("cell's cluster objects go to its own Kubernetes")
    );
}

/// Every secret cfm is given or makes (the Vault token, the TSIG key, the signing key,
/// the admin token, each participant's API key and runtime secret id) is looked for in
/// the server's debug log, the audit log, and every API answer, error bodies included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_a_log_an_audit_record_or_an_answer() {
    let d = serve_with_runtime_access_logging("debug,rustify=off").await;
    let api = d.server.client();
    let (tenant, kept) = onboard(&api, "cell-s", "did:web:kept.example").await;
    let (other_tenant, gone) = onboard(&api, "cell-s2", "did:web:gone.example").await;

    let data = d.server.data_dir();
    let tsig = std::fs::read_to_string(&d.bind.key_file).unwrap();
    let mut secrets: Vec<(String, String)> = vec![
        ("Vault token".into(), d.bao.token.clone()),
        (
            "TSIG key".into(),
            tsig.split('"').nth(3).unwrap().to_string(),
        ),
        (
            "signing key".into(),
            std::fs::read_to_string(data.join("signing.key"))
                .unwrap()
                .trim()
                .to_string(),
        ),
        (
            "admin token".into(),
            std::fs::read_to_string(data.join("admin.token"))
                .unwrap()
                .trim()
                .to_string(),
        ),
    ];
    for id in [&kept, &gone] {
        let (status, key) = d.bao.read(&format!("participants/{id}/api-key")).await;
        assert_eq!(status, 200, "{key}");
        for (name, value) in key["data"]["data"].as_object().unwrap() {
            secrets.push((
                format!("{id}'s {name}"),
                value.as_str().unwrap().to_string(),
            ));
        }
        // The role id is the AppRole's public half (a user name, in Vault's words): the
        // onboarding reports it as `vaultRoleId`. The secret id is what must never show.
        let (_, secret_id) = handed_over(&d.kube, id);
        secrets.push((format!("{id}'s secret id"), secret_id));
    }
    assert!(
        secrets.iter().all(|(_, value)| value.len() >= 8),
        "{secrets:?}"
    );

    api.dispose(&other_tenant, &gone).await;
    let mut answers = Vec::new();
    for path in [
        "/tenants".to_string(),
        format!("/tenants/{tenant}/participant-profiles"),
        format!("/tenants/{tenant}/participant-profiles/{kept}"),
        format!("/tenants/{other_tenant}/participant-profiles/{gone}"),
        format!("/tenants/{tenant}/participant-profiles/{kept}/capability-calls"),
        format!("/tenants/{other_tenant}/participant-profiles/{gone}/capability-calls"),
        "/cells".into(),
        "/dataspace-profiles".into(),
        "/activity-definitions".into(),
        "/orchestration-definitions".into(),
    ] {
        answers.push(api.get(&path).await.text().await.unwrap());
    }
    // The calls that handled the secrets are there to be looked through: the key's
    // path, the access issued and the credential handed over, never a value.
    assert!(
        answers[4].contains("issue-access") && answers[4].contains("runtime-access"),
        "{}",
        answers[4]
    );
    for query in [
        "/orchestrations/query",
        "/participant-profiles/query",
        "/tenants/query",
    ] {
        let body = json!({"predicate": ""}).to_string();
        let answer = api.raw(Method::POST, query, Some(&body), None).await;
        answers.push(answer.text().await.unwrap());
    }
    // Refusals: a token with one byte changed, a token of another key, a predicate that
    // holds a secret as a value and fails on an unknown field, a malformed body holding one.
    let admin = &secrets[3].1;
    // A character well inside the signature: the last one carries padding bits only.
    let at = admin.len() - 10;
    let flipped = if &admin[at..=at] == "A" { "B" } else { "A" };
    let tampered = format!("{}{flipped}{}", &admin[..at], &admin[at + 1..]);
    let vault_token = &secrets[0].1;
    for (method, path, body, token) in [
        (
            Method::GET,
            "/tenants".to_string(),
            None,
            Some(tampered.as_str()),
        ),
        (
            Method::GET,
            "/tenants".to_string(),
            None,
            Some(vault_token.as_str()),
        ),
        (
            Method::POST,
            "/participant-profiles/query".to_string(),
            Some(
                json!({"predicate": format!("identifier = '{vault_token}' AND nope = 1")})
                    .to_string(),
            ),
            None,
        ),
        (
            Method::POST,
            "/tenants".to_string(),
            Some(format!("{{\"properties\": \"{admin}\"")),
            None,
        ),
    ] {
        let answer = api.raw(method.clone(), &path, body.as_deref(), token).await;
        assert!(
            answer.status().is_client_error(),
            "{method} {path}: {}",
            answer.status()
        );
        answers.push(answer.text().await.unwrap());
    }

    let log = d.server.log();
    let audit = std::fs::read_to_string(data.join("audit.jsonl")).unwrap();
    assert!(
        log.contains("DEBUG"),
        "the server did not log at debug level"
    );
    assert!(audit.lines().count() > 10, "{audit}");
    let mut looked = 0;
    for (name, secret) in &secrets {
        assert!(
            !log.contains(secret.as_str()),
            "the {name} is in the server log"
        );
        assert!(
            !audit.contains(secret.as_str()),
            "the {name} is in the audit log"
        );
        for answer in &answers {
            assert!(
                !answer.contains(secret.as_str()),
                "the {name} is in an answer: {answer}"
            );
            looked += 1;
        }
    }
    println!(
        "secrets: {} looked for in {} log lines, {} audit records, {} answers ({looked} checks): none found",
        secrets.len(),
        log.lines().count(),
        audit.lines().count(),
        answers.len()
    );
}
