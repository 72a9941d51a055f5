//! The `cfm.dns.routing` activity: points `<participant-context-id>.<zone>` at the
//! ingress of the cell hosting the participant's first VPA.

use cfm_plugin_sdk::{
    Activity, CapabilityResultExt, Error, Outcome, Plugin, Vpa, dns, is_dns_label, log,
};
use serde_json::json;

const RECORD_TYPE: &str = "CNAME";
const TTL_SECONDS: u32 = 300;

/// The plugin's `[plugin.settings]` table.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Settings {
    /// The zone participant names are created in; must be among the dns grants.
    zone: String,
    /// Appended to a cell id to name that cell's ingress.
    cell_target_suffix: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            zone: "participants.cfm.local".into(),
            cell_target_suffix: "cells.cfm.local.".into(),
        }
    }
}

struct Dns;

/// The record name, relative to the zone, checked here so that a malformed id
/// fails with a clear message rather than a backend rejection.
fn record_name(activity: &Activity<Settings>) -> Result<&str, Error> {
    let name = activity.participant_context_id();
    if is_dns_label(name) {
        Ok(name)
    } else {
        Err(Error::Fatal(format!(
            "participant context id '{name}' is not a valid DNS label"
        )))
    }
}

/// Where the participant's traffic goes: the cell as seen from outside when it
/// has an external id, else the cell itself.
fn target(vpa: &Vpa, suffix: &str) -> String {
    let cell = match vpa.external_cell_id.as_deref() {
        Some(external) if !external.is_empty() => external,
        _ => vpa.cell_id.as_str(),
    };
    format!("{cell}.{}", suffix.trim_start_matches('.'))
}

impl Plugin for Dns {
    type Settings = Settings;

    fn deploy(activity: &Activity<Settings>) -> Result<Outcome, Error> {
        let settings = activity.settings();
        let name = record_name(activity)?;
        let record = dns::ResourceRecord {
            name: name.into(),
            record_type: RECORD_TYPE.into(),
            ttl: TTL_SECONDS,
            data: target(
                Vpa::primary(&activity.vpas()?)?,
                &settings.cell_target_suffix,
            ),
        };
        // upsert replaces the record set, so a redelivery leaves one record.
        let change = dns::upsert(&settings.zone, &record)
            .context(format!("upsert {name}.{} {RECORD_TYPE}", settings.zone))?;
        log::info(&format!(
            "{name}.{} {RECORD_TYPE} {}: {}",
            settings.zone,
            record.data,
            change.as_str()
        ));
        Outcome::complete(json!({ "dnsName": format!("{name}.{}", settings.zone) }))
    }

    fn dispose(activity: &Activity<Settings>) -> Result<Outcome, Error> {
        let zone = &activity.settings().zone;
        let name = record_name(activity)?;
        let existed = dns::remove(zone, name, RECORD_TYPE)
            .context(format!("remove {name}.{zone} {RECORD_TYPE}"))?;
        log::info(&format!(
            "{name}.{zone} {RECORD_TYPE}: {}",
            if existed { "removed" } else { "already gone" }
        ));
        Ok(Outcome::empty())
    }
}

cfm_plugin_sdk::export_plugin!(Dns);
