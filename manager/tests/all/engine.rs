//! The orchestration engine end to end on real databases (SQLite and PostgreSQL), with a scripted
//! executor standing in for the agent host: dependency order, retry, reschedule and
//! failure, as the participant profile sees them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cfm_manager::capability_calls::{self, Filter};
use cfm_manager::model::{ActivityDefinition, ActivitySpec, ParticipantProfile};
use cfm_manager::provision::definitions;
use cfm_manager::provision::engine::GroupCommit;
use cfm_manager::store::Page;
use cfm_manager::tenant::{cells, profiles, tenants};
use cfm_manager::testing::{ScratchDatabase, TestBackend};
use cfm_manager::{EngineSettings, Manager, ManagerError, Options, on_both_backends};
use cfm_protocol::orchestration_types::{VPA_DEPLOY as DEPLOY, VPA_DISPOSE as DISPOSE};
use cfm_protocol::{
    ActivityExecutor, ActivityOutcome, ActivityReport, ActivityTask, CapabilityCall, Decision,
    Effect,
};
use cfm_queue::worker::WorkerSettings;
use serde_json::{Map, Value, json};

on_both_backends!(
    activities_run_after_their_dependencies_and_see_their_outputs,
    retry_and_reschedule_run_the_activity_again_with_its_state,
    a_failing_activity_errors_the_orchestration_and_the_profile,
    dispose_waits_for_the_deploy_and_needs_no_template_to_finish,
    a_failed_deploy_is_compensated_by_the_dispose_template,
    a_failed_dispose_is_recorded_and_can_be_retried,
    an_output_naming_a_server_owned_key_fails_and_redirects_nothing,
    a_deploy_step_that_runs_after_the_dispose_is_undone,
    an_output_holding_nul_fails_its_activity,
    reports_applied_together_fail_alone_and_drop_their_twins,
    reports_of_parallel_steps_at_one_moment_each_see_the_other,
    capability_calls_are_kept_once_per_run_stale_runs_included,
    a_failed_step_leaves_no_sibling_under_way,
    a_late_deploy_step_is_undone_when_the_dispose_errored_before_reaching_it,
);

type Script = dyn Fn(&ActivityTask) -> ActivityOutcome + Send + Sync;

/// Answers each task with the script and remembers every task it saw.
struct Scripted {
    script: Box<Script>,
    seen: Mutex<Vec<ActivityTask>>,
}

#[async_trait::async_trait]
impl ActivityExecutor for Scripted {
    async fn execute(&self, task: ActivityTask) -> ActivityOutcome {
        self.seen.lock().unwrap().push(task.clone());
        (self.script)(&task)
    }

    fn activity_types(&self) -> Vec<String> {
        ["a", "b", "c"].map(String::from).to_vec()
    }
}

fn vpas_are(profile: &ParticipantProfile, state: &str) -> bool {
    profile.vpas.iter().all(|v| v.state.as_str() == state)
}

fn complete(output: Value) -> ActivityOutcome {
    ActivityOutcome::Complete {
        output: output.as_object().cloned().unwrap_or_default(),
    }
}

struct Fixture {
    manager: Manager,
    executor: Arc<Scripted>,
    tenant: String,
    _dir: tempfile::TempDir,
    // Declared last: dropped after the manager's connections.
    _scratch: Option<ScratchDatabase>,
}

/// A database with activity types a, b, c; deploy = a → b, and c on its own; and an
/// embedded worker running every task on `script`.
async fn fixture(
    backend: TestBackend,
    script: impl Fn(&ActivityTask) -> ActivityOutcome + Send + Sync + 'static,
) -> Fixture {
    let mut fx = unworked(backend, script).await;
    let settings = WorkerSettings {
        concurrency: 4,
        ..WorkerSettings::default()
    };
    tokio::spawn(
        fx.manager
            .embedded_worker(fx.executor.clone(), settings)
            .await
            .run(),
    );
    fx
}

