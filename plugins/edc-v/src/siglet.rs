//! `siglet-activity` (upstream's siglet agent): the participant's transfer types in
//! Siglet, from the `transferTypeMappings` of its `cfm.dataplane` VPA, and Siglet
//! registered as the participant's data plane in the Control Plane.

use std::collections::BTreeMap;

use cfm_plugin_sdk::{Activity, Error, Outcome, http, log, required_setting};
use serde_json::{Value, json};

use crate::common::{Settings, created, deleted, found, replaced, send, vpa_properties};
use crate::control_plane;

/// The activity type this module serves.
pub const ACTIVITY_TYPE: &str = "siglet-activity";
const AGENT: &str = "siglet";
/// The scope of Siglet management reads.
pub const READ_SCOPE: &str = "siglet-mgmt-api:read";
/// The scope of Siglet management writes.
pub const WRITE_SCOPE: &str = "siglet-mgmt-api:write";
/// The VPA whose properties name the transfer types.
const DATAPLANE_VPA: &str = "cfm.dataplane";
const TRANSFER_TYPE_MAPPINGS: &str = "transferTypeMappings";

/// One transfer type as Siglet takes it, with upstream's defaults filled in.
#[derive(serde::Deserialize, serde::Serialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
struct TransferType {
    transfer_type: String,
    endpoint_type: String,
    #[serde(default)]
    token_source: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    endpoint: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    endpoint_mappings: Vec<EndpointMapping>,
    #[serde(default)]
    tx_renewal_support: bool,
}

#[derive(serde::Deserialize, serde::Serialize, Debug, PartialEq)]
struct EndpointMapping {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
    #[serde(default)]
    endpoint: String,
}

/// Transfer type names onto their definitions.
type Mappings = BTreeMap<String, TransferType>;

/// Creates (or replaces) the participant's transfer type mapping in Siglet, then
/// registers Siglet as its data plane. Without transfer types, nothing is called.
pub fn deploy(activity: &Activity<Settings>, settings: &Settings) -> Result<Outcome, Error> {
    let siglet = required_setting(AGENT, "sigletUrl", &settings.siglet_url)?;
    let signaling = required_setting(AGENT, "sigletSignalingUrl", &settings.siglet_signaling_url)?;
    let control_plane = required_setting(AGENT, "controlPlaneUrl", &settings.control_plane_url)?;
    let pc = activity.participant_context_id();
    let mappings = match vpa_properties(activity, DATAPLANE_VPA)?
        .and_then(|mut properties| properties.remove(TRANSFER_TYPE_MAPPINGS))
    {
        None | Some(Value::Null) => Mappings::new(),
        Some(value) => transfer_types(value)?,
    };
    if mappings.is_empty() {
        log::info(&format!(
            "participant context {pc} has no transfer types (no '{TRANSFER_TYPE_MAPPINGS}' \
             in a {DATAPLANE_VPA} VPA): no data plane to register"
        ));
        return Ok(Outcome::empty());
    }

    let action = format!("look up the Siglet transfer type mapping of {pc}");
    let request =
        http::Request::get(mapping_url(siglet, pc)).header("content-type", "application/json");
    let existing = found(
        send(AGENT, settings, READ_SCOPE, request, &action)?,
        &action,
    )?;
    let mut create = existing.is_none();
    if create {
        let action = format!("create the Siglet transfer type mapping of {pc}");
        let request = http::Request::post(http::join(siglet, "/transfer-type-mappings"))
            .json(&json!({"participantContextId": pc, "mappings": mappings}))?;
        // 409: made meanwhile, by an earlier delivery still running; replace it below.
        create = created(
            send(AGENT, settings, WRITE_SCOPE, request, &action)?,
            &action,
        )?;
        if create {
            log::info(&format!("Siglet transfer type mapping of {pc}: created"));
        }
    }
    if !create {
        // Siglet takes the bare map here; the participant context is in the path.
        let action = format!("replace the Siglet transfer type mapping of {pc}");
        let request = http::Request::put(mapping_url(siglet, pc)).json(&mappings)?;
        replaced(
            send(AGENT, settings, WRITE_SCOPE, request, &action)?,
            &action,
        )?;
        log::info(&format!("Siglet transfer type mapping of {pc}: replaced"));
    }

    let action = format!("register Siglet as the data plane of {pc}");
    let request = http::Request::put(dataplanes_url(control_plane, pc)).json(&json!({
        "dataplaneId": dataplane_id(pc),
        "transferTypes": mappings.keys().collect::<Vec<_>>(),
        "endpoint": http::join(signaling, &format!("/api/v1/{pc}/dataflows")),
    }))?;
    send(AGENT, settings, control_plane::SCOPE, request, &action)?.error_for_status(&action)?;
    log::info(&format!(
        "data plane {} of {pc}: registered ({})",
        dataplane_id(pc),
        mappings.keys().cloned().collect::<Vec<_>>().join(", ")
    ));
    Ok(Outcome::empty())
}

