//! The upstream agents' deploy and dispose (with the fixes of the contract notes' §13), call
//! by call as they send them, each with a freshly exchanged token: it succeeds, leaves
//! nothing behind, and the services see only participant-scoped exchanged tokens.

use cfm_standins::{AGENT_SCOPES, EdcV, MANAGEMENT_CONTEXT, Route, Service, TokenKind};
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{AGENTS, agents_token, exchange, send};

const PC: &str = "5f0e8d2c9a4b4c7e8f1a2b3c4d5e6f70";
const DID: &str = "did:web:provider.example";

/// One agent call: exchange for `PC` with `scope`, then send.
async fn call(
    edc: &EdcV,
    scope: &str,
    method: Method,
    url: String,
    body: Option<Value>,
) -> reqwest::Response {
    let token = exchange(edc, PC, scope).await;
    send(method, url, Some(&token), body).await
}

async fn deploy_until_onboarding(edc: &EdcV) {
    let sa = agents_token(edc);
    let mappings = format!("{}/api/v1/mappings", edc.jwtlet_management_url);
    let mut scopes: Vec<&str> = AGENT_SCOPES.to_vec();
    for client in ["cfm-agents", "controlplane", "identityhub"] {
        let body = json!({"clientIdentifier": format!("system:serviceaccount:edc-v:{client}"),
            "participantContext": PC, "scopes": scopes, "audiences": ["edcv"]});
        let response = send(Method::POST, mappings.clone(), Some(&sa), Some(body)).await;
        assert_eq!(response.status(), 201, "mapping for {client}");
        scopes = vec!["read"];
    }
    exchange(edc, PC, &AGENT_SCOPES.join(" ")).await;

    let ih = format!("{}/v1beta/participants", edc.identity_hub_url);
    let manifest = json!({"roles": ["participant"], "provisionStsAccount": false, "provisionApiKey": false,
        "serviceEndpoints": [{"type": "CredentialService", "id": format!("{PC}-credentialservice"), "serviceEndpoint": "http://ih/cs"}],
        "active": true, "participantContextId": PC, "did": DID,
        "key": {"keyId": format!("{DID}#key1"), "privateKeyAlias": "6b1f", "keyGeneratorParams": {"algorithm": "EDDSA", "curve": "Ed25519"}},
        "additionalProperties": {}});
    let created = call(edc, "identity-api:admin", Method::POST, ih, Some(manifest)).await;
    assert!(created.status().is_success());
}

async fn register_holder(edc: &EdcV) {
    let issuer = &edc.options.issuer_id;
    let holders = format!("{}/v1beta/participants/{issuer}/holders", edc.issuer_url);
    let holder = json!({"did": DID, "holderId": DID, "name": DID, "properties": {}});
    let registered = call(
        edc,
        "issuer-admin-api:admin",
        Method::POST,
        holders,
        Some(holder),
    )
    .await;
    assert_eq!(registered.status(), 201);
}

async fn request_credentials(edc: &EdcV, pid: &str) -> Vec<String> {
    let url = format!(
        "{}/v1beta/participants/{PC}/credentials/request",
        edc.identity_hub_url
    );
    let body = json!({"issuerDid": edc.options.issuer_did, "holderPid": pid,
        "credentials": [{"format": "VC1_0_JWT", "type": "MembershipCredential", "id": "membership-def"}]});
    let requested = call(
        edc,
        "identity-api:credentials:write",
        Method::POST,
        url,
        Some(body),
    )
    .await;
    assert_eq!(requested.status(), 201);
    let status = format!(
        "{}{}",
        edc.identity_hub_url,
        requested.headers()["location"].to_str().unwrap()
    );
    let mut seen = Vec::new();
    for _ in 0..3 {
        let polled = call(
            edc,
            "identity-api:credentials:read",
            Method::GET,
            status.clone(),
            None,
        )
        .await;
        assert_eq!(polled.status(), 200);
        let status = polled.json::<Value>().await.unwrap()["status"]
            .as_str()
            .unwrap()
            .to_string();
        seen.push(status.clone());
        if status != "CREATED" {
            break;
        }
    }
    seen
}

