//! The `cluster` capability: grant check in front of a Kubernetes-style object store
//! (manifests in a folder, or the Kubernetes API).

pub mod kubernetes;
pub mod manifests;

use serde_json::Value;

use super::{BackendError, Capabilities};
use crate::bindings::cfm::plugin::cluster::Host;
use crate::bindings::cfm::plugin::types::{CapabilityError, Change};
use crate::grants::Capability;

/// Where an object lives: `Namespace` objects are cluster-scoped, everything else is namespaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    /// The object's kind (`ConfigMap`, `Namespace`, ...).
    pub kind: String,
    /// Its namespace; empty for a `Namespace`, which is cluster-scoped.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl ObjectRef {
    /// The namespace a grant is checked against: a `Namespace` object by its own name.
    pub fn grant_namespace(&self) -> &str {
        if self.kind == "Namespace" {
            &self.name
        } else {
            &self.namespace
        }
    }

    /// `kind/namespace/name`, as audit records and messages name the object.
    pub fn describe(&self) -> String {
        format!("{}/{}/{}", self.kind, self.namespace, self.name)
    }

    /// Validates names the way the API server does (DNS labels / subdomains).
    pub fn new(kind: &str, namespace: &str, name: &str) -> Result<Self, BackendError> {
        let invalid = |m: String| Err(BackendError::Invalid(m));
        if kind.is_empty() || kind.len() > 63 || !kind.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return invalid(format!("'{kind}' is not a valid kind"));
        }
        if !is_dns_subdomain(name) {
            return invalid(format!("'{name}' is not a valid object name"));
        }
        let namespace = if kind == "Namespace" {
            if !is_dns_label(name) {
                return invalid(format!("'{name}' is not a valid namespace name"));
            }
            String::new()
        } else {
            if !is_dns_label(namespace) {
                return invalid(format!(
                    "{kind} '{name}' needs a valid metadata.namespace, got '{namespace}'"
                ));
            }
            namespace.to_string()
        };
        Ok(Self {
            kind: kind.to_string(),
            namespace,
            name: name.to_string(),
        })
    }

    /// Reads the identity of a JSON manifest.
    pub fn of_manifest(manifest: &Value) -> Result<Self, BackendError> {
        let field = |ptr: &str| manifest.pointer(ptr).and_then(Value::as_str);
        if field("/apiVersion").is_none_or(str::is_empty) {
            return Err(BackendError::Invalid(
                "the manifest has no apiVersion".into(),
            ));
        }
        let kind = field("/kind")
            .ok_or_else(|| BackendError::Invalid("the manifest has no kind".into()))?;
        let name = field("/metadata/name")
            .ok_or_else(|| BackendError::Invalid("the manifest has no metadata.name".into()))?;
        Self::new(kind, field("/metadata/namespace").unwrap_or(""), name)
    }
}

/// A store of Kubernetes objects.
#[async_trait::async_trait]
pub trait ClusterBackend: Send + Sync {
    /// Creates or updates `object` from `manifest`, saying which, or that nothing changed.
    async fn apply(&self, object: &ObjectRef, manifest: Value) -> Result<Change, BackendError>;
    /// The object as JSON; None when it does not exist.
    async fn get(&self, object: &ObjectRef) -> Result<Option<Value>, BackendError>;
    /// Deletes the object; false when it did not exist.
    async fn delete(&self, object: &ObjectRef) -> Result<bool, BackendError>;
}

impl Host for Capabilities {
    async fn apply(&mut self, manifest: String) -> Result<Change, CapabilityError> {
        let refuse = |target: &str, why: String| {
            self.calls
                .invalid(Capability::Cluster, "apply", target, why)
        };
        let manifest: Value = serde_json::from_str(&manifest)
            .map_err(|e| refuse("(not JSON)", format!("the manifest is not JSON: {e}")))?;
        let object = ObjectRef::of_manifest(&manifest)
            .map_err(|e| refuse(&claimed_object(&manifest), e.to_string()))?;
        let allowed = self.allows_object(&object);
        let backend = self.calls.backends.cluster.clone();
        self.calls
            .guarded(
                Capability::Cluster,
                "apply",
                &object.describe(),
                allowed,
                backend.apply(&object, manifest),
            )
            .await
    }

    async fn get(
        &mut self,
        kind: String,
        namespace: String,
        name: String,
    ) -> Result<Option<String>, CapabilityError> {
        let target = format!("{kind}/{namespace}/{name}");
        let object = ObjectRef::new(&kind, &namespace, &name).map_err(|e| {
            self.calls
                .invalid(Capability::Cluster, "get", &target, e.to_string())
        })?;
        let allowed = self.allows_object(&object);
        let backend = self.calls.backends.cluster.clone();
        let read = async move { Ok(backend.get(&object).await?.map(|v| v.to_string())) };
        self.calls
            .guarded(Capability::Cluster, "get", &target, allowed, read)
            .await
    }

