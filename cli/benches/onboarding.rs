//! Onboarding throughput of the embedded default: participants created over HTTP by
//! concurrent clients against the real `cfm serve`, each taken through the default
//! template (vault → k8s, dns) by the real plugins.
//!
//! `cargo bench -p cfm --bench onboarding` (needs scripts/build-plugins.sh first).
//! Prints a table; compare the ratios, absolute times on a shared machine are noise.

// Test code: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cfm_test_support::{Server, percentile};
use serde_json::{Value, json};

const PARTICIPANTS: usize = 400;
const CLIENTS: usize = 8;

#[tokio::main]
async fn main() {
    let server = Server::start(&["--concurrency", "16"]).await;
    let api = std::sync::Arc::new(server.client());
    let env = api.dataspace_with_cell("cell-bench").await;
    let tenant = api.post_ok("/tenants", json!({}), 201).await;
    let tenant_id = tenant["id"].as_str().unwrap_or_default().to_string();

    let mut health = Vec::new();
    for _ in 0..200 {
        let started = Instant::now();
        api.get("/health").await;
        health.push(started.elapsed());
    }

    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let api = api.clone();
            let tenant_id = tenant_id.clone();
            let dataspace = env.dataspace_id.clone();
            tokio::spawn(async move {
                let mut sent = Vec::new();
                for i in (client..PARTICIPANTS).step_by(CLIENTS) {
                    let body = json!({"identifier": format!("did:web:p{i}-{tenant_id}.example"), "dataspaceProfileIds": [dataspace]});
                    let at = Instant::now();
                    let profile = api.post_ok(&format!("/tenants/{tenant_id}/participant-profiles"), body, 202).await;
                    let id = profile["id"].as_str().unwrap_or_default().to_string();
                    sent.push((id, at, at.elapsed()));
                }
                sent
            })
        })
        .collect();

    // Meanwhile, note when each participant is first seen active (50 ms polling).
    let mut seen_active: HashMap<String, Instant> = HashMap::new();
    let mut sent: HashMap<String, (Instant, Duration)> = HashMap::new();
    let mut clients = clients;
    let mut accepted_in = None;
    while seen_active.len() < PARTICIPANTS {
        if accepted_in.is_none() && clients.iter().all(|c| c.is_finished()) {
            for client in clients.drain(..) {
                for (id, at, latency) in client.await.expect("client") {
                    sent.insert(id, (at, latency));
                }
            }
            accepted_in = Some(started.elapsed());
        }
        let profiles = api
            .get_json(&format!("/tenants/{tenant_id}/participant-profiles"))
            .await;
        let now = Instant::now();
        for profile in profiles.as_array().into_iter().flatten() {
            assert_eq!(profile["error"], false, "an onboarding failed: {profile}");
            if active(profile) {
                let id = profile["id"].as_str().unwrap_or_default().to_string();
                seen_active.entry(id).or_insert(now);
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "onboarding did not finish"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let total = started.elapsed();
    let accept: Vec<Duration> = sent.values().map(|(_, latency)| *latency).collect();
    let to_active: Vec<Duration> = seen_active
        .iter()
        .filter_map(|(id, seen)| sent.get(id).map(|(at, _)| seen.duration_since(*at)))
        .collect();

    println!(
        "{PARTICIPANTS} onboardings by {CLIENTS} concurrent clients; default template (3 plugin activities each)"
    );
    println!("| measure | p50 | p99 |");
    println!("|---|---|---|");
    print_row("GET /health round trip", &health);
    print_row("POST participant profile → 202", &accept);
    print_row(
        "POST → seen with all four VPAs active (50 ms polling)",
        &to_active,
    );
    println!();
    let accepted_in = accepted_in.unwrap_or(total);
    println!(
        "accepted/s: {:.0}",
        PARTICIPANTS as f64 / accepted_in.as_secs_f64()
    );
    println!(
        "onboardings completed/s: {:.0}",
        PARTICIPANTS as f64 / total.as_secs_f64()
    );
    println!(
        "POST p50 / health p50: {:.1}",
        percentile(&accept, 50).as_secs_f64() / percentile(&health, 50).as_secs_f64()
    );
}

fn active(profile: &Value) -> bool {
    profile["vpas"]
        .as_array()
        .is_some_and(|v| v.iter().all(|v| v["state"] == "active"))
}

fn print_row(name: &str, samples: &[Duration]) {
    println!(
        "| {name} | {:.2} ms | {:.2} ms |",
        percentile(samples, 50).as_secs_f64() * 1e3,
        percentile(samples, 99).as_secs_f64() * 1e3
    );
}
