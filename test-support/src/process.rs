//! One `cfm` process, restartable with the same arguments, its log kept across restarts.

use crate::*;

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
    /// Starts `cfm <args>` and waits until it says it is ready, logging at `CFM_TEST_LOG`
    /// (`info` when unset).
    pub fn start(args: Vec<String>, log: PathBuf) -> Replica {
        Self::start_logging(
            args,
            log,
            &std::env::var("CFM_TEST_LOG").unwrap_or_else(|_| "info".into()),
        )
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
        let mut child = Command::new(crate::cfm_binary())
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

    /// Sends SIGTERM and waits (60 s at most) for the process to exit on its own: a
    /// graceful stop, as Kubernetes asks for one.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -TERM failed");
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "cfm {} did not stop within 60 s of SIGTERM",
                self.args[0]
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything the process logged so far, across restarts; empty when unreadable.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Peak resident memory of the process so far, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        peak_rss_kib(self.child.id())
    }

    /// Resident memory of the process now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id())
    }
}

/// `VmHWM` of a live process, in KiB (0 when it cannot be read).
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

/// `VmRSS` of a live process, in KiB (0 when it cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
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
        let mut child = Command::new(crate::cfm_binary())
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
