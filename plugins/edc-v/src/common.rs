//! What every agent shares: the settings, calls authorised by an exchanged token, and
//! what a response's status means.

use cfm_plugin_sdk::{
    Activity, CapabilityResultExt, Error, MigrationCell, http, required_setting, tokens,
};
use serde_json::{Map, Value};

/// A cell overrides a URL setting for its participants with the cell property
/// `cfm.edc.<setting>`, for example `cfm.edc.identityHubUrl`.
const CELL_PROPERTY_PREFIX: &str = "cfm.edc.";

/// What URL templates replace with the participant context id. Upstream's single `%s`
/// is accepted too.
const PARTICIPANT_CONTEXT_PLACEHOLDER: &str = "{participantContextId}";

/// The plugin's `[plugin.settings]` table, shared by every activity type; each one
/// requires only the settings it uses.
#[derive(serde::Deserialize, Clone, Debug)]
#[serde(rename_all = "camelCase", default)]
pub struct Settings {
    /// jwtlet's management API, e.g. `http://jwtlet:8081` (the `/api/v1` is added).
    pub jwtlet_url: String,
    /// The Kubernetes namespace of the service accounts jwtlet maps: `cfm-agents`,
    /// `controlplane` and `identityhub`.
    pub service_account_namespace: String,
    /// The audience every token is exchanged for.
    pub audience: String,
    /// The Identity Hub's identity API, e.g. `http://identityhub:7081/api/identity`.
    pub identity_hub_url: String,
    /// The Control Plane's management API, e.g. `http://controlplane:8081/api/mgmt`.
    pub control_plane_url: String,
    /// The Issuer Service's administration API, e.g. `http://issuerservice:10013/api/admin`.
    pub issuer_url: String,
    /// The issuer's own participant context in the Issuer Service.
    pub issuer_id: String,
    /// The Vault the Identity Hub and the Control Plane keep the participant's secrets in.
    pub vault_url: String,
    /// The participant's credential service endpoint (a URL template).
    pub credential_service_url: String,
    /// The participant's DSP endpoint (a URL template).
    pub protocol_service_url: String,
    /// The participant's data service endpoint (a URL template).
    pub data_service_url: String,
    /// Siglet's management API, e.g. `http://siglet:8083`.
    pub siglet_url: String,
    /// Siglet's signaling API, e.g. `http://siglet:8081` (`/api/v1/<pc>/dataflows` is added).
    pub siglet_signaling_url: String,
    /// Time between two looks at a pending credential request.
    pub poll_interval_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            jwtlet_url: String::new(),
            service_account_namespace: "edc-v".into(),
            audience: "edcv".into(),
            identity_hub_url: String::new(),
            control_plane_url: String::new(),
            issuer_url: String::new(),
            issuer_id: String::new(),
            vault_url: String::new(),
            credential_service_url: String::new(),
            protocol_service_url: String::new(),
            data_service_url: String::new(),
            siglet_url: String::new(),
            siglet_signaling_url: String::new(),
            poll_interval_ms: 5_000,
        }
    }
}

impl Settings {
    /// The configured settings with the URLs the participant's cell overrides (cell
    /// properties `cfm.edc.<setting>` of the first VPA's cell) in their place.
    pub fn for_activity(activity: &Activity<Settings>) -> Result<Settings, Error> {
        let vpas = activity.vpas()?;
        let cell = vpas.first().and_then(|vpa| vpa.cell_properties.as_ref());
        Ok(activity.settings().clone().overridden_by(cell))
    }

    /// The settings as `cell` (the other cell of a migration) overrides them.
    pub fn for_cell(activity: &Activity<Settings>, cell: &MigrationCell) -> Settings {
        activity
            .settings()
            .clone()
            .overridden_by(cell.cell_properties.as_ref())
    }

    /// These settings with the URLs a cell's properties `cfm.edc.<setting>` name.
    fn overridden_by(mut self, cell_properties: Option<&Map<String, Value>>) -> Settings {
        let Some(properties) = cell_properties else {
            return self;
        };
        for (name, value) in self.urls_mut() {
            let property = format!("{CELL_PROPERTY_PREFIX}{name}");
            if let Some(url) = properties.get(&property).and_then(Value::as_str) {
                *value = url.to_string();
            }
        }
        self
    }

