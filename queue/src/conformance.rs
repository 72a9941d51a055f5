//! The conformance suite every [`Queue`] implementation passes: at-least-once delivery,
//! explicit ack, redelivery after the ack-wait, delayed redelivery on nak, progress
//! signals, de-duplication by message id, topic isolation and work sharing.
//!
//! Call [`run`] with a fresh queue (nothing published yet) whose ack-wait is `ack_wait`;
//! one second keeps the suite quick and still well above scheduling noise.

// Test code: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::{Consumer, Message, Queue};

/// Runs every check of the suite against `queue` in turn; panics at the first that fails.
pub async fn run(queue: &dyn Queue, ack_wait: Duration) {
    delivers_then_forgets_acked(queue).await;
    drops_duplicate_ids(queue).await;
    redelivers_unacked_after_ack_wait(queue, ack_wait).await;
    nak_delays_redelivery(queue, ack_wait).await;
    progress_keeps_the_lease(queue, ack_wait).await;
    keeps_topics_apart(queue).await;
    shares_work_between_consumers(queue).await;
    pull_wakes_up_for_new_work(queue).await;
}

fn message(id: &str, topic: &str) -> Message {
    Message {
        id: id.into(),
        topic: topic.into(),
        payload: format!("payload of {id}").into_bytes(),
        trace_parent: None,
    }
}

const QUICK: Duration = Duration::from_millis(200);

async fn ids(consumer: &mut Box<dyn Consumer>, max: usize, wait: Duration) -> Vec<String> {
    let batch = consumer.pull(max, wait).await.expect("pull");
    let mut ids = Vec::new();
    for delivery in batch {
        ids.push(delivery.id().to_string());
        delivery.ack().await.expect("ack");
    }
    ids
}

async fn delivers_then_forgets_acked(queue: &dyn Queue) {
    let mut consumer = queue.consumer("t1").await.expect("consumer");
    queue
        .publish(&[message("a", "t1"), message("b", "t1")])
        .await
        .expect("publish");
    let batch = consumer.pull(10, QUICK).await.expect("pull");
    let mut got: Vec<(String, Vec<u8>, u64)> = batch
        .iter()
        .map(|d| (d.id().to_string(), d.payload().to_vec(), d.deliveries()))
        .collect();
    if got.len() < 2 {
        // A queue may hand out what it has in more than one pull.
        for d in consumer.pull(10, QUICK).await.expect("pull") {
            got.push((d.id().to_string(), d.payload().to_vec(), d.deliveries()));
            d.ack().await.expect("ack");
        }
    }
    for d in &batch {
        d.ack().await.expect("ack");
    }
    got.sort();
    assert_eq!(
        got,
        vec![
            ("a".to_string(), b"payload of a".to_vec(), 1),
            ("b".to_string(), b"payload of b".to_vec(), 1)
        ],
        "both messages, once each, first delivery"
    );
    assert!(
        ids(&mut consumer, 10, QUICK).await.is_empty(),
        "acked messages came back"
    );
}

async fn drops_duplicate_ids(queue: &dyn Queue) {
    let mut consumer = queue.consumer("t2").await.expect("consumer");
    queue
        .publish(&[message("same", "t2")])
        .await
        .expect("publish");
    queue
        .publish(&[message("same", "t2")])
        .await
        .expect("re-publish");
    assert_eq!(ids(&mut consumer, 10, QUICK).await, vec!["same"]);
    assert!(
        ids(&mut consumer, 10, QUICK).await.is_empty(),
        "duplicate delivered"
    );
}

async fn redelivers_unacked_after_ack_wait(queue: &dyn Queue, ack_wait: Duration) {
    let mut consumer = queue.consumer("t3").await.expect("consumer");
    queue
        .publish(&[message("lost", "t3")])
        .await
        .expect("publish");
    let first = consumer.pull(1, QUICK).await.expect("pull");
    assert_eq!(first.len(), 1);
    drop(first); // as if the worker died
    assert!(
        consumer.pull(1, QUICK).await.expect("pull").is_empty(),
        "redelivered before the ack-wait"
    );
    let again = consumer.pull(1, ack_wait * 3).await.expect("pull");
    assert_eq!(again.len(), 1, "not redelivered after the ack-wait");
    assert_eq!(again[0].id(), "lost");
    assert_eq!(again[0].deliveries(), 2);
    again[0].ack().await.expect("ack");
}

