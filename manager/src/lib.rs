//! cfm's manager: the Tenant Manager (REST API over tenants, cells, dataspace and
//! participant profiles) and the Provision Manager (durable orchestration engine),
//! sharing one database.

pub mod api;
pub mod auth;
pub mod capability_calls;
pub mod data_dir;
pub mod error;
pub mod events;
pub mod lifecycle;
pub mod model;
pub mod provision;
pub mod queue;
pub mod seed;
pub mod store;
pub mod tenant;
#[cfg(feature = "testing")]
pub mod testing;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cfm_protocol::ActivityExecutor;

/// The predicate language of the query routes.
pub use cfm_query as query;
pub use error::{ManagerError, Result};
pub use provision::transport::run_distributed;
pub use provision::{Engine, EngineSettings};

/// How to open a [`Manager`]; the default is the embedded database and local tokens.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `postgres://...` replaces the embedded SQLite database of the data directory.
    pub database_url: Option<String>,
    /// An identity provider whose tokens are accepted besides local ones.
    pub auth: auth::AuthSettings,
    /// Retries, backoff and limits of the orchestration engine.
    pub engine: EngineSettings,
}

/// A manager over one data directory (signing key, admin token, and the embedded SQLite
/// database unless a database URL names another).
pub struct Manager {
    /// The orchestration engine, holding the database every part shares.
    pub engine: Engine,
    /// Issues and checks the API's bearer tokens.
    pub auth: auth::Auth,
    /// The file holding the admin token (`admin.token` in the data directory).
    pub token_path: PathBuf,
}

impl Manager {
    /// Opens the data directory, creating the database, signing key and admin token on
    /// first use.
    pub async fn open(data_dir: &Path, options: Options) -> Result<Self> {
        data_dir::create_private(data_dir)
            .map_err(|e| ManagerError::Io(format!("creating {}: {e}", data_dir.display())))?;
        let db = match &options.database_url {
            Some(url) => store::Db::open(url).await?,
            None => {
                let path = data_dir.join("cfm.db");
                data_dir::create_private_file(&path)
                    .map_err(|e| ManagerError::Io(format!("creating {}: {e}", path.display())))?;
                store::open_sqlite(&path).await?
            }
        };
        let auth = auth::Auth::load_or_create(data_dir)?
            .with_external(options.auth)
            .await?;
        let token_path = auth.ensure_admin_token(data_dir)?;
        Ok(Self {
            engine: Engine::new(db, options.engine)
                .with_hooks(Arc::new(tenant::profiles::ProfileLifecycle)),
            auth,
            token_path,
        })
    }

    /// Seeds the built-in activity definitions and default template where this database
    /// lacks them; returns whether anything was seeded (see [`seed`]).
    pub async fn seed(&self) -> Result<bool> {
        seed::seed(self.engine.db()).await
    }

    /// This manager's HTTP surface: the REST API, its OpenAPI document, the probes and
    /// the metrics.
    pub fn router(&self) -> axum::Router {
        self.router_with(Vec::new(), Vec::new())
    }

    /// [`Manager::router`] whose `/ready` also checks `probes` (the JetStream
    /// connection, the plugins of an agent host in the same process) and whose
    /// `/metrics` also takes `readings` (the JetStream consumers' lag).
    pub fn router_with(
        &self,
        probes: Vec<Arc<dyn api::Probe>>,
        readings: Vec<Arc<dyn api::Reading>>,
    ) -> axum::Router {
        api::router(api::AppState::new(api::Shared {
            engine: self.engine.clone(),
            auth: self.auth.clone(),
            observed: api::Observed::with_database(self.engine.db().clone(), probes, readings),
        }))
    }

    /// Agent workers running `executor` in this process, fed from the embedded queue. The
    /// work this manager's API starts afterwards reaches them in memory after its commit,
    /// as the activities that outcomes make due do.
    pub async fn embedded_worker(
        &mut self,
        executor: Arc<dyn ActivityExecutor>,
        settings: cfm_queue::worker::WorkerSettings,
    ) -> cfm_queue::worker::Worker {
        provision::transport::embedded_worker(&mut self.engine, executor, settings).await
    }
}
