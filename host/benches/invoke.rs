//! What isolation costs: the same no-op activity as a plugin (a fresh wasmtime Store and
//! instance per call) and as native Rust, alone and beside a runaway plugin.
//!
//! `cargo bench -p cfm-host --bench invoke` (needs scripts/build-plugins.sh first).
//! Prints a table; compare the ratios, absolute times on a shared machine are noise.

// Test code: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cfm_host::fairness::FULL_SPEED;
use cfm_host::runtime::HostOptions;
use cfm_host::{AgentHost, Audit, Backends, HostConfig};
use cfm_protocol::{ActivityOutcome, ActivityTask};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

const CALLS: usize = 3000;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let data = tempfile::tempdir().expect("temp dir");
    let host = Arc::new(
        AgentHost::new(
            &config(),
            Backends::embedded(data.path()),
            Audit::default(),
            HostOptions::default(),
        )
        .expect("loading the example plugins"),
    );
    let task = task();

    // Warm up caches and the pool.
    for _ in 0..200 {
        host.run(&task).await;
        native(&task);
    }
    let native_solo = measure_sync(|| {
        native(&task);
    });
    let plugin_solo = measure(&host, &task).await;

    let started = Instant::now();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let host = host.clone();
            let task = task.clone();
            tokio::spawn(async move {
                for _ in 0..CALLS {
                    host.run(&task).await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("worker");
    }
    let throughput = (2 * CALLS) as f64 / started.elapsed().as_secs_f64();

    // A runaway computes at full speed for `FULL_SPEED`, then is throttled: measure
    // beside it in both phases.
    let runaway = {
        let host = host.clone();
        let mut spin = task.clone();
        spin.activity_type = "example.spin".into();
        tokio::spawn(async move { host.run(&spin).await })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    let beside_full_speed = measure_n(&host, &task, CALLS / 3).await;
    tokio::time::sleep(FULL_SPEED + Duration::from_millis(100)).await;
    let beside_throttled = measure(&host, &task).await;
    // Its deadline (3 s) stops it.
    let stopped = runaway.await.expect("runaway");
    assert!(
        matches!(stopped, ActivityOutcome::Retry { .. }),
        "{stopped:?}"
    );

    println!("isolated no-op activity: {CALLS} calls each, 2 tokio workers");
    println!("| case | median | p99 |");
    println!("|---|---|---|");
    row("native Rust", &native_solo);
    row("plugin, fresh instance per call", &plugin_solo);
    row(
        "plugin, beside a runaway plugin in its first 200 ms (full speed)",
        &beside_full_speed,
    );
    row(
        "plugin, beside a runaway plugin after that (throttled)",
        &beside_throttled,
    );
    let added = plugin_solo.median.saturating_sub(native_solo.median);
    println!();
    println!(
        "added per invocation (median): {:.1} µs",
        added.as_secs_f64() * 1e6
    );
    println!("isolated invocations/s on 2 workers: {throughput:.0}");
    let ratio = |beside: &Stats| beside.p99.as_secs_f64() / plugin_solo.p99.as_secs_f64();
    println!(
        "p99 beside a runaway / p99 alone: {:.2} while it runs at full speed, {:.2} once throttled",
        ratio(&beside_full_speed),
        ratio(&beside_throttled)
    );
}

struct Stats {
    median: Duration,
    p99: Duration,
}

async fn measure(host: &AgentHost, task: &ActivityTask) -> Stats {
    measure_n(host, task, CALLS).await
}

async fn measure_n(host: &AgentHost, task: &ActivityTask, calls: usize) -> Stats {
    let mut samples = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        let outcome = host.run(task).await;
        samples.push(started.elapsed());
        assert!(
            matches!(outcome, ActivityOutcome::Complete { .. }),
            "{outcome:?}"
        );
    }
    stats(samples)
}

fn measure_sync(mut f: impl FnMut()) -> Stats {
    let samples = (0..CALLS)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed()
        })
        .collect();
    stats(samples)
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    Stats {
        median: samples[samples.len() / 2],
        p99: samples[samples.len() * 99 / 100],
    }
}

fn row(name: &str, stats: &Stats) {
    println!(
        "| {name} | {:.1} µs | {:.1} µs |",
        stats.median.as_secs_f64() * 1e6,
        stats.p99.as_secs_f64() * 1e6
    );
}

/// The work the plugin does, done natively: hand the data over as JSON, read it back.
fn native(task: &ActivityTask) -> ActivityOutcome {
    let text = Value::Object(task.processing_data.clone()).to_string();
    let parsed: Map<String, Value> = serde_json::from_str(&text).unwrap_or_default();
    std::hint::black_box(parsed);
    ActivityOutcome::Complete { output: Map::new() }
}

fn config() -> HostConfig {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins");
    let digest = |name: &str| {
        let wasm = std::fs::read(dir.join(format!("{name}.wasm")))
            .expect("build the plugins with scripts/build-plugins.sh");
        hex::encode(Sha256::digest(&wasm))
    };
    // The runaway is the hostile example, which imports every capability: it is granted
    // each one, with nothing in it.
    let text = format!(
        "[[plugin]]\nname = \"noop\"\npath = \"noop.wasm\"\nsha256 = \"{}\"\nactivity-types = [\"example.noop\"]\n\
         [[plugin]]\nname = \"spin\"\npath = \"hostile.wasm\"\nsha256 = \"{}\"\nactivity-types = [\"example.spin\"]\n\
         [plugin.limits]\ntimeout-ms = 3000\n[plugin.settings]\nmode = \"spin\"\n[plugin.grants]\nsecrets = [\"none\"]\n\
         [plugin.grants.cluster]\nnamespaces = []\nkinds = []\n\
         [plugin.grants.dns]\nzones = []\nnames = []\nrecord-types = []\n[plugin.grants.http]\norigins = []\n\
         [plugin.grants.tokens]\naudiences = []\nscopes = []\n",
        digest("noop"),
        digest("hostile"),
    );
    let mut config = HostConfig::parse(&text).expect("config");
    config.base_dir = dir;
    config
}

fn task() -> ActivityTask {
    let data = json!({
        "cfm.participant.id": "did:web:p.example",
        "cfm.participant.contextId": "p1",
        "cfm.vpa.data": [{"id": "v1", "vpaType": "cfm.connector", "cellId": "c1", "externalCellId": "", "properties": {}}],
        "cfm.vpa.credentials": []
    });
    ActivityTask {
        orchestration_id: "o1".into(),
        activity_id: "a1".into(),
        activity_type: "example.noop".into(),
        discriminator: "cfm.orchestration.vpa.deploy".into(),
        attempt: 1,
        participant_id: "did:web:p.example".into(),
        participant_context_id: "p1".into(),
        processing_data: data.as_object().cloned().unwrap_or_default(),
        state: None,
        timeout_ms: 60_000,
        trace_parent: None,
    }
}
