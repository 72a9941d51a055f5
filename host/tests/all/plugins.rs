//! The agent host running the real built-in plugins (built by scripts/build-plugins.sh)
//! against the embedded backends: grants, limits, digests and idempotency.

use cfm_host::runtime::HostOptions;
use cfm_host::{AgentHost, Audit, Backends, HostConfig, HostError};
use cfm_protocol::ActivityOutcome;
use serde_json::{Value, json};
use std::path::PathBuf;

use crate::support::{self, digest, plugin_dir, task};

const PC: &str = "3f2a9c1e-0000-4000-8000-000000000001";

/// A one-plugin configuration with the given extra TOML (limits, settings, grants).
fn config(name: &str, activity_type: &str, extra: &str) -> HostConfig {
    support::config(&[(name, activity_type, extra)])
}

struct Harness {
    host: AgentHost,
    data: tempfile::TempDir,
}

impl Harness {
    fn new(config: HostConfig) -> Self {
        let data = tempfile::tempdir().unwrap();
        let audit = Audit::to_file(&data.path().join("audit.jsonl")).unwrap();
        let host = AgentHost::new(
            &config,
            Backends::embedded(data.path()),
            audit,
            HostOptions::default(),
        )
        .unwrap();
        Self { host, data }
    }

    fn audit(&self) -> Vec<Value> {
        support::audit_records(self.data.path())
    }
}

const VAULT_GRANT: &str =
    "[plugin.grants]\nsecrets = [\"participants/{participantContextId}/**\"]\n";

#[tokio::test]
async fn a_redelivered_activity_creates_nothing_twice() {
    let harness = Harness::new(config("vault", "cfm.vault.credentials", VAULT_GRANT));
    let first = harness.host.run(&task("cfm.vault.credentials", PC)).await;
    let ActivityOutcome::Complete { output } = &first else {
        panic!("{first:?}")
    };
    assert_eq!(
        output["credentialPath"],
        format!("participants/{PC}/api-key")
    );
    let secret_file = harness
        .data
        .path()
        .join(format!("secrets/participants/{PC}/api-key.secret"));
    let secret = std::fs::read_to_string(&secret_file).unwrap();

    let mut again = task("cfm.vault.credentials", PC);
    again.attempt = 2;
    assert_eq!(harness.host.run(&again).await, first);
    assert_eq!(
        std::fs::read_to_string(&secret_file).unwrap(),
        secret,
        "the credential was replaced"
    );
    let effects: Vec<Value> = harness
        .audit()
        .iter()
        .map(|r| r["effect"].clone())
        .collect();
    assert_eq!(effects, [json!("created"), json!("unchanged")]);
}

#[tokio::test]
async fn a_call_outside_the_grants_is_denied_and_audited() {
    let grant = "[plugin.grants]\nsecrets = [\"participants/someone-else/**\"]\n";
    let harness = Harness::new(config("vault", "cfm.vault.credentials", grant));
    let outcome = harness.host.run(&task("cfm.vault.credentials", PC)).await;
    let ActivityOutcome::Fatal { reason } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(reason.contains("outside this plugin's grants"), "{reason}");
    let audit = harness.audit();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["decision"], "denied");
    assert_eq!(audit[0]["participantContextId"], PC);
    assert_eq!(audit[0]["target"], format!("participants/{PC}/api-key"));
    assert!(
        !harness.data.path().join("secrets").exists(),
        "something was written"
    );
}

#[tokio::test]
async fn a_hostile_context_id_cannot_widen_a_templated_grant() {
    let harness = Harness::new(config("vault", "cfm.vault.credentials", VAULT_GRANT));
    let outcome = harness
        .host
        .run(&task("cfm.vault.credentials", "../other"))
        .await;
    assert!(
        matches!(outcome, ActivityOutcome::Fatal { .. }),
        "{outcome:?}"
    );
    assert!(
        !harness.data.path().join("secrets").exists(),
        "something was written"
    );
}

#[tokio::test]
async fn a_plugin_past_its_deadline_is_stopped_and_retried() {
    let extra = "[plugin.limits]\ntimeout-ms = 100\n[plugin.settings]\ndelayMs = 60000\n[plugin.grants]\nsecrets = [\"participants/{participantContextId}/**\"]\n";
    let harness = Harness::new(config("slow", "example.slow", extra));
    let started = std::time::Instant::now();
    let outcome = harness.host.run(&task("example.slow", PC)).await;
    let ActivityOutcome::Retry { reason } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(reason.contains("did not finish within 100 ms"), "{reason}");
    assert!(
        started.elapsed().as_secs() < 30,
        "the deadline did not stop the plugin"
    );
}

/// Loading `config` must fail; returns why.
fn refused(config: &HostConfig) -> HostError {
    let data = tempfile::tempdir().unwrap();
    AgentHost::new(
        config,
        Backends::embedded(data.path()),
        Audit::default(),
        HostOptions::default(),
    )
    .err()
    .expect("the host loaded a plugin it should refuse")
}

