//! What an invocation comes to: the plugin's result checked against its limits and the
//! contract, or its failure turned into a reason the engine can act on.

use std::time::Duration;

use cfm_protocol::ActivityOutcome;
use serde_json::Value;

use super::invoke::Failure;
use super::load::LoadedPlugin;
use crate::bindings::cfm::plugin::types::ActivityResult;
use crate::capability::Capabilities;

/// Longest reason or error text handed on to the engine.
const MAX_REASON: usize = 2048;

/// The outcome of an invocation that ended within its budget.
pub(super) fn of_run(
    plugin: &LoadedPlugin,
    ran: Result<ActivityResult, Failure>,
    capabilities: &Capabilities,
) -> ActivityOutcome {
    match ran {
        Ok(result) => outcome(plugin, result, capabilities),
        // Instantiation fails for want of resources (pool slots): worth another try.
        Err(Failure::Instantiate(e)) => ActivityOutcome::Retry {
            reason: truncate(format!(
                "cannot instantiate plugin '{}': {e:#}",
                plugin.name
            )),
        },
        Err(Failure::Call(e)) => ActivityOutcome::Fatal {
            reason: truncate(describe_trap(&plugin.name, &e)),
        },
    }
}

/// An invocation that outran its budget may finish on another try.
pub(super) fn timed_out(plugin: &LoadedPlugin, budget: Duration) -> ActivityOutcome {
    ActivityOutcome::Retry {
        reason: format!(
            "plugin '{}' did not finish within {} ms",
            plugin.name,
            budget.as_millis()
        ),
    }
}

/// Checks what a plugin returned against its limits and the contract. No token the
/// invocation used leaves: reasons have them redacted (before they are cut, so no part of
/// one is left either), and an output or state holding one fails the activity, since it
/// would be stored and shown.
fn outcome(
    plugin: &LoadedPlugin,
    result: ActivityResult,
    capabilities: &Capabilities,
) -> ActivityOutcome {
    let leaked = |what: &str| ActivityOutcome::Fatal {
        reason: format!(
            "plugin '{}' put an access token in its {what}; tokens never leave a plugin",
            plugin.name
        ),
    };
    let max = plugin.limits.max_output_kib as usize * 1024;
    let object = |what: &str, json: &str| -> Result<Value, String> {
        if json.len() > max {
            return Err(format!(
                "plugin '{}' returned {} bytes of {what}, over its limit of {max}",
                plugin.name,
                json.len()
            ));
        }
        serde_json::from_str(json).map_err(|e| {
            format!(
                "plugin '{}' returned {what} that is not JSON: {e}",
                plugin.name
            )
        })
    };
    match result {
        ActivityResult::Complete(json) if capabilities.holds_token(&json) => leaked("output"),
        ActivityResult::Reschedule(r) if capabilities.holds_token(&r.state) => {
            leaked("reschedule state")
        }
        ActivityResult::Complete(json) => match object("output", &json) {
            Ok(Value::Object(output)) => ActivityOutcome::Complete {
                output: match capabilities.drift() {
                    Some(drift) => drift.into_output(output),
                    None => output,
                },
            },
            Ok(_) => ActivityOutcome::Fatal {
                reason: format!(
                    "plugin '{}' returned output that is not a JSON object",
                    plugin.name
                ),
            },
            Err(reason) => ActivityOutcome::Fatal { reason },
        },
        ActivityResult::Reschedule(_)
            if capabilities
                .drift()
                .is_some_and(|drift| !drift.findings().is_empty()) =>
        {
            ActivityOutcome::Fatal {
                reason: format!(
                    "plugin '{}' rescheduled a verify after finding drift: what one invocation finds is not carried to the next, so a verify must finish in the invocation that found it",
                    plugin.name
                ),
            }
        }
        ActivityResult::Reschedule(r) => match object("reschedule state", &r.state) {
            Ok(state) => ActivityOutcome::Reschedule {
                delay_ms: r.delay_ms,
                state,
            },
            Err(reason) => ActivityOutcome::Fatal { reason },
        },
        ActivityResult::Retry(reason) => ActivityOutcome::Retry {
            reason: truncate(capabilities.redact(&reason)),
        },
        ActivityResult::Fatal(reason) => ActivityOutcome::Fatal {
            reason: truncate(capabilities.redact(&reason)),
        },
    }
}

fn describe_trap(plugin: &str, error: &wasmtime::Error) -> String {
    // A failed memory grow shows only in the error chain, not as a `Trap`; the wasm
    // backtrace is for the log, the engine gets the cause.
    tracing::debug!("plugin '{plugin}' trapped: {error:?}");
    if error
        .chain()
        .any(|c| c.to_string().contains("growing memory"))
    {
        return format!("plugin '{plugin}' exceeded its memory limit");
    }
    let cause = error
        .downcast_ref::<wasmtime::Trap>()
        .map(ToString::to_string)
        .unwrap_or_else(|| error.root_cause().to_string());
    format!("plugin '{plugin}' trapped: {cause}")
}

fn truncate(mut text: String) -> String {
    if text.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_reasons_are_cut_on_a_character_boundary() {
        assert_eq!(truncate("short".into()), "short");
        let cut = truncate("é".repeat(MAX_REASON));
        assert!(cut.ends_with('…'), "{cut}");
        assert!(cut.len() <= MAX_REASON + '…'.len_utf8());
    }

    #[test]
    fn a_trap_is_described_by_its_cause() {
        let trap = wasmtime::Error::from(wasmtime::Trap::UnreachableCodeReached);
        assert_eq!(
            describe_trap("p", &trap),
            format!(
                "plugin 'p' trapped: {}",
                wasmtime::Trap::UnreachableCodeReached
            )
        );
        let grow = wasmtime::Error::msg("growing memory failed").context("calling execute");
        assert_eq!(
            describe_trap("p", &grow),
            "plugin 'p' exceeded its memory limit"
        );
    }
}
