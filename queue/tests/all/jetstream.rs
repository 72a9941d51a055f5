//! The queue conformance suite against the real NATS JetStream server
//! (`CFM_TEST_NATS_URL`, default `nats://127.0.0.1:4222`; scripts/services.sh starts it).

use std::time::Duration;

use cfm_queue::jetstream::{JetStreamQueue, JetStreamSettings};

fn nats_url() -> String {
    std::env::var("CFM_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// Settings for the test server in a namespace of the test's own.
fn own_namespace() -> JetStreamSettings {
    JetStreamSettings {
        namespace: format!("test{}", uuid::Uuid::new_v4().simple()),
        ..JetStreamSettings::new(nats_url())
    }
}

#[tokio::test]
async fn jetstream_queue_conforms() {
    let ack_wait = Duration::from_secs(1);
    let settings = JetStreamSettings {
        ack_wait,
        ..own_namespace()
    };
    let queue = JetStreamQueue::connect(settings)
        .await
        .expect("JetStream at the test URL");
    cfm_queue::conformance::run(&queue, ack_wait).await;
    queue.delete().await.expect("delete the test stream");
}

#[tokio::test]
async fn setup_is_idempotent_and_errors_are_typed() {
    let settings = own_namespace();
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

/// A server that lost the stream and its consumers (killed before they reached its disk)
/// is repaired by the failed calls themselves: the next publish and pull work.
#[tokio::test]
async fn a_lost_stream_and_consumer_are_recreated() {
    use cfm_queue::{Message, Queue};
    let settings = own_namespace();
    let queue = JetStreamQueue::connect(settings.clone()).await.unwrap();
    let mut consumer = queue.consumer("activity.x").await.unwrap();
    JetStreamQueue::connect(settings)
        .await
        .unwrap()
        .delete()
        .await
        .unwrap();

    let message = |id: &str| Message {
        id: id.into(),
        topic: "activity.x".into(),
        payload: b"{}".to_vec(),
        trace_parent: None,
    };
    assert!(queue.publish(&[message("lost")]).await.is_err());
    assert!(consumer.pull(1, Duration::from_millis(50)).await.is_err());
    queue.publish(&[message("kept")]).await.unwrap();
    let pulled = consumer.pull(1, Duration::from_secs(2)).await.unwrap();
    assert_eq!(pulled.len(), 1);
    assert_eq!(pulled[0].id(), "kept");
    queue.delete().await.unwrap();
}

/// A changed ack-wait reaches the durable consumer made with the old one: work a host
/// took and then went quiet on comes back after the new ack-wait, not the old.
#[tokio::test]
async fn a_changed_ack_wait_applies_to_the_existing_consumer() {
    use cfm_queue::{Message, Queue};
    let long = JetStreamSettings {
        ack_wait: Duration::from_secs(600),
        ..own_namespace()
    };
    let before = JetStreamQueue::connect(long.clone()).await.unwrap();
    let _ = before.consumer("activity.x").await.unwrap();

    let short = JetStreamSettings {
        ack_wait: Duration::from_millis(500),
        ..long
    };
    let queue = JetStreamQueue::connect(short).await.unwrap();
    let mut consumer = queue.consumer("activity.x").await.unwrap();
    let message = Message {
        id: "m".into(),
        topic: "activity.x".into(),
        payload: b"{}".to_vec(),
        trace_parent: None,
    };
    queue.publish(&[message]).await.unwrap();
    let first = consumer.pull(1, Duration::from_secs(2)).await.unwrap();
    assert_eq!(first.len(), 1);
    // Neither acked nor signalled: back after half a second, not ten minutes.
    let again = consumer.pull(1, Duration::from_secs(3)).await.unwrap();
    assert_eq!(again.len(), 1, "not redelivered under the new ack-wait");
    assert_eq!(again[0].deliveries(), 2);
    queue.delete().await.unwrap();
}

/// A message is held from its publish until it is acknowledged, whether waiting or
/// leased; once acknowledged, lost, or replaced at its sequence by another, it is not.
#[tokio::test]
async fn holds_answers_for_each_message_by_its_sequence() {
    use cfm_queue::{Message, Queue};
    let queue = JetStreamQueue::connect(own_namespace()).await.unwrap();
    let message = |id: &str| Message {
        id: id.into(),
        topic: "activity.h".into(),
        payload: b"{}".to_vec(),
        trace_parent: None,
    };
    let sequences = queue
        .publish(&[message("acked"), message("lost")])
        .await
        .unwrap();
    let [Some(acked), Some(lost)] = sequences[..] else {
        panic!("no sequences: {sequences:?}");
    };
    assert!(acked < lost);
    assert!(queue.holds("acked", acked).await.unwrap(), "waiting");
    // A duplicate publish names the original's sequence.
    assert_eq!(
        queue.publish(&[message("acked")]).await.unwrap(),
        vec![Some(acked)]
    );
    assert!(
        !queue.holds("another", acked).await.unwrap(),
        "another message's sequence"
    );

    let mut consumer = queue.consumer("activity.h").await.unwrap();
    let pulled = consumer.pull(1, Duration::from_secs(2)).await.unwrap();
    assert_eq!(pulled[0].id(), "acked");
    assert!(queue.holds("acked", acked).await.unwrap(), "leased");
    pulled[0].ack().await.unwrap();
    // The ack is confirmed by the server before it answers the look-up.
    let started = std::time::Instant::now();
    while queue.holds("acked", acked).await.unwrap() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still held after its ack"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Lost as a server killed before flushing its tail loses it.
    let nats = async_nats::connect(nats_url()).await.unwrap();
    let stream = async_nats::jetstream::new(nats)
        .get_stream(queue.stream_name())
        .await
        .unwrap();
    assert!(stream.delete_message(lost).await.unwrap());
    assert!(!queue.holds("lost", lost).await.unwrap(), "lost");
    assert!(
        !queue.holds("never", lost + 100).await.unwrap(),
        "past the end"
    );
    queue.delete().await.unwrap();
}

/// A message's trace travels as its `traceparent` header, which the delivery reads back;
/// a message without one, or with a malformed one, has no such header.
#[tokio::test]
async fn a_trace_parent_travels_as_the_traceparent_header() {
    use cfm_queue::{Message, Queue};
    let queue = JetStreamQueue::connect(own_namespace()).await.unwrap();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let message = |id: &str, trace_parent: Option<&str>| Message {
        id: id.into(),
        topic: "activity.t".into(),
        payload: b"{}".to_vec(),
        trace_parent: trace_parent.map(str::to_string),
    };
    // A malformed value (one a header could not even hold) is not sent, and fails nothing.
    let malformed = "00-x\r\ninjected: yes";
    queue
        .publish(&[
            message("traced", Some(traceparent)),
            message("plain", None),
            message("malformed", Some(malformed)),
        ])
        .await
        .unwrap();
    let mut consumer = queue.consumer("activity.t").await.unwrap();
    let pulled = consumer.pull(3, Duration::from_secs(2)).await.unwrap();
    let seen: Vec<(&str, Option<&str>)> =
        pulled.iter().map(|d| (d.id(), d.trace_parent())).collect();
    assert_eq!(
        seen,
        [
            ("traced", Some(traceparent)),
            ("plain", None),
            ("malformed", None)
        ]
    );
    queue.delete().await.unwrap();
}