#[test]
fn a_changed_file_is_refused() {
    let mut config = config("vault", "cfm.vault.credentials", VAULT_GRANT);
    config.plugins[0].sha256 = "0".repeat(64);
    let err = refused(&config);
    assert!(matches!(err, HostError::Digest { .. }), "{err}");
    assert!(err.to_string().contains("refusing to load"), "{err}");
}

#[test]
fn a_plugin_importing_an_ungranted_capability_is_refused() {
    let err = refused(&config("vault", "cfm.vault.credentials", ""));
    assert!(err.to_string().contains("'secrets' capability"), "{err}");
}

#[tokio::test]
async fn unknown_activity_types_and_dispose_are_handled() {
    let harness = Harness::new(config("vault", "cfm.vault.credentials", VAULT_GRANT));
    let outcome = harness.host.run(&task("nobody.serves.this", PC)).await;
    assert!(
        matches!(outcome, ActivityOutcome::Fatal { ref reason } if reason.contains("no plugin serves"))
    );

    harness.host.run(&task("cfm.vault.credentials", PC)).await;
    let mut dispose = task("cfm.vault.credentials", PC);
    dispose.discriminator = "cfm.orchestration.vpa.dispose".into();
    let outcome = harness.host.run(&dispose).await;
    assert!(
        matches!(outcome, ActivityOutcome::Complete { .. }),
        "{outcome:?}"
    );
    assert!(
        !harness
            .data
            .path()
            .join(format!("secrets/participants/{PC}/api-key.secret"))
            .exists()
    );
}

/// The hostile example plugin in `mode`, with the same participant-scoped grants a
/// well-behaved plugin would get, and no outbound HTTP.
fn hostile(mode: &str, target: &str, limits: &str) -> HostConfig {
    hostile_with_http(mode, target, limits, "origins = []")
}

/// The same, with `http` as the body of its `[plugin.grants.http]` table.
fn hostile_with_http(mode: &str, target: &str, limits: &str, http: &str) -> HostConfig {
    let settings = format!(
        "mode = {}\ntarget = {}",
        toml_string(mode),
        toml_string(target)
    );
    hostile_config(limits, &settings, http)
}

/// The zone the hostile plugin's dns grant opens, for the participant's own names only.
const HOSTILE_ZONE: &str = "participants.example";

/// The hostile plugin with `settings` as its `[plugin.settings]` body.
fn hostile_config(limits: &str, settings: &str, http: &str) -> HostConfig {
    let extra = format!(
        "[plugin.limits]\n{limits}\n[plugin.settings]\n{settings}\n\
         [plugin.grants]\nsecrets = [\"participants/{{participantContextId}}/**\"]\n\
         [plugin.grants.cluster]\nnamespaces = [\"cfm-{{participantContextId}}\"]\nkinds = [\"ConfigMap\"]\n\
         [plugin.grants.dns]\nzones = [\"{HOSTILE_ZONE}\"]\n\
         names = [\"{{participantContextId}}\", \"*.{{participantContextId}}\"]\nrecord-types = [\"CNAME\"]\n\
         [plugin.grants.tokens]\naudiences = []\nscopes = []\n\
         [plugin.grants.http]\n{http}\n"
    );
    config("hostile", "example.hostile", &extra)
}

fn toml_string(text: &str) -> String {
    toml::Value::String(text.into()).to_string()
}

/// The hostile plugin making each (mode, target) capability call in one invocation;
/// the answers come back in order.
async fn run_probes(probes: &[(&str, String)], http: &str) -> (Vec<Value>, Harness) {
    let list: Vec<String> = probes
        .iter()
        .map(|(mode, target)| {
            format!(
                "{{ mode = {}, target = {} }}",
                toml_string(mode),
                toml_string(target)
            )
        })
        .collect();
    let settings = format!("mode = \"probes\"\nprobes = [{}]", list.join(", "));
    let harness = Harness::new(hostile_config("", &settings, http));
    let outcome = harness.host.run(&task("example.hostile", PC)).await;
    let ActivityOutcome::Complete { output } = outcome else {
        panic!("{outcome:?}")
    };
    let results = output["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), probes.len(), "{results:?}");
    (results, harness)
}

/// The audit records of denials, in order.
fn denials(harness: &Harness) -> Vec<Value> {
    harness
        .audit()
        .into_iter()
        .filter(|r| r["decision"] == "denied")
        .collect()
}

async fn run_hostile(mode: &str, target: &str, limits: &str) -> (ActivityOutcome, Harness) {
    let harness = Harness::new(hostile(mode, target, limits));
    let outcome = harness.host.run(&task("example.hostile", PC)).await;
    (outcome, harness)
}

fn fatal_reason(outcome: &ActivityOutcome) -> &str {
    match outcome {
        ActivityOutcome::Fatal { reason } => reason,
        other => panic!("expected fatal, got {other:?}"),
    }
}

fn capability_answer(outcome: &ActivityOutcome) -> (String, String) {
    let ActivityOutcome::Complete { output } = outcome else {
        panic!("{outcome:?}")
    };
    (
        output["outcome"].as_str().unwrap().into(),
        output["message"].as_str().unwrap().into(),
    )
}

/// A single-threaded runtime: the spinning guest must yield, or the other invocation
/// could never run before the spinner's deadline.
#[tokio::test(flavor = "current_thread")]
async fn a_spinning_plugin_is_stopped_and_does_not_starve_others() {
    let mut config = hostile("spin", "", "timeout-ms = 1500");
    config
        .plugins
        .extend(self::config("vault", "cfm.vault.credentials", VAULT_GRANT).plugins);
    let harness = Harness::new(config);
    let spinner = async {
        let outcome = harness.host.run(&task("example.hostile", PC)).await;
        (outcome, std::time::Instant::now())
    };
    let neighbour = async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let outcome = harness.host.run(&task("cfm.vault.credentials", PC)).await;
        (outcome, std::time::Instant::now())
    };
    let ((spun, spin_end), (neighbour, neighbour_end)) = tokio::join!(spinner, neighbour);
    let ActivityOutcome::Retry { reason } = spun else {
        panic!("{spun:?}")
    };
    assert!(reason.contains("did not finish within 1500 ms"), "{reason}");
    assert!(
        matches!(neighbour, ActivityOutcome::Complete { .. }),
        "{neighbour:?}"
    );
    assert!(
        neighbour_end < spin_end,
        "the neighbour only ran after the spinner was stopped"
    );
}

