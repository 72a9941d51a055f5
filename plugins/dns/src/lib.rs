//! The `cfm.dns.routing` activity: points `<participant-context-id>.<zone>` at the
//! ingress of the cell hosting the participant's first VPA.

use cfm_plugin_sdk::{
    Activity, CapabilityResultExt, Error, MigrationPhase, Outcome, Plugin, Vpa, dns, is_dns_label,
    log,
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

/// The cell property naming a cell's ingress outright, in place of `<cell>.<suffix>`.
const DNS_TARGET_PROPERTY: &str = "dnsTarget";

/// Where the participant's traffic goes: the cell's `dnsTarget` when it has one, else
/// the cell as seen from outside when it has an external id, else the cell itself.
fn target(cell_id: &str, external: Option<&str>, dns_target: Option<&str>, suffix: &str) -> String {
    if let Some(named) = dns_target.filter(|t| !t.is_empty()) {
        return named.to_string();
    }
    let cell = match external {
        Some(external) if !external.is_empty() => external,
        _ => cell_id,
    };
    format!("{cell}.{}", suffix.trim_start_matches('.'))
}

fn vpa_target(vpa: &Vpa, suffix: &str) -> String {
    target(
        &vpa.cell_id,
        vpa.external_cell_id.as_deref(),
        vpa.cell_property(DNS_TARGET_PROPERTY),
        suffix,
    )
}

/// Points the name at `data`, replacing whatever it pointed at in one update: the name
/// never stops resolving.
fn point(activity: &Activity<Settings>, data: String) -> Result<Outcome, Error> {
    let settings = activity.settings();
    let name = record_name(activity)?;
    let record = dns::ResourceRecord {
        name: name.into(),
        record_type: RECORD_TYPE.into(),
        ttl: TTL_SECONDS,
        data,
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

impl Plugin for Dns {
    type Settings = Settings;

    /// Also a migration's switch of routing: the name moves to the target cell in one
    /// update.
    fn deploy(activity: &Activity<Settings>) -> Result<Outcome, Error> {
        let suffix = &activity.settings().cell_target_suffix;
        point(
            activity,
            vpa_target(Vpa::primary(&activity.vpas()?)?, suffix),
        )
    }

    fn dispose(activity: &Activity<Settings>) -> Result<Outcome, Error> {
        if let Some(migration) = activity.migration()? {
            return match migration.phase {
                // The name points at the target since the switch: leaving the source
                // removes nothing.
                MigrationPhase::Source | MigrationPhase::Target => {
                    log::info("migration: the name stays, it points at the participant's new cell");
                    Ok(Outcome::empty())
                }
                // The name may already point at the target: point it back at the source,
                // where the participant still lives, never leaving it unresolved.
                MigrationPhase::Rollback => {
                    let source = &migration.source;
                    let suffix = &activity.settings().cell_target_suffix;
                    point(
                        activity,
                        target(
                            &source.cell_id,
                            source.external_cell_id.as_deref(),
                            source.cell_property(DNS_TARGET_PROPERTY),
                            suffix,
                        ),
                    )
                }
            };
        }
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
