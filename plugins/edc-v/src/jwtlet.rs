//! `jwtlet-activity` (upstream's jwtlet agent): jwtlet's resource mappings that let the
//! agents, the Control Plane and the Identity Hub exchange their service-account tokens
//! for tokens of the participant context.
//!
//! Calls to jwtlet's management API carry no `Authorization` header: the host adds its
//! own service-account token for the origin granted as `subject-token-origin`.

use cfm_plugin_sdk::{
    Activity, CapabilityResultExt, Error, Outcome, http, log, required_setting, tokens,
};
use serde_json::{Map, Value, json};

use crate::common::{Settings, created, deleted, participant_did, replaced};

/// The activity type this module serves.
pub const ACTIVITY_TYPE: &str = "jwtlet-activity";
const AGENT: &str = "jwtlet";

/// The scopes the agents' service account may ask for on behalf of the participant
/// context: everything the other activity types exchange tokens for.
pub const AGENT_SCOPES: [&str; 9] = [
    "management-api:admin",
    "identity-api:admin",
    "identity-api:credentials:read",
    "identity-api:credentials:write",
    "issuer-admin-api:admin",
    "siglet-mgmt-api:read",
    "siglet-mgmt-api:write",
    "read",
    "write",
];

/// A jwtlet resource mapping: `client_identifier` may exchange its token for one of the
/// participant context with these scopes and audiences.
#[derive(serde::Serialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
struct Mapping {
    client_identifier: String,
    participant_context: String,
    scopes: Vec<&'static str>,
    audiences: Vec<String>,
}

/// The three mappings, in upstream's order: the agents (all scopes), then the Control
/// Plane and the Identity Hub (`read`).
fn mappings(namespace: &str, audience: &str, participant_context_id: &str) -> [Mapping; 3] {
    let mapping = |account: &str, scopes: &[&'static str]| Mapping {
        client_identifier: client(namespace, account),
        participant_context: participant_context_id.to_string(),
        scopes: scopes.to_vec(),
        audiences: vec![audience.to_string()],
    };
    [
        mapping("cfm-agents", &AGENT_SCOPES),
        mapping("controlplane", &["read"]),
        mapping("identityhub", &["read"]),
    ]
}

/// jwtlet's management URL and the service accounts' namespace, both required.
fn management(settings: &Settings) -> Result<(&str, &str), Error> {
    let base = required_setting(AGENT, "jwtletUrl", &settings.jwtlet_url)?;
    let namespace = required_setting(
        AGENT,
        "serviceAccountNamespace",
        &settings.service_account_namespace,
    )?;
    Ok((base, namespace))
}

/// A Kubernetes service account's token subject.
fn client(namespace: &str, account: &str) -> String {
    format!("system:serviceaccount:{namespace}:{account}")
}

/// One mapping's URL. The client identifier's colons stay unescaped, as upstream sends them.
fn mapping_url(base: &str, client_identifier: &str, participant_context_id: &str) -> String {
    http::join(
        base,
        &format!("/api/v1/mappings/{client_identifier}/{participant_context_id}"),
    )
}

/// Creates the mappings (bringing ones an earlier delivery made up to date), then checks
/// that the host can now exchange a token with all the agents' scopes. Outputs
/// `participantContextId`.
pub fn deploy(activity: &Activity<Settings>, settings: &Settings) -> Result<Outcome, Error> {
    let (base, namespace) = management(settings)?;
    let audience = required_setting(AGENT, "audience", &settings.audience)?;
    participant_did(activity)?;
    let pc = activity.participant_context_id();

    for mapping in mappings(namespace, audience, pc) {
        let client = &mapping.client_identifier;
        let action = format!("create the jwtlet mapping of {client} for {pc}");
        let response = http::Request::post(http::join(base, "/api/v1/mappings"))
            .json(&mapping)?
            .send()
            .context(action.as_str())?;
        if created(response, &action)? {
            log::info(&format!("jwtlet mapping of {client} for {pc}: created"));
            continue;
        }
        // 409: there already; make sure it says what this delivery would have written.
        let action = format!("update the jwtlet mapping of {client} for {pc}");
        let response = http::Request::put(mapping_url(base, client, pc))
            .json(&mapping)?
            .send()
            .context(action.as_str())?;
        replaced(response, &action)?;
        log::info(&format!(
            "jwtlet mapping of {client} for {pc}: already there, brought up to date"
        ));
    }

    verify_exchange(audience, pc)?;
    Outcome::complete(json!({ "participantContextId": pc }))
}

/// Removes the three mappings; one already gone is fine (jwtlet answers 204 anyway).
pub fn dispose(activity: &Activity<Settings>, settings: &Settings) -> Result<Outcome, Error> {
    let (base, namespace) = management(settings)?;
    let pc = activity.participant_context_id();
    for mapping in mappings(namespace, &settings.audience, pc) {
        let client = &mapping.client_identifier;
        let action = format!("delete the jwtlet mapping of {client} for {pc}");
        let response = http::Request::delete(mapping_url(base, client, pc))
            .send()
            .context(action.as_str())?;
        let outcome = if deleted(response, &action)? {
            "deleted"
        } else {
            "already gone"
        };
        log::info(&format!("jwtlet mapping of {client} for {pc}: {outcome}"));
    }
    Ok(Outcome::empty())
}