#[tokio::test]
async fn a_memory_bomb_hits_its_limit() {
    let (outcome, harness) = run_hostile("memory", "", "memory-mib = 16").await;
    assert!(
        fatal_reason(&outcome).contains("exceeded its memory limit"),
        "{outcome:?}"
    );
    // The host is still usable afterwards.
    let again = harness.host.run(&task("example.hostile", PC)).await;
    assert!(matches!(again, ActivityOutcome::Fatal { .. }));
}

#[tokio::test]
async fn deep_recursion_traps_cleanly() {
    let (outcome, _) = run_hostile("recursion", "", "").await;
    let reason = fatal_reason(&outcome);
    // Rust guests keep their stack in linear memory: overflowing it is an out-of-bounds
    // access there, before wasmtime's own call-stack limit is reached.
    assert!(reason.contains("trapped: wasm trap"), "{reason}");
    assert!(!reason.contains("wasm backtrace"), "{reason}");
}

#[tokio::test]
async fn oversized_output_is_refused() {
    let (outcome, _) = run_hostile("huge-output", "", "max-output-kib = 1024").await;
    assert!(
        fatal_reason(&outcome).contains("over its limit"),
        "{outcome:?}"
    );
}

/// Collects everything the host logs during one test.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn log_flooding_is_capped() {
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let (outcome, _) = run_hostile("log-flood", "", "").await;
    assert!(
        matches!(outcome, ActivityOutcome::Complete { .. }),
        "{outcome:?}"
    );
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let written = log.lines().filter(|l| l.contains("flood line")).count();
    assert_eq!(written, cfm_host::capability::log::MAX_LINES as usize);
    assert!(
        log.contains("dropped=99800"),
        "{}",
        &log[log.len().saturating_sub(500)..]
    );
}

#[tokio::test]
async fn secrets_outside_the_participant_are_unreachable() {
    let traversal = format!("participants/{PC}/../other/api-key");
    let (outcome, harness) = run_hostile("secret", &traversal, "").await;
    let (kind, message) = capability_answer(&outcome);
    assert_eq!(kind, "invalid", "{message}");
    // Refused before any grant is consulted, and still on the record.
    let audit = harness.audit();
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0]["decision"], "denied");
    assert_eq!(audit[0]["target"], traversal);

    let (outcome, harness) =
        run_hostile("secret", "participants/other-participant/api-key", "").await;
    assert_eq!(capability_answer(&outcome).0, "denied");
    let audit = harness.audit();
    assert_eq!(audit[0]["decision"], "denied");
    assert_eq!(audit[0]["target"], "participants/other-participant/api-key");

    let (outcome, _) = run_hostile("secret", &format!("participants/{PC}/own"), "").await;
    assert_eq!(capability_answer(&outcome).0, "ok");
}

#[tokio::test]
async fn cluster_objects_outside_granted_namespaces_are_denied() {
    let (outcome, harness) = run_hostile("cluster", "kube-system", "").await;
    assert_eq!(capability_answer(&outcome).0, "denied");
    assert_eq!(harness.audit()[0]["target"], "ConfigMap/kube-system/stolen");
    assert!(!harness.data.path().join("cluster").exists());

    // A namespace that is no name at all is refused before the grant check, on the record.
    let traversal = format!("cfm-{PC}/../kube-system");
    let (outcome, harness) = run_hostile("cluster", &traversal, "").await;
    assert_eq!(capability_answer(&outcome).0, "invalid");
    let audit = harness.audit();
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0]["decision"], "denied");
    assert_eq!(audit[0]["target"], format!("ConfigMap/{traversal}/stolen"));
    assert!(!harness.data.path().join("cluster").exists());

    let (outcome, _) = run_hostile("cluster", &format!("cfm-{PC}"), "").await;
    assert_eq!(capability_answer(&outcome).0, "ok");
}

