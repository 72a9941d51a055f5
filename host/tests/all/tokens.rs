//! The `tokens` capability under the real host: a plugin gets tokens exchanged at the
//! jwtlet stand-in for the participant being processed, only for its granted audiences
//! and scopes, never sees the subject token, and cannot carry a token out.

use cfm_host::capability::tokens::exchange::TokenExchange;
use cfm_host::runtime::HostOptions;
use cfm_host::{AgentHost, Audit, Backends, HostConfig};
use cfm_protocol::ActivityOutcome;
use cfm_standins::EdcV;
use serde_json::{Value, json};
use std::sync::Arc;

use crate::support::{self, task};

const PC: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f9";

struct Setup {
    edc: EdcV,
    host: AgentHost,
    data: tempfile::TempDir,
}

/// The hostile plugin with `settings`, granted tokens for audience `edcv` and scope
/// `identity-api:admin` (and nothing else it imports), on a host whose token service is the jwtlet stand-in, which maps
/// the agent host's service account to [`PC`].
async fn setup(settings: &str) -> Setup {
    let edc = EdcV::start().await;
    let subject = edc.service_account_token("edc-v", "cfm-agents");
    let mapping = json!({"clientIdentifier": "system:serviceaccount:edc-v:cfm-agents",
        "participantContext": PC, "scopes": ["identity-api:admin", "management-api:admin"],
        "audiences": ["edcv"]});
    let created = reqwest::Client::new()
        .post(format!("{}/api/v1/mappings", edc.jwtlet_management_url))
        .bearer_auth(&subject)
        .json(&mapping)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);

    let data = tempfile::tempdir().unwrap();
    let subject_file = data.path().join("sa-token");
    std::fs::write(&subject_file, &subject).unwrap();
    let exchange = TokenExchange::new(&edc.jwtlet_token_url, &subject_file).unwrap();
    let config: HostConfig = support::config(&[(
        "hostile",
        "example.hostile",
        &format!(
            "[plugin.settings]\n{settings}\n\
             [plugin.grants]\nsecrets = [\"participants/{{participantContextId}}/x\"]\n\
             [plugin.grants.cluster]\nnamespaces = []\nkinds = []\n\
             [plugin.grants.dns]\nzones = []\nnames = []\nrecord-types = []\n\
             [plugin.grants.tokens]\naudiences = [\"edcv\"]\nscopes = [\"identity-api:admin\"]\n\
             [plugin.grants.http]\norigins = []\n"
        ),
    )]);
    let host = AgentHost::new(
        &config,
        Backends::embedded(data.path()).with_tokens(Arc::new(exchange)),
        Audit::to_file(&data.path().join("audit.jsonl")).unwrap(),
        HostOptions::default(),
    )
    .unwrap();
    Setup { edc, host, data }
}

impl Setup {
    fn audit(&self) -> Vec<Value> {
        support::audit_records(self.data.path())
    }
}

#[tokio::test]
async fn a_plugin_gets_its_own_participants_tokens_for_granted_scopes_only() {
    let token_url = "http://127.0.0.1:1/token";
    let probes = [
        ("token", "edcv identity-api:admin".to_string()),
        ("token", "edcv management-api:admin".to_string()),
        ("token", "another-audience identity-api:admin".to_string()),
        // Asking jwtlet itself, for any participant it likes, is outbound HTTP it was
        // not granted.
        ("http", format!("{token_url}?resource=another-participant")),
    ];
    let list: Vec<String> = probes
        .iter()
        .map(|(mode, target)| format!("{{ mode = \"{mode}\", target = \"{target}\" }}"))
        .collect();
    let s = setup(&format!(
        "mode = \"probes\"\nprobes = [{}]",
        list.join(", ")
    ))
    .await;
    let outcome = s.host.run(&task("example.hostile", PC)).await;
    let ActivityOutcome::Complete { output } = outcome else {
        panic!("{outcome:?}")
    };
    let results = output["results"].as_array().unwrap();
    assert_eq!(results[0]["outcome"], "ok", "{results:?}");
    assert_eq!(results[0]["parts"], 3, "not a JWT: {results:?}");
    for refused in &results[1..] {
        assert_eq!(refused["outcome"], "denied", "{results:?}");
    }
    assert_eq!(s.edc.token_exchanges(), 1, "a refused call reached jwtlet");
    // The one token was exchanged for the participant being processed.
    let records = s.edc.auth_records();
    assert!(
        records
            .iter()
            .all(|r| r.sub.as_deref() != Some("another-participant"))
    );

    let audit = s.audit();
    let denied: Vec<(&str, &str)> = audit
        .iter()
        .filter(|r| r["decision"] == "denied")
        .map(|r| {
            (
                r["capability"].as_str().unwrap(),
                r["target"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        denied,
        [
            ("tokens", "audience=edcv scope=management-api:admin"),
            (
                "tokens",
                "audience=another-audience scope=identity-api:admin"
            ),
            ("http", "GET http://127.0.0.1:1/token"),
        ]
    );
    let issued = audit.iter().find(|r| r["effect"] == "issued").unwrap();
    assert_eq!(issued["participantContextId"], PC);
    assert!(!audit.iter().any(|r| r.to_string().contains("eyJ")));
}

#[tokio::test]
async fn a_token_cannot_leave_in_the_output() {
    let s = setup("mode = \"leak-token\"\ntarget = \"edcv identity-api:admin\"").await;
    let outcome = s.host.run(&task("example.hostile", PC)).await;
    let ActivityOutcome::Fatal { reason } = &outcome else {
        panic!("a token left in the output: {outcome:?}")
    };
    assert!(reason.contains("tokens never leave a plugin"), "{reason}");
    assert!(!reason.contains("eyJ"));
}

#[tokio::test]
async fn a_refused_exchange_fails_naming_audience_and_scope_but_no_token() {
    let s = setup("mode = \"leak-token\"\ntarget = \"edcv identity-api:admin\"").await;
    s.edc.fail_next(cfm_standins::Route::Token, &[403]);
    let outcome = s.host.run(&task("example.hostile", PC)).await;
    let ActivityOutcome::Fatal { reason } = &outcome else {
        panic!("{outcome:?}")
    };
    assert!(
        reason.contains(
            "token exchange for audience 'edcv' and scope 'identity-api:admin' refused: 403"
        ),
        "{reason}"
    );
    assert!(!reason.contains("eyJ"), "{reason}");
}
