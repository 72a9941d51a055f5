//! The `log` capability: always linked, lands in the host's log inside the activity's span.

use crate::bindings::cfm::plugin::log::{Host, Level};
use crate::runtime::Invocation;

/// Longest message kept; a plugin cannot flood the log with one call.
const MAX_MESSAGE: usize = 4096;
/// Lines one invocation may log; the rest are counted, not written, so a chatty or
/// hostile plugin cannot drown the host's log or slow it down.
pub const MAX_LINES: u32 = 200;

impl Host for Invocation {
    async fn log(&mut self, level: Level, message: String) {
        if self.log_lines >= MAX_LINES {
            self.logs_dropped += 1;
            return;
        }
        self.log_lines += 1;
        let mut end = message.len().min(MAX_MESSAGE);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let message = &message[..end];
        let plugin = &*self.calls.plugin;
        match level {
            Level::Debug => tracing::debug!(target: "cfm::plugin", plugin, "{message}"),
            Level::Info => tracing::info!(target: "cfm::plugin", plugin, "{message}"),
            Level::Warn => tracing::warn!(target: "cfm::plugin", plugin, "{message}"),
            Level::Error => tracing::error!(target: "cfm::plugin", plugin, "{message}"),
        }
    }
}
