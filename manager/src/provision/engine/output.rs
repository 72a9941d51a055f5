//! What the engine keeps of an activity's output.

use cfm_protocol::{ActivityOutcome, keys};
use serde_json::Value;

/// An output the server will not keep turns the outcome fatal. One naming a key the server
/// owns: a plugin that could write `cfm.participant.contextId` would choose whose data the
/// next activity touches. One holding U+0000: PostgreSQL cannot keep it in a JSON document,
/// so applying it would fail, and the report would come back for ever.
pub(super) fn refuse_unfit_output(outcome: ActivityOutcome) -> ActivityOutcome {
    let ActivityOutcome::Complete { output } = outcome else {
        return outcome;
    };
    let reason = if let Some(key) = output.keys().find(|k| keys::is_server_owned(k)) {
        format!(
            "its output names '{key}', a key the server owns ({}*): an activity may not change whom an orchestration works for",
            keys::SERVER_OWNED_PREFIXES.join("*, ")
        )
    } else if output
        .iter()
        .any(|(key, value)| key.contains('\0') || holds_nul(value))
    {
        "its output holds U+0000, which no backend stores".to_string()
    } else {
        return ActivityOutcome::Complete { output };
    };
    ActivityOutcome::Fatal { reason }
}

/// Whether a JSON value holds U+0000 anywhere. Recursion is bounded: outputs arrive as
/// parsed JSON, whose parser stops at 128 levels.
pub(crate) fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}
