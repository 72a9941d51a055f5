//! The agent worker loop against the real JetStream server: a task that keeps killing
//! its run ends as a fatal report after the delivery limit (the dead-letter record), and
//! a task running longer than the ack-wait keeps its lease by progress signals and runs
//! once; a slot is free for the next activity while an outcome is reported; a sink that
//! acknowledges in its own apply is left to do so.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use cfm_protocol::{ActivityExecutor, ActivityOutcome, ActivityReport, ActivityTask};
use cfm_queue::jetstream::{JetStreamQueue, JetStreamSettings};
use cfm_queue::worker::{OutcomeSink, QueueSink, Worker, WorkerSettings};
use cfm_queue::{Delivery, Message, Queue, REPORTS_TOPIC, activity_topic};
use serde_json::Map;

const ACK_WAIT: Duration = Duration::from_secs(1);

/// Panics (as a crashing plugin host would die) or sleeps, counting its runs.
struct Behaviour {
    runs: AtomicU32,
    panics: bool,
    sleep: Duration,
}

impl Behaviour {
    /// Completes at once.
    fn completing() -> Arc<Self> {
        Arc::new(Self {
            runs: AtomicU32::new(0),
            panics: false,
            sleep: Duration::ZERO,
        })
    }
}

#[async_trait::async_trait]
impl ActivityExecutor for Behaviour {
    async fn execute(&self, _task: ActivityTask) -> ActivityOutcome {
        self.runs.fetch_add(1, Ordering::SeqCst);
        if self.panics {
            panic!("the activity took its host down");
        }
        tokio::time::sleep(self.sleep).await;
        ActivityOutcome::Complete { output: Map::new() }
    }

    fn activity_types(&self) -> Vec<String> {
        vec!["test.behaviour".into()]
    }
}

async fn queue() -> Arc<JetStreamQueue> {
    queue_leasing_for(ACK_WAIT).await
}

/// A queue of its own whose deliveries stay leased for `ack_wait`.
async fn queue_leasing_for(ack_wait: Duration) -> Arc<JetStreamQueue> {
    let url = std::env::var("CFM_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let settings = JetStreamSettings {
        namespace: format!("test{}", uuid::Uuid::new_v4().simple()),
        ack_wait,
        ..JetStreamSettings::new(url)
    };
    Arc::new(
        JetStreamQueue::connect(settings)
            .await
            .expect("JetStream at the test URL"),
    )
}

fn task() -> ActivityTask {
    ActivityTask {
        orchestration_id: "o1".into(),
        activity_id: "a1".into(),
        activity_type: "test.behaviour".into(),
        discriminator: "cfm.orchestration.vpa.deploy".into(),
        attempt: 1,
        participant_id: "did:web:p.example".into(),
        participant_context_id: "p".into(),
        processing_data: Map::new(),
        state: None,
        timeout_ms: 60_000,
        trace_parent: None,
    }
}

/// The message of [`task`] under `id`, its header naming `trace_parent`.
fn task_message(id: String, trace_parent: Option<String>) -> Message {
    Message {
        id,
        topic: activity_topic("test.behaviour"),
        payload: serde_json::to_vec(&task()).unwrap(),
        trace_parent,
    }
}

/// Publishes one task, runs a worker, and returns the first report that comes back.
async fn run(
    queue: Arc<JetStreamQueue>,
    executor: Arc<Behaviour>,
    max_deliveries: u64,
) -> ActivityReport {
    let settings = WorkerSettings {
        concurrency: 2,
        max_deliveries,
        progress_every: ACK_WAIT / 3,
        pull_wait: Duration::from_millis(500),
    };
    let report = run_once(&queue, executor, None, settings).await;
    serde_json::from_slice(report.payload()).unwrap()
}

