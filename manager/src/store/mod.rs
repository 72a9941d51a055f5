//! The database: connection set-up, migrations and the helpers every store module shares.
//!
//! SQLite is the embedded default. Write transactions take the database lock up front
//! (`BEGIN IMMEDIATE`), so a transaction never fails on a lock upgrade halfway through.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::Sqlite;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::error::{ManagerError, Result};

pub type Tx = sqlx::Transaction<'static, Sqlite>;
pub type Conn = sqlx::SqliteConnection;

/// The database, as two pools. SQLite admits one writer at a time: writes go through a
/// one-connection pool so writers queue in order inside the process, instead of in
/// SQLite's sleep-and-retry busy handler (which cost 105 ms at p99 on participant
/// creation under load). Reads use a read-only pool of their own; under WAL they never
/// wait for the writer, and a write sent there by mistake fails loudly.
#[derive(Clone)]
pub struct Db {
    read: sqlx::SqlitePool,
    write: sqlx::SqlitePool,
}

impl Db {
    pub fn read(&self) -> &sqlx::SqlitePool {
        &self.read
    }

    /// For single-statement writes; transactions use [`write`].
    pub fn writer(&self) -> &sqlx::SqlitePool {
        &self.write
    }

    /// A read connection.
    pub async fn acquire(&self) -> Result<sqlx::pool::PoolConnection<Sqlite>, sqlx::Error> {
        self.read.acquire().await
    }
}

/// Opens (creating if needed) the SQLite database at `path` and brings its schema up to date.
pub async fn open_sqlite(path: &Path) -> Result<Db> {
    let url = format!("sqlite://{}", path.display());
    let options = SqliteConnectOptions::from_str(&url)?
        .foreign_keys(true)
        // WAL with NORMAL sync survives a killed process (not a power cut) at a fraction
        // of FULL's fsync cost; the outbox makes every write path idempotent anyway.
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(30));
    let write = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options.clone().create_if_missing(true))
        .await?;
    sqlx::migrate!("../migrations/sqlite").run(&write).await?;
    let read = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options.read_only(true))
        .await?;
    Ok(Db { read, write })
}

/// Begins a write transaction holding the write lock from its first statement.
pub async fn write(db: &Db) -> Result<Tx> {
    Ok(db.write.begin_with("BEGIN IMMEDIATE").await?)
}

pub fn to_json<T: Serialize + ?Sized>(value: &T) -> String {
    // Serialising our own model types cannot fail: they hold only strings, numbers and maps.
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

pub fn from_json<T: DeserializeOwned>(text: &str, what: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| ManagerError::Corrupt(format!("{what}: {e}")))
}

/// Paging of list routes: `offset` and `limit` (0 or over the maximum means the maximum).
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub offset: i64,
    pub limit: i64,
}

pub const MAX_PAGE: i64 = 10_000;

impl Page {
    pub fn new(offset: Option<i64>, limit: Option<i64>) -> Self {
        let limit = match limit {
            Some(l) if l > 0 && l <= MAX_PAGE => l,
            _ => MAX_PAGE,
        };
        Self {
            offset: offset.unwrap_or(0).max(0),
            limit,
        }
    }
}

impl Default for Page {
    fn default() -> Self {
        Self::new(None, None)
    }
}

/// One page of results and the total they were cut from.
#[derive(Debug, Clone)]
pub struct Paged<T> {
    pub items: Vec<T>,
    pub total: i64,
    pub page: Page,
}

/// Reads a value of the `meta` table.
pub async fn meta(conn: &mut Conn, key: &str) -> Result<Option<String>> {
    Ok(sqlx::query_scalar("SELECT value FROM meta WHERE key = ?")
        .bind(key)
        .fetch_optional(conn)
        .await?)
}

pub async fn set_meta(conn: &mut Conn, key: &str, value: &str) -> Result<()> {
    sqlx::query("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
        .bind(key)
        .bind(value)
        .execute(conn)
        .await?;
    Ok(())
}
