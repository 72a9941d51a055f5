//! Helpers for tests that run against a real PostgreSQL server (feature `testing`).
//!
//! The server is `CFM_TEST_POSTGRES_URL`, by default the local one the test script makes
//! sure is running (`postgres://postgres@127.0.0.1:5432/postgres`). Each test gets a
//! database of its own, dropped when it ends, so tests run in parallel and leave nothing.

// Test code: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sqlx::{Connection, Executor};

/// A fresh, empty database, dropped (with any connections still open) on drop.
pub struct ScratchDatabase {
    url: String,
    name: String,
}

impl ScratchDatabase {
    /// Creates the database. Panics with the reason when the server cannot be reached:
    /// a test that needs PostgreSQL must fail, never skip.
    pub async fn create() -> Self {
        let admin = admin_url();
        let name = format!("cfm_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| {
                panic!("PostgreSQL at {admin} is needed by this test and unreachable: {e}")
            });
        conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .expect("creating a scratch database");
        let mut url = url::Url::parse(&admin).expect("CFM_TEST_POSTGRES_URL is a URL");
        url.set_path(&name);
        Self {
            url: url.to_string(),
            name,
        }
    }

    /// The `postgres://` URL of the scratch database, for [`crate::store::Db::open`].
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any runtime (or inside one that must not block): use a
        // thread with a runtime of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&admin_url()).await?;
                conn.execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("could not drop scratch database {}: {e}", self.name);
        }
    }
}

fn admin_url() -> String {
    std::env::var("CFM_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestBackend {
    /// The embedded SQLite database in the data directory.
    Sqlite,
    /// A scratch database on the PostgreSQL server.
    Postgres,
}

impl TestBackend {
    /// The scratch database for PostgreSQL; keep it alive as long as the test runs.
    pub async fn scratch(self) -> Option<ScratchDatabase> {
        match self {
            Self::Sqlite => None,
            Self::Postgres => Some(ScratchDatabase::create().await),
        }
    }
}

/// Declares each listed `async fn scenario(backend: TestBackend)` as two tests,
/// `sqlite::scenario` and `postgres::scenario`: one conformance suite, both backends.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::testing::TestBackend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::testing::TestBackend::Postgres).await
                }
            )*
        }
    };
}

/// Generated predicate texts (see [`cfm_query::testing::predicates`]).
pub use cfm_query::testing::predicates;
