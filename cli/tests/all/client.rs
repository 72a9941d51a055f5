//! `cfm` as an API client against a real `cfm serve`: the fleet set up with the client
//! commands, an onboarding followed with `--wait` in a pseudo-terminal (live progress,
//! exit 0) and one that fails (non-zero, the failing step's error), the same in a pipe,
//! graphs, tables, contexts, a tenant-confined token and completions; and fleet
//! operations (a migration, a drain, a rollout) followed to their end.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};

use cfm_test_support::{Server, cfm_binary, plugins_config_with};

use super::dashboard::tenant_token;
use super::fleet::{create_cell, deploy};
use super::rollouts::{TEMPLATE, add_version_2, template_v1};
use serde_json::{Value, json};

/// The DID whose deploy the `noop` plugin is told to fail.
const FAILING_DID: &str = "did:web:p0.example";

#[tokio::test]
async fn the_client_onboards_with_live_progress_and_reports_a_failing_step() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = plugins_config_with(dir.path(), |plugin| match plugin["name"].as_str() {
        // Long enough that the progress shows the step running before it completes.
        Some("slow") => {
            plugin["settings"]["delayMs"] = 1500.into();
        }
        Some("noop") => {
            let mut settings = toml::Table::new();
            settings.insert(
                "failDeploysOf".into(),
                vec![toml::Value::from(FAILING_DID)].into(),
            );
            plugin.insert("settings".into(), settings.into());
        }
        _ => {}
    });
    let plugins = plugins.display().to_string();
    let server = Server::start(&["--no-seed", "--plugins", &plugins]).await;
    server
        .client()
        .define_activities(&[
            "cfm.vault.credentials",
            "example.slow",
            "example.noop.1",
            "cfm.dns.routing",
        ])
        .await;
    let cli = Client::new(&server, dir.path());

    // The fleet, set up with the client alone.
    let template = dir.path().join("template.json");
    std::fs::write(
        &template,
        json!({"description": "four steps", "activities": {"cfm.orchestration.vpa.deploy": [
            {"id": "vault", "type": "cfm.vault.credentials"},
            {"id": "slow", "type": "example.slow", "dependsOn": ["vault"]},
            {"id": "check", "type": "example.noop.1", "dependsOn": ["vault"]},
            {"id": "dns", "type": "cfm.dns.routing", "dependsOn": ["slow", "check"]}]}})
        .to_string(),
    )
    .unwrap();
    let definition = cli.json(&[
        "definitions",
        "create",
        "-f",
        &template.display().to_string(),
    ]);
    let cell = cli.json(&[
        "cells",
        "create",
        "cell-eu-1",
        "--label",
        "region=eu",
        "--capacity",
        "10",
    ]);
    assert_eq!(cell["labels"], json!({"region": "eu"}), "{cell}");
    assert_eq!(cell["capacity"]["maxParticipants"], 10, "{cell}");
    let dataspace = cli.json(&[
        "dataspace-profiles",
        "create",
        "--protocol",
        "dsp-2025-1",
        "--credential",
        "id=membership,type=MembershipCredential,issuer=did:web:issuer.example,format=vc20-bssl/jwt",
    ]);
    assert_eq!(
        dataspace["dataspaceSpec"]["credentialSpecs"][0]["issuer"], "did:web:issuer.example",
        "{dataspace}"
    );
    let dataspace_id = text(&dataspace, "id");
    cli.ok(&[
        "dataspace-profiles",
        "deploy",
        &dataspace_id,
        "--cell",
        "cell-eu-1",
    ]);
    let tenant = cli.json(&["tenants", "create", "--name", "Consumer Tenant"]);
    assert_eq!(tenant["properties"]["name"], "Consumer Tenant");
    let tenant_id = text(&tenant, "id");

    // A definition is drawn in stages: check and slow both wait only for vault.
    let drawn = cli.ok(&["definitions", "get", &text(&definition, "id")]);
    assert!(
        drawn.contains("• dns") && drawn.contains("← slow, check"),
        "{drawn}"
    );

    // In a terminal: live progress, then the profile, exit 0.
    let onboard = |did: &str| {
        [
            "participants",
            "onboard",
            "--tenant",
            &tenant_id,
            "--did",
            did,
            "--dataspace",
            &dataspace_id,
            "--wait",
        ]
        .map(String::from)
        .to_vec()
    };
    let (status, screen) = cli.in_terminal(&onboard("did:web:consumer.example"));
    assert!(status.success(), "{screen}");
    assert!(
        screen.contains("deploy ["),
        "the progress bar is drawn: {screen}"
    );
    assert!(screen.contains("4/4 activities"), "{screen}");
    // The slow step was seen running, then completed: progress is live, not a summary.
    let running = screen
        .find("slow   running")
        .unwrap_or_else(|| panic!("{screen}"));
    let completed = screen
        .find("slow   completed in")
        .unwrap_or_else(|| panic!("{screen}"));
    assert!(running < completed, "{screen}");
    assert!(
        screen.contains('\u{1b}'),
        "a terminal gets redrawn lines: {screen}"
    );
    assert!(screen.contains("active"), "the final profile: {screen}");

    // The participant as a table, and its orchestration drawn with every step done.
    let listed = cli.ok(&["participants", "list", "--tenant", &tenant_id]);
    let row = listed
        .lines()
        .find(|l| l.contains("did:web:consumer.example"))
        .unwrap();
    assert!(
        row.contains("active") && row.contains(&text(&cell, "id")),
        "{listed}"
    );
    assert!(
        listed.lines().next().unwrap().contains("IDENTIFIER"),
        "{listed}"
    );
    let profile_id = row.split_whitespace().next().unwrap().to_string();
    let history = cli.json(&["participants", "history", &profile_id]);
    let deploy = text(&history[0], "orchestrationId");
    let graph = cli.ok(&["orchestrations", "show", &deploy]);
    assert_eq!(graph.matches('✓').count(), 4, "{graph}");
    assert!(graph.contains("stage 3"), "{graph}");
    assert!(
        !graph.contains('\u{1b}'),
        "no colour codes into a pipe: {graph}"
    );

    // A scripted failure: non-zero, with the failing step and its error.
    let (status, screen) = cli.in_terminal(&onboard(FAILING_DID));
    assert!(!status.success(), "{screen}");
    assert!(
        screen.contains("failed at step check (example.noop.1)"),
        "{screen}"
    );
    assert!(screen.contains("failDeploysOf"), "{screen}");
    let failed = cli.json(&[
        "participants",
        "query",
        &format!("identifier = '{FAILING_DID}'"),
    ]);
    let failed_id = text(&failed[0], "id");
    let history = cli.json(&["participants", "history", &failed_id]);
    let graph = cli.ok(&[
        "orchestrations",
        "show",
        &text(&history[0], "orchestrationId"),
    ]);
    let check = graph.lines().find(|l| l.contains(" check ")).unwrap();
    assert!(check.contains('✗') && check.contains("failed"), "{graph}");
    assert!(
        graph.contains("failDeploysOf"),
        "the step's error is drawn under it: {graph}"
    );

    // In a pipe: one plain line per change, no escape codes, the same verdict.
    let retried = cli.run(&["participants", "retry", &failed_id, "--wait"]);
    assert!(!retried.status.success());
    let log = String::from_utf8_lossy(&retried.stderr);
    assert!(!log.contains('\u{1b}'), "{log}");
    assert!(
        log.lines()
            .any(|l| l.starts_with("✗ check") && l.contains("failDeploysOf")),
        "{log}"
    );
    // It followed the retry's deploy, not the one that failed before.
    let history = cli.json(&["participants", "history", &failed_id]);
    let newest = text(&history[0], "orchestrationId");
    assert!(
        log.contains(&format!("{newest} failed at step check")),
        "{log}"
    );

    // Decommissioning one deployed without a dispose: nothing to follow, disposed at once.
    let disposed = cli.json(&["participants", "delete", &profile_id, "--wait"]);
    assert_eq!(disposed["vpas"][0]["state"], "disposed", "{disposed}");

    // With a dispose (the template's next version), --wait follows it to the end.
    let versioned = dir.path().join("template-v2.json");
    let mut v2: Value = serde_json::from_str(&std::fs::read_to_string(&template).unwrap()).unwrap();
    v2["activities"]["cfm.orchestration.vpa.dispose"] =
        json!([{"id": "vault", "type": "cfm.vault.credentials"}]);
    std::fs::write(&versioned, v2.to_string()).unwrap();
    let definition_id = text(&definition, "id");
    let path = versioned.display().to_string();
    cli.json(&[
        "definitions",
        "create",
        "-f",
        &path,
        "--new-version-of",
        &definition_id,
    ]);
    let leaver = cli.ok(&onboard("did:web:leaver.example")
        .iter()
        .map(String::as_str)
        .chain(["-o", "id"])
        .collect::<Vec<_>>());
    let leaver = leaver.trim();
    let left = cli.run(&["participants", "delete", leaver, "--wait", "-o", "json"]);
    let log = String::from_utf8_lossy(&left.stderr);
    assert!(left.status.success(), "{log}");
    assert!(
        log.lines().any(|l| l.starts_with("✓ vault")),
        "the dispose's step: {log}"
    );
    let left: Value = serde_json::from_slice(&left.stdout).unwrap();
    assert_eq!(left["vpas"][0]["state"], "disposed", "{left}");

    // A token confined to the tenant may not read orchestrations: --wait follows the
    // participant's history instead, and the tenant sees only its own participants.
    let confined = dir.path().join("tenant.token");
    std::fs::write(&confined, tenant_token(&server, &tenant_id)).unwrap();
    let tenant_cli = Client {
        token: confined,
        ..cli.clone()
    };
    let onboarded = tenant_cli.run(
        &onboard("did:web:confined.example")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(
        onboarded.status.success(),
        "{}",
        String::from_utf8_lossy(&onboarded.stderr)
    );
    let log = String::from_utf8_lossy(&onboarded.stderr);
    let confined_id = String::from_utf8_lossy(&onboarded.stdout)
        .lines()
        .find(|l| l.contains("did:web:confined.example"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    let history = cli.json(&["participants", "history", &confined_id]);
    let deploy = text(&history[0], "orchestrationId");
    assert!(
        log.contains(&format!("orchestration {deploy} completed")),
        "{log}"
    );
    assert!(
        !log.contains('✓'),
        "no steps without the right to read them: {log}"
    );
    let other = cli.json(&["tenants", "create", "--name", "Other"]);
    let refused = tenant_cli.run(&["participants", "list", "--tenant", &text(&other, "id")]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("404"),
        "{refused:?}"
    );
}

#[tokio::test]
async fn contexts_errors_and_completions() {
    let server = Server::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let cli = Client::new(&server, dir.path());
    let config = dir.path().join("config.toml");
    let bare = |args: &[&str]| {
        Command::new(cfm_binary())
            .args(args)
            .env("CFM_CONFIG", &config)
            .env_remove("CFM_API")
            .env_remove("CFM_TOKEN_FILE")
            .env_remove("CFM_TOKEN")
            .current_dir(dir.path())
            .output()
            .unwrap()
    };

    // Without a context or flags there is no token to send: a clear refusal.
    let none = bare(&["tenants", "list"]);
    assert!(!none.status.success());
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("no API token"),
        "{none:?}"
    );

    // A context names the server and the token file; the file keeps no token.
    let token_file = cli.token.display().to_string();
    let set = bare(&[
        "context",
        "set",
        "local",
        "--api",
        &cli.api,
        "--token-file",
        &token_file,
    ]);
    assert!(set.status.success(), "{set:?}");
    let saved = std::fs::read_to_string(&config).unwrap();
    assert!(saved.contains("current-context = \"local\""), "{saved}");
    assert!(
        !saved.contains(
            &std::fs::read_to_string(&cli.token)
                .unwrap()
                .trim()
                .to_string()
        )
    );
    cli.json(&["tenants", "create", "--name", "Via Context"]);
    let listed = bare(&["tenants", "list"]);
    assert!(listed.status.success(), "{listed:?}");
    assert!(String::from_utf8_lossy(&listed.stdout).contains("Via Context"));
    let missing = bare(&["context", "use", "nowhere"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no context named"));

    // The server's refusals come through with status and message, never a panic.
    let unknown = cli.run(&["tenants", "get", "no-such-tenant"]);
    assert_eq!(unknown.status.code(), Some(1));
    let said = String::from_utf8_lossy(&unknown.stderr);
    assert!(said.contains("404"), "{said}");
    assert!(!said.contains("panicked"), "{said}");
    let bad = cli.run(&["participants", "query", "identifier ==="]);
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("400"),
        "{bad:?}"
    );
    let unreachable = bare(&[
        "tenants",
        "list",
        "--api",
        "http://127.0.0.1:9",
        "--token-file",
        &token_file,
    ]);
    assert!(
        String::from_utf8_lossy(&unreachable.stderr).contains("cannot reach cfm"),
        "{unreachable:?}"
    );

    // A completion script knows the client's commands.
    let bash = bare(&["completions", "bash"]);
    assert!(bash.status.success());
    let script = String::from_utf8_lossy(&bash.stdout);
    assert!(
        script.contains("participants") && script.contains("--wait"),
        "{script}"
    );
}

/// Fleet operations through the client, each followed with `--wait` to its end in a pipe:
/// a participant migrated, a cell drained, a template version rolled out; a plan made;
/// and the refusals a person meets said plainly.
#[tokio::test]
async fn fleet_operations_are_followed_to_their_end() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&["--no-seed"]).await;
    let api = server.client();
    template_v1(&api).await;
    let tenant = api.post_ok("/tenants", json!({}), 201).await;
    let tenant = text(&tenant, "id");
    create_cell(&api, "cell-a", 20, "eu").await;
    let mut profiles = Vec::new();
    for n in 0..3 {
        let (status, profile) = deploy(&api, &tenant, n, json!({})).await;
        assert_eq!(status, 202, "{profile}");
        profiles.push(text(&profile, "id"));
    }
    for id in &profiles {
        api.wait_active(&tenant, id, std::time::Duration::from_secs(60))
            .await;
    }
    create_cell(&api, "cell-b", 20, "eu").await;
    let cli = Client::new(&server, dir.path());

    // A migration, its states as lines, then the migration completed.
    let migrated = cli.run(&[
        "participants",
        "migrate",
        &profiles[0],
        "--to",
        "cell-b",
        "--wait",
        "-o",
        "json",
    ]);
    let said = String::from_utf8_lossy(&migrated.stderr).to_string();
    assert!(migrated.status.success(), "{said}");
    assert!(said.contains(" completed"), "{said}");
    let migration: Value = serde_json::from_slice(&migrated.stdout).unwrap();
    assert_eq!(migration["state"], "completed", "{migration}");
    let listed = cli.ok(&["participants", "migrations", &profiles[0]]);
    assert!(
        listed
            .lines()
            .nth(1)
            .is_some_and(|l| l.contains("completed")),
        "{listed}"
    );

    // The cell's drain moves the other two; progress lines, then 2/2 moved.
    let drained = cli.run(&["drains", "start", "cell-a", "--parallelism", "2", "--wait"]);
    let said = String::from_utf8_lossy(&drained.stderr).to_string();
    assert!(drained.status.success(), "{said}");
    assert!(said.contains("drain completed: 2/2"), "{said}");
    assert!(
        !said.contains('\u{1b}'),
        "no escape codes into a pipe: {said}"
    );
    let table = String::from_utf8_lossy(&drained.stdout).to_string();
    assert!(
        table.contains("completed") && table.contains("2/2"),
        "{table}"
    );
    for id in &profiles {
        let profile = api
            .get_json(&format!("/tenants/{tenant}/participant-profiles/{id}"))
            .await;
        let cell = api
            .get_json(&format!(
                "/cells/{}",
                profile["vpas"][0]["cellId"].as_str().unwrap()
            ))
            .await;
        assert_eq!(cell["externalId"], "cell-b", "{profile}");
    }

    // A rollout to version 2, followed to completed; its participants all upgraded.
    add_version_2(&api).await;
    let rollout = cli.run(&[
        "rollouts",
        "create",
        "--template",
        TEMPLATE,
        "--batch-size",
        "2",
        "--wait",
        "-o",
        "json",
    ]);
    let said = String::from_utf8_lossy(&rollout.stderr).to_string();
    assert!(rollout.status.success(), "{said}");
    assert!(said.contains("rollout completed: 3/3"), "{said}");
    let rollout: Value = serde_json::from_slice(&rollout.stdout).unwrap();
    assert_eq!(rollout["progress"]["upgraded"], 3, "{rollout}");
    let targets = cli.json(&["rollouts", "participants", &text(&rollout, "id")]);
    assert_eq!(targets.as_array().unwrap().len(), 3, "{targets}");
    assert!(
        targets
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["state"] == "upgraded"),
        "{targets}"
    );
    let listed = cli.ok(&["rollouts", "list"]);
    assert!(listed.contains(&format!("{TEMPLATE} → v2")), "{listed}");

    // Verify: in sync, exit 0. A key removed behind cfm's back: drifted, exit 1 naming the
    // activity; a reconcile puts it back, exit 0.
    let verified = cli.run(&["participants", "verify", &profiles[0], "--wait"]);
    let said = String::from_utf8_lossy(&verified.stderr).to_string();
    assert!(verified.status.success(), "{said}");
    assert!(said.contains("verify in-sync"), "{said}");
    let key = server.data_dir().join(format!(
        "secrets/participants/{}/api-key.secret",
        profiles[0]
    ));
    std::fs::remove_file(&key).unwrap();
    let drifted = cli.run(&["participants", "verify", &profiles[0], "--wait"]);
    let said = String::from_utf8_lossy(&drifted.stderr).to_string();
    assert_eq!(drifted.status.code(), Some(1), "{said}");
    assert!(said.contains("drifted: vault"), "{said}");
    let repaired = cli.run(&["participants", "reconcile", &profiles[0], "--wait"]);
    let said = String::from_utf8_lossy(&repaired.stderr).to_string();
    assert!(repaired.status.success(), "{said}");
    assert!(said.contains("reconcile repaired"), "{said}");
    assert!(key.exists(), "the key is back");

    // Scaling: the update applies, and the VPA carries the properties.
    let scaled = cli.json(&[
        "participants",
        "scale",
        &profiles[1],
        "--vpa",
        "cfm.connector",
        "--set",
        "replicas=3",
        "--wait",
    ]);
    assert_eq!(scaled, json!({"replicas": 3}));

    // Cordoning by external id, and back.
    let by_name = cli.json(&["cells", "get", "cell-b"]);
    assert_eq!(by_name["externalId"], "cell-b", "{by_name}");
    let cordoned = cli.json(&["cells", "cordon", "cell-b"]);
    assert_eq!(cordoned["state"], "cordoned", "{cordoned}");
    let active = cli.json(&["cells", "uncordon", "cell-b"]);
    assert_eq!(active["state"], "active", "{active}");

    // A rebalance plan is a dry run: planned, nothing moved.
    let plan = cli.json(&["rebalance", "plan"]);
    assert_eq!(plan["state"], "planned", "{plan}");
    assert_eq!(plan["progress"]["moved"], 0, "{plan}");

    // Refusals: no such cell; a drain of a cell that was drained is a new one with
    // nothing to move.
    let missing = cli.run(&["drains", "start", "cell-nope"]);
    assert!(!missing.status.success());
    let said = String::from_utf8_lossy(&missing.stderr).to_string();
    assert!(said.contains("no cell cell-nope"), "{said}");
    let again = cli.run(&["drains", "get", "cell-a", "-o", "json"]);
    let drain: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(drain["state"], "completed", "{drain}");
}

