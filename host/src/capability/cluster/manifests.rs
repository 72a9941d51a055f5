//! Cluster objects rendered as YAML manifests under the data directory, for the embedded
//! default: `<root>/<namespace>/<Kind>/<name>.yaml` (`_cluster` for cluster-scoped objects),
//! ready for `kubectl apply -R -f`. Production deployments use the Kubernetes API instead.
//!
//! The directory is meant to be committed to a Git repository that Argo CD or Flux syncs,
//! so a `Secret` that carries data is refused rather than written there in plain text.

use std::path::PathBuf;

use serde_json::Value;
use tokio::sync::Mutex;

use crate::bindings::cfm::plugin::types::Change;
use crate::capability::BackendError;
use crate::capability::files::{self, blocking};

use super::{ClusterBackend, ObjectRef};

/// One [`ManifestCluster`] per cell, each in `<root>/<cell id>/`, made on first use.
pub struct FolderPerCell {
    root: PathBuf,
    cells: std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<ManifestCluster>>>,
}

impl FolderPerCell {
    /// Cells' folders under `root`.
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            cells: Default::default(),
        }
    }

    /// The cell's cluster; None for an id that is not a plain name (ids are UUIDs the
    /// manager chose), so that no id reaches outside `root`.
    pub fn cell(&self, cell: &str) -> Option<std::sync::Arc<ManifestCluster>> {
        let plain = !cell.is_empty()
            && cell.len() <= 64
            && cell
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !cell.starts_with('_');
        if !plain {
            return None;
        }
        let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        let cluster = cells
            .entry(cell.to_string())
            .or_insert_with(|| std::sync::Arc::new(ManifestCluster::new(self.root.join(cell))));
        Some(cluster.clone())
    }
}

/// Cluster objects as YAML manifests in a folder.
pub struct ManifestCluster {
    root: PathBuf,
    /// Apply is read-compare-write; one writer at a time keeps it exact: this mutex in
    /// the process, an advisory lock on `<root>/.lock` between processes sharing the folder.
    write: Mutex<()>,
}

impl ManifestCluster {
    /// Manifests kept under `root`.
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            write: Mutex::new(()),
        }
    }

    fn file(&self, object: &ObjectRef) -> PathBuf {
        let scope = if object.namespace.is_empty() {
            "_cluster"
        } else {
            &object.namespace
        };
        self.root
            .join(scope)
            .join(&object.kind)
            .join(format!("{}.yaml", object.name))
    }
}

#[async_trait::async_trait]
impl ClusterBackend for ManifestCluster {
    async fn apply(&self, object: &ObjectRef, manifest: Value) -> Result<Change, BackendError> {
        if object.kind == "Secret" && carries_data(&manifest) {
            return Err(BackendError::Invalid(format!(
                "Secret {}/{} carries data, and cfm writes no secret in plain text into a \
                 manifests directory (it is meant for Git): use the Kubernetes backend \
                 (--kubernetes) for this plugin's Secrets",
                object.namespace, object.name
            )));
        }
        let _guard = self.write.lock().await;
        let file = self.file(object);
        let lock = self.root.join(".lock");
        let yaml = serde_yaml_ng::to_string(&manifest)
            .map_err(|e| BackendError::Invalid(format!("cannot render the manifest: {e}")))?;
        blocking(move || {
            files::locked(&lock, || {
                files::replace_unless(&file, yaml.as_bytes(), |current| {
                    serde_yaml_ng::from_slice::<Value>(current).is_ok_and(|v| v == manifest)
                })
            })
        })
        .await
    }

    async fn get(&self, object: &ObjectRef) -> Result<Option<Value>, BackendError> {
        let file = self.file(object);
        let bytes = blocking(move || files::read_optional(&file)).await?;
        bytes
            .map(|b| {
                serde_yaml_ng::from_slice(&b).map_err(|e| {
                    BackendError::Unavailable(format!("stored manifest is corrupt: {e}"))
                })
            })
            .transpose()
    }

    async fn delete(&self, object: &ObjectRef) -> Result<bool, BackendError> {
        let _guard = self.write.lock().await;
        let file = self.file(object);
        blocking(move || files::remove(&file)).await
    }
}

/// Whether a Secret manifest holds values (`data` or `stringData` with any key).
fn carries_data(manifest: &Value) -> bool {
    ["data", "stringData"]
        .iter()
        .any(|field| manifest[field].as_object().is_some_and(|m| !m.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn apply_is_idempotent_and_renders_yaml() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = ManifestCluster::new(dir.path().to_path_buf());
        let manifest = json!({"apiVersion":"v1","kind":"ConfigMap",
            "metadata":{"name":"cfg","namespace":"cfm-a"},"data":{"k":"v"}});
        let object = ObjectRef::of_manifest(&manifest).unwrap();
        assert_eq!(
            cluster.apply(&object, manifest.clone()).await.unwrap(),
            Change::Created
        );
        assert_eq!(
            cluster.apply(&object, manifest.clone()).await.unwrap(),
            Change::Unchanged
        );
        let yaml = std::fs::read_to_string(dir.path().join("cfm-a/ConfigMap/cfg.yaml")).unwrap();
        assert!(yaml.contains("kind: ConfigMap"), "{yaml}");
        assert_eq!(cluster.get(&object).await.unwrap(), Some(manifest));
        assert!(cluster.delete(&object).await.unwrap());
        assert_eq!(cluster.get(&object).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_secret_with_data_is_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = ManifestCluster::new(dir.path().to_path_buf());
        for field in ["data", "stringData"] {
            let manifest = json!({"apiVersion":"v1","kind":"Secret",
                "metadata":{"name":"access","namespace":"cfm-a"}, field: {"secretId":"s3cr3t"}});
            let object = ObjectRef::of_manifest(&manifest).unwrap();
            let refused = cluster.apply(&object, manifest).await.unwrap_err();
            assert!(matches!(refused, BackendError::Invalid(_)), "{refused:?}");
            assert!(refused.to_string().contains("--kubernetes"), "{refused}");
            assert!(!refused.to_string().contains("s3cr3t"), "{refused}");
        }
        assert!(!dir.path().join("cfm-a").exists());
        // A Secret without values (a placeholder another tool fills) is just a manifest.
        let empty = json!({"apiVersion":"v1","kind":"Secret",
            "metadata":{"name":"access","namespace":"cfm-a"}});
        let object = ObjectRef::of_manifest(&empty).unwrap();
        assert_eq!(
            cluster.apply(&object, empty).await.unwrap(),
            Change::Created
        );
    }
}
