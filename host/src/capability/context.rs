//! The context capability calls run in: who is calling, under which grants, and the
//! state each capability keeps for one invocation. The host's store data owns one
//! [`Capabilities`] and links every capability interface through it, so a capability
//! never sees the wasm store and can be exercised without one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use cfm_protocol::CapabilityCall;
use tracing::Instrument;

use super::dry_run::DriftLog;
use super::http::{OutboundHttp, PluginHttp};
use super::log::LogLines;
use super::{BackendError, Backends};
use crate::audit::{Audit, AuditEvent, Decision, Effect};
use crate::bindings::cfm::plugin::types::{CapabilityError, Change};
use crate::grants::{Capability, ScopedGrants};

/// What the capabilities of one invocation hold: the call context every call is checked
/// and audited in, and what `log` and `http` keep between calls.
pub struct Capabilities {
    pub(super) calls: Arc<CallContext>,
    pub(super) log: LogLines,
    http: OutboundHttp,
}

impl Capabilities {
    /// `http` is the plugin's client when it has an `http` grant.
    pub fn new(calls: CallContext, http: Option<PluginHttp>) -> Self {
        let calls = Arc::new(calls);
        Self {
            http: OutboundHttp::new(calls.clone(), http),
            calls,
            log: LogLines::default(),
        }
    }

    /// `text` with every token used in this invocation replaced by `[token]`.
    pub fn redact(&self, text: &str) -> String {
        self.calls.redact(text)
    }

    /// In a verify, the drift its dry runs found.
    pub fn drift(&self) -> Option<&DriftLog> {
        self.calls.drift.as_deref()
    }

    /// Whether `text` holds a token used in this invocation.
    pub fn holds_token(&self, text: &str) -> bool {
        self.calls
            .tokens()
            .iter()
            .any(|token| text.contains(token.as_str()))
    }

    /// The calls this invocation reports with its outcome, taken: what a participant's
    /// capability calls are made of ([`CallContext::reported`]).
    pub fn take_reported_calls(&self) -> Vec<CapabilityCall> {
        std::mem::take(&mut *lock(&self.calls.reported))
    }

    /// Log lines dropped because the invocation went past [`super::log::MAX_LINES`].
    pub fn logs_dropped(&self) -> u32 {
        self.log.dropped()
    }

    /// The `wasi:http` hooks every outbound request of this invocation passes.
    pub fn http(&mut self) -> &mut OutboundHttp {
        &mut self.http
    }
}

/// Who is calling: the context every capability call is checked and audited in.
pub struct CallContext {
    /// The plugin making the calls.
    pub plugin: Arc<str>,
    /// The orchestration the invocation belongs to.
    pub orchestration_id: String,
    /// The activity within that orchestration.
    pub activity_id: String,
    /// The activity type the plugin runs for.
    pub activity_type: String,
    /// The participant context the invocation works for.
    pub participant_context_id: String,
    /// The invocation's idempotency key, shared by its redeliveries.
    pub idempotency_key: String,
    /// The plugin's grants, resolved for `participant_context_id`.
    pub grants: ScopedGrants,
    /// Where granted calls end.
    pub backends: Backends,
    /// Where decisions are recorded.
    pub audit: Audit,
    /// Refusals audited so far in this invocation (see [`MAX_AUDITED_DENIALS`]).
    pub denials: AtomicU32,
    /// Capability calls traced so far in this invocation (see [`MAX_CALL_SPANS`]).
    pub spans: AtomicU32,
    /// The tokens this invocation used: handed to the plugin, or attached by the host for
    /// it. None may leave in a log line, an output or an error.
    pub used_tokens: std::sync::Mutex<Vec<String>>,
    /// In a verify, where the dry runs of `backends` record drift: writes change nothing
    /// and outbound requests may only read.
    pub drift: Option<Arc<DriftLog>>,
    /// The audited calls reported with the outcome, up to [`MAX_REPORTED_CALLS`]. A
    /// verify's allowed dry-run writes are left out: they changed nothing, and a fleet
    /// verified every few hours would otherwise fill the managers' tables with them.
    pub reported: std::sync::Mutex<Vec<CapabilityCall>>,
}

