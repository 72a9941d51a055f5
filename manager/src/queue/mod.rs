//! The outbox, and the embedded queue built on it.
//!
//! Every message the engine sends is written into the `queue` table in the transaction
//! that causes it (the transactional outbox), available from a time of its own (delays
//! for retries and reschedules). From there it goes one of two ways:
//! - embedded: the table *is* the queue. [`DbQueue`] leases rows to consumers, a lease
//!   that ends without an ack makes the row available again, and the engine deletes the
//!   row in the transaction that applies its outcome.
//! - JetStream: the relay (`provision::transport::Relay`) publishes due rows with their
//!   ids as message ids and keeps them, held, until the engine applies their outcome and
//!   deletes them as above. A JetStream server can lose messages it confirmed (killed
//!   before its storage caught up, or its disk lost); the relay asks after the rows it
//!   has held for a while and publishes again those the server no longer has.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use cfm_queue::{Consumer, Delivery, Message, Queue, QueueError, check_topic};
use sqlx::{AssertSqlSafe, Row};
use tokio::sync::{mpsc, watch};

use crate::error::Result;
use crate::query::{Literal, Params};
use crate::store::{self, Backend, Conn, Db};

/// A leased outbox row.
#[derive(Debug, Clone)]
pub struct Leased {
    /// The message id: stable, so a re-publish is dropped as a duplicate.
    pub id: String,
    /// The topic it was published on; the engine's are `activity.<type>`.
    pub topic: String,
    /// The body; the engine's are [`cfm_protocol::ActivityTask`]s as JSON.
    pub payload: String,
    /// How many times it has been leased, this time included.
    pub deliveries: i64,
    /// How many times a queue it was handed to lost it (see [`published_id`]).
    pub copies: i64,
}

/// Adds a message, available from `available_at_ms` (Unix milliseconds). Publishing the
/// same id twice keeps the first: message ids are stable, so a replayed write is harmless.
pub async fn publish(
    conn: &mut Conn,
    id: &str,
    topic: &str,
    payload: &str,
    available_at_ms: i64,
) -> Result<()> {
    publish_alongside(conn, id, topic, payload, available_at_ms, None).await
}

/// [`publish`], and `alongside` in the same round trip.
pub async fn publish_alongside(
    conn: &mut Conn,
    id: &str,
    topic: &str,
    payload: &str,
    available_at_ms: i64,
    alongside: Option<Alongside<'_>>,
) -> Result<()> {
    insert(conn, id, topic, payload, available_at_ms, None, alongside).await?;
    Ok(())
}

/// Statements written together with an outbox row, in one round trip for all: on
/// PostgreSQL data-modifying `WITH` clauses of the insert; on SQLite, which has no such
/// clauses, the next statements of its query string ([`store::sqlite_batch`]). Either way
/// they run whether or not the row was new.
/// They must not change one row twice: PostgreSQL would keep only one of the changes.
pub struct Alongside<'q> {
    /// The statements; their parameters are numbered from `$7`, after the row's six, and
    /// shared by all of them ([`store::shift_parameters`] renumbers a statement).
    pub sql: Vec<Cow<'static, str>>,
    /// Binds the parameters, in order, after the row's.
    pub bind: Box<dyn FnOnce(AnyQuery<'q>) -> AnyQuery<'q> + Send + 'q>,
}

/// A statement being bound.
pub type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

/// [`publish_alongside`], due now and leased at once to the process writing it until
/// `claimed_until_ms`: that process hands the row to the queue itself straight after its
/// commit ([`Express`]), and whoever sweeps the table takes it only if it has not by then.
/// Returns the row as leased; `None` when its id was published already.
pub async fn publish_claimed(
    conn: &mut Conn,
    id: &str,
    topic: &str,
    payload: String,
    claimed_until_ms: i64,
    alongside: Option<Alongside<'_>>,
) -> Result<Option<Leased>> {
    let fresh = insert(
        conn,
        id,
        topic,
        &payload,
        now_ms(),
        Some(claimed_until_ms),
        alongside,
    )
    .await?;
    Ok(fresh.then(|| Leased {
        id: id.to_string(),
        topic: topic.to_string(),
        payload,
        deliveries: 1,
        copies: 0,
    }))
}

