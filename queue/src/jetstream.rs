//! The queue on NATS JetStream, for deployments with several managers and agent hosts.
//!
//! Topology, created idempotently at connect: one work-queue stream per namespace
//! (`CFM_<NAMESPACE>`, subjects `<namespace>.>`), and one durable pull consumer per topic
//! (`activity.<type>` for each activity type, `reports` for the managers) shared by every
//! replica that consumes it. A work-queue stream removes a message once it is acked, so
//! the stream holds exactly the work not yet done. Publishes carry `Nats-Msg-Id`, so
//! JetStream drops a re-publish within the stream's duplicate window.
//!
//! Only server 2.9 features are used (one filter subject per consumer, no scheduled
//! messages): delays live in the manager's outbox, which publishes work when it is due.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_trait::async_trait;
use cfm_telemetry::{TRACEPARENT, is_traceparent};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use crate::{Consumer, Delivery, Message, Queue, QueueError, check_topic};

/// Where and how to reach JetStream.
#[derive(Debug, Clone)]
pub struct JetStreamSettings {
    /// `nats://127.0.0.1:4222`.
    pub url: String,
    /// Prefix of subjects and names, so several installations (or tests) share a server.
    pub namespace: String,
    /// How long a pulled message stays leased without an ack or a progress signal.
    pub ack_wait: Duration,
    /// How long JetStream remembers message ids to drop re-publishes.
    pub duplicate_window: Duration,
    /// How cfm proves who it is to the server.
    pub auth: NatsAuth,
}

/// How cfm authenticates to the NATS server, besides credentials in the URL. The secrets
/// are held only to connect and reconnect; `Debug` shows which kind, never the value.
#[derive(Clone, Default)]
pub enum NatsAuth {
    /// No credentials, or only those in the URL.
    #[default]
    None,
    /// A user name and password.
    UserPassword {
        /// The user.
        user: String,
        /// Their password.
        password: String,
    },
    /// An authorization token.
    Token(String),
    /// An NKey seed (`SU…`): the server checks a signature of its nonce.
    NKeySeed(String),
    /// A `.creds` file (a user JWT and its NKey seed), for operator/decentralised auth.
    CredentialsFile(std::path::PathBuf),
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NatsAuth::None => "None",
            NatsAuth::UserPassword { .. } => "UserPassword(..)",
            NatsAuth::Token(_) => "Token(..)",
            NatsAuth::NKeySeed(_) => "NKeySeed(..)",
            NatsAuth::CredentialsFile(_) => "CredentialsFile(..)",
        })
    }
}

impl NatsAuth {
    async fn apply(
        &self,
        options: async_nats::ConnectOptions,
    ) -> Result<async_nats::ConnectOptions, QueueError> {
        Ok(match self.clone() {
            NatsAuth::None => options,
            NatsAuth::UserPassword { user, password } => options.user_and_password(user, password),
            NatsAuth::Token(token) => options.token(token),
            NatsAuth::NKeySeed(seed) => {
                // Checked here: the client would otherwise fail only inside the handshake.
                nkeys::KeyPair::from_seed(&seed).map_err(|_| {
                    QueueError::Setup("the NATS NKey seed is not a valid seed".into())
                })?;
                options.nkey(seed)
            }
            NatsAuth::CredentialsFile(path) => {
                options.credentials_file(&path).await.map_err(|e| {
                    QueueError::Setup(format!(
                        "reading the NATS credentials file {}: {}",
                        path.display(),
                        e.kind()
                    ))
                })?
            }
        })
    }
}

impl JetStreamSettings {
    /// Settings for the server at `url`: namespace `cfm`, a 30 s ack-wait and a 2 min
    /// duplicate window.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            namespace: "cfm".into(),
            ack_wait: crate::DEFAULT_ACK_WAIT,
            duplicate_window: Duration::from_secs(120),
            auth: NatsAuth::None,
        }
    }
}

/// A [`Queue`] on one namespace's JetStream stream; clones share the connection.
#[derive(Clone)]
pub struct JetStreamQueue {
    context: jetstream::Context,
    stream: stream::Stream,
    stream_config: stream::Config,
    settings: JetStreamSettings,
}

