//! Drift repair on a split deployment (two managers, two agents, PostgreSQL and
//! JetStream) with production backends: a participant's DNS record deleted on BIND9, its
//! API key deleted in OpenBao and its context ConfigMap deleted in the Kubernetes stand-in
//! are each found by a verify (which changes nothing), restored by a reconcile, and found
//! and restored by the periodic reconciler on its own, within its bound. A scaled
//! participant's new sizing reaches Kubernetes and is no drift.

use std::time::{Duration, Instant};

use cfm_host::testing::{Bind, OpenBao};
use cfm_standins::kubernetes::KubeApi;
use cfm_test_support::{Api, Deployment, nats_url};
use serde_json::{Value, json};

use super::fleet::{create_cell, deploy, template};

const ZONE: &str = "participants.cfm.local";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_drift_and_reconcile_repairs_it() {
    let d = Fleet::start(&[]).await;
    let (api, tenant) = (d.deployment.api(0), d.tenant().await);
    let id = d.onboard(&tenant, 0).await;
    let path = format!("/tenants/{tenant}/participant-profiles/{id}");

    let checked = verify(&api, &path, "verify").await;
    assert_eq!(checked["drift"]["state"], "in-sync", "{checked}");
    assert_eq!(checked["driftCount"], 0);

    d.break_all_three(&id).await;
    let checked = verify(&api, &path, "verify").await;
    assert_eq!(checked["drift"]["state"], "drifted", "{checked}");
    assert_eq!(checked["driftCount"], 1);
    assert_all_three_found(&checked["drift"], &id);
    // A verify changes nothing.
    d.assert_all_three_gone(&id).await;

    // Through the other manager: the replicas share everything.
    let other = d.deployment.api(1);
    let repaired = verify(&other, &path, "reconcile").await;
    assert_eq!(repaired["drift"]["state"], "repaired", "{repaired}");
    assert_eq!(repaired["driftCount"], 2);
    d.assert_all_three_back(&id).await;
    let checked = verify(&api, &path, "verify").await;
    assert_eq!(checked["drift"]["state"], "in-sync", "{checked}");
    assert_eq!(checked["driftCount"], 2);

    // Drift can be selected on, and the history shows what ran.
    let found = api
        .post_ok(
            "/participant-profiles/query",
            json!({"predicate": "driftCount = 2 AND driftState = 'in-sync'"}),
            200,
        )
        .await;
    assert_eq!(found.as_array().map(Vec::len), Some(1), "{found}");
    let history = api.get_json(&format!("{path}/history")).await;
    let count = |kind: &str| {
        history
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["orchestrationType"] == kind)
            .count()
    };
    assert_eq!(count("cfm.orchestration.vpa.reconcile"), 1, "{history}");
    assert_eq!(count("cfm.orchestration.vpa.verify"), 4, "{history}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_periodic_reconciler_finds_and_repairs_drift_within_its_interval() {
    const INTERVAL: Duration = Duration::from_secs(4);
    const PARTICIPANTS: usize = 6;
    const MAX_PARALLEL: i64 = 2;
    let d = Fleet::start(&[
        "--reconcile-interval",
        "4s",
        "--reconcile-max-parallel",
        "2",
    ])
    .await;
    let (api, tenant) = (d.deployment.api(0), d.tenant().await);
    let mut ids = Vec::new();
    for n in 0..PARTICIPANTS {
        ids.push(d.onboard(&tenant, n).await);
    }
    let path = |id: &str| format!("/tenants/{tenant}/participant-profiles/{id}");
    // Each one's first check comes by itself.
    for id in &ids {
        let first = wait_for(&api, &path(id), INTERVAL * 6, |p| {
            p["drift"]["state"] == "in-sync"
        })
        .await;
        assert_eq!(first["driftCount"], 0, "{first}");
    }

    // Broken right after a check of it ended, so no verify of it sees half the damage.
    let id = &ids[PARTICIPANTS / 2];
    let seen = api.get_json(&path(id)).await["drift"]["verifyId"].clone();
    let fresh = wait_for(&api, &path(id), INTERVAL * 4, |p| {
        p["drift"]["verifyId"] != seen && p["drift"]["state"] == "in-sync"
    })
    .await;
    d.break_all_three(id).await;
    let broken_at = Instant::now();
    let before = fresh["drift"]["verifyId"].clone();
    let repaired = wait_for(&api, &path(id), INTERVAL * 4, |p| {
        p["drift"]["verifyId"] != before && p["drift"]["state"] == "repaired"
    })
    .await;
    let took = broken_at.elapsed();
    assert_all_three_found(&repaired["drift"], id);
    d.assert_all_three_back(id).await;
    assert_eq!(repaired["driftCount"], 1, "{repaired}");
    // Found within one interval of the check before the break, plus the verify's and the
    // repair's own runs.
    assert!(took < INTERVAL * 3, "repaired after {took:?}");
    for other in ids.iter().filter(|other| *other != id) {
        let profile = api.get_json(&path(other)).await;
        assert_eq!(profile["driftCount"], 0, "{profile}");
    }

    // Never more than the bound at once, over both managers: the most verifies and
    // reconciles whose runs overlapped, from every participant's history.
    let mut runs = Vec::new();
    for id in &ids {
        let history = api.get_json(&format!("{}/history", path(id))).await;
        for run in history.as_array().unwrap() {
            let kind = run["orchestrationType"].as_str().unwrap();
            if kind.ends_with(".verify") || kind.ends_with(".reconcile") {
                let at = |field: &str| run[field].as_str().unwrap().to_string();
                let end = if run["state"] == 1 {
                    "~".to_string() // running still: after every timestamp
                } else {
                    at("stateTimestamp")
                };
                runs.push((at("createdTimestamp"), end));
            }
        }
    }
    let peak = runs
        .iter()
        .map(|(start, _)| {
            runs.iter()
                .filter(|(s, e)| s.as_str() <= start.as_str() && start.as_str() < e.as_str())
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(runs.len() > PARTICIPANTS, "{runs:?}");
    assert!(peak as i64 <= MAX_PARALLEL, "{peak} at once: {runs:?}");
    eprintln!(
        "drift repaired {took:?} after the break; {} verifies and reconciles, at most {peak} at once",
        runs.len()
    );
}

/// Scaling on the split deployment: a `vpaProperties` change reaches the participant's
/// ConfigMap in the Kubernetes stand-in, and a reconcile afterwards finds no drift and
/// leaves it there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scaled_participant_reaches_kubernetes_and_reconciles_in_sync() {
    let d = Fleet::start(&[]).await;
    let (api, tenant) = (d.deployment.api(0), d.tenant().await);
    let id = d.onboard(&tenant, 0).await;
    let path = format!("/tenants/{tenant}/participant-profiles/{id}");
    let sizing = |d: &Fleet| -> Value {
        let config_map = d.config_map(&id).expect("the participant's ConfigMap");
        config_map["data"]["vpa.cfm.connector"]
            .as_str()
            .map_or(Value::Null, |text| serde_json::from_str(text).unwrap())
    };
    let version = api.get_json(&path).await["version"].as_i64().unwrap();
    let (status, pending) = api
        .call(
            reqwest::Method::PATCH,
            &path,
            Some(json!({"vpaProperties": {"cfm.connector": {"replicas": 3}}})),
            Some(&format!("\"{version}\"")),
        )
        .await;
    assert_eq!(status, 202, "{pending}");
    wait_for(&api, &path, Duration::from_secs(60), |p| {
        p.get("pendingVpaProperties").is_none()
    })
    .await;
    assert_eq!(sizing(&d)["replicas"], 3);

    let reconciled = verify(&d.deployment.api(1), &path, "reconcile").await;
    assert_eq!(reconciled["drift"]["state"], "in-sync", "{reconciled}");
    assert_eq!(sizing(&d)["replicas"], 3, "the reconcile undid the scaling");
}

/// Two managers (sharing a PostgreSQL database) and two agents (sharing OpenBao, BIND9
/// and the Kubernetes stand-in, the vault plugin issuing runtime credentials), with a
/// template of the vault, k8s and dns activities.
struct Fleet {
    deployment: Deployment,
    bao: OpenBao,
    bind: Bind,
    kube: KubeApi,
}

impl Fleet {
    async fn start(manager_flags: &[&str]) -> Fleet {
        let bao = OpenBao::start();
        let bind = Bind::start(ZONE);
        let kube = KubeApi::start().await;
        let flags: Vec<String> = manager_flags.iter().map(|f| f.to_string()).collect();
        let mut deployment = Deployment::start_with(&nats_url(), 2, &flags).await;
        let plugins = cfm_test_support::plugins_config_with(
            deployment.dir(),
            cfm_test_support::runtime_access,
        );
        let backends = cfm_test_support::production_backends(
            deployment.dir(),
            &bao,
            &bao.address,
            &bind,
            &kube,
        );
        deployment.start_agents_with(&["agents", "agents"], 4, &plugins, &backends);
        let api = deployment.api(0);
        template(&api).await;
        create_cell(&api, "cell-r", 100, "eu").await;
        Fleet {
            deployment,
            bao,
            bind,
            kube,
        }
    }

    async fn tenant(&self) -> String {
        let tenant = self
            .deployment
            .api(0)
            .post_ok("/tenants", json!({}), 201)
            .await;
        tenant["id"].as_str().unwrap().to_string()
    }

    /// Onboards participant `n` of `tenant` and waits until it is active.
    async fn onboard(&self, tenant: &str, n: usize) -> String {
        let api = self.deployment.api(n % 2);
        let (status, profile) = deploy(&api, tenant, n, json!({})).await;
        assert_eq!(status, 202, "{profile}");
        let id = profile["id"].as_str().unwrap().to_string();
        api.wait_active(tenant, &id, Duration::from_secs(60)).await;
        id
    }

    /// Deletes the participant's CNAME on BIND9, its API key in OpenBao and its context
    /// ConfigMap in the Kubernetes stand-in, by hand.
    async fn break_all_three(&self, id: &str) {
        self.bind.delete_by_hand(id, "CNAME");
        self.bao
            .destroy(&format!("participants/{id}/api-key"))
            .await;
        let namespace = format!("cfm-{id}");
        assert!(
            self.kube
                .remove("v1", "configmaps", &namespace, "participant-context")
        );
        self.assert_all_three_gone(id).await;
    }

    async fn assert_all_three_gone(&self, id: &str) {
        assert!(self.bind.dig(id, "CNAME").is_empty());
        let (status, _) = self.bao.read(&format!("participants/{id}/api-key")).await;
        assert_eq!(status, 404);
        assert!(self.config_map(id).is_none());
    }

    async fn assert_all_three_back(&self, id: &str) {
        assert_eq!(self.bind.dig(id, "CNAME").len(), 1, "the CNAME is not back");
        let (status, body) = self.bao.read(&format!("participants/{id}/api-key")).await;
        assert_eq!(status, 200, "the api key is not back: {body}");
        assert!(self.config_map(id).is_some(), "the ConfigMap is not back");
    }

    fn config_map(&self, id: &str) -> Option<Value> {
        let namespace = format!("cfm-{id}");
        self.kube
            .object("v1", "configmaps", &namespace, "participant-context")
    }
}

/// The drift names each of the three, under the activity that made it.
fn assert_all_three_found(drift: &Value, id: &str) {
    let findings: Vec<String> = drift["activities"]
        .as_array()
        .unwrap_or_else(|| panic!("no activities: {drift}"))
        .iter()
        .flat_map(|a| {
            a["findings"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|f| {
                    format!(
                        "{} {} {} {}",
                        a["activityType"], f["capability"], f["target"], f["change"]
                    )
                })
        })
        .collect();
    let has = |parts: &[&str]| findings.iter().any(|f| parts.iter().all(|p| f.contains(p)));
    assert!(has(&["dns", id, "CNAME", "created"]), "{findings:?}");
    assert!(has(&["plugin", "api key", "missing"]), "{findings:?}");
    assert!(
        has(&[
            "cluster",
            &format!("ConfigMap/cfm-{id}/participant-context"),
            "created"
        ]),
        "{findings:?}"
    );
    assert_eq!(findings.len(), 3, "more drift than was made: {findings:?}");
}

/// Starts a verify (`verify`) or reconcile (`reconcile`) and waits for it to settle.
async fn verify(api: &Api, path: &str, what: &str) -> Value {
    let started = api.post_ok(&format!("{path}/{what}"), json!({}), 202).await;
    assert_eq!(started["drift"]["state"], "verifying", "{started}");
    let verify_id = started["drift"]["verifyId"].clone();
    wait_for(api, path, Duration::from_secs(60), |p| {
        p["drift"]["verifyId"] == verify_id
            && !matches!(
                p["drift"]["state"].as_str(),
                Some("verifying" | "repairing")
            )
    })
    .await
}

/// Polls the profile at `path` until `done` accepts it.
async fn wait_for(
    api: &Api,
    path: &str,
    timeout: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let profile = api.get_json(path).await;
        if done(&profile) {
            return profile;
        }
        assert!(Instant::now() < deadline, "timed out: {profile}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
