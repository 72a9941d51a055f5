//! The EDC services: bearer tokens, scopes, participant binding, and body refusals.

use cfm_standins::{EdcV, MANAGEMENT_CONTEXT, Route, TokenKind};
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{http, send};

const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn manifest(pc: &str) -> Value {
    json!({
        "roles": ["participant"], "provisionStsAccount": false, "provisionApiKey": false,
        "serviceEndpoints": [{"type": "CredentialService", "id": format!("{pc}-credentialservice"), "serviceEndpoint": "http://cs"}],
        "active": true, "participantContextId": pc, "did": format!("did:web:{pc}"),
        "key": {"keyId": format!("did:web:{pc}#key1"), "privateKeyAlias": "alias", "keyGeneratorParams": {"algorithm": "EDDSA", "curve": "Ed25519"}},
    })
}

fn context(pc: &str) -> Value {
    json!({"@context": [MANAGEMENT_CONTEXT], "@type": "ParticipantContext", "@id": pc,
           "identity": format!("did:web:{pc}"), "properties": {}, "state": "ACTIVATED"})
}

#[tokio::test]
async fn identity_hub_wants_an_exchanged_token_with_the_scope() {
    let edc = EdcV::start().await;
    let url = format!("{}/v1beta/participants", edc.identity_hub_url);
    let create = |token: Option<String>, body: Value| {
        let url = url.clone();
        async move {
            send(Method::POST, url, token.as_deref(), Some(body))
                .await
                .status()
        }
    };
    assert_eq!(create(None, manifest(A)).await, 401, "no token");
    let sa = edc.service_account_token("edc-v", "cfm-agents");
    assert_eq!(
        create(Some(sa), manifest(A)).await,
        401,
        "a service-account token"
    );
    assert_eq!(
        create(Some("a.b.c".into()), manifest(A)).await,
        401,
        "garbage"
    );
    let other = EdcV::start().await.access_token(A, &["identity-api:admin"]);
    assert_eq!(
        create(Some(other), manifest(A)).await,
        401,
        "another jwtlet's token"
    );
    let unscoped = edc.access_token(A, &[]);
    assert_eq!(
        create(Some(unscoped), manifest(A)).await,
        403,
        "no scope claim"
    );
    let narrow = edc.access_token(A, &["identity-api:credentials:write"]);
    assert_eq!(create(Some(narrow), manifest(A)).await, 403, "wrong scope");
    assert!(edc.identity_hub_participants().is_empty());

    let admin = edc.access_token(A, &["identity-api:admin"]);
    let response = send(Method::POST, url.clone(), Some(&admin), Some(manifest(A))).await;
    assert_eq!(
        response.status(),
        200,
        "IdentityHub answers the created context's credentials"
    );
    let body: Value = response.json().await.unwrap();
    assert!(body["apiKey"].is_null(), "provisionApiKey: false");
    assert_eq!(create(Some(admin.clone()), manifest(A)).await, 409);
    let mut no_did = manifest(B);
    no_did.as_object_mut().unwrap().remove("did");
    assert_eq!(create(Some(admin.clone()), no_did).await, 400);
    let mut no_key = manifest(B);
    no_key["key"]
        .as_object_mut()
        .unwrap()
        .remove("keyGeneratorParams");
    assert_eq!(
        create(Some(admin.clone()), no_key).await,
        400,
        "no key material"
    );
    let text = http()
        .post(&url)
        .bearer_auth(&admin)
        .body(manifest(B).to_string());
    assert_eq!(text.send().await.unwrap().status(), 415);
    assert_eq!(edc.identity_hub_participants().len(), 1);

    let gone = send(Method::DELETE, format!("{url}/{B}"), Some(&admin), None).await;
    assert_eq!(gone.status(), 404);
    let deleted = send(Method::DELETE, format!("{url}/{A}"), Some(&admin), None).await;
    assert_eq!(deleted.status(), 204, "a void controller method");
    assert!(edc.identity_hub_participants().is_empty());
    let records = edc.auth_records();
    assert_eq!(records[0].kind, TokenKind::Missing);
    assert_eq!(records[1].kind, TokenKind::ServiceAccount);
    assert_eq!(records[2].kind, TokenKind::Invalid);
    assert_eq!(records.last().unwrap().kind, TokenKind::Exchanged);
    assert_eq!(records.last().unwrap().sub.as_deref(), Some(A));
}

