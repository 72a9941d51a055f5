//! `cfm serve --vault-addr`: the built-in vault plugin's credential goes to a real
//! OpenBao server instead of the data directory, and the token stays out of the log.

mod support;

use std::time::Duration;

use cfm_host::testing::OpenBao;
use serde_json::json;
use support::Server;

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
    let api = server.client();
    let env = api.dataspace_with_cell("cell-v").await;
    let tenant = api.post_ok("/tenants", json!({}), 201).await;
    let tenant_id = tenant["id"].as_str().unwrap();
    let profile = api
        .post_ok(
            &format!("/tenants/{tenant_id}/participant-profiles"),
            json!({"identifier": "did:web:v.example", "dataspaceProfileIds": [env.dataspace_id]}),
            202,
        )
        .await;
    let id = profile["id"].as_str().unwrap();
    api.wait_active(tenant_id, id, Duration::from_secs(60))
        .await;

    let (status, stored) = bao.read(&format!("participants/{id}/api-key")).await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["data"]["data"]["value"].as_str().unwrap().len(), 64);
    assert!(
        !server
            .data_dir()
            .join("secrets/participants")
            .join(id)
            .exists(),
        "the secret went to the data directory too"
    );
    assert!(server.log().contains("plugin secrets are kept in Vault"));
    assert!(
        !server.log().contains(&bao.token),
        "the token reached the log"
    );
}
