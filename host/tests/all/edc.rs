//! The EDC-V plugins (`edc-context`, `issuer`) under the real host, calling over real HTTP
//! the stand-ins of the Identity Hub, Control Plane and Issuer Service (cfm-standins),
//! which refuse anything that strays from the documented shapes.

use std::path::PathBuf;

use cfm_host::runtime::HostOptions;
use cfm_host::{AgentHost, Audit, Backends};
use cfm_protocol::{ActivityOutcome, ActivityTask};
use cfm_standins::{Route, Standins};
use serde_json::{Map, Value, json};

use crate::support::{self, DEPLOY, DID, DISPOSE};

const PC: &str = "pc-0a1b";
const ISSUER_DID: &str = "did:web:issuer.example";
const ADMIN_KEY_PATH: &str = "operator/edc-admin-api-key";

struct Setup {
    host: AgentHost,
    standins: Standins,
    backends: Backends,
    _data: tempfile::TempDir,
}

async fn setup() -> Setup {
    let standins = Standins::start("admin-key-1").await;
    let origins = format!(
        "origins = [\"{}\", \"{}\", \"{}\"]",
        standins.identity_hub_url, standins.control_plane_url, standins.issuer_url
    );
    let config = support::config(&[
        (
            "edc-context",
            "cfm.edc.participant-context",
            &format!(
                "[plugin.settings]\nidentityHubUrl = \"{ih}\"\ncontrolPlaneUrl = \"{cp}\"\n\
                 adminApiKeySecret = \"{ADMIN_KEY_PATH}\"\n\
                 protocolEndpoint = \"https://{{participantContextId}}.example/api/dsp\"\n\
                 credentialServiceEndpoint = \"https://{{participantContextId}}.example/api/credentials\"\n\
                 dataServiceEndpoint = \"https://{{participantContextId}}.example/api/data\"\n\
                 [plugin.grants]\nsecrets = [\"{ADMIN_KEY_PATH}\", \"participants/{{participantContextId}}/identity-hub-credentials\"]\n\
                 [plugin.grants.http]\n{origins}\n",
                ih = standins.identity_hub_url,
                cp = standins.control_plane_url,
            ),
        ),
        (
            "issuer",
            "cfm.issuer.credentials",
            &format!(
                "[plugin.settings]\nissuerUrl = \"{issuer}\"\nissuerId = \"issuer-1\"\nissuerDid = \"{ISSUER_DID}\"\n\
                 identityHubUrl = \"{ih}\"\nadminApiKeySecret = \"{ADMIN_KEY_PATH}\"\npollIntervalMs = 10\n\
                 [plugin.grants]\nsecrets = [\"{ADMIN_KEY_PATH}\"]\n\
                 [plugin.grants.http]\n{origins}\n",
                ih = standins.identity_hub_url,
                issuer = standins.issuer_url,
            ),
        ),
    ]);
    let data = tempfile::tempdir().unwrap();
    let backends = Backends::embedded(data.path());
    backends
        .secrets
        .put(ADMIN_KEY_PATH, &standins.api_key)
        .await
        .unwrap();
    let host = AgentHost::new(
        &config,
        backends.clone(),
        Audit::default(),
        HostOptions::default(),
    )
    .unwrap();
    Setup {
        host,
        standins,
        backends,
        _data: data,
    }
}

/// The same participant in every test, in a dataspace whose credentials come from two
/// issuers.
fn task(activity_type: &str, discriminator: &str) -> ActivityTask {
    let mut task = support::task(activity_type, PC);
    task.orchestration_id = "orch-1".into();
    task.discriminator = discriminator.into();
    task.processing_data.insert(
        "cfm.vpa.credentials".into(),
        json!([
            {"id": "membership", "type": "MembershipCredential", "issuer": ISSUER_DID, "format": "vc20-bssl/jwt"},
            {"id": "other", "type": "OtherCredential", "issuer": "did:web:elsewhere.example", "format": "vc20-bssl/jwt"}
        ]),
    );
    task
}

fn complete(outcome: ActivityOutcome) -> Map<String, Value> {
    match outcome {
        ActivityOutcome::Complete { output } => output,
        other => panic!("expected complete, got {other:?}"),
    }
}

#[tokio::test]
async fn the_participant_context_is_created_in_both_services_and_removed_again() {
    let s = setup().await;
    let deploy = task("cfm.edc.participant-context", DEPLOY);
    let output = complete(s.host.run(&deploy).await);
    assert_eq!(
        output,
        *json!({"participantContextId": PC}).as_object().unwrap()
    );

    let registered = s.standins.identity_hub_participant(PC).unwrap();
    assert_eq!(registered["did"], DID);
    assert_eq!(registered["key"]["keyId"], format!("{DID}#key1"));
    assert_eq!(
        registered["serviceEndpoints"][1]["serviceEndpoint"],
        format!("https://{PC}.example/api/dsp")
    );
    let contexts = s.standins.control_plane_participants();
    assert_eq!(contexts[PC]["context"]["identity"], DID);
    assert_eq!(contexts[PC]["config"]["edc.participant.id"], DID);
    // The Identity Hub's answer holds the participant's API credentials: kept as a secret.
    let kept = s
        .backends
        .secrets
        .get(&format!("participants/{PC}/identity-hub-credentials"))
        .await
        .unwrap()
        .unwrap();
    assert!(kept.contains("clientSecret"), "{kept}");
    assert!(!Value::Object(output).to_string().contains("clientSecret"));

    // A redelivered deploy finds everything there and completes the same way.
    complete(s.host.run(&deploy).await);
    assert_eq!(s.standins.identity_hub_participants(), [PC]);

    let dispose = task("cfm.edc.participant-context", DISPOSE);
    complete(s.host.run(&dispose).await);
    assert!(s.standins.identity_hub_participants().is_empty());
    assert!(s.standins.control_plane_participants().is_empty());
    assert!(
        s.backends
            .secrets
            .get(&format!("participants/{PC}/identity-hub-credentials"))
            .await
            .unwrap()
            .is_none()
    );
    // Disposing again finds nothing and is still a success.
    complete(s.host.run(&dispose).await);
}

