//! Tenant Manager read path on PostgreSQL at scale: 100,000 participant profiles across
//! 1,000 tenants, read by 16 concurrent clients over loopback from the real `cfm serve`,
//! and the same reads issued in-process through the manager's sqlx store in the same run,
//! so the table shows what HTTP, auth and JSON add.
//!
//! `cargo bench -p cfm --bench tenant_api` (needs PostgreSQL at 127.0.0.1:5432 and
//! scripts/build-plugins.sh first). `CFM_BENCH_PROFILES` changes the population, or lists
//! several (`10000,1000000`): the profiles are added in turn and each size is measured in
//! the same run, with the server's resident memory after its reads.
//! Prints a table; compare the ratios, absolute times on a shared machine are noise.

// Test code: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use cfm_manager::error::ManagerError;
use cfm_manager::query::Predicate;
use cfm_manager::store::{self, Db, Page, Paged};
use cfm_manager::tenant::profiles;
use cfm_manager::testing::TestBackend;
use cfm_test_support::{Api, Server, percentile, sizes_from_env};
use serde_json::json;

const TENANTS: usize = 1_000;
const CLIENTS: usize = 16;

#[tokio::main]
async fn main() {
    let sizes = sizes_from_env("CFM_BENCH_PROFILES", "100000");
    let server = Server::start_on(TestBackend::Postgres, &["--no-seed"]).await;
    let url = server
        .database_url()
        .expect("a PostgreSQL server")
        .to_string();
    let db = Db::open(&url).await.expect("opening the bench database");
    let api = Arc::new(server.client());
    let mut data = Population::new(&url).await;
    let mut memory = Vec::new();
    for population in sizes {
        let loading = Instant::now();
        data.grow_to(&url, population).await;
        eprintln!(
            "loaded {population} profiles in {TENANTS} tenants in {:.1} s",
            loading.elapsed().as_secs_f64()
        );
        workloads(&api, &db, &data, population).await;
        memory.push((population, server.rss_kib()));
    }
    println!(
        "
| profiles | cfm serve resident memory after the reads | × the first |"
    );
    println!("|---|---|---|");
    let first = memory.first().map_or(1, |(_, kib)| (*kib).max(1));
    for (population, kib) in memory {
        println!(
            "| {population} | {:.0} MiB | {:.2} |",
            kib as f64 / 1024.0,
            kib as f64 / first as f64
        );
    }
    println!(
        "\nTargets: GET p99 < 10 ms; indexed queries p99 < 50 ms; the API within 1.5x the in-process sqlx read, p99 to p99."
    );
    db.close().await;
}

/// The workloads at one population, as one table.
async fn workloads(api: &Arc<Api>, db: &Db, data: &Population, population: usize) {
    println!(
        "\n{population} participant profiles, {TENANTS} tenants, PostgreSQL, {CLIENTS} concurrent clients\n"
    );
    println!(
        "| workload | API p50 | API p99 | API req/s | sqlx p50 | sqlx p99 | API/sqlx p50 | API/sqlx p99 | stopped at the budget, API / sqlx |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");

    let by_id = |i: usize| {
        let (tenant, profile) = &data.profiles[(i * 7919) % data.profiles.len()];
        (tenant.clone(), profile.clone())
    };
    let tenant_of = |i: usize| data.tenants[(i * 31) % data.tenants.len()].clone();
    let pick = |i: usize| format!("participant-{}", (i * 104_729) % population);

    measure(
        "GET profile by id",
        4_000,
        api,
        db,
        |i| {
            let (t, p) = by_id(i);
            Request::Get(format!("/tenants/{t}/participant-profiles/{p}"))
        },
        |db, i| {
            let (t, p) = by_id(i);
            Box::pin(async move {
                profiles::get(&db, &t, &p).await.expect("get");
                Answer::Answered
            })
        },
    )
    .await;
    measure(
        &format!(
            "list a tenant's profiles, first 100 of {}",
            population / TENANTS
        ),
        1_000,
        api,
        db,
        |i| {
            Request::Get(format!(
                "/tenants/{}/participant-profiles?limit=100",
                tenant_of(i)
            ))
        },
        |db, i| {
            let t = tenant_of(i);
            Box::pin(async move {
                profiles::list(&db, &t, Page::new(None, Some(100)))
                    .await
                    .expect("list");
                Answer::Answered
            })
        },
    )
    .await;
    let queries: [(&str, &dyn Fn(usize) -> String); 6] = [
        ("identifier = 'did:web:participant-N.example' (one)", &|i| {
            format!("identifier = 'did:web:{}.example'", pick(i))
        }),
        ("tenantId = T (one tenant's, first 100)", &|i| {
            format!("tenantId = '{}'", tenant_of(i))
        }),
        ("properties.group = 'gN' (10%, first 100)", &|i| {
            format!("properties.group = 'g{}'", i % 10)
        }),
        ("identifier like '%participant-N%'", &|i| {
            format!("identifier like '%{}%'", pick(i))
        }),
        ("vpas.state = 'error' (1%, first 100)", &|_| {
            "vpas.state = 'error'".to_string()
        }),
        ("vpas.type = 'cfm.connector' (all, first 100)", &|_| {
            "vpas.type = 'cfm.connector'".to_string()
        }),
    ];
    for (name, predicate) in queries {
        measure(
            name,
            1_000,
            api,
            db,
            |i| Request::Query(predicate(i)),
            |db, i| {
                let predicate = Predicate::parse(&predicate(i)).expect("predicate");
                Box::pin(async move {
                    // What the route reads: the page, and the count when the page
                    // cannot tell it.
                    let page = Page::new(None, Some(100));
                    let read = async {
                        let items = profiles::query(&db, &predicate, page).await?;
                        Paged::counting_if_needed(items, page, profiles::count(&db, &predicate))
                            .await
                    }
                    .await;
                    match read {
                        Ok(_) => Answer::Answered,
                        Err(ManagerError::Database(e)) if store::is_query_timeout(&e) => {
                            Answer::Stopped
                        }
                        Err(e) => panic!("query: {e}"),
                    }
                })
            },
        )
        .await;
    }
}