/// The `cfm` binary as a client of one server.
#[derive(Clone)]
pub(super) struct Client {
    api: String,
    token: PathBuf,
    /// Where the command runs, so no `cfm-data` of the working tree is picked up.
    cwd: PathBuf,
}

impl Client {
    pub(super) fn new(server: &Server, cwd: &Path) -> Client {
        Client {
            api: server.base().to_string(),
            token: server.data_dir().join("admin.token"),
            cwd: cwd.to_path_buf(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(cfm_binary());
        command
            .args(args)
            .args([
                "--api",
                &self.api,
                "--token-file",
                &self.token.display().to_string(),
            ])
            .env("CFM_CONFIG", self.cwd.join("no-contexts.toml"))
            .env_remove("NO_COLOR")
            .current_dir(&self.cwd);
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).stdin(Stdio::null()).output().unwrap()
    }

    /// Runs a command that must succeed; its standard output.
    pub(super) fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "cfm {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Runs a command with `-o json`; its answer.
    fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&args)).unwrap()
    }

    /// Runs a command with a pseudo-terminal as its standard input, output and error;
    /// its exit status and everything it wrote to the terminal.
    fn in_terminal(&self, args: &[String]) -> (ExitStatus, String) {
        use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
        let master =
            openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).unwrap();
        grantpt(&master).unwrap();
        unlockpt(&master).unwrap();
        let name = ptsname(&master, Vec::new()).unwrap();
        let terminal = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(name.to_str().unwrap())
            .unwrap();
        rustix::termios::tcsetwinsize(
            &terminal,
            rustix::termios::Winsize {
                ws_row: 40,
                ws_col: 120,
                ws_xpixel: 0,
                ws_ypixel: 0,
            },
        )
        .unwrap();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut command = self.command(&args);
        command
            .stdin(terminal.try_clone().unwrap())
            .stdout(terminal.try_clone().unwrap())
            .stderr(terminal);
        let mut child = command.spawn().unwrap();
        // The parent's copies of the terminal go, so reading ends when the child's do.
        drop(command);
        let mut master = std::fs::File::from(master);
        let reader = std::thread::spawn(move || {
            let mut screen = Vec::new();
            let mut buffer = [0u8; 4096];
            // Linux answers EIO once every end of the terminal is closed.
            while let Ok(n @ 1..) = master.read(&mut buffer) {
                screen.extend_from_slice(&buffer[..n]);
            }
            String::from_utf8_lossy(&screen).into_owned()
        });
        let status = child.wait().unwrap();
        (status, reader.join().unwrap())
    }
}

fn text(value: &Value, field: &str) -> String {
    value[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in {value}"))
        .to_string()
}
