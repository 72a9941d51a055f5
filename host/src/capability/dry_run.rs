//! Verify invocations (`cfm.orchestration.vpa.verify`): the plugin runs as it would deploy,
//! but every write is a dry run. Each backend is wrapped so that a write reads what is
//! there, answers what it would have changed (`created`, `updated`, `unchanged`; a deletion
//! whether something is there) and changes nothing; every answer other than `unchanged` is
//! a [`Finding`] of drift. Reads go through untouched. The grant checks in front of the
//! backends stay as they are: a verify may look only where its deploy may write.

use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::{Map, Value};

use super::cluster::{ClusterBackend, ObjectRef};
use super::dns::{DnsBackend, Record};
use super::secrets::SecretsBackend;
use super::{BackendError, Backends, Change};
use crate::audit::Effect;

/// The drift one verify invocation found: what the capabilities' dry runs would have
/// changed, in call order. Bounded: a plugin looping on writes cannot grow it.
#[derive(Default)]
pub struct DriftLog {
    findings: Mutex<Vec<Finding>>,
}

/// One write a verify would have made: the participant's effects differ there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    /// `secrets`, `cluster` or `dns`; `plugin` for what the plugin itself reported.
    pub capability: &'static str,
    /// The write that would have run (`put-if-absent`, `apply`, `upsert`, ...); `report`
    /// for the plugin's own findings.
    pub operation: &'static str,
    /// What it names: a secret path, `kind/namespace/name`, `name.zone TYPE`; for the
    /// plugin's own findings, its text.
    pub target: String,
    /// What the write would have done.
    pub change: Effect,
}

/// Most findings one invocation keeps; past it, one last finding says more were dropped.
pub const MAX_FINDINGS: usize = 50;

/// Longest text of a finding the plugin reports itself.
const MAX_REPORTED_TEXT: usize = 512;

impl DriftLog {
    /// Records a write that would have changed `target`; `unchanged` is no drift.
    fn found(
        &self,
        capability: &'static str,
        operation: &'static str,
        target: &str,
        change: Effect,
    ) {
        if change == Effect::Unchanged || change == Effect::Absent {
            return;
        }
        let mut findings = self.findings.lock().unwrap_or_else(|e| e.into_inner());
        if findings.len() <= MAX_FINDINGS {
            let target = if findings.len() == MAX_FINDINGS {
                "(further findings of this invocation were dropped)".to_string()
            } else {
                target.to_string()
            };
            findings.push(Finding {
                capability,
                operation,
                target,
                change,
            });
        }
    }

    /// The findings so far.
    pub fn findings(&self) -> Vec<Finding> {
        self.findings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `output` with `cfm.drift` set to every finding: the dry runs', then those the plugin
    /// reported itself under the same key (a list of texts). The key is the host's in a
    /// verify: whatever else the plugin put there is dropped.
    pub fn into_output(&self, mut output: Map<String, Value>) -> Map<String, Value> {
        let reported = output.remove(cfm_protocol::keys::DRIFT);
        for text in reported
            .as_ref()
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            let text: String = text.chars().take(MAX_REPORTED_TEXT).collect();
            self.found("plugin", "report", &text, Effect::Updated);
        }
        let findings = serde_json::to_value(self.findings()).unwrap_or_default();
        output.insert(cfm_protocol::keys::DRIFT.into(), findings);
        if let Some(Value::String(why)) = output.remove(cfm_protocol::keys::UNVERIFIED) {
            let why: String = why.chars().take(MAX_REPORTED_TEXT).collect();
            output.insert(cfm_protocol::keys::UNVERIFIED.into(), Value::String(why));
        }
        output
    }
}

impl Backends {
    /// These backends, already chosen for the invocation's cell ([`Backends::for_cell`]),
    /// with every write turned into a dry run recorded in `drift`.
    pub fn dry_run(self, drift: Arc<DriftLog>) -> Self {
        Self {
            secrets: Arc::new(DrySecrets {
                inner: self.secrets.clone(),
                drift: drift.clone(),
            }),
            cluster: Arc::new(DryCluster {
                inner: self.cluster.clone(),
                drift: drift.clone(),
            }),
            dns: Arc::new(DryDns {
                inner: self.dns.clone(),
                drift,
            }),
            // The cell's cluster was chosen already; none of these may be chosen after.
            cluster_per_cell: None,
            cluster_by_cell: Arc::default(),
            tokens: self.tokens,
        }
    }
}