enum Request {
    Get(String),
    Query(String),
}

/// How a request ended. A query the database stopped at its time budget is counted in its
/// row rather than ending the run: a heavy workload at a million profiles may meet it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Answered,
    Stopped,
}

type Direct = std::pin::Pin<Box<dyn std::future::Future<Output = Answer> + Send>>;

/// Runs `count` requests of a workload through the API, then through sqlx, each from
/// 16 concurrent clients, and prints one row of the table.
async fn measure(
    name: &str,
    count: usize,
    api: &Arc<Api>,
    db: &Db,
    request: impl Fn(usize) -> Request,
    direct: impl Fn(Db, usize) -> Direct,
) {
    let requests: Vec<Request> = (0..count).map(&request).collect();
    let requests = Arc::new(requests);
    let started = Instant::now();
    let (api_latencies, api_stopped) = concurrently(count, |i| {
        let api = api.clone();
        let requests = requests.clone();
        Box::pin(async move {
            match &requests[i] {
                Request::Get(path) => {
                    let response = api.get(path).await;
                    assert_eq!(response.status(), 200, "GET {path}");
                    response.bytes().await.expect("body");
                    Answer::Answered
                }
                Request::Query(predicate) => {
                    let body = json!({"predicate": predicate, "limit": 100}).to_string();
                    let response = api
                        .raw(
                            reqwest::Method::POST,
                            "/participant-profiles/query",
                            Some(&body),
                            None,
                        )
                        .await;
                    let status = response.status();
                    // Read as the GET's are: parsing a page of profiles into JSON values
                    // here would take the cores the server is measured on.
                    let body = response.bytes().await.expect("body");
                    if status == 200 {
                        return Answer::Answered;
                    }
                    let problem: serde_json::Value =
                        serde_json::from_slice(&body).unwrap_or_default();
                    assert!(
                        status == 400 && problem["reason"] == "query-timeout",
                        "query {predicate}: {status} {problem}"
                    );
                    Answer::Stopped
                }
            }
        })
    })
    .await;
    let api_rate = count as f64 / started.elapsed().as_secs_f64();
    let (sqlx_latencies, sqlx_stopped) = concurrently(count, |i| direct(db.clone(), i)).await;

    let (a50, a99) = (
        percentile(&api_latencies, 50),
        percentile(&api_latencies, 99),
    );
    let (s50, s99) = (
        percentile(&sqlx_latencies, 50),
        percentile(&sqlx_latencies, 99),
    );
    println!(
        "| {name} | {} | {} | {api_rate:.0} | {} | {} | {:.2}x | {:.2}x | {api_stopped} / {sqlx_stopped} |",
        ms(a50),
        ms(a99),
        ms(s50),
        ms(s99),
        a50.as_secs_f64() / s50.as_secs_f64(),
        a99.as_secs_f64() / s99.as_secs_f64(),
    );
}

