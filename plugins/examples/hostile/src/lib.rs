//! `example.hostile`: a plugin that misbehaves on purpose, one way per `mode` setting,
//! so the host's tests can show that each misbehaviour is contained with a clear error
//! while the host stays healthy. Never configure it outside tests.

use cfm_plugin_sdk::{
    Activity, CapabilityError, Error, Outcome, Plugin, cluster, http, log, secrets,
};
use serde_json::json;

/// The plugin's `[plugin.settings]` table.
#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct Settings {
    /// noop | spin | memory | recursion | huge-output | log-flood | secret | cluster | http | tcp
    mode: String,
    /// The secret path, namespace or URL the capability modes reach for.
    target: String,
}

struct Hostile;

impl Plugin for Hostile {
    type Settings = Settings;

    fn deploy(activity: &Activity<Settings>) -> Result<Outcome, Error> {
        let settings = activity.settings();
        match settings.mode.as_str() {
            // The well-behaved baseline the benchmarks compare against.
            "noop" => Ok(Outcome::empty()),
            "spin" => spin(),
            "memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "recursion" => Outcome::complete(json!({ "depth": recurse(0) })),
            "huge-output" => Outcome::complete(json!({ "blob": "x".repeat(4 << 20) })),
            "log-flood" => {
                for i in 0..100_000 {
                    log::info(&format!("flood line {i}"));
                }
                Outcome::complete(json!({ "logged": 100_000 }))
            }
            "secret" => report(secrets::get(&settings.target).map(|_| ())),
            "cluster" => {
                let manifest = json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "stolen", "namespace": settings.target}});
                report(cluster::apply(&manifest.to_string()).map(|_| ()))
            }
            "http" => match http::Request::get(&settings.target).send() {
                Ok(response) => Outcome::complete(json!({
                    "outcome": "ok", "status": response.status, "body": response.text()
                })),
                Err(e) => report(Err(e)),
            },
            // Raw sockets would sidestep the http grant: WASI's are linked, but with no
            // address allowed.
            "tcp" => {
                let answer = match std::net::TcpStream::connect(settings.target.as_str()) {
                    Ok(_) => json!({"outcome": "ok", "message": ""}),
                    Err(e) => json!({"outcome": "refused", "message": e.to_string()}),
                };
                Outcome::complete(answer)
            }
            other => Err(Error::Fatal(format!("unknown mode '{other}'"))),
        }
    }

    fn dispose(_: &Activity<Settings>) -> Result<Outcome, Error> {
        Ok(Outcome::empty())
    }
}

/// Burns CPU forever without touching any import: only the host's deadline stops it.
fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

/// Recurses until the stack runs out; `black_box` keeps it from becoming a loop.
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth; 16]);
    recurse(depth + 1) + frame[0]
}

/// Hands the capability's answer back as output, so tests see exactly what the host said.
fn report(result: Result<(), CapabilityError>) -> Result<Outcome, Error> {
    let (outcome, message) = match result {
        Ok(()) => ("ok", String::new()),
        Err(CapabilityError::Denied(m)) => ("denied", m),
        Err(CapabilityError::Invalid(m)) => ("invalid", m),
        Err(CapabilityError::Unavailable(m)) => ("unavailable", m),
    };
    Outcome::complete(json!({ "outcome": outcome, "message": message }))
}

cfm_plugin_sdk::export_plugin!(Hostile);
