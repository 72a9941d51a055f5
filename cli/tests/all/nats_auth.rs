//! NATS authentication, against real nats-server processes that require it: a token, a
//! user and password, and an NKey. Each kind gets work through; no credentials, or wrong
//! ones, are refused at connect with an error that names no secret.

use std::time::Duration;

use cfm_queue::jetstream::{JetStreamQueue, JetStreamSettings, NatsAuth};
use cfm_queue::{Message, Queue};
use cfm_test_support::JetStreamServer;

async fn connect(server: &JetStreamServer, auth: NatsAuth) -> Result<JetStreamQueue, String> {
    JetStreamQueue::connect(JetStreamSettings {
        auth,
        ..JetStreamSettings::new(server.url())
    })
    .await
    .map_err(|e| e.to_string())
}

/// One message through the queue: published, pulled and acknowledged.
async fn round_trip(queue: &JetStreamQueue) {
    let mut consumer = queue.consumer("activity.auth").await.unwrap();
    queue
        .publish(&[Message {
            id: "m1".into(),
            topic: "activity.auth".into(),
            payload: b"hello".to_vec(),
            trace_parent: None,
        }])
        .await
        .unwrap();
    let pulled = consumer.pull(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(pulled.len(), 1);
    assert_eq!(pulled[0].payload(), b"hello");
    pulled[0].ack().await.unwrap();
}

#[tokio::test]
async fn a_token_server_takes_the_token_and_refuses_anything_else() {
    let server = JetStreamServer::start_with_config("authorization { token: \"s3cret-token\" }");
    round_trip(
        &connect(&server, NatsAuth::Token("s3cret-token".into()))
            .await
            .unwrap(),
    )
    .await;
    for wrong in [NatsAuth::None, NatsAuth::Token("guess".into())] {
        let refused = connect(&server, wrong)
            .await
            .err()
            .expect("connected without the token");
        assert!(!refused.contains("s3cret"), "{refused}");
    }
}

#[tokio::test]
async fn a_user_and_password_server_takes_them() {
    let server = JetStreamServer::start_with_config(
        "authorization { users = [ { user: \"cfm\", password: \"pa55word\" } ] }",
    );
    let auth = |password: &str| NatsAuth::UserPassword {
        user: "cfm".into(),
        password: password.into(),
    };
    round_trip(&connect(&server, auth("pa55word")).await.unwrap()).await;
    let refused = connect(&server, auth("wrong"))
        .await
        .err()
        .expect("a wrong password connected");
    assert!(
        !refused.contains("pa55word") && !refused.contains("wrong"),
        "{refused}"
    );
}

#[tokio::test]
async fn an_nkey_server_takes_a_signature_by_the_seed() {
    let user = nkeys::KeyPair::new_user();
    let server = JetStreamServer::start_with_config(&format!(
        "authorization {{ users = [ {{ nkey: \"{}\" }} ] }}",
        user.public_key()
    ));
    let seed = user.seed().unwrap();
    round_trip(&connect(&server, NatsAuth::NKeySeed(seed)).await.unwrap()).await;

    let stranger = nkeys::KeyPair::new_user().seed().unwrap();
    assert!(
        connect(&server, NatsAuth::NKeySeed(stranger))
            .await
            .is_err()
    );
    let malformed = connect(&server, NatsAuth::NKeySeed("SUnot-a-seed".into()))
        .await
        .err()
        .expect("a malformed seed connected");
    assert!(malformed.contains("not a valid seed"), "{malformed}");
    assert!(!malformed.contains("SUnot"), "{malformed}");
}

#[test]
fn two_kinds_of_nats_credentials_are_refused_before_anything_starts() {
    let output = std::process::Command::new(cfm_test_support::cfm_binary())
        .args([
            "agent",
            "--nats-url",
            "nats://127.0.0.1:4222",
            "--nats-token-file",
            "/nonexistent/token",
            "--nats-nkey-seed-file",
            "/nonexistent/seed",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot be used with"), "{stderr}");
}