impl JetStreamQueue {
    /// Connects and creates the stream when missing; fails when the server cannot be
    /// reached now. Once connected, the client reconnects by itself when the server goes
    /// away; calls fail meanwhile, and the callers retry.
    pub async fn connect(settings: JetStreamSettings) -> Result<Self, QueueError> {
        check_topic(&settings.namespace).map_err(|_| {
            QueueError::Setup(format!("invalid namespace '{}'", settings.namespace))
        })?;
        let options = settings
            .auth
            .apply(async_nats::ConnectOptions::new())
            .await?;
        let client = options
            .name("cfm")
            .connection_timeout(Duration::from_secs(5))
            .connect(settings.url.as_str())
            .await
            // The URL may carry credentials: the caller names the server, redacted.
            .map_err(|e| QueueError::Connect(e.to_string()))?;
        let context = jetstream::new(client);
        let config = stream::Config {
            name: stream_name(&settings.namespace),
            subjects: vec![format!("{}.>", settings.namespace)],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            duplicate_window: settings.duplicate_window,
            ..Default::default()
        };
        let stream = ensure_stream(&context, &config).await?;
        Ok(Self {
            context,
            stream,
            stream_config: config,
            settings,
        })
    }

    /// Deletes the namespace's stream with everything in it (tests, uninstall).
    pub async fn delete(self) -> Result<(), QueueError> {
        self.context
            .delete_stream(stream_name(&self.settings.namespace))
            .await
            .map_err(|e| QueueError::Setup(e.to_string()))?;
        Ok(())
    }

    /// The namespace's stream, for operators' tools (`nats stream info <name>`).
    pub fn stream_name(&self) -> &str {
        &self.stream_config.name
    }

    /// How many messages the stream holds now: work not yet acknowledged, and reports.
    pub async fn messages(&self) -> Result<u64, QueueError> {
        // Getting the stream fetches its info: one round trip.
        let stream = self
            .context
            .get_stream(&self.stream_config.name)
            .await
            .map_err(|e| QueueError::Setup(e.to_string()))?;
        Ok(stream.cached_info().state.messages)
    }

    /// Work not yet done by the consumers: messages not yet delivered plus those delivered
    /// and not yet acknowledged (a lease that will run out and hand the message out
    /// again), summed over every consumer of the stream. Unlike [`Self::messages`], it
    /// ignores messages no consumer will ever see again.
    pub async fn outstanding(&self) -> Result<u64, QueueError> {
        let stream = self
            .context
            .get_stream(&self.stream_config.name)
            .await
            .map_err(|e| QueueError::Setup(e.to_string()))?;
        let mut consumers = stream.consumers();
        let mut outstanding = 0u64;
        while let Some(info) = consumers.next().await {
            let info = info.map_err(|e| QueueError::Setup(e.to_string()))?;
            outstanding += info.num_pending + info.num_ack_pending as u64;
        }
        Ok(outstanding)
    }

    fn subject(&self, topic: &str) -> String {
        format!("{}.{topic}", self.settings.namespace)
    }

    /// Whether the consumer of a message the stream holds will hand it out (again). After
    /// an unclean restart a work queue can keep a message whose acknowledgement its
    /// consumer kept but whose removal was lost: below the consumer's ack floor, it is
    /// never delivered again. A consumer not made yet will start at it.
    async fn will_deliver(&self, message: &jetstream::message::StreamMessage) -> bool {
        let prefix = format!("{}.", self.settings.namespace);
        let Some(topic) = message.subject.as_str().strip_prefix(&prefix) else {
            return true;
        };
        match self
            .stream
            .consumer_info(consumer_name(&self.settings.namespace, topic))
            .await
        {
            Ok(info) => message.sequence > info.ack_floor.stream_sequence,
            Err(_) => true,
        }
    }

