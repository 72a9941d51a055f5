//! Authentication and authorisation of the REST API against the real `cfm serve`:
//! identity-provider tokens checked against a JWKS served over loopback HTTP (and from a
//! file), and tokens confined to one tenant by `cfm_tenant`.

use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cfm_manager::auth::{ALL_SCOPES, TENANT_READ, TENANT_WRITE};
use cfm_manager::on_both_backends;
use cfm_manager::testing::TestBackend;
use cfm_test_support::Server;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{Value, json};

on_both_backends!(tenant_tokens_reach_only_their_tenant);

const ISSUER: &str = "https://idp.example";
const AUDIENCE: &str = "cfm";
/// A throwaway key made for these tests (PKCS#1 DER); it guards nothing.
const RSA_DER: &[u8] = include_bytes!("fixtures/rsa-test.der");
const RSA_JWK: &str = include_str!("fixtures/rsa-test.jwk.json");

/// An Ed25519 key of the test identity provider, with its JWK.
struct EdKey {
    kid: String,
    encoding: EncodingKey,
    jwk: Value,
}

fn ed_key(kid: &str) -> EdKey {
    let signing = SigningKey::from_bytes(&rand::random());
    let der = signing.to_pkcs8_der().unwrap();
    EdKey {
        kid: kid.into(),
        encoding: EncodingKey::from_ed_der(der.as_bytes()),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "use": "sig",
                    "x": URL_SAFE_NO_PAD.encode(signing.verifying_key().as_bytes())}),
    }
}