/// Inserts a row, leased until `leased_until_ms` if given, with `alongside`; false when
/// the id exists.
async fn insert(
    conn: &mut Conn,
    id: &str,
    topic: &str,
    payload: &str,
    available_at_ms: i64,
    leased_until_ms: Option<i64>,
    alongside: Option<Alongside<'_>>,
) -> Result<bool> {
    const INSERT: &str =
        "INSERT INTO queue (id, topic, payload, available_at, leased_until, deliveries)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING";
    let row = |query: AnyQuery<'static>| {
        query
            .bind(id.to_string())
            .bind(topic.to_string())
            .bind(payload.to_string())
            .bind(available_at_ms)
            .bind(leased_until_ms)
            .bind(i64::from(leased_until_ms.is_some()))
    };
    let inserted = match (alongside, store::backend_of(conn)) {
        (None, _) => {
            row(sqlx::query(INSERT))
                .execute(conn)
                .await?
                .rows_affected()
                > 0
        }
        (Some(alongside), Backend::Postgres) => {
            let clauses: Vec<String> = alongside
                .sql
                .iter()
                .enumerate()
                .map(|(n, sql)| format!("alongside{n} AS ({sql})"))
                .collect();
            let sql = format!("WITH {} {INSERT}", clauses.join(", "));
            (alongside.bind)(row(sqlx::query(AssertSqlSafe(sql))))
                .execute(conn)
                .await?
                .rows_affected()
                > 0
        }
        (Some(alongside), Backend::Sqlite) => {
            // The row's statement tells whether it was new by the row it returns; the
            // statements alongside return none.
            let returning = format!("{INSERT} RETURNING 1");
            let statements: Vec<&str> = std::iter::once(returning.as_str())
                .chain(alongside.sql.iter().map(AsRef::as_ref))
                .collect();
            let sql = store::sqlite_batch(&statements);
            let rows = (alongside.bind)(row(sqlx::query(AssertSqlSafe(sql))))
                .fetch_all(conn)
                .await?;
            !rows.is_empty()
        }
    };
    Ok(inserted)
}

/// Where transactions hand the rows they claimed ([`publish_claimed`]) once committed: the
/// relay of the same process, which publishes them, or the embedded queue, which delivers
/// them to its consumers; either way without first finding and leasing them in the
/// table. Clones share the lane.
#[derive(Clone)]
pub struct Express {
    lane: mpsc::Sender<Vec<Leased>>,
    claim: Duration,
    held: InMemory,
}

/// Batches of claimed rows in flight to the relay; beyond it, rows wait for the sweep.
const EXPRESS_BACKLOG: usize = 1024;

impl Express {
    /// Claimed rows this process holds in memory at most, on the lane or waiting for the
    /// embedded queue's consumers. Past it, rows are written unclaimed and found in the
    /// table: a burst larger than the consumers keep up with (thousands of onboardings
    /// posted at once) waits there, not in memory, and is never stuck behind claims.
    pub const ROOM: usize = 1024;

    /// The part of [`Express::ROOM`] that new work (an orchestration the API starts) may
    /// fill: the rest keeps the lane for the activities that outcomes make due, work
    /// under way, however many onboardings a burst posts.
    pub const START_ROOM: usize = 64;

    /// A lane, and its far end for the relay. A row claimed for `claim` that the relay
    /// has not taken by then (the process died after its commit, or the relay fell
    /// behind) goes out with the table's next sweep.
    pub fn lane(claim: Duration) -> (Self, Lane) {
        let (lane, rows) = mpsc::channel(EXPRESS_BACKLOG);
        let held = InMemory::default();
        let express = Self {
            lane,
            claim,
            held: held.clone(),
        };
        (express, Lane { rows, held })
    }

    /// Until when a row claimed now stays with this process; `None` while the process
    /// holds `room` (at most [`Express::ROOM`]) claimed rows in memory already: write the
    /// row unclaimed.
    pub fn claimed_until_ms(&self, room: usize) -> Option<i64> {
        (self.held.get() < room.min(Self::ROOM)).then(|| now_ms() + self.claim.as_millis() as i64)
    }

    /// Hands committed rows over. Never waits: a full or closed lane leaves them to the
    /// table once their claim ends, which is slower but loses nothing.
    pub fn hand_over(&self, rows: Vec<Leased>) {
        if rows.is_empty() {
            return;
        }
        // Counted before the far end can take them, so the count never goes below zero.
        let n = rows.len();
        self.held.add(n);
        if let Err(e) = self.lane.try_send(rows) {
            self.held.sub(n);
            tracing::debug!("the relay is not taking rows ({e}): they go out with its sweep");
        }
    }
}