    /// The settings a cell may override, by name.
    fn urls_mut(&mut self) -> [(&'static str, &mut String); 10] {
        [
            ("jwtletUrl", &mut self.jwtlet_url),
            ("identityHubUrl", &mut self.identity_hub_url),
            ("controlPlaneUrl", &mut self.control_plane_url),
            ("issuerUrl", &mut self.issuer_url),
            ("vaultUrl", &mut self.vault_url),
            ("credentialServiceUrl", &mut self.credential_service_url),
            ("protocolServiceUrl", &mut self.protocol_service_url),
            ("dataServiceUrl", &mut self.data_service_url),
            ("sigletUrl", &mut self.siglet_url),
            ("sigletSignalingUrl", &mut self.siglet_signaling_url),
        ]
    }
}

/// Sends `request` on behalf of the participant context being processed, with
/// `Authorization: Bearer <token>` for `scope`, exchanged by the host (which caches
/// tokens, so asking per request is cheap). `agent` names the plugin in a configuration
/// error; `action` describes the call in failures.
pub fn send(
    agent: &str,
    settings: &Settings,
    scope: &str,
    request: http::Request,
    action: &str,
) -> Result<http::Response, Error> {
    let audience = required_setting(agent, "audience", &settings.audience)?;
    let token = tokens::exchange(audience, scope)
        .context(format!("{action}: exchange a token for scope '{scope}'"))?;
    request.bearer(&token).send().context(action)
}

/// A create's answer: `true` when this call created the resource, `false` on 409, which
/// means an earlier delivery of the activity already did. Everything else as
/// [`http::Response::error_for_status`]: 5xx, 408 and 429 retry, other statuses fail.
pub fn created(response: http::Response, action: &str) -> Result<bool, Error> {
    if response.status == 409 {
        return Ok(false);
    }
    response.error_for_status(action).map(|_| true)
}

/// A delete's answer: `true` when this call deleted the resource, `false` on 404,
/// which means it was already gone.
pub fn deleted(response: http::Response, action: &str) -> Result<bool, Error> {
    if response.status == 404 {
        return Ok(false);
    }
    response.error_for_status(action).map(|_| true)
}

/// A read's answer: the response when the resource exists, `None` on 404.
pub fn found(response: http::Response, action: &str) -> Result<Option<http::Response>, Error> {
    if response.status == 404 {
        return Ok(None);
    }
    response.error_for_status(action).map(Some)
}

/// A replacement's answer. A 404 means the resource vanished after the create that
/// found it there: the next attempt creates it again, so that one is retried.
pub fn replaced(response: http::Response, action: &str) -> Result<(), Error> {
    if response.status == 404 {
        return Err(Error::Retry(format!(
            "{action}: HTTP 404: it was deleted meanwhile"
        )));
    }
    response.error_for_status(action).map(drop)
}

/// `template` with the participant context id in place of `{participantContextId}`,
/// or of upstream's single `%s` when the template has no such placeholder.
pub fn expand(template: &str, participant_context_id: &str) -> String {
    if template.contains(PARTICIPANT_CONTEXT_PLACEHOLDER) {
        template.replace(PARTICIPANT_CONTEXT_PLACEHOLDER, participant_context_id)
    } else {
        template.replacen("%s", participant_context_id, 1)
    }
}

/// The properties of the participant's VPA of type `vpa_type`: `None` when there is no
/// such VPA, an empty object when it has none.
pub fn vpa_properties(
    activity: &Activity<Settings>,
    vpa_type: &str,
) -> Result<Option<Map<String, Value>>, Error> {
    Ok(activity
        .vpas()?
        .into_iter()
        .find(|vpa| vpa.vpa_type == vpa_type)
        .map(|vpa| vpa.properties.unwrap_or_default()))
}

/// The participant's DID, which every deploy needs: fatal when the request has none.
pub fn participant_did(activity: &Activity<Settings>) -> Result<&str, Error> {
    match activity.participant_id() {
        "" => Err(Error::Fatal(
            "the request names no participant DID (cfm.participant.id)".into(),
        )),
        did => Ok(did),
    }
}

/// `text` as one URL path segment: RFC 3986 `pchar`s stay, everything else is
/// percent-encoded, and a whole `.` or `..` too, so no value (a DID, a credential id that
/// is a URL) can end the segment or climb out of the path it is put in.
pub fn path_segment(text: &str) -> String {
    if text == "." || text == ".." {
        return text.replace('.', "%2E");
    }
    let mut segment = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&byte) {
            segment.push(char::from(byte));
        } else {
            segment.push_str(&format!("%{byte:02X}"));
        }
    }
    segment
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16) -> http::Response {
        http::Response {
            status,
            headers: Vec::new(),
            body: b"{}".to_vec(),
        }
    }

    #[test]
    fn a_cell_overrides_only_the_urls_it_names() {
        let configured = Settings {
            identity_hub_url: "http://ih.shared".into(),
            issuer_url: "http://issuer.shared".into(),
            ..Settings::default()
        };
        let cell: Map<String, Value> = serde_json::from_value(serde_json::json!({
            "cfm.edc.identityHubUrl": "http://ih.cell-b",
            "cfm.edc.issuerUrl": 7,
            "unrelated": "x"
        }))
        .unwrap();
        let settings = configured.clone().overridden_by(Some(&cell));
        assert_eq!(settings.identity_hub_url, "http://ih.cell-b");
        assert_eq!(
            settings.issuer_url, "http://issuer.shared",
            "not a string: ignored"
        );
        assert_eq!(
            configured.overridden_by(None).identity_hub_url,
            "http://ih.shared"
        );
    }

    #[test]
    fn templates_take_either_placeholder() {
        assert_eq!(
            expand(
                "https://{participantContextId}.example/{participantContextId}",
                "pc"
            ),
            "https://pc.example/pc"
        );
        assert_eq!(
            expand("https://cs.example/%s/api", "pc"),
            "https://cs.example/pc/api"
        );
        assert_eq!(
            expand("https://fixed.example", "pc"),
            "https://fixed.example"
        );
    }

    #[test]
    fn statuses() {
        assert!(created(response(201), "x").unwrap());
        assert!(!created(response(409), "x").unwrap());
        assert!(matches!(created(response(503), "x"), Err(Error::Retry(_))));
        assert!(matches!(created(response(429), "x"), Err(Error::Retry(_))));
        assert!(matches!(created(response(400), "x"), Err(Error::Fatal(_))));
        assert!(matches!(created(response(302), "x"), Err(Error::Fatal(_))));

        assert!(deleted(response(200), "x").unwrap());
        assert!(deleted(response(204), "x").unwrap());
        assert!(!deleted(response(404), "x").unwrap());
        assert!(matches!(deleted(response(500), "x"), Err(Error::Retry(_))));
        let Err(Error::Fatal(message)) = deleted(response(403), "delete it") else {
            panic!("403 is not fatal");
        };
        assert!(message.starts_with("delete it: HTTP 403"), "{message}");

        assert!(found(response(200), "x").unwrap().is_some());
        assert!(found(response(404), "x").unwrap().is_none());
        assert!(matches!(found(response(401), "x"), Err(Error::Fatal(_))));

        assert!(replaced(response(204), "x").is_ok());
        assert!(matches!(replaced(response(404), "x"), Err(Error::Retry(_))));
        assert!(matches!(replaced(response(422), "x"), Err(Error::Fatal(_))));
    }

    #[test]
    fn settings_default_and_parse() {
        let settings: Settings = serde_json::from_str(r#"{"identityHubUrl":"http://ih"}"#).unwrap();
        assert_eq!(settings.identity_hub_url, "http://ih");
        assert_eq!(settings.audience, "edcv");
        assert_eq!(settings.service_account_namespace, "edc-v");
        assert_eq!(settings.poll_interval_ms, 5_000);
    }
}
