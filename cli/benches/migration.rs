//! Migration against onboarding, in one run of the embedded default: participants are
//! onboarded into one cell by concurrent clients, then that cell is drained into another
//! with every migration allowed at once, each participant taken through the default
//! template by the real plugins (a migration runs its deploy activities in the target and
//! its dispose activities in the source: twice an onboarding's work).
//!
//! `cargo bench -p cfm --bench migration` (needs scripts/build-plugins.sh first).
//! Prints a table; compare the ratios, absolute times on a shared machine are noise.

// Test code: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cfm_test_support::{Api, Server, percentile};
use serde_json::{Value, json};

const PARTICIPANTS: usize = 200;
const CLIENTS: usize = 8;

#[tokio::main]
async fn main() {
    let server = Server::start(&["--concurrency", "16"]).await;
    let api = Arc::new(server.client());
    let env = api.dataspace_with_cell("cell-a").await;
    let target = api.cell_serving(&env.dataspace_id, "cell-b").await;
    let tenant = api.post_ok("/tenants", json!({}), 201).await;
    let tenant = tenant["id"].as_str().unwrap().to_string();

    // Onboarding: every participant into cell-a, POST → first seen active (50 ms polling).
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let api = api.clone();
            let tenant = tenant.clone();
            let dataspace = env.dataspace_id.clone();
            let cell = env.cell_id.clone();
            tokio::spawn(async move {
                let mut sent = Vec::new();
                for i in (client..PARTICIPANTS).step_by(CLIENTS) {
                    let body = json!({"identifier": format!("did:web:m{i}.example"),
                                      "dataspaceProfileIds": [dataspace], "cellId": cell});
                    let at = Instant::now();
                    let profile = api
                        .post_ok(
                            &format!("/tenants/{tenant}/participant-profiles"),
                            body,
                            202,
                        )
                        .await;
                    sent.push((profile["id"].as_str().unwrap().to_string(), at));
                }
                sent
            })
        })
        .collect();
    let mut sent: HashMap<String, Instant> = HashMap::new();
    for client in clients {
        sent.extend(client.await.unwrap());
    }
    let mut seen_active: HashMap<String, Instant> = HashMap::new();
    while seen_active.len() < PARTICIPANTS {
        let profiles = api
            .get_json(&format!("/tenants/{tenant}/participant-profiles"))
            .await;
        let now = Instant::now();
        for profile in profiles.as_array().into_iter().flatten() {
            assert_eq!(profile["error"], false, "an onboarding failed: {profile}");
            let active = profile["vpas"]
                .as_array()
                .is_some_and(|v| v.iter().all(|v| v["state"] == "active"));
            if active {
                seen_active
                    .entry(profile["id"].as_str().unwrap().to_string())
                    .or_insert(now);
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "onboarding did not finish"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let onboarding_took = started.elapsed();
    let to_active: Vec<Duration> = seen_active
        .iter()
        .map(|(id, seen)| seen.duration_since(sent[id]))
        .collect();

    // Migration: drain cell-a with every migration allowed at once, as every onboarding was.
    let started = Instant::now();
    let drain = api
        .post_ok(
            &format!("/cells/{}/drain", env.cell_id),
            json!({"parallelism": 256}),
            202,
        )
        .await;
    assert_eq!(drain["total"], PARTICIPANTS);
    loop {
        let drain = api.get_json(&format!("/cells/{}/drain", env.cell_id)).await;
        assert_eq!(drain["failed"], 0, "a migration failed: {drain}");
        if drain["state"] == "completed" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the drain did not finish"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let migrating_took = started.elapsed();
    let in_migration = migration_times(&api, &tenant, sent.keys(), &target).await;

    println!(
        "{PARTICIPANTS} participants onboarded by {CLIENTS} clients into one cell, then drained into another with all migrations at once; default template (3 plugin activities each way)"
    );
    println!("| measure | p50 | p99 |");
    println!("|---|---|---|");
    print_row(
        "onboarding: POST → all VPAs active (50 ms polling)",
        &to_active,
    );
    print_row(
        "migration: started → completed (server timestamps)",
        &in_migration,
    );
    println!();
    let onboardings = PARTICIPANTS as f64 / onboarding_took.as_secs_f64();
    let migrations = PARTICIPANTS as f64 / migrating_took.as_secs_f64();
    println!("onboardings completed/s: {onboardings:.0}");
    println!("migrations completed/s: {migrations:.0}");
    println!(
        "migrations/s ÷ onboardings/s: {:.2}",
        migrations / onboardings
    );
    println!(
        "time in migration ÷ time to onboard, p50: {:.2}, p99: {:.2}",
        ratio(&in_migration, &to_active, 50),
        ratio(&in_migration, &to_active, 99)
    );
}

/// Each participant's migration time, from its record's timestamps; every one must have
/// completed into `target`.
async fn migration_times<'a>(
    api: &Api,
    tenant: &str,
    profiles: impl Iterator<Item = &'a String>,
    target: &Value,
) -> Vec<Duration> {
    let mut times = Vec::new();
    for id in profiles {
        let history = api
            .get_json(&format!(
                "/tenants/{tenant}/participant-profiles/{id}/migrations"
            ))
            .await;
        let migration = &history[0];
        assert_eq!(migration["state"], "completed", "{migration}");
        assert_eq!(migration["targetCellId"], target["id"]);
        let at = |field: &str| {
            chrono::DateTime::parse_from_rfc3339(migration[field].as_str().unwrap()).unwrap()
        };
        times.push(
            (at("updatedAt") - at("createdAt"))
                .to_std()
                .unwrap_or_default(),
        );
    }
    times
}

fn ratio(a: &[Duration], b: &[Duration], p: usize) -> f64 {
    percentile(a, p).as_secs_f64() / percentile(b, p).as_secs_f64()
}

fn print_row(name: &str, samples: &[Duration]) {
    println!(
        "| {name} | {:.1} ms | {:.1} ms |",
        percentile(samples, 50).as_secs_f64() * 1e3,
        percentile(samples, 99).as_secs_f64() * 1e3
    );
}