#[tokio::test]
async fn the_agents_deploy_and_dispose_leave_nothing_behind() {
    let edc = EdcV::start().await;
    deploy_until_onboarding(&edc).await;
    register_holder(&edc).await;

    let cp = format!("{}/v5beta/participants", edc.control_plane_url);
    let context = json!({"@context": [MANAGEMENT_CONTEXT], "@type": "ParticipantContext", "@id": PC,
        "identity": DID, "properties": {}, "state": "ACTIVATED"});
    let created = call(
        &edc,
        "management-api:admin",
        Method::POST,
        cp.clone(),
        Some(context),
    )
    .await;
    assert_eq!(created.status(), 200);
    let config = json!({"@context": [MANAGEMENT_CONTEXT], "@type": "ParticipantContextConfig",
        "entries": {"edc.iam.issuer.id": DID, "edc.participant.id": DID},
        "privateEntries": {"edc.vault.hashicorp.config": "{\"config\":{}}"}, "identity": PC});
    let patched = call(
        &edc,
        "management-api:admin",
        Method::PATCH,
        format!("{cp}/{PC}/config"),
        Some(config),
    )
    .await;
    assert!((200..400).contains(&patched.status().as_u16()));

    assert_eq!(
        request_credentials(&edc, "pid-1").await,
        ["CREATED", "ISSUED"]
    );
    assert_eq!(edc.unrevoked_credentials().len(), 1);

    let siglet = format!("{}/transfer-type-mappings", edc.siglet_management_url);
    let got = call(
        &edc,
        "siglet-mgmt-api:read",
        Method::GET,
        format!("{siglet}/{PC}"),
        None,
    )
    .await;
    assert_eq!(got.status(), 404);
    let mappings = json!({"participantContextId": PC, "mappings": {"HttpData-PULL": {"transferType": "HttpData-PULL",
        "endpointType": "HTTP", "tokenSource": "provider", "endpoint": "https://data", "txRenewalSupport": false}}});
    let posted = call(
        &edc,
        "siglet-mgmt-api:write",
        Method::POST,
        siglet.clone(),
        Some(mappings),
    )
    .await;
    assert_eq!(posted.status(), 201);
    let plane = json!({"dataplaneId": format!("{PC}-siglet"), "transferTypes": ["HttpData-PULL"],
        "endpoint": format!("http://siglet:8081/api/v1/{PC}/dataflows")});
    let planes = format!("{cp}/{PC}/dataplanes");
    let registered = call(
        &edc,
        "management-api:admin",
        Method::PUT,
        planes.clone(),
        Some(plane),
    )
    .await;
    assert_eq!(registered.status(), 200);
    assert!(!edc.leftovers(PC, DID).is_empty());

    // Dispose: onboarding (revokes under the issuer's context, holderId = DID), registration,
    // connector, identity hub, siglet, jwtlet.
    let issuer = edc.options.issuer_id.clone();
    let query = format!(
        "{}/v1beta/participants/{issuer}/credentials/query",
        edc.issuer_url
    );
    let spec = json!({"offset": 0, "limit": 50, "sortOrder": "DESC", "filterExpression": [
        {"operandLeft": "verifiableCredential.credential.type", "operator": "contains", "operandRight": "MembershipCredential"},
        {"operandLeft": "holderId", "operator": "=", "operandRight": DID}]});
    let found = call(
        &edc,
        "issuer-admin-api:admin",
        Method::POST,
        query,
        Some(spec),
    )
    .await;
    assert_eq!(found.status(), 200);
    let found: Vec<Value> = found.json().await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["participantContextId"], issuer.as_str());
    let id = found[0]["credential"]["id"].as_str().unwrap().to_string();
    let under_holder = format!(
        "{}/v1beta/participants/{PC}/credentials/{id}/revoke",
        edc.issuer_url
    );
    let refused = call(
        &edc,
        "issuer-admin-api:admin",
        Method::POST,
        under_holder,
        None,
    )
    .await;
    assert_eq!(
        refused.status(),
        404,
        "the holder's context does not own the credential"
    );
    let revoke = format!(
        "{}/v1beta/participants/{issuer}/credentials/{id}/revoke",
        edc.issuer_url
    );
    let revoked = call(&edc, "issuer-admin-api:admin", Method::POST, revoke, None).await;
    assert_eq!(revoked.status(), 204);
    let holder = format!(
        "{}/v1beta/participants/{issuer}/holders/{DID}",
        edc.issuer_url
    );
    let deleted = call(&edc, "issuer-admin-api:admin", Method::DELETE, holder, None).await;
    assert_eq!(deleted.status(), 204);
    let deleted = call(
        &edc,
        "management-api:admin",
        Method::DELETE,
        format!("{cp}/{PC}"),
        None,
    )
    .await;
    assert_eq!(deleted.status(), 204);
    let ih = format!("{}/v1beta/participants/{PC}", edc.identity_hub_url);
    let deleted = call(&edc, "identity-api:admin", Method::DELETE, ih, None).await;
    assert_eq!(deleted.status(), 204);
    let deleted = call(
        &edc,
        "siglet-mgmt-api:write",
        Method::DELETE,
        format!("{siglet}/{PC}"),
        None,
    )
    .await;
    assert_eq!(deleted.status(), 204);
    let mut left = edc.leftovers(PC, DID);
    left.retain(|l| !l.starts_with("jwtlet mapping"));
    assert_eq!(left, [format!("control plane dataplane {PC}-siglet")]);
    let plane = format!("{planes}/{PC}-siglet");
    let deleted = call(&edc, "management-api:admin", Method::DELETE, plane, None).await;
    assert_eq!(deleted.status(), 200);
    let sa = agents_token(&edc);
    for client in ["cfm-agents", "controlplane", "identityhub"] {
        let url = format!(
            "{}/api/v1/mappings/system:serviceaccount:edc-v:{client}/{PC}",
            edc.jwtlet_management_url
        );
        assert_eq!(
            send(Method::DELETE, url, Some(&sa), None).await.status(),
            204
        );
    }

    assert_eq!(edc.leftovers(PC, DID), Vec::<String>::new());
    assert_eq!(edc.revoked_credentials(), [id]);
    let records = edc.auth_records();
    assert!(records.len() > 20);
    for record in &records {
        match record.service {
            Service::JwtletManagement => {
                assert_eq!(record.kind, TokenKind::ServiceAccount);
                assert_eq!(record.sub.as_deref(), Some(AGENTS));
            }
            _ => {
                assert_eq!(record.kind, TokenKind::Exchanged, "{record:?}");
                assert_eq!(record.sub.as_deref(), Some(PC), "{record:?}");
                assert!(
                    record.scope.as_deref().is_some_and(|s| !s.contains(' ')),
                    "{record:?}"
                );
            }
        }
    }
    assert_eq!(edc.token_exchanges(), edc.calls(Route::Token));
}

#[tokio::test]
async fn a_holder_the_issuer_does_not_know_gets_no_credentials() {
    let edc = EdcV::start().await;
    deploy_until_onboarding(&edc).await;
    assert_eq!(
        request_credentials(&edc, "pid-1").await,
        ["CREATED", "ERROR"]
    );
    assert!(edc.issued_credentials().is_empty());

    register_holder(&edc).await;
    edc.credential_outcome("ERROR", 0);
    assert_eq!(request_credentials(&edc, "pid-2").await, ["ERROR"]);
    edc.credential_outcome("ISSUED", 2);
    assert_eq!(
        request_credentials(&edc, "pid-3").await,
        ["CREATED", "CREATED", "ISSUED"]
    );
    assert_eq!(edc.issued_credentials().len(), 1);
    assert_eq!(edc.issued_credentials()[0].holder_id, DID);
    assert_eq!(edc.credential_requests().len(), 3);
}
