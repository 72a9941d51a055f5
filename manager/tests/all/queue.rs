//! The embedded queue (the outbox table) passes the queue conformance suite on both
//! databases, as the JetStream queue does against the real server; the relay and the
//! embedded queue take rows claimed for their express lane only from the lane or once
//! their claim ends.

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
    the_embedded_queue_delivers_claimed_rows_from_its_lane_or_after_their_claim,
    claimed_rows_in_memory_stop_at_the_lanes_room,
    a_late_mark_leaves_a_row_released_as_lost_to_be_published_anew,
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
    let claimed_at = Instant::now();
    let handed = three_rows(&db, &express, claim).await;
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

    // Held: the relay looks them up later by the sequence the queue answered. It marks
    // a row held in a write of its own after the publish, so the mark can trail it.
    let started = Instant::now();
    let held = loop {
        let held = queue::held_before(&db, queue::now_ms() + 1_000, 10)
            .await
            .unwrap();
        let mut held: Vec<_> = held.into_iter().map(|h| (h.id, h.sequence)).collect();
        held.sort();
        if held.len() == 3 || started.elapsed() > Duration::from_secs(5) {
            break held;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(held.len(), 3, "{held:?}");
    assert!(
        held.iter().all(|(_, sequence)| (1..=3).contains(sequence)),
        "{held:?}"
    );
    relay.abort();
}

/// Embedded: a row handed over on the lane reaches a waiting consumer at once, although
/// its claim keeps the table from leasing it for a minute; an unclaimed row comes from
/// the table beside it or with the next pull; a claimed row never handed over comes from
/// the table once its claim ends, and so does one handed over but left in memory past
/// half the ack-wait.
async fn the_embedded_queue_delivers_claimed_rows_from_its_lane_or_after_their_claim(
    backend: TestBackend,
) {
    let (_scratch, _dir, manager) = open(backend).await;
    let db = manager.engine.db().clone();
    let ack_wait = Duration::from_secs(2);
    let (express, lane) = Express::lane(Duration::from_secs(60));
    let embedded = DbQueue::new(db.clone(), ack_wait, Signal::default()).with_express(lane);
    let mut consumer = embedded.consumer("activity.a").await.unwrap();

    let claim = Duration::from_millis(800);
    let write = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let claimed_at = Instant::now();
        let handed = three_rows(&db, &express, claim).await;
        express.hand_over(vec![handed]);
        claimed_at
    };
    let started = Instant::now();
    let (first, claimed_at) = tokio::join!(consumer.pull(10, Duration::from_secs(5)), write);
    let mut first = first.unwrap();
    if first.len() == 1 {
        // The handed-over row went out alone, not waiting for a look in the table; the
        // next pull looks.
        first.extend(consumer.pull(10, Duration::from_secs(5)).await.unwrap());
    }
    let ids = |batch: &[Box<dyn cfm_queue::Delivery>]| {
        let mut ids: Vec<String> = batch.iter().map(|d| d.id().to_string()).collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&first), ["o/handed/1", "o/plain/1"]);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the handed-over row woke the consumer (took {:?})",
        started.elapsed()
    );
    assert!(first.iter().all(|d| d.deliveries() == 1));
    // Settled at once: the ack-wait is short, and a lease that ran out would deliver again.
    for delivery in &first {
        delivery.ack().await.unwrap();
    }

    let second = consumer.pull(10, Duration::from_secs(5)).await.unwrap();
    assert_eq!(ids(&second), ["o/orphan/1"]);
    assert!(
        claimed_at.elapsed() >= claim - Duration::from_millis(50),
        "a claimed row was leased {:?} into its {claim:?} claim",
        claimed_at.elapsed()
    );
    assert_eq!(second[0].deliveries(), 2, "leased from the table");
    second[0].ack().await.unwrap();

    // Handed over but not taken within half the ack-wait: left to the table, which
    // leases it once its claim (here 1.5 s) ends.
    let mut tx = store::write(&db).await.unwrap();
    let stale = claimed(&mut tx, "o/stale/1", queue::now_ms() + 1_500).await;
    tx.commit().await.unwrap();
    let stale_at = Instant::now();
    express.hand_over(vec![stale]);
    tokio::time::sleep(ack_wait / 2 + Duration::from_millis(100)).await;
    let third = consumer.pull(10, Duration::from_secs(5)).await.unwrap();
    assert_eq!(ids(&third), ["o/stale/1"]);
    assert!(stale_at.elapsed() >= Duration::from_millis(1_450));
    assert_eq!(third[0].deliveries(), 2, "leased from the table");

    third[0].ack().await.unwrap();
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM queue")
        .fetch_one(db.read())
        .await
        .unwrap();
    assert_eq!(left, 0, "acknowledged rows are gone");
}

