//! Siglet's management API: shapes, defaults, scopes and participant binding.

use cfm_standins::EdcV;
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{http, send};

const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn mappings() -> Value {
    json!({"HttpData-PULL": {"transferType": "HttpData-PULL", "endpointType": "HTTP", "endpoint": "https://data"}})
}

#[tokio::test]
async fn transfer_type_mappings_follow_siglet() {
    let edc = EdcV::start().await;
    let base = format!("{}/transfer-type-mappings", edc.siglet_management_url);
    let one = format!("{base}/{A}");
    let write = edc.access_token(A, &["siglet-mgmt-api:write"]);
    let read = edc.access_token(A, &["siglet-mgmt-api:read"]);
    let wrapped = json!({"participantContextId": A, "mappings": mappings()});

    assert_eq!(
        send(Method::GET, one.clone(), None, None).await.status(),
        401
    );
    let status = send(Method::GET, one.clone(), Some(&write), None)
        .await
        .status();
    assert_eq!(status, 403, "GET wants the read scope itself");
    let missing = send(Method::GET, one.clone(), Some(&read), None).await;
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"], "Transfer type mapping not found");
    let status = send(
        Method::POST,
        base.clone(),
        Some(&read),
        Some(wrapped.clone()),
    )
    .await
    .status();
    assert_eq!(status, 403, "POST wants the write scope");

    let no_endpoint_type = json!({"participantContextId": A,
        "mappings": {"x": {"transferType": "x"}}});
    let status = send(
        Method::POST,
        base.clone(),
        Some(&write),
        Some(no_endpoint_type),
    )
    .await
    .status();
    assert_eq!(status, 422, "endpointType is required");
    let bad_source = json!({"participantContextId": A, "mappings": {"x":
        {"transferType": "x", "endpointType": "HTTP", "tokenSource": "nobody"}}});
    let status = send(Method::POST, base.clone(), Some(&write), Some(bad_source))
        .await
        .status();
    assert_eq!(status, 422, "tokenSource is client, provider or dataplane");
    let text = http()
        .post(&base)
        .bearer_auth(&write)
        .body(wrapped.to_string());
    assert_eq!(text.send().await.unwrap().status(), 415);
    let malformed = http()
        .post(&base)
        .bearer_auth(&write)
        .header("content-type", "application/json");
    assert_eq!(
        malformed
            .body("{\"participantContextId\"")
            .send()
            .await
            .unwrap()
            .status(),
        400
    );

    let created = send(
        Method::POST,
        base.clone(),
        Some(&write),
        Some(wrapped.clone()),
    )
    .await;
    assert_eq!(created.status(), 201);
    let again = send(
        Method::POST,
        base.clone(),
        Some(&write),
        Some(wrapped.clone()),
    )
    .await;
    assert_eq!(again.status(), 409);
    let body: Value = again.json().await.unwrap();
    assert_eq!(body["error"], "Transfer type mapping already exists");
    let got: Value = send(Method::GET, one.clone(), Some(&read), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got["participantContextId"], A);
    let pull = &got["mappings"]["HttpData-PULL"];
    assert_eq!(pull["tokenSource"], "provider", "the default");
    assert_eq!(pull["endpointMappings"], json!([]));
    assert_eq!(pull["txRenewalSupport"], false);

    let status = send(Method::PUT, one.clone(), Some(&write), Some(wrapped))
        .await
        .status();
    assert_eq!(
        status, 422,
        "PUT takes the bare map, not the wrapped object the agent sends"
    );
    let snake = json!({"HttpData-PUSH": {"transfer_type": "HttpData-PUSH", "endpoint_type": "HTTP", "token_source": "client"}});
    let status = send(Method::PUT, one.clone(), Some(&write), Some(snake))
        .await
        .status();
    assert_eq!(status, 204, "snake_case aliases");
    let stored = &edc.siglet_transfer_type_mappings()[A];
    assert_eq!(stored["HttpData-PUSH"]["tokenSource"], "client");
    assert!(
        stored.get("HttpData-PULL").is_none(),
        "PUT replaces the map"
    );
    let absent = format!("{base}/{B}");
    let b_write = edc.access_token(B, &["siglet-mgmt-api:write"]);
    assert_eq!(
        send(Method::PUT, absent, Some(&b_write), Some(mappings()))
            .await
            .status(),
        404
    );

    assert_eq!(
        send(Method::DELETE, one.clone(), Some(&write), None)
            .await
            .status(),
        204
    );
    assert_eq!(
        send(Method::DELETE, one, Some(&write), None).await.status(),
        404
    );
    assert!(edc.siglet_transfer_type_mappings().is_empty());
}

