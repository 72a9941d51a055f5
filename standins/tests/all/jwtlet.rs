//! jwtlet: the token exchange's refusals and token, and the management API's auth.

use cfm_standins::{
    AGENT_SCOPES, EdcV, JWT_TOKEN_TYPE, Options, ROLE_READ, Route, TOKEN_EXCHANGE_GRANT,
};
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{AGENTS, agents_token, claims, exchange, http, map, send, token_form};

const PC: &str = "0123456789abcdef0123456789abcdef";

fn form<'a>(subject: &'a str, resource: &'a str, scope: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("grant_type", TOKEN_EXCHANGE_GRANT),
        ("subject_token", subject),
        ("subject_token_type", JWT_TOKEN_TYPE),
        ("resource", resource),
        ("scope", scope),
    ]
}

async fn error_of(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (
        status,
        body["error"].as_str().unwrap_or_default().to_string(),
    )
}

#[tokio::test]
async fn token_refuses_what_jwtlet_refuses() {
    let edc = EdcV::start().await;
    map(&edc, PC).await;
    let subject = agents_token(&edc);

    let json = http()
        .post(format!("{}/token", edc.jwtlet_token_url))
        .json(&json!({"grant_type": TOKEN_EXCHANGE_GRANT}))
        .send()
        .await
        .unwrap();
    assert_eq!(json.status(), 415, "a JSON body is not a form");

    let mut missing = form(&subject, PC, "read");
    missing.retain(|(k, _)| *k != "subject_token_type");
    let response = token_form(&edc, &missing).await;
    assert_eq!(response.status(), 422, "missing subject_token_type");

    let mut grant = form(&subject, PC, "read");
    grant[0].1 = "client_credentials";
    let answer = error_of(token_form(&edc, &grant).await).await;
    assert_eq!(answer, (400, "unsupported_grant_type".into()));

    let mut kind = form(&subject, PC, "read");
    kind[2].1 = "urn:ietf:params:oauth:token-type:access_token";
    let answer = error_of(token_form(&edc, &kind).await).await;
    assert_eq!(answer, (400, "invalid_request".into()));

    let other_cluster = EdcV::start().await;
    let foreign = agents_token(&other_cluster);
    let answer = error_of(token_form(&edc, &form(&foreign, PC, "read")).await).await;
    assert_eq!(
        answer,
        (400, "invalid_grant".into()),
        "another cluster's token"
    );
    let elsewhere = edc.service_account_token_for_audience("edc-v", "cfm-agents", "elsewhere");
    let answer = error_of(token_form(&edc, &form(&elsewhere, PC, "read")).await).await;
    assert_eq!(
        answer,
        (400, "invalid_grant".into()),
        "a token for another audience"
    );

    let unmapped = "ffffffffffffffffffffffffffffffff";
    let answer = error_of(token_form(&edc, &form(&subject, unmapped, "read")).await).await;
    assert_eq!(
        answer,
        (403, "unauthorized_client".into()),
        "unmapped resource"
    );
    let answer = error_of(token_form(&edc, &form(&subject, PC, "read cfm-write")).await).await;
    assert_eq!(
        answer,
        (403, "unauthorized_client".into()),
        "ungranted scope"
    );
    let mut audience = form(&subject, PC, "read");
    audience.push(("audience", "somewhere-else"));
    let answer = error_of(token_form(&edc, &audience).await).await;
    assert_eq!(
        answer,
        (403, "unauthorized_client".into()),
        "ungranted audience"
    );

    let other_account = edc.service_account_token("edc-v", "controlplane");
    let answer = error_of(token_form(&edc, &form(&other_account, PC, "read")).await).await;
    assert_eq!(answer.0, 403, "a client without a mapping for the resource");
    assert_eq!(edc.token_exchanges(), 0);
    assert_eq!(edc.calls(Route::Token), 10);
}