/// The far end of an [`Express`] lane. What it gives out leaves the count of claimed rows
/// held in memory, unless its holder keeps them there (the embedded queue's lines).
pub struct Lane {
    rows: mpsc::Receiver<Vec<Leased>>,
    held: InMemory,
}

impl Lane {
    /// The next batch handed over; `None` once every [`Express`] clone is gone.
    pub async fn recv(&mut self) -> Option<Vec<Leased>> {
        let rows = self.rows.recv().await?;
        self.held.sub(rows.len());
        Some(rows)
    }

    /// The next batch, if one is waiting.
    pub fn try_recv(&mut self) -> Option<Vec<Leased>> {
        let rows = self.rows.try_recv().ok()?;
        self.held.sub(rows.len());
        Some(rows)
    }

    /// [`Lane::recv`] for a holder that keeps the rows in memory, counted, and takes them
    /// off the count as they leave it ([`Handed`]).
    async fn recv_kept(&mut self) -> Option<Vec<Leased>> {
        self.rows.recv().await
    }
}

/// How many claimed rows a process holds in memory, shared by its lane's two ends.
#[derive(Clone, Default)]
struct InMemory(Arc<AtomicUsize>);

impl InMemory {
    fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    fn add(&self, n: usize) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    fn sub(&self, n: usize) {
        self.0.fetch_sub(n, Ordering::Relaxed);
    }
}

/// Leases up to `max` due messages for `lease_ms`, oldest first: of `topic`, or of every
/// topic when `None` (the relay).
pub async fn lease(db: &Db, topic: Option<&str>, max: i64, lease_ms: i64) -> Result<Vec<Leased>> {
    let now = now_ms();
    // One statement: choosing and leasing cannot interleave with another consumer. On
    // PostgreSQL the chosen rows are locked as they are picked and rows another
    // consumer holds are skipped; the lease test is repeated in the outer WHERE so a
    // row leased meanwhile is never leased twice.
    let topic_test = if topic.is_some() {
        "topic = $2"
    } else {
        "$2 IS NULL"
    };
    let skip_locked = match db.backend() {
        Backend::Sqlite => "",
        Backend::Postgres => " FOR UPDATE SKIP LOCKED",
    };
    let sql = format!(
        "UPDATE queue SET leased_until = $1, deliveries = deliveries + 1
         WHERE id IN (SELECT id FROM queue
                      WHERE {topic_test} AND available_at <= $3 AND {unleased}
                      ORDER BY available_at, id LIMIT $4{skip_locked})
           AND {unleased}
         RETURNING id, topic, payload, deliveries, copies",
        unleased = unleased_at("$3")
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(now + lease_ms)
        .bind(topic)
        .bind(now)
        .bind(max)
        .fetch_all(db.writer())
        .await?;
    Ok(rows
        .iter()
        .map(|row| Leased {
            id: row.get("id"),
            topic: row.get("topic"),
            payload: row.get("payload"),
            deliveries: row.get("deliveries"),
            copies: row.get("copies"),
        })
        .collect())
}

/// Removes a message (whose result has been applied, in that same transaction).
pub async fn ack(conn: &mut Conn, id: &str) -> Result<()> {
    sqlx::query("DELETE FROM queue WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// The id a row's message goes out under after `copies` losses: the row's own id first,
/// then `<id>#<copy>`. A queue that lost a message may still remember its id (a server
/// whose purge or flush did not reach its disk), and would drop a copy under the same id
/// as a duplicate; so would it the copy's report. Row ids end in `/<attempt>`, so a `#`
/// followed by digits alone is always a copy's.
pub fn published_id(id: &str, copies: i64) -> String {
    if copies == 0 {
        id.to_string()
    } else {
        format!("{id}#{copies}")
    }
}

/// The row a message id names: [`published_id`] undone.
pub fn row_id(message_id: &str) -> &str {
    match message_id.rsplit_once('#') {
        Some((row, copy)) if !copy.is_empty() && copy.bytes().all(|b| b.is_ascii_digit()) => row,
        _ => message_id,
    }
}

/// `leased_until` of a message a relay has handed to another queue: kept, never leased
/// again, until the engine applies its outcome (and deletes it) or the queue turns out to
/// have lost it ([`release`]).
const HELD: i64 = i64::MAX;

/// Marks messages as handed over to another queue at `at_ms` (Unix milliseconds, taken
/// before the hand-over began), each with the sequence that queue stored it at, in one
/// statement. A row released meanwhile (found lost, to be published anew) keeps that
/// state: a published row is always leased, so an unleased one is not marked.
pub async fn hold(db: &Db, handed: &[(&str, Option<u64>)], at_ms: i64) -> Result<()> {
    if handed.is_empty() {
        return Ok(());
    }
    // One statement per batch size: `Params` keeps it out of the prepared-statement cache.
    let mut params = Params::default();
    let held = params.push(Literal::Integer(HELD));
    let at = params.push(Literal::Integer(at_ms));
    let mut ids = Vec::with_capacity(handed.len());
    let mut sequences = String::new();
    for (id, sequence) in handed {
        let id = params.push(Literal::Text(id.to_string()));
        if let Some(sequence) = sequence.and_then(|s| i64::try_from(s).ok()) {
            let sequence = params.push(Literal::Integer(sequence));
            sequences.push_str(&format!(" WHEN {id} THEN {sequence}"));
        }
        ids.push(id);
    }
    let sequence = if sequences.is_empty() {
        "NULL".to_string()
    } else {
        format!("CASE id{sequences} END")
    };
    let sql = format!(
        "UPDATE queue SET leased_until = {held}, available_at = {at}, sequence = {sequence}
         WHERE leased_until IS NOT NULL AND id IN ({})",
        ids.join(", ")
    );
    params.query(sql).execute(db.writer()).await?;
    Ok(())
}

/// A message handed over to another queue, as [`held_before`] finds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    /// The row's id.
    pub id: String,
    /// The id it went out under ([`published_id`]).
    pub published_id: String,
    /// Where the other queue stored it.
    pub sequence: u64,
}

/// Up to `max` messages handed over before `before_ms` whose outcome has not been
/// applied, oldest first: the ones to ask the other queue about.
pub async fn held_before(db: &Db, before_ms: i64, max: i64) -> Result<Vec<Held>> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT id, sequence, copies FROM queue
         WHERE leased_until = $1 AND available_at < $2 AND sequence IS NOT NULL
         ORDER BY available_at, id LIMIT $3",
    )
    .bind(HELD)
    .bind(before_ms)
    .bind(max)
    .fetch_all(db.read())
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, sequence, copies)| {
            Some(Held {
                published_id: published_id(&id, copies),
                id,
                sequence: u64::try_from(sequence).ok()?,
            })
        })
        .collect())
}

