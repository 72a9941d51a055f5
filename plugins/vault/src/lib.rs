//! The `cfm.vault.credentials` activity: gives each participant an API key in the
//! secrets backend and tells later activities where it is, never what it is. With
//! `runtimeAccess`, it also issues the participant's runtime a credential that reads the
//! participant's secrets folder and nothing else, and leaves it at
//! `participants/<pc>/runtime-access` for the runtime objects (the k8s plugin) to hand over.

use cfm_plugin_sdk::{
    Activity, CapabilityResultExt, Error, Outcome, Plugin, RUNTIME_ACCESS_SECRET, keys, log,
    random_hex, secrets,
};
use serde_json::json;

/// 32 random bytes: as strong as any key the participant's services will check.
const API_KEY_BYTES: usize = 32;
const API_KEY: &str = "api-key";

/// The plugin's `[plugin.settings]` table.
#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Settings {
    /// Issue the runtime a credential for the participant's folder (needs a secrets store
    /// that issues them, such as Vault, and a grant of the whole folder).
    runtime_access: bool,
}

struct Vault;

impl Plugin for Vault {
    type Settings = Settings;

    fn deploy(activity: &Activity<Settings>) -> Result<Outcome, Error> {
        let path = activity.secret_path(API_KEY);
        // put-if-absent keeps the key from the first delivery, so a redelivery
        // cannot rotate a key that services may already have picked up.
        let (_, change) = secrets::put_if_absent(&path, &random_hex(API_KEY_BYTES)?)
            .context(format!("store the api key at {path}"))?;
        log::info(&format!("api key at {path}: {}", change.as_str()));
        let mut output = json!({
            "vaultPath": activity.secrets_root(),
            (keys::CREDENTIAL_PATH): path,
        });
        if activity.settings().runtime_access {
            let root = activity.secrets_root();
            let credential =
                secrets::issue_access(&root).context(format!("issue access to {root}"))?;
            let handover = activity.secret_path(RUNTIME_ACCESS_SECRET);
            let value = json!({"roleId": credential.id, "secretId": credential.secret});
            secrets::put(&handover, &value.to_string())
                .context(format!("leave the runtime's credential at {handover}"))?;
            log::info(&format!("runtime access to {root}: issued"));
            output["vaultRoleId"] = credential.id.into();
        }
        Outcome::complete(output)
    }

    /// Deploy issues the runtime a new credential each time, so its dry run would always
    /// differ: check that the key and the handed-over credential are there instead.
    fn verify(activity: &Activity<Settings>) -> Result<Outcome, Error> {
        let mut wanted = vec![(activity.secret_path(API_KEY), "the api key")];
        if activity.settings().runtime_access {
            let handover = activity.secret_path(RUNTIME_ACCESS_SECRET);
            wanted.push((handover, "the runtime's credential"));
        }
        let mut drift = Vec::new();
        for (path, what) in wanted {
            if secrets::get(&path)
                .context(format!("read {path}"))?
                .is_none()
            {
                drift.push(format!("{what} at {path} is missing"));
            }
        }
        Ok(Outcome::drifted(drift))
    }

    fn dispose(activity: &Activity<Settings>) -> Result<Outcome, Error> {
        if let Some(migration) = activity.migration()? {
            // One secrets store serves every cell: the participant keeps its secrets
            // wherever it lives, so neither leaving a cell nor a rollback removes them.
            log::info(&format!(
                "migration {} ({:?}): secrets stay, the secrets store is shared by every cell",
                migration.id, migration.phase
            ));
            return Ok(Outcome::empty());
        }
        if activity.settings().runtime_access {
            let root = activity.secrets_root();
            let existed =
                secrets::revoke_access(&root).context(format!("revoke access to {root}"))?;
            log::info(&format!(
                "runtime access to {root}: {}",
                if existed { "revoked" } else { "already gone" }
            ));
            let handover = activity.secret_path(RUNTIME_ACCESS_SECRET);
            secrets::delete(&handover).context(format!("delete {handover}"))?;
        }
        let path = activity.secret_path(API_KEY);
        let existed = secrets::delete(&path).context(format!("delete the api key at {path}"))?;
        log::info(&format!(
            "api key at {path}: {}",
            if existed { "deleted" } else { "already gone" }
        ));
        Ok(Outcome::empty())
    }
}

cfm_plugin_sdk::export_plugin!(Vault);