/// Runs `count` jobs from `CLIENTS` tasks; each job's latency (a stopped one's included:
/// its client waited for it), and how many were stopped at the query budget.
async fn concurrently(count: usize, job: impl Fn(usize) -> Direct) -> (Vec<Duration>, usize) {
    let jobs: Vec<Direct> = (0..count).map(job).collect();
    let jobs = Arc::new(tokio::sync::Mutex::new(
        jobs.into_iter().collect::<std::collections::VecDeque<_>>(),
    ));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let jobs = jobs.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut stopped = 0;
                loop {
                    let Some(job) = jobs.lock().await.pop_front() else {
                        return (latencies, stopped);
                    };
                    let started = Instant::now();
                    if job.await == Answer::Stopped {
                        stopped += 1;
                    }
                    latencies.push(started.elapsed());
                }
            })
        })
        .collect();
    let mut all = Vec::with_capacity(count);
    let mut stopped = 0;
    for client in clients {
        let (latencies, its_stopped) = client.await.expect("client");
        all.extend(latencies);
        stopped += its_stopped;
    }
    (all, stopped)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// What the bench reads: tenant ids, and (tenant, profile) id pairs.
struct Population {
    cell: String,
    tenants: Vec<String>,
    profiles: Vec<(String, String)>,
}

impl Population {
    /// A cell and the tenants, without profiles yet.
    async fn new(url: &str) -> Population {
        let mut conn = connect(url).await;
        let cell = uuid::Uuid::new_v4().to_string();
        sqlx::query(
            "INSERT INTO cells (id, version, external_id, state, state_timestamp, properties)
             VALUES ($1, 0, 'bench-cell', 'active', '2026-01-01T00:00:00Z', '{}')",
        )
        .bind(&cell)
        .execute(&mut conn)
        .await
        .expect("cell");
        let tenants: Vec<String> = (0..TENANTS)
            .map(|_| uuid::Uuid::new_v4().to_string())
            .collect();
        sqlx::query(
            "INSERT INTO tenants (id, version, properties, created_at)
             SELECT id, 0, '{\"tier\":\"bench\"}', '2026-01-01T00:00:00Z' FROM UNNEST($1::text[]) AS id",
        )
        .bind(&tenants)
        .execute(&mut conn)
        .await
        .expect("tenants");
        Population {
            cell,
            tenants,
            profiles: Vec::new(),
        }
    }

    /// Writes profiles straight into the database, in the shape the manager stores them,
    /// until there are `count`: creating them through their orchestrations would take
    /// hours at a million and measure something else.
    async fn grow_to(&mut self, url: &str, count: usize) {
        let mut conn = connect(url).await;
        let cell = &self.cell;
        for start in (self.profiles.len()..count).step_by(5_000) {
            let end = (start + 5_000).min(count);
            let mut ids = Vec::new();
            let mut owners = Vec::new();
            let mut identifiers = Vec::new();
            let mut vpas = Vec::new();
            let mut properties = Vec::new();
            for i in start..end {
                let id = uuid::Uuid::new_v4().to_string();
                let tenant = self.tenants[i % TENANTS].clone();
                let state = if i % 100 == 0 { "error" } else { "active" };
                let vpa: Vec<_> = cfm_manager::model::VPA_TYPES
                    .iter()
                    .map(|t| {
                        json!({"id": uuid::Uuid::new_v4().to_string(), "version": 1, "state": state,
                               "stateTimestamp": "2026-01-01T00:00:00.000Z", "type": t, "cellId": cell})
                    })
                    .collect();
                ids.push(id.clone());
                owners.push(tenant.clone());
                identifiers.push(format!("did:web:participant-{i}.example"));
                vpas.push(serde_json::Value::Array(vpa).to_string());
                properties.push(json!({"group": format!("g{}", i % 10)}).to_string());
                self.profiles.push((tenant, id));
            }
            sqlx::query(
                "INSERT INTO participant_profiles (id, version, tenant_id, identifier, cell_id,
                   dataspace_profile_ids, participant_roles, vpas, properties)
                 SELECT id, 1, tenant, identifier, $6, '[]', '{}', vpas, properties
                 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
                   AS t(id, tenant, identifier, vpas, properties)",
            )
            .bind(&ids)
            .bind(&owners)
            .bind(&identifiers)
            .bind(&vpas)
            .bind(&properties)
            .bind(cell)
            .execute(&mut conn)
            .await
            .expect("profiles");
        }
        // What autovacuum does to tables that have settled: statistics, and the visibility
        // map that lets a count read its index alone (the VPA states' table included).
        sqlx::query("VACUUM ANALYZE participant_profiles, participant_vpa_states")
            .execute(&mut conn)
            .await
            .expect("vacuum");
    }
}

async fn connect(url: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(url).await.expect("connect")
}