    /// A durable consumer of the messages on `filter_subject` in another service's stream
    /// (the keypair events the Identity Hub publishes, say), shared by every replica. The
    /// stream must exist: it belongs to whoever publishes into it. Only this namespace's
    /// consumer is created, so installations sharing a server read the stream apart.
    pub async fn event_consumer(
        &self,
        stream: &str,
        filter_subject: &str,
    ) -> Result<Box<dyn Consumer>, QueueError> {
        let name = consumer_name(
            &self.settings.namespace,
            &format!("events.{stream}.{filter_subject}"),
        );
        let found = self.context.get_stream(stream).await.map_err(|e| {
            QueueError::Setup(format!(
                "event stream '{stream}' (it is not cfm's to create): {e}"
            ))
        })?;
        let config = consumer::pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: filter_subject.to_string(),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: self.settings.ack_wait,
            max_deliver: -1,
            // The stream keeps history it was not made for cfm: a new consumer starts at
            // what is published from now on, not at the first event ever.
            deliver_policy: consumer::DeliverPolicy::New,
            ..Default::default()
        };
        let consumer = found
            .get_or_create_consumer(&name, config.clone())
            .await
            .map_err(|e| QueueError::Setup(format!("consumer {name}: {e}")))?;
        Ok(Box::new(JetStreamConsumer {
            consumer,
            context: self.context.clone(),
            stream_config: found.cached_info().config.clone(),
            owns_stream: false,
            name,
            config,
            broken: false,
            stalls: 0,
        }))
    }
}

#[async_trait]
impl Queue for JetStreamQueue {
    async fn publish(&self, messages: &[Message]) -> Result<Vec<Option<u64>>, QueueError> {
        // Send everything, then wait for the acks: one round trip for the whole batch.
        let mut acks = Vec::with_capacity(messages.len());
        for message in messages {
            check_topic(&message.topic)?;
            let mut publish = jetstream::message::PublishMessage::build()
                .payload(message.payload.clone().into())
                .message_id(&message.id);
            if let Some(traceparent) = message
                .trace_parent
                .as_deref()
                .filter(|t| is_traceparent(t))
            {
                publish = publish.header(TRACEPARENT, traceparent);
            }
            let ack = self
                .context
                .send_publish(self.subject(&message.topic), publish)
                .await
                .map_err(|e| QueueError::Publish(format!("{}: {e}", message.id)))?;
            acks.push((ack, &message.id));
        }
        let mut sequences = Vec::with_capacity(acks.len());
        for (ack, id) in acks {
            match ack.await {
                // A duplicate's acknowledgement names the original's sequence.
                Ok(ack) => sequences.push(Some(ack.sequence)),
                Err(e) => {
                    // A server killed right after the stream was created may come back
                    // without it (its metadata was not on disk yet): recreate it for the
                    // caller's retry.
                    let _ = ensure_stream(&self.context, &self.stream_config).await;
                    return Err(QueueError::Publish(format!("{id}: {e}")));
                }
            }
        }
        Ok(sequences)
    }

    /// Looks the sequence up in the stream: a work queue removes a message once it is
    /// acknowledged, so a message there is waiting or leased. Another message at that
    /// sequence means the stream lost its tail (nats-server confirms a publish before its
    /// file store is flushed, so a SIGKILL can take the last ones) and numbered on from
    /// below it. A stream that is gone altogether is made again here.
    async fn holds(&self, id: &str, sequence: u64) -> Result<bool, QueueError> {
        use jetstream::stream::RawMessageErrorKind;
        match self.stream.get_raw_message(sequence).await {
            Ok(message) => {
                let same = message
                    .headers
                    .get(async_nats::header::NATS_MESSAGE_ID)
                    .is_some_and(|found| found.as_str() == id);
                Ok(same && self.will_deliver(&message).await)
            }
            Err(e) => match e.kind() {
                RawMessageErrorKind::NoMessageFound => Ok(false),
                RawMessageErrorKind::JetStream(error)
                    if error.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    ensure_stream(&self.context, &self.stream_config).await?;
                    Ok(false)
                }
                _ => Err(QueueError::Pull(format!("looking up {id}: {e}"))),
            },
        }
    }

    async fn consumer(&self, topic: &str) -> Result<Box<dyn Consumer>, QueueError> {
        check_topic(topic)?;
        let name = consumer_name(&self.settings.namespace, topic);
        let config = consumer::pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: self.subject(topic),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: self.settings.ack_wait,
            // Unbounded here: the worker turns a message delivered too often into a
            // dead-letter report, which a redelivery limit on the server would swallow.
            max_deliver: -1,
            ..Default::default()
        };
        let mut consumer = self
            .stream
            .get_or_create_consumer(&name, config.clone())
            .await
            .map_err(|e| QueueError::Setup(format!("consumer {name}: {e}")))?;
        // A durable consumer keeps the settings it was made with; a changed ack-wait
        // (`--ack-wait-secs`) is applied to it, or replicas would disagree on when
        // work is redelivered.
        let was = consumer.cached_info().config.ack_wait;
        if was != config.ack_wait {
            consumer = self
                .stream
                .create_consumer(config.clone())
                .await
                .map_err(|e| QueueError::Setup(format!("consumer {name}: {e}")))?;
            tracing::info!(consumer = %name, from = ?was, to = ?config.ack_wait, "ack-wait updated");
        }
        Ok(Box::new(JetStreamConsumer {
            consumer,
            context: self.context.clone(),
            stream_config: self.stream_config.clone(),
            owns_stream: true,
            name,
            config,
            broken: false,
            stalls: 0,
        }))
    }
}

