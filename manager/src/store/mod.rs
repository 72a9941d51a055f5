//! The database: connection set-up, migrations and the helpers every store module shares.
//!
//! Two backends behind sqlx's `Any` driver: embedded SQLite (the default) and PostgreSQL.
//! Every statement is written once, in the SQL both understand, with `$N` placeholders;
//! the few places where they differ ask [`Db::backend`] (the predicate language's JSON
//! paths, and how a write transaction begins).

mod writer_thread;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::MigrateDatabase;
use sqlx::{Any, AnyPool, AssertSqlSafe, ConnectOptions, Executor};
use tracing::Instrument;

use crate::error::{ManagerError, Result};

/// A write transaction, from [`write()`].
pub type Tx = sqlx::Transaction<'static, Any>;
/// A connection of either backend; a [`Tx`] derefs to one.
pub type Conn = sqlx::AnyConnection;
/// A result row of either backend.
pub type Row = sqlx::any::AnyRow;

pub use cfm_query::{Backend, COUNT_LIMIT, MAX_PAGE, Page, Total};

/// The database, as a read pool and a write pool.
///
/// SQLite admits one writer at a time: writes go through a one-connection pool so
/// writers queue in order inside the process, instead of in SQLite's sleep-and-retry
/// busy handler (which cost 105 ms at p99 on participant creation under load). Reads use
/// a read-only pool of their own; under WAL they never wait for the writer, and a write
/// sent there by mistake fails loudly. On PostgreSQL both are one pool, and writers that
/// touch the same rows serialise on row locks ([`lock_row`]).
///
/// Predicate queries from the API run on a pool of their own ([`Db::queries`]): on
/// PostgreSQL its few connections stop any statement after [`QUERY_TIMEOUT`], so a
/// costly predicate can hold neither a connection nor a core for long, nor starve the
/// engine of connections.
#[derive(Clone)]
pub struct Db {
    read: AnyPool,
    write: AnyPool,
    queries: AnyPool,
    backend: Backend,
    /// SQLite's: where the write connection lives (see [`Db::writer_runtime`]).
    writer_thread: Option<Arc<writer_thread::WriterThread>>,
}

/// How long one API predicate query may run on PostgreSQL before it is stopped and
/// answered with a 400 (`query-timeout`).
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections for API predicate queries on PostgreSQL: concurrent costly queries queue
/// here instead of taking the engine's connections.
const QUERY_CONNECTIONS: u32 = 4;

impl Db {
    /// Opens the database a URL names, creating it (and, for SQLite, its file) when it
    /// does not exist yet, and brings its schema up to date.
    pub async fn open(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            open_postgres(url).await
        } else if let Some(path) = url.strip_prefix("sqlite://") {
            open_sqlite(Path::new(path)).await
        } else {
            Err(ManagerError::bad_request(format!(
                "unsupported database URL '{}': use postgres://... or sqlite://PATH",
                redact_url(url)
            )))
        }
    }

    /// Which server this is, for the few statements that differ between them.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool for reads; on SQLite it is read-only.
    pub fn read(&self) -> &AnyPool {
        &self.read
    }

    /// Where predicate queries from API clients run (see [`Db`]).
    pub fn queries(&self) -> &AnyPool {
        &self.queries
    }

    /// For single-statement writes; transactions use [`write`].
    pub fn writer(&self) -> &AnyPool {
        &self.write
    }

    /// On SQLite, a runtime on the CPU of the write connection's thread: a transaction
    /// run there hands its statements over without waking another CPU, several times
    /// faster on virtual machines. For the busiest writers: the engine applying outcomes
    /// and the API starting onboardings.
    pub fn writer_runtime(&self) -> Option<&tokio::runtime::Handle> {
        self.writer_thread
            .as_deref()
            .map(writer_thread::WriterThread::handle)
    }

    /// Runs `work`, a write transaction, on [`Db::writer_runtime`] where there is one,
    /// else here. Once started it runs to its end even if the caller stops waiting.
    pub async fn on_writer<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        match self.writer_runtime() {
            // In the caller's span: the work's logs, and the trace an orchestration it
            // starts joins, are the caller's.
            Some(runtime) => runtime.spawn(work.in_current_span()).await.map_err(|e| {
                ManagerError::Stopped(if e.is_panic() {
                    "a write transaction panicked"
                } else {
                    "the SQLite writer thread has stopped"
                })
            })?,
            None => work.await,
        }
    }

    /// Each distinct pool by name (`read`, `write`, `queries`), for the metrics. On
    /// SQLite predicate queries share the read pool, so it is listed once.
    pub fn pools(&self) -> Vec<(&'static str, &AnyPool)> {
        let mut pools = vec![("read", &self.read), ("write", &self.write)];
        if self.backend == Backend::Postgres {
            pools.push(("queries", &self.queries));
        }
        pools
    }

    /// A read connection.
    pub async fn acquire(&self) -> Result<sqlx::pool::PoolConnection<Any>, sqlx::Error> {
        self.read.acquire().await
    }

    /// Closes the read, write and query pools.
    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
        self.queries.close().await;
    }
}

