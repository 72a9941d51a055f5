//! `registration-activity` (upstream's registration agent): the participant as a holder
//! of the Issuer Service, with the properties of its `cfm.issuer` VPA.

use cfm_plugin_sdk::{Activity, Error, Outcome, http, log, required_setting};
use serde_json::{Map, Value, json};

use crate::common::{
    Settings, created, deleted, participant_did, path_segment, send, vpa_properties,
};

/// The activity type this module serves.
pub const ACTIVITY_TYPE: &str = "registration-activity";
const AGENT: &str = "registration";
/// The scope of every Issuer Service administration call.
pub const SCOPE: &str = "issuer-admin-api:admin";
/// The VPA whose properties the holder gets.
const ISSUER_VPA: &str = "cfm.issuer";
/// Optional processing data: the holder's name, the DID when absent.
const HOLDER_NAME: &str = "cfm.participant.holdername";

/// Registers the holder; one already registered was registered by an earlier delivery.
pub fn deploy(activity: &Activity<Settings>, settings: &Settings) -> Result<Outcome, Error> {
    let issuer = required_setting(AGENT, "issuerUrl", &settings.issuer_url)?;
    let issuer_id = required_setting(AGENT, "issuerId", &settings.issuer_id)?;
    let did = participant_did(activity)?;
    let name = activity
        .data_value::<String>(HOLDER_NAME)?
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| did.to_string());
    let body = holder(did, &name, vpa_properties(activity, ISSUER_VPA)?);

    let action = format!("register holder {did} with the Issuer Service");
    let request = http::Request::post(http::join(
        issuer,
        &format!("/v1beta/participants/{issuer_id}/holders"),
    ))
    .json(&body)?;
    let outcome = if created(send(AGENT, settings, SCOPE, request, &action)?, &action)? {
        "registered"
    } else {
        "already registered"
    };
    log::info(&format!("holder {did} of issuer {issuer_id}: {outcome}"));
    Ok(Outcome::empty())
}

/// Removes the holder; already gone is fine.
pub fn dispose(activity: &Activity<Settings>, settings: &Settings) -> Result<Outcome, Error> {
    let issuer = required_setting(AGENT, "issuerUrl", &settings.issuer_url)?;
    let issuer_id = required_setting(AGENT, "issuerId", &settings.issuer_id)?;
    let did = participant_did(activity)?;
    let action = format!("remove holder {did} from the Issuer Service");
    // One path segment whatever the DID holds: a DID's own characters (`:` among them)
    // go as upstream sends them, anything that could leave the segment is encoded.
    let request = http::Request::delete(http::join(
        issuer,
        &format!(
            "/v1beta/participants/{}/holders/{}",
            path_segment(issuer_id),
            path_segment(did)
        ),
    ));
    let outcome = if deleted(send(AGENT, settings, SCOPE, request, &action)?, &action)? {
        "removed"
    } else {
        "already gone"
    };
    log::info(&format!("holder {did} of issuer {issuer_id}: {outcome}"));
    Ok(Outcome::empty())
}

/// The holder: `properties` only when the participant has a `cfm.issuer` VPA.
fn holder(did: &str, name: &str, properties: Option<Map<String, Value>>) -> Value {
    let mut holder = json!({"did": did, "holderId": did, "name": name});
    if let (Some(properties), Some(holder)) = (properties, holder.as_object_mut()) {
        holder.insert("properties".into(), Value::Object(properties));
    }
    holder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders() {
        assert_eq!(
            holder("did:web:p", "P", None),
            json!({"did":"did:web:p","holderId":"did:web:p","name":"P"})
        );
        assert_eq!(
            holder("did:web:p", "did:web:p", Some(Map::new())),
            json!({"did":"did:web:p","holderId":"did:web:p","name":"did:web:p","properties":{}})
        );
        let properties = json!({"tier": "gold"}).as_object().cloned();
        assert_eq!(
            holder("did:web:p", "P", properties)["properties"],
            json!({"tier": "gold"})
        );
    }
}