struct JetStreamConsumer {
    consumer: consumer::Consumer<consumer::pull::Config>,
    /// What recreating the consumer (and its stream) takes.
    context: jetstream::Context,
    stream_config: stream::Config,
    /// The stream is cfm's own (a work queue it may make again); not another service's.
    owns_stream: bool,
    name: String,
    config: consumer::pull::Config,
    /// The last pull failed: repair before the next one.
    broken: bool,
    /// Pulls the server accepted and never ended since the last one that worked (see
    /// [`REBUILD_AFTER`]).
    stalls: u32,
}

/// Pulls the server accepted but never ended, with none working between, after which the consumer is
/// deleted and made again. nats-server 2.9 can come back from a restart with a consumer
/// that exists but answers no pull, for good; only a new one delivers again. (A server
/// that is down fails pulls at once and counts nothing here.) The stream is a work queue,
/// so the new consumer starts at the first unacknowledged message: nothing is lost, and
/// what was in flight is delivered again, which at-least-once delivery allows.
const REBUILD_AFTER: u32 = 3;

#[async_trait]
impl Consumer for JetStreamConsumer {
    async fn pull(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Box<dyn Delivery>>, QueueError> {
        // Repaired before the next pull rather than right after the failure: a failure
        // can be the stream being deleted, and recreating it while the server is still
        // tearing the old one down leaves a stream whose consumers never answer.
        if self.broken {
            self.repair().await;
        }
        let pulled = self.pull_once(max, wait).await;
        self.broken = pulled.is_err();
        if !self.broken {
            self.stalls = 0;
        }
        pulled
    }
}

impl JetStreamConsumer {
    /// A server killed soon after the consumer (or its stream) was created can come back
    /// without it, its metadata not yet on disk; pulls then go unanswered. Creating both
    /// again is idempotent, so it is done after every failed pull, before the caller's retry.
    async fn repair(&mut self) {
        let stream = if self.owns_stream {
            ensure_stream(&self.context, &self.stream_config).await.ok()
        } else {
            self.context.get_stream(&self.stream_config.name).await.ok()
        };
        let Some(stream) = stream else {
            return;
        };
        // Another service's stream keeps its history: a consumer made again would lose
        // its place in it, so it is only looked up again.
        if self.stalls >= REBUILD_AFTER && self.owns_stream {
            self.stalls = 0;
            tracing::warn!(consumer = %self.name,
                "the server accepts this consumer's pulls and never ends them: making it again");
            if let Err(e) = stream.delete_consumer(&self.name).await {
                tracing::warn!(consumer = %self.name, "cannot delete the consumer: {e}");
            }
        }
        if let Ok(consumer) = stream
            .get_or_create_consumer(&self.name, self.config.clone())
            .await
        {
            self.consumer = consumer;
        }
    }