struct DrySecrets {
    inner: Arc<dyn SecretsBackend>,
    drift: Arc<DriftLog>,
}

#[async_trait::async_trait]
impl SecretsBackend for DrySecrets {
    async fn get(&self, path: &str) -> Result<Option<String>, BackendError> {
        self.inner.get(path).await
    }

    async fn put_if_absent(
        &self,
        path: &str,
        value: &str,
    ) -> Result<(String, Change), BackendError> {
        let answer = match self.inner.get(path).await? {
            Some(existing) => (existing, Change::Unchanged),
            None => (value.to_string(), Change::Created),
        };
        self.drift
            .found("secrets", "put-if-absent", path, answer.1.into());
        Ok(answer)
    }

    async fn put(&self, path: &str, value: &str) -> Result<Change, BackendError> {
        let change = match self.inner.get(path).await? {
            Some(existing) if existing == value => Change::Unchanged,
            Some(_) => Change::Updated,
            None => Change::Created,
        };
        self.drift.found("secrets", "put", path, change.into());
        Ok(change)
    }

    async fn delete(&self, path: &str) -> Result<bool, BackendError> {
        let there = self.inner.get(path).await?.is_some();
        self.drift.found("secrets", "delete", path, deletion(there));
        Ok(there)
    }

    /// Issuing is a write with nothing to compare against: a plugin that issues access
    /// verifies in a `verify` of its own (the vault plugin checks the handed-over one).
    async fn issue_access(&self, folder: &str) -> Result<(String, String), BackendError> {
        Err(BackendError::Invalid(format!(
            "a verify cannot issue access to {folder}: issuing is a write; check what was issued instead"
        )))
    }

    async fn revoke_access(&self, folder: &str) -> Result<bool, BackendError> {
        Err(BackendError::Invalid(format!(
            "a verify cannot revoke access to {folder}: revoking is a write"
        )))
    }
}

struct DryCluster {
    inner: Arc<dyn ClusterBackend>,
    drift: Arc<DriftLog>,
}

#[async_trait::async_trait]
impl ClusterBackend for DryCluster {
    /// An apply changes nothing when every field the manifest sets already has that
    /// value: what the API server and the plugin add besides is not drift.
    async fn apply(&self, object: &ObjectRef, manifest: Value) -> Result<Change, BackendError> {
        let change = match self.inner.get(object).await? {
            None => Change::Created,
            Some(live) if contains(&live, &as_stored(&object.kind, manifest)) => Change::Unchanged,
            Some(_) => Change::Updated,
        };
        self.drift
            .found("cluster", "apply", &object.describe(), change.into());
        Ok(change)
    }

    async fn get(&self, object: &ObjectRef) -> Result<Option<Value>, BackendError> {
        self.inner.get(object).await
    }

    async fn delete(&self, object: &ObjectRef) -> Result<bool, BackendError> {
        let there = self.inner.get(object).await?.is_some();
        self.drift
            .found("cluster", "delete", &object.describe(), deletion(there));
        Ok(there)
    }
}

struct DryDns {
    inner: Arc<dyn DnsBackend>,
    drift: Arc<DriftLog>,
}

#[async_trait::async_trait]
impl DnsBackend for DryDns {
    async fn upsert(&self, zone: &str, record: Record) -> Result<Change, BackendError> {
        let target = format!("{}.{zone} {}", record.name, record.record_type);
        let change = self.inner.planned_upsert(zone, record).await?;
        self.drift.found("dns", "upsert", &target, change.into());
        Ok(change)
    }

    async fn remove(
        &self,
        zone: &str,
        name: &str,
        record_type: &str,
    ) -> Result<bool, BackendError> {
        let there = self.inner.planned_remove(zone, name, record_type).await?;
        let target = format!("{name}.{zone} {record_type}");
        self.drift.found("dns", "remove", &target, deletion(there));
        Ok(there)
    }

    async fn planned_upsert(&self, zone: &str, record: Record) -> Result<Change, BackendError> {
        self.inner.planned_upsert(zone, record).await
    }