/// Publishes one task, its message's header naming `trace_parent`, runs a worker with
/// `settings` until the first report comes back, and returns that report's message,
/// acknowledged.
async fn run_once(
    queue: &Arc<JetStreamQueue>,
    executor: Arc<dyn ActivityExecutor>,
    trace_parent: Option<String>,
    settings: WorkerSettings,
) -> Box<dyn Delivery> {
    let mut reports = queue.consumer(REPORTS_TOPIC).await.unwrap();
    let message = task_message("o1/a1/1".into(), trace_parent);
    queue.publish(&[message]).await.unwrap();
    let worker = Worker::new(
        queue.clone(),
        executor,
        Arc::new(QueueSink(queue.clone())),
        settings,
    );
    let running = tokio::spawn(worker.run());
    let mut batch = reports.pull(1, Duration::from_secs(30)).await.unwrap();
    running.abort();
    assert_eq!(batch.len(), 1, "no report came back");
    let report = batch.remove(0);
    report.ack().await.unwrap();
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_keeps_killing_its_run_is_reported_fatal() {
    let queue = queue().await;
    let executor = Arc::new(Behaviour {
        runs: AtomicU32::new(0),
        panics: true,
        sleep: Duration::ZERO,
    });
    let report = run(queue.clone(), executor.clone(), 2).await;
    assert_eq!(report.message_id, "o1/a1/1");
    match &report.outcome {
        ActivityOutcome::Fatal { reason } => assert!(reason.starts_with("delivered "), "{reason}"),
        other => panic!("expected a fatal report, got {other:?}"),
    }
    // The count is JetStream's: a delivery that raced a pull request's expiry counts
    // without a run, and once in a while a redelivery arrives under the count of the one
    // before (seen on nats-server 2.9), so the bound is the limit plus one.
    let runs = executor.runs.load(Ordering::SeqCst);
    assert!(
        (1..=3).contains(&runs),
        "ran {runs} times with a limit of 2"
    );
    (*queue).clone().delete().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_longer_than_the_ack_wait_runs_once() {
    let queue = queue().await;
    let executor = Arc::new(Behaviour {
        runs: AtomicU32::new(0),
        panics: false,
        sleep: ACK_WAIT * 3,
    });
    let report = run(queue.clone(), executor.clone(), 10).await;
    assert!(
        matches!(report.outcome, ActivityOutcome::Complete { .. }),
        "{report:?}"
    );
    // A redelivery would have started a second run while the first slept.
    assert_eq!(executor.runs.load(Ordering::SeqCst), 1);
    (*queue).clone().delete().await.unwrap();
}

/// An agent killed after its report was published but before the task's acknowledgement
/// gets the task again and runs it again. That run's report must reach the managers (it
/// may come after the participant's dispose, which must then undo it), while a report
/// merely sent twice is still de-duplicated.
#[tokio::test]
async fn a_redelivered_run_reports_again_and_a_resent_report_does_not() {
    let queue = queue().await;
    let mut reports = queue.consumer(REPORTS_TOPIC).await.unwrap();
    let sink = QueueSink(queue.clone());
    let report = |delivery, run: &str| ActivityReport {
        message_id: "o1/a1/1".into(),
        task: task(),
        outcome: ActivityOutcome::Complete { output: Map::new() },
        delivery,
        run: Some(run.into()),
        plugin_digest: None,
        capability_calls: Vec::new(),
    };
    sink.report(report(1, "first")).await.unwrap();
    sink.report(report(1, "first")).await.unwrap();
    sink.report(report(2, "second")).await.unwrap();
    // A server restarted before it stored the count delivers again under the count of
    // the delivery before: that run still reports.
    sink.report(report(2, "third")).await.unwrap();
    let mut seen = Vec::new();
    loop {
        let batch = reports.pull(10, Duration::from_secs(2)).await.unwrap();
        if batch.is_empty() {
            break;
        }
        for message in batch {
            message.ack().await.unwrap();
            let got: ActivityReport = serde_json::from_slice(message.payload()).unwrap();
            seen.push(got.delivery);
        }
    }
    seen.sort();
    assert_eq!(seen, vec![1, 2, 2]);
}

/// Records the trace each run is in, as a plugin's outbound request would carry it.
#[derive(Default)]
struct TraceReader {
    seen: std::sync::Mutex<Vec<Option<String>>>,
}

#[async_trait::async_trait]
impl ActivityExecutor for TraceReader {
    async fn execute(&self, _task: ActivityTask) -> ActivityOutcome {
        let current = cfm_telemetry::current_traceparent();
        self.seen.lock().unwrap().push(current);
        ActivityOutcome::Complete { output: Map::new() }
    }

    fn activity_types(&self) -> Vec<String> {
        vec!["test.behaviour".into()]
    }
}

/// A task whose trace travels only in its message's `traceparent` header runs in that
/// trace, and its report's message carries the trace on, under the activity's span.
#[tokio::test]
async fn a_task_runs_in_the_trace_its_header_names_and_reports_in_it() {
    use tracing_subscriber::layer::SubscriberExt;
    // One thread: the worker's tasks run where this subscriber is the default.
    let _traced = tracing::subscriber::set_default(
        tracing_subscriber::registry().with(cfm_telemetry::unexported_layer()),
    );
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let sent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let queue = queue().await;
    let executor = Arc::new(TraceReader::default());
    let settings = WorkerSettings {
        pull_wait: Duration::from_millis(500),
        ..WorkerSettings::default()
    };
    // The task itself names no trace: only its message's header does.
    let report = run_once(&queue, executor.clone(), Some(sent.clone()), settings).await;

    let seen = executor.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let during = seen[0].clone().expect("the run is in a trace");
    assert_eq!(&during[3..35], trace_id, "{during}");
    assert_ne!(during, sent, "the run has a span of its own");
    let reported = report.trace_parent().expect("the report's header");
    assert_eq!(&reported[3..35], trace_id, "{reported}");
    (*queue).clone().delete().await.unwrap();
}

/// Holds every report until let go, counting those handed to it.
#[derive(Default)]
struct HeldSink {
    handed: AtomicU32,
    go: tokio::sync::Notify,
    gone: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl OutcomeSink for HeldSink {
    async fn report(&self, _report: ActivityReport) -> Result<(), cfm_queue::worker::ReportError> {
        self.handed.fetch_add(1, Ordering::SeqCst);
        loop {
            let go = self.go.notified();
            if self.gone.load(Ordering::SeqCst) {
                return Ok(());
            }
            go.await;
        }
    }
}

/// With one slot, a second activity runs while the first one's outcome is still on its
/// way (a slow publish, a commit): the slot is for running. Outcomes on their way are
/// bounded all the same: a third task waits until one of the two is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_is_free_once_its_activity_ran_and_outcomes_on_their_way_are_bounded() {
    // Held reports send no progress signals: a long lease keeps their tasks from being
    // delivered again, which would count as runs of their own.
    let queue = queue_leasing_for(Duration::from_secs(60)).await;
    let messages: Vec<Message> = (1..=3)
        .map(|n| task_message(format!("o1/a{n}/1"), None))
        .collect();
    queue.publish(&messages).await.unwrap();
    let executor = Behaviour::completing();
    let sink = Arc::new(HeldSink::default());
    let settings = WorkerSettings {
        concurrency: 1,
        pull_wait: Duration::from_millis(200),
        ..WorkerSettings::default()
    };
    let worker = Worker::new(queue.clone(), executor.clone(), sink.clone(), settings);
    let running = tokio::spawn(worker.run());

    until("two activities ran on one slot", || {
        executor.runs.load(Ordering::SeqCst) == 2 && sink.handed.load(Ordering::SeqCst) == 2
    })
    .await;
    // Two outcomes on their way fill one slot's bound: the third task is not run.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(executor.runs.load(Ordering::SeqCst), 2);

    sink.gone.store(true, Ordering::SeqCst);
    sink.go.notify_waiters();
    until("the third ran once the two were reported", || {
        executor.runs.load(Ordering::SeqCst) == 3 && sink.handed.load(Ordering::SeqCst) == 3
    })
    .await;
    running.abort();
    (*queue).clone().delete().await.unwrap();
}

/// A task taken while every slot is busy waits for one keeping its lease: with the only
/// slot running an activity three ack-waits long, a second replica is never handed the
/// task that waits, which runs once, on the replica that took it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_waiting_for_a_slot_keeps_its_lease() {
    let queue = queue().await;
    let messages: Vec<Message> = (1..=2)
        .map(|n| task_message(format!("o1/a{n}/1"), None))
        .collect();
    queue.publish(&messages).await.unwrap();
    let settings = WorkerSettings {
        concurrency: 1,
        max_deliveries: 10,
        progress_every: ACK_WAIT / 3,
        pull_wait: Duration::from_millis(200),
    };
    let slow = Arc::new(Behaviour {
        runs: AtomicU32::new(0),
        panics: false,
        sleep: ACK_WAIT * 3,
    });
    let sink = Arc::new(QueueSink(queue.clone()));
    let first = Worker::new(queue.clone(), slow.clone(), sink.clone(), settings.clone());
    let first = tokio::spawn(first.run());
    // It runs one task and, its one slot busy, takes the other to wait for that slot.
    until("the first replica ran a task", || {
        slow.runs.load(Ordering::SeqCst) == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let quick = Behaviour::completing();
    let second = Worker::new(queue.clone(), quick.clone(), sink, settings);
    let second = tokio::spawn(second.run());
    until("the waiting task ran on the first replica", || {
        slow.runs.load(Ordering::SeqCst) == 2
    })
    .await;
    assert_eq!(
        quick.runs.load(Ordering::SeqCst),
        0,
        "the task waiting for a slot lost its lease to the other replica"
    );
    first.abort();
    second.abort();
    (*queue).clone().delete().await.unwrap();
}

/// Waits until `done`, failing with `what` after 10 s.
async fn until(what: &str, done: impl Fn() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(10), "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Takes every report, and says it acknowledges their tasks itself (as the embedded
/// engine does, in the transaction that applies an outcome) without doing so.
#[derive(Default)]
struct AcknowledgingSink {
    reports: AtomicU32,
}

#[async_trait::async_trait]
impl OutcomeSink for AcknowledgingSink {
    async fn report(&self, _report: ActivityReport) -> Result<(), cfm_queue::worker::ReportError> {
        self.reports.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn acknowledges(&self) -> bool {
        true
    }
}

/// A sink that acknowledges in its own apply gets no second acknowledgement from the
/// worker: this one does not acknowledge, so the task comes back after the ack-wait and
/// runs again, where a worker acknowledging after its report would have run it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_acknowledges_itself_is_left_to_do_so() {
    let queue = queue().await;
    queue
        .publish(&[task_message("o1/a1/1".into(), None)])
        .await
        .unwrap();
    let executor = Behaviour::completing();
    let sink = Arc::new(AcknowledgingSink::default());
    let settings = WorkerSettings {
        concurrency: 2,
        max_deliveries: 10,
        progress_every: ACK_WAIT / 3,
        pull_wait: Duration::from_millis(200),
    };
    let worker = Worker::new(queue.clone(), executor.clone(), sink.clone(), settings);
    let running = tokio::spawn(worker.run());
    let deadline = tokio::time::Instant::now() + ACK_WAIT * 10;
    while sink.reports.load(Ordering::SeqCst) < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.abort();
    assert!(
        executor.runs.load(Ordering::SeqCst) >= 2,
        "the worker acknowledged a task its sink said it acknowledges"
    );
    (*queue).clone().delete().await.unwrap();
}