#[tokio::test]
async fn credentials_the_identity_hub_gave_to_an_interrupted_attempt_are_replaced() {
    let s = setup().await;
    let deploy = task("cfm.edc.participant-context", DEPLOY);
    complete(s.host.run(&deploy).await);
    let kept_at = format!("participants/{PC}/identity-hub-credentials");
    let first = s.backends.secrets.get(&kept_at).await.unwrap().unwrap();

    // The state an agent leaves when it dies after the Identity Hub answered and before
    // the credentials were kept: the participant exists, its credentials are nowhere.
    s.backends.secrets.delete(&kept_at).await.unwrap();
    complete(s.host.run(&deploy).await);

    assert_eq!(s.standins.identity_hub_participants(), [PC]);
    assert_eq!(s.standins.calls(Route::IdentityHubDelete), 1);
    assert_eq!(s.standins.calls(Route::IdentityHubCreate), 3);
    let second = s.backends.secrets.get(&kept_at).await.unwrap().unwrap();
    assert!(second.contains("clientSecret"), "{second}");
    assert_ne!(first, second, "the lost credentials were not replaced");
}

/// Runs the issuer's deploy, following reschedules, until it ends otherwise.
async fn run_issuer(s: &Setup) -> (ActivityOutcome, usize) {
    let mut task = task("cfm.issuer.credentials", DEPLOY);
    let mut runs = 0;
    loop {
        runs += 1;
        match s.host.run(&task).await {
            ActivityOutcome::Reschedule { state, .. } => {
                task.state = Some(state);
                task.attempt += 1;
            }
            other => return (other, runs),
        }
        assert!(runs < 50, "never finished");
    }
}

#[tokio::test]
async fn credentials_are_requested_and_polled_until_issued() {
    let s = setup().await;
    // The Identity Hub participant exists first, as the template orders it.
    complete(
        s.host
            .run(&task("cfm.edc.participant-context", DEPLOY))
            .await,
    );
    s.standins.credential_outcome("ISSUED", 2);
    let (outcome, runs) = run_issuer(&s).await;
    let output = complete(outcome);
    // One run to request, two polls answered CREATED, one answered ISSUED.
    assert_eq!(runs, 4);
    assert_eq!(output["holderPid"], "orch-1");
    assert_eq!(
        output["credentialRequest"],
        format!(
            "{}/v1beta/participants/{PC}/credentials/request/orch-1",
            s.standins.identity_hub_url
        )
    );
    assert_eq!(s.standins.holders(), [DID]);
    let requests = s.standins.credential_requests();
    assert_eq!(requests["orch-1"]["issuerDid"], ISSUER_DID);
    // Only the credentials this issuer issues.
    assert_eq!(
        requests["orch-1"]["credentials"],
        json!([{"format": "vc20-bssl/jwt", "type": "MembershipCredential", "id": "membership"}])
    );

    complete(s.host.run(&task("cfm.issuer.credentials", DISPOSE)).await);
    assert!(s.standins.holders().is_empty());
}

#[tokio::test]
async fn server_errors_are_retried_and_a_failed_request_is_fatal() {
    let s = setup().await;
    complete(
        s.host
            .run(&task("cfm.edc.participant-context", DEPLOY))
            .await,
    );
    s.standins.fail_next(Route::HolderCreate, &[500, 500]);
    let deploy = task("cfm.issuer.credentials", DEPLOY);
    for _ in 0..2 {
        let outcome = s.host.run(&deploy).await;
        let ActivityOutcome::Retry { reason } = outcome else {
            panic!("{outcome:?}")
        };
        assert!(reason.contains("HTTP 500"), "{reason}");
    }
    s.standins.credential_outcome("ERROR", 0);
    let (outcome, _) = run_issuer(&s).await;
    let ActivityOutcome::Fatal { reason } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(reason.contains("ended in ERROR"), "{reason}");
    // Two scripted failures, then the registration that went through.
    assert_eq!(s.standins.calls(Route::HolderCreate), 3);
}

#[tokio::test]
async fn a_wrong_admin_key_or_a_missing_setting_fails_clearly() {
    let s = setup().await;
    s.backends
        .secrets
        .put(ADMIN_KEY_PATH, "not-the-key")
        .await
        .unwrap();
    let outcome = s
        .host
        .run(&task("cfm.edc.participant-context", DEPLOY))
        .await;
    let ActivityOutcome::Fatal { reason } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(reason.contains("HTTP 401"), "{reason}");
    assert!(s.standins.identity_hub_participants().is_empty());

    s.backends.secrets.delete(ADMIN_KEY_PATH).await.unwrap();
    let outcome = s.host.run(&task("cfm.issuer.credentials", DEPLOY)).await;
    let ActivityOutcome::Fatal { reason } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(reason.contains(ADMIN_KEY_PATH), "{reason}");
}

#[test]
fn the_shipped_template_uses_the_shipped_activity_types() {
    let template: Value = serde_json::from_str(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../templates/edc-v.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let builtin = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins/builtin.toml"),
    )
    .unwrap();
    for activities in template["activities"].as_object().unwrap().values() {
        for activity in activities.as_array().unwrap() {
            let activity_type = activity["type"].as_str().unwrap();
            assert!(
                builtin.contains(&format!("\"{activity_type}\"")),
                "no built-in plugin serves {activity_type}"
            );
        }
    }
}