#[tokio::test]
async fn token_carries_the_exchange_and_the_scope_claims() {
    let edc = EdcV::start().await;
    map(&edc, PC).await;
    let scopes = AGENT_SCOPES.join(" ");
    let response = token_form(&edc, &form(&agents_token(&edc), PC, &scopes)).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["issued_token_type"], JWT_TOKEN_TYPE);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["scope"], scopes.as_str());
    let token = claims(body["access_token"].as_str().unwrap());
    assert_eq!(token["sub"], PC);
    assert_eq!(token["aud"], "edcv");
    assert_eq!(token["act"]["sub"], AGENTS);
    assert!(token["act"]["iss"].is_string());
    assert_eq!(token["scope"], scopes.as_str(), "1:1 scope mappings joined");
    assert_eq!(
        token["exp"].as_i64().unwrap() - token["iat"].as_i64().unwrap(),
        3600
    );
    assert_eq!(token["nbf"], token["iat"]);
    assert_eq!(edc.token_exchanges(), 1);
}

#[tokio::test]
async fn scope_mappings_decide_the_claims() {
    let edc = EdcV::start_with(Options {
        seed_scope_mappings: false,
        ..Options::default()
    })
    .await;
    map(&edc, PC).await;
    let bare = exchange(&edc, PC, "read write").await;
    assert!(
        claims(&bare).get("scope").is_none(),
        "no scope mapping, no claim"
    );

    let sa = agents_token(&edc);
    let scopes = format!("{}/api/v1/scopes", edc.jwtlet_management_url);
    for mapping in [
        json!({"scope": "read", "claims": {"scope": "read", "tier": 1}}),
        json!({"scope": "write", "claims": {"scope": "write", "tier": 2}}),
        json!({"scope": "identity-api:admin", "claims": {"scope": "identity-api:admin"}}),
    ] {
        let response = send(Method::POST, scopes.clone(), Some(&sa), Some(mapping)).await;
        assert_eq!(response.status(), 201);
    }
    let joined = exchange(&edc, PC, "read identity-api:admin").await;
    assert_eq!(claims(&joined)["scope"], "read identity-api:admin");
    assert_eq!(claims(&joined)["tier"], 1);
    let clash = token_form(&edc, &form(&sa, PC, "read write")).await;
    assert_eq!(error_of(clash).await, (400, "invalid_scope".into()));

    let reserved = json!({"scope": "x", "claims": {"sub": "someone"}});
    let response = send(Method::POST, scopes.clone(), Some(&sa), Some(reserved)).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("'sub' is reserved")
    );
    let url = format!("{scopes}/other");
    let body = json!({"scope": "read", "claims": {}});
    let mismatch = send(Method::PUT, url.clone(), Some(&sa), Some(body)).await;
    assert_eq!(
        mismatch.status(),
        400,
        "path and body name different scopes"
    );
    let body = json!({"scope": "other", "claims": {}});
    let absent = send(Method::PUT, url, Some(&sa), Some(body)).await;
    assert_eq!(absent.status(), 404);
    assert!(!edc.jwtlet_scope_mappings().contains_key("x"));
}

