//! Provision throughput and overhead: onboardings through a 5-activity chain of no-op
//! plugins, embedded (`cfm serve`: SQLite and the outbox-table queue) and distributed
//! (`cfm manager` + `cfm agent`: PostgreSQL and JetStream), against the floor measured in
//! the same run: one PostgreSQL commit plus one JetStream publish-and-ack round trip
//! distributed, one SQLite commit embedded.
//!
//! Then scale-out: the same chain distributed, each activity a plugin that waits 20 ms on
//! I/O, with 1, 2 and 4 agent replicas (`CFM_BENCH_AGENTS`), each running
//! [`IO_CONCURRENCY`] activities at once, to show how throughput follows the agents until
//! the manager or the database is what limits it.
//!
//! `cargo bench -p cfm --bench provision` (needs scripts/build-plugins.sh first, and the
//! servers scripts/services.sh starts). `CFM_BENCH_COUNTS=1000,10000` sets the runs,
//! `CFM_BENCH_MODES=embedded` (or `distributed`) one deployment alone (the floor is
//! measured either way, so both servers are needed),
//! `CFM_BENCH_CONCURRENCY` the activities a worker runs at once (16), and
//! `CFM_BENCH_AGENTS` the scale-out's replicas (empty: none).
//! Prints tables; compare the ratios, absolute times on a shared machine are noise.

// Test code: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use cfm_manager::testing::ScratchDatabase;
use cfm_queue::Queue;
use cfm_queue::jetstream::{JetStreamQueue, JetStreamSettings};
use cfm_test_support::{
    Api, Deployment, Server, mean_without_stalls, nats_url, percentile, plugins_config_with,
    sizes_from_env,
};
use serde_json::json;
use sqlx::{Connection, Row};

/// Activities per onboarding, one after the other.
const CHAIN: usize = 5;
const CLIENTS: usize = 16;
/// Onboardings run one at a time, for the unloaded per-activity latency.
const SEQUENTIAL: usize = 60;
/// How long the scale-out plugin waits per activity, as on a backend's answer.
const IO_WAIT_MS: u64 = 20;
/// Activities one agent runs at once in the scale-out runs: a replica's share of what
/// the backends take, and low enough that one agent, not the manager, is the limit at
/// first (4 / 20 ms = 200 activities/s = 40 onboardings/s per agent).
const IO_CONCURRENCY: usize = 4;
/// Onboardings per scale-out run.
const SCALE_OUT_ONBOARDINGS: usize = 600;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Embedded,
    Distributed,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Embedded => "embedded (SQLite, outbox queue)",
            Mode::Distributed => "PostgreSQL + JetStream",
        }
    }
}

/// One deployment under test and how to read its database.
struct Target {
    _server: Option<Server>,
    deployment: Option<Deployment>,
    api: Api,
    db: sqlx::AnyPool,
}

impl Target {
    async fn start(mode: Mode) -> Target {
        sqlx::any::install_default_drivers();
        match mode {
            Mode::Embedded => {
                let concurrency = concurrency().to_string();
                let server = Server::start(&["--concurrency", &concurrency]).await;
                let api = server.client();
                let url = format!(
                    "sqlite://{}?mode=ro",
                    server.data_dir().join("cfm.db").display()
                );
                let db = sqlx::AnyPool::connect(&url)
                    .await
                    .expect("open the SQLite database");
                Target {
                    _server: Some(server),
                    deployment: None,
                    api,
                    db,
                }
            }
            Mode::Distributed => {
                let mut deployment = Deployment::start(&nats_url(), 1).await;
                deployment.start_agents(&["agent"], concurrency());
                Target::distributed(deployment).await
            }
        }
    }

    /// A manager and `agents` agent replicas, each with its own data directory, running
    /// the I/O-bound plugin as the chain's activity types.
    async fn scaled_out(agents: usize, plugins: &std::path::Path) -> Target {
        let mut deployment = Deployment::start(&nats_url(), 1).await;
        let dirs: Vec<String> = (0..agents).map(|n| format!("agent-{n}")).collect();
        let dirs: Vec<&str> = dirs.iter().map(String::as_str).collect();
        deployment.start_agents_with(&dirs, IO_CONCURRENCY, plugins, &[]);
        Target::distributed(deployment).await
    }

    async fn distributed(deployment: Deployment) -> Target {
        let api = deployment.api(0);
        let db = sqlx::AnyPool::connect(deployment.scratch.url())
            .await
            .expect("open the PostgreSQL database");
        Target {
            _server: None,
            deployment: Some(deployment),
            api,
            db,
        }
    }

