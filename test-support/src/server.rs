//! `cfm serve` on a free loopback port with a fresh data directory.

use crate::*;

/// A `cfm serve` process with its own data directory (and scratch database on
/// PostgreSQL), killed on drop.
pub struct Server {
    process: Replica,
    token: String,
    // After the process (Replica's Drop kills it), so its connections are gone and its
    // log can still be shown.
    scratch: Option<ScratchDatabase>,
    dir: tempfile::TempDir,
}

impl Server {
    /// Starts `cfm serve` on a free loopback port with a fresh data directory and the
    /// embedded database.
    pub async fn start(args: &[&str]) -> Server {
        Self::start_on(TestBackend::Sqlite, args).await
    }

    /// Starts `cfm serve` on `backend`: PostgreSQL gets a scratch database of its own.
    pub async fn start_on(backend: TestBackend, args: &[&str]) -> Server {
        Self::start_logging(backend, args, "info").await
    }

    /// Starts `cfm serve` on `backend` with `RUST_LOG` set to `filter`.
    pub async fn start_logging(backend: TestBackend, args: &[&str], filter: &str) -> Server {
        let plugins = plugins_config();
        let dir = tempfile::tempdir().unwrap();
        let scratch = backend.scratch().await;
        let data = dir.path().join("data");
        let mut command: Vec<String> = vec![
            "serve".into(),
            "--data-dir".into(),
            data.display().to_string(),
        ];
        command.extend(["--listen", "127.0.0.1:0"].map(String::from));
        if let Some(db) = &scratch {
            command.extend(["--database-url".to_string(), db.url().to_string()]);
        }
        command.extend(args.iter().map(|s| s.to_string()));
        // Named, not left to `cfm serve`'s default beside its binary: `CFM_BIN` may name
        // a copy anywhere.
        if !args
            .iter()
            .any(|a| *a == "--plugins" || a.starts_with("--plugins="))
        {
            command.extend(["--plugins".to_string(), plugins.display().to_string()]);
        }
        let process = Replica::start_logging(command, dir.path().join("serve.log"), filter);
        let token = std::fs::read_to_string(data.join("admin.token"))
            .unwrap()
            .trim()
            .to_string();
        Server {
            process,
            token,
            scratch,
            dir,
        }
    }

    /// An API client sending the admin token.
    pub fn client(&self) -> Api {
        Api {
            http: reqwest::Client::new(),
            base: format!("{}/api/v1alpha1", self.base()),
            token: self.token.clone(),
        }
    }

    /// The server's address, `http://127.0.0.1:<port>`.
    pub fn base(&self) -> &str {
        self.process.base.as_deref().unwrap_or_default()
    }

    /// The scratch database's URL, when the server runs on PostgreSQL.
    pub fn database_url(&self) -> Option<&str> {
        self.scratch.as_ref().map(|db| db.url())
    }

    /// The server's data directory (signing key, admin token, embedded database).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Everything the server logged so far, across restarts.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// A token signed with this server's key, carrying only `scopes`.
    pub fn token_with(&self, scopes: &[&str]) -> String {
        let auth = cfm_manager::auth::Auth::load_or_create(&self.data_dir()).unwrap();
        auth.issue("test", scopes, 600).unwrap()
    }

    /// A token signed with this server's key, confined to `tenant`, carrying `scopes`.
    pub fn tenant_token(&self, tenant: &str, scopes: &[&str]) -> String {
        let auth = cfm_manager::auth::Auth::load_or_create(&self.data_dir()).unwrap();
        auth.issue_for("tenant", scopes, Some(tenant), 600).unwrap()
    }

    /// A client that sends `token` instead of the admin token.
    pub fn client_with(&self, token: String) -> Api {
        Api {
            token,
            ..self.client()
        }
    }

    /// SIGKILL: no shutdown code runs, as in a crash.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// SIGTERM, then waits for the server to exit ([`Replica::terminate`]).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.process.terminate()
    }

    /// Peak resident memory of the process so far, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.process.peak_rss_kib()
    }

    /// Resident memory of the process now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.process.rss_kib()
    }

    /// Starts a new process on the same data directory with the same arguments.
    pub async fn restart(mut self) -> Server {
        self.process.restart();
        self
    }
}