/// Makes held messages available again, for the relay to publish anew as their next copy
/// ([`published_id`]): the queue they went to lost them. A message whose outcome was
/// applied meanwhile is gone and stays gone. Returns how many.
pub async fn release(db: &Db, ids: &[String]) -> Result<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    let mut params = Params::default();
    let held = params.push(Literal::Integer(HELD));
    let ids: Vec<String> = ids
        .iter()
        .map(|id| params.push(Literal::Text(id.clone())))
        .collect();
    let sql = format!(
        "UPDATE queue SET leased_until = NULL, sequence = NULL, copies = copies + 1
         WHERE leased_until = {held} AND id IN ({})",
        ids.join(", ")
    );
    Ok(params
        .query(sql)
        .execute(db.writer())
        .await?
        .rows_affected())
}

/// Removes every message whose id starts with `prefix` (an orchestration's pending work).
pub async fn purge_prefix(conn: &mut Conn, prefix: &str) -> Result<()> {
    sqlx::query("DELETE FROM queue WHERE substr(id, 1, length($1)) = $1")
        .bind(prefix)
        .execute(conn)
        .await?;
    Ok(())
}

/// Makes every leased message available again. Only safe at start-up of the only
/// process that uses the table: leases held by a process that no longer exists would
/// otherwise delay recovery by a whole lease period.
pub async fn release_all(db: &Db) -> Result<u64> {
    let released =
        sqlx::query("UPDATE queue SET leased_until = NULL WHERE leased_until IS NOT NULL")
            .execute(db.writer())
            .await?;
    Ok(released.rows_affected())
}

/// The condition on a row that no lease holds at `now` (a placeholder): never leased, or
/// its lease ended.
fn unleased_at(now: &str) -> String {
    format!("(leased_until IS NULL OR leased_until <= {now})")
}