    /// Submits `count` onboardings and waits for all of them; participants per second.
    async fn onboard(&self, tenant: &str, dataspace: &str, count: usize) -> f64 {
        let started = Instant::now();
        submit(&self.api, tenant, dataspace, count).await;
        loop {
            let (done, errored) = self.progress().await;
            assert_eq!(errored, 0, "an onboarding failed");
            if done >= count as i64 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(3600),
                "onboarding did not finish"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        count as f64 / started.elapsed().as_secs_f64()
    }

    /// Peak RSS of each cfm process, in MiB.
    fn peak_rss_mib(&self) -> String {
        let mib = |kib: u64| format!("{:.0}", kib as f64 / 1024.0);
        match (&self._server, &self.deployment) {
            (Some(server), _) => format!("serve {}", mib(server.peak_rss_kib())),
            (_, Some(d)) => format!(
                "manager {} + agent {}",
                mib(d.managers[0].peak_rss_kib()),
                // The largest, where there are several.
                mib(d.agents.iter().map(|a| a.peak_rss_kib()).max().unwrap_or(0))
            ),
            _ => String::new(),
        }
    }

    async fn completed(&self) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM orchestrations WHERE state = 2")
            .fetch_one(&self.db)
            .await
            .expect("count")
    }

    /// Completed and errored orchestrations, in one scan: the poll shares the cores and
    /// the database it measures, so it costs them as little as it can.
    async fn progress(&self) -> (i64, i64) {
        sqlx::query_as(
            "SELECT COALESCE(SUM(CASE WHEN state = 2 THEN 1 ELSE 0 END), 0),
                    COALESCE(SUM(CASE WHEN state = 3 THEN 1 ELSE 0 END), 0)
             FROM orchestrations",
        )
        .fetch_one(&self.db)
        .await
        .expect("count")
    }

    /// Creation to completion of every completed orchestration, from the engine's own
    /// timestamps (millisecond resolution).
    async fn times_to_active(&self) -> Vec<Duration> {
        let rows = sqlx::query(
            "SELECT created_timestamp, state_timestamp FROM orchestrations WHERE state = 2",
        )
        .fetch_all(&self.db)
        .await
        .expect("read orchestrations");
        rows.iter()
            .map(|row| {
                let at = |column: &str| {
                    chrono::DateTime::parse_from_rfc3339(&row.get::<String, _>(column))
                        .expect("timestamp")
                };
                (at("state_timestamp") - at("created_timestamp"))
                    .to_std()
                    .unwrap_or_default()
            })
            .collect()
    }
}

#[tokio::main]
async fn main() {
    sqlx::any::install_default_drivers();
    let counts = sizes_from_env("CFM_BENCH_COUNTS", "1000,10000");
    let (commit, publish) = floor().await;
    let floor = commit + publish;
    let sqlite_floor = sqlite_commit().await;
    println!(
        "floor: PostgreSQL commit p50 {} + JetStream publish-and-ack p50 {} = {}; SQLite commit p50 {}",
        ms(commit),
        ms(publish),
        ms(floor),
        ms(sqlite_floor)
    );
    println!();
    println!(
        "| deployment | onboardings | participants/s | p50 to active | p99 to active | peak RSS (MiB) |"
    );
    println!("|---|---|---|---|---|---|");
    let mut overheads = Vec::new();
    for mode in modes() {
        let target = Target::start(mode).await;
        let (tenant, dataspace) = prepare(&target.api, NOOP).await;
        let per_activity = sequential(&target, &tenant, &dataspace).await;
        overheads.push((mode, per_activity));
        drop(target);
        for &count in &counts {
            // A fresh deployment per run, so peak RSS belongs to that run alone.
            let target = Target::start(mode).await;
            let (tenant, dataspace) = prepare(&target.api, NOOP).await;
            let rate = target.onboard(&tenant, &dataspace, count).await;
            let times = target.times_to_active().await;
            println!(
                "| {} | {count} | {rate:.0} | {} | {} | {} |",
                mode.name(),
                ms(percentile(&times, 50)),
                ms(percentile(&times, 99)),
                target.peak_rss_mib()
            );
        }
    }
    println!();
    println!("Unloaded, one onboarding at a time ({SEQUENTIAL}), {CHAIN} activities each:");
    println!("| deployment | per activity (mean without stalls) | × its floor |");
    println!("|---|---|---|");
    for (mode, per_activity) in overheads {
        let floor = match mode {
            Mode::Embedded => sqlite_floor,
            Mode::Distributed => floor,
        };
        println!(
            "| {} | {} | {:.1} |",
            mode.name(),
            ms(per_activity),
            per_activity.as_secs_f64() / floor.as_secs_f64()
        );
    }
    scale_out().await;
}

