//! The `cfm.issuer.credentials` activity, not implemented yet.
//!
//! It exists so that orchestrations and host configuration can already name the
//! activity type; every invocation fails rather than pretending to issue anything.

use cfm_plugin_sdk::{Activity, Error, NoSettings, Outcome, Plugin};

struct Issuer;

fn not_implemented() -> Result<Outcome, Error> {
    Err(Error::Fatal(
        "the issuer plugin is not implemented yet".into(),
    ))
}

impl Plugin for Issuer {
    type Settings = NoSettings;

    fn deploy(_: &Activity<NoSettings>) -> Result<Outcome, Error> {
        not_implemented()
    }

    fn dispose(_: &Activity<NoSettings>) -> Result<Outcome, Error> {
        not_implemented()
    }
}

cfm_plugin_sdk::export_plugin!(Issuer);
