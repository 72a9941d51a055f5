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