/// Activities one embedded server or distributed agent runs at once
/// (`CFM_BENCH_CONCURRENCY`, default 16).
fn concurrency() -> usize {
    sizes_from_env("CFM_BENCH_CONCURRENCY", "16")
        .first()
        .copied()
        .unwrap_or(16)
}

/// The deployments measured: `CFM_BENCH_MODES` (`embedded`, `distributed` or both,
/// comma-separated; default both).
fn modes() -> Vec<Mode> {
    let names = std::env::var("CFM_BENCH_MODES").unwrap_or_else(|_| "embedded,distributed".into());
    let modes: Vec<Mode> = names
        .split(',')
        .filter_map(|name| match name.trim() {
            "embedded" => Some(Mode::Embedded),
            "distributed" => Some(Mode::Distributed),
            _ => None,
        })
        .collect();
    assert!(
        !modes.is_empty(),
        "CFM_BENCH_MODES names no deployment: {names}"
    );
    modes
}

/// Onboardings per second distributed, with 1, 2, 4 (`CFM_BENCH_AGENTS`) agent replicas
/// whose plugin waits [`IO_WAIT_MS`] on every activity, each against one agent's rate.
async fn scale_out() {
    let agents = sizes_from_env("CFM_BENCH_AGENTS", "1,2,4");
    if agents.is_empty() {
        return;
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    // The example `slow` plugin, waiting 20 ms (a monotonic-clock wait the host awaits
    // without a thread, as it awaits a socket), as each of the chain's activity types.
    let plugins = plugins_config_with(dir.path(), |plugin| {
        if plugin["name"].as_str() != Some("slow") {
            return;
        }
        let types = (1..=CHAIN).map(|n| format!("{IO}.{n}").into()).collect();
        plugin.insert("activity-types".into(), toml::Value::Array(types));
        plugin["settings"]
            .as_table_mut()
            .expect("the slow plugin's settings")
            .insert("delayMs".into(), (IO_WAIT_MS as i64).into());
    });
    println!();
    println!(
        "Scale-out: {SCALE_OUT_ONBOARDINGS} onboardings, {CHAIN} activities each waiting {IO_WAIT_MS} ms, {IO_CONCURRENCY} at once per agent:"
    );
    println!("| agents | participants/s | × one agent | peak RSS (MiB) |");
    println!("|---|---|---|---|");
    let mut one = None;
    for n in agents {
        let target = Target::scaled_out(n, &plugins).await;
        let (tenant, dataspace) = prepare(&target.api, IO).await;
        let rate = target
            .onboard(&tenant, &dataspace, SCALE_OUT_ONBOARDINGS)
            .await;
        let one = *one.get_or_insert(rate);
        println!(
            "| {n} | {rate:.0} | {:.2} | {} |",
            rate / one,
            target.peak_rss_mib()
        );
    }
}

/// The floor: p50 of one PostgreSQL transaction committing one row, and of one
/// JetStream publish acknowledged by the server, each sequential over loopback.
async fn floor() -> (Duration, Duration) {
    let scratch = ScratchDatabase::create().await;
    let pool = sqlx::AnyPool::connect(scratch.url())
        .await
        .expect("PostgreSQL");
    let commit = commit_p50(&pool, "BIGSERIAL", "BEGIN").await;

    let settings = JetStreamSettings {
        namespace: format!("bench{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
        ..JetStreamSettings::new(nats_url())
    };
    let queue = JetStreamQueue::connect(settings).await.expect("JetStream");
    let mut publishes = Vec::new();
    for i in 0..1000 {
        let message = cfm_queue::Message {
            id: format!("floor-{i}"),
            topic: "floor".into(),
            payload: vec![b'x'; 200],
            trace_parent: None,
        };
        let started = Instant::now();
        queue.publish(&[message]).await.expect("publish");
        publishes.push(started.elapsed());
    }
    queue.delete().await.expect("delete the bench stream");
    (commit, percentile(&publishes, 50))
}

/// The embedded floor: p50 of one SQLite transaction committing one row, with the
/// settings `cfm serve` opens its database with (WAL, synchronous NORMAL, one writer).
async fn sqlite_commit() -> Duration {
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("floor.db").display()
    );
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .expect("SQLite");
    sqlx::raw_sql("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL")
        .execute(&pool)
        .await
        .expect("pragmas");
    commit_p50(&pool, "INTEGER", "BEGIN IMMEDIATE").await
}

/// p50 of 1,000 transactions that each insert one 200-byte row and commit, on one
/// connection: taking it from the pool each time would add the pool's own work (a ping
/// to the server, by sqlx's default) to what is meant as a commit alone.
async fn commit_p50(pool: &sqlx::AnyPool, key_type: &str, begin: &'static str) -> Duration {
    let create = format!("CREATE TABLE floor (id {key_type} PRIMARY KEY, payload TEXT NOT NULL)");
    sqlx::raw_sql(sqlx::AssertSqlSafe(create))
        .execute(pool)
        .await
        .expect("create");
    let mut conn = pool.acquire().await.expect("a connection");
    let mut commits = Vec::new();
    for _ in 0..1000 {
        let started = Instant::now();
        let mut tx = conn.begin_with(begin).await.expect("begin");
        sqlx::query("INSERT INTO floor (payload) VALUES ($1)")
            .bind("x".repeat(200))
            .execute(&mut *tx)
            .await
            .expect("insert");
        tx.commit().await.expect("commit");
        commits.push(started.elapsed());
    }
    drop(conn);
    pool.close().await;
    percentile(&commits, 50)
}

/// The no-op plugin's activity types: `example.noop.1` to `.5`.
const NOOP: &str = "example.noop";
/// The scale-out plugin's activity types, `example.io.1` to `.5`.
const IO: &str = "example.io";

/// A 5-activity chain (`{types}.1` to `.5`) as the deploy template; returns the tenant
/// and dataspace profile to onboard into.
async fn prepare(api: &Api, types: &str) -> (String, String) {
    let mut chain = Vec::new();
    for n in 1..=CHAIN {
        let activity_type = format!("{types}.{n}");
        let (status, body) = api
            .call(
                reqwest::Method::POST,
                "/activity-definitions",
                Some(json!({"type": activity_type})),
                None,
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let depends_on: Vec<String> = if n > 1 {
            vec![format!("n{}", n - 1)]
        } else {
            vec![]
        };
        chain.push(json!({"id": format!("n{n}"), "type": activity_type, "dependsOn": depends_on}));
    }
    api.post_ok(
        "/orchestration-definitions",
        json!({"activities": {"cfm.orchestration.vpa.deploy": chain}}),
        201,
    )
    .await;
    let env = api.dataspace_with_cell("cell-bench").await;
    let tenant = api.post_ok("/tenants", json!({}), 201).await;
    (
        tenant["id"].as_str().unwrap_or_default().to_string(),
        env.dataspace_id,
    )
}

async fn submit(api: &Api, tenant: &str, dataspace: &str, count: usize) {
    let api = Arc::new(api.clone());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (api, tenant, dataspace) = (api.clone(), tenant.to_string(), dataspace.to_string());
            tokio::spawn(async move {
                for i in (client..count).step_by(CLIENTS) {
                    // A DID is one live participant: unique per tenant and index.
                    let body = json!({"identifier": format!("did:web:p{i}-{tenant}.example"), "dataspaceProfileIds": [dataspace]});
                    api.post_ok(&format!("/tenants/{tenant}/participant-profiles"), body, 202).await;
                }
            })
        })
        .collect();
    for client in clients {
        client.await.expect("client");
    }
}

/// Per-activity latency of an idle system: onboardings one at a time, each waited for.
async fn sequential(target: &Target, tenant: &str, dataspace: &str) -> Duration {
    for i in 0..SEQUENTIAL {
        let before = target.completed().await;
        let body = json!({"identifier": format!("did:web:seq{i}.example"), "dataspaceProfileIds": [dataspace]});
        target
            .api
            .post_ok(
                &format!("/tenants/{tenant}/participant-profiles"),
                body,
                202,
            )
            .await;
        let started = Instant::now();
        while target.completed().await == before {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "onboarding did not finish"
            );
            // Each look is a statement on the database the activities commit to: looking
            // every 2 ms was one per activity, in their way. When the next onboarding
            // starts does not change what is measured (the database's own timestamps).
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    mean_without_stalls(&target.times_to_active().await) / CHAIN as u32
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}
