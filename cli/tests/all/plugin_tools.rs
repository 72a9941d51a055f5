//! `cfm plugin keygen | sign | verify` as an author and an operator use them.

use std::path::Path;
use std::process::{Command, Output};

fn cfm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cfm"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn a_signed_plugin_verifies_with_its_key_and_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name).display().to_string();
    let plugin = Path::new(env!("CARGO_BIN_EXE_cfm"))
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("plugins/noop.wasm");
    std::fs::copy(&plugin, at("noop.wasm")).expect("run scripts/build-plugins.sh first");

    let public = stdout(&cfm(&["plugin", "keygen", "--out", &at("author.key")]));
    let public = public.trim();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(at("author.key")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let again = cfm(&["plugin", "keygen", "--out", &at("author.key")]);
    assert!(!again.status.success(), "an existing key was overwritten");
    let other = stdout(&cfm(&["plugin", "keygen", "--out", &at("other.key")]));

    let signed = stdout(&cfm(&[
        "plugin",
        "sign",
        "--key",
        &at("author.key"),
        &at("noop.wasm"),
    ]));
    assert!(signed.contains("sha256 "), "{signed}");
    assert!(Path::new(&at("noop.wasm.sig")).exists());

    let ok = stdout(&cfm(&[
        "plugin",
        "verify",
        "--trusted-key",
        public,
        &at("noop.wasm"),
    ]));
    assert!(ok.contains("signed by a trusted key"), "{ok}");
    // Any one of several trusted keys will do.
    stdout(&cfm(&[
        "plugin",
        "verify",
        "--trusted-key",
        other.trim(),
        "--trusted-key",
        public,
        &at("noop.wasm"),
    ]));

    let refused = cfm(&[
        "plugin",
        "verify",
        "--trusted-key",
        other.trim(),
        &at("noop.wasm"),
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no trusted key"));

    // A changed file no longer matches what was signed.
    let mut bytes = std::fs::read(at("noop.wasm")).unwrap();
    bytes.push(0);
    std::fs::write(at("noop.wasm"), bytes).unwrap();
    let tampered = cfm(&[
        "plugin",
        "verify",
        "--trusted-key",
        public,
        &at("noop.wasm"),
    ]);
    assert!(!tampered.status.success(), "a changed plugin verified");
}

fn built(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_BIN_EXE_cfm"))
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join(format!("plugins/{name}.wasm"))
}

#[test]
fn inspect_names_what_a_component_needs() {
    let shown = stdout(&cfm(&[
        "plugin",
        "inspect",
        built("vault").to_str().unwrap(),
    ]));
    assert!(shown.contains("cfm:plugin/activity@0.1.0"), "{shown}");
    assert!(shown.contains("cfm:plugin/secrets@0.1.0"), "{shown}");
    assert!(shown.contains("grants needed: secrets\n"), "{shown}");
    let shown = stdout(&cfm(&[
        "plugin",
        "inspect",
        built("noop").to_str().unwrap(),
    ]));
    assert!(shown.contains("grants needed: none"), "{shown}");

    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm not really").unwrap();
    let refused = cfm(&["plugin", "inspect", junk.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not a valid component"));
}

#[test]
fn check_loads_plugins_as_the_host_would() {
    let digest = |name: &str| {
        let shown = stdout(&cfm(&["plugin", "inspect", built(name).to_str().unwrap()]));
        shown
            .lines()
            .find_map(|l| l.strip_prefix("sha256: "))
            .unwrap()
            .to_string()
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("plugins.toml");
    // vault imports secrets but is granted none; noop needs nothing.
    std::fs::write(
        &config,
        format!(
            "[[plugin]]\nname = \"vault\"\npath = \"{}\"\nsha256 = \"{}\"\nactivity-types = [\"v\"]\n\n\
             [[plugin]]\nname = \"noop\"\npath = \"{}\"\nsha256 = \"{}\"\nactivity-types = [\"n\"]\n",
            built("vault").display(),
            digest("vault"),
            built("noop").display(),
            digest("noop"),
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let all = cfm(&["plugin", "check", "--config", config]);
    assert!(!all.status.success());
    let text = String::from_utf8_lossy(&all.stdout);
    assert!(text.contains("noop: ok"), "{text}");
    assert!(
        text.contains("vault:") && text.contains("'secrets' capability"),
        "{text}"
    );
    stdout(&cfm(&["plugin", "check", "--config", config, "noop"]));
    let unknown = cfm(&["plugin", "check", "--config", config, "nope"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no plugin named 'nope'"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scaffolded_plugin_builds_loads_and_runs() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let dir = tempfile::tempdir().unwrap();
    stdout(&cfm(&[
        "plugin",
        "new",
        "hello-world",
        "--dir",
        dir.path().to_str().unwrap(),
    ]));
    let crate_dir = dir.path().join("hello-world");
    let again = cfm(&[
        "plugin",
        "new",
        "hello-world",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(
        !again.status.success(),
        "an existing plugin was overwritten"
    );
    assert!(!cfm(&["plugin", "new", "Bad_Name"]).status.success());

    // The plugin workspace's resolved versions, so the build needs nothing new; a target
    // folder of its own, as the one this test runs from is locked by its cargo.
    std::fs::copy(
        repo.join("plugins/Cargo.lock"),
        crate_dir.join("Cargo.lock"),
    )
    .unwrap();
    let built = Command::new(env!("CARGO_BIN_EXE_cfm"))
        .args(["plugin", "build", crate_dir.to_str().unwrap()])
        .env("CARGO_TARGET_DIR", repo.join("target/scaffold-test"))
        .output()
        .unwrap();
    let shown = stdout(&built);
    let entry = &shown[shown.find("[[plugin]]").expect("a configuration entry")..];
    assert!(
        entry.contains("activity-types = [\"hello-world.activity\"]"),
        "{entry}"
    );

    let config_path = dir.path().join("plugins.toml");
    std::fs::write(&config_path, entry).unwrap();
    let checked = stdout(&cfm(&[
        "plugin",
        "check",
        "--config",
        config_path.to_str().unwrap(),
    ]));
    assert!(checked.contains("hello-world: ok"), "{checked}");

    let config = cfm_host::HostConfig::load(&config_path).unwrap();
    let data = tempfile::tempdir().unwrap();
    let host = cfm_host::AgentHost::new(
        &config,
        cfm_host::Backends::embedded(data.path()),
        cfm_host::Audit::to_file(&data.path().join("audit.jsonl")).unwrap(),
        cfm_host::runtime::HostOptions::default(),
    )
    .unwrap();
    let task = cfm_protocol::ActivityTask {
        orchestration_id: "o1".into(),
        activity_id: "hello".into(),
        activity_type: "hello-world.activity".into(),
        discriminator: "cfm.orchestration.vpa.deploy".into(),
        attempt: 1,
        participant_id: "did:web:p.example".into(),
        participant_context_id: "p1".into(),
        processing_data: serde_json::json!({"cfm.participant.id": "did:web:p.example",
            "cfm.participant.contextId": "p1"})
        .as_object()
        .unwrap()
        .clone(),
        state: None,
        timeout_ms: 30_000,
        trace_parent: None,
    };
    match host.run(&task).await {
        cfm_protocol::ActivityOutcome::Complete { output } => {
            assert_eq!(output["markerPath"], "participants/p1/hello-world-marker");
        }
        other => panic!("{other:?}"),
    }
}