/// [`fixture`] without a worker: tasks stay in the outbox for the test to report on.
async fn unworked(
    backend: TestBackend,
    script: impl Fn(&ActivityTask) -> ActivityOutcome + Send + Sync + 'static,
) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let settings = EngineSettings {
        retry_base_ms: 10,
        retry_max_ms: 50,
        max_retries: 2,
        ..EngineSettings::default()
    };
    let scratch = backend.scratch().await;
    let options = Options {
        database_url: scratch.as_ref().map(|s| s.url().to_string()),
        engine: settings,
        ..Options::default()
    };
    let manager = Manager::open(dir.path(), options).await.unwrap();
    let db = manager.engine.db().clone();
    let mut conn = db.writer().acquire().await.unwrap();
    for t in ["a", "b", "c"] {
        let definition = ActivityDefinition {
            activity_type: t.into(),
            description: String::new(),
            input_schema: json!({}),
            output_schema: json!({}),
        };
        definitions::put_activity(&mut conn, &definition)
            .await
            .unwrap();
    }
    let spec = |id: &str, deps: &[&str]| ActivitySpec {
        id: id.into(),
        activity_type: id.into(),
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
    };
    let activities = BTreeMap::from([(
        DEPLOY.to_string(),
        vec![spec("a", &[]), spec("b", &["a"]), spec("c", &[])],
    )]);
    definitions::create_orchestration(&mut conn, None, String::new(), json!({}), activities)
        .await
        .unwrap();
    drop(conn);
    cells::create(
        &db,
        cells::NewCell {
            external_id: "cell".into(),
            state: None,
            state_timestamp: None,
            properties: Map::new(),
            labels: Default::default(),
            capacity: None,
        },
    )
    .await
    .unwrap();
    let tenant = tenants::create(&db, Map::new()).await.unwrap().id;
    let executor = Arc::new(Scripted {
        script: Box::new(script),
        seen: Mutex::new(vec![]),
    });
    Fixture {
        manager,
        executor,
        tenant,
        _dir: dir,
        _scratch: scratch,
    }
}

impl Fixture {
    /// Adds a template with these deploy and dispose activities (id = activity type).
    async fn template(&self, deploy: &[(&str, &[&str])], dispose: &[(&str, &[&str])]) {
        let specs = |list: &[(&str, &[&str])]| -> Vec<ActivitySpec> {
            list.iter()
                .map(|(id, deps)| ActivitySpec {
                    id: id.to_string(),
                    activity_type: id.to_string(),
                    depends_on: deps.iter().map(|d| d.to_string()).collect(),
                })
                .collect()
        };
        let activities = BTreeMap::from([
            (DEPLOY.to_string(), specs(deploy)),
            (DISPOSE.to_string(), specs(dispose)),
        ]);
        let mut conn = self.manager.engine.db().writer().acquire().await.unwrap();
        definitions::create_orchestration(&mut conn, None, String::new(), json!({}), activities)
            .await
            .unwrap();
    }

