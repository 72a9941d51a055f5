//! The queue conformance suite against the real NATS JetStream server
//! (`CFM_TEST_NATS_URL`, default `nats://127.0.0.1:4222`; scripts/services.sh starts it).

use std::time::Duration;

use cfm_queue::jetstream::{JetStreamQueue, JetStreamSettings};

fn nats_url() -> String {
    std::env::var("CFM_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

#[tokio::test]
async fn jetstream_queue_conforms() {
    let ack_wait = Duration::from_secs(1);
    let settings = JetStreamSettings {
        namespace: format!("test{}", uuid::Uuid::new_v4().simple()),
        ack_wait,
        ..JetStreamSettings::new(nats_url())
    };
    let queue = JetStreamQueue::connect(settings)
        .await
        .expect("JetStream at the test URL");
    cfm_queue::conformance::run(&queue, ack_wait).await;
    queue.delete().await.expect("delete the test stream");
}

#[tokio::test]
async fn setup_is_idempotent_and_errors_are_typed() {
    let settings = JetStreamSettings {
        namespace: format!("test{}", uuid::Uuid::new_v4().simple()),
        ..JetStreamSettings::new(nats_url())
    };
    let first = JetStreamQueue::connect(settings.clone()).await.unwrap();
    let _again = JetStreamQueue::connect(settings).await.unwrap();
    use cfm_queue::Queue;
    let _ = first.consumer("activity.x").await.unwrap();
    let _ = first.consumer("activity.x").await.unwrap();
    assert!(matches!(
        first.consumer("activity.>").await.err(),
        Some(cfm_queue::QueueError::InvalidTopic(_))
    ));
    first.delete().await.unwrap();

    let bad = JetStreamSettings {
        namespace: "a b".into(),
        ..JetStreamSettings::new(nats_url())
    };
    assert!(matches!(
        JetStreamQueue::connect(bad).await.err(),
        Some(cfm_queue::QueueError::Setup(_))
    ));
}
