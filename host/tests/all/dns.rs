//! The RFC 2136 DNS backend against a real BIND9: records checked with `dig`, the TSIG key
//! enforced by the server, no update lost between concurrent writers, and the real `dns`
//! plugin deploying and disposing a participant's name.

use std::sync::Arc;

use cfm_host::capability::dns::rfc2136::{DynamicUpdates, TsigKey};
use cfm_host::capability::dns::{DnsBackend, Record};
use cfm_host::capability::{BackendError, Change};
use cfm_host::runtime::HostOptions;
use cfm_host::testing::Bind;
use cfm_host::{AgentHost, Audit, Backends};
use cfm_protocol::ActivityOutcome;

use crate::support;

const ZONE: &str = "participants.cfm.local";

fn updates(bind: &Bind) -> DynamicUpdates {
    DynamicUpdates::new(bind.address(), Some(TsigKey::load(&bind.key_file).unwrap())).unwrap()
}

fn cname(name: &str, target: &str) -> Record {
    Record::new(name, "CNAME", 300, target).unwrap()
}

#[tokio::test]
async fn records_are_created_updated_and_removed_on_the_server() {
    let bind = Bind::start(ZONE);
    let dns = updates(&bind);

    let change = dns
        .upsert(ZONE, cname("p1", "cell-a.cells.cfm.local."))
        .await
        .unwrap();
    assert_eq!(change, Change::Created);
    assert_eq!(bind.dig("p1", "CNAME"), ["cell-a.cells.cfm.local."]);

    let again = dns
        .upsert(ZONE, cname("p1", "cell-a.cells.cfm.local."))
        .await
        .unwrap();
    assert_eq!(again, Change::Unchanged);

    let moved = dns.upsert(ZONE, cname("p1", "cell-b")).await.unwrap();
    assert_eq!(moved, Change::Updated);
    // A relative target is relative to the zone, as in a zone file.
    assert_eq!(bind.dig("p1", "CNAME"), [format!("cell-b.{ZONE}.")]);

    let a = Record::new("api.p1", "A", 60, "10.1.2.3").unwrap();
    assert_eq!(dns.upsert(ZONE, a).await.unwrap(), Change::Created);
    assert_eq!(bind.dig("api.p1", "A"), ["10.1.2.3"]);

    assert!(dns.remove(ZONE, "p1", "CNAME").await.unwrap());
    assert!(bind.dig("p1", "CNAME").is_empty());
    assert!(!dns.remove(ZONE, "p1", "CNAME").await.unwrap());
    assert_eq!(
        bind.dig("api.p1", "A"),
        ["10.1.2.3"],
        "another set went too"
    );
}

#[tokio::test]
async fn the_server_refuses_a_wrong_key_and_nothing_is_written() {
    let bind = Bind::start(ZONE);
    let forged = TsigKey::parse(
        "key \"cfm-test\" { algorithm hmac-sha256; secret \"Zm9yZ2VkLWtleS1mb3JnZWQta2V5LWZvcmdlZC1rZXk=\"; };",
    )
    .unwrap();
    let unsigned = DynamicUpdates::new(bind.address(), None).unwrap();
    for dns in [
        DynamicUpdates::new(bind.address(), Some(forged)).unwrap(),
        unsigned,
    ] {
        let err = dns
            .upsert(ZONE, cname("intruder", "evil.example."))
            .await
            .unwrap_err();
        assert!(matches!(err, BackendError::Unavailable(_)), "{err}");
    }
    assert!(bind.dig("intruder", "CNAME").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_lose_no_update() {
    let bind = Bind::start(ZONE);
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let dns = Arc::new(updates(&bind));
            tokio::spawn(async move {
                for i in 0..15 {
                    let record = Record::new(&format!("w{w}-{i}"), "TXT", 60, "x").unwrap();
                    dns.upsert(ZONE, record).await.unwrap();
                    // Both writers also fight over one shared set.
                    let shared = Record::new("shared", "TXT", 60, &format!("w{w}-{i}")).unwrap();
                    dns.upsert(ZONE, shared).await.unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    for w in 0..2 {
        for i in 0..15 {
            assert_eq!(bind.dig(&format!("w{w}-{i}"), "TXT"), ["\"x\""], "w{w}-{i}");
        }
    }
    assert_eq!(
        bind.dig("shared", "TXT").len(),
        1,
        "the shared set holds one record"
    );
}

#[tokio::test]
async fn a_stopped_server_is_unavailable_until_it_is_back() {
    let mut bind = Bind::start(ZONE);
    let dns = updates(&bind);
    bind.pause();
    let err = dns
        .upsert(ZONE, cname("late", "cell-a."))
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::Unavailable(_)), "{err}");
    bind.resume();
    dns.upsert(ZONE, cname("late", "cell-a.")).await.unwrap();
    assert_eq!(bind.dig("late", "CNAME"), ["cell-a."]);
}

#[tokio::test]
async fn the_dns_plugin_routes_a_participant_through_bind() {
    let bind = Bind::start(ZONE);
    let config = support::config(&[(
        "dns",
        "cfm.dns.routing",
        &format!(
            "[plugin.settings]\nzone = \"{ZONE}\"\ncellTargetSuffix = \"cells.cfm.local.\"\n\
             [plugin.grants.dns]\nzones = [\"{ZONE}\"]\nnames = [\"{{participantContextId}}\"]\n\
             record-types = [\"CNAME\"]\n"
        ),
    )]);
    let data = tempfile::tempdir().unwrap();
    let backends = Backends::embedded(data.path()).with_dns(Arc::new(updates(&bind)));
    let host = AgentHost::new(&config, backends, Audit::default(), HostOptions::default()).unwrap();

    let pc = "p-7c1e";
    let mut task = support::task("cfm.dns.routing", pc);
    let outcome = host.run(&task).await;
    let ActivityOutcome::Complete { output } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(output["dnsName"], format!("{pc}.{ZONE}"));
    assert_eq!(bind.dig(pc, "CNAME"), ["cell-a.cells.cfm.local."]);
    assert!(
        !data.path().join("dns").exists(),
        "the embedded zone files were written too"
    );

    task.discriminator = support::DISPOSE.into();
    let outcome = host.run(&task).await;
    assert!(
        matches!(outcome, ActivityOutcome::Complete { .. }),
        "{outcome:?}"
    );
    assert!(bind.dig(pc, "CNAME").is_empty(), "dispose left the record");
}