/// When a message of `topic` can next be leased, in Unix milliseconds: `now` when one is
/// due and not leased (what [`lease`] would find), later when the rows there are waiting
/// for their time or leased, `None` when there are none. One read: the time of the next
/// is only looked for when nothing is due, since finding it reads every row of the topic.
async fn next_due(db: &Db, topic: &str, now: i64) -> Result<Option<i64>> {
    let sql = format!(
        "SELECT CASE
           WHEN EXISTS (SELECT 1 FROM queue WHERE topic = $1 AND available_at <= $2 AND {unleased})
           THEN $2
           ELSE ({NEXT_AVAILABLE} WHERE topic = $1)
         END",
        unleased = unleased_at("$2")
    );
    Ok(sqlx::query_scalar(AssertSqlSafe(sql))
        .bind(topic)
        .bind(now)
        .fetch_one(db.read())
        .await?)
}

/// When the next row becomes available, whether waiting for its time or leased.
const NEXT_AVAILABLE: &str = "SELECT MIN(CASE WHEN leased_until > available_at THEN leased_until ELSE available_at END) FROM queue";

/// When the next message of any topic becomes available, if any is waiting.
pub async fn next_available_at(db: &Db) -> Result<Option<i64>> {
    Ok(sqlx::query_scalar(NEXT_AVAILABLE)
        .fetch_one(db.read())
        .await?)
}

/// How much work the outbox holds, for the metrics ([`depth`]).
pub struct Depth {
    /// Messages in the table: due, waiting for their time, or taken.
    pub messages: i64,
    /// How long the oldest message that is due and not taken has waited; zero if none.
    pub oldest_due: Duration,
}

/// Reads [`Depth`]. The table holds only work in flight, so this is a short scan.
pub async fn depth(db: &Db) -> Result<Depth> {
    let now = now_ms();
    let (messages, oldest): (i64, Option<i64>) = sqlx::query_as(
        "SELECT COUNT(*), MIN(CASE WHEN available_at <= $1
                 AND (leased_until IS NULL OR leased_until <= $1) THEN available_at END)
         FROM queue",
    )
    .bind(now)
    .fetch_one(db.read())
    .await?;
    let waited = oldest.map_or(0, |at| now.saturating_sub(at).max(0));
    Ok(Depth {
        messages,
        oldest_due: Duration::from_millis(waited.unsigned_abs()),
    })
}

/// Now, in Unix milliseconds: the clock of `available_at` and leases.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Tells waiting consumers that the outbox has new rows. Waiters compare a counter, so
/// a signal sent between a consumer's check and its wait is not lost. A consumer of one
/// topic can wait for that topic alone, so that a row of one activity type does not send
/// the consumers of every other type to the table for nothing.
#[derive(Clone)]
pub struct Signal(Arc<Channels>);

struct Channels {
    /// Fires for rows of any topic.
    any: watch::Sender<u64>,
    /// Fires for rows of one topic, made on first subscription.
    topics: std::sync::Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl Default for Signal {
    fn default() -> Self {
        Self(Arc::new(Channels {
            any: watch::channel(0).0,
            topics: Default::default(),
        }))
    }
}

impl Signal {
    /// Wakes every waiter: new rows may be there, of any topic.
    pub fn notify(&self) {
        self.0.any.send_modify(bump);
        for sender in self.topics().values() {
            sender.send_modify(bump);
        }
    }

    /// Wakes the waiters for any topic, and those for these.
    pub fn notify_topics<'a>(&self, topics: impl IntoIterator<Item = &'a str>) {
        self.0.any.send_modify(bump);
        let senders = self.topics();
        for topic in topics {
            if let Some(sender) = senders.get(topic) {
                sender.send_modify(bump);
            }
        }
    }