    async fn delete(
        &mut self,
        kind: String,
        namespace: String,
        name: String,
    ) -> Result<bool, CapabilityError> {
        let object = ObjectRef::new(&kind, &namespace, &name).map_err(|e| {
            let target = format!("{kind}/{namespace}/{name}");
            self.calls
                .invalid(Capability::Cluster, "delete", &target, e.to_string())
        })?;
        let allowed = self.allows_object(&object);
        let backend = self.calls.backends.cluster.clone();
        self.calls
            .guarded(
                Capability::Cluster,
                "delete",
                &object.describe(),
                allowed,
                backend.delete(&object),
            )
            .await
    }
}

impl Capabilities {
    fn allows_object(&self, object: &ObjectRef) -> bool {
        self.calls
            .grants
            .allows_cluster(&object.kind, object.grant_namespace())
    }
}

/// `kind/namespace/name` as a manifest that failed validation claims them, for the audit.
fn claimed_object(manifest: &Value) -> String {
    let field = |ptr: &str| manifest.pointer(ptr).and_then(Value::as_str).unwrap_or("");
    format!(
        "{}/{}/{}",
        field("/kind"),
        field("/metadata/namespace"),
        field("/metadata/name")
    )
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capability::fixture::Fixture;
    use crate::grants::{ClusterGrant, Grants};
    use serde_json::json;

    fn granted() -> Fixture {
        Fixture::new(Grants {
            cluster: Some(ClusterGrant {
                namespaces: vec!["cfm-{participantContextId}".into()],
                kinds: vec!["ConfigMap".into()],
            }),
            ..Default::default()
        })
    }

    fn config_map(namespace: &str) -> String {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "ctx", "namespace": namespace}, "data": {"k": "v"}})
        .to_string()
    }

    #[tokio::test]
    async fn a_granted_object_reaches_the_cluster() {
        let mut fixture = granted();
        let cluster = &mut fixture.capabilities;
        assert_eq!(
            cluster.apply(config_map("cfm-p1")).await.unwrap(),
            Change::Created
        );
        assert_eq!(
            cluster.apply(config_map("cfm-p1")).await.unwrap(),
            Change::Unchanged
        );
        let read = cluster
            .get("ConfigMap".into(), "cfm-p1".into(), "ctx".into())
            .await
            .unwrap()
            .expect("the applied object");
        let read: Value = serde_json::from_str(&read).unwrap();
        assert_eq!(read["data"]["k"], "v");
        assert!(fixture.stored("cluster/cfm-p1/ConfigMap/ctx.yaml").exists());
        let record = fixture.last_audit();
        assert_eq!(record["capability"], "cluster");
        assert_eq!(record["operation"], "apply");
        assert_eq!(record["target"], "ConfigMap/cfm-p1/ctx");
        assert_eq!(record["effect"], "unchanged");
        assert!(
            fixture
                .capabilities
                .delete("ConfigMap".into(), "cfm-p1".into(), "ctx".into())
                .await
                .unwrap()
        );
        assert!(!fixture.stored("cluster/cfm-p1/ConfigMap/ctx.yaml").exists());
    }

    #[tokio::test]
    async fn another_namespace_or_kind_is_denied_and_audited() {
        let mut fixture = granted();
        let refused = fixture
            .capabilities
            .apply(config_map("cfm-p2"))
            .await
            .unwrap_err();
        fixture.assert_denied(refused, "cluster", "apply", "ConfigMap/cfm-p2/ctx");
        assert!(!fixture.stored("cluster/cfm-p2").exists());

        let secret = fixture
            .capabilities
            .get("Secret".into(), "cfm-p1".into(), "ctx".into())
            .await
            .unwrap_err();
        assert!(matches!(secret, CapabilityError::Denied(_)), "{secret:?}");
        assert_eq!(fixture.audit().len(), 2);
    }

    #[tokio::test]
    async fn a_malformed_manifest_is_invalid_and_audited_as_a_denial() {
        let mut fixture = granted();
        let refused = fixture
            .capabilities
            .apply("{not json".into())
            .await
            .unwrap_err();
        assert!(
            matches!(&refused, CapabilityError::Invalid(m) if m.starts_with("the manifest is not JSON")),
            "{refused:?}"
        );
        let record = fixture.last_audit();
        assert_eq!(record["target"], "(not JSON)");
        assert_eq!(record["decision"], "denied");
    }

    #[test]
    fn manifests_need_identity_and_valid_names() {
        let ok = json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a","namespace":"cfm-x"}});
        let object = ObjectRef::of_manifest(&ok).unwrap();
        assert_eq!(object.grant_namespace(), "cfm-x");
        let ns = json!({"apiVersion":"v1","kind":"Namespace","metadata":{"name":"cfm-x"}});
        assert_eq!(
            ObjectRef::of_manifest(&ns).unwrap().grant_namespace(),
            "cfm-x"
        );
        for bad in [
            json!({"kind":"ConfigMap","metadata":{"name":"a","namespace":"n"}}),
            json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a"}}),
            json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"../a","namespace":"n"}}),
            json!({"apiVersion":"v1","kind":"Config/Map","metadata":{"name":"a","namespace":"n"}}),
            json!({"apiVersion":"v1","kind":"Namespace","metadata":{"name":"UPPER"}}),
        ] {
            assert!(ObjectRef::of_manifest(&bad).is_err(), "{bad} was accepted");
        }
    }
}