#[tokio::test]
async fn a_token_for_one_participant_is_refused_on_anothers_resources() {
    let edc = EdcV::start().await;
    let ih = format!("{}/v1beta/participants", edc.identity_hub_url);
    for pc in [A, B] {
        let admin = edc.access_token(pc, &["identity-api:admin"]);
        let response = send(Method::POST, ih.clone(), Some(&admin), Some(manifest(pc))).await;
        assert_eq!(response.status(), 200);
    }
    let request = json!({"issuerDid": "did:web:issuer", "holderPid": "pid-b",
        "credentials": [{"format": "VC1_0_JWT", "type": "MembershipCredential", "id": "membership"}]});
    let url = format!("{ih}/{B}/credentials/request");
    let a_write = edc.access_token(A, &["identity-api:credentials:write"]);
    let refused = send(
        Method::POST,
        url.clone(),
        Some(&a_write),
        Some(request.clone()),
    )
    .await;
    assert_eq!(
        refused.status(),
        403,
        "A's token on B's participant context"
    );
    let b_write = edc.access_token(B, &["identity-api:credentials:write"]);
    let created = send(
        Method::POST,
        url.clone(),
        Some(&b_write),
        Some(request.clone()),
    )
    .await;
    assert_eq!(created.status(), 201);
    let location = created.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(
        location,
        format!("/v1beta/participants/{B}/credentials/request/pid-b")
    );
    let again = send(Method::POST, url.clone(), Some(&b_write), Some(request)).await;
    assert_eq!(again.status(), 409, "a known holderPid");
    let missing = json!({"holderPid": "pid-c", "credentials": []});
    let invalid = send(Method::POST, url, Some(&b_write), Some(missing)).await;
    assert_eq!(invalid.status(), 400);
    let status = format!("{ih}/{B}/credentials/request/pid-b");
    let a_read = edc.access_token(A, &["identity-api:credentials:read"]);
    assert_eq!(
        send(Method::GET, status.clone(), Some(&a_read), None)
            .await
            .status(),
        403
    );
    let b_read = edc.access_token(B, &["identity-api:credentials:read"]);
    let polled = send(Method::GET, status, Some(&b_read), None).await;
    assert_eq!(polled.status(), 200);
    assert_eq!(polled.json::<Value>().await.unwrap()["status"], "CREATED");
    let a_delete = edc.access_token(A, &["identity-api:participants:write"]);
    let delete = send(Method::DELETE, format!("{ih}/{B}"), Some(&a_delete), None).await;
    assert_eq!(delete.status(), 403, "only B's token or an admin deletes B");

    let cp = format!("{}/v5beta/participants", edc.control_plane_url);
    let cp_admin = edc.access_token(A, &["management-api:admin"]);
    for pc in [A, B] {
        let response = send(Method::POST, cp.clone(), Some(&cp_admin), Some(context(pc))).await;
        assert_eq!(response.status(), 200);
    }
    let dataplane = json!({"dataplaneId": "dp-b", "endpoint": "http://siglet/api/v1/b/dataflows", "transferTypes": ["HttpData-PULL"]});
    let planes = format!("{cp}/{B}/dataplanes");
    let a_write = edc.access_token(A, &["management-api:write"]);
    let refused = send(
        Method::PUT,
        planes.clone(),
        Some(&a_write),
        Some(dataplane.clone()),
    )
    .await;
    assert_eq!(refused.status(), 403, "A's token on B's data planes");
    let b_write = edc.access_token(B, &["management-api:dataplanes:write"]);
    let registered = send(
        Method::PUT,
        planes.clone(),
        Some(&b_write),
        Some(dataplane.clone()),
    )
    .await;
    assert_eq!(registered.status(), 200);
    let upsert = send(
        Method::PUT,
        planes.clone(),
        Some(&b_write),
        Some(dataplane.clone()),
    )
    .await;
    assert_eq!(upsert.status(), 200, "registering again is an upsert");
    let stolen = send(
        Method::PUT,
        format!("{cp}/{A}/dataplanes"),
        Some(&cp_admin),
        Some(dataplane),
    )
    .await;
    assert_eq!(stolen.status(), 409, "B owns dp-b");
    let read = edc.access_token(B, &["management-api:read"]);
    let delete = format!("{planes}/dp-b");
    assert_eq!(
        send(Method::DELETE, delete.clone(), Some(&read), None)
            .await
            .status(),
        403
    );
    assert_eq!(
        send(Method::DELETE, delete.clone(), Some(&a_write), None)
            .await
            .status(),
        403
    );
    assert_eq!(
        send(Method::DELETE, delete.clone(), Some(&b_write), None)
            .await
            .status(),
        200
    );
    assert_eq!(
        send(Method::DELETE, delete, Some(&b_write), None)
            .await
            .status(),
        404
    );
    assert!(edc.dataplanes().is_empty());
}

