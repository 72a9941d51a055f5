//! The embedded queue (the outbox table) passes the queue conformance suite on both
//! databases, as the JetStream queue does against the real server; the relay takes rows
//! claimed for its express lane only from the lane or once their claim ends.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cfm_manager::provision::transport::Relay;
use cfm_manager::queue::{self, DbQueue, Express, Signal};
use cfm_manager::store;
use cfm_manager::testing::{ScratchDatabase, TestBackend};
use cfm_manager::{Manager, Options, on_both_backends};
use cfm_queue::{Consumer, Message, Queue, QueueError};

on_both_backends!(
    embedded_queue_conforms,
    rows_claimed_for_the_express_lane_go_out_by_it_or_after_their_claim,
);

/// A manager on `backend`, after what must outlive it: bound in this order, the manager
/// is dropped first.
async fn open(backend: TestBackend) -> (Option<ScratchDatabase>, tempfile::TempDir, Manager) {
    let dir = tempfile::tempdir().unwrap();
    let scratch = backend.scratch().await;
    let options = Options {
        database_url: scratch.as_ref().map(|s| s.url().to_string()),
        ..Options::default()
    };
    let manager = Manager::open(dir.path(), options).await.unwrap();
    (scratch, dir, manager)
}

async fn embedded_queue_conforms(backend: TestBackend) {
    let (_scratch, _dir, manager) = open(backend).await;
    let ack_wait = Duration::from_secs(1);
    let queue = DbQueue::new(manager.engine.db().clone(), ack_wait, Signal::default());
    cfm_queue::conformance::run(&queue, ack_wait).await;
}

/// Records what the relay publishes, and when.
#[derive(Default)]
struct Recorder {
    published: Mutex<Vec<(String, Instant)>>,
}

#[async_trait::async_trait]
impl Queue for Recorder {
    async fn publish(&self, messages: &[Message]) -> Result<Vec<Option<u64>>, QueueError> {
        let mut published = self.published.lock().unwrap();
        let first = published.len() as u64 + 1;
        published.extend(messages.iter().map(|m| (m.id.clone(), Instant::now())));
        Ok((first..).take(messages.len()).map(Some).collect())
    }

    async fn consumer(&self, _: &str) -> Result<Box<dyn Consumer>, QueueError> {
        Err(QueueError::Pull("the relay never consumes".into()))
    }
}

impl Recorder {
    fn when(&self, id: &str) -> Option<Instant> {
        let published = self.published.lock().unwrap();
        published.iter().find(|(p, _)| p == id).map(|(_, at)| *at)
    }

    async fn wait_for(&self, id: &str, within: Duration) -> Instant {
        let started = Instant::now();
        loop {
            if let Some(at) = self.when(id) {
                return at;
            }
            assert!(
                started.elapsed() < within,
                "{id} was not published within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A claimed row goes out as soon as it is handed over, although its claim keeps the
/// sweep away for a minute; one never handed over (its process died after the commit)
/// goes out with the first sweep after its claim ends, never before; an unclaimed one
/// goes out with the sweep at once. All three end up held.
async fn rows_claimed_for_the_express_lane_go_out_by_it_or_after_their_claim(backend: TestBackend) {
    let (_scratch, _dir, manager) = open(backend).await;
    let db = manager.engine.db().clone();
    let (express, lane) = Express::lane(Duration::from_secs(60));
    let recorder = Arc::new(Recorder::default());
    let relay = tokio::spawn(
        Relay::new(manager.engine.clone(), recorder.clone())
            .with_express(lane)
            .run(),
    );

    let claim = Duration::from_millis(800);
    let mut tx = store::write(&db).await.unwrap();
    let handed = queue::publish_claimed(
        &mut tx,
        "o/handed/1",
        "activity.a",
        "{}".into(),
        express.claimed_until_ms(),
    )
    .await
    .unwrap()
    .expect("a new row");
    let claimed_at = Instant::now();
    let orphan = queue::now_ms() + claim.as_millis() as i64;
    queue::publish_claimed(&mut tx, "o/orphan/1", "activity.a", "{}".into(), orphan)
        .await
        .unwrap()
        .expect("a new row");
    queue::publish(&mut tx, "o/plain/1", "activity.a", "{}", queue::now_ms())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    express.hand_over(vec![handed]);
    manager.engine.wake();

    recorder
        .wait_for("o/handed/1", Duration::from_secs(2))
        .await;
    recorder.wait_for("o/plain/1", Duration::from_secs(2)).await;
    let orphan_at = recorder
        .wait_for("o/orphan/1", Duration::from_secs(5))
        .await;
    assert!(
        orphan_at.duration_since(claimed_at) >= claim - Duration::from_millis(50),
        "a claimed row was swept {:?} into its {claim:?} claim",
        orphan_at.duration_since(claimed_at)
    );
    let published = recorder.published.lock().unwrap().len();
    assert_eq!(published, 3, "each row goes out once");

    // Held: the relay looks them up later by the sequence the queue answered.
    let held = queue::held_before(&db, queue::now_ms() + 1_000, 10)
        .await
        .unwrap();
    let mut held: Vec<_> = held.into_iter().map(|h| (h.id, h.sequence)).collect();
    held.sort();
    assert_eq!(held.len(), 3, "{held:?}");
    assert!(
        held.iter().all(|(_, sequence)| (1..=3).contains(sequence)),
        "{held:?}"
    );
    relay.abort();
}