/// A loopback HTTP server answering `200 hello` to everything, counting connections so a
/// test can tell that a refused request never left the host.
struct Loopback {
    port: u16,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Each request's head (request line and headers), in arrival order.
    heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Loopback {
    async fn start() -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = connections.clone();
        let heads: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let seen = heads.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buffer = [0u8; 1024];
                    while !request.ends_with(b"\r\n\r\n") {
                        match stream.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buffer[..n]),
                        }
                    }
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&request).into_owned());
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello")
                        .await;
                });
            }
        });
        Self {
            port,
            connections,
            heads,
            task,
        }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run_http(url: &str, grant: &str) -> (String, Value, Harness) {
    let harness = Harness::new(hostile_with_http("http", url, "", grant));
    let outcome = harness.host.run(&task("example.hostile", PC)).await;
    let ActivityOutcome::Complete { output } = outcome else {
        panic!("{outcome:?}")
    };
    let kind = output["outcome"].as_str().unwrap().to_string();
    (kind, Value::Object(output), harness)
}

#[tokio::test]
async fn http_reaches_only_granted_origins() {
    let server = Loopback::start().await;
    let port = server.port;
    let grant = "origins = [\"http://127.0.0.1:*\"]";

    let (kind, output, harness) = run_http(
        &format!("http://127.0.0.1:{port}/hello?token=s3cret"),
        grant,
    )
    .await;
    assert_eq!(kind, "ok", "{output}");
    assert_eq!(
        (output["status"].clone(), output["body"].clone()),
        (json!(200), json!("hello"))
    );
    let audit = harness.audit();
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0]["decision"], "allowed");
    assert_eq!(audit[0]["effect"], "sent");
    assert_eq!(audit[0]["capability"], "http");
    // The query may carry credentials: it stays out of the audit trail.
    assert_eq!(
        audit[0]["target"],
        format!("GET http://127.0.0.1:{port}/hello")
    );
    assert_eq!(server.connections(), 1);

    for url in [
        // Another host, another scheme, the cloud metadata service.
        "http://203.0.113.7/".to_string(),
        format!("https://127.0.0.1:{port}/"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
    ] {
        let (kind, output, harness) = run_http(&url, grant).await;
        assert_eq!(kind, "denied", "{url}: {output}");
        assert!(
            output["message"].as_str().unwrap().contains("origin"),
            "{output}"
        );
        let audit = harness.audit();
        assert_eq!(audit.len(), 1, "{url}: {audit:?}");
        assert_eq!(audit[0]["decision"], "denied");
    }
    assert_eq!(
        server.connections(),
        1,
        "a refused request reached the server"
    );
}

#[tokio::test]
async fn outbound_http_carries_the_activity_trace() {
    use tracing::Instrument;
    use tracing_subscriber::prelude::*;
    let _spans = tracing::subscriber::set_default(
        tracing_subscriber::registry().with(cfm_telemetry::unexported_layer()),
    );
    let server = Loopback::start().await;
    let activity = tracing::info_span!("activity");
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    cfm_telemetry::continue_trace(&activity, Some(&format!("00-{trace}-00f067aa0ba902b7-01")));
    let url = format!("http://127.0.0.1:{}/traced", server.port);
    let (kind, output, _harness) = run_http(&url, "origins = [\"http://127.0.0.1:*\"]")
        .instrument(activity)
        .await;
    assert_eq!(kind, "ok", "{output}");
    let head = server.heads()[0].to_lowercase();
    assert!(
        head.contains(&format!("traceparent: 00-{trace}-")),
        "{head}"
    );

    // An activity outside any trace is the root of its own, and says so downstream.
    let (kind, _, _) = run_http(&url, "origins = [\"http://127.0.0.1:*\"]").await;
    assert_eq!(kind, "ok");
    let head = server.heads()[1].to_lowercase();
    assert!(
        head.contains("traceparent: 00-") && !head.contains(trace),
        "{head}"
    );
}

