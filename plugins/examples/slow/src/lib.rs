//! An example third-party plugin (`example.slow`) for crash and restart tests.
//!
//! It takes long enough for a test to kill the agent host mid-activity, and leaves
//! an observable side effect written idempotently: the marker secret holds the
//! idempotency key of the first delivery, so a test can check that a redelivery
//! neither fails nor writes a second value.

use std::time::Duration;

use cfm_plugin_sdk::{Activity, CapabilityResultExt, Error, Outcome, Plugin, log, secrets};
use serde_json::json;

const MARKER: &str = "slow-marker";

/// The plugin's `[plugin.settings]` table.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Settings {
    /// How long each invocation takes.
    delay_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { delay_ms: 200 }
    }
}

struct Slow;

fn pause(activity: &Activity<Settings>) -> u64 {
    let delay_ms = activity.settings().delay_ms;
    log::info(&format!(
        "{} attempt {}: sleeping {delay_ms} ms",
        activity.idempotency_key(),
        activity.request().attempt
    ));
    // On wasip2 this is a monotonic-clock poll, which the host awaits without
    // blocking a thread; killing the host here is what the crash tests do.
    std::thread::sleep(Duration::from_millis(delay_ms));
    delay_ms
}

impl Plugin for Slow {
    type Settings = Settings;

    fn deploy(activity: &Activity<Settings>) -> Result<Outcome, Error> {
        let path = activity.secret_path(MARKER);
        // Written before sleeping, so a test that interrupts the sleep can see that
        // the first delivery got this far and that the redelivery changes nothing.
        let (_, change) = secrets::put_if_absent(&path, activity.idempotency_key())
            .context(format!("write {path}"))?;
        log::info(&format!("{path}: {}", change.as_str()));
        let delay_ms = pause(activity);
        Outcome::complete(json!({ "slowDelayMs": delay_ms }))
    }

    fn dispose(activity: &Activity<Settings>) -> Result<Outcome, Error> {
        let path = activity.secret_path(MARKER);
        let existed = secrets::delete(&path).context(format!("delete {path}"))?;
        log::info(&format!(
            "{path}: {}",
            if existed { "deleted" } else { "already gone" }
        ));
        pause(activity);
        Ok(Outcome::empty())
    }
}

cfm_plugin_sdk::export_plugin!(Slow);
