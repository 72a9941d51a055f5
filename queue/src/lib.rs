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
    /// The W3C `traceparent` of the trace the message belongs to, sent as the message's
    /// `traceparent` header where the queue has headers (JetStream), so that whatever
    /// reads the stream can join the trace without reading cfm's payload. The embedded
    /// queue keeps none: cfm's own payloads carry the trace too.
    pub trace_parent: Option<String>,
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
    /// The `traceparent` it was published with, where the queue carries headers.
    fn trace_parent(&self) -> Option<&str> {
        None
    }
    /// Done with: the message is removed.
    async fn ack(&self) -> Result<(), QueueError>;
    /// Not done: deliver it again after `delay`.
    async fn nak(&self, delay: Duration) -> Result<(), QueueError>;
    /// Still working on it: the ack-wait starts over.
    async fn in_progress(&self) -> Result<(), QueueError>;
}

/// A consumer like [`Queue::consumer`], but one that waits out a server restarting while
/// it is set up, with the backoff of [`pull_retrying`], for up to [`SETUP_ATTEMPTS`] tries:
/// what fails for longer (a consumer the credentials may not create) is the caller's
/// error. A topic that is not one fails at once.
pub async fn consumer_retrying(
    queue: &dyn Queue,
    topic: &str,
) -> Result<Box<dyn Consumer>, QueueError> {
    let mut failures = 0u32;
    loop {
        match queue.consumer(topic).await {
            Ok(consumer) => return Ok(consumer),
            Err(e @ QueueError::InvalidTopic(_)) => return Err(e),
            Err(e) if failures + 1 >= SETUP_ATTEMPTS => return Err(e),
            Err(e) => {
                failures += 1;
                let pause = backoff(failures);
                tracing::warn!(
                    "cannot set up the consumer of {topic} (retrying in {pause:?}): {e}"
                );
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// Tries [`consumer_retrying`] makes: 32 s of pauses between them, past a server's restart.
pub const SETUP_ATTEMPTS: u32 = 10;

/// The pause after `failures` failures in a row: 200 ms doubling to 6.4 s. Every loop
/// that waits out a failing queue or database pauses this long, so they recover alike.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100 << failures.min(6))
}

/// Pulls like [`Consumer::pull`], but waits out a failing queue (a restarting server, a
/// dropped connection) with exponential backoff from 200 ms to 6.4 s, logging each failure
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
                let pause = backoff(failures);
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

    /// Fails to set up its consumer `failures` times, then succeeds.
    struct Flaky {
        failures: std::sync::atomic::AtomicU32,
    }

    struct Idle;

    #[async_trait]
    impl Consumer for Idle {
        async fn pull(
            &mut self,
            _: usize,
            _: Duration,
        ) -> Result<Vec<Box<dyn Delivery>>, QueueError> {
            Ok(Vec::new())
        }
    }

    #[async_trait]
    impl Queue for Flaky {
        async fn publish(&self, _: &[Message]) -> Result<Vec<Option<u64>>, QueueError> {
            Ok(Vec::new())
        }

        async fn consumer(&self, topic: &str) -> Result<Box<dyn Consumer>, QueueError> {
            check_topic(topic)?;
            let left = self.failures.load(std::sync::atomic::Ordering::SeqCst);
            if left == 0 {
                return Ok(Box::new(Idle));
            }
            self.failures
                .store(left - 1, std::sync::atomic::Ordering::SeqCst);
            Err(QueueError::Setup("timed out".into()))
        }
    }

    fn flaky(failures: u32) -> Flaky {
        Flaky {
            failures: failures.into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_consumer_is_set_up_again_until_the_server_answers_but_not_for_ever() {
        assert!(consumer_retrying(&flaky(3), "activity.a").await.is_ok());
        assert!(
            consumer_retrying(&flaky(SETUP_ATTEMPTS - 1), "activity.a")
                .await
                .is_ok()
        );
        let failing = flaky(u32::MAX);
        assert!(matches!(
            consumer_retrying(&failing, "activity.a").await,
            Err(QueueError::Setup(_))
        ));
        let tried = u32::MAX - failing.failures.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(tried, SETUP_ATTEMPTS, "gives up after its attempts");
        assert!(matches!(
            consumer_retrying(&flaky(0), "a..b").await,
            Err(QueueError::InvalidTopic(_))
        ));
    }

    #[test]
    fn topics_are_plain_tokens() {
        assert!(check_topic("activity.cfm.vault-credentials_2").is_ok());
        for bad in ["", "a..b", ".a", "a.", "a.*", "a.>", "a b", "ä"] {
            assert!(check_topic(bad).is_err(), "{bad:?} accepted");
        }
    }
}
