//! The `log` capability: always linked, lands in the host's log inside the activity's span.

use super::Capabilities;
use crate::bindings::cfm::plugin::log::{Host, Level};

/// Longest message kept; a plugin cannot flood the log with one call.
const MAX_MESSAGE: usize = 4096;
/// Lines one invocation may log; the rest are counted, not written, so a chatty or
/// hostile plugin cannot drown the host's log or slow it down.
pub const MAX_LINES: u32 = 200;

/// The lines one invocation has logged, and those it lost to [`MAX_LINES`].
#[derive(Debug, Default)]
pub struct LogLines {
    written: u32,
    dropped: u32,
}

impl LogLines {
    /// Lines refused so far because the invocation had logged [`MAX_LINES`].
    pub fn dropped(&self) -> u32 {
        self.dropped
    }

    /// Whether one more line may be written; counts it either way.
    fn admit(&mut self) -> bool {
        if self.written >= MAX_LINES {
            self.dropped += 1;
            return false;
        }
        self.written += 1;
        true
    }
}

impl Host for Capabilities {
    async fn log(&mut self, level: Level, message: String) {
        if !self.log.admit() {
            return;
        }
        // Redacted whole, then cut: a token across the cut would leave a piece otherwise.
        let message = self.redact(&message);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capability::fixture::Fixture;
    use crate::grants::Grants;

    #[tokio::test]
    async fn lines_past_the_cap_are_dropped_and_counted() {
        let mut fixture = Fixture::new(Grants::default());
        let log = &mut fixture.capabilities;
        for i in 0..MAX_LINES {
            log.log(Level::Info, format!("line {i}")).await;
        }
        assert_eq!(log.logs_dropped(), 0);
        assert_eq!(log.log.written, MAX_LINES);
        for _ in 0..25 {
            log.log(Level::Error, "one too many".into()).await;
        }
        assert_eq!(log.logs_dropped(), 25);
        assert_eq!(log.log.written, MAX_LINES);
        // Logging is no capability call: nothing is audited.
        assert!(fixture.audit().is_empty());
    }

    #[tokio::test]
    async fn a_long_message_is_cut_on_a_character_boundary() {
        let mut fixture = Fixture::new(Grants::default());
        // Multi-byte characters straddle the cut; slicing inside one would panic.
        let long = "é".repeat(MAX_MESSAGE);
        fixture.capabilities.log(Level::Warn, long).await;
        assert_eq!(fixture.capabilities.log.written, 1);
    }
}
