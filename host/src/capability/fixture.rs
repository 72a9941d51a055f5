//! What the capabilities' unit tests share: the capabilities of one invocation on the
//! embedded backends in a temporary folder, and the audit log they write, read back.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;
use tempfile::TempDir;

use super::dry_run::DriftLog;
use super::http::PluginHttp;
use super::{Backends, CallContext, Capabilities};
use crate::audit::Audit;
use crate::bindings::cfm::plugin::types::CapabilityError;
use crate::grants::Grants;

/// The participant context every fixture invocation works for.
pub const PARTICIPANT: &str = "p1";

pub struct Fixture {
    data: TempDir,
    pub capabilities: Capabilities,
}

impl Fixture {
    /// An invocation for [`PARTICIPANT`] under `grants`, set up as the runtime does it.
    pub fn new(grants: Grants) -> Self {
        Self::with_backends(grants, |backends| backends)
    }

    /// The same, on the embedded backends as `adapt` changes them.
    pub fn with_backends(grants: Grants, adapt: impl FnOnce(Backends) -> Backends) -> Self {
        let data = tempfile::tempdir().unwrap();
        let http = grants
            .http
            .as_ref()
            .map(|grant| PluginHttp::new(grant).unwrap());
        let backends = adapt(Backends::embedded(data.path()));
        Self {
            capabilities: Capabilities::new(calls(&data, &grants, backends, None), http),
            data,
        }
    }

    /// The capabilities of a verify under `grants` on the same backends and audit log: every
    /// write a dry run, recorded in `drift`.
    pub fn verifying(&self, grants: &Grants, drift: Arc<DriftLog>) -> Capabilities {
        let backends = Backends::embedded(self.data.path()).dry_run(drift.clone());
        let http = grants
            .http
            .as_ref()
            .map(|grant| PluginHttp::new(grant).unwrap());
        Capabilities::new(calls(&self.data, grants, backends, Some(drift)), http)
    }

    /// Where the embedded backends keep `relative` (`secrets/...`, `cluster/...`, `dns/...`).
    pub fn stored(&self, relative: &str) -> PathBuf {
        self.data.path().join(relative)
    }

    /// Every audit record so far, oldest first.
    pub fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(self.data.path().join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// `refused` is a denial of `operation` on `target` by `capability`, and the last audit
    /// record says the same.
    pub fn assert_denied(
        &self,
        refused: CapabilityError,
        capability: &str,
        operation: &str,
        target: &str,
    ) {
        let CapabilityError::Denied(message) = refused else {
            panic!("not a denial: {refused:?}");
        };
        assert_eq!(
            message,
            format!("{capability} {operation} on '{target}' is outside this plugin's grants")
        );
        let record = self.last_audit();
        assert_eq!(record["capability"], capability);
        assert_eq!(record["operation"], operation);
        assert_eq!(record["target"], target);
        assert_eq!(record["decision"], "denied");
    }

    /// The most recent audit record; the test fails when there is none.
    pub fn last_audit(&self) -> Value {
        self.audit().pop().expect("an audit record")
    }
}

/// The call context of one invocation for [`PARTICIPANT`], auditing into `data`.
fn calls(
    data: &TempDir,
    grants: &Grants,
    backends: Backends,
    drift: Option<Arc<DriftLog>>,
) -> CallContext {
    CallContext {
        plugin: "under-test".into(),
        orchestration_id: "o1".into(),
        activity_id: "a1".into(),
        activity_type: "t".into(),
        participant_context_id: PARTICIPANT.into(),
        idempotency_key: "o1/a1".into(),
        grants: grants.scoped(PARTICIPANT),
        backends,
        audit: Audit::to_file(&data.path().join("audit.jsonl")).unwrap(),
        denials: Default::default(),
        spans: Default::default(),
        used_tokens: Default::default(),
        reported: Default::default(),
        drift,
    }
}