/// Opens (creating if needed) the SQLite database at `path`.
pub async fn open_sqlite(path: &Path) -> Result<Db> {
    sqlx::any::install_default_drivers();
    let url = |mode: &str| {
        AnyConnectOptions::from_url(
            &format!("sqlite://{}?mode={mode}", path.display())
                .parse()
                .map_err(|e| ManagerError::Io(format!("database path {}: {e}", path.display())))?,
        )
        .map_err(ManagerError::from)
    };
    // A file does not hang up: no ping before each use. The connection is opened on the
    // writer thread, so that its own thread shares that CPU, and kept for good: one
    // opened again elsewhere would not.
    let writer_thread = Arc::new(writer_thread::WriterThread::start()?);
    let options = url("rwc")?.disable_statement_logging();
    let write = writer_thread
        .handle()
        .spawn(async move {
            AnyPoolOptions::new()
                .max_connections(1)
                .test_before_acquire(false)
                .idle_timeout(None)
                .max_lifetime(None)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        // WAL with NORMAL sync survives a killed process (not a power
                        // cut) at a fraction of FULL's fsync cost; the outbox makes every
                        // write path idempotent anyway.
                        conn.execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL")
                            .await?;
                        sqlite_session(conn).await
                    })
                })
                .connect_with(options)
                .await
        })
        .await
        .map_err(|e| ManagerError::Io(format!("opening the SQLite write connection: {e}")))??;
    sqlx::migrate!("../migrations/sqlite").run(&write).await?;
    let read = AnyPoolOptions::new()
        .max_connections(4)
        .test_before_acquire(false)
        .after_connect(|conn, _| Box::pin(sqlite_session(conn)))
        .connect_with(url("ro")?.disable_statement_logging())
        .await?;
    Ok(Db {
        queries: read.clone(),
        read,
        write,
        backend: Backend::Sqlite,
        writer_thread: Some(writer_thread),
    })
}

/// Settings every SQLite connection needs. LIKE is made case-sensitive so a predicate
/// means the same on SQLite as on PostgreSQL.
async fn sqlite_session(conn: &mut Conn) -> Result<(), sqlx::Error> {
    conn.execute(
        "PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 30000; PRAGMA case_sensitive_like = ON",
    )
    .await?;
    Ok(())
}

async fn open_postgres(url: &str) -> Result<Db> {
    if !sqlx::Any::database_exists(url).await? {
        tracing::info!(database = %redact_url(url), "creating database");
        // Another replica may create it between the check and here.
        if let Err(e) = sqlx::Any::create_database(url).await
            && !sqlx::Any::database_exists(url).await?
        {
            return Err(e.into());
        }
    }
    let options = AnyConnectOptions::from_url(
        &url.parse()
            .map_err(|e| ManagerError::bad_request(format!("database URL: {e}")))?,
    )?
    .disable_statement_logging();
    // JIT compilation pays off for long analytical queries; cfm's are short, and a
    // predicate of many terms spent seconds compiling, not running.
    let pool = AnyPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(30))
        .after_connect(|conn, _| {
            Box::pin(async move { conn.execute("SET jit = off").await.map(drop) })
        })
        .connect_with(options.clone())
        .await?;
    sqlx::migrate!("../migrations/postgres").run(&pool).await?;
    // No parallel plans either: this pool bounds what API predicates take from the
    // database, and a parallel plan gives one of its connections two more processes. At a
    // million profiles the capped count of `vpas.state = 'error'` took 14.5 ms with two
    // workers and 5–7.5 ms without, alone; beside other clients the workers only compete
    // with them for the same cores.
    let queries = AnyPoolOptions::new()
        .max_connections(QUERY_CONNECTIONS)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(30))
        .after_connect(|conn, _| {
            Box::pin(async move {
                let timeout = QUERY_TIMEOUT.as_millis();
                conn.execute(AssertSqlSafe(format!(
                    "SET jit = off; SET max_parallel_workers_per_gather = 0; \
                     SET statement_timeout = {timeout}"
                )))
                .await
                .map(drop)
            })
        })
        .connect_lazy_with(options);
    Ok(Db {
        read: pool.clone(),
        write: pool,
        queries,
        backend: Backend::Postgres,
        writer_thread: None,
    })
}