#[tokio::test]
async fn control_plane_validates_json_ld_and_config() {
    let edc = EdcV::start().await;
    let cp = format!("{}/v5beta/participants", edc.control_plane_url);
    let admin = edc.access_token(A, &["management-api:admin"]);
    let write = edc.access_token(A, &["management-api:write"]);
    let create = |token: String, body: Value| {
        let cp = cp.clone();
        async move {
            send(Method::POST, cp, Some(&token), Some(body))
                .await
                .status()
        }
    };
    assert_eq!(
        create(write, context(A)).await,
        403,
        "creating contexts is admin only"
    );
    let mut no_context = context(A);
    no_context["@context"] = json!(["https://w3id.org/edc/connector/management/v1"]);
    assert_eq!(create(admin.clone(), no_context).await, 400);
    let mut wrong_type = context(A);
    wrong_type["@type"] = json!("Participant");
    assert_eq!(create(admin.clone(), wrong_type).await, 400);
    let response = send(Method::POST, cp.clone(), Some(&admin), Some(context(A))).await;
    assert_eq!(response.status(), 200, "exactly 200, as the agent wants");
    assert_eq!(response.json::<Value>().await.unwrap()["@id"], A);
    assert_eq!(create(admin.clone(), context(A)).await, 409);

    let config = |entries: Value, private: Value| {
        json!({"@context": [MANAGEMENT_CONTEXT], "@type": "ParticipantContextConfig",
               "entries": entries, "privateEntries": private, "identity": A})
    };
    let url = format!("{cp}/{A}/config");
    let nested = config(
        json!({}),
        json!({"edc.vault.hashicorp.config": {"config": {}}}),
    );
    let refused = send(Method::PATCH, url.clone(), Some(&admin), Some(nested)).await;
    assert_eq!(refused.status(), 400, "privateEntries values are strings");
    let good = config(
        json!({"edc.participant.id": "did:web:a"}),
        json!({"v": "{\"config\":{}}"}),
    );
    let patched = send(Method::PATCH, url, Some(&admin), Some(good.clone())).await;
    assert_eq!(patched.status(), 204, "a void controller method");
    let unknown = send(
        Method::PATCH,
        format!("{cp}/{B}/config"),
        Some(&admin),
        Some(good),
    )
    .await;
    assert_eq!(unknown.status(), 404);
    assert_eq!(
        edc.control_plane_configs()[A]["entries"]["edc.participant.id"],
        "did:web:a"
    );
    let bad_plane = json!({"id": "dp", "endpoint": "http://x", "transferTypes": []});
    let planes = format!("{cp}/{A}/dataplanes");
    let refused = send(Method::PUT, planes, Some(&admin), Some(bad_plane)).await;
    assert_eq!(refused.status(), 400, "`id` is not `dataplaneId`");

    edc.fail_next(Route::ControlPlaneDelete, &[503]);
    let scripted = send(Method::DELETE, format!("{cp}/{A}"), Some(&admin), None).await;
    assert_eq!(scripted.status(), 503);
    let deleted = send(Method::DELETE, format!("{cp}/{A}"), Some(&admin), None).await;
    assert_eq!(deleted.status(), 204);
    let again = send(Method::DELETE, format!("{cp}/{A}"), Some(&admin), None).await;
    assert_eq!(again.status(), 404);
    assert!(edc.control_plane_participants().is_empty());
    assert!(
        edc.control_plane_configs().is_empty(),
        "the config goes with its context"
    );
    assert_eq!(edc.calls(Route::ControlPlaneDelete), 3);
}

#[tokio::test]
async fn issuer_service_binds_paths_to_the_issuer_context() {
    let edc = EdcV::start().await;
    let issuer = &edc.options.issuer_id;
    let holders = format!("{}/v1beta/participants/{issuer}/holders", edc.issuer_url);
    let holder = json!({"did": "did:web:a", "holderId": "did:web:a", "name": "a"});
    let own = edc.access_token(A, &["issuer-admin-api:holders:write"]);
    let refused = send(
        Method::POST,
        holders.clone(),
        Some(&own),
        Some(holder.clone()),
    )
    .await;
    assert_eq!(
        refused.status(),
        403,
        "A's token without the admin scope on the issuer's path"
    );
    let admin = edc.access_token(A, &["issuer-admin-api:admin"]);
    let created = send(
        Method::POST,
        holders.clone(),
        Some(&admin),
        Some(holder.clone()),
    )
    .await;
    assert_eq!(created.status(), 201);
    let again = send(
        Method::POST,
        holders.clone(),
        Some(&admin),
        Some(holder.clone()),
    )
    .await;
    assert_eq!(again.status(), 409);
    let no_id = json!({"did": "did:web:b"});
    let invalid = send(Method::POST, holders.clone(), Some(&admin), Some(no_id)).await;
    assert_eq!(invalid.status(), 400, "holderId is required");
    let elsewhere = format!("{}/v1beta/participants/{A}/holders", edc.issuer_url);
    let unknown = send(Method::POST, elsewhere, Some(&admin), Some(holder)).await;
    assert_eq!(
        unknown.status(),
        404,
        "the issuer service has no context {A}"
    );
    assert_eq!(edc.holders().len(), 1);

    let delete = format!("{holders}/did:web:a");
    assert_eq!(
        send(Method::DELETE, delete.clone(), Some(&own), None)
            .await
            .status(),
        403
    );
    assert_eq!(
        send(Method::DELETE, delete.clone(), Some(&admin), None)
            .await
            .status(),
        204
    );
    assert_eq!(
        send(Method::DELETE, delete, Some(&admin), None)
            .await
            .status(),
        404
    );
    assert!(edc.holders().is_empty());
}