/// Embedded: claimed rows held in memory are bounded. Once the lane and the lines hold
/// [`Express::START_ROOM`] rows, new work is not claimed, and once they hold
/// [`Express::ROOM`], nothing is (a burst waits in the table, available at once, rather
/// than in memory); once consumers take rows, claiming resumes. Each row
/// is delivered once, the handed-over ones without a lease in the table.
async fn claimed_rows_in_memory_stop_at_the_lanes_room(backend: TestBackend) {
    let (_scratch, _dir, manager) = open(backend).await;
    let db = manager.engine.db().clone();
    let (express, lane) = Express::lane(Duration::from_secs(60));
    let embedded =
        DbQueue::new(db.clone(), Duration::from_secs(60), Signal::default()).with_express(lane);
    let mut consumer = embedded.consumer("activity.a").await.unwrap();

    // New work fills a part of the room; the activities outcomes make due, all of it.
    let mut held = Vec::new();
    for (from, to) in [
        (0, Express::START_ROOM),
        (Express::START_ROOM, Express::ROOM),
    ] {
        let mut tx = store::write(&db).await.unwrap();
        let mut rows = Vec::new();
        for n in from..to {
            let until = express.claimed_until_ms(Express::ROOM).expect("room");
            rows.push(claimed(&mut tx, &format!("o/{n:04}/1"), until).await);
        }
        tx.commit().await.unwrap();
        express.hand_over(rows);
        held.push((
            express.claimed_until_ms(Express::START_ROOM).is_some(),
            express.claimed_until_ms(Express::ROOM).is_some(),
        ));
    }
    assert_eq!(
        held,
        [(false, true), (false, false)],
        "room for new work, for any"
    );
    assert_eq!(express.claimed_until_ms(usize::MAX), None, "and no more");
    // Past the room, a row goes to the table unclaimed.
    let mut tx = store::write(&db).await.unwrap();
    queue::publish(&mut tx, "o/table/1", "activity.a", "{}", queue::now_ms())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // Still full once the rows moved from the lane to the consumers' lines.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        express.claimed_until_ms(Express::ROOM),
        None,
        "the lines hold the room"
    );

    let started = Instant::now();
    let mut delivered = Vec::new();
    while delivered.len() <= Express::ROOM && started.elapsed() < Duration::from_secs(20) {
        let batch = consumer.pull(64, Duration::from_secs(1)).await.unwrap();
        for delivery in &batch {
            assert_eq!(
                delivery.deliveries(),
                1,
                "{} delivered before",
                delivery.id()
            );
            delivery.ack().await.unwrap();
        }
        delivered.extend(batch.iter().map(|d| d.id().to_string()));
    }
    delivered.sort();
    delivered.dedup();
    assert_eq!(
        delivered.len(),
        Express::ROOM + 1,
        "every row delivered once"
    );
    assert!(
        express.claimed_until_ms(Express::ROOM).is_some(),
        "taken rows leave the count"
    );
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM queue")
        .fetch_one(db.read())
        .await
        .unwrap();
    assert_eq!(left, 0, "acknowledged rows are gone");
}

/// Writes and commits three rows of `activity.a`: `o/handed/1` claimed for `express`
/// (returned, to hand over), `o/orphan/1` claimed for `claim` and never handed over, and
/// `o/plain/1`, unclaimed.
async fn three_rows(db: &store::Db, express: &Express, claim: Duration) -> queue::Leased {
    let mut tx = store::write(db).await.unwrap();
    let handed = claimed(
        &mut tx,
        "o/handed/1",
        express.claimed_until_ms(Express::ROOM).expect("room"),
    )
    .await;
    let orphan = queue::now_ms() + claim.as_millis() as i64;
    claimed(&mut tx, "o/orphan/1", orphan).await;
    queue::publish(&mut tx, "o/plain/1", "activity.a", "{}", queue::now_ms())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    handed
}

/// The relay marks what it published held a moment after the publish. By then the row
/// may have gone out again (swept once its lease ended), been marked by that hand-over,
/// and been found lost and released, to go out under a copy's id: the late mark must not
/// hold it back with a stale sequence. A row still leased is marked.
async fn a_late_mark_leaves_a_row_released_as_lost_to_be_published_anew(backend: TestBackend) {
    let (_scratch, _dir, manager) = open(backend).await;
    let db = manager.engine.db().clone();
    let mut tx = store::write(&db).await.unwrap();
    claimed(&mut tx, "o/leased/1", queue::now_ms() + 60_000).await;
    claimed(&mut tx, "o/released/1", queue::now_ms() + 60_000).await;
    tx.commit().await.unwrap();
    let at = queue::now_ms() - 1_000;
    queue::hold(&db, &[("o/released/1", Some(5))], at)
        .await
        .unwrap();
    let lost = ["o/released/1".to_string()];
    assert_eq!(queue::release(&db, &lost).await.unwrap(), 1);

    queue::hold(
        &db,
        &[("o/leased/1", Some(7)), ("o/released/1", Some(8))],
        at,
    )
    .await
    .unwrap();

    let held = queue::held_before(&db, queue::now_ms(), 10).await.unwrap();
    let held: Vec<(&str, u64)> = held.iter().map(|h| (h.id.as_str(), h.sequence)).collect();
    assert_eq!(held, [("o/leased/1", 7)]);
    let due = queue::lease(&db, None, 10, 60_000).await.unwrap();
    assert_eq!(
        due.iter().map(|row| row.id.as_str()).collect::<Vec<_>>(),
        ["o/released/1"],
        "the released row is due to go out again"
    );
    assert_eq!(due[0].copies, 1);
}

/// A new row of `activity.a`, claimed until `until_ms`.
async fn claimed(tx: &mut store::Conn, id: &str, until_ms: i64) -> queue::Leased {
    queue::publish_claimed(tx, id, "activity.a", "{}".into(), until_ms, None)
        .await
        .unwrap()
        .expect("a new row")
}
