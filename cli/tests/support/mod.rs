//! Starting, killing and talking to real `cfm` processes: `cfm serve`, and the
//! `cfm manager` / `cfm agent` replicas of a distributed deployment.
//!
//! Shared by several test crates and the benches; each uses only part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cfm_manager::testing::{ScratchDatabase, TestBackend};
use serde_json::{Value, json};

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
        plugins_config();
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

    pub fn client(&self) -> Api {
        Api {
            http: reqwest::Client::new(),
            base: format!("{}/api/v1alpha1", self.base()),
            token: self.token.clone(),
        }
    }

    pub fn base(&self) -> &str {
        self.process.base.as_deref().unwrap_or_default()
    }

    /// The scratch database's URL, when the server runs on PostgreSQL.
    pub fn database_url(&self) -> Option<&str> {
        self.scratch.as_ref().map(|db| db.url())
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

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

    /// Peak resident memory of the process so far, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.process.peak_rss_kib()
    }

    /// Starts a new process on the same data directory with the same arguments.
    pub async fn restart(mut self) -> Server {
        self.process.restart();
        self
    }
}

#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

/// A cell with an active deployment of a fresh dataspace profile.
pub struct Environment {
    pub cell_id: String,
    pub dataspace_id: String,
}

impl Api {
    /// `token`: None sends the admin token, `Some("")` none at all, `Some(t)` that one.
    pub async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        match token.unwrap_or(&self.token) {
            "" => request,
            token => request.bearer_auth(token),
        }
        .send()
        .await
        .unwrap()
    }

    /// The status of a POST the server refuses before reading it all. The server then
    /// closes the connection, so each try uses a connection of its own, and a reset seen
    /// while the body is still being sent is retried, never counted as an answer.
    pub async fn status_of_large_post(&self, path: &str, body: &str) -> u16 {
        for _ in 0..5 {
            let sent = reqwest::Client::new()
                .post(format!("{}{path}", self.base))
                .bearer_auth(&self.token)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await;
            if let Ok(response) = sent {
                return response.status().as_u16();
            }
        }
        panic!("POST {path} never got an answer");
    }

    /// Any request with an optional JSON body and `If-Match`; the status and the JSON
    /// answer (null when the body is empty).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        if_match: Option<&str>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        if let Some(version) = if_match {
            request = request.header("if-match", version);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
        };
        (status, value)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.raw(reqwest::Method::GET, path, None, None).await
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let response = self.get(path).await;
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.unwrap()
    }

    pub async fn post_ok(&self, path: &str, body: Value, status: u16) -> Value {
        let response = self
            .raw(reqwest::Method::POST, path, Some(&body.to_string()), None)
            .await;
        let got = response.status().as_u16();
        let text = response.text().await.unwrap();
        assert_eq!(got, status, "POST {path}: {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// The orchestrations of `orchestration_type` (`deploy` or `dispose`, short for
    /// `cfm.orchestration.vpa.*`) correlated with a participant profile.
    pub async fn orchestrations_of(&self, profile_id: &str, orchestration_type: &str) -> Value {
        let predicate = format!(
            "correlationId = '{profile_id}' AND orchestrationType = 'cfm.orchestration.vpa.{orchestration_type}'"
        );
        self.post_ok(
            "/orchestrations/query",
            json!({ "predicate": predicate }),
            200,
        )
        .await
    }

    pub async fn dataspace_with_cell(&self, external_id: &str) -> Environment {
        let cell = self
            .post_ok("/cells", json!({"externalId": external_id}), 201)
            .await;
        let dataspace = self
            .post_ok(
                "/dataspace-profiles",
                json!({"dataspaceSpec": {"protocolStack": ["dsp-2025-1", "dcp-2025-1"],
                       "credentialSpecs": [{"id": "membership", "type": "MembershipCredential",
                                            "issuer": "did:web:issuer.example", "format": "vc20-bssl/jwt"}]}}),
                201,
            )
            .await;
        let env = Environment {
            cell_id: cell["id"].as_str().unwrap().into(),
            dataspace_id: dataspace["id"].as_str().unwrap().into(),
        };
        self.post_ok(
            &format!("/dataspace-profiles/{}/deployments", env.dataspace_id),
            json!({"profileId": env.dataspace_id, "cellId": external_id}),
            202,
        )
        .await;
        env
    }

    /// Definitions for crash tests (on a server started with `--no-seed`): the built-in
    /// activity types plus `example.slow` (200 ms) between vault and k8s, so every
    /// onboarding has work in flight long enough to be interrupted. `dispose` adds a
    /// dispose template.
    pub async fn slow_template(&self, dispose: bool) {
        for activity_type in [
            "cfm.vault.credentials",
            "cfm.k8s.runtime",
            "cfm.dns.routing",
            "example.slow",
        ] {
            self.post_ok(
                "/activity-definitions",
                json!({"type": activity_type, "description": "test"}),
                201,
            )
            .await;
        }
        let mut activities = json!({"cfm.orchestration.vpa.deploy": [
            {"id": "vault", "type": "cfm.vault.credentials"},
            {"id": "slow", "type": "example.slow", "dependsOn": ["vault"]},
            {"id": "k8s", "type": "cfm.k8s.runtime", "dependsOn": ["slow"]},
            {"id": "dns", "type": "cfm.dns.routing"}]});
        if dispose {
            activities["cfm.orchestration.vpa.dispose"] = json!([
                {"id": "dns", "type": "cfm.dns.routing"},
                {"id": "k8s", "type": "cfm.k8s.runtime"},
                {"id": "slow", "type": "example.slow"},
                {"id": "vault", "type": "cfm.vault.credentials", "dependsOn": ["k8s", "slow"]}]);
        }
        self.post_ok(
            "/orchestration-definitions",
            json!({"activities": activities}),
            201,
        )
        .await;
    }

    /// Decommissions a participant (DELETE answered 202) and waits until its VPAs are
    /// disposed.
    pub async fn dispose(&self, tenant_id: &str, profile_id: &str) {
        let path = format!("/tenants/{tenant_id}/participant-profiles/{profile_id}");
        let disposing = self.raw(reqwest::Method::DELETE, &path, None, None).await;
        assert_eq!(disposing.status(), 202);
        self.wait_vpas(tenant_id, profile_id, "disposed", Duration::from_secs(30))
            .await;
    }

    /// Polls a profile until its four VPAs are active; fails on error or timeout.
    pub async fn wait_active(&self, tenant_id: &str, profile_id: &str, timeout: Duration) -> Value {
        self.wait_vpas(tenant_id, profile_id, "active", timeout)
            .await
    }

    /// Polls a profile until its four VPAs are in `state`; fails on error or timeout.
    pub async fn wait_vpas(
        &self,
        tenant_id: &str,
        profile_id: &str,
        state: &str,
        timeout: Duration,
    ) -> Value {
        let started = Instant::now();
        loop {
            let profile = self
                .get_json(&format!(
                    "/tenants/{tenant_id}/participant-profiles/{profile_id}"
                ))
                .await;
            assert_eq!(profile["error"], false, "{profile}");
            let vpas = profile["vpas"].as_array().unwrap();
            if vpas.len() == 4 && vpas.iter().all(|v| v["state"] == state) {
                return profile;
            }
            assert!(
                started.elapsed() < timeout,
                "not {state} after {timeout:?}: {profile}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn count_not_active(&self, tenant_id: &str) -> usize {
        let profiles = self
            .get_json(&format!("/tenants/{tenant_id}/participant-profiles"))
            .await;
        profiles
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| {
                p["vpas"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|v| v["state"] != "active")
            })
            .count()
    }
}

/// The audit records the agent host wrote.
pub fn read_audit(data_dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(data_dir.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Per object, how many audit records over the logs of `dirs` say each effect
/// (`created`, `unchanged`, ...).
pub fn audit_effects(dirs: &[PathBuf]) -> HashMap<String, HashMap<String, usize>> {
    let mut effects: HashMap<String, HashMap<String, usize>> = HashMap::new();
    for dir in dirs {
        for record in read_audit(dir) {
            if let (Some(target), Some(effect)) =
                (record["target"].as_str(), record["effect"].as_str())
            {
                *effects
                    .entry(target.into())
                    .or_default()
                    .entry(effect.into())
                    .or_default() += 1;
            }
        }
    }
    effects
}

/// The objects every onboarding writes.
pub fn onboarding_targets(id: &str) -> [String; 5] {
    [
        format!("participants/{id}/api-key"),
        format!("participants/{id}/slow-marker"),
        format!("Namespace//cfm-{id}"),
        format!("ConfigMap/cfm-{id}/participant-context"),
        format!("{id}.participants.cfm.local CNAME"),
    ]
}

/// Each object was written by exactly one run: created once, never touched again.
pub fn assert_each_written_once(effects: &HashMap<String, HashMap<String, usize>>, ids: &[String]) {
    for id in ids {
        for target in onboarding_targets(id) {
            let seen = effects.get(&target).cloned().unwrap_or_default();
            assert_eq!(
                seen,
                HashMap::from([("created".to_string(), 1)]),
                "{target}"
            );
        }
    }
}

/// Each object was created at most once; runs after the first found it in place. (A
/// host killed between its write and the audit record leaves only the later runs'
/// `unchanged` records.)
pub fn assert_each_created_at_most_once(
    effects: &HashMap<String, HashMap<String, usize>>,
    ids: &[String],
) {
    for id in ids {
        for target in onboarding_targets(id) {
            let seen = effects.get(&target).cloned().unwrap_or_default();
            let created = seen.get("created").copied().unwrap_or(0);
            assert!(created <= 1, "{target} created {created} times: {seen:?}");
            assert!(!seen.is_empty(), "{target} never written");
            let others: Vec<&String> = seen
                .keys()
                .filter(|k| *k != "created" && *k != "unchanged")
                .collect();
            assert!(others.is_empty(), "{target}: {seen:?}");
        }
    }
}

/// A TCP forwarder on a free loopback port in front of `target`: closed, it drops new
/// connections and cuts open ones, as a stopped server would; opened again, it forwards.
pub struct Gate {
    pub port: u16,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Gate {
    pub async fn start(target: std::net::SocketAddr) -> Gate {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let (gate_open, cuts) = (open.clone(), cut.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !gate_open.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut cut = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Gate {
            port,
            open,
            cut,
            task,
        }
    }

    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn close(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    pub fn open(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `cfm serve` flags that keep plugins' secrets in `bao` (reached at `vault_address`, its
/// token written into `dir`) and their DNS records in `bind`.
pub fn production_backends(
    dir: &Path,
    bao: &cfm_host::testing::OpenBao,
    vault_address: &str,
    bind: &cfm_host::testing::Bind,
    kube: &cfm_standins::kubernetes::KubeApi,
) -> Vec<String> {
    let token_file = dir.join("vault.token");
    std::fs::write(&token_file, &bao.token).unwrap();
    [
        "--vault-addr",
        vault_address,
        "--vault-token-file",
        &token_file.display().to_string(),
        "--dns-server",
        &bind.address().to_string(),
        "--dns-tsig-key-file",
        &bind.key_file.display().to_string(),
        "--kubernetes",
        &kube.url,
    ]
    .map(String::from)
    .to_vec()
}

/// The role id and secret id handed to participant `pc`'s runtime: the Secret
/// `vault-access` in its namespace, as the API server stores it (base64 `data`).
pub fn handed_over(kube: &cfm_standins::kubernetes::KubeApi, pc: &str) -> (String, String) {
    use base64::Engine;
    let secret = kube
        .object("v1", "secrets", &format!("cfm-{pc}"), "vault-access")
        .unwrap_or_else(|| panic!("no vault-access Secret for {pc}: {:?}", kube.names()));
    let field = |name: &str| {
        let encoded = secret["data"][name].as_str().unwrap();
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .unwrap(),
        )
        .unwrap()
    };
    (field("roleId"), field("secretId"))
}

/// A copy of the built-in plugins' configuration in `dir`, with plugin paths made
/// absolute and `edit` applied to each `[[plugin]]` table.
pub fn plugins_config_with(dir: &Path, mut edit: impl FnMut(&mut toml::Table)) -> PathBuf {
    let source = plugins_config();
    let plugin_dir = source.parent().unwrap();
    let mut config: toml::Table =
        toml::from_str(&std::fs::read_to_string(&source).unwrap()).unwrap();
    for plugin in config["plugin"].as_array_mut().unwrap() {
        let plugin = plugin.as_table_mut().unwrap();
        let path = plugin_dir.join(plugin["path"].as_str().unwrap());
        plugin.insert("path".into(), path.display().to_string().into());
        edit(plugin);
    }
    let path = dir.join("plugins.toml");
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    path
}

/// For [`plugins_config_with`]: the vault plugin issues each runtime a credential for its
/// own secrets (which needs a grant of the participant's whole folder).
pub fn runtime_access(plugin: &mut toml::Table) {
    if plugin["name"].as_str() != Some("vault") {
        return;
    }
    plugin["settings"]
        .as_table_mut()
        .unwrap()
        .insert("runtimeAccess".into(), true.into());
    plugin["grants"].as_table_mut().unwrap().insert(
        "secrets".into(),
        toml::Value::Array(vec!["participants/{participantContextId}/**".into()]),
    );
}

/// The built-in plugins' configuration, built by scripts/build-plugins.sh.
pub fn plugins_config() -> PathBuf {
    let plugins = Path::new(env!("CARGO_BIN_EXE_cfm"))
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("plugins/plugins.toml");
    assert!(
        plugins.exists(),
        "{} is missing: build the plugins with scripts/build-plugins.sh",
        plugins.display()
    );
    plugins
}

/// The JetStream server the tests use (`CFM_TEST_NATS_URL`; scripts/services.sh starts it).
pub fn nats_url() -> String {
    std::env::var("CFM_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// One `cfm manager` or `cfm agent` process of a distributed deployment, restartable
/// with the same arguments. Its log is appended to across restarts.
pub struct Replica {
    child: Child,
    args: Vec<String>,
    log: PathBuf,
    /// `RUST_LOG` of the process.
    filter: String,
    /// The API address, for a manager.
    pub base: Option<String>,
}

impl Replica {
    /// Starts `cfm <args>` and waits until it says it is ready.
    pub fn start(args: Vec<String>, log: PathBuf) -> Replica {
        Self::start_logging(args, log, "info")
    }

    /// Starts `cfm <args>` with `RUST_LOG` set to `filter`.
    pub fn start_logging(args: Vec<String>, log: PathBuf, filter: &str) -> Replica {
        let (child, base) = Self::spawn(&args, &log, filter);
        Replica {
            child,
            args,
            log,
            filter: filter.to_string(),
            base,
        }
    }

    fn spawn(args: &[String], log: &Path, filter: &str) -> (Child, Option<String>) {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_cfm"))
            .args(args)
            .env("RUST_LOG", filter)
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .unwrap();
        // Read to the last line it prints: closing the pipe earlier would fail that print.
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut base = None;
        loop {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(log).unwrap_or_default();
                panic!("cfm {} exited before it was ready:\n{log}", args[0]);
            };
            if let Some(url) = line.strip_prefix("cfm listening on ") {
                base = Some(url.to_string());
            }
            if line.starts_with("admin token: ") || line.starts_with("cfm agent running") {
                return (child, base);
            }
        }
    }

    /// SIGKILL: no shutdown code runs, as in a crash.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Kills it (if it runs) and starts it again.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, base) = Self::spawn(&self.args, &self.log, &self.filter);
        self.child = child;
        self.base = base;
    }

    /// An API client of a manager replica, with the admin token of `data_dir`.
    pub fn client(&self, data_dir: &Path) -> Api {
        let token = std::fs::read_to_string(data_dir.join("admin.token"))
            .unwrap()
            .trim()
            .to_string();
        Api {
            http: reqwest::Client::new(),
            base: format!("{}/api/v1alpha1", self.base.as_ref().expect("a manager")),
            token,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Peak resident memory of the process so far, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        peak_rss_kib(self.child.id())
    }
}

/// `VmHWM` of a live process, in KiB (0 when it cannot be read).
pub fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- cfm {} log ---\n{}", self.args[0], self.log());
        }
    }
}

/// Managers and agents of one deployment, in one scratch directory.
pub struct Deployment {
    common: Vec<String>,
    /// The JetStream namespace the replicas share (`--nats-namespace`).
    pub namespace: String,
    pub managers: Vec<Replica>,
    pub agents: Vec<Replica>,
    // Dropped after the replicas, so their connections are gone and their logs can
    // still be shown.
    pub scratch: ScratchDatabase,
    dir: tempfile::TempDir,
}

impl Deployment {
    /// Starts the managers; agents come with [`Deployment::start_agents`].
    pub async fn start(nats: &str, managers: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let scratch = ScratchDatabase::create().await;
        let namespace = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let manager_dir = dir.path().join("manager");
        let mut this = Deployment {
            common: [
                "--nats-url",
                nats,
                "--nats-namespace",
                &namespace,
                "--ack-wait-secs",
                "2",
            ]
            .map(String::from)
            .to_vec(),
            namespace: namespace.clone(),
            managers: Vec::new(),
            agents: Vec::new(),
            scratch,
            dir,
        };
        for i in 0..managers {
            // One data directory: the replicas share the API signing key.
            let mut args = this.args("manager");
            args.extend(
                [
                    "--data-dir",
                    manager_dir.to_str().unwrap(),
                    "--database-url",
                    this.scratch.url(),
                ]
                .map(String::from),
            );
            args.extend(["--listen", "127.0.0.1:0", "--no-seed"].map(String::from));
            let log = this.dir.path().join(format!("manager-{i}.log"));
            this.managers.push(Replica::start(args, log));
        }
        this
    }

    /// `dirs`: each agent's data directory (equal names share one, as agents do that
    /// share real backends).
    pub fn start_agents(&mut self, dirs: &[&str], concurrency: usize) {
        for dir in dirs {
            let mut args = self.args("agent");
            let data = self.dir.path().join(dir);
            args.extend(["--data-dir".to_string(), data.display().to_string()]);
            args.extend([
                "--plugins".to_string(),
                plugins_config().display().to_string(),
            ]);
            args.extend(["--concurrency".to_string(), concurrency.to_string()]);
            let log = self
                .dir
                .path()
                .join(format!("agent-{}.log", self.agents.len()));
            self.agents.push(Replica::start(args, log));
        }
    }

    fn args(&self, command: &str) -> Vec<String> {
        let mut args = vec![command.to_string()];
        args.extend(self.common.iter().cloned());
        args
    }

    pub fn api(&self, manager: usize) -> Api {
        self.managers[manager].client(&self.dir.path().join("manager"))
    }

    pub fn agent_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// The `p`th percentile (0–100) of `samples`; zero when there are none.
pub fn percentile(samples: &[Duration], p: usize) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted
        .get((sorted.len() * p / 100).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

/// A private nats-server with JetStream on a free loopback port, restartable (SIGKILL)
/// on the same port and store, killed on drop. Tests that restart the queue server use
/// one of these rather than the shared server on 4222.
pub struct JetStreamServer {
    child: Child,
    port: u16,
    store: tempfile::TempDir,
}

impl JetStreamServer {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let store = tempfile::tempdir().unwrap();
        let child = Self::spawn(port, store.path());
        JetStreamServer { child, port, store }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILL; [`JetStreamServer::restart`] brings it back.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGKILL (if it runs), then a new server on the same port and store.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(self.port, self.store.path());
    }

    /// Restarts it with its storage gone, as after losing a disk.
    pub fn restart_without_storage(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::remove_dir_all(self.store.path()).unwrap();
        std::fs::create_dir(self.store.path()).unwrap();
        self.child = Self::spawn(self.port, self.store.path());
    }

    fn spawn(port: u16, store: &Path) -> Child {
        let mut tries = 0;
        loop {
            let mut child = Command::new("nats-server")
                .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                .arg(store)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect(
                    "nats-server (Debian package nats-server; scripts/services.sh installs it)",
                );
            let started = Instant::now();
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
                && started.elapsed() < Duration::from_secs(10)
                && child.try_wait().ok().flatten().is_none()
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return child;
            }
            // The port can be held for a moment after a kill: try again.
            let _ = child.kill();
            let _ = child.wait();
            tries += 1;
            assert!(tries < 5, "nats-server did not start on port {port}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for JetStreamServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    /// Like [`Replica::restart`], but a process that exits (or stays silent for 60 s)
    /// before it is ready is an error, not a panic, so a caller can try again.
    pub fn try_restart(&mut self) -> Result<(), String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| e.to_string())?;
        let mut child = Command::new(env!("CARGO_BIN_EXE_cfm"))
            .args(&self.args)
            .env("RUST_LOG", &self.filter)
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .map_err(|e| e.to_string())?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        // A thread reads every line it prints (closing the pipe early would fail a
        // print), so waiting for readiness can time out.
        let (lines, ready) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let started = Instant::now();
        let mut base = None;
        loop {
            let left = Duration::from_secs(60).saturating_sub(started.elapsed());
            match ready.recv_timeout(left) {
                Ok(line) => {
                    if let Some(url) = line.strip_prefix("cfm listening on ") {
                        base = Some(url.to_string());
                    }
                    if line.starts_with("admin token: ") || line.starts_with("cfm agent running") {
                        break;
                    }
                }
                Err(_) => {
                    // The replica stays dead; the next try replaces it.
                    let _ = child.kill();
                    let _ = child.wait();
                    self.child = child;
                    return Err(format!("cfm {} was not ready", self.args[0]));
                }
            }
        }
        self.child = child;
        self.base = base;
        Ok(())
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Why a request got no answer.
#[derive(Debug)]
pub enum CallError {
    /// No connection: the request never reached a server.
    Unreachable(String),
    /// No answer in time: the server may still act on it.
    TimedOut(String),
    /// The connection broke after the request went out: it may have been acted on.
    Broken(String),
}

impl Api {
    /// A request that fails (Err) rather than panics when the server cannot be reached or
    /// does not answer within `timeout`: the status and the JSON answer (null when empty
    /// or not JSON).
    pub async fn try_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Result<(u16, Value), CallError> {
        let failed = |e: reqwest::Error| {
            let what = format!("{method} {path}: {e}");
            if e.is_connect() {
                CallError::Unreachable(what)
            } else if e.is_timeout() {
                CallError::TimedOut(what)
            } else {
                CallError::Broken(what)
            }
        };
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .timeout(timeout);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(failed)?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(failed)?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }
}

impl Deployment {
    /// Like [`Deployment::start_agents`], with the plugin configuration `plugins` and
    /// `extra` flags (production backends, say) for every agent.
    pub fn start_agents_with(
        &mut self,
        dirs: &[&str],
        concurrency: usize,
        plugins: &Path,
        extra: &[String],
    ) {
        for dir in dirs {
            let mut args = self.args("agent");
            let data = self.dir.path().join(dir);
            args.extend(["--data-dir".to_string(), data.display().to_string()]);
            args.extend(["--plugins".to_string(), plugins.display().to_string()]);
            args.extend(["--concurrency".to_string(), concurrency.to_string()]);
            args.extend(extra.iter().cloned());
            let log = self
                .dir
                .path()
                .join(format!("agent-{}.log", self.agents.len()));
            self.agents.push(Replica::start(args, log));
        }
    }

    /// The deployment's scratch directory (replica logs, agent data directories).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
