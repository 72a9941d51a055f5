//! Capabilities a plugin can be granted: one module per WIT interface (and `http` for
//! `wasi:http`), each with its grant check (`mod.rs`) and its backends side by side.
//!
//! The grant check sits in front of every backend, so swapping the embedded backends
//! for Vault, Kubernetes or RFC 2136 later changes nothing a plugin may reach.

pub mod cluster;
pub mod dns;
pub mod files;
pub mod http;
pub mod log;
pub mod secrets;

use std::path::Path;
use std::sync::Arc;

use crate::audit::{Audit, AuditEvent, Decision, Effect};
use crate::bindings::cfm::plugin::types::CapabilityError;
/// What a write did; backends answer it.
pub use crate::bindings::cfm::plugin::types::Change;
use crate::grants::ScopedGrants;

/// The backends capability calls end in.
#[derive(Clone)]
pub struct Backends {
    pub secrets: Arc<dyn secrets::SecretsBackend>,
    pub cluster: Arc<dyn cluster::ClusterBackend>,
    pub dns: Arc<dyn dns::DnsBackend>,
}

impl Backends {
    /// The embedded backends: everything kept in files under `data_dir`.
    pub fn embedded(data_dir: &Path) -> Self {
        Self {
            secrets: Arc::new(secrets::embedded::EmbeddedSecrets::new(
                data_dir.join("secrets"),
            )),
            cluster: Arc::new(cluster::manifests::ManifestCluster::new(
                data_dir.join("cluster"),
            )),
            dns: Arc::new(dns::zonefile::ZoneFiles::new(data_dir.join("dns"))),
        }
    }

    /// The same, with secrets kept by `secrets` (Vault/OpenBao) instead.
    pub fn with_secrets(self, secrets: Arc<dyn secrets::SecretsBackend>) -> Self {
        Self { secrets, ..self }
    }

    /// The same, with cluster objects kept by `cluster` (the Kubernetes API) instead.
    pub fn with_cluster(self, cluster: Arc<dyn cluster::ClusterBackend>) -> Self {
        Self { cluster, ..self }
    }

    /// The same, with DNS records kept by `dns` (an authoritative server) instead.
    pub fn with_dns(self, dns: Arc<dyn dns::DnsBackend>) -> Self {
        Self { dns, ..self }
    }
}

/// Why a backend call failed, before it is handed to the plugin.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unavailable(String),
}

impl From<std::io::Error> for BackendError {
    fn from(e: std::io::Error) -> Self {
        BackendError::Unavailable(format!("storage error: {e}"))
    }
}

/// Who is calling: the context every capability call is checked and audited in.
pub struct CallContext {
    pub plugin: Arc<str>,
    pub orchestration_id: String,
    pub activity_id: String,
    pub activity_type: String,
    pub participant_context_id: String,
    pub idempotency_key: String,
    pub grants: ScopedGrants,
    pub backends: Backends,
    pub audit: Audit,
    /// Refusals audited so far in this invocation (see [`MAX_AUDITED_DENIALS`]).
    pub denials: std::sync::atomic::AtomicU32,
}

/// Refusals one invocation may leave in the audit log. A refusal costs the guest no I/O,
/// so a plugin looping on them could otherwise fill the disk within its time limit; past
/// this, one last record says the rest went unrecorded, and the refusals go on.
pub const MAX_AUDITED_DENIALS: u32 = 100;

impl CallContext {
    /// Runs `call` if `allowed`, auditing the decision and, for writes, what changed.
    async fn guarded<T, F>(
        &self,
        capability: &'static str,
        operation: &'static str,
        target: &str,
        allowed: bool,
        call: F,
    ) -> Result<T, CapabilityError>
    where
        F: std::future::Future<Output = Result<T, BackendError>>,
        T: Audited,
    {
        if !allowed {
            self.record(capability, operation, target, Decision::Denied);
            return Err(CapabilityError::Denied(format!(
                "{capability} {operation} on '{target}' is outside this plugin's grants"
            )));
        }
        let value = call.await.map_err(|e| match e {
            BackendError::Invalid(m) => CapabilityError::Invalid(m),
            BackendError::Unavailable(m) => CapabilityError::Unavailable(m),
        })?;
        if let Some(effect) = value.effect() {
            self.record(capability, operation, target, Decision::Allowed(effect));
        }
        Ok(value)
    }

    /// Refuses a malformed call with `invalid`, saying why, and audits it as a denial:
    /// a traversal or an encoding trick is an attempt at something outside the grants.
    fn invalid(
        &self,
        capability: &'static str,
        operation: &'static str,
        raw_target: &str,
        message: String,
    ) -> CapabilityError {
        self.record(capability, operation, raw_target, Decision::Denied);
        CapabilityError::Invalid(message)
    }

    /// Writes one audit record in this call's context.
    fn record(
        &self,
        capability: &'static str,
        operation: &'static str,
        target: &str,
        decision: Decision,
    ) {
        // A guest chooses what it passes: no record grows with it.
        let kept = bounded(target);
        let mut target = kept.as_str();
        if decision == Decision::Denied {
            let seen = self
                .denials
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match seen.cmp(&MAX_AUDITED_DENIALS) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal => {
                    target = "(further refusals of this invocation are not audited)"
                }
                std::cmp::Ordering::Greater => return,
            }
        }
        self.audit.record(AuditEvent {
            plugin: &self.plugin,
            orchestration_id: &self.orchestration_id,
            activity_id: &self.activity_id,
            activity_type: &self.activity_type,
            participant_context_id: &self.participant_context_id,
            idempotency_key: &self.idempotency_key,
            capability,
            operation,
            target,
            decision,
        });
    }
}

/// Longest raw target kept in an audit record: a guest chooses what it passes.
const MAX_AUDITED_TARGET: usize = 256;

/// `raw` cut to [`MAX_AUDITED_TARGET`] bytes, so a guest cannot bloat the audit log.
fn bounded(raw: &str) -> String {
    if raw.len() <= MAX_AUDITED_TARGET {
        return raw.to_string();
    }
    let mut end = MAX_AUDITED_TARGET;
    while !raw.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &raw[..end])
}

/// What a successful call changed, if it was a write worth an audit record.
trait Audited {
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