/// `statements` as one query string for SQLite, which runs them in order in one round
/// trip to its connection's thread, where each alone would be one. Its driver binds
/// parameters by number, so `$n` is the same value in every statement, and the rows
/// they return come back one statement after another. (PostgreSQL takes no parameters
/// in a string of several statements; there, data-modifying `WITH` clauses join them.)
///
/// Every `$n` must be bound: the driver leaves a number past the bound list NULL without
/// an error. A statement must not end in a `--` comment, which would swallow the `;`.
pub fn sqlite_batch<S: AsRef<str>>(statements: &[S]) -> String {
    let statements: Vec<&str> = statements.iter().map(AsRef::as_ref).collect();
    statements.join(";\n")
}

/// `sql` with every parameter `$n` renumbered `$(n + by)`: a statement written on its own
/// that runs as part of a larger one, after `by` parameters of the other parts.
pub fn shift_parameters(sql: &str, by: usize) -> String {
    let mut shifted = String::with_capacity(sql.len() + 8);
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        shifted.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        match rest[..digits].parse::<usize>() {
            Ok(n) => shifted.push_str(&(n + by).to_string()),
            Err(_) => shifted.push_str(&rest[..digits]),
        }
        rest = &rest[digits..];
    }
    shifted.push_str(rest);
    shifted
}

/// The backend a connection talks to.
pub fn backend_of(conn: &Conn) -> Backend {
    if conn.backend_name().eq_ignore_ascii_case("postgresql") {
        Backend::Postgres
    } else {
        Backend::Sqlite
    }
}

/// Begins a write transaction. On SQLite it takes the write lock from its first
/// statement (`BEGIN IMMEDIATE`), so it never fails on a lock upgrade halfway through.
pub async fn write(db: &Db) -> Result<Tx> {
    Ok(match db.backend {
        Backend::Sqlite => db.write.begin_with("BEGIN IMMEDIATE").await?,
        Backend::Postgres => db.write.begin().await?,
    })
}

/// Locks a row of `table` by id for the rest of the transaction; false when it does not
/// exist. Read-modify-write paths call it first, so concurrent writers of one row take
/// turns on PostgreSQL (SQLite's writers take turns anyway). An UPDATE rather than
/// `SELECT ... FOR UPDATE` because both backends understand it.
pub async fn lock_row(conn: &mut Conn, table: Table, id: &str) -> Result<bool> {
    let sql = format!(
        "UPDATE {} SET version = version WHERE id = $1",
        table.name()
    );
    let done = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// Takes the lock named `name` for the rest of the transaction, so that replicas doing
/// one thing take turns (a PostgreSQL advisory lock). A no-op on SQLite, whose writers
/// take turns anyway.
pub async fn lock_named(conn: &mut Conn, name: &str) -> Result<()> {
    if backend_of(conn) == Backend::Sqlite {
        return Ok(());
    }
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))::text")
        .bind(name)
        .execute(conn)
        .await?;
    Ok(())
}

/// ` FOR SHARE` on PostgreSQL, nothing on SQLite: ends a read whose rows must stay as
/// read for the rest of the transaction. They cannot be deleted or locked by [`lock_row`]
/// meanwhile, while other sharers go on: creating a participant reads its tenant, cells
/// and dataspace profiles so, and deleting one of them cannot slip in between the check
/// and the insert. SQLite's writers take turns anyway.
pub fn for_share(conn: &Conn) -> &'static str {
    match backend_of(conn) {
        Backend::Postgres => " FOR SHARE",
        Backend::Sqlite => "",
    }
}

/// Tables [`lock_row`] can lock.
#[derive(Debug, Clone, Copy)]
pub enum Table {
    /// `tenants`.
    Tenants,
    /// `cells`.
    Cells,
    /// `participant_profiles`.
    ParticipantProfiles,
    /// `orchestrations`.
    Orchestrations,
    /// `dataspace_profiles`.
    DataspaceProfiles,
    /// `drains`.
    Drains,
    /// `rebalance_plans`.
    RebalancePlans,
    /// `rollouts`.
    Rollouts,
    /// `tenant_decommissions`.
    TenantDecommissions,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Self::Tenants => "tenants",
            Self::Cells => "cells",
            Self::ParticipantProfiles => "participant_profiles",
            Self::Orchestrations => "orchestrations",
            Self::DataspaceProfiles => "dataspace_profiles",
            Self::Drains => "drains",
            Self::RebalancePlans => "rebalance_plans",
            Self::Rollouts => "rollouts",
            Self::TenantDecommissions => "tenant_decommissions",
        }
    }
}