/// Refusals one invocation may leave in the audit log. A refusal costs the guest no I/O,
/// so a plugin looping on them could otherwise fill the disk within its time limit; past
/// this, one last record says the rest went unrecorded, and the refusals go on.
pub const MAX_AUDITED_DENIALS: u32 = 100;

/// Calls one invocation reports with its outcome: a plugin writing in a loop would
/// otherwise grow the report past what a queue message may carry. Past this, one last
/// record says the rest went unreported (the audit log has them, up to its own cap on
/// refusals).
pub const MAX_REPORTED_CALLS: usize = 200;

/// Capability calls of one invocation traced as spans of their own.
pub const MAX_CALL_SPANS: u32 = 200;

impl CallContext {
    /// Remembers `token` as used by this invocation (see [`CallContext::used_tokens`]).
    pub(super) fn used(&self, token: &str) {
        let mut tokens = self.tokens();
        if !token.is_empty() && !tokens.iter().any(|t| t == token) {
            tokens.push(token.to_string());
        }
    }

    fn tokens(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        lock(&self.used_tokens)
    }

    /// Runs `call` if `allowed`, auditing the decision and, for writes, what changed.
    pub(super) async fn guarded<T, F>(
        &self,
        capability: Capability,
        operation: &'static str,
        target: &str,
        allowed: bool,
        call: F,
    ) -> Result<T, CapabilityError>
    where
        F: std::future::Future<Output = Result<T, BackendError>>,
        T: Audited,
    {
        let span = self.span(capability, operation, Some(target));
        async {
            if !allowed {
                self.record(capability, operation, target, Decision::Denied);
                return Err(CapabilityError::Denied(format!(
                    "{capability} {operation} on '{target}' is outside this plugin's grants"
                )));
            }
            let value = call.await.map_err(|e| {
                let error = self.shown(&e.to_string());
                tracing::Span::current().record("error", error);
                match e {
                    BackendError::Invalid(m) => CapabilityError::Invalid(m),
                    BackendError::Unavailable(m) => CapabilityError::Unavailable(m),
                }
            })?;
            match value.effect() {
                Some(effect) => {
                    self.record(capability, operation, target, Decision::Allowed(effect))
                }
                // Reads are not audited; their span still says how they went.
                None => {
                    tracing::Span::current().record("decision", "allowed");
                }
            }
            Ok(value)
        }
        .instrument(span)
        .await
    }

    /// Refuses a malformed call with `invalid`, saying why, and audits it as a denial:
    /// a traversal or an encoding trick is an attempt at something outside the grants.
    pub(super) fn invalid(
        &self,
        capability: Capability,
        operation: &'static str,
        raw_target: &str,
        message: String,
    ) -> CapabilityError {
        self.record(capability, operation, raw_target, Decision::Denied);
        CapabilityError::Invalid(message)
    }