#[tokio::test]
async fn http_to_special_addresses_needs_a_grant_that_names_them() {
    let server = Loopback::start().await;
    let port = server.port;

    // A grant for any host still does not reach the metadata service or loopback.
    for url in [
        "http://169.254.169.254/latest/meta-data/".to_string(),
        format!("http://127.0.0.1:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
    ] {
        let (kind, output, _) = run_http(&url, "origins = [\"http://*:*\"]").await;
        assert_eq!(kind, "denied", "{url}: {output}");
        assert!(
            output["message"].as_str().unwrap().contains("address"),
            "{output}"
        );
    }

    // A granted name that resolves to loopback is refused after resolution.
    let url = format!("http://localhost:{port}/");
    let (kind, output, harness) = run_http(&url, "origins = [\"http://localhost:*\"]").await;
    assert_eq!(kind, "denied", "{output}");
    assert!(
        output["message"].as_str().unwrap().contains("address"),
        "{output}"
    );
    assert_eq!(harness.audit()[0]["decision"], "denied");
    assert_eq!(
        server.connections(),
        0,
        "a refused request reached the server"
    );

    // Naming the network opens it.
    let grant =
        "origins = [\"http://localhost:*\"]\nprivate-networks = [\"127.0.0.0/8\", \"::1/128\"]";
    let (kind, output, _) = run_http(&url, grant).await;
    assert_eq!(kind, "ok", "{output}");
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn raw_sockets_reach_nothing() {
    let server = Loopback::start().await;
    let target = format!("127.0.0.1:{}", server.port);
    // Even with an http grant for that very address.
    let grant = "origins = [\"http://127.0.0.1:*\"]";
    let harness = Harness::new(hostile_with_http("tcp", &target, "", grant));
    let outcome = harness.host.run(&task("example.hostile", PC)).await;
    let (kind, message) = capability_answer(&outcome);
    assert_eq!(kind, "refused", "{message}");
    assert_eq!(server.connections(), 0, "a raw socket reached the server");
}

#[tokio::test]
async fn http_escapes_are_refused_audited_and_never_connect() {
    let server = Loopback::start().await;
    let port = server.port;
    let loopback = format!("http://127.0.0.1:{port}/");
    // (what the plugin asks for, the canonical target the audit record must name)
    let escapes = [
        // Userinfo dresses a granted name up in front of another host.
        (
            format!("http://granted.example:x@127.0.0.1:{port}/"),
            loopback.clone(),
        ),
        (
            format!("http://granted.example@127.0.0.1:{port}/"),
            loopback.clone(),
        ),
        (
            "http://granted.example:x@169.254.169.254/latest/meta-data/".into(),
            "http://169.254.169.254/latest/meta-data/".into(),
        ),
        (
            format!("http://user:pw@granted.example:{port}/"),
            format!("http://granted.example:{port}/"),
        ),
        // Every IPv4 notation the client would connect to as 127.0.0.1. (A
        // percent-encoded host never gets here: wasi:http refuses it as an authority.)
        (format!("http://2130706433:{port}/"), loopback.clone()),
        (format!("http://0x7f000001:{port}/"), loopback.clone()),
        (format!("http://0x7f.0.0.1:{port}/"), loopback.clone()),
        (format!("http://0177.0.0.1:{port}/"), loopback.clone()),
        (format!("http://127.1:{port}/"), loopback.clone()),
        (format!("http://0x7f.1:{port}/"), loopback.clone()),
        (format!("http://0177.0x0.1:{port}/"), loopback.clone()),
        (format!("http://127.0.0.1.:{port}/"), loopback.clone()),
        (
            format!("http://[::ffff:7f00:1]:{port}/"),
            format!("http://[::ffff:7f00:1]:{port}/"),
        ),
        // IPv4-compatible and IPv4-translated forms embed an address too.
        (
            format!("http://[::127.0.0.1]:{port}/"),
            format!("http://[::7f00:1]:{port}/"),
        ),
        (
            format!("http://[::ffff:0:7f00:1]:{port}/"),
            format!("http://[::ffff:0:7f00:1]:{port}/"),
        ),
        (
            "http://2852039166/latest/meta-data/".into(),
            "http://169.254.169.254/latest/meta-data/".into(),
        ),
        // 0.0.0.0 reaches the host itself on Linux.
        (
            format!("http://0:{port}/"),
            format!("http://0.0.0.0:{port}/"),
        ),
    ];
    let probes: Vec<(&str, String)> = escapes
        .iter()
        .map(|(url, _)| ("http", url.clone()))
        .collect();
    let grant = "origins = [\"http://granted.example:*\", \"http://*:*\"]";
    let (results, harness) = run_probes(&probes, grant).await;
    for (result, (url, _)) in results.iter().zip(&escapes) {
        assert_eq!(result["outcome"], "denied", "{url}: {result}");
    }
    let denied = denials(&harness);
    let targets: Vec<String> = denied
        .iter()
        .map(|r| r["target"].as_str().unwrap().to_string())
        .collect();
    let expected: Vec<String> = escapes.iter().map(|(_, t)| format!("GET {t}")).collect();
    assert_eq!(
        targets, expected,
        "every refusal is audited, canonical and without userinfo"
    );
    assert_eq!(
        harness.audit().len(),
        escapes.len(),
        "something was allowed"
    );
    assert_eq!(
        server.connections(),
        0,
        "a refused request reached the server"
    );
}

#[tokio::test]
async fn a_literal_origin_opens_its_own_port_only() {
    let named = Loopback::start().await;
    let other = Loopback::start().await;
    let grant = format!(
        "origins = [\"http://127.0.0.1:{}\", \"http://*:*\"]",
        named.port
    );
    let probes = [
        ("http", format!("http://127.0.0.1:{}/", other.port)),
        ("http", format!("http://0x7f.1:{}/", other.port)),
        ("http", format!("http://127.0.0.1:{}/", named.port)),
        // The named origin in another notation is still that origin.
        ("http", format!("http://0x7f.1:{}/", named.port)),
    ];
    let (results, harness) = run_probes(&probes, &grant).await;
    let outcomes: Vec<&str> = results
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["denied", "denied", "ok", "ok"], "{results:?}");
    assert!(
        results[0]["message"].as_str().unwrap().contains("address"),
        "{results:?}"
    );
    let denied = denials(&harness);
    assert_eq!(denied.len(), 2, "{denied:?}");
    for record in &denied {
        assert_eq!(
            record["target"],
            format!("GET http://127.0.0.1:{}/", other.port)
        );
    }
    assert_eq!(other.connections(), 0, "the unnamed port was reached");
    assert_eq!(named.connections(), 2);
}

#[tokio::test]
async fn another_participants_dns_names_are_refused_and_audited() {
    let zone_dir = |harness: &Harness| harness.data.path().join("dns");
    let own = PC.to_string();
    let probes = [
        ("dns-upsert", "other-participant".to_string()),
        ("dns-upsert", "api.other-participant".into()),
        ("dns-upsert", "OTHER-PARTICIPANT.".into()),
        ("dns-upsert", format!("{own}.other-participant")),
        ("dns-upsert", format!("{own}x")),
        ("dns-upsert", format!("x.api.{own}")),
        ("dns-upsert", "@".into()),
        ("dns-remove", "other-participant".into()),
        // Malformed: refused before the grant check, and audited all the same.
        ("dns-upsert", format!("../{own}")),
        ("dns-upsert", format!("{own}/x")),
        // The participant's own names.
        ("dns-upsert", own.clone()),
        ("dns-upsert", format!("api.{own}")),
    ];
    let (results, harness) = run_probes(&probes, "origins = []").await;
    let outcomes: Vec<&str> = results
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    let mut expected = vec!["denied"; 8];
    expected.extend(["invalid", "invalid", "ok", "ok"]);
    assert_eq!(outcomes, expected, "{results:?}");

    let denied: Vec<String> = denials(&harness)
        .iter()
        .map(|r| r["target"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(denied.len(), 10, "{denied:?}");
    assert_eq!(denied[0], format!("other-participant.{HOSTILE_ZONE} CNAME"));
    assert_eq!(denied[2], format!("other-participant.{HOSTILE_ZONE} CNAME"));
    assert_eq!(denied[8], format!("../{own}.{HOSTILE_ZONE} CNAME"));
    let zone =
        std::fs::read_to_string(zone_dir(&harness).join(format!("{HOSTILE_ZONE}.zone"))).unwrap();
    assert!(zone.contains(&own), "{zone}");
    assert!(
        !zone.to_ascii_lowercase().contains("other-participant"),
        "{zone}"
    );
    assert!(!zone.contains("x.api."), "{zone}");
}

#[tokio::test]
async fn secret_traversal_in_every_form_is_refused_and_audited() {
    let traversals = [
        format!("participants/{PC}/../other-participant/x"),
        format!("participants/{PC}/%2e%2e/other-participant/x"),
        format!("participants/{PC}/..%2fother-participant%2fx"),
        "participants%2fother-participant%2fx".to_string(),
        format!("participants/{PC}/\u{ff0e}\u{ff0e}/other-participant/x"),
        format!("participants/{PC}/..\\other-participant"),
        format!("participants/{PC}/./x"),
        format!("participants//{PC}/x"),
        "/participants/other-participant/x".to_string(),
        format!("participants/{PC}/x\n"),
    ];
    let mut probes: Vec<(&str, String)> =
        traversals.iter().map(|t| ("secret", t.clone())).collect();
    probes.push(("secret", "participants/other-participant/x".into()));
    probes.push(("secret", format!("participants/{PC}/own")));
    let (results, harness) = run_probes(&probes, "origins = []").await;
    let outcomes: Vec<&str> = results
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    let mut expected = vec!["invalid"; traversals.len()];
    expected.extend(["denied", "ok"]);
    assert_eq!(outcomes, expected, "{results:?}");

    let denied: Vec<String> = denials(&harness)
        .iter()
        .map(|r| r["target"].as_str().unwrap().to_string())
        .collect();
    // As asked, but for control characters: a newline must not split the log's line.
    let mut refused: Vec<String> = traversals
        .iter()
        .map(|t| t.replace('\n', "\u{FFFD}"))
        .collect();
    refused.push("participants/other-participant/x".into());
    assert_eq!(denied, refused, "every refusal is audited, as asked");
    assert!(
        !harness.data.path().join("secrets").exists(),
        "something was written"
    );
}

#[tokio::test]
async fn the_hostile_plugin_can_claim_base_keys_in_its_output() {
    // The host hands outputs on as they are; the engine is where base keys are refused.
    // This mode is what the engine's end-to-end test runs.
    let claim = json!({"cfm.participant.contextId": "someone-else", "cfm.vpa.data": []});
    let (outcome, _) = run_hostile("output", &claim.to_string(), "").await;
    let ActivityOutcome::Complete { output } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(Value::Object(output), claim);
}

#[tokio::test]
async fn the_built_in_dns_grant_covers_the_name_the_dns_plugin_writes() {
    let mut config = HostConfig::load(&plugin_dir().join("plugins.toml")).unwrap();
    config.plugins.retain(|p| p.name == "dns");
    let zone = "participants.cfm.local";
    let grants = config.plugins[0].grants.scoped(PC);
    assert!(grants.allows_dns(zone, PC, "CNAME"));
    assert!(!grants.allows_dns(zone, "other-participant", "CNAME"));
    assert!(!grants.allows_dns(zone, &format!("x.{PC}"), "CNAME"));

    let harness = Harness::new(config);
    let outcome = harness.host.run(&task("cfm.dns.routing", PC)).await;
    let ActivityOutcome::Complete { output } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(output["dnsName"], format!("{PC}.{zone}"));
    let audit = harness.audit();
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0]["effect"], "created");
    assert_eq!(audit[0]["target"], format!("{PC}.{zone} CNAME"));
}

#[test]
fn a_plugin_importing_http_without_a_grant_is_refused() {
    let extra = "[plugin.grants]\nsecrets = [\"x\"]\n[plugin.grants.cluster]\nnamespaces = []\nkinds = []\n\
                 [plugin.grants.dns]\nzones = []\nnames = []\nrecord-types = []\n\
                 [plugin.grants.tokens]\naudiences = []\nscopes = []\n";
    let err = refused(&config("hostile", "example.hostile", extra));
    assert!(err.to_string().contains("'http' capability"), "{err}");
}

/// The files in the compile cache `dir` (the key lives beside it, not in it).
fn artifacts(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    found.sort();
    found
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Runs vault on `host`, whatever its compile cache held: it must still be vault.
async fn runs_vault(host: &AgentHost) {
    let outcome = host.run(&task("cfm.vault.credentials", PC)).await;
    let ActivityOutcome::Complete { output } = &outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(
        output["credentialPath"],
        format!("participants/{PC}/api-key"),
        "{outcome:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn compiled_plugins_are_cached_and_an_artifact_that_does_not_verify_is_rebuilt() {
    let data = tempfile::tempdir().unwrap();
    let cache = data.path().join("cache");
    let load = |config: &HostConfig| {
        AgentHost::new(
            config,
            Backends::embedded(data.path()),
            Audit::default(),
            HostOptions {
                compile_cache: Some(cache.clone()),
                ..HostOptions::default()
            },
        )
        .unwrap()
    };
    let vault = config("vault", "cfm.vault.credentials", VAULT_GRANT);
    load(&vault);
    let found = artifacts(&cache);
    assert_eq!(found.len(), 1, "{found:?}");
    let artifact = found[0].clone();
    let name = artifact.file_name().unwrap().to_str().unwrap().to_string();
    assert!(name.starts_with(&digest("vault")), "{name}");
    assert_eq!(mode(&cache), 0o700);
    assert_eq!(mode(&artifact), 0o600);
    let key = data.path().join(cfm_host::runtime::cache::KEY_FILE);
    assert_eq!(mode(&key), 0o600);

    // A cached artifact serves the next start.
    let sealed = std::fs::read(&artifact).unwrap();
    runs_vault(&load(&vault)).await;
    assert_eq!(std::fs::read(&artifact).unwrap(), sealed);

    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    // One byte flipped in the compiled code: refused, recompiled and replaced.
    let mut flipped = sealed.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x40;
    std::fs::write(&artifact, &flipped).unwrap();
    runs_vault(&load(&vault)).await;
    assert!(
        std::fs::read(&artifact).unwrap() != flipped,
        "the refused artifact was kept"
    );
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("tag does not verify"), "{log}");

    // Another component's genuine artifact under vault's name: its tag names noop's
    // source, so it does not verify here either.
    load(&config("noop", "example.noop.1", ""));
    let noop = artifacts(&cache)
        .into_iter()
        .find(|p| p.to_str().unwrap().contains(&digest("noop")))
        .unwrap();
    let swapped = std::fs::read(&noop).unwrap();
    std::fs::write(&artifact, &swapped).unwrap();
    runs_vault(&load(&vault)).await;
    assert!(
        std::fs::read(&artifact).unwrap() != swapped,
        "the refused artifact was kept"
    );

    // Without a tag (the wasmtime artifact alone, as caches held before tags).
    let bare = &sealed[cfm_host::runtime::cache::HEADER_LEN..];
    std::fs::write(&artifact, bare).unwrap();
    runs_vault(&load(&vault)).await;
    assert!(
        std::fs::read(&artifact).unwrap() != bare,
        "the refused artifact was kept"
    );
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("has no tag"), "{log}");

    // Garbage too.
    std::fs::write(&artifact, b"not a compiled component").unwrap();
    runs_vault(&load(&vault)).await;
    assert!(std::fs::metadata(&artifact).unwrap().len() > 1024);
}

/// A copy of the no-op plugin in a folder of its own, with `trusted_keys` configured.
fn signed_setup(trusted_keys: &[String]) -> (tempfile::TempDir, HostConfig, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(plugin_dir().join("noop.wasm"), dir.path().join("noop.wasm")).unwrap();
    let keys: Vec<String> = trusted_keys.iter().map(|k| format!("\"{k}\"")).collect();
    let text = format!(
        "[[plugin]]\nname = \"noop\"\npath = \"noop.wasm\"\nsha256 = \"{}\"\nactivity-types = [\"example.noop.1\"]\ntrusted-keys = [{}]\n",
        digest("noop"),
        keys.join(", ")
    );
    let mut config = HostConfig::parse(&text).unwrap();
    config.base_dir = dir.path().to_path_buf();
    (dir, config, digest("noop"))
}

fn load(config: &HostConfig) -> Result<AgentHost, HostError> {
    let data = tempfile::tempdir().unwrap();
    AgentHost::new(
        config,
        Backends::embedded(data.path()),
        Audit::to_file(&data.path().join("audit.jsonl")).unwrap(),
        HostOptions::default(),
    )
}

#[tokio::test]
async fn a_plugin_that_requires_a_signature_loads_only_with_a_trusted_one() {
    use cfm_host::signature;
    let key = ed25519_dalek::SigningKey::from_bytes(&[42; 32]);
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[43; 32]);
    let trusted = vec![signature::encode_public_key(&key.verifying_key())];
    let (dir, config, digest) = signed_setup(&trusted);
    let sig = dir.path().join("noop.wasm.sig");

    let err = load(&config).err().expect("loaded without a signature");
    assert!(matches!(err, HostError::Signature { .. }), "{err}");
    assert!(err.to_string().contains("missing"), "{err}");

    std::fs::write(&sig, signature::sign(&stranger, &digest)).unwrap();
    let err = load(&config)
        .err()
        .expect("loaded with a stranger's signature");
    assert!(err.to_string().contains("no trusted key"), "{err}");

    std::fs::write(&sig, "garbage").unwrap();
    assert!(matches!(
        load(&config).err(),
        Some(HostError::Signature { .. })
    ));

    std::fs::write(&sig, signature::sign(&key, &digest)).unwrap();
    let host = load(&config).expect("a trusted signature loads");
    let outcome = host.run(&task("example.noop.1", PC)).await;
    assert!(
        matches!(outcome, ActivityOutcome::Complete { .. }),
        "{outcome:?}"
    );

    // A key that is not a key is a configuration error, named.
    let err = HostConfig::parse(
        "[[plugin]]\nname = \"n\"\npath = \"n.wasm\"\nsha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\nactivity-types = [\"t\"]\ntrusted-keys = [\"not-a-key\"]\n",
    )
    .expect_err("a bad key was accepted");
    assert!(err.to_string().contains("trusted-keys"), "{err}");
}