    async fn pull_once(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Box<dyn Delivery>>, QueueError> {
        let max = max.max(1);
        // What is there now; when nothing is, a batch of one that ends as soon as a
        // message arrives. A larger waiting batch would hold the first message back
        // until the batch filled or expired.
        let available = self
            .collect(
                self.consumer.fetch().max_messages(max).messages().await,
                NO_WAIT,
            )
            .await?;
        if !available.is_empty() {
            return Ok(available);
        }
        let expires = wait.max(Duration::from_millis(10));
        let batch = self
            .consumer
            .batch()
            .max_messages(1)
            .expires(expires)
            .messages()
            .await;
        self.collect(batch, expires).await
    }
}

/// How long a no-wait fetch may take: one round trip.
const NO_WAIT: Duration = Duration::from_millis(0);
/// Slack beyond a pull's own expiry before the client stops waiting. The server ends
/// a pull when it expires, but a server that restarts forgets it, and the batch would
/// wait for an end that never comes.
const EXPIRY_SLACK: Duration = Duration::from_secs(3);

impl JetStreamConsumer {
    async fn collect(
        &mut self,
        batch: Result<consumer::pull::Batch, consumer::pull::BatchError>,
        expires: Duration,
    ) -> Result<Vec<Box<dyn Delivery>>, QueueError> {
        let mut batch = batch.map_err(|e| QueueError::Pull(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + expires + EXPIRY_SLACK;
        let mut found: Vec<Box<dyn Delivery>> = Vec::new();
        loop {
            let next = match tokio::time::timeout_at(deadline, batch.next()).await {
                Ok(Some(next)) => next,
                Ok(None) => break,
                Err(_) if found.is_empty() => {
                    self.stalls += 1;
                    return Err(QueueError::Pull(
                        "the server did not end a pull in time (did it restart?)".into(),
                    ));
                }
                Err(_) => break,
            };
            let message = next.map_err(|e| QueueError::Pull(e.to_string()))?;
            let id = message
                .headers
                .as_ref()
                .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                .map(|v| v.as_str().to_string())
                .unwrap_or_default();
            let deliveries = message
                .info()
                .map(|i| i.delivered.max(1) as u64)
                .unwrap_or(1);
            found.push(Box::new(JetStreamDelivery {
                id,
                deliveries,
                message,
            }));
        }
        Ok(found)
    }
}

struct JetStreamDelivery {
    id: String,
    deliveries: u64,
    message: jetstream::Message,
}

#[async_trait]
impl Delivery for JetStreamDelivery {
    fn id(&self) -> &str {
        &self.id
    }

    fn payload(&self) -> &[u8] {
        &self.message.payload
    }

    fn deliveries(&self) -> u64 {
        self.deliveries
    }

    fn subject(&self) -> &str {
        self.message.subject.as_str()
    }

    fn trace_parent(&self) -> Option<&str> {
        let headers = self.message.headers.as_ref()?;
        let value = headers.get(TRACEPARENT)?.as_str();
        is_traceparent(value).then_some(value)
    }

    async fn ack(&self) -> Result<(), QueueError> {
        self.acknowledge(jetstream::AckKind::Ack).await
    }

    async fn nak(&self, delay: Duration) -> Result<(), QueueError> {
        self.acknowledge(jetstream::AckKind::Nak(Some(delay))).await
    }

    async fn in_progress(&self) -> Result<(), QueueError> {
        self.acknowledge(jetstream::AckKind::Progress).await
    }
}

impl JetStreamDelivery {
    async fn acknowledge(&self, kind: jetstream::AckKind) -> Result<(), QueueError> {
        self.message
            .ack_with(kind)
            .await
            .map_err(|e| QueueError::Ack(format!("{}: {e}", self.id)))
    }
}

/// The namespace's stream, made when missing (idempotent): what connecting does, and what
/// repairs a server that came back without it.
async fn ensure_stream(
    context: &jetstream::Context,
    config: &stream::Config,
) -> Result<stream::Stream, QueueError> {
    context
        .get_or_create_stream(config.clone())
        .await
        .map_err(|e| QueueError::Setup(format!("stream {}: {e}", config.name)))
}

fn stream_name(namespace: &str) -> String {
    format!(
        "CFM_{}",
        namespace.to_ascii_uppercase().replace(['.', '-'], "_")
    )
}

/// Durable names may not contain `.`, `*` or `>` (a subject filter has them); the digest
/// keeps `a.b` and `a_b` apart.
fn consumer_name(namespace: &str, topic: &str) -> String {
    let digest = hex::encode(&Sha256::digest(format!("{namespace}/{topic}"))[..4]);
    let plain = |text: &str| text.replace(['.', '*', '>'], "_");
    format!("{}-{}-{digest}", plain(namespace), plain(topic))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_and_distinct() {
        let a = consumer_name("cfm", "activity.a.b");
        let b = consumer_name("cfm", "activity.a_b");
        assert_ne!(a, b);
        assert!(!a.contains('.') && !a.contains('*') && !a.contains('>'));
        let events = consumer_name("cfm", "events.edc-events.events.keypair.>");
        assert!(!events.contains('.') && !events.contains('>'), "{events}");
        assert_eq!(stream_name("cfm.test-1"), "CFM_CFM_TEST_1");
    }
}
