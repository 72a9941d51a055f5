//! Secrets kept in files under the data directory (mode 0600), for the embedded default.
//! Production deployments point the host at Vault/OpenBao instead.

use std::path::PathBuf;

use crate::bindings::cfm::plugin::types::Change;
use crate::capability::BackendError;
use crate::capability::files::{self, blocking};

use super::SecretsBackend;

/// Secrets kept as files under a folder.
pub struct EmbeddedSecrets {
    root: PathBuf,
}

impl EmbeddedSecrets {
    /// Secrets kept under `root`.
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// `a/b` lives in `a/b.secret`, so `a/b` and `a/b/c` can both exist.
    fn file(&self, path: &str) -> PathBuf {
        self.root.join(format!("{path}.secret"))
    }
}

#[async_trait::async_trait]
impl SecretsBackend for EmbeddedSecrets {
    async fn get(&self, path: &str) -> Result<Option<String>, BackendError> {
        let file = self.file(path);
        let bytes = blocking(move || files::read_optional(&file)).await?;
        bytes.map(into_string).transpose()
    }

    async fn put_if_absent(
        &self,
        path: &str,
        value: &str,
    ) -> Result<(String, Change), BackendError> {
        let file = self.file(path);
        let value = value.to_string();
        blocking(move || {
            if files::create_exclusive(&file, value.as_bytes())? {
                return Ok(Ok((value, Change::Created)));
            }
            let existing = files::read_optional(&file)?.unwrap_or_default();
            Ok(into_string(existing).map(|v| (v, Change::Unchanged)))
        })
        .await?
    }

    async fn put(&self, path: &str, value: &str) -> Result<Change, BackendError> {
        let file = self.file(path);
        let value = value.to_string();
        blocking(move || {
            files::replace_unless(&file, value.as_bytes(), |current| {
                current == value.as_bytes()
            })
        })
        .await
    }

    async fn delete(&self, path: &str) -> Result<bool, BackendError> {
        let file = self.file(path);
        blocking(move || files::remove(&file)).await
    }
}

fn into_string(bytes: Vec<u8>) -> Result<String, BackendError> {
    String::from_utf8(bytes)
        .map_err(|_| BackendError::Unavailable("stored secret is not UTF-8".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_if_absent_keeps_the_first_value() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedSecrets::new(dir.path().to_path_buf());
        let first = store.put_if_absent("p/1/key", "a").await.unwrap();
        assert_eq!(first, ("a".to_string(), Change::Created));
        let second = store.put_if_absent("p/1/key", "b").await.unwrap();
        assert_eq!(second, ("a".to_string(), Change::Unchanged));
        // A secret and a folder of the same name coexist.
        store.put("p/1/key/sub", "c").await.unwrap();
        assert_eq!(store.get("p/1/key").await.unwrap().as_deref(), Some("a"));
        assert!(store.delete("p/1/key").await.unwrap());
        assert_eq!(store.get("p/1/key").await.unwrap(), None);
    }
}