    /// Writes one audit record in this call's context.
    pub(super) fn record(
        &self,
        capability: Capability,
        operation: &'static str,
        target: &str,
        decision: Decision,
    ) {
        // Counted before the audit's cap on refusals, so that a plugin hammering at its
        // grants shows as it is; a verify's dry-run writes changed nothing.
        let dry_run = self.drift.is_some();
        let changed_or_refused = decision == Decision::Denied || !dry_run;
        if changed_or_refused {
            cfm_metrics::metrics().capability_call(
                &self.plugin,
                capability.as_str(),
                decision != Decision::Denied,
            );
        }
        let span = tracing::Span::current();
        span.record("decision", decision.as_str());
        if let Some(effect) = decision.effect() {
            span.record("effect", effect);
        }
        let kept = self.shown(target);
        let mut target = kept.as_str();
        if decision == Decision::Denied {
            let seen = self.denials.fetch_add(1, Ordering::Relaxed);
            match seen.cmp(&MAX_AUDITED_DENIALS) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal => {
                    target = "(further refusals of this invocation are not audited)"
                }
                std::cmp::Ordering::Greater => return,
            }
        }
        if changed_or_refused {
            self.report(capability, operation, target, decision, dry_run);
        }
        self.audit.record(AuditEvent {
            plugin: &self.plugin,
            orchestration_id: &self.orchestration_id,
            activity_id: &self.activity_id,
            activity_type: &self.activity_type,
            participant_context_id: &self.participant_context_id,
            idempotency_key: &self.idempotency_key,
            capability: capability.as_str(),
            operation,
            target,
            decision,
            dry_run,
        });
    }

    /// The span of one capability call, inside the activity's: a trace shows what the
    /// plugin asked of which backend and what became of it (`decision`, `effect`, or the
    /// backend's `error`). `target` is left for later when the call has not named one yet.
    /// Past [`MAX_CALL_SPANS`] calls of the invocation, none: a plugin reading in a loop
    /// must not flood the exporter.
    pub(super) fn span(
        &self,
        capability: Capability,
        operation: &'static str,
        target: Option<&str>,
    ) -> tracing::Span {
        if self.spans.fetch_add(1, Ordering::Relaxed) >= MAX_CALL_SPANS {
            return tracing::Span::none();
        }
        let span = tracing::info_span!(
            "capability",
            capability = capability.as_str(),
            operation,
            target = tracing::field::Empty,
            decision = tracing::field::Empty,
            effect = tracing::field::Empty,
            error = tracing::field::Empty,
        );
        if let Some(target) = target
            && !span.is_disabled()
        {
            span.record("target", self.shown(target));
        }
        span
    }

    /// What the plugin passed (or a backend answered), fit to be recorded and shown: the
    /// tokens of this invocation redacted, control characters replaced, cut to
    /// [`MAX_AUDITED_TARGET`] bytes. A guest chooses what it passes; no record, span or
    /// terminal may be made to carry more.
    pub(super) fn shown(&self, raw: &str) -> String {
        // Redacting costs what it reads: only as much as can be kept, and any token
        // running over the cut, is.
        let longest = self.tokens().iter().map(String::len).max().unwrap_or(0);
        let head = &raw[..raw.floor_char_boundary(MAX_AUDITED_TARGET + longest)];
        let mut shown = cfm_protocol::printable(&self.redact(head), MAX_AUDITED_TARGET);
        if head.len() < raw.len() && !shown.ends_with('…') {
            shown.push('…');
        }
        shown
    }

    /// `text` with every token used in this invocation replaced by `[token]`.
    fn redact(&self, text: &str) -> String {
        self.tokens().iter().fold(text.to_string(), |text, token| {
            text.replace(token.as_str(), "[token]")
        })
    }

    /// Keeps one call for the outcome's report, up to [`MAX_REPORTED_CALLS`].
    fn report(
        &self,
        capability: Capability,
        operation: &'static str,
        target: &str,
        decision: Decision,
        dry_run: bool,
    ) {
        let mut reported = lock(&self.reported);
        let target = match reported.len().cmp(&MAX_REPORTED_CALLS) {
            std::cmp::Ordering::Less => target,
            std::cmp::Ordering::Equal => "(further calls of this invocation are not reported)",
            std::cmp::Ordering::Greater => return,
        };
        reported.push(CapabilityCall {
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            plugin: self.plugin.to_string(),
            capability: capability.as_str().to_string(),
            operation: operation.to_string(),
            target: target.to_string(),
            decision,
            dry_run,
        });
    }
}

/// A lock a panic elsewhere left poisoned still holds usable data.
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Longest raw target kept in an audit record: a guest chooses what it passes.
const MAX_AUDITED_TARGET: usize = 256;

/// What a successful call changed, if it was a write worth an audit record.
pub(super) trait Audited {
    fn effect(&self) -> Option<Effect>;
}

impl Audited for Change {
    fn effect(&self) -> Option<Effect> {
        Some(Effect::from(*self))
    }
}

/// Deletions answer whether something was there.
impl Audited for bool {
    fn effect(&self) -> Option<Effect> {
        Some(if *self {
            Effect::Deleted
        } else {
            Effect::Absent
        })
    }
}

impl Audited for (String, Change) {
    fn effect(&self) -> Option<Effect> {
        Some(Effect::from(self.1))
    }
}

/// An issued access credential (id, secret): each issue is a new secret.
impl Audited for (String, String) {
    fn effect(&self) -> Option<Effect> {
        Some(Effect::Created)
    }
}

/// Reads are not audited unless denied.
impl Audited for Option<String> {
    fn effect(&self) -> Option<Effect> {
        None
    }
}

impl From<Change> for Effect {
    fn from(change: Change) -> Self {
        match change {
            Change::Created => Effect::Created,
            Change::Updated => Effect::Updated,
            Change::Unchanged => Effect::Unchanged,
        }
    }
}
