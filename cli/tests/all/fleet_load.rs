//! Draining a cell under load, on the split deployment: two `cfm manager` replicas on
//! PostgreSQL and JetStream, two `cfm agent` replicas keeping secrets in OpenBao, names in
//! a real BIND9 and cluster objects in one folder per cell. Three cells take 300
//! participants from 16 clients by spread placement; then one cell is drained while
//! onboarding goes on, a manager and an agent are SIGKILLed mid-drain, and a probe asks
//! BIND9 for every participant's name throughout.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cfm_host::testing::{Bind, DurableOpenBao};
use cfm_test_support::{Api, Deployment, nats_url};
use serde_json::{Value, json};

use super::fleet::{create_cell, deploy, template};

const ZONE: &str = "participants.cfm.local";
const PARTICIPANTS: usize = 300;
const CLIENTS: usize = 16;
/// Participants onboarded while the drain runs.
const DURING: usize = 40;
const CAPACITY: i64 = 200;
const DRAIN_PARALLELISM: i64 = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_drains_under_load_and_replica_kills_without_a_gap_in_dns() {
    let bao = DurableOpenBao::start();
    let bind = Bind::start(ZONE);
    let mut deployment = Deployment::start(&nats_url(), 2).await;
    let backends =
        cfm_test_support::secrets_and_dns_backends(deployment.dir(), &bao, &bao.address, &bind);
    // One data directory: the agents share the embedded cluster, a folder per cell.
    let plugins = cfm_test_support::plugins_config();
    deployment.start_agents_with(&["agents", "agents"], 8, &plugins, &backends);
    let cluster = deployment.agent_dir("agents").join("cluster");
    let api = deployment.api(1);
    template(&api).await;
    let tenant = api.post_ok("/tenants", json!({}), 201).await;
    let tenant = tenant["id"].as_str().unwrap().to_string();
    let mut cells = Vec::new();
    for name in ["a", "b", "c"] {
        cells.push(create_cell(&api, name, CAPACITY, "eu").await);
    }

    // 300 onboardings from 16 clients over both managers, spread.
    let started = Instant::now();
    let apis = [deployment.api(0), deployment.api(1)];
    let onboarded = onboard_concurrently(&apis, &tenant, 0..PARTICIPANTS).await;
    for id in &onboarded {
        api.wait_active(&tenant, id, Duration::from_secs(120)).await;
    }
    let onboarding_took = started.elapsed();
    let counts = usage(&api).await;
    assert_eq!(
        counts.values().map(|(n, _)| n).sum::<i64>(),
        PARTICIPANTS as i64
    );
    for (cell, (n, _)) in &counts {
        assert_eq!(
            *n,
            PARTICIPANTS as i64 / 3,
            "spread placement, cell {cell}: {counts:?}"
        );
    }

    // The probe: every participant's name, over and over, until the end.
    let stop = Arc::new(AtomicBool::new(false));
    let probe = {
        let names: Vec<String> = onboarded.clone();
        let port = bind.address().port();
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || probe_dns(port, &names, &stop))
    };
    // Onboarding goes on while the cell drains; placement must keep off it. Through the
    // manager that is not killed, so that every call has an answer to check.
    let during = {
        let apis = [apis[1].clone(), apis[1].clone()];
        let tenant = tenant.clone();
        tokio::spawn(async move {
            onboard_concurrently(&apis, &tenant, PARTICIPANTS..PARTICIPANTS + DURING).await
        })
    };
    let draining = &cells[0];
    let drain = api
        .post_ok(
            &format!("/cells/{draining}/drain"),
            json!({"parallelism": DRAIN_PARALLELISM}),
            202,
        )
        .await;
    assert_eq!(drain["state"], "running");
    // Its 100, and any onboarded beside them before the drain began.
    let total = drain["total"].as_i64().unwrap();
    assert!(total >= PARTICIPANTS as i64 / 3, "{drain}");
    let drain_started = Instant::now();

    // Mid-drain, a manager and an agent are SIGKILLed, then brought back.
    let peak_in_flight = AtomicUsize::new(0);
    let mut killed = false;
    let deadline = Instant::now() + Duration::from_secs(300);
    let drain = loop {
        let drain = api.get_json(&format!("/cells/{draining}/drain")).await;
        peak_in_flight.fetch_max(
            drain["inFlight"].as_u64().unwrap() as usize,
            Ordering::SeqCst,
        );
        for (cell, (participants, arriving)) in usage(&api).await {
            let n = participants + arriving;
            assert!(n <= CAPACITY, "cell {cell} over its capacity: {n}");
        }
        if !killed && drain["moved"].as_i64().unwrap() >= 10 {
            deployment.managers[0].kill();
            deployment.agents[0].kill();
            tokio::time::sleep(Duration::from_millis(500)).await;
            tokio::task::block_in_place(|| {
                deployment.managers[0].try_restart().unwrap();
                deployment.agents[0].try_restart().unwrap();
            });
            killed = true;
        }
        if drain["state"] == "completed" {
            break drain;
        }
        assert!(
            Instant::now() < deadline,
            "the drain did not finish: {drain}\n{}",
            deployment.managers[1].log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let drain_took = drain_started.elapsed();
    assert!(
        killed,
        "the drain ended before the replicas could be killed"
    );
    let late = during.await.unwrap();
    for id in &late {
        api.wait_active(&tenant, id, Duration::from_secs(120)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let probe = probe.await.unwrap();

    // End state.
    assert!(
        probe.rounds >= 3,
        "the probe ran only {} rounds",
        probe.rounds
    );
    assert!(
        probe.misses.is_empty(),
        "names that did not resolve: {:?}",
        probe.misses
    );
    let queries = probe.rounds * PARTICIPANTS;
    assert!(
        probe.unanswered * 100 <= queries,
        "the probe lost {} of {queries} queries: it proves little",
        probe.unanswered
    );
    assert!(
        peak_in_flight.load(Ordering::SeqCst) as i64 <= DRAIN_PARALLELISM,
        "over the drain's parallelism"
    );
    let moved_out = drain["moved"].as_i64().unwrap();
    assert_eq!(moved_out, total, "{drain}");
    let drained = api.get_json(&format!("/cells/{draining}")).await;
    assert_eq!(drained["state"], "drained");
    assert_eq!(drained["usage"]["participants"], 0);
    assert_eq!(
        namespaces(&cluster, draining).len(),
        0,
        "objects left in the drained cell"
    );

    let everyone: Vec<String> = onboarded.iter().chain(&late).cloned().collect();
    let records: BTreeMap<String, String> = bind.records("CNAME").unwrap().into_iter().collect();
    let mut holding: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for cell in &cells {
        for pc in namespaces(&cluster, cell) {
            holding.entry(pc).or_default().push(cell.clone());
        }
    }
    for id in &everyone {
        let profile = api.wait_active(&tenant, id, Duration::from_secs(10)).await;
        let cell = profile["vpas"][0]["cellId"].as_str().unwrap();
        assert_ne!(cell, draining.as_str(), "{id} is still in the drained cell");
        assert_eq!(
            holding.get(id),
            Some(&vec![cell.to_string()]),
            "{id}'s objects"
        );
        let name = external_id(&api, cell).await;
        assert_eq!(
            records.get(id).map(String::as_str),
            Some(format!("{name}.cells.cfm.local.").as_str()),
            "{id}'s name"
        );
        let history = api
            .get_json(&format!(
                "/tenants/{tenant}/participant-profiles/{id}/migrations"
            ))
            .await;
        let moves = history.as_array().unwrap();
        assert!(
            moves.len() <= 1,
            "{id} was migrated more than once: {history}"
        );
        assert!(moves.iter().all(|m| m["state"] == "completed"), "{history}");
    }
    // Nothing orphaned: no name, namespace or secrets folder of anyone not active.
    let known: BTreeSet<&String> = everyone.iter().collect();
    let named: BTreeSet<&String> = records.keys().collect();
    assert_eq!(named, known, "DNS names");
    let placed: BTreeSet<&String> = holding.keys().collect();
    assert_eq!(placed, known, "cluster namespaces");
    let folders = bao.list("secret/metadata/cfm/participants/").await.unwrap();
    let folders: BTreeSet<String> = folders
        .iter()
        .map(|f| f.trim_end_matches('/').to_string())
        .collect();
    assert_eq!(
        folders,
        known.iter().map(|s| s.to_string()).collect(),
        "OpenBao folders"
    );

    println!(
        "| drain under load | value |\n|---|---|\n| participants onboarded before | {PARTICIPANTS} ({:.1} s) |\n| onboarded during the drain | {DURING} |\n| moved out of the drained cell | {moved_out} in {:.1} s |\n| DNS probe | {} rounds, {} queries unanswered, {} misses |",
        onboarding_took.as_secs_f64(),
        drain_took.as_secs_f64(),
        probe.rounds,
        probe.unanswered,
        probe.misses.len()
    );
}

/// Onboards participants `range` from [`CLIENTS`] clients over `apis`; their ids.
/// Onboards the participants numbered `range` from [`CLIENTS`] clients, alternating
/// between the two APIs; their profile ids.
pub(super) async fn onboard_concurrently(
    apis: &[Api; 2],
    tenant: &str,
    range: std::ops::Range<usize>,
) -> Vec<String> {
    let numbers: Vec<usize> = range.collect();
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let api = apis[client % 2].clone();
        let tenant = tenant.to_string();
        let mine: Vec<usize> = numbers
            .iter()
            .copied()
            .skip(client)
            .step_by(CLIENTS)
            .collect();
        clients.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in mine {
                let (status, body) = deploy(&api, &tenant, n, json!({})).await;
                assert_eq!(status, 202, "{body}");
                ids.push(body["id"].as_str().unwrap().to_string());
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for client in clients {
        ids.extend(client.await.unwrap());
    }
    ids
}

/// What the probe saw.
#[derive(Default)]
struct Probe {
    rounds: usize,
    /// Names the server answered without a record (NXDOMAIN, or no CNAME), with the round.
    misses: Vec<String>,
    /// Queries that got no answer at all within dig's tries (lost UDP under load): not a
    /// gap in the zone, and counted apart.
    unanswered: usize,
}

/// Asks BIND9 for every name, round after round, until `stop`.
fn probe_dns(port: u16, names: &[String], stop: &AtomicBool) -> Probe {
    let mut probe = Probe::default();
    let suffix = format!(".{ZONE}.");
    while !stop.load(Ordering::SeqCst) {
        let mut dig = Command::new("dig");
        dig.args(["@127.0.0.1", "-p", &port.to_string()]);
        // TCP, on one connection: a datagram that is not the server's answer (a stray
        // query on dig's port has been seen under load) cannot pass for one.
        dig.args([
            "+tcp",
            "+keepopen",
            "+noall",
            "+comments",
            "+question",
            "+answer",
            "+tries=3",
            "+time=2",
        ]);
        for name in names {
            dig.arg(format!("{name}.{ZONE}")).arg("CNAME");
        }
        let output = dig
            .output()
            .expect("dig (scripts/services.sh installs bind9-dnsutils)");
        let text = String::from_utf8_lossy(&output.stdout);
        // Each answered query prints its header (with the status), its question, then
        // its answer records.
        let mut status = String::new();
        let mut statuses: BTreeMap<String, String> = BTreeMap::new();
        let mut answered: BTreeSet<String> = BTreeSet::new();
        for line in text.lines() {
            if let Some(at) = line.find("status: ") {
                status = line[at + 8..]
                    .split(',')
                    .next()
                    .unwrap_or_default()
                    .to_string();
            } else if line.starts_with(";; flags:") && !line.contains(" qr") {
                // Not a response at all: the question it carries was not answered.
                status.clear();
            } else if let Some(question) = line.strip_prefix(';').filter(|l| !l.starts_with(';')) {
                if let Some(name) = question
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.strip_suffix(&suffix))
                {
                    statuses.insert(name.to_string(), status.clone());
                }
            } else if let Some(name) = line
                .split_whitespace()
                .next()
                .and_then(|n| n.strip_suffix(&suffix))
            {
                answered.insert(name.to_string());
            }
        }
        for name in names {
            match statuses.get(name) {
                None => probe.unanswered += 1,
                Some(status) if status.is_empty() => probe.unanswered += 1,
                Some(status) if !answered.contains(name) => {
                    let again = Command::new("dig")
                        .args(["@127.0.0.1", "-p", &port.to_string(), "+short"])
                        .arg(format!("{name}.{ZONE}"))
                        .arg("CNAME")
                        .output()
                        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                        .unwrap_or_default();
                    probe.misses.push(format!(
                        "{name} ({status}, round {}; asked again: '{again}'): {}",
                        probe.rounds,
                        context_of(&text, name)
                    ));
                }
                Some(_) => {}
            }
        }
        probe.rounds += 1;
    }
    probe
}

fn context_of(text: &str, name: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.contains(name) && l.starts_with(';'))
        .unwrap_or(0);
    lines[at.saturating_sub(12)..(at + 6).min(lines.len())].join("\n")
}

/// Per cell: participants (not disposed) and those migrating in.
async fn usage(api: &Api) -> BTreeMap<String, (i64, i64)> {
    let cells = api.get_json("/cells").await;
    cells
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let usage = &c["usage"];
            (
                c["id"].as_str().unwrap().to_string(),
                (
                    usage["participants"].as_i64().unwrap(),
                    usage["arriving"].as_i64().unwrap(),
                ),
            )
        })
        .collect()
}

async fn external_id(api: &Api, cell: &str) -> String {
    let cell: Value = api.get_json(&format!("/cells/{cell}")).await;
    cell["externalId"].as_str().unwrap().to_string()
}

/// The participants with a namespace in `cell`'s cluster folder.
fn namespaces(cluster: &Path, cell: &str) -> Vec<String> {
    std::fs::read_dir(cluster.join(cell).join("_cluster/Namespace"))
        .map(|entries| {
            entries
                .filter_map(|e| {
                    let name = e.ok()?.file_name().to_string_lossy().to_string();
                    Some(
                        name.strip_prefix("cfm-")?
                            .strip_suffix(".yaml")?
                            .to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}