#[tokio::test]
async fn management_wants_a_service_account_with_the_role() {
    let edc = EdcV::start().await;
    let url = format!("{}/api/v1/mappings", edc.jwtlet_management_url);
    let mapping = json!({"clientIdentifier": AGENTS, "participantContext": PC, "scopes": ["read"]});
    let none = send(Method::POST, url.clone(), None, Some(mapping.clone())).await;
    assert_eq!(none.status(), 401);
    let access = edc.access_token(PC, &["read"]);
    let exchanged = send(
        Method::POST,
        url.clone(),
        Some(&access),
        Some(mapping.clone()),
    )
    .await;
    assert_eq!(
        exchanged.status(),
        401,
        "an exchanged token is no service-account token"
    );
    let stranger = edc.service_account_token("default", "stranger");
    let forbidden = send(Method::GET, url.clone(), Some(&stranger), None).await;
    assert_eq!(forbidden.status(), 403, "an account without roles");
    edc.set_roles("system:serviceaccount:default:stranger", &[ROLE_READ]);
    let read = send(Method::GET, url.clone(), Some(&stranger), None).await;
    assert_eq!(read.status(), 200);
    let write = send(
        Method::POST,
        url.clone(),
        Some(&stranger),
        Some(mapping.clone()),
    )
    .await;
    assert_eq!(write.status(), 403, "read role only");
    assert!(edc.jwtlet_mappings().is_empty());

    let sa = agents_token(&edc);
    let created = send(Method::POST, url.clone(), Some(&sa), Some(mapping.clone())).await;
    assert_eq!(created.status(), 201);
    let duplicate = send(Method::POST, url.clone(), Some(&sa), Some(mapping.clone())).await;
    assert_eq!(duplicate.status(), 409);
    let missing = json!({"clientIdentifier": AGENTS, "participantContext": PC});
    let response = send(Method::POST, url.clone(), Some(&sa), Some(missing)).await;
    assert_eq!(response.status(), 422, "scopes missing");
    let mistyped = json!({"clientIdentifier": AGENTS, "participantContext": PC, "scopes": "read"});
    let response = send(Method::POST, url.clone(), Some(&sa), Some(mistyped)).await;
    assert_eq!(response.status(), 422, "scopes mistyped");
    let malformed = http()
        .post(&url)
        .bearer_auth(&sa)
        .header("content-type", "application/json");
    assert_eq!(malformed.body("{").send().await.unwrap().status(), 400);
    let text = http().post(&url).bearer_auth(&sa).body(mapping.to_string());
    assert_eq!(text.send().await.unwrap().status(), 415);

    let one = format!("{url}/{AGENTS}/{PC}");
    let other = json!({"clientIdentifier": AGENTS, "participantContext": "other", "scopes": []});
    let mismatch = send(Method::PUT, one.clone(), Some(&sa), Some(other)).await;
    assert_eq!(mismatch.status(), 400);
    let absent = format!("{url}/{AGENTS}/nobody");
    let body = json!({"clientIdentifier": AGENTS, "participantContext": "nobody", "scopes": []});
    assert_eq!(
        send(Method::PUT, absent, Some(&sa), Some(body))
            .await
            .status(),
        404
    );
    let replaced =
        json!({"clientIdentifier": AGENTS, "participantContext": PC, "scopes": ["write"]});
    assert_eq!(
        send(Method::PUT, one.clone(), Some(&sa), Some(replaced))
            .await
            .status(),
        204
    );
    assert!(edc.jwtlet_mappings()[0].scopes.contains("write"));
    for _ in 0..2 {
        let deleted = send(Method::DELETE, one.clone(), Some(&sa), None).await;
        assert_eq!(deleted.status(), 204, "delete is idempotent");
    }
    assert!(edc.jwtlet_mappings().is_empty());
    map(&edc, "a").await;
    map(&edc, "b").await;
    let all = send(Method::DELETE, format!("{url}/{AGENTS}"), Some(&sa), None).await;
    assert_eq!(all.status(), 204);
    assert!(edc.jwtlet_mappings().is_empty());
}

#[tokio::test]
async fn a_token_endpoint_that_is_down_answers_503_until_it_is_back() {
    let edc = EdcV::start().await;
    map(&edc, PC).await;
    edc.set_token_endpoint_down(true);
    let down = token_form(&edc, &form(&agents_token(&edc), PC, "read")).await;
    assert_eq!(down.status(), 503);
    edc.fail_next(Route::Token, &[500]);
    edc.set_token_endpoint_down(false);
    let scripted = token_form(&edc, &form(&agents_token(&edc), PC, "read")).await;
    assert_eq!(scripted.status(), 500);
    exchange(&edc, PC, "read").await;
    assert_eq!(edc.token_exchanges(), 1);
    assert_eq!(edc.calls(Route::Token), 3);
}
