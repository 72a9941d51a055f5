//! Chaos soak of the split deployment on real servers: two `cfm manager` and two `cfm agent`
//! replicas on PostgreSQL and a private JetStream server, agents keeping secrets in OpenBao,
//! names in BIND9 and cluster objects in the Kubernetes API-server stand-in. While
//! participants are onboarded and decommissioned without pause, a fault is injected every
//! one to three seconds: a replica SIGKILLed and restarted, NATS restarted, the
//! deployment's PostgreSQL backends terminated, OpenBao or BIND9 restarted.
//!
//! Once the faults stop and every server is back, it proves, against the backends
//! themselves and not only the API: every orchestration is terminal and the queue holds no
//! task a lost acknowledgement would hand out again; every participant is
//! active or disposed; each active one has exactly its effects (API key, marker, runtime
//! credential, ACL policy and AppRole role in OpenBao, one CNAME in BIND9, its namespace
//! and objects in the cluster) and each disposed one has none; nothing is left for an id
//! that is not active, no identifier has two participants and no effect was created twice.
//!
//! The short run (75 s of faults) is part of the normal suite. The soak:
//! `CFM_CHAOS_SECS=600 cargo test -p cfm --test chaos -- --nocapture`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cfm_host::testing::{Bind, DurableOpenBao};
use cfm_manager::provision::engine::CLEANUP_SUFFIX;
use cfm_queue::jetstream::{JetStreamQueue, JetStreamSettings};
use cfm_standins::kubernetes::KubeApi;
use cfm_test_support::{Api, CallError, Deployment, JetStreamServer};
use rand::seq::SliceRandom;
use reqwest::Method;
use serde_json::{Value, json};

/// Seconds of fault injection when `CFM_CHAOS_SECS` is not set.
const DEFAULT_CHAOS_SECS: u64 = 75;
/// How long the deployment may take to finish its work once the faults stop.
const SETTLE: Duration = Duration::from_secs(120);
/// How long nothing may run, with work still counted in the queue, before the deployment is
/// judged settled anyway: five of the replicas' 2 s ack-waits.
const QUIET: Duration = Duration::from_secs(10);
const ZONE: &str = "participants.cfm.local";
const CELL: &str = "cell-chaos";
/// Where every participant's name points: its cell's ingress (the dns plugin's default suffix).
const CNAME_TARGET: &str = "cell-chaos.cells.cfm.local.";
/// Participants being deployed or disposed at once, at most: the load stays steady over a
/// long soak instead of piling up a backlog the settle time cannot drain.
const MAX_IN_FLIGHT: usize = 20;
/// The share of participants decommissioned soon after they turn active.
const DISPOSE_SHARE: f64 = 0.4;
/// One API call's budget: longer than any answer of a live manager.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one create or delete may keep retrying before it is left for the end.
const OPERATION_BUDGET: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Fault {
    KillManager,
    KillAgent,
    RestartNats,
    TerminatePostgresBackends,
    RestartOpenBao,
    RestartBind,
}

impl Fault {
    const ALL: [Fault; 6] = [
        Fault::KillManager,
        Fault::KillAgent,
        Fault::RestartNats,
        Fault::TerminatePostgresBackends,
        Fault::RestartOpenBao,
        Fault::RestartBind,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::KillManager => "manager SIGKILLed and restarted",
            Fault::KillAgent => "agent SIGKILLed and restarted",
            Fault::RestartNats => "NATS restarted",
            Fault::TerminatePostgresBackends => "PostgreSQL backends terminated",
            Fault::RestartOpenBao => "OpenBao restarted",
            Fault::RestartBind => "BIND9 restarted",
        }
    }
}

/// What the workload did, as the API answered it.
#[derive(Default)]
struct Ledger {
    /// Every identifier a create was sent for.
    attempted: BTreeSet<String>,
    /// Identifier → profile id, for creates answered 202 or found afterwards.
    created: BTreeMap<String, String>,
    /// Creates whose answer was lost and whose profile a lookup then found.
    found_after_lost_answer: usize,
    /// Creates that never got a definite answer within their budget: resolved at the end.
    unresolved: BTreeSet<String>,
    /// Profiles whose DELETE was answered 202.
    decommissioned: BTreeSet<String>,
    /// Profiles whose DELETE never got a definite answer: either end is allowed.
    decommission_unresolved: BTreeSet<String>,
    /// Active profiles the disposer has decided about (each once).
    considered: BTreeSet<String>,
    /// API calls that failed: refused, cut, timed out, or answered 5xx.
    failed_calls: usize,
    /// Answers no fault explains (a 4xx to a well-formed request): violations.
    unexpected: Vec<String>,
}

/// What the workload tasks share with the test.
struct Workload {
    /// The managers' API clients; a restarted manager listens on a new port.
    managers: Mutex<Vec<Api>>,
    ledger: Mutex<Ledger>,
    tenant: String,
    dataspace: String,
    /// Profiles being deployed or disposed, as last seen.
    in_flight: AtomicUsize,
    stop: AtomicBool,
}