    async fn planned_remove(
        &self,
        zone: &str,
        name: &str,
        record_type: &str,
    ) -> Result<bool, BackendError> {
        self.inner.planned_remove(zone, name, record_type).await
    }
}

fn deletion(there: bool) -> Effect {
    if there {
        Effect::Deleted
    } else {
        Effect::Absent
    }
}

/// `manifest` as the API server keeps it: a Secret's write-only `stringData` is stored
/// base64-encoded under `data`.
fn as_stored(kind: &str, mut manifest: Value) -> Value {
    use base64::Engine as _;
    if kind != "Secret" {
        return manifest;
    }
    let Some(object) = manifest.as_object_mut() else {
        return manifest;
    };
    if let Some(Value::Object(plain)) = object.remove("stringData") {
        let data = object
            .entry("data")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(data) = data {
            for (key, value) in plain {
                let text = value.as_str().map(str::to_string).unwrap_or_default();
                let encoded = base64::engine::general_purpose::STANDARD.encode(text);
                data.insert(key, Value::String(encoded));
            }
        }
    }
    manifest
}

/// Whether `live` has every field `wanted` sets, with the same value; lists must match
/// item by item. Recursion is bounded: manifests arrive as parsed JSON, whose parser
/// stops at 128 levels.
fn contains(live: &Value, wanted: &Value) -> bool {
    match (live, wanted) {
        (Value::Object(live), Value::Object(wanted)) => wanted
            .iter()
            .all(|(key, value)| live.get(key).is_some_and(|l| contains(l, value))),
        (Value::Array(live), Value::Array(wanted)) => {
            live.len() == wanted.len() && live.iter().zip(wanted).all(|(l, w)| contains(l, w))
        }
        (live, wanted) => live == wanted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_live_object_contains_what_its_manifest_sets() {
        let live = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "namespace": "n", "resourceVersion": "7"},
            "data": {"x": "1", "y": "2"}});
        let same = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "namespace": "n"}, "data": {"x": "1", "y": "2"}});
        assert!(contains(&live, &same));
        let changed = json!({"metadata": {"name": "a"}, "data": {"x": "2"}});
        assert!(!contains(&live, &changed));
        let added = json!({"data": {"z": "3"}});
        assert!(!contains(&live, &added));
    }

    #[test]
    fn a_secrets_string_data_compares_as_the_server_stores_it() {
        let manifest = json!({"kind": "Secret", "stringData": {"k": "v"}});
        let live = json!({"kind": "Secret", "data": {"k": "dg=="}});
        assert!(contains(&live, &as_stored("Secret", manifest.clone())));
        let other = json!({"kind": "Secret", "data": {"k": "dw=="}});
        assert!(!contains(&other, &as_stored("Secret", manifest)));
    }

    #[test]
    fn findings_are_bounded_and_unchanged_is_no_drift() {
        let log = DriftLog::default();
        log.found("dns", "upsert", "a.z A", Effect::Unchanged);
        log.found("dns", "remove", "a.z A", Effect::Absent);
        assert!(log.findings().is_empty());
        for i in 0..MAX_FINDINGS + 10 {
            log.found("secrets", "put", &format!("p/{i}"), Effect::Created);
        }
        let findings = log.findings();
        assert_eq!(findings.len(), MAX_FINDINGS + 1);
        assert!(findings[MAX_FINDINGS].target.contains("dropped"));
    }

    #[tokio::test]
    async fn a_verifys_writes_change_nothing_and_report_what_differs() {
        use crate::bindings::cfm::plugin::cluster::Host as _;
        use crate::bindings::cfm::plugin::dns::{Host as _, ResourceRecord};
        use crate::bindings::cfm::plugin::secrets::Host as _;
        use crate::bindings::cfm::plugin::types::CapabilityError;
        use crate::capability::fixture::Fixture;
        use crate::grants::{ClusterGrant, DnsGrant, Grants};

        let grants = Grants {
            secrets: vec!["participants/{participantContextId}/**".into()],
            cluster: Some(ClusterGrant {
                namespaces: vec!["cfm-{participantContextId}".into()],
                kinds: vec!["ConfigMap".into()],
            }),
            dns: Some(DnsGrant {
                zones: vec!["z.example".into()],
                names: vec!["{participantContextId}".into(), "gone".into()],
                record_types: vec!["*".into()],
            }),
            ..Default::default()
        };
        let mut fixture = Fixture::new(grants.clone());
        let config_map = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "namespace": "cfm-p1"}, "data": {"k": "v"}})
        .to_string();
        let record = || ResourceRecord {
            name: "p1".into(),
            record_type: "CNAME".into(),
            ttl: 60,
            data: "cell.example.".into(),
        };
        // As deployed: the key and the record; the ConfigMap is missing.
        let live = &mut fixture.capabilities;
        live.put_if_absent("participants/p1/key".into(), "k1".into())
            .await
            .unwrap();
        live.upsert("z.example".into(), record()).await.unwrap();

        let drift = Arc::new(DriftLog::default());
        let mut verify = fixture.verifying(&grants, drift.clone());
        let kept = verify
            .put_if_absent("participants/p1/key".into(), "k2".into())
            .await
            .unwrap();
        assert_eq!(kept, ("k1".to_string(), Change::Unchanged));
        let changed = verify
            .put("participants/p1/key".into(), "k3".into())
            .await
            .unwrap();
        assert_eq!(changed, Change::Updated);
        assert_eq!(
            verify.apply(config_map.clone()).await.unwrap(),
            Change::Created
        );
        assert_eq!(
            verify.upsert("z.example".into(), record()).await.unwrap(),
            Change::Unchanged
        );
        assert!(
            !verify
                .remove("z.example".into(), "gone".into(), "A".into())
                .await
                .unwrap()
        );
        // Nothing was written.
        let live = &mut fixture.capabilities;
        let key =
            crate::bindings::cfm::plugin::secrets::Host::get(live, "participants/p1/key".into())
                .await
                .unwrap();
        assert_eq!(key.as_deref(), Some("k1"));
        let object = crate::bindings::cfm::plugin::cluster::Host::get(
            live,
            "ConfigMap".into(),
            "cfm-p1".into(),
            "c".into(),
        )
        .await
        .unwrap();
        assert_eq!(object, None);

        let findings: Vec<(String, Effect)> = drift
            .findings()
            .into_iter()
            .map(|f| {
                (
                    format!("{} {} {}", f.capability, f.operation, f.target),
                    f.change,
                )
            })
            .collect();
        assert_eq!(
            findings,
            [
                (
                    "secrets put participants/p1/key".to_string(),
                    Effect::Updated
                ),
                (
                    "cluster apply ConfigMap/cfm-p1/c".to_string(),
                    Effect::Created
                ),
            ]
        );
        let audited = fixture.last_audit();
        assert_eq!(audited["dryRun"], true, "{audited}");
        // Issuing and revoking access are writes with nothing to compare: refused.
        let issue = verify.issue_access("participants/p1".into()).await;
        assert!(matches!(issue, Err(CapabilityError::Invalid(m)) if m.contains("verify")));
        let revoke = verify.revoke_access("participants/p1".into()).await;
        assert!(matches!(revoke, Err(CapabilityError::Invalid(m)) if m.contains("verify")));
        // Applied for real, the same manifest verifies unchanged.
        fixture
            .capabilities
            .apply(config_map.clone())
            .await
            .unwrap();
        let again = Arc::new(DriftLog::default());
        let mut verify = fixture.verifying(&grants, again.clone());
        assert_eq!(verify.apply(config_map).await.unwrap(), Change::Unchanged);
        assert!(again.findings().is_empty());
    }

    #[test]
    fn the_plugins_own_findings_join_the_dry_runs() {
        let log = DriftLog::default();
        log.found(
            "secrets",
            "put-if-absent",
            "participants/p/api-key",
            Effect::Created,
        );
        let output = json!({"vaultPath": "participants/p", "cfm.drift": ["handover missing", 3]});
        let output = log.into_output(output.as_object().unwrap().clone());
        assert_eq!(output["vaultPath"], "participants/p");
        assert_eq!(
            output["cfm.drift"],
            json!([
                {"capability": "secrets", "operation": "put-if-absent",
                 "target": "participants/p/api-key", "change": "created"},
                {"capability": "plugin", "operation": "report",
                 "target": "handover missing", "change": "updated"}
            ])
        );
    }
}
