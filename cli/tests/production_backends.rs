//! `cfm serve` with production backends: the vault plugin's credential in a real OpenBao
//! (`--vault-addr`), the dns plugin's records in a real BIND9 through RFC 2136 with TSIG
//! (`--dns-server`), and both still there once cfm is gone.

mod support;

use std::time::Duration;

use cfm_host::testing::{Bind, OpenBao};
use serde_json::json;
use support::{Api, Server};

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

    let path = format!("/tenants/{tenant_id}/participant-profiles/{id}");
    let disposing = api.raw(reqwest::Method::DELETE, &path, None, None).await;
    assert_eq!(disposing.status(), 202);
    api.wait_vpas(&tenant_id, &id, "disposed", Duration::from_secs(30))
        .await;
    assert!(bind.dig(&id, "CNAME").is_empty(), "dispose left the record");
}

/// cfm is never in the trust path: once a participant is onboarded, stopping cfm takes
/// nothing away from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_keeps_its_secret_and_name_when_cfm_is_gone() {
    let bao = OpenBao::start();
    let bind = Bind::start("participants.cfm.local");
    let dir = tempfile::tempdir().unwrap();
    let args = support::production_backends(dir.path(), &bao, &bind);
    let mut server = Server::start(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let (_, id) = onboard(&server.client(), "cell-t", "did:web:t.example").await;
    let (_, before) = bao.read(&format!("participants/{id}/api-key")).await;

    server.kill();
    let (status, after) = bao.read(&format!("participants/{id}/api-key")).await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(after["data"]["data"], before["data"]["data"]);
    assert_eq!(bind.dig(&id, "CNAME"), ["cell-t.cells.cfm.local."]);
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