    /// Waits until every VPA of the profile is in `state`.
    async fn vpas_reach(&self, id: &str, state: &str) -> ParticipantProfile {
        let started = Instant::now();
        loop {
            let profile = profiles::get(self.manager.engine.db(), &self.tenant, id)
                .await
                .unwrap();
            if vpas_are(&profile, state) {
                return profile;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "not {state}: {profile:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn deploy(&self) -> String {
        self.deploy_as("did:web:p.example").await
    }

    async fn deploy_as(&self, identifier: &str) -> String {
        let new = profiles::NewDeployment {
            identifier: identifier.into(),
            ..Default::default()
        };
        profiles::deploy(&self.manager.engine, &self.tenant, new)
            .await
            .unwrap()
            .id
    }

    /// Waits until the profile's VPAs leave `pending`.
    async fn settled(&self, id: &str) -> ParticipantProfile {
        let started = Instant::now();
        loop {
            let profile = profiles::get(self.manager.engine.db(), &self.tenant, id)
                .await
                .unwrap();
            if profile.vpas.iter().all(|v| v.state.as_str() != "pending") {
                return profile;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "still pending: {profile:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn orchestration(&self, profile_id: &str) -> cfm_manager::model::Orchestration {
        let id: String =
            sqlx::query_scalar("SELECT id FROM orchestrations WHERE correlation_id = $1")
                .bind(profile_id)
                .fetch_one(self.manager.engine.db().read())
                .await
                .unwrap();
        self.manager.engine.get(&id).await.unwrap()
    }

    fn seen(&self) -> Vec<ActivityTask> {
        self.executor.seen.lock().unwrap().clone()
    }

    /// Reports the first deploy run of `activity_id` again, as a run handed out again
    /// would.
    async fn report_deploy_again(&self, activity_id: &str) {
        let run = self
            .seen()
            .into_iter()
            .find(|t| t.activity_id == activity_id && t.discriminator == DEPLOY)
            .unwrap();
        self.report_again(&run).await;
    }

    /// Reports `run` again, complete, under the message id of its attempt.
    async fn report_again(&self, run: &ActivityTask) {
        let message = format!(
            "{}/{}/{}",
            run.orchestration_id, run.activity_id, run.attempt
        );
        self.manager
            .engine
            .apply(&message, run, complete(json!({})))
            .await
            .unwrap();
    }

    /// The dispose runs of `activity_id` so far.
    fn disposes_of(&self, activity_id: &str) -> Vec<ActivityTask> {
        self.seen()
            .into_iter()
            .filter(|t| t.activity_id == activity_id && t.discriminator == DISPOSE)
            .collect()
    }

    /// Waits (up to 20 s) for the `n`th dispose run of `activity_id` and returns it.
    async fn nth_dispose_of(&self, activity_id: &str, n: usize) -> ActivityTask {
        let started = Instant::now();
        loop {
            if let Some(run) = self.disposes_of(activity_id).into_iter().nth(n - 1) {
                return run;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{activity_id} was not disposed of {n} time(s)"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn correlation_of(&self, orchestration_id: &str) -> String {
        sqlx::query_scalar("SELECT correlation_id FROM orchestrations WHERE id = $1")
            .bind(orchestration_id)
            .fetch_one(self.manager.engine.db().read())
            .await
            .unwrap()
    }

    /// The tasks waiting in the outbox for activity `activity_id`, by participant.
    async fn outbox(&self, activity_id: &str) -> BTreeMap<String, (String, ActivityTask)> {
        let rows: Vec<(String, String)> = sqlx::query_as("SELECT id, payload FROM queue")
            .fetch_all(self.manager.engine.db().read())
            .await
            .unwrap();
        rows.into_iter()
            .map(|(id, payload)| (id, serde_json::from_str::<ActivityTask>(&payload).unwrap()))
            .filter(|(_, task)| task.activity_id == activity_id)
            .map(|(id, task)| (task.participant_context_id.clone(), (id, task)))
            .collect()
    }

    async fn queued(&self) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM queue")
            .fetch_one(self.manager.engine.db().read())
            .await
            .unwrap()
    }
}

async fn activities_run_after_their_dependencies_and_see_their_outputs(backend: TestBackend) {
    let fx = fixture(backend, |task| {
        complete(json!({ format!("{}.out", task.activity_id): task.attempt }))
    })
    .await;
    let id = fx.deploy().await;
    let profile = fx.settled(&id).await;
    assert!(vpas_are(&profile, "active"), "{profile:?}");
    assert_eq!(
        profile.properties["cfm.vpa.state"],
        json!({"a.out": 1, "b.out": 1, "c.out": 1})
    );

    let seen = fx.seen();
    let position = |id: &str| seen.iter().position(|t| t.activity_id == id).unwrap();
    assert!(position("a") < position("b"));
    let b = &seen[position("b")];
    assert_eq!(b.processing_data["a.out"], 1, "b did not see a's output");
    assert_eq!(b.participant_context_id, id);
    assert_eq!(b.processing_data["cfm.participant.id"], "did:web:p.example");
    assert_eq!(
        b.processing_data["cfm.vpa.data"].as_array().unwrap().len(),
        4
    );

    let orchestration = fx.orchestration(&id).await;
    assert_eq!(orchestration.state, 2);
    assert!(
        orchestration
            .steps
            .iter()
            .all(|s| s.state.as_str() == "completed")
    );
    assert_eq!(orchestration.completed.len(), 3);
    assert_eq!(fx.queued().await, 0);
}

async fn retry_and_reschedule_run_the_activity_again_with_its_state(backend: TestBackend) {
    let fx = fixture(backend, |task| {
        match (task.activity_id.as_str(), task.attempt) {
            ("a", 1) => ActivityOutcome::Retry {
                reason: "flaky".into(),
            },
            ("b", 1) => ActivityOutcome::Reschedule {
                delay_ms: 20,
                state: json!({"poll": 1}),
            },
            ("b", 2) => {
                assert_eq!(task.state, Some(json!({"poll": 1})));
                complete(json!({"polled": true}))
            }
            _ => complete(json!({})),
        }
    })
    .await;
    let id = fx.deploy().await;
    let profile = fx.settled(&id).await;
    assert!(vpas_are(&profile, "active"), "{profile:?}");
    let orchestration = fx.orchestration(&id).await;
    let attempts: Vec<i64> = orchestration.steps.iter().map(|s| s.attempts).collect();
    assert_eq!(attempts, [2, 2, 1]);
    assert_eq!(orchestration.output_data["polled"], true);
}

async fn a_failing_activity_errors_the_orchestration_and_the_profile(backend: TestBackend) {
    let fx = fixture(backend, |task| match task.activity_id.as_str() {
        "a" => ActivityOutcome::Retry {
            reason: "backend down".into(),
        },
        _ => complete(json!({})),
    })
    .await;
    let id = fx.deploy().await;
    let profile = fx.settled(&id).await;
    assert!(profile.error);
    assert!(vpas_are(&profile, "error"), "{profile:?}");
    let detail = profile.error_detail.unwrap();
    assert!(
        detail.contains("gave up after 2 retries: backend down"),
        "{detail}"
    );

    let orchestration = fx.orchestration(&id).await;
    assert_eq!(orchestration.state, 3);
    let a = &orchestration.steps[0];
    assert_eq!((a.state.as_str(), a.attempts), ("failed", 3));
    assert_eq!(
        orchestration.steps[1].state.as_str(),
        "cancelled",
        "b ran although a failed"
    );
    assert_eq!(fx.queued().await, 0);
    assert!(!fx.seen().iter().any(|t| t.activity_id == "b"));
}

/// A step dispatched when another fails ends `cancelled`, not under way for ever, and its
/// report, arriving later, changes nothing.
async fn a_failed_step_leaves_no_sibling_under_way(backend: TestBackend) {
    let fx = unworked(backend, |_| complete(json!({}))).await;
    let id = fx.deploy().await;
    let (a_message, a) = fx.outbox("a").await.remove(&id).unwrap();
    let (c_message, c) = fx.outbox("c").await.remove(&id).unwrap();
    let engine = &fx.manager.engine;
    let fatal = ActivityOutcome::Fatal {
        reason: "refused".into(),
    };
    engine.apply(&a_message, &a, fatal).await.unwrap();
    let states = |o: &cfm_manager::model::Orchestration| -> Vec<(String, String)> {
        o.steps
            .iter()
            .map(|s| (s.id.clone(), s.state.as_str().to_string()))
            .collect()
    };
    let expected: Vec<(String, String)> = [("a", "failed"), ("b", "cancelled"), ("c", "cancelled")]
        .map(|(s, t)| (s.to_string(), t.to_string()))
        .to_vec();
    let orchestration = fx.orchestration(&id).await;
    assert_eq!(orchestration.state, 3);
    assert_eq!(states(&orchestration), expected);
    assert_eq!(fx.queued().await, 0);
    engine
        .apply(&c_message, &c, complete(json!({"late": true})))
        .await
        .unwrap();
    let after = fx.orchestration(&id).await;
    assert_eq!(states(&after), expected);
    assert!(!after.output_data.contains_key("late"));
}

async fn dispose_waits_for_the_deploy_and_needs_no_template_to_finish(backend: TestBackend) {
    let fx = fixture(backend, |task| match task.activity_id.as_str() {
        // Keeps the first deploy pending for as long as the test looks.
        "a" if task.participant_id == "did:web:slow.example" => ActivityOutcome::Reschedule {
            delay_ms: 60_000,
            state: json!({}),
        },
        _ => complete(json!({})),
    })
    .await;
    let engine = &fx.manager.engine;
    let slow = profiles::NewDeployment {
        identifier: "did:web:slow.example".into(),
        ..Default::default()
    };
    let pending = profiles::deploy(engine, &fx.tenant, slow).await.unwrap();
    let err = profiles::dispose(engine, &fx.tenant, &pending.id)
        .await
        .unwrap_err();
    assert!(matches!(err, ManagerError::Conflict(_)), "{err}");

    // This fixture's template has no dispose activities: nothing to undo.
    let id = fx.deploy().await;
    fx.settled(&id).await;
    let disposed = profiles::dispose(engine, &fx.tenant, &id).await.unwrap();
    assert!(vpas_are(&disposed, "disposed"), "{disposed:?}");
    let orchestrations: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM orchestrations WHERE correlation_id = $1")
            .bind(&id)
            .fetch_one(engine.db().read())
            .await
            .unwrap();
    assert_eq!(
        orchestrations, 1,
        "a dispose orchestration ran without a template"
    );
    let again = profiles::dispose(engine, &fx.tenant, &id).await.unwrap();
    assert_eq!(
        again.version, disposed.version,
        "a repeated dispose changed the profile"
    );
}

async fn a_failed_deploy_is_compensated_by_the_dispose_template(backend: TestBackend) {
    let fx = fixture(backend, |task| {
        match (task.discriminator.as_str(), task.activity_id.as_str()) {
            ("cfm.orchestration.vpa.deploy", "b") => ActivityOutcome::Fatal {
                reason: "quota exceeded".into(),
            },
            _ => complete(json!({ format!("{}.done", task.activity_id): true })),
        }
    })
    .await;
    fx.template(&[("a", &[]), ("b", &["a"])], &[("c", &[])])
        .await;

    let id = fx.deploy().await;
    let profile = fx.vpas_reach(&id, "disposed").await;
    assert!(
        profile.error,
        "the failure that caused the dispose was lost"
    );
    assert!(profile.error_detail.unwrap().contains("quota exceeded"));
    let dispose = fx
        .seen()
        .into_iter()
        .find(|t| t.discriminator == DISPOSE)
        .expect("the dispose orchestration never ran");
    assert_eq!(
        dispose.processing_data["a.done"], true,
        "compensation did not see what the deploy had done"
    );
}

async fn a_failed_dispose_is_recorded_and_can_be_retried(backend: TestBackend) {
    // Cleared to arm a failure: the next activity to run then fails, once.
    let failed_once = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = failed_once.clone();
    let fx = fixture(backend, move |task| {
        let first = !flag.swap(true, std::sync::atomic::Ordering::SeqCst);
        match task.activity_id.as_str() {
            "c" if first => ActivityOutcome::Fatal {
                reason: "secrets backend unreachable".into(),
            },
            _ => complete(json!({})),
        }
    })
    .await;
    fx.template(&[("a", &[])], &[("c", &[])]).await;
    let id = fx.deploy().await;
    fx.vpas_reach(&id, "active").await;
    failed_once.store(false, std::sync::atomic::Ordering::SeqCst);

    let engine = &fx.manager.engine;
    profiles::dispose(engine, &fx.tenant, &id).await.unwrap();
    let failed = fx.vpas_reach(&id, "error").await;
    assert!(failed.error, "{failed:?}");
    assert!(
        failed
            .error_detail
            .as_deref()
            .unwrap_or_default()
            .contains("secrets backend unreachable"),
        "{failed:?}"
    );

    // Asking again runs the dispose again, which now succeeds.
    let retried = profiles::dispose(engine, &fx.tenant, &id).await.unwrap();
    assert!(vpas_are(&retried, "disposing"), "{retried:?}");
    fx.vpas_reach(&id, "disposed").await;
    let disposes: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM orchestrations WHERE correlation_id = $1 AND orchestration_type = 'cfm.orchestration.vpa.dispose'",
    )
    .bind(&id)
    .fetch_one(engine.db().read())
    .await
    .unwrap();
    assert_eq!(disposes, 2);
}

/// A plugin that outputs `cfm.participant.contextId: <victim>` once made the next activity
/// (the vault step) work on the victim's secrets, and the attacker's own dispose delete
/// them. Now the output is refused, the orchestration fails naming the key, and every
/// task, the compensation's included, is addressed to the profile's own context.
async fn an_output_naming_a_server_owned_key_fails_and_redirects_nothing(backend: TestBackend) {
    let fx = fixture(backend, |task| match task.activity_id.as_str() {
        "a" => complete(json!({
            "cfm.participant.contextId": "victim",
            "cfm.participant.id": "did:web:victim.example",
        })),
        _ => complete(json!({})),
    })
    .await;
    fx.template(&[("a", &[]), ("b", &["a"])], &[("c", &[])])
        .await;
    let id = fx.deploy().await;
    let profile = fx.vpas_reach(&id, "disposed").await;
    let deploy = fx.orchestration(&id).await;
    assert_eq!(deploy.state, 3, "{deploy:?}");
    let detail = deploy.error_detail.clone().unwrap_or_default();
    assert!(
        detail.contains("cfm.participant.") && detail.contains("server owns"),
        "{detail}"
    );
    assert!(profile.error, "{profile:?}");

    let seen = fx.seen();
    assert!(
        seen.iter().all(|t| t.activity_id != "b"),
        "b ran after a's refused output"
    );
    let compensation = seen
        .iter()
        .find(|t| t.activity_id == "c")
        .expect("the dispose ran");
    for task in &seen {
        assert_eq!(task.participant_context_id, id, "{task:?}");
        assert_eq!(task.participant_id, "did:web:p.example");
        assert_eq!(task.processing_data["cfm.participant.contextId"], json!(id));
    }
    assert!(
        !compensation.processing_data.values().any(|v| v == "victim"),
        "{compensation:?}"
    );
}

/// A queue server that lost an acknowledgement hands a deploy task out again, even after
/// the participant was disposed (the chaos soak saw a namespace made again nine minutes
/// after its dispose). The late run's outcome is stale, and its step's dispose runs again.
async fn a_deploy_step_that_runs_after_the_dispose_is_undone(backend: TestBackend) {
    let fx = fixture(backend, |_| complete(json!({}))).await;
    fx.template(&[("a", &[]), ("b", &["a"])], &[("b", &[]), ("a", &["b"])])
        .await;
    let id = fx.deploy().await;
    fx.vpas_reach(&id, "active").await;
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM orchestrations")
            .fetch_one(fx.manager.engine.db().read())
            .await
            .unwrap()
    };
    // A late report while the participant is live needs nothing undone.
    let before = count().await;
    fx.report_deploy_again("a").await;
    assert_eq!(count().await, before);
    profiles::dispose(&fx.manager.engine, &fx.tenant, &id)
        .await
        .unwrap();
    fx.vpas_reach(&id, "disposed").await;
    assert_eq!(fx.disposes_of("b").len(), 1);

    // The deploy's b runs again, late, and reports.
    fx.report_deploy_again("b").await;

    let undo = fx.nth_dispose_of("b", 2).await;
    let seen = fx.seen();
    assert_eq!(undo.participant_context_id, id);
    assert!(
        seen.iter().filter(|t| t.activity_id == "a").count() == 2,
        "only the late step is undone: {seen:?}"
    );
    assert_eq!(
        fx.correlation_of(&undo.orchestration_id).await,
        format!("{id}/cleanup")
    );
    // The profile's own record is untouched by the clean-up.
    let profile = fx.vpas_reach(&id, "disposed").await;
    assert!(!profile.error, "{profile:?}");

    // A late dispose step needs nothing undone.
    let before = count().await;
    fx.report_again(&undo).await;
    assert_eq!(count().await, before);
}

/// PostgreSQL cannot keep U+0000 in a JSON document: such an output once failed every
/// attempt to apply it, and its report came back for ever. Now the activity fails.
async fn an_output_holding_nul_fails_its_activity(backend: TestBackend) {
    let fx = fixture(backend, |task| match task.activity_id.as_str() {
        "a" => complete(json!({"note": {"deep": ["x\u{0}y"]}})),
        _ => complete(json!({})),
    })
    .await;
    let id = fx.deploy().await;
    let profile = fx.settled(&id).await;
    let detail = profile.error_detail.clone().unwrap_or_default();
    assert!(detail.contains("U+0000"), "{profile:?}");
    assert_eq!(fx.queued().await, 0);
}

/// Reports that arrive together are applied in one transaction. One that cannot be applied
/// (its orchestration's stored data is corrupt) sends the batch back to be applied report
/// by report: it fails alone, the others apply, and the twin of a report in the same batch
/// is dropped as stale. Through a group commit, reports of parallel steps of one
/// orchestration apply together.
async fn reports_applied_together_fail_alone_and_drop_their_twins(backend: TestBackend) {
    let fx = unworked(backend, |_| complete(json!({}))).await;
    let mut participants = vec![];
    for n in 0..3 {
        participants.push(fx.deploy_as(&format!("did:web:p{n}.example")).await);
    }
    let report = |(message, task): &(String, ActivityTask), key: &str| ActivityReport {
        message_id: message.clone(),
        task: task.clone(),
        outcome: complete(json!({ key: task.participant_context_id })),
        delivery: 1,
        run: None,
        plugin_digest: Some("sha256:test".into()),
        capability_calls: Vec::new(),
    };
    let a = fx.outbox("a").await;
    let [good, other, bad] = [0, 1, 2].map(|n| &a[&participants[n]]);
    sqlx::query("UPDATE orchestrations SET output_data = 'not json' WHERE id = $1")
        .bind(&bad.1.orchestration_id)
        .execute(fx.manager.engine.db().writer())
        .await
        .unwrap();

    let results = fx
        .manager
        .engine
        .apply_reports(vec![
            report(good, "a.out"),
            report(other, "a.out"),
            report(bad, "a.out"),
            report(good, "a.twin"),
        ])
        .await;
    assert!(results[0].is_ok() && results[1].is_ok(), "{results:?}");
    assert!(
        matches!(results[2], Err(ManagerError::Corrupt(_))),
        "{results:?}"
    );
    assert!(results[3].is_ok(), "a stale twin is dropped: {results:?}");
    let b = fx.outbox("b").await;
    let mut applied = vec![&participants[0], &participants[1]];
    applied.sort();
    assert_eq!(
        b.keys().collect::<Vec<_>>(),
        applied,
        "b is due where a applied"
    );
    let dispatched_b: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM queue WHERE id LIKE '%/b/%'")
        .fetch_one(fx.manager.engine.db().read())
        .await
        .unwrap();
    assert_eq!(dispatched_b, 2, "the twin dispatched nothing");
    assert_eq!(
        b[&participants[0]].1.processing_data["a.out"],
        participants[0]
    );
    assert!(!b[&participants[0]].1.processing_data.contains_key("a.twin"));
    let a = fx.outbox("a").await;
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        [&participants[2]],
        "the report that failed is not acknowledged"
    );

    // b and c of one orchestration, and of another, through one writer.
    let group = GroupCommit::spawn(fx.manager.engine.clone(), 1);
    let c = fx.outbox("c").await;
    let reports = [
        &b[&participants[0]],
        &c[&participants[0]],
        &b[&participants[1]],
        &c[&participants[1]],
    ]
    .map(|queued| report(queued, "done"));
    let results = futures_util::future::join_all(reports.map(|r| group.apply(r))).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    for participant in &participants[..2] {
        let profile = profiles::get(fx.manager.engine.db(), &fx.tenant, participant)
            .await
            .unwrap();
        assert!(vpas_are(&profile, "active"), "{profile:?}");
        let orchestration = fx.orchestration(participant).await;
        assert!(
            orchestration
                .steps
                .iter()
                .all(|s| s.state.as_str() == "completed"),
            "{orchestration:?}"
        );
    }
    let left: Vec<String> = sqlx::query_scalar("SELECT id FROM queue")
        .fetch_all(fx.manager.engine.db().read())
        .await
        .unwrap();
    assert_eq!(
        left.len(),
        2,
        "only the corrupt orchestration's a and c: {left:?}"
    );
}

/// The last two steps of an orchestration (b after a, and c) reported at the same moment,
/// each in a transaction of its own: whichever applies second waits for the first's lock
/// and must see its step completed, or neither finishes the orchestration. On PostgreSQL
/// a statement's snapshot is taken before it waits for a lock, so steps read in it
/// without locking them would be the stale ones.
async fn reports_of_parallel_steps_at_one_moment_each_see_the_other(backend: TestBackend) {
    let fx = unworked(backend, |_| complete(json!({}))).await;
    let mut participants = vec![];
    for n in 0..24 {
        participants.push(fx.deploy_as(&format!("did:web:p{n}.example")).await);
    }
    let engine = &fx.manager.engine;
    let a = fx.outbox("a").await;
    for id in &participants {
        let (message, task) = &a[id];
        engine
            .apply(message, task, complete(json!({})))
            .await
            .unwrap();
    }
    let (b, c) = (fx.outbox("b").await, fx.outbox("c").await);
    for id in &participants {
        let ((b_message, b_task), (c_message, c_task)) = (&b[id], &c[id]);
        let (b_applied, c_applied) = tokio::join!(
            engine.apply(b_message, b_task, complete(json!({"b.out": 1}))),
            engine.apply(c_message, c_task, complete(json!({"c.out": 1}))),
        );
        b_applied.unwrap();
        c_applied.unwrap();
    }
    for id in &participants {
        let orchestration = fx.orchestration(id).await;
        assert_eq!(orchestration.state, 2, "not completed: {orchestration:?}");
        let profile = fx.settled(id).await;
        assert!(vpas_are(&profile, "active"), "{profile:?}");
        assert_eq!(
            profile.properties["cfm.vpa.state"],
            json!({"b.out": 1, "c.out": 1})
        );
    }
    assert_eq!(fx.queued().await, 0);
}

/// The capability calls a report carries are kept with the participant: once per run,
/// however often the report arrives, and also when the run's outcome no longer counts
/// (its writes happened all the same). A NUL or an escape a plugin put in a target is
/// replaced, so it neither stops the report from applying nor drives a terminal, and
/// calls past their retention are pruned.
async fn capability_calls_are_kept_once_per_run_stale_runs_included(backend: TestBackend) {
    let fx = unworked(backend, |_| complete(json!({}))).await;
    let id = fx.deploy().await;
    let (message, task) = fx.outbox("a").await.remove(&id).unwrap();
    let call = |at: &str, target: &str, decision| CapabilityCall {
        at: at.into(),
        plugin: "vault".into(),
        capability: "secrets".into(),
        operation: "put".into(),
        target: target.into(),
        decision,
        dry_run: false,
    };
    let report = |run: &str, calls: Vec<CapabilityCall>| ActivityReport {
        message_id: message.clone(),
        task: task.clone(),
        outcome: complete(json!({})),
        delivery: 1,
        run: Some(run.into()),
        plugin_digest: None,
        capability_calls: calls,
    };
    let first = report(
        "r1",
        vec![
            call(
                "2026-12-05T10:00:00.000Z",
                "participants/p/key",
                Decision::Allowed(Effect::Created),
            ),
            call(
                "2026-12-05T10:00:00.001Z",
                "evil\u{0}path\u{1b}[2J",
                Decision::Denied,
            ),
        ],
    );
    let engine = &fx.manager.engine;
    engine.apply_report(first.clone()).await.unwrap();
    // The same run's report again, and a late second run of the completed step.
    engine.apply_report(first).await.unwrap();
    let late = report(
        "r2",
        vec![call(
            "2026-12-05T10:00:01.000Z",
            "participants/p/key",
            Decision::Allowed(Effect::Unchanged),
        )],
    );
    engine.apply_report(late).await.unwrap();

    let page = Page {
        offset: 0,
        limit: 100,
    };
    let db = engine.db();
    let listed = |filter| profiles::capability_calls(db, &fx.tenant, &id, filter, page);
    let all = listed(Filter::All).await.unwrap();
    let seen: Vec<(&str, &str, Option<&str>)> = all
        .items
        .iter()
        .map(|c| (c.target.as_str(), c.decision.as_str(), c.effect.as_deref()))
        .collect();
    assert_eq!(
        seen,
        [
            ("participants/p/key", "allowed", Some("unchanged")),
            ("evil\u{FFFD}path\u{FFFD}[2J", "denied", None),
            ("participants/p/key", "allowed", Some("created")),
        ]
    );
    assert!(
        all.items
            .iter()
            .all(|c| c.activity_id == "a" && c.orchestration_id == task.orchestration_id)
    );
    let denied = listed(Filter::Decision("denied")).await.unwrap();
    assert_eq!(denied.items.len(), 1);
    assert!(matches!(
        profiles::capability_calls(db, "another-tenant", &id, Filter::All, page).await,
        Err(ManagerError::NotFound(_))
    ));

    // The retention counts by the managers' clock: an agent's clock years behind prunes
    // nothing, a call recorded long ago goes.
    let skewed = report(
        "r3",
        vec![call(
            "2020-01-01T00:00:00.000Z",
            "participants/p/key",
            Decision::Allowed(Effect::Unchanged),
        )],
    );
    engine.apply_report(skewed).await.unwrap();
    assert_eq!(listed(Filter::All).await.unwrap().items.len(), 4);
    assert_eq!(capability_calls::prune(db).await.unwrap(), 0);
    sqlx::query(
        "UPDATE capability_calls SET recorded_at = '2020-01-01T00:00:00.000Z' WHERE run_id = 'r3'",
    )
    .execute(db.writer())
    .await
    .unwrap();
    assert_eq!(capability_calls::prune(db).await.unwrap(), 1);
    assert_eq!(listed(Filter::All).await.unwrap().items.len(), 3);
}

/// A dispose that errored before it reached a step leaves that step `cancelled`: it will
/// never run, so a deploy run of that step arriving late is undone by a clean-up of its
/// own, as after a dispose that ran it.
async fn a_late_deploy_step_is_undone_when_the_dispose_errored_before_reaching_it(
    backend: TestBackend,
) {
    let fx = fixture(backend, |task| {
        let disposing = task.discriminator == DISPOSE;
        match task.activity_id.as_str() {
            "b" if disposing => ActivityOutcome::Fatal {
                reason: "b cannot be disposed".into(),
            },
            _ => complete(json!({})),
        }
    })
    .await;
    // Dispose: b, then a; b fails, so a never runs.
    fx.template(&[("a", &[]), ("b", &["a"])], &[("b", &[]), ("a", &["b"])])
        .await;
    let id = fx.deploy().await;
    fx.vpas_reach(&id, "active").await;
    profiles::dispose(&fx.manager.engine, &fx.tenant, &id)
        .await
        .unwrap();
    fx.vpas_reach(&id, "error").await;
    let dispose: String = sqlx::query_scalar(
        "SELECT id FROM orchestrations WHERE correlation_id = $1 AND orchestration_type = $2",
    )
    .bind(&id)
    .bind(DISPOSE)
    .fetch_one(fx.manager.engine.db().read())
    .await
    .unwrap();
    let steps = fx.manager.engine.get(&dispose).await.unwrap().steps;
    let a = steps.iter().find(|s| s.id == "a").unwrap();
    assert_eq!((a.state.as_str(), a.attempts), ("cancelled", 0));

    // The deploy's a runs again, late, and reports: a clean-up disposes of a alone.
    fx.report_deploy_again("a").await;
    let undone = fx.nth_dispose_of("a", 1).await;
    assert_eq!(
        fx.correlation_of(&undone.orchestration_id).await,
        format!("{id}/cleanup")
    );
}
