//! What every suite needs: an HTTP client, the agents' service account, mappings and
//! token exchanges as the upstream jwtlet agent does them.

use base64::Engine as _;
use cfm_standins::{AGENT_SCOPES, EdcV, JWT_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT};
use serde_json::{Value, json};

/// The agents' service account, as mappings name it.
pub const AGENTS: &str = "system:serviceaccount:edc-v:cfm-agents";

pub fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// The agents' projected service-account token.
pub fn agents_token(edc: &EdcV) -> String {
    edc.service_account_token("edc-v", "cfm-agents")
}

/// Maps `cfm-agents` to `pc` with the nine agent scopes, as the jwtlet agent's deploy does.
pub async fn map(edc: &EdcV, pc: &str) {
    let body = json!({
        "clientIdentifier": AGENTS,
        "participantContext": pc,
        "scopes": AGENT_SCOPES,
        "audiences": [edc.options.audience],
    });
    let response = http()
        .post(format!("{}/api/v1/mappings", edc.jwtlet_management_url))
        .bearer_auth(agents_token(edc))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "mapping {pc}");
}

/// `POST /token` with these form fields.
pub async fn token_form(edc: &EdcV, form: &[(&str, &str)]) -> reqwest::Response {
    http()
        .post(format!("{}/token", edc.jwtlet_token_url))
        .form(form)
        .send()
        .await
        .unwrap()
}

/// The agents' exchange: their SA token for `pc` with `scope`; panics unless 200.
pub async fn exchange(edc: &EdcV, pc: &str, scope: &str) -> String {
    let subject = agents_token(edc);
    let response = token_form(
        edc,
        &[
            ("grant_type", TOKEN_EXCHANGE_GRANT),
            ("subject_token", &subject),
            ("subject_token_type", JWT_TOKEN_TYPE),
            ("resource", pc),
            ("scope", scope),
            ("audience", &edc.options.audience),
        ],
    )
    .await;
    assert_eq!(response.status(), 200, "exchange for {pc} {scope}");
    let body: Value = response.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_string()
}

/// A JWT's payload, decoded without verification.
pub fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// The status of a request with a JSON body and a bearer token.
pub async fn send(
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
) -> reqwest::Response {
    let mut request = http().request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}