fn claims(scopes: &[&str]) -> Value {
    let now = unix_now();
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "operator", "iat": now,
           "exp": now + 600, "scope": scopes.join(" ")})
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn sign(algorithm: Algorithm, kid: &str, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(algorithm);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// Serves a JWKS on a free loopback port; the keys can be changed while it runs.
async fn serve_jwks(keys: Arc<Mutex<Vec<Value>>>) -> String {
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let keys = keys.lock().unwrap().clone();
            async move { axum::Json(json!({ "keys": keys })) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}/jwks.json")
}

async fn status_with(server: &Server, token: &str) -> u16 {
    server
        .client()
        .raw(Method::GET, "/tenants", None, Some(token))
        .await
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_provider_tokens_are_checked_against_its_jwks() {
    let rsa = EncodingKey::from_rsa_der(RSA_DER);
    let ed = ed_key("ed-1");
    let jwks = Arc::new(Mutex::new(vec![
        serde_json::from_str::<Value>(RSA_JWK).unwrap(),
        ed.jwk.clone(),
    ]));
    let url = serve_jwks(jwks.clone()).await;
    let server = Server::start(&[
        "--jwks",
        &url,
        "--jwt-issuer",
        ISSUER,
        "--jwt-audience",
        AUDIENCE,
        "--jwks-min-refresh-secs",
        "0",
    ])
    .await;
    let read = claims(&[TENANT_READ]);

    let rs256 = sign(Algorithm::RS256, "test-rsa", &rsa, &read);
    assert_eq!(status_with(&server, &rs256).await, 200);
    let eddsa = sign(Algorithm::EdDSA, &ed.kid, &ed.encoding, &read);
    assert_eq!(status_with(&server, &eddsa).await, 200);
    // The local admin token keeps working beside the identity provider's.
    assert_eq!(server.client().get("/tenants").await.status(), 200);

    let mut wrong_issuer = read.clone();
    wrong_issuer["iss"] = json!("https://evil.example");
    let mut wrong_audience = read.clone();
    wrong_audience["aud"] = json!("someone-else");
    let mut expired = read.clone();
    expired["exp"] = json!(unix_now() - 3600);
    let stranger = ed_key("ed-1");
    for (what, token) in [
        (
            "issuer",
            sign(Algorithm::RS256, "test-rsa", &rsa, &wrong_issuer),
        ),
        (
            "audience",
            sign(Algorithm::RS256, "test-rsa", &rsa, &wrong_audience),
        ),
        ("expiry", sign(Algorithm::RS256, "test-rsa", &rsa, &expired)),
        ("unknown key", sign(Algorithm::RS256, "nobody", &rsa, &read)),
        (
            "forged key",
            sign(Algorithm::EdDSA, "ed-1", &stranger.encoding, &read),
        ),
        (
            "HMAC with the public key",
            sign(
                Algorithm::HS256,
                "test-rsa",
                &EncodingKey::from_secret(RSA_JWK.as_bytes()),
                &read,
            ),
        ),
    ] {
        assert_eq!(status_with(&server, &token).await, 401, "{what}");
    }
    let hmac = sign(
        Algorithm::HS256,
        "test-rsa",
        &EncodingKey::from_secret(b"x"),
        &read,
    );
    let refused = server
        .client()
        .raw(Method::GET, "/tenants", None, Some(&hmac))
        .await;
    assert!(refused.text().await.unwrap().contains("not accepted"));

    // Scopes still apply to identity-provider tokens.
    let (status, body) = server
        .client_with(rs256.clone())
        .call(Method::POST, "/tenants", Some(json!({})), None)
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(body["message"].as_str().unwrap().contains(TENANT_WRITE));

    // A rotated-in key is picked up on first use.
    let rotated = ed_key("ed-2");
    jwks.lock().unwrap().push(rotated.jwk.clone());
    let fresh = sign(Algorithm::EdDSA, &rotated.kid, &rotated.encoding, &read);
    assert_eq!(status_with(&server, &fresh).await, 200);
}

/// Identity providers that name the client in `azp` rather than `aud` (Keycloak's
/// client-credential tokens): `--jwt-audience-claim azp` checks that claim instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audience_can_be_another_claim() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, format!("{{\"keys\": [{RSA_JWK}]}}")).unwrap();
    let server = Server::start(&[
        "--jwks",
        file.to_str().unwrap(),
        "--jwt-audience",
        AUDIENCE,
        "--jwt-audience-claim",
        "azp",
    ])
    .await;
    let rsa = EncodingKey::from_rsa_der(RSA_DER);
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut claims = claims(&[TENANT_READ]);
        edit(&mut claims);
        sign(Algorithm::RS256, "test-rsa", &rsa, &claims)
    };
    let azp = with(&|c| {
        c["aud"] = json!("account");
        c["azp"] = json!(AUDIENCE);
    });
    assert_eq!(status_with(&server, &azp).await, 200);
    let listed = with(&|c| c["azp"] = json!(["other", AUDIENCE]));
    assert_eq!(status_with(&server, &listed).await, 200);
    let other_client = with(&|c| c["azp"] = json!("someone-else"));
    assert_eq!(status_with(&server, &other_client).await, 401);
    // `aud` alone no longer counts.
    let aud_only = with(&|_| {});
    assert_eq!(status_with(&server, &aud_only).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_file_works_and_a_missing_one_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, format!("{{\"keys\": [{RSA_JWK}]}}")).unwrap();
    let server = Server::start(&["--jwks", file.to_str().unwrap()]).await;
    let rsa = EncodingKey::from_rsa_der(RSA_DER);
    let token = sign(Algorithm::RS256, "test-rsa", &rsa, &claims(&ALL_SCOPES));
    assert_eq!(status_with(&server, &token).await, 200);

    let absent = dir.path().join("absent.json");
    let stderr = refused_start(&["--jwks", absent.to_str().unwrap()]);
    assert!(stderr.contains("absent.json"), "{stderr}");
}

