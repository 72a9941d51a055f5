//! An example plugin (`example.noop.*`) that completes at once and touches nothing:
//! with it, an onboarding measures the management plane alone (queue, engine,
//! database, sandbox entry and exit), not any backend.

use cfm_plugin_sdk::{Activity, Error, NoSettings, Outcome, Plugin};

struct Noop;

impl Plugin for Noop {
    type Settings = NoSettings;

    fn deploy(_: &Activity<NoSettings>) -> Result<Outcome, Error> {
        Ok(Outcome::empty())
    }

    fn dispose(_: &Activity<NoSettings>) -> Result<Outcome, Error> {
        Ok(Outcome::empty())
    }
}

cfm_plugin_sdk::export_plugin!(Noop);
