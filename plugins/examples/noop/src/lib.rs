//! An example plugin (`example.noop.*`) that completes at once and touches nothing:
//! with it, an onboarding measures the management plane alone (queue, engine,
//! database, sandbox entry and exit), not any backend.
//!
//! It can also stand in for a plugin version with a bug: the participants its
//! `failDeploysOf` setting lists fail every deploy (upgrades included), those
//! `failUpgradesOf` lists every upgrade, and those `failDisposesOf` lists every dispose,
//! until a reload of the setting "fixes" it.

use cfm_plugin_sdk::{Activity, Error, Outcome, Plugin};

/// The plugin's `[plugin.settings]` table.
#[derive(Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Settings {
    /// Participant DIDs whose deploys fail (a fatal error naming the DID).
    fail_deploys_of: Vec<String>,
    /// Participant DIDs whose upgrades fail (a fatal error naming the DID).
    fail_upgrades_of: Vec<String>,
    /// Participant DIDs whose disposes fail (a fatal error naming the DID).
    fail_disposes_of: Vec<String>,
}

impl Settings {
    fn lists(list: &[String], participant: &str) -> bool {
        list.iter().any(|did| did == participant)
    }
}

struct Noop;

impl Plugin for Noop {
    type Settings = Settings;

    fn deploy(activity: &Activity<Settings>) -> Result<Outcome, Error> {
        let participant = activity.participant_id();
        if Settings::lists(&activity.settings().fail_deploys_of, participant) {
            return Err(Error::Fatal(format!(
                "deploy of {participant} fails (failDeploysOf)"
            )));
        }
        if let Some(upgrade) = activity.upgrade()?
            && Settings::lists(&activity.settings().fail_upgrades_of, participant)
        {
            return Err(Error::Fatal(format!(
                "upgrade of {participant} to version {} fails (failUpgradesOf)",
                upgrade.to_version
            )));
        }
        Ok(Outcome::empty())
    }

    fn dispose(activity: &Activity<Settings>) -> Result<Outcome, Error> {
        let participant = activity.participant_id();
        if Settings::lists(&activity.settings().fail_disposes_of, participant) {
            return Err(Error::Fatal(format!(
                "dispose of {participant} fails (failDisposesOf)"
            )));
        }
        Ok(Outcome::empty())
    }
}

cfm_plugin_sdk::export_plugin!(Noop);