async fn nak_delays_redelivery(queue: &dyn Queue, ack_wait: Duration) {
    let mut consumer = queue.consumer("t4").await.expect("consumer");
    queue
        .publish(&[message("later", "t4")])
        .await
        .expect("publish");
    let delay = ack_wait + Duration::from_millis(500);
    let first = consumer.pull(1, QUICK).await.expect("pull");
    assert_eq!(first.len(), 1);
    let nacked = Instant::now();
    first[0].nak(delay).await.expect("nak");
    assert!(
        consumer.pull(1, delay / 3).await.expect("pull").is_empty(),
        "delivered again before its delay"
    );
    let again = consumer.pull(1, delay * 3).await.expect("pull");
    assert_eq!(again.len(), 1, "not delivered after its delay");
    assert!(nacked.elapsed() >= delay - Duration::from_millis(50));
    assert_eq!(again[0].deliveries(), 2);
    again[0].ack().await.expect("ack");
}

async fn progress_keeps_the_lease(queue: &dyn Queue, ack_wait: Duration) {
    let mut consumer = queue.consumer("t5").await.expect("consumer");
    queue
        .publish(&[message("long", "t5")])
        .await
        .expect("publish");
    let held = consumer.pull(1, QUICK).await.expect("pull");
    assert_eq!(held.len(), 1);
    // Twice the ack-wait in all, signalling progress at half of it.
    for _ in 0..4 {
        tokio::time::sleep(ack_wait / 2).await;
        held[0].in_progress().await.expect("progress");
    }
    assert!(
        consumer
            .pull(1, ack_wait / 4)
            .await
            .expect("pull")
            .is_empty(),
        "redelivered while progress was signalled"
    );
    held[0].ack().await.expect("ack");
}

async fn keeps_topics_apart(queue: &dyn Queue) {
    let mut left = queue.consumer("t6.left").await.expect("consumer");
    let mut right = queue.consumer("t6.right").await.expect("consumer");
    queue
        .publish(&[message("l", "t6.left"), message("r", "t6.right")])
        .await
        .expect("publish");
    assert_eq!(ids(&mut left, 10, QUICK).await, vec!["l"]);
    assert_eq!(ids(&mut right, 10, QUICK).await, vec!["r"]);
    assert!(
        queue.consumer("t6.*").await.is_err(),
        "wildcard topic accepted"
    );
}

async fn shares_work_between_consumers(queue: &dyn Queue) {
    let mut one = queue.consumer("t7").await.expect("consumer");
    let mut two = queue.consumer("t7").await.expect("consumer");
    let messages: Vec<Message> = (0..40).map(|i| message(&format!("w{i}"), "t7")).collect();
    queue.publish(&messages).await.expect("publish");
    let (a, b) = tokio::join!(
        async {
            let mut got = Vec::new();
            for _ in 0..10 {
                got.extend(ids(&mut one, 5, QUICK).await);
            }
            got
        },
        async {
            let mut got = Vec::new();
            for _ in 0..10 {
                got.extend(ids(&mut two, 5, QUICK).await);
            }
            got
        }
    );
    let total = a.len() + b.len();
    let distinct: HashSet<String> = a.into_iter().chain(b).collect();
    assert_eq!(total, 40, "each message exactly once over both consumers");
    assert_eq!(distinct.len(), 40);
}

async fn pull_wakes_up_for_new_work(queue: &dyn Queue) {
    let mut consumer = queue.consumer("t8").await.expect("consumer");
    let started = Instant::now();
    let (got, _) = tokio::join!(ids(&mut consumer, 1, Duration::from_secs(20)), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        queue
            .publish(&[message("new", "t8")])
            .await
            .expect("publish");
    });
    assert_eq!(got, vec!["new"]);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a waiting pull did not see new work"
    );
}
