//! What the agent host's integration tests share: the built plugins, configurations that
//! load them, and activity tasks to run.

use std::path::{Path, PathBuf};

use cfm_host::HostConfig;
use cfm_protocol::ActivityTask;
use serde_json::json;
use sha2::{Digest, Sha256};

pub const DID: &str = "did:web:p.example";

/// The audit records a host wrote to `<dir>/audit.jsonl`, oldest first.
pub fn audit_records(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
pub const DEPLOY: &str = "cfm.orchestration.vpa.deploy";
pub const DISPOSE: &str = "cfm.orchestration.vpa.dispose";

/// Where scripts/build-plugins.sh puts the components (`CFM_PLUGIN_DIR` overrides it).
pub fn plugin_dir() -> PathBuf {
    let dir = std::env::var_os("CFM_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins"));
    assert!(
        dir.join("vault.wasm").exists(),
        "{} has no plugins: run scripts/build-plugins.sh",
        dir.display()
    );
    dir
}

pub fn digest(name: &str) -> String {
    hex::encode(Sha256::digest(
        std::fs::read(plugin_dir().join(format!("{name}.wasm"))).unwrap(),
    ))
}

/// A configuration of built plugins, each given as (name, activity type, extra TOML for
/// its limits, settings and grants).
pub fn config(plugins: &[(&str, &str, &str)]) -> HostConfig {
    let text: String = plugins
        .iter()
        .map(|(name, activity_type, extra)| {
            format!(
                "[[plugin]]\nname = \"{name}\"\npath = \"{name}.wasm\"\nsha256 = \"{}\"\nactivity-types = [\"{activity_type}\"]\n{extra}\n",
                digest(name)
            )
        })
        .collect();
    let mut config = HostConfig::parse(&text).unwrap();
    config.base_dir = plugin_dir();
    config
}

/// A first deploy attempt of `activity_type` for participant context `pc` (DID [`DID`]),
/// with one VPA in cell `c1` (seen from outside as `cell-a`) and no credentials.
pub fn task(activity_type: &str, pc: &str) -> ActivityTask {
    let data = json!({
        "cfm.participant.id": DID,
        "cfm.participant.contextId": pc,
        "cfm.vpa.data": [{"id": "v1", "vpaType": "cfm.connector", "cellId": "c1", "externalCellId": "cell-a", "properties": {}}],
        "cfm.vpa.credentials": []
    });
    ActivityTask {
        orchestration_id: "o1".into(),
        activity_id: "a1".into(),
        activity_type: activity_type.into(),
        discriminator: DEPLOY.into(),
        attempt: 1,
        participant_id: DID.into(),
        participant_context_id: pc.into(),
        processing_data: data.as_object().unwrap().clone(),
        state: None,
        timeout_ms: 30_000,
        trace_parent: None,
    }
}