/// Exchanges a token with all the agents' scopes, as every later activity will, and
/// checks it is a JWT. The token itself is never logged; only its subject is.
fn verify_exchange(audience: &str, participant_context_id: &str) -> Result<(), Error> {
    let token = tokens::exchange(audience, &AGENT_SCOPES.join(" ")).context(format!(
        "exchange a token for participant context {participant_context_id} with the agents' scopes"
    ))?;
    let claims = jwt_claims(&token).ok_or_else(|| {
        Error::Fatal(format!(
            "the token exchanged for participant context {participant_context_id} is not a JWT \
             with a JSON payload"
        ))
    })?;
    let subject = claims.get("sub").and_then(Value::as_str).unwrap_or("");
    if subject != participant_context_id {
        log::warn(&format!(
            "the token exchanged for participant context {participant_context_id} has subject '{subject}'"
        ));
    }
    log::info(&format!(
        "token exchange for participant context {participant_context_id} works (subject '{subject}')"
    ));
    Ok(())
}

/// A JWT's claims: the second of its three dot-separated parts, base64url-decoded JSON
/// object. The signature is not checked: the token is looked at, never trusted.
fn jwt_claims(token: &str) -> Option<Map<String, Value>> {
    let mut parts = token.split('.');
    let (Some(_header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    serde_json::from_slice(&base64url_decode(payload)?).ok()
}

/// Decodes base64url (RFC 4648 §5), with or without padding.
fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    // One character left over carries 6 bits: no whole byte, so not base64.
    if text.len() % 4 == 1 {
        return None;
    }
    let mut bytes = Vec::with_capacity(text.len() * 3 / 4);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for character in text.bytes() {
        let value = match character {
            b'A'..=b'Z' => character - b'A',
            b'a'..=b'z' => character - b'a' + 26,
            b'0'..=b'9' => character - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        buffer = (buffer << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            bytes.push(u8::try_from(buffer >> bits).ok()?);
            buffer &= (1 << bits) - 1;
        }
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings_are_upstreams() {
        let [agents, controlplane, identityhub] = mappings("edc-v", "edcv", "pc1");
        assert_eq!(
            serde_json::to_value(&agents).unwrap(),
            json!({
                "clientIdentifier": "system:serviceaccount:edc-v:cfm-agents",
                "participantContext": "pc1",
                "scopes": ["management-api:admin", "identity-api:admin",
                           "identity-api:credentials:read", "identity-api:credentials:write",
                           "issuer-admin-api:admin", "siglet-mgmt-api:read",
                           "siglet-mgmt-api:write", "read", "write"],
                "audiences": ["edcv"],
            })
        );
        assert_eq!(
            serde_json::to_value(&controlplane).unwrap(),
            json!({
                "clientIdentifier": "system:serviceaccount:edc-v:controlplane",
                "participantContext": "pc1",
                "scopes": ["read"],
                "audiences": ["edcv"],
            })
        );
        assert_eq!(
            identityhub.client_identifier,
            "system:serviceaccount:edc-v:identityhub"
        );
        assert_eq!(
            mapping_url("http://jwtlet:8081/", &agents.client_identifier, "pc1"),
            "http://jwtlet:8081/api/v1/mappings/system:serviceaccount:edc-v:cfm-agents/pc1"
        );
    }

    #[test]
    fn base64url() {
        assert_eq!(base64url_decode("").unwrap(), b"");
        assert_eq!(base64url_decode("Zg").unwrap(), b"f");
        assert_eq!(base64url_decode("Zg==").unwrap(), b"f");
        assert_eq!(base64url_decode("Zm9v").unwrap(), b"foo");
        assert_eq!(base64url_decode("Zm9vYg").unwrap(), b"foob");
        assert_eq!(base64url_decode("-_8").unwrap(), [0xfb, 0xff]);
        assert!(base64url_decode("Zm9vY").is_none());
        assert!(base64url_decode("Zm9v+").is_none());
    }

    #[test]
    fn jwt_payloads() {
        // {"alg":"none"} . {"sub":"pc1","scope":"read"} . signature
        let token = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJwYzEiLCJzY29wZSI6InJlYWQifQ.c2ln";
        let claims = jwt_claims(token).unwrap();
        assert_eq!(claims.get("sub"), Some(&json!("pc1")));
        assert!(jwt_claims("eyJzdWIiOiJwYzEifQ").is_none());
        assert!(jwt_claims("a.eyJzdWIiOiJwYzEifQ.b.c").is_none());
        // "not json" in base64url
        assert!(jwt_claims("a.bm90IGpzb24.b").is_none());
    }
}
