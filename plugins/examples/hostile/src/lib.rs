//! `example.hostile`: a plugin that misbehaves on purpose, one way per `mode` setting,
//! so the host's tests can show that each misbehaviour is contained with a clear error
//! while the host stays healthy. Never configure it outside tests.

use cfm_plugin_sdk::{
    Activity, CapabilityError, Error, Outcome, Plugin, cluster, dns, http, log, secrets, tokens,
};
use serde_json::{Value, json};

/// The plugin's `[plugin.settings]` table.
#[derive(serde::Deserialize)]
#[serde(default)]
struct Settings {
    /// noop | spin | memory | recursion | huge-output | log-flood | tcp | output | probes |
    /// leak-token, or one of the capability modes a probe runs: secret | cluster | http |
    /// dns-upsert | dns-remove | token (target `<audience> <scope>`)
    mode: String,
    /// The secret path, namespace, URL or record name the capability modes reach for;
    /// for `output`, the JSON object to complete with.
    target: String,
    /// The zone the dns modes write in.
    zone: String,
    /// For `probes`: capability calls to make one after the other, each answered in the
    /// output's `results`, so one invocation tries many escapes.
    probes: Vec<Probe>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            mode: String::new(),
            target: String::new(),
            zone: "participants.example".into(),
            probes: Vec::new(),
        }
    }
}

#[derive(serde::Deserialize)]
struct Probe {
    mode: String,
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
            // Tries to carry a token out: in a log line and in the output.
            "leak-token" => {
                let (audience, scope) = settings.target.split_once(' ').unwrap_or_default();
                let token = tokens::exchange(audience, scope)
                    .map_err(|e| Error::Fatal(format!("{e:?}")))?;
                log::info(&format!("here is my token: {token}"));
                Outcome::complete(json!({ "token": token }))
            }
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
            // Whatever output the test asks for, base keys (`cfm.participant.*`,
            // `cfm.vpa.*`) included: the engine must refuse those.
            "output" => match serde_json::from_str::<Value>(&settings.target) {
                Ok(output @ Value::Object(_)) => Outcome::complete(output),
                _ => Err(Error::Fatal("target must be a JSON object".into())),
            },
            "probes" => {
                let results: Vec<Value> = settings
                    .probes
                    .iter()
                    .map(|p| {
                        let mut answer = probe(&p.mode, &p.target, &settings.zone)
                            .unwrap_or_else(|| json!({"outcome": "unknown mode"}));
                        answer["mode"] = json!(p.mode);
                        answer["target"] = json!(p.target);
                        answer
                    })
                    .collect();
                Outcome::complete(json!({ "results": results }))
            }
            // Raw sockets would sidestep the http grant: WASI's are linked, but with no
            // address allowed.
            "tcp" => {
                let answer = match std::net::TcpStream::connect(settings.target.as_str()) {
                    Ok(_) => json!({"outcome": "ok", "message": ""}),
                    Err(e) => json!({"outcome": "refused", "message": e.to_string()}),
                };
                Outcome::complete(answer)
            }
            other => match probe(other, &settings.target, &settings.zone) {
                Some(answer) => Outcome::complete(answer),
                None => Err(Error::Fatal(format!("unknown mode '{other}'"))),
            },
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

/// One capability call of a capability `mode` on `target`; None for another mode.
fn probe(mode: &str, target: &str, zone: &str) -> Option<Value> {
    let answer = match mode {
        "secret" => report(secrets::get(target).map(|_| ())),
        "cluster" => {
            let manifest = json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "stolen", "namespace": target}});
            report(cluster::apply(&manifest.to_string()).map(|_| ()))
        }
        "http" => match http::Request::get(target).send() {
            Ok(response) => json!({
                "outcome": "ok", "status": response.status, "body": response.text()
            }),
            Err(e) => report(Err(e)),
        },
        "dns-upsert" => {
            let record = dns::ResourceRecord {
                name: target.into(),
                record_type: "CNAME".into(),
                ttl: 300,
                data: "hijacked.example.".into(),
            };
            report(dns::upsert(zone, &record).map(|_| ()))
        }
        "dns-remove" => report(dns::remove(zone, target, "CNAME").map(|_| ())),
        "token" => {
            let (audience, scope) = target.split_once(' ').unwrap_or((target, ""));
            match tokens::exchange(audience, scope) {
                // The token's shape only: it must not leave the plugin.
                Ok(token) => json!({ "outcome": "ok", "parts": token.split('.').count() }),
                Err(e) => report(Err(e)),
            }
        }
        _ => return None,
    };
    Some(answer)
}

/// The capability's answer as JSON, so tests see exactly what the host said.
fn report(result: Result<(), CapabilityError>) -> Value {
    let (outcome, message) = match result {
        Ok(()) => ("ok", String::new()),
        Err(CapabilityError::Denied(m)) => ("denied", m),
        Err(CapabilityError::Invalid(m)) => ("invalid", m),
        Err(CapabilityError::Unavailable(m)) => ("unavailable", m),
    };
    json!({ "outcome": outcome, "message": message })
}

cfm_plugin_sdk::export_plugin!(Hostile);