/// What `cfm serve` with `args` says on its way out: it must not start.
fn refused_start(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_cfm"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!output.status.success(), "cfm serve {args:?} started");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_identity_provider_is_found_by_oidc_discovery() {
    let jwks = serve_jwks(Arc::new(Mutex::new(vec![
        serde_json::from_str::<Value>(RSA_JWK).unwrap(),
    ])))
    .await;
    let document = json!({"issuer": ISSUER, "jwks_uri": jwks,
                          "token_endpoint": "https://idp.example/token"});
    let app = axum::Router::new().route(
        "/.well-known/openid-configuration",
        axum::routing::get(move || {
            let document = document.clone();
            async move { axum::Json(document) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let discovery = format!(
        "http://{}/.well-known/openid-configuration",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let server = Server::start(&[
        "--oidc-discovery-url",
        &discovery,
        "--jwt-audience",
        AUDIENCE,
    ])
    .await;
    let rsa = EncodingKey::from_rsa_der(RSA_DER);
    let read = claims(&[TENANT_READ]);
    assert_eq!(
        status_with(&server, &sign(Algorithm::RS256, "test-rsa", &rsa, &read)).await,
        200
    );
    // The discovered issuer is required.
    let mut other_issuer = read.clone();
    other_issuer["iss"] = json!("https://evil.example");
    let forged = sign(Algorithm::RS256, "test-rsa", &rsa, &other_issuer);
    assert_eq!(status_with(&server, &forged).await, 401);

    // Without its document cfm cannot check any token of the provider: it does not start.
    let stderr = refused_start(&["--oidc-discovery-url", &format!("{jwks}/absent")]);
    assert!(stderr.contains("OIDC discovery"), "{stderr}");
}

async fn tenant_tokens_reach_only_their_tenant(backend: TestBackend) {
    let server = Server::start_on(backend, &[]).await;
    let admin = server.client();
    let env = admin.dataspace_with_cell("cell-t").await;
    let mut ids = Vec::new();
    for name in ["mine", "theirs"] {
        let tenant = admin
            .post_ok("/tenants", json!({"properties": {"name": name}}), 201)
            .await;
        let id = tenant["id"].as_str().unwrap().to_string();
        admin
            .post_ok(
                &format!("/tenants/{id}/participant-profiles"),
                json!({"identifier": format!("did:web:{name}.example"),
                       "dataspaceProfileIds": [env.dataspace_id]}),
                202,
            )
            .await;
        ids.push(id);
    }
    let (mine, theirs) = (ids[0].as_str(), ids[1].as_str());
    // Issued the way an operator would, with `cfm token`.
    let issued = std::process::Command::new(env!("CARGO_BIN_EXE_cfm"))
        .args([
            "token",
            "--tenant",
            mine,
            "--scope",
            TENANT_READ,
            "--scope",
            TENANT_WRITE,
        ])
        .arg("--data-dir")
        .arg(server.data_dir())
        .output()
        .unwrap();
    assert!(issued.status.success(), "{issued:?}");
    let token = String::from_utf8(issued.stdout).unwrap().trim().to_string();
    let api = server.client_with(token);

    let listed = api.get("/tenants").await;
    assert_eq!(listed.headers()["x-total-count"], "1");
    let listed: Value = listed.json().await.unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["id"], mine);
    for query in ["/tenants/query", "/participant-profiles/query"] {
        // The count is of the same tenant-scoped predicate: others' rows are not counted.
        let counted = api
            .raw(Method::POST, query, Some(r#"{"predicate": "true"}"#), None)
            .await;
        assert_eq!(counted.headers()["x-total-count"], "1", "{query}");
        let found = api.post_ok(query, json!({"predicate": ""}), 200).await;
        let found = found.as_array().unwrap();
        assert_eq!(found.len(), 1, "{query}");
        let owner = found[0].get("tenantId").unwrap_or(&found[0]["id"]);
        assert_eq!(owner, mine, "{query}");
    }

    // Another tenant's resources do not exist for this token.
    let patch = Some(json!({"properties": {"x": 1}}));
    for (method, path, body) in [
        (Method::GET, format!("/tenants/{theirs}"), None),
        (Method::PATCH, format!("/tenants/{theirs}"), patch.clone()),
        (Method::DELETE, format!("/tenants/{theirs}"), None),
        (
            Method::GET,
            format!("/tenants/{theirs}/participant-profiles"),
            None,
        ),
        (
            Method::POST,
            format!("/tenants/{theirs}/participant-profiles"),
            Some(json!({"identifier": "did:web:sneaky.example"})),
        ),
    ] {
        let (status, _) = api.call(method.clone(), &path, body, None).await;
        assert_eq!(status, 404, "{method} {path}");
    }
    let (status, _) = api
        .call(Method::PATCH, &format!("/tenants/{mine}"), patch, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        api.get(&format!("/tenants/{mine}/participant-profiles"))
            .await
            .status(),
        200
    );

    // Operator resources: readable, not writable; the provision manager is out of reach.
    assert_eq!(api.get("/cells").await.status(), 200);
    assert_eq!(api.get("/dataspace-profiles").await.status(), 200);
    for (method, path, body) in [
        (Method::POST, "/tenants", json!({})),
        (Method::POST, "/cells", json!({"externalId": "mine"})),
        (Method::POST, "/dataspace-profiles", json!({})),
        (Method::GET, "/orchestration-definitions", Value::Null),
    ] {
        let (status, body) = api.call(method.clone(), path, Some(body), None).await;
        assert_eq!(status, 403, "{method} {path}: {body}");
    }
    // The admin still sees both.
    assert_eq!(
        admin.get_json("/tenants").await.as_array().unwrap().len(),
        2
    );
}
