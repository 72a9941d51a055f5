//! A rollout under load on the split deployment: two `cfm manager` replicas on PostgreSQL
//! and JetStream, two `cfm agent` replicas keeping secrets in OpenBao, names in a real
//! BIND9 and cluster objects in an embedded cluster. 200 participants go from version 1
//! of their template to version 2 (which adds their DNS name and a check), with a plugin
//! build that fails the upgrades of one participant in twenty: the rollout pauses at its
//! failure budget, the plugin is fixed by a hot reload on both agents, the rollout is
//! resumed, and a manager is SIGKILLed mid-rollout.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cfm_host::testing::{Bind, DurableOpenBao};
use cfm_test_support::{Deployment, Replica, nats_url};
use serde_json::{Value, json};

use super::fleet::create_cell;
use super::fleet_load::onboard_concurrently;
use super::rollouts::{TEMPLATE, add_version_2, failing_upgrades, template_v1};

const ZONE: &str = "participants.cfm.local";
const PARTICIPANTS: usize = 200;
/// One participant in this many fails its upgrade until the plugin is fixed: 5 %.
const FAILING_EVERY: usize = 20;
const BATCH: i64 = 25;
const MAX_PARALLEL: i64 = 10;
const RELOADED: &str = "plugin configuration reloaded";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_pauses_at_its_budget_resumes_after_a_hot_fix_and_survives_a_killed_manager() {
    let bao = DurableOpenBao::start();
    let bind = Bind::start(ZONE);
    let mut deployment = Deployment::start(&nats_url(), 2).await;
    let backends =
        cfm_test_support::secrets_and_dns_backends(deployment.dir(), &bao, &bao.address, &bind);
    let config_dir = deployment.dir().join("plugin-config");
    std::fs::create_dir_all(&config_dir).unwrap();
    let failing: Vec<usize> = (0..PARTICIPANTS).step_by(FAILING_EVERY).collect();
    let plugins = failing_upgrades(&config_dir, &failing);
    deployment.start_agents_with(&["agents", "agents"], 8, &plugins, &backends);
    let api = deployment.api(1);
    template_v1(&api).await;
    let tenant = api.post_ok("/tenants", json!({}), 201).await;
    let tenant = tenant["id"].as_str().unwrap().to_string();
    create_cell(&api, "a", 1000, "eu").await;

    let apis = [deployment.api(0), deployment.api(1)];
    let onboarded = onboard_concurrently(&apis, &tenant, 0..PARTICIPANTS).await;
    for id in &onboarded {
        api.wait_active(&tenant, id, Duration::from_secs(120)).await;
    }
    assert!(
        bind.records("CNAME").unwrap().is_empty(),
        "version 1 names nobody"
    );
    add_version_2(&api).await;

    // 2 % of 200: the fifth failure pauses it.
    let started = Instant::now();
    let rollout = api
        .post_ok(
            "/rollouts",
            json!({"templateId": TEMPLATE, "batchSize": BATCH, "maxParallel": MAX_PARALLEL,
                   "failureBudget": {"percent": 2}}),
            201,
        )
        .await;
    assert_eq!(rollout["total"], PARTICIPANTS as i64, "{rollout}");
    assert_eq!(rollout["maxFailures"], 4, "{rollout}");
    let id = rollout["id"].as_str().unwrap().to_string();
    let mut peak = 0;
    let paused = wait_sampling(&api, &id, "paused", &mut peak, |_| {}).await;
    let detail = paused["detail"].as_str().unwrap();
    assert!(detail.contains("failure budget spent"), "{paused}");
    assert!(paused["failures"].as_i64().unwrap() >= 5, "{paused}");
    let to_pause = started.elapsed();
    // Upgrades under way when it paused finish; then the failed ones are counted.
    let deadline = Instant::now() + Duration::from_secs(60);
    let settled = loop {
        let rollout = api.get_json(&format!("/rollouts/{id}")).await;
        if rollout["progress"]["upgrading"] == 0 {
            break rollout;
        }
        assert!(Instant::now() < deadline, "{rollout}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(settled["state"], "paused", "{settled}");
    let failed = settled["progress"]["failed"].as_i64().unwrap();
    assert!(failed >= 5, "{settled}");
    assert!(
        settled["progress"]["pending"].as_i64().unwrap() > 0,
        "paused early: {settled}"
    );

    // The fix: a new setting, hot-reloaded by both agents while they run.
    let reloads: Vec<usize> = deployment.agents.iter().map(reloads_of).collect();
    failing_upgrades(&config_dir, &[]);
    wait_reloaded(&deployment, &reloads).await;

    let resumed = apis[0]
        .post_ok(&format!("/rollouts/{id}/resume"), json!({}), 200)
        .await;
    assert_eq!(resumed["state"], "running");
    let upgraded_at_resume = resumed["progress"]["upgraded"].as_i64().unwrap();
    // Mid-rollout: 40 upgrades on, or halfway through what is left when the pause came
    // late (the failing participants are spread at random over the rollout's order), so
    // that the kill never waits for an upgrade the rollout will not make.
    let pending_at_resume = resumed["progress"]["pending"].as_i64().unwrap();
    let kill_at = upgraded_at_resume + (pending_at_resume / 2).clamp(1, 40);
    let mut killed = false;
    let done = wait_sampling(&api, &id, "completed", &mut peak, |rollout| {
        let upgraded = rollout["progress"]["upgraded"].as_i64().unwrap();
        if !killed && upgraded >= kill_at {
            deployment.managers[0].kill();
            std::thread::sleep(Duration::from_millis(500));
            deployment.managers[0].try_restart().unwrap();
            killed = true;
        }
    })
    .await;
    let took = started.elapsed();
    assert!(
        killed,
        "the rollout ended before the manager could be killed"
    );
    assert_eq!(
        done["progress"],
        json!({"pending": 0, "upgrading": 0, "upgraded": PARTICIPANTS, "failed": 0, "skipped": 0}),
        "{done}"
    );
    assert!(
        peak <= MAX_PARALLEL,
        "{peak} upgrades at once, over {MAX_PARALLEL}"
    );

    // Everyone on version 2, upgraded exactly once; the failed ones retried once.
    let completed = api
        .post_ok(
            "/orchestrations/query",
            json!({"predicate": "orchestrationType = 'cfm.orchestration.vpa.upgrade' AND state = 2"}),
            200,
        )
        .await;
    let mut per_profile: BTreeMap<String, usize> = BTreeMap::new();
    for orchestration in completed.as_array().unwrap() {
        *per_profile
            .entry(orchestration["correlationId"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(
        per_profile.len(),
        PARTICIPANTS,
        "every participant upgraded"
    );
    assert!(
        per_profile.values().all(|n| *n == 1),
        "upgraded twice: {:?}",
        per_profile
            .iter()
            .filter(|(_, n)| **n > 1)
            .collect::<Vec<_>>()
    );
    let targets = api.get_json(&format!("/rollouts/{id}/participants")).await;
    let attempts: Vec<i64> = targets
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["attempts"].as_i64().unwrap())
        .collect();
    let retried = attempts.iter().filter(|a| **a == 2).count() as i64;
    assert_eq!(retried, failed, "each failed upgrade retried once");
    assert!(attempts.iter().all(|a| *a == 1 || *a == 2), "{attempts:?}");
    let profiles = api
        .get_json(&format!("/tenants/{tenant}/participant-profiles"))
        .await;
    for profile in profiles.as_array().unwrap() {
        assert_eq!(profile["templateVersion"], 2, "{profile}");
        let vpas = profile["vpas"].as_array().unwrap();
        assert!(vpas.iter().all(|v| v["state"] == "active"), "{profile}");
    }
    let records: BTreeMap<String, String> = bind.records("CNAME").unwrap().into_iter().collect();
    for id in &onboarded {
        assert!(
            records.contains_key(id),
            "{id} has no name after its upgrade"
        );
    }
    assert_eq!(records.len(), PARTICIPANTS);
    eprintln!(
        "rollout of {PARTICIPANTS}: paused at the budget after {:.1} s, completed after {:.1} s (with the fix and a manager killed); peak {peak} upgrades at once",
        to_pause.as_secs_f64(),
        took.as_secs_f64()
    );
}

/// Polls the rollout until `state`, recording the most upgrades seen at once and calling
/// `each` with every sample.
async fn wait_sampling(
    api: &cfm_test_support::Api,
    id: &str,
    state: &str,
    peak: &mut i64,
    mut each: impl FnMut(&Value),
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let rollout = api.get_json(&format!("/rollouts/{id}")).await;
        *peak = (*peak).max(rollout["progress"]["upgrading"].as_i64().unwrap());
        if rollout["state"] == state {
            return rollout;
        }
        assert_ne!(rollout["state"], "completed", "{rollout}");
        assert!(
            Instant::now() < deadline,
            "the rollout never reached {state}: {rollout}"
        );
        tokio::task::block_in_place(|| each(&rollout));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until every agent of `deployment` has reloaded its plugins since it had
/// `reloads` ([`reloads_of`] each).
pub(super) async fn wait_reloaded(deployment: &Deployment, reloads: &[usize]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while deployment
        .agents
        .iter()
        .zip(reloads)
        .any(|(agent, before)| reloads_of(agent) == *before)
    {
        assert!(
            Instant::now() < deadline,
            "the agents did not reload their plugins"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How often `agent` has reloaded its plugin configuration so far.
pub(super) fn reloads_of(agent: &Replica) -> usize {
    agent.log().matches(RELOADED).count()
}
