//! The `cfm.vault.credentials` activity: gives each participant an API key in the
//! secrets backend and tells later activities where it is, never what it is.

use cfm_plugin_sdk::{
    Activity, CapabilityResultExt, Error, NoSettings, Outcome, Plugin, keys, log, random_hex,
    secrets,
};
use serde_json::json;

/// 32 random bytes: as strong as any key the participant's services will check.
const API_KEY_BYTES: usize = 32;
const API_KEY: &str = "api-key";

struct Vault;

impl Plugin for Vault {
    type Settings = NoSettings;

    fn deploy(activity: &Activity<NoSettings>) -> Result<Outcome, Error> {
        let path = activity.secret_path(API_KEY);
        // put-if-absent keeps the key from the first delivery, so a redelivery
        // cannot rotate a key that services may already have picked up.
        let (_, change) = secrets::put_if_absent(&path, &random_hex(API_KEY_BYTES)?)
            .context(format!("store the api key at {path}"))?;
        log::info(&format!("api key at {path}: {}", change.as_str()));
        Outcome::complete(json!({
            "vaultPath": activity.secrets_root(),
            (keys::CREDENTIAL_PATH): path,
        }))
    }

    fn dispose(activity: &Activity<NoSettings>) -> Result<Outcome, Error> {
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