/// Removes the transfer type mapping and the data plane registration; either already
/// gone is fine.
pub fn dispose(activity: &Activity<Settings>, settings: &Settings) -> Result<Outcome, Error> {
    let siglet = required_setting(AGENT, "sigletUrl", &settings.siglet_url)?;
    let control_plane = required_setting(AGENT, "controlPlaneUrl", &settings.control_plane_url)?;
    let pc = activity.participant_context_id();

    let action = format!("delete the Siglet transfer type mapping of {pc}");
    let request = http::Request::delete(mapping_url(siglet, pc));
    let outcome = if deleted(
        send(AGENT, settings, WRITE_SCOPE, request, &action)?,
        &action,
    )? {
        "deleted"
    } else {
        "already gone"
    };
    log::info(&format!("Siglet transfer type mapping of {pc}: {outcome}"));

    let id = dataplane_id(pc);
    let action = format!("deregister data plane {id} of {pc}");
    let request = http::Request::delete(http::join(
        &dataplanes_url(control_plane, pc),
        &format!("/{id}"),
    ));
    let outcome = if deleted(
        send(AGENT, settings, control_plane::SCOPE, request, &action)?,
        &action,
    )? {
        "deregistered"
    } else {
        "already gone"
    };
    log::info(&format!("data plane {id} of {pc}: {outcome}"));

    // Keypair events leave a signing-key mapping in Siglet; a decommissioned participant
    // keeps nothing there (upstream left it behind).
    let outcome = if crate::keys::delete_key_mapping(AGENT, settings, siglet, pc)? {
        "deleted"
    } else {
        "none"
    };
    log::info(&format!("Siglet key mapping of {pc}: {outcome}"));
    Ok(Outcome::empty())
}

/// The VPA's `transferTypeMappings`, checked, with `tokenSource` defaulting to `provider`.
fn transfer_types(value: Value) -> Result<Mappings, Error> {
    let mut mappings: Mappings = serde_json::from_value(value).map_err(|error| {
        Error::Fatal(format!(
            "invalid '{TRANSFER_TYPE_MAPPINGS}' in the {DATAPLANE_VPA} VPA: {error}"
        ))
    })?;
    for transfer_type in mappings.values_mut() {
        if transfer_type.token_source.is_empty() {
            transfer_type.token_source = "provider".into();
        }
    }
    Ok(mappings)
}

fn mapping_url(siglet: &str, participant_context_id: &str) -> String {
    http::join(
        siglet,
        &format!("/transfer-type-mappings/{participant_context_id}"),
    )
}

fn dataplanes_url(control_plane: &str, participant_context_id: &str) -> String {
    http::join(
        control_plane,
        &format!("/v5beta/participants/{participant_context_id}/dataplanes"),
    )
}

fn dataplane_id(participant_context_id: &str) -> String {
    format!("{participant_context_id}-siglet")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_types_take_upstreams_shape() {
        let mappings = transfer_types(json!({
            "HttpData-PULL": {"transferType": "HttpData-PULL", "endpointType": "HTTP",
                              "endpoint": "https://dp/pull"},
            "HttpData-PUSH": {"transferType": "HttpData-PUSH", "endpointType": "HTTP",
                              "tokenSource": "client", "txRenewalSupport": true,
                              "endpointMappings": [{"key": "k", "value": "v", "endpoint": "e"}]},
        }))
        .unwrap();
        assert_eq!(
            serde_json::to_value(&mappings).unwrap(),
            json!({
                "HttpData-PULL": {"transferType": "HttpData-PULL", "endpointType": "HTTP",
                                  "tokenSource": "provider", "endpoint": "https://dp/pull",
                                  "txRenewalSupport": false},
                "HttpData-PUSH": {"transferType": "HttpData-PUSH", "endpointType": "HTTP",
                                  "tokenSource": "client",
                                  "endpointMappings": [{"key": "k", "value": "v", "endpoint": "e"}],
                                  "txRenewalSupport": true},
            })
        );
        assert!(matches!(
            transfer_types(json!({"X": {"transferType": "X"}})),
            Err(Error::Fatal(message)) if message.contains("endpointType")
        ));
        assert!(transfer_types(json!({})).unwrap().is_empty());
    }

    #[test]
    fn urls() {
        assert_eq!(
            mapping_url("http://siglet:8083", "pc1"),
            "http://siglet:8083/transfer-type-mappings/pc1"
        );
        assert_eq!(
            http::join(&dataplanes_url("http://cp/api/mgmt", "pc1"), "/pc1-siglet"),
            "http://cp/api/mgmt/v5beta/participants/pc1/dataplanes/pc1-siglet"
        );
    }
}