    /// A receiver that fires for rows of any topic (see [`wait_for_work`]).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.any.subscribe()
    }

    /// A receiver that fires for rows of `topic` only (and for [`Signal::notify`]).
    pub fn subscribe_topic(&self, topic: &str) -> watch::Receiver<u64> {
        self.topics()
            .entry(topic.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    fn topics(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<u64>>> {
        // Nothing panics while holding it, so a poisoned lock still guards sound data.
        self.0.topics.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn bump(n: &mut u64) {
    *n = n.wrapping_add(1);
}

/// How long until the next message of any topic falls due, at most `wait`.
pub async fn until_due(db: &Db, wait: Duration) -> Duration {
    wait_until(next_available_at(db).await.ok().flatten(), wait)
}

/// How long to wait for a message available at `at` (Unix milliseconds), at most `wait`;
/// at least 5 ms, so that a row due already (taken by another consumer meanwhile, or
/// leased again at once) is not looked for in a busy loop.
fn wait_until(at: Option<i64>, wait: Duration) -> Duration {
    let wait_ms = wait.as_millis() as i64;
    let until = match at {
        Some(at) => (at - now_ms()).clamp(5, wait_ms.max(5)),
        None => wait_ms,
    };
    Duration::from_millis(until as u64)
}

/// The embedded queue: the outbox table leased directly by consumers in this process.
///
/// With an express lane ([`DbQueue::with_express`]), rows the engine claimed for this
/// process as it committed them come to the consumers of their topic in memory: the
/// consumer takes them already leased, without the write that leasing them in the table
/// would take (one of the two writes per activity on SQLite's single writer). The table
/// still holds every row, so a row the lane never delivers is found there once its claim
/// ends.
#[derive(Clone)]
pub struct DbQueue {
    db: Db,
    lease_ms: i64,
    signal: Signal,
    handed: Handed,
}

impl DbQueue {
    /// `lease` is the ack-wait: how long a pulled message stays with its consumer.
    pub fn new(db: Db, lease: Duration, signal: Signal) -> Self {
        Self {
            db,
            lease_ms: lease.as_millis() as i64,
            signal,
            // A consumer taking a row later than this might not signal progress before its
            // claim (the lease) ends, and the table would lease it again.
            handed: Handed::new(lease / 2),
        }
    }

    /// The same queue, also delivering the rows handed over on `lane` (the far end of an
    /// [`Express`] claiming for this queue's lease). Spawns the task that sorts them by
    /// topic; it ends when every sender of the lane is gone.
    pub fn with_express(mut self, lane: Lane) -> Self {
        // Rows wait in the lines as they waited on the lane: in memory, still counted.
        self.handed.held = lane.held.clone();
        tokio::spawn(route(lane, self.handed.clone(), self.signal.clone()));
        self
    }
}

/// Sorts the rows handed over on `lane` into their topics' lines and wakes the
/// consumers of those topics.
async fn route(mut lane: Lane, handed: Handed, signal: Signal) {
    while let Some(rows) = lane.recv_kept().await {
        let topics = handed.push(rows);
        signal.notify_topics(topics.iter().map(String::as_str));
    }
}

/// Rows handed over in memory, waiting for their topic's consumers. A row waits at most
/// `fresh_for`: past it, the table hands it out once its claim ends. Rows of a topic no
/// consumer here takes (an activity type no plugin of this host runs) go the same way,
/// so memory holds no more than what the lane brings in that time.
#[derive(Clone)]
struct Handed {
    lines: Arc<std::sync::Mutex<Lines>>,
    fresh_for: Duration,
    /// The count of claimed rows in memory that these rows, counted as they came on the
    /// lane, are part of.
    held: InMemory,
}

/// Each topic's handed-over rows, oldest first, with when each came.
type Lines = HashMap<String, VecDeque<(tokio::time::Instant, Leased)>>;

impl Handed {
    fn new(fresh_for: Duration) -> Self {
        Self {
            lines: Arc::default(),
            fresh_for,
            held: InMemory::default(),
        }
    }

    /// Queues `rows`; returns their topics.
    fn push(&self, rows: Vec<Leased>) -> Vec<String> {
        let now = tokio::time::Instant::now();
        let mut lines = self.lines();
        let mut topics: Vec<String> = Vec::new();
        // Every line, not only these rows': a line nobody takes from (its plugin gone)
        // would otherwise keep its rows, and their share of the room, until more come.
        for line in lines.values_mut() {
            self.expire(line, now);
        }
        for row in rows {
            if !topics.contains(&row.topic) {
                topics.push(row.topic.clone());
            }
            lines
                .entry(row.topic.clone())
                .or_default()
                .push_back((now, row));
        }
        topics
    }

    /// Up to `max` rows of `topic` that are still fresh, oldest first.
    fn take(&self, topic: &str, max: usize) -> Vec<Leased> {
        let mut lines = self.lines();
        let Some(line) = lines.get_mut(topic) else {
            return Vec::new();
        };
        self.expire(line, tokio::time::Instant::now());
        let n = max.min(line.len());
        self.held.sub(n);
        line.drain(..n).map(|(_, row)| row).collect()
    }

    /// Drops the rows at the front of `line` that waited longer than `fresh_for`.
    fn expire(
        &self,
        line: &mut VecDeque<(tokio::time::Instant, Leased)>,
        now: tokio::time::Instant,
    ) {
        while line
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > self.fresh_for)
        {
            line.pop_front();
            self.held.sub(1);
        }
    }

    fn lines(&self) -> std::sync::MutexGuard<'_, Lines> {
        // Nothing panics while holding it, so a poisoned lock still guards sound data.
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Queue for DbQueue {
    async fn publish(
        &self,
        messages: &[Message],
    ) -> std::result::Result<Vec<Option<u64>>, QueueError> {
        let mut tx = crate::store::write(&self.db).await.map_err(storage)?;
        let now = now_ms();
        for message in messages {
            check_topic(&message.topic)?;
            let payload = String::from_utf8(message.payload.clone()).map_err(|_| {
                QueueError::Publish(format!("{}: payload is not UTF-8", message.id))
            })?;
            publish(&mut tx, &message.id, &message.topic, &payload, now)
                .await
                .map_err(storage)?;
        }
        tx.commit().await.map_err(|e| storage(e.into()))?;
        self.signal
            .notify_topics(messages.iter().map(|m| m.topic.as_str()));
        // The table is the database: it keeps what it accepted, so there is nothing to
        // look up later.
        Ok(vec![None; messages.len()])
    }

    async fn consumer(&self, topic: &str) -> std::result::Result<Box<dyn Consumer>, QueueError> {
        check_topic(topic)?;
        Ok(Box::new(DbConsumer {
            queue: self.clone(),
            topic: topic.to_string(),
            signal: self.signal.subscribe_topic(topic),
            pulls: 0,
        }))
    }
}

struct DbConsumer {
    queue: DbQueue,
    topic: String,
    signal: watch::Receiver<u64>,
    /// Pulls so far, to give the table its turns (see [`TABLE_TURN`]).
    pulls: u64,
}

/// Every this many pulls, a consumer looks in the table before its handed-over rows:
/// while the lane alone could keep it busy, work only the table holds (what the API
/// started, retries that fell due, rows whose claim ended) still goes out.
const TABLE_TURN: u64 = 8;

#[async_trait]
impl Consumer for DbConsumer {
    async fn pull(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> std::result::Result<Vec<Box<dyn Delivery>>, QueueError> {
        let deadline = tokio::time::Instant::now() + wait;
        let max = max.max(1);
        loop {
            // Marked seen before looking, so work published after the look wakes us.
            self.signal.borrow_and_update();
            self.pulls = self.pulls.wrapping_add(1);
            let table_first = self.pulls.is_multiple_of(TABLE_TURN);
            let mut leased = Vec::new();
            // When the table has work next, as of a look made after the signal was
            // marked seen: work that comes later signals.
            let mut next = None;
            if table_first {
                (leased, next) = self.lease(max).await?;
            }
            let handed = self.queue.handed.take(&self.topic, max - leased.len());
            leased.extend(handed);
            // Handed-over work goes out without waiting for a look in the table; the
            // next pull (at once, for the free slots left) or the table's turn looks.
            if !table_first && leased.is_empty() {
                (leased, next) = self.lease(max).await?;
            }
            if !leased.is_empty() {
                return Ok(leased
                    .into_iter()
                    .map(|row| {
                        Box::new(DbDelivery {
                            queue: self.queue.clone(),
                            row,
                        }) as Box<dyn Delivery>
                    })
                    .collect());
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(Vec::new());
            }
            let _ = tokio::time::timeout(wait_until(next, left), self.signal.changed()).await;
        }
    }
}

impl DbConsumer {
    /// Leases up to `max` rows of this consumer's topic in the table; with them, when
    /// the table has more work next ([`next_due`]), for a consumer that leased none to
    /// wait for. Most looks find nothing due (the lane brought the work, or another
    /// topic's row woke us), so it looks first with a read, which costs no turn at
    /// SQLite's one writer; a row that falls due after the look signals.
    async fn lease(
        &self,
        max: usize,
    ) -> std::result::Result<(Vec<Leased>, Option<i64>), QueueError> {
        let now = now_ms();
        let next = next_due(&self.queue.db, &self.topic, now)
            .await
            .map_err(storage)?;
        if next.is_none_or(|at| at > now) {
            return Ok((Vec::new(), next));
        }
        let leased = lease(
            &self.queue.db,
            Some(&self.topic),
            max as i64,
            self.queue.lease_ms,
        )
        .await
        .map_err(storage)?;
        Ok((leased, next))
    }
}

struct DbDelivery {
    queue: DbQueue,
    row: Leased,
}

#[async_trait]
impl Delivery for DbDelivery {
    fn id(&self) -> &str {
        &self.row.id
    }

    fn payload(&self) -> &[u8] {
        self.row.payload.as_bytes()
    }

    fn deliveries(&self) -> u64 {
        self.row.deliveries.max(1) as u64
    }

    async fn ack(&self) -> std::result::Result<(), QueueError> {
        // The engine deletes a row in the transaction that applies its outcome, so the
        // row of a reported task is gone already: looking costs no turn at SQLite's one
        // writer, which every outcome waits for.
        let present: Option<i64> = sqlx::query_scalar("SELECT 1 FROM queue WHERE id = $1")
            .bind(&self.row.id)
            .fetch_optional(self.queue.db.read())
            .await
            .map_err(|e| storage(e.into()))?;
        if present.is_none() {
            return Ok(());
        }
        let mut conn = self
            .queue
            .db
            .writer()
            .acquire()
            .await
            .map_err(|e| storage(e.into()))?;
        ack(&mut conn, &self.row.id).await.map_err(storage)
    }

    async fn nak(&self, delay: Duration) -> std::result::Result<(), QueueError> {
        let available_at = now_ms() + delay.as_millis() as i64;
        self.update(
            "UPDATE queue SET leased_until = NULL, available_at = $1 WHERE id = $2",
            available_at,
        )
        .await?;
        self.queue.signal.notify_topics([self.row.topic.as_str()]);
        Ok(())
    }

    async fn in_progress(&self) -> std::result::Result<(), QueueError> {
        let until = now_ms() + self.queue.lease_ms;
        self.update("UPDATE queue SET leased_until = $1 WHERE id = $2", until)
            .await
    }
}

impl DbDelivery {
    async fn update(&self, sql: &'static str, at: i64) -> std::result::Result<(), QueueError> {
        sqlx::query(sql)
            .bind(at)
            .bind(&self.row.id)
            .execute(self.queue.db.writer())
            .await
            .map_err(|e| storage(e.into()))?;
        Ok(())
    }
}

fn storage(e: crate::ManagerError) -> QueueError {
    QueueError::Storage(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, topic: &str) -> Leased {
        Leased {
            id: id.into(),
            topic: topic.into(),
            payload: "{}".into(),
            deliveries: 1,
            copies: 0,
        }
    }

    #[tokio::test]
    async fn handed_rows_wait_in_memory_only_while_fresh_taken_or_not() {
        let (express, mut lane) = Express::lane(Duration::from_secs(60));
        let mut handed = Handed::new(Duration::from_millis(50));
        handed.held = lane.held.clone();
        let mut push = async |rows| {
            express.hand_over(rows);
            handed.push(lane.recv_kept().await.unwrap())
        };
        let topics = push(vec![row("a/1", "activity.a"), row("x/1", "activity.x")]).await;
        assert_eq!(topics, ["activity.a", "activity.x"]);
        assert_eq!(handed.held.get(), 2, "held rows are counted");
        assert_eq!(handed.take("activity.a", 10).len(), 1);
        assert_eq!(handed.held.get(), 1, "taken rows leave the count");
        tokio::time::sleep(Duration::from_millis(80)).await;
        // Nobody takes activity.x: its old rows still go when new ones come, of any topic.
        push(vec![row("a/2", "activity.a")]).await;
        assert_eq!(handed.held.get(), 1, "x/1 left memory and the count");
        push(vec![row("x/2", "activity.x")]).await;
        let waiting: Vec<String> = handed.lines()["activity.x"]
            .iter()
            .map(|(_, row)| row.id.clone())
            .collect();
        assert_eq!(waiting, ["x/2"]);
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(
            handed.take("activity.a", 10).is_empty(),
            "a stale row is left to the table"
        );
        assert_eq!(handed.held.get(), 1, "x/2 is still held, a/2 expired");
    }

    #[test]
    fn copies_go_out_under_ids_that_lead_back_to_their_row() {
        let row = "5fde2d02-f21a-445f-bd06-9c9ad576fc64/vault#x/3";
        assert_eq!(published_id(row, 0), row);
        assert_eq!(row_id(row), row, "a row id is never taken for a copy's");
        for copies in [1, 2, 17] {
            let copy = published_id(row, copies);
            assert_ne!(copy, row);
            assert_eq!(row_id(&copy), row);
        }
        assert_eq!(row_id("a/b/1#"), "a/b/1#");
    }
}