/// The slow plugin (its output says the delay it ran with) configured with `delay_ms`.
fn slow_config_text(delay_ms: u64) -> String {
    format!(
        "[[plugin]]\nname = \"slow\"\npath = \"{}\"\nsha256 = \"{}\"\nactivity-types = [\"example.slow\"]\n\
         [plugin.settings]\ndelayMs = {delay_ms}\n[plugin.grants]\nsecrets = [\"participants/{{participantContextId}}/slow-marker\"]\n",
        plugin_dir().join("slow.wasm").display(),
        digest("slow"),
    )
}

fn delay_of(outcome: &ActivityOutcome) -> u64 {
    match outcome {
        ActivityOutcome::Complete { output } => output["slowDelayMs"].as_u64().unwrap(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_configuration_is_picked_up_without_dropping_running_work() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plugins.toml");
    std::fs::write(&path, slow_config_text(3000)).unwrap();
    // With a compile cache, as agents run: an unchanged component reloads without compiling.
    let host = AgentHost::new(
        &HostConfig::load(&path).unwrap(),
        Backends::embedded(dir.path()),
        Audit::to_file(&dir.path().join("audit.jsonl")).unwrap(),
        HostOptions {
            compile_cache: Some(dir.path().join("cache")),
            ..HostOptions::default()
        },
    )
    .unwrap();
    let harness = Harness {
        host,
        data: tempfile::tempdir().unwrap(),
    };
    let watcher = harness
        .host
        .watch(path.clone(), std::time::Duration::from_millis(100));

    let host = harness.host.clone();
    let running = tokio::spawn(async move { host.run(&task("example.slow", PC)).await });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    std::fs::write(&path, slow_config_text(5)).unwrap();

    // The new settings arrive while the first invocation still sleeps on the old ones.
    // (An attempt still on the old version sleeps 3 s; it is cut short and tried again.)
    let started = std::time::Instant::now();
    loop {
        let next = task("example.slow", PC);
        let attempt = harness.host.run(&next);
        if let Ok(outcome) =
            tokio::time::timeout(std::time::Duration::from_millis(300), attempt).await
        {
            assert_eq!(delay_of(&outcome), 5);
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "never reloaded"
        );
    }
    assert!(
        !running.is_finished(),
        "the first invocation ended before the reload"
    );
    assert_eq!(
        delay_of(&running.await.unwrap()),
        3000,
        "running work changed version"
    );

    // A broken configuration is refused and the running plugins stay.
    std::fs::write(&path, "[[plugin]]\nname = \"slow\"\n").unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(
        delay_of(&harness.host.run(&task("example.slow", PC)).await),
        5
    );
    let err = harness.host.reload(
        &HostConfig::parse(&slow_config_text(5).replace(
            "[plugin.settings]",
            "[plugin.limits]\nmemory-mib = 4096\n[plugin.settings]",
        ))
        .unwrap(),
    );
    assert!(err.unwrap_err().to_string().contains("restart"));
    watcher.abort();
}
