//! Work distribution between managers and agent hosts.
//!
//! A [`Queue`] carries messages on topics with at-least-once delivery: a pulled message
//! is leased until it is acknowledged, and delivered again when its ack-wait passes
//! without an ack, a progress signal or a negative ack. Message ids de-duplicate
//! publishes. Two implementations pass one conformance suite (feature `testing`): the
//! JetStream queue here, and the embedded database-backed queue in `cfm-manager`.
//!
//! Topics are dot-separated tokens of ASCII letters, digits, `-` and `_`: they become
//! JetStream subjects, so wildcards and empty tokens are refused before any I/O.

pub mod jetstream;
pub mod worker;

#[cfg(feature = "testing")]
pub mod conformance;

use std::time::Duration;

use async_trait::async_trait;

/// The topic agent hosts pull `activity_type`'s work from.
pub fn activity_topic(activity_type: &str) -> String {
    format!("activity.{activity_type}")
}

/// How long a taken message stays with its consumer without a sign of life before it is
/// delivered again, unless configured: workers signal every third of it.
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);

/// The topic managers pull activity reports from.
pub const REPORTS_TOPIC: &str = "reports";

/// A message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Stable across re-publishes: a second publish of the same id is dropped.
    pub id: String,
    /// Where it goes; see [`check_topic`].
    pub topic: String,
    /// The body: JSON from cfm; the embedded queue takes only UTF-8.
    pub payload: Vec<u8>,
}

/// A queue: where messages are published and consumers pull them from.
#[async_trait]
pub trait Queue: Send + Sync {
    /// Publishes every message, in order, and returns once the queue holds them all,
    /// with where each was stored: its sequence, for [`Queue::holds`] to look it up by
    /// (`None` from a queue without sequences). On error some may have been stored;
    /// publishing them again is harmless.
    async fn publish(&self, messages: &[Message]) -> Result<Vec<Option<u64>>, QueueError>;

    /// A consumer of `topic`. Consumers of one topic share its messages: each message
    /// goes to one of them at a time.
    async fn consumer(&self, topic: &str) -> Result<Box<dyn Consumer>, QueueError>;

    /// Whether the queue still holds the message published as `id` at `sequence`: not
    /// yet acknowledged, whether waiting or leased. A server can lose messages it has
    /// confirmed (one killed before its storage caught up, one that lost its disk); a
    /// message neither held nor answered for is one the publisher must send again. A
    /// queue that never loses what it accepted keeps the default: always held.
    async fn holds(&self, id: &str, sequence: u64) -> Result<bool, QueueError> {
        let _ = (id, sequence);
        Ok(true)
    }
}

/// Pulls messages of one topic.
#[async_trait]
pub trait Consumer: Send {
    /// Up to `max` messages: what is available now, or else waits up to `wait` for the
    /// first one. Empty when none came.
    async fn pull(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Box<dyn Delivery>>, QueueError>;
}

/// A pulled message, leased to its consumer until acknowledged or its ack-wait passes.
#[async_trait]
pub trait Delivery: Send + Sync {
    /// The id the message was published with.
    fn id(&self) -> &str;
    /// The body the message was published with.
    fn payload(&self) -> &[u8];
    /// How many times this message has been delivered, this time included.
    fn deliveries(&self) -> u64;
    /// The subject it was published on, where the queue has subjects (JetStream); the
    /// topic otherwise, or empty.
    fn subject(&self) -> &str {
        ""
    }
    /// Done with: the message is removed.
    async fn ack(&self) -> Result<(), QueueError>;
    /// Not done: deliver it again after `delay`.
    async fn nak(&self, delay: Duration) -> Result<(), QueueError>;
    /// Still working on it: the ack-wait starts over.
    async fn in_progress(&self) -> Result<(), QueueError>;
}

/// Pulls like [`Consumer::pull`], but waits out a failing queue (a restarting server, a
/// dropped connection) with exponential backoff from 100 ms to 6.4 s, logging each failure
/// with `what` is being pulled. Returns only with a pull that worked.
pub async fn pull_retrying(
    consumer: &mut dyn Consumer,
    max: usize,
    wait: Duration,
    what: &str,
) -> Vec<Box<dyn Delivery>> {
    let mut failures = 0u32;
    loop {
        match consumer.pull(max, wait).await {
            Ok(batch) => return batch,
            Err(e) => {
                failures += 1;
                let pause = Duration::from_millis(100 << failures.min(6));
                tracing::warn!("cannot pull {what} (retrying in {pause:?}): {e}");
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// A topic (or JetStream namespace) that is not plain dot-separated tokens.
    #[error("invalid topic '{0}': use dot-separated tokens of letters, digits, '-' and '_'")]
    InvalidTopic(String),
    /// The queue's server could not be reached.
    #[error("cannot reach the queue: {0}")]
    Connect(String),
    /// Creating, reading or deleting a stream or consumer failed.
    #[error("cannot set up the queue: {0}")]
    Setup(String),
    /// A message was not accepted; it names the message.
    #[error("cannot publish: {0}")]
    Publish(String),
    /// Pulling messages failed.
    #[error("cannot pull messages: {0}")]
    Pull(String),
    /// An ack, nak or progress signal was not accepted; it names the message.
    #[error("cannot acknowledge message: {0}")]
    Ack(String),
    /// The embedded queue's database failed.
    #[error("queue storage: {0}")]
    Storage(String),
}

/// Refuses topics that are not plain dot-separated tokens.
pub fn check_topic(topic: &str) -> Result<(), QueueError> {
    let token_ok = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if topic.split('.').all(token_ok) {
        Ok(())
    } else {
        Err(QueueError::InvalidTopic(topic.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_plain_tokens() {
        assert!(check_topic("activity.cfm.vault-credentials_2").is_ok());
        for bad in ["", "a..b", ".a", "a.", "a.*", "a.>", "a b", "ä"] {
            assert!(check_topic(bad).is_err(), "{bad:?} accepted");
        }
    }
}