#[tokio::test]
async fn siglet_binds_the_participant_to_the_token() {
    let edc = EdcV::start().await;
    let base = format!("{}/transfer-type-mappings", edc.siglet_management_url);
    let a_write = edc.access_token(A, &["siglet-mgmt-api:write"]);
    let for_b = json!({"participantContextId": B, "mappings": mappings()});
    let status = send(Method::POST, base.clone(), Some(&a_write), Some(for_b))
        .await
        .status();
    assert_eq!(status, 403, "A's token creating B's mapping");
    let b_write = edc.access_token(B, &["siglet-mgmt-api:write"]);
    let for_b = json!({"participantContextId": B, "mappings": mappings()});
    assert_eq!(
        send(Method::POST, base.clone(), Some(&b_write), Some(for_b))
            .await
            .status(),
        201
    );
    let b = format!("{base}/{B}");
    assert_eq!(
        send(Method::DELETE, b.clone(), Some(&a_write), None)
            .await
            .status(),
        403
    );
    let a_read = edc.access_token(A, &["siglet-mgmt-api:read"]);
    assert_eq!(
        send(Method::GET, b, Some(&a_read), None).await.status(),
        403
    );
    assert_eq!(edc.siglet_transfer_type_mappings().len(), 1);
}

#[tokio::test]
async fn key_mappings_follow_siglet() {
    let edc = EdcV::start().await;
    let base = format!("{}/key-mappings", edc.siglet_management_url);
    let one = format!("{base}/{A}");
    let write = edc.access_token(A, &["siglet-mgmt-api:write"]);
    let read = edc.access_token(A, &["siglet-mgmt-api:read"]);
    let mapping = json!({"participantContextId": A, "keyName": "alias", "kid": "did:web:a#key1"});
    let blank = json!({"participantContextId": A, "keyName": "alias", "kid": " "});
    assert_eq!(
        send(Method::POST, base.clone(), Some(&write), Some(blank))
            .await
            .status(),
        400
    );
    let no_kid = json!({"participantContextId": A, "keyName": "alias"});
    assert_eq!(
        send(Method::POST, base.clone(), Some(&write), Some(no_kid))
            .await
            .status(),
        422
    );
    assert_eq!(
        send(
            Method::POST,
            base.clone(),
            Some(&write),
            Some(mapping.clone())
        )
        .await
        .status(),
        201
    );
    let again = send(Method::POST, base.clone(), Some(&write), Some(mapping)).await;
    assert_eq!(again.status(), 409);
    assert_eq!(
        again.json::<Value>().await.unwrap()["error"],
        "Signing key mapping already exists"
    );
    let update =
        json!({"participantContextId": "ignored", "keyName": "new", "kid": "did:web:a#key2"});
    assert_eq!(
        send(Method::PUT, one.clone(), Some(&write), Some(update))
            .await
            .status(),
        204
    );
    let got: Value = send(Method::GET, one.clone(), Some(&read), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        got,
        json!({"participantContextId": A, "keyName": "new", "kid": "did:web:a#key2"})
    );
    assert_eq!(
        send(Method::DELETE, one.clone(), Some(&write), None)
            .await
            .status(),
        204
    );
    let gone = send(Method::GET, one, Some(&read), None).await;
    assert_eq!(gone.status(), 404);
    assert_eq!(
        gone.json::<Value>().await.unwrap()["error"],
        "Signing key mapping not found"
    );
    assert!(edc.siglet_key_mappings().is_empty());
}