/// Moves a long-running operation's row (a drain, a rebalance plan) to `state` with
/// `detail`, bumping its version.
pub async fn set_operation_state(
    conn: &mut Conn,
    table: Table,
    id: &str,
    state: &str,
    detail: Option<&str>,
) -> Result<()> {
    let sql = format!(
        "UPDATE {} SET state = $1, detail = $2, version = version + 1, updated_at = $3 WHERE id = $4",
        table.name()
    );
    sqlx::query(AssertSqlSafe(sql))
        .bind(state)
        .bind(detail)
        .bind(crate::model::now())
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Whether a failed statement left nothing behind and is worth sending again as it was:
/// PostgreSQL chose this transaction as a deadlock's victim (40P01) or could not serialise
/// it (40001), SQLite found the database locked, or no connection came free in time.
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(e) => matches!(
            e.code().as_deref(),
            // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes.
            Some("40P01" | "40001" | "5" | "6" | "261" | "262" | "517")
        ),
        _ => false,
    }
}

/// Whether PostgreSQL stopped a statement at its `statement_timeout` (57014).
pub fn is_query_timeout(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.code().as_deref() == Some("57014"))
}

/// A database URL fit for logs and errors: without its password.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(_) => url.to_string(),
        Err(_) => "<unparseable URL>".into(),
    }
}

/// `value` as the JSON text a column stores. Our own model types always serialise; a
/// failure is still an error, never a stored `null`.
pub fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|e| ManagerError::Corrupt(format!("not storable as JSON: {e}")))
}

/// Reads a stored JSON column; text that does not parse is [`ManagerError::Corrupt`],
/// naming `what`.
pub fn from_json<T: DeserializeOwned>(text: &str, what: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| ManagerError::Corrupt(format!("{what}: {e}")))
}

/// One page of results and the total they were cut from.
#[derive(Debug, Clone)]
pub struct Paged<T> {
    /// The rows of this page, sorted by id.
    pub items: Vec<T>,
    /// How many rows there are in all, for `X-Total-Count` and the `Link` header.
    pub total: Total,
    /// The page these items are.
    pub page: Page,
}

impl<T> Paged<T> {
    /// A page of `items` and the total: counted by `count` (a count capped at
    /// [`COUNT_LIMIT`] + 1, see [`Total::counted`]) only when the page cannot tell it
    /// ([`Page::total_if_known`]), which spares a scan of every match for the many queries
    /// whose matches fit in one page.
    pub async fn counting_if_needed(
        items: Vec<T>,
        page: Page,
        count: impl std::future::Future<Output = Result<i64>>,
    ) -> Result<Self> {
        let total = match page.total_if_known(items.len()) {
            Some(total) => total,
            None => Total::counted(count.await?),
        };
        Ok(Self { items, total, page })
    }
}

/// One page of `select` (a `SELECT ... FROM table` without WHERE), sorted by id, and
/// how many rows there are in all (counted up to [`COUNT_LIMIT`]); `filter` keeps the
/// rows whose column equals a value.
pub async fn paged(
    db: &Db,
    select: &str,
    filter: Option<(&'static str, &str)>,
    page: Page,
) -> Result<(Vec<Row>, Total)> {
    let condition = match filter {
        Some((column, _)) => format!("{column} = $1"),
        None => "$1 = $1".into(),
    };
    let value = filter.map_or("", |(_, value)| value).to_string();
    let from = select.find(" FROM ").map_or(select, |at| &select[at..]);
    let mut conn = db.acquire().await?;
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "{select} WHERE {condition} ORDER BY id LIMIT $2 OFFSET $3"
    )))
    .bind(&value)
    .bind(page.limit)
    .bind(page.offset)
    .fetch_all(&mut *conn)
    .await?;
    let count = async {
        Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM (SELECT 1{from} WHERE {condition} LIMIT $2) AS matches"
        )))
        .bind(&value)
        .bind(COUNT_LIMIT + 1)
        .fetch_one(&mut *conn)
        .await?)
    };
    let paged = Paged::counting_if_needed(rows, page, count).await?;
    Ok((paged.items, paged.total))
}

