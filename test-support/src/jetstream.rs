//! A private nats-server with JetStream, for tests that restart the queue server.

use crate::*;

/// A private nats-server with JetStream on a free loopback port, restartable (SIGKILL)
/// on the same port and store, killed on drop. Tests that restart the queue server use
/// one of these rather than the shared server on 4222.
pub struct JetStreamServer {
    child: Child,
    port: u16,
    store: tempfile::TempDir,
    config: Option<PathBuf>,
}

impl JetStreamServer {
    /// Starts `nats-server -js` on a free port with an empty store; returns once it accepts
    /// connections.
    pub fn start() -> Self {
        Self::start_with_config("")
    }

    /// The same, with `config` (nats-server's configuration syntax, e.g. an
    /// `authorization { ... }` block) as its configuration file.
    pub fn start_with_config(config: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let store = tempfile::tempdir().unwrap();
        let config = (!config.is_empty()).then(|| {
            // Beside the store, not in it: restart_without_storage empties the store.
            let path = store.path().with_extension("conf");
            std::fs::write(&path, config).unwrap();
            path
        });
        let child = Self::spawn(port, store.path(), config.as_deref());
        JetStreamServer {
            child,
            port,
            store,
            config,
        }
    }

    /// The server's `nats://127.0.0.1:<port>` URL; it stays the same across restarts.
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
        self.child = Self::spawn(self.port, self.store.path(), self.config.as_deref());
    }

    /// Restarts it with its storage gone, as after losing a disk.
    pub fn restart_without_storage(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::remove_dir_all(self.store.path()).unwrap();
        std::fs::create_dir(self.store.path()).unwrap();
        self.child = Self::spawn(self.port, self.store.path(), self.config.as_deref());
    }

    fn spawn(port: u16, store: &Path, config: Option<&Path>) -> Child {
        let mut tries = 0;
        loop {
            let mut command = Command::new("nats-server");
            if let Some(config) = config {
                command.arg("-c").arg(config);
            }
            let mut child = command
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
        if let Some(config) = &self.config {
            let _ = std::fs::remove_file(config);
        }
    }
}
