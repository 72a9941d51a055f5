//! A BIND9 `named` for tests: authoritative for one zone, accepting signed dynamic updates.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// A BIND9 `named` on a free loopback port, authoritative for one zone and accepting
/// dynamic updates signed with its TSIG key; killed (and its folder removed) on drop.
/// scripts/services.sh installs Debian's bind9 and bind9-dnsutils.
pub struct Bind {
    child: Child,
    dir: PathBuf,
    /// The loopback port it listens on, TCP and UDP.
    pub port: u16,
    /// The one zone it is authoritative for.
    pub zone: String,
    /// The key in BIND's key-file format, as `--dns-tsig-key-file` reads it.
    pub key_file: PathBuf,
}

impl Bind {
    /// Starts a server for `zone` with a fresh TSIG key, waiting until it serves the zone.
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

    /// Deletes the record set of `name` (relative to the zone) and `record_type` with
    /// `nsupdate` (not cfm's client), signed with the zone's key: a change made by hand.
    pub fn delete_by_hand(&self, name: &str, record_type: &str) {
        use std::io::Write;
        let mut child = Command::new("nsupdate")
            .arg("-k")
            .arg(&self.key_file)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("nsupdate (scripts/services.sh installs bind9-dnsutils)");
        let script = format!(
            "server 127.0.0.1 {}\nzone {}\nupdate delete {name}.{}. {record_type}\nsend\n",
            self.port, self.zone, self.zone
        );
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "nsupdate failed");
    }

    /// Stops the server; [`Bind::resume`] starts it again on the same port with its data.
    pub fn pause(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again after [`Bind::pause`], waiting until it serves the zone.
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