impl Workload {
    /// The managers, starting from a random one: a caller tries them in this order.
    fn managers(&self) -> Vec<Api> {
        let mut managers = self
            .managers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let start = rand::random_range(0..managers.len());
        managers.rotate_left(start);
        managers
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// A request that is safe to repeat (reads, DELETE), sent to each manager in turn
    /// until one answers below 500; None when none did.
    async fn call_any(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Option<(u16, Value)> {
        for api in self.managers() {
            match api
                .try_call(method.clone(), path, body.clone(), CALL_TIMEOUT)
                .await
            {
                Ok((status, answer)) if status < 500 => return Some((status, answer)),
                _ => self.ledger().failed_calls += 1,
            }
        }
        None
    }

    /// The ids of the profiles with `identifier`; None when no manager answered.
    async fn lookup(&self, identifier: &str) -> Option<Vec<String>> {
        let predicate = format!("identifier = '{identifier}'");
        match self
            .call_any(
                Method::POST,
                "/participant-profiles/query",
                Some(json!({"predicate": predicate})),
            )
            .await
        {
            Some((200, Value::Array(found))) => Some(
                found
                    .iter()
                    .filter_map(|p| p["id"].as_str().map(String::from))
                    .collect(),
            ),
            _ => None,
        }
    }

    /// Every profile of the tenant; None when no manager answered.
    async fn profiles(&self) -> Option<Vec<Value>> {
        let predicate = format!("tenantId = '{}'", self.tenant);
        match self
            .call_any(
                Method::POST,
                "/participant-profiles/query",
                Some(json!({"predicate": predicate, "limit": 10000})),
            )
            .await
        {
            Some((200, Value::Array(profiles))) => Some(profiles),
            _ => None,
        }
    }

    /// Onboards `identifier`. A create is not repeated blindly: when its answer is lost
    /// (the manager was killed, its database connection cut, ...) the profile may exist,
    /// so it is looked up by identifier first and sent again only when it is not there.
    async fn create(&self, identifier: &str) {
        self.ledger().attempted.insert(identifier.to_string());
        let path = format!("/tenants/{}/participant-profiles", self.tenant);
        let body = json!({"identifier": identifier, "dataspaceProfileIds": [self.dataspace]});
        let started = Instant::now();
        'send: while started.elapsed() < OPERATION_BUDGET {
            let api = self.managers().remove(0);
            let sent = Instant::now();
            let wait = match api
                .try_call(Method::POST, &path, Some(body.clone()), CALL_TIMEOUT)
                .await
            {
                Ok((202, answer)) if answer["id"].is_string() => {
                    let id = answer["id"].as_str().unwrap_or_default().to_string();
                    self.ledger().created.insert(identifier.to_string(), id);
                    return;
                }
                Ok((status, answer)) if (400..500).contains(&status) && status != 429 => {
                    // Refused: not an onboarding.
                    self.ledger()
                        .unexpected
                        .push(format!("create {identifier}: {status} {answer}"));
                    return;
                }
                // Never reached a server: nothing was written, try the other one.
                Err(CallError::Unreachable(_)) => {
                    self.ledger().failed_calls += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                // A server that is still working on it may commit later: look only once
                // it must have finished.
                Err(CallError::TimedOut(_)) => {
                    self.ledger().failed_calls += 1;
                    Duration::from_secs(30).saturating_sub(sent.elapsed())
                }
                Ok(_) | Err(CallError::Broken(_)) => {
                    self.ledger().failed_calls += 1;
                    Duration::from_secs(1)
                }
            };
            tokio::time::sleep(wait).await;
            while started.elapsed() < OPERATION_BUDGET {
                match self.lookup(identifier).await {
                    Some(ids) if ids.is_empty() => continue 'send,
                    Some(ids) => {
                        // Two would be a duplicate: the final check reports it.
                        let mut ledger = self.ledger();
                        ledger
                            .created
                            .insert(identifier.to_string(), ids[0].clone());
                        ledger.found_after_lost_answer += 1;
                        return;
                    }
                    None => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
        }
        self.ledger().unresolved.insert(identifier.to_string());
    }

    /// Decommissions a profile. DELETE is idempotent (a profile already disposing
    /// answers 202 again), so it is repeated until a manager answers.
    async fn dispose(&self, id: &str) {
        let path = format!("/tenants/{}/participant-profiles/{id}", self.tenant);
        let started = Instant::now();
        while started.elapsed() < OPERATION_BUDGET {
            match self.call_any(Method::DELETE, &path, None).await {
                Some((202, _)) => {
                    self.ledger().decommissioned.insert(id.to_string());
                    return;
                }
                Some((429, _)) | None => tokio::time::sleep(Duration::from_millis(300)).await,
                Some((status, answer)) => {
                    self.ledger()
                        .unexpected
                        .push(format!("dispose {id}: {status} {answer}"));
                    return;
                }
            }
        }
        self.ledger().decommission_unresolved.insert(id.to_string());
    }
}

/// Creates participants without pause, keeping at most [`MAX_IN_FLIGHT`] in flight.
async fn onboard_continuously(work: Arc<Workload>) {
    let mut n = 0;
    while !work.stopped() {
        if work.in_flight.load(Ordering::SeqCst) >= MAX_IN_FLIGHT {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        n += 1;
        work.create(&format!("did:web:chaos-{n}.example")).await;
        // Counted here too, so a burst does not overshoot before the next scan.
        work.in_flight.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(rand::random_range(50..300))).await;
    }
}

/// Watches the tenant's profiles and decommissions a share of them soon after they turn
/// active, so disposal runs while the deploy's last messages may still be about.
async fn decommission_continuously(work: Arc<Workload>) {
    while !work.stopped() {
        tokio::time::sleep(Duration::from_millis(rand::random_range(300..800))).await;
        let Some(profiles) = work.profiles().await else {
            continue;
        };
        let in_flight = profiles
            .iter()
            .filter(|p| {
                !matches!(
                    vpa_state(p).as_deref(),
                    Some("active" | "disposed" | "error")
                )
            })
            .count();
        work.in_flight.store(in_flight, Ordering::SeqCst);
        let mut chosen = Vec::new();
        {
            let mut ledger = work.ledger();
            for profile in &profiles {
                let id = profile["id"].as_str().unwrap_or_default();
                if vpa_state(profile).as_deref() == Some("active")
                    && ledger.considered.insert(id.to_string())
                    && rand::random_bool(DISPOSE_SHARE)
                {
                    chosen.push(id.to_string());
                }
            }
        }
        for id in chosen {
            if work.stopped() {
                break;
            }
            work.dispose(&id).await;
        }
    }
}

/// The state all of a profile's VPAs are in; None when they differ or there are none.
fn vpa_state(profile: &Value) -> Option<String> {
    let vpas = profile["vpas"].as_array()?;
    let first = vpas.first()?["state"].as_str()?;
    vpas.iter()
        .all(|v| v["state"] == first)
        .then(|| first.to_string())
}

/// How long a killed process stays down: long enough for the work in flight to run into
/// it, short enough for the engine's retries (five, from 1 s doubling) to outlast it.
fn downtime() -> Duration {
    Duration::from_millis(rand::random_range(300..2500))
}

/// The deployment and every server it runs on; the fault injector's to break.
struct Rig {
    deployment: Deployment,
    nats: JetStreamServer,
    bao: DurableOpenBao,
    bind: Bind,
    kube: KubeApi,
    postgres: sqlx::PgPool,
    work: Arc<Workload>,
    _dir: tempfile::TempDir,
}

/// Faults injected and their side figures.
#[derive(Default)]
struct Injected {
    by_kind: BTreeMap<Fault, usize>,
    postgres_connections_cut: u64,
    restart_retries: usize,
    /// Replicas found dead that no fault had killed.
    died_on_their_own: Vec<String>,
}

impl Rig {
    async fn start() -> Rig {
        let nats = JetStreamServer::start();
        let bao = DurableOpenBao::start();
        let bind = Bind::start(ZONE);
        let kube = KubeApi::start().await;
        let dir = tempfile::tempdir().unwrap();
        let plugins =
            cfm_test_support::plugins_config_with(dir.path(), cfm_test_support::runtime_access);
        let backends =
            cfm_test_support::production_backends(dir.path(), &bao, &bao.address, &bind, &kube);
        let mut deployment = Deployment::start(&nats.url(), 2).await;
        deployment.start_agents_with(&["agent-a", "agent-b"], 4, &plugins, &backends);
        let api = deployment.api(0);
        api.slow_template(true).await;
        let env = api.dataspace_with_cell(CELL).await;
        let tenant = api.post_ok("/tenants", json!({}), 201).await;
        let admin = std::env::var("CFM_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let postgres = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&admin)
            .await
            .unwrap();
        let work = Arc::new(Workload {
            managers: Mutex::new(vec![deployment.api(0), deployment.api(1)]),
            ledger: Mutex::default(),
            tenant: tenant["id"].as_str().unwrap().to_string(),
            dataspace: env.dataspace_id,
            in_flight: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        Rig {
            deployment,
            nats,
            bao,
            bind,
            kube,
            postgres,
            work,
            _dir: dir,
        }
    }

    /// Messages the deployment's JetStream consumers have not finished (tasks and reports
    /// not delivered, or delivered and not acked); `None` while the server cannot tell.
    async fn queued(&self) -> Option<u64> {
        let mut settings = JetStreamSettings::new(self.nats.url());
        settings.namespace = self.deployment.namespace.clone();
        let queue = JetStreamQueue::connect(settings).await.ok()?;
        queue.outstanding().await.ok()
    }

    async fn inject(&mut self, fault: Fault, injected: &mut Injected) {
        match fault {
            Fault::KillManager | Fault::KillAgent => {
                let managers = fault == Fault::KillManager;
                let replicas = if managers {
                    &mut self.deployment.managers
                } else {
                    &mut self.deployment.agents
                };
                let i = rand::random_range(0..replicas.len());
                if replicas[i].is_running() {
                    replicas[i].kill();
                }
                tokio::time::sleep(downtime()).await;
                let what = format!("{} {i}", if managers { "manager" } else { "agent" });
                self.bring_up(managers, i, &what, injected);
            }
            Fault::RestartNats => {
                self.nats.stop();
                tokio::time::sleep(downtime()).await;
                tokio::task::block_in_place(|| self.nats.restart());
            }
            Fault::TerminatePostgresBackends => {
                let database = self
                    .deployment
                    .scratch
                    .url()
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let cut: Result<Vec<(bool,)>, _> = sqlx::query_as(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                )
                .bind(&database)
                .fetch_all(&self.postgres)
                .await;
                match cut {
                    Ok(cut) => {
                        injected.postgres_connections_cut +=
                            cut.iter().filter(|(done,)| *done).count() as u64
                    }
                    Err(e) => eprintln!("terminating PostgreSQL backends failed: {e}"),
                }
            }
            Fault::RestartOpenBao => {
                self.bao.stop();
                tokio::time::sleep(downtime()).await;
                tokio::task::block_in_place(|| self.bao.restart());
            }
            Fault::RestartBind => {
                self.bind.pause();
                tokio::time::sleep(downtime()).await;
                tokio::task::block_in_place(|| self.bind.restart());
            }
        }
        *injected.by_kind.entry(fault).or_default() += 1;
    }

    /// Starts replica `i` again (a few tries: it may meet a server that is itself coming
    /// back) and hands its new address to the workload.
    fn bring_up(&mut self, manager: bool, i: usize, what: &str, injected: &mut Injected) {
        let replica = if manager {
            &mut self.deployment.managers[i]
        } else {
            &mut self.deployment.agents[i]
        };
        for attempt in 0..5 {
            match tokio::task::block_in_place(|| replica.try_restart()) {
                Ok(()) => break,
                Err(e) => {
                    injected.restart_retries += 1;
                    eprintln!("{what} did not come back (try {}): {e}", attempt + 1);
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
        if manager {
            let api = self.deployment.api(i);
            self.work.managers.lock().unwrap_or_else(|p| p.into_inner())[i] = api;
        }
    }

    /// Restarts any replica that is not running although no fault holds it down.
    fn revive(&mut self, injected: &mut Injected) {
        for manager in [true, false] {
            let count = if manager {
                self.deployment.managers.len()
            } else {
                self.deployment.agents.len()
            };
            for i in 0..count {
                let replica = if manager {
                    &mut self.deployment.managers[i]
                } else {
                    &mut self.deployment.agents[i]
                };
                if !replica.is_running() {
                    let what = format!("{} {i}", if manager { "manager" } else { "agent" });
                    eprintln!("{what} had exited by itself; restarting it");
                    injected.died_on_their_own.push(what.clone());
                    self.bring_up(manager, i, &what, injected);
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboarding_and_decommissioning_survive_random_faults() {
    let chaos = Duration::from_secs(
        std::env::var("CFM_CHAOS_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(DEFAULT_CHAOS_SECS),
    );
    let began = Instant::now();
    let mut rig = Rig::start().await;
    let work = rig.work.clone();
    let workers = [
        tokio::spawn(onboard_continuously(work.clone())),
        tokio::spawn(decommission_continuously(work.clone())),
    ];

    // Faults from a shuffled bag of every kind: random order, yet each kind comes up
    // once in every six faults, so even the short run injects them all.
    let mut injected = Injected::default();
    let mut bag: Vec<Fault> = Vec::new();
    let chaos_started = Instant::now();
    while chaos_started.elapsed() < chaos {
        tokio::time::sleep(Duration::from_millis(rand::random_range(1000..3000))).await;
        if chaos_started.elapsed() >= chaos {
            break;
        }
        rig.revive(&mut injected);
        if bag.is_empty() {
            bag = Fault::ALL.to_vec();
            bag.shuffle(&mut rand::rng());
        }
        let Some(fault) = bag.pop() else { continue };
        let at = chaos_started.elapsed();
        rig.inject(fault, &mut injected).await;
        let created = work.ledger().created.len();
        eprintln!(
            "[{:>6.1}s] {} ({created} onboarded so far, {} in flight)",
            at.as_secs_f64(),
            fault.name(),
            work.in_flight.load(Ordering::SeqCst)
        );
    }
    let chaos_took = chaos_started.elapsed();

    // Stop the workload, then make sure everything is up before judging.
    work.stop.store(true, Ordering::SeqCst);
    for worker in workers {
        if let Err(e) = worker.await {
            panic!("a workload task failed: {e}");
        }
    }
    rig.revive(&mut injected);
    if !rig.bao.is_serving() {
        tokio::task::block_in_place(|| rig.bao.restart());
    }

    let mut violations: Vec<String> = Vec::new();
    let settle_started = Instant::now();
    let settled = settle(&rig, &mut violations).await;
    let settle_took = settle_started.elapsed();
    let end = check(&rig, &mut violations).await;

    let ledger = work.ledger();
    violations.extend(
        ledger
            .unexpected
            .iter()
            .map(|u| format!("unexpected answer: {u}")),
    );
    for what in &injected.died_on_their_own {
        violations.push(format!("{what} exited without being killed"));
    }
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut row = |figure: &str, value: String| rows.push((figure.to_string(), value));
    row(
        "faults injected over",
        format!("{:.0} s", chaos_took.as_secs_f64()),
    );
    row("onboardings accepted", ledger.created.len().to_string());
    row(
        "  of which found after a lost answer",
        ledger.found_after_lost_answer.to_string(),
    );
    row(
        "decommissionings accepted",
        ledger.decommissioned.len().to_string(),
    );
    row("participants active at the end", end.active.to_string());
    row("participants disposed at the end", end.disposed.to_string());
    row(
        "  of which failed deploys, compensated",
        end.compensated.to_string(),
    );
    row(
        "API calls failed during faults",
        ledger.failed_calls.to_string(),
    );
    row("activity retries", end.retries.to_string());
    row(
        "effects found in place by a rerun",
        end.found_in_place.to_string(),
    );
    row(
        "late deploy steps undone by a clean-up",
        end.cleanups.to_string(),
    );
    for kind in Fault::ALL {
        let count = injected.by_kind.get(&kind).copied().unwrap_or(0);
        row(&format!("fault: {}", kind.name()), count.to_string());
    }
    row(
        "faults total",
        injected.by_kind.values().sum::<usize>().to_string(),
    );
    row(
        "PostgreSQL connections cut",
        injected.postgres_connections_cut.to_string(),
    );
    row(
        "replica restarts retried",
        injected.restart_retries.to_string(),
    );
    let settled = if settled { "" } else { " (did not)" };
    row(
        "settled after",
        format!("{:.1} s{settled}", settle_took.as_secs_f64()),
    );
    row(
        "wall time",
        format!("{:.0} s", began.elapsed().as_secs_f64()),
    );
    row("invariant violations", violations.len().to_string());
    drop(ledger);
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    println!(
        "\n| {:<width$} | value |\n|{}|-------|",
        "chaos soak",
        "-".repeat(width + 2)
    );
    for (figure, value) in &rows {
        println!("| {figure:<width$} | {value:>5} |");
    }
    for kind in Fault::ALL {
        assert!(
            injected.by_kind.get(&kind).copied().unwrap_or(0) > 0,
            "no '{}' fault was injected: the run was too short",
            kind.name()
        );
    }
    if !violations.is_empty() {
        let kept = keep_logs(&rig);
        for v in violations.iter().take(100) {
            eprintln!("violation: {v}");
        }
        // Stopped before the panic, so the replicas do not print their whole logs:
        // they are kept above.
        drop(rig);
        panic!(
            "{} invariant violations (first: {}); replica logs kept in {}",
            violations.len(),
            violations[0],
            kept
        );
    }
}

/// Waits until no orchestration is running, no profile is between states and no
/// JetStream consumer has work outstanding (or nothing has run for [`QUIET`]). The queue counts: a task whose report was applied but whose
/// ack was lost (a SIGKILLed agent, a NATS restart) is handed out again once its ack-wait
/// ends, possibly after its participant's dispose, and the clean-up that undoes that late
/// run starts only when its report arrives. The queue is read before and after the
/// orchestrations, so no task can slip through between the two reads.
async fn settle(rig: &Rig, violations: &mut Vec<String>) -> bool {
    let work = &rig.work;
    let started = Instant::now();
    let mut last = String::new();
    let mut quiet_since: Option<Instant> = None;
    while started.elapsed() < SETTLE {
        let queued_before = rig.queued().await;
        let running = work
            .call_any(
                Method::POST,
                "/orchestrations/query",
                Some(json!({"predicate": "state = 0 OR state = 1", "limit": 10000})),
            )
            .await;
        let profiles = work.profiles().await;
        let queued_after = rig.queued().await;
        if let (Some((200, Value::Array(running))), Some(profiles)) = (running, profiles) {
            let between: Vec<&Value> = profiles
                .iter()
                .filter(|p| {
                    !matches!(
                        vpa_state(p).as_deref(),
                        Some("active" | "disposed" | "error")
                    )
                })
                .collect();
            if running.is_empty() && between.is_empty() {
                let quiet = *quiet_since.get_or_insert_with(Instant::now);
                // The queue's counts can lag behind after NATS restarts; a quiet spell of
                // several ack-waits lets any lost acknowledgement's redelivery show.
                let empty = queued_before == Some(0) && queued_after == Some(0);
                if empty || quiet.elapsed() >= QUIET {
                    return true;
                }
            } else {
                quiet_since = None;
            }
            last = format!(
                "{} orchestrations not terminal, {} profiles between states, {queued_after:?} messages outstanding",
                running.len(),
                between.len()
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    violations.push(format!("not settled after {SETTLE:?}: {last}"));
    false
}

/// The end state by the API.
#[derive(Default)]
struct EndState {
    active: usize,
    disposed: usize,
    compensated: usize,
    /// Activity attempts beyond the first (a backend down, a report lost).
    retries: i64,
    /// Effects a redelivered or retried activity found already in place.
    found_in_place: usize,
    /// Deploy steps that ran after their participant's dispose began, undone by a
    /// clean-up orchestration (`<profile>/cleanup`).
    cleanups: usize,
}

/// Every invariant, checked against the API and then against each backend itself.
async fn check(rig: &Rig, violations: &mut Vec<String>) -> EndState {
    let work = &rig.work;
    let mut end = EndState::default();
    let Some(profiles) = work.profiles().await else {
        violations.push("no manager answers at the end".into());
        return end;
    };
    let orchestrations = match work
        .call_any(
            Method::POST,
            "/orchestrations/query",
            Some(json!({"predicate": "state >= 0", "limit": 10000})),
        )
        .await
    {
        Some((200, Value::Array(all))) => all,
        other => {
            violations.push(format!("orchestrations could not be read: {other:?}"));
            Vec::new()
        }
    };
    // Unresolved creates: whatever the database holds for them now is what they did.
    let unresolved: Vec<String> = work.ledger().unresolved.iter().cloned().collect();
    for identifier in unresolved {
        if let Some(ids) = work.lookup(&identifier).await
            && let Some(id) = ids.first()
        {
            work.ledger().created.insert(identifier, id.clone());
        }
    }

    let active = check_api(
        &work.ledger(),
        &profiles,
        &orchestrations,
        &mut end,
        violations,
    );
    check_openbao(&rig.bao, &active, violations).await;
    check_runtime_access(&rig.bao, &rig.kube, &active, violations).await;
    check_cluster(&rig.kube, &active, violations);
    check_bind(&rig.bind, &active, violations);
    check_audit(
        &[
            rig.deployment.agent_dir("agent-a"),
            rig.deployment.agent_dir("agent-b"),
        ],
        &profiles,
        &mut end,
        violations,
    );
    end
}

/// The API's view: one participant per identifier, each with one deploy, every
/// orchestration terminal, each participant active or disposed as the workload asked.
/// Returns the active profiles by id.
fn check_api<'a>(
    ledger: &Ledger,
    profiles: &'a [Value],
    orchestrations: &[Value],
    end: &mut EndState,
    violations: &mut Vec<String>,
) -> BTreeMap<String, &'a Value> {
    let mut by_identifier: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut active = BTreeMap::new();
    let mut known: BTreeSet<&str> = BTreeSet::new();
    for profile in profiles {
        let id = profile["id"].as_str().unwrap_or_default();
        let identifier = profile["identifier"].as_str().unwrap_or_default();
        known.insert(id);
        by_identifier.entry(identifier).or_default().push(id);
        if !ledger.attempted.contains(identifier) {
            violations.push(format!(
                "profile {id} has an identifier no one asked for: {identifier}"
            ));
        }
        let of = |kind: &str| -> Vec<&Value> {
            orchestrations
                .iter()
                .filter(|o| {
                    o["correlationId"] == id
                        && o["orchestrationType"] == format!("cfm.orchestration.vpa.{kind}")
                })
                .collect()
        };
        let (deploys, disposes) = (of("deploy"), of("dispose"));
        if deploys.len() != 1 {
            violations.push(format!(
                "profile {id} has {} deploy orchestrations",
                deploys.len()
            ));
        }
        let deployed = deploys.first().is_some_and(|o| o["state"] == 2);
        let deploy_failed = deploys.first().is_some_and(|o| o["state"] == 3);
        match vpa_state(profile).as_deref() {
            Some("active") => {
                end.active += 1;
                active.insert(id.to_string(), profile);
                if !deployed || !disposes.is_empty() {
                    violations.push(format!(
                        "active profile {id}: deploy completed {deployed}, {} dispose orchestrations",
                        disposes.len()
                    ));
                }
                if ledger.decommissioned.contains(id) {
                    violations.push(format!(
                        "profile {id} is active although its DELETE was accepted"
                    ));
                }
            }
            Some("disposed") => {
                end.disposed += 1;
                if disposes.len() != 1 || disposes[0]["state"] != 2 {
                    violations.push(format!(
                        "disposed profile {id}: dispose orchestrations {:?}",
                        disposes
                            .iter()
                            .map(|o| o["state"].clone())
                            .collect::<Vec<_>>()
                    ));
                }
                let asked = ledger.decommissioned.contains(id)
                    || ledger.decommission_unresolved.contains(id);
                if deploy_failed && profile["error"] == true {
                    // Terminal and consistent (its effects are checked like any
                    // disposed participant's), but worth seeing.
                    end.compensated += 1;
                    eprintln!(
                        "deploy of {id} failed and was compensated: {}",
                        profile["errorDetail"]
                    );
                } else if !(asked && deployed) {
                    violations.push(format!(
                        "profile {id} is disposed without a decommissioning or a failed deploy: {profile}"
                    ));
                }
            }
            other => violations.push(format!("profile {id} ended {other:?}: {profile}")),
        }
    }
    for (identifier, ids) in &by_identifier {
        if ids.len() > 1 {
            violations.push(format!(
                "identifier {identifier} has {} participants: {ids:?}",
                ids.len()
            ));
        }
    }
    for (identifier, id) in &ledger.created {
        if !known.contains(id.as_str()) {
            violations.push(format!(
                "{identifier}: profile {id} was accepted but does not exist"
            ));
        }
    }
    for orchestration in orchestrations {
        for step in orchestration["steps"].as_array().into_iter().flatten() {
            end.retries += step["attempts"].as_i64().unwrap_or(1).max(1) - 1;
        }
        let state = orchestration["state"].as_i64().unwrap_or(-1);
        if state != 2 && state != 3 {
            violations.push(format!(
                "orchestration {} is not terminal (state {state})",
                orchestration["id"]
            ));
        }
        let correlation = orchestration["correlationId"].as_str().unwrap_or_default();
        // A deploy step that ran after its dispose began is undone by an orchestration of
        // its own, correlated with `<profile>/cleanup`.
        let correlation = match correlation.strip_suffix(CLEANUP_SUFFIX) {
            Some(profile) => {
                end.cleanups += 1;
                profile
            }
            None => correlation,
        };
        if !known.contains(correlation) {
            violations.push(format!(
                "orchestration {} belongs to no profile ({correlation})",
                orchestration["id"]
            ));
        }
    }
    active
}

/// The name of participant `pc`'s ACL policy and AppRole role.
fn access_name(pc: &str) -> String {
    format!("cfm-participants-{pc}")
}

/// OpenBao: each active participant's folder holds exactly its secrets, and it has its
/// ACL policy and AppRole role; no other participant has a folder, policy or role.
async fn check_openbao(
    bao: &DurableOpenBao,
    active: &BTreeMap<String, &Value>,
    violations: &mut Vec<String>,
) {
    let expected: BTreeSet<String> = ["api-key", "runtime-access", "slow-marker"]
        .map(String::from)
        .into();
    let folder = |pc: &str| format!("secret/metadata/cfm/participants/{pc}/");
    match bao.list("secret/metadata/cfm/participants/").await {
        Ok(folders) => {
            for pc in folders.iter().map(|f| f.trim_end_matches('/')) {
                if !active.contains_key(pc) {
                    let keys = bao.list(&folder(pc)).await;
                    violations.push(format!(
                        "OpenBao holds secrets of {pc}, which is not active: {keys:?}"
                    ));
                }
            }
        }
        Err(e) => violations.push(format!("OpenBao: {e}")),
    }
    for pc in active.keys() {
        match bao.list(&folder(pc)).await {
            Ok(keys) => {
                let keys: BTreeSet<String> = keys.into_iter().collect();
                if keys != expected {
                    violations.push(format!("OpenBao: active {pc} has secrets {keys:?}"));
                }
            }
            Err(e) => violations.push(format!("OpenBao: {e}")),
        }
    }
    for (what, path) in [
        ("ACL policy", "sys/policies/acl"),
        ("AppRole role", "auth/approle/role"),
    ] {
        match bao.list(path).await {
            Ok(names) => {
                let names: BTreeSet<String> = names.into_iter().collect();
                for name in &names {
                    if let Some(pc) = name.strip_prefix(&access_name(""))
                        && !active.contains_key(pc)
                    {
                        violations.push(format!("OpenBao: {what} of {pc}, which is not active"));
                    }
                }
                for pc in active.keys().filter(|pc| !names.contains(&access_name(pc))) {
                    violations.push(format!("OpenBao: active {pc} has no {what}"));
                }
            }
            Err(e) => violations.push(format!("OpenBao: {e}")),
        }
    }
}

/// Each active participant's runtime credential works: the role id the API reports is
/// its role's, the Secret handed to its runtime carries it, and its secret id logs in.
async fn check_runtime_access(
    bao: &DurableOpenBao,
    kube: &KubeApi,
    active: &BTreeMap<String, &Value>,
    violations: &mut Vec<String>,
) {
    for (pc, profile) in active {
        let reported = profile["properties"]["cfm.vpa.state"]["vaultRoleId"]
            .as_str()
            .unwrap_or_default();
        let actual = match bao
            .get(&format!("auth/approle/role/{}/role-id", access_name(pc)))
            .await
        {
            Ok((200, body)) => body["data"]["role_id"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            other => format!("{other:?}"),
        };
        let (handed_role, handed_secret) = handed_over(kube, pc);
        if reported.is_empty() || reported != actual || handed_role != actual {
            violations.push(format!(
                "{pc}: role id reported {reported:?}, in OpenBao {actual:?}, handed over {handed_role:?}"
            ));
            continue;
        }
        if let Err(status) = bao.login(&handed_role, &handed_secret).await {
            violations.push(format!(
                "{pc}: the handed-over credential does not log in ({status})"
            ));
        }
    }
}

/// The cluster: each active participant's namespace holds exactly its objects, its
/// ConfigMap naming its DID; nothing else exists.
fn check_cluster(kube: &KubeApi, active: &BTreeMap<String, &Value>, violations: &mut Vec<String>) {
    let mut objects: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for name in kube.names() {
        // `apiVersion/plural/namespace/name`; a Namespace has an empty namespace.
        let parts: Vec<&str> = name.rsplitn(3, '/').collect();
        let namespace = match parts.as_slice() {
            [object, "", _] => *object,
            [_, namespace, _] => *namespace,
            _ => name.as_str(),
        };
        let owner = namespace.strip_prefix("cfm-").unwrap_or(namespace);
        objects
            .entry(owner.to_string())
            .or_default()
            .insert(name.clone());
    }
    for (owner, names) in &objects {
        let Some(profile) = active.get(owner) else {
            violations.push(format!(
                "the cluster holds {names:?}, of {owner}, which is not active"
            ));
            continue;
        };
        let ns = format!("cfm-{owner}");
        let expected: BTreeSet<String> = [
            format!("v1/namespaces//{ns}"),
            format!("v1/configmaps/{ns}/participant-context"),
            format!("v1/secrets/{ns}/vault-access"),
            format!("networking.k8s.io/v1/ingresses/{ns}/protocol-endpoint"),
            format!("networking.k8s.io/v1/networkpolicies/{ns}/participant-isolation"),
        ]
        .into();
        if *names != expected {
            violations.push(format!("the cluster holds {names:?} for active {owner}"));
        }
        let context = kube.object("v1", "configmaps", &ns, "participant-context");
        let did = context.as_ref().map(|c| c["data"]["did"].clone());
        if did.as_ref() != Some(&profile["identifier"]) {
            violations.push(format!("{owner}'s participant-context names {did:?}"));
        }
    }
    for pc in active.keys().filter(|pc| !objects.contains_key(*pc)) {
        violations.push(format!("the cluster holds nothing of active {pc}"));
    }
}

/// BIND9, read by a zone transfer: one CNAME per active participant, to its cell; no
/// other name.
fn check_bind(bind: &Bind, active: &BTreeMap<String, &Value>, violations: &mut Vec<String>) {
    let records = match bind.records("CNAME") {
        Ok(records) => records,
        Err(e) => {
            violations.push(format!("BIND9: {e}"));
            return;
        }
    };
    let mut names: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, data) in records {
        names.entry(name).or_default().push(data);
    }
    for (name, data) in &names {
        if !active.contains_key(name) {
            violations.push(format!(
                "BIND9 holds {name} CNAME {data:?}, which is not active"
            ));
        } else if data.as_slice() != [CNAME_TARGET] {
            violations.push(format!("BIND9: active {name} CNAME {data:?}"));
        }
    }
    for pc in active.keys().filter(|pc| !names.contains_key(*pc)) {
        violations.push(format!("BIND9 has no name for active {pc}"));
    }
}

/// The agents' audit records: no effect of any participant was created again while it
/// stood (a rerun finds what the first run made; only a deploy step that ran after the
/// dispose removed its work creates it again, and a clean-up removes it), and each was
/// recorded at all.
fn check_audit(
    dirs: &[std::path::PathBuf],
    profiles: &[Value],
    end: &mut EndState,
    violations: &mut Vec<String>,
) {
    let effects = cfm_test_support::audit_effects(dirs);
    let audit: Vec<Value> = dirs
        .iter()
        .flat_map(|d| cfm_test_support::read_audit(d))
        .collect();
    // Which run did what to `target`, in order: the evidence of a violation.
    let history = |target: &str| -> Vec<String> {
        let mut records: Vec<String> = audit
            .iter()
            .filter(|r| r["target"] == target)
            .map(|r| {
                format!(
                    "{} {} by {}/{}: {}",
                    r["time"].as_str().unwrap_or_default(),
                    r["operation"].as_str().unwrap_or_default(),
                    r["orchestrationId"].as_str().unwrap_or_default(),
                    r["activityId"].as_str().unwrap_or_default(),
                    r["effect"].as_str().unwrap_or_default()
                )
            })
            .collect();
        records.sort();
        records
    };
    end.found_in_place = effects
        .values()
        .map(|e| e.get("unchanged").copied().unwrap_or(0))
        .sum();
    for profile in profiles {
        let id = profile["id"].as_str().unwrap_or_default();
        for target in cfm_test_support::onboarding_targets(id) {
            // Every onboarding wrote each of these, so no record means the audit names
            // it otherwise and this check would see nothing.
            let Some(seen) = effects.get(&target).filter(|e| !e.is_empty()) else {
                violations.push(format!("no audit record of {target}"));
                continue;
            };
            if seen.get("created").copied().unwrap_or(0) > 1 {
                let mut writes: Vec<&Value> = audit
                    .iter()
                    .filter(|r| r["target"] == target.as_str())
                    .collect();
                writes.sort_by_key(|r| r["time"].as_str().unwrap_or_default().to_string());
                let mut standing = false;
                for write in writes {
                    match write["effect"].as_str() {
                        Some("created") if standing => {
                            violations.push(format!(
                                "{target} was created while it stood: {:?}",
                                history(&target)
                            ));
                            break;
                        }
                        Some("created" | "updated" | "unchanged") => standing = true,
                        Some("deleted" | "absent") => standing = false,
                        _ => {}
                    }
                }
            }
        }
    }
}

/// The role id and secret id in participant `pc`'s `vault-access` Secret (empty when it
/// or a field is missing).
fn handed_over(kube: &KubeApi, pc: &str) -> (String, String) {
    use base64::Engine;
    let secret = kube.object("v1", "secrets", &format!("cfm-{pc}"), "vault-access");
    let field = |name: &str| -> String {
        secret
            .as_ref()
            .and_then(|s| s["data"][name].as_str())
            .and_then(|encoded| {
                base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .ok()
            })
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .unwrap_or_default()
    };
    (field("roleId"), field("secretId"))
}

/// Copies the replicas' logs and audit records somewhere that outlives the test, as
/// evidence of what went wrong; returns where.
fn keep_logs(rig: &Rig) -> String {
    let kept = std::env::temp_dir().join(format!("cfm-chaos-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&kept);
    let dir = rig.deployment.dir();
    let logs = std::fs::read_dir(dir).into_iter().flatten().flatten();
    for entry in logs {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log") {
            let _ = std::fs::copy(&path, kept.join(entry.file_name()));
        }
    }
    for agent in ["agent-a", "agent-b"] {
        let _ = std::fs::copy(
            rig.deployment.agent_dir(agent).join("audit.jsonl"),
            kept.join(format!("{agent}-audit.jsonl")),
        );
    }
    kept.display().to_string()
}