/// Runs a `SELECT COUNT(*)` (such as [`cfm_query::Predicate::select_count`] builds) on
/// `executor`: the query pool for an API predicate, the caller's transaction for a guard.
pub async fn count<'e, E>(
    executor: E,
    count: sqlx::query::Query<'static, Any, sqlx::any::AnyArguments>,
) -> Result<i64>
where
    E: Executor<'e, Database = Any>,
{
    let row = count.fetch_one(executor).await?;
    Ok(sqlx::Row::try_get(&row, 0)?)
}

/// Reads a value of the `meta` table.
pub async fn meta(conn: &mut Conn, key: &str) -> Result<Option<String>> {
    Ok(sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
        .bind(key)
        .fetch_optional(conn)
        .await?)
}

/// Sets a value of the `meta` table, replacing any before.
pub async fn set_meta(conn: &mut Conn, key: &str, value: &str) -> Result<()> {
    sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
        .bind(key)
        .bind(value)
        .execute(conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn parameters_are_renumbered_and_nothing_else() {
        assert_eq!(
            super::shift_parameters("SET a = $1, b = $12 WHERE c = '$' AND d = $2", 11),
            "SET a = $12, b = $23 WHERE c = '$' AND d = $13"
        );
    }

    /// Every statement of a batch runs, in order, each reading the one list of numbered
    /// parameters; the rows come back from whichever statements return them.
    #[tokio::test]
    async fn a_sqlite_batch_runs_every_statement_with_shared_parameters() {
        use sqlx::Row;
        let dir = tempfile::tempdir().unwrap();
        let db = super::open_sqlite(&dir.path().join("cfm.db"))
            .await
            .unwrap();
        let mut tx = super::write(&db).await.unwrap();
        sqlx::query("CREATE TABLE pairs (k TEXT PRIMARY KEY, v INTEGER)")
            .execute(&mut *tx)
            .await
            .unwrap();
        let insert =
            "INSERT INTO pairs (k, v) VALUES ($1, $2) ON CONFLICT (k) DO NOTHING RETURNING v";
        let sql = super::sqlite_batch(&[
            insert,
            "UPDATE pairs SET v = v + $3 WHERE k = $1",
            "INSERT INTO pairs (k, v) VALUES ($1 || '-copy', $3) ON CONFLICT (k) DO NOTHING",
        ]);
        let mut returned = Vec::new();
        for _ in 0..2 {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind("a")
                .bind(1_i64)
                .bind(10_i64)
                .fetch_all(&mut *tx)
                .await
                .unwrap();
            returned.push(
                rows.iter()
                    .map(|r| r.get::<i64, _>("v"))
                    .collect::<Vec<_>>(),
            );
        }
        // The second time the first insert finds its row and returns none; the rest run.
        assert_eq!(returned, [vec![1], vec![]]);
        let pairs: Vec<(String, i64)> = sqlx::query_as("SELECT k, v FROM pairs ORDER BY k")
            .fetch_all(&mut *tx)
            .await
            .unwrap();
        assert_eq!(pairs, [("a".to_string(), 21), ("a-copy".to_string(), 10)]);
    }

    /// What the engine and the API run there shares one CPU with the write connection,
    /// and the thread ends with the last handle on the database.
    #[tokio::test]
    async fn sqlite_write_transactions_run_on_a_thread_pinned_to_one_cpu() {
        let dir = tempfile::tempdir().unwrap();
        let db = super::open_sqlite(&dir.path().join("cfm.db"))
            .await
            .unwrap();
        let (name, cpus) = db
            .on_writer(async {
                let allowed = rustix::thread::sched_getaffinity(None).unwrap();
                let cpus = (0..rustix::thread::CpuSet::MAX_CPU)
                    .filter(|&cpu| allowed.is_set(cpu))
                    .count();
                Ok((std::thread::current().name().map(String::from), cpus))
            })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("cfm-sqlite-writer"));
        assert_eq!(cpus, 1);
        // A transaction started here commits there as anywhere else.
        let writer = db.clone();
        db.on_writer(async move {
            let mut tx = super::write(&writer).await?;
            sqlx::query("CREATE TABLE written (id INTEGER)")
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
        .unwrap();
        let tables: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_master WHERE name = 'written'")
                .fetch_one(db.read())
                .await
                .unwrap();
        assert_eq!(tables, 1);

        let runtime = db.writer_runtime().unwrap().clone();
        db.close().await;
        drop(db);
        // Stopped: work spawned there now is dropped instead of run.
        let mut stopped = false;
        for _ in 0..100 {
            if runtime.spawn(async {}).await.is_err() {
                stopped = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(stopped, "the writer thread outlived its database");
    }
}
