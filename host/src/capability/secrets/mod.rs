//! The `secrets` capability: grant check in front of a secret store.

pub mod embedded;
pub mod vault;

use crate::bindings::cfm::plugin::secrets::{AccessCredential, Host};
use crate::bindings::cfm::plugin::types::{CapabilityError, Change};
use crate::grants::{ScopedGrants, normalize_secret_path};
use crate::runtime::Invocation;

use super::BackendError;

/// A store of secret strings by path. Implementations must make `put_if_absent` atomic.
#[async_trait::async_trait]
pub trait SecretsBackend: Send + Sync {
    async fn get(&self, path: &str) -> Result<Option<String>, BackendError>;
    /// Returns the stored value (the existing one if there was one) and whether it was created.
    async fn put_if_absent(
        &self,
        path: &str,
        value: &str,
    ) -> Result<(String, Change), BackendError>;
    async fn put(&self, path: &str, value: &str) -> Result<Change, BackendError>;
    async fn delete(&self, path: &str) -> Result<bool, BackendError>;

    /// A credential that reads only the secrets under `folder`: (id, secret).
    async fn issue_access(&self, folder: &str) -> Result<(String, String), BackendError> {
        Err(no_access(folder))
    }

    /// Revokes every credential issued for `folder`; false when there was none.
    async fn revoke_access(&self, folder: &str) -> Result<bool, BackendError> {
        Err(no_access(folder))
    }
}

/// Stores without their own authentication (files in the data directory) issue nothing.
fn no_access(folder: &str) -> BackendError {
    BackendError::Invalid(format!(
        "this secrets store issues no access credentials (for {folder}); run the agent host with --vault-addr"
    ))
}

impl Host for Invocation {
    async fn get(&mut self, path: String) -> Result<Option<String>, CapabilityError> {
        let (path, allowed) = self.check_secret("get", &path)?;
        let backend = self.calls.backends.secrets.clone();
        self.calls
            .guarded("secrets", "get", &path, allowed, backend.get(&path))
            .await
    }

    async fn put_if_absent(
        &mut self,
        path: String,
        value: String,
    ) -> Result<(String, Change), CapabilityError> {
        let (path, allowed) = self.check_secret("put-if-absent", &path)?;
        let backend = self.calls.backends.secrets.clone();
        self.calls
            .guarded(
                "secrets",
                "put-if-absent",
                &path,
                allowed,
                backend.put_if_absent(&path, &value),
            )
            .await
    }

    async fn put(&mut self, path: String, value: String) -> Result<Change, CapabilityError> {
        let (path, allowed) = self.check_secret("put", &path)?;
        let backend = self.calls.backends.secrets.clone();
        self.calls
            .guarded("secrets", "put", &path, allowed, backend.put(&path, &value))
            .await
    }

    async fn delete(&mut self, path: String) -> Result<bool, CapabilityError> {
        let (path, allowed) = self.check_secret("delete", &path)?;
        let backend = self.calls.backends.secrets.clone();
        self.calls
            .guarded("secrets", "delete", &path, allowed, backend.delete(&path))
            .await
    }

    async fn issue_access(&mut self, folder: String) -> Result<AccessCredential, CapabilityError> {
        let (folder, allowed) = self.check_folder("issue-access", &folder)?;
        let backend = self.calls.backends.secrets.clone();
        let (id, secret) = self
            .calls
            .guarded(
                "secrets",
                "issue-access",
                &folder,
                allowed,
                backend.issue_access(&folder),
            )
            .await?;
        Ok(AccessCredential { id, secret })
    }

    async fn revoke_access(&mut self, folder: String) -> Result<bool, CapabilityError> {
        let (folder, allowed) = self.check_folder("revoke-access", &folder)?;
        let backend = self.calls.backends.secrets.clone();
        self.calls
            .guarded(
                "secrets",
                "revoke-access",
                &folder,
                allowed,
                backend.revoke_access(&folder),
            )
            .await
    }
}

impl Invocation {
    fn check_secret(
        &self,
        operation: &'static str,
        raw: &str,
    ) -> Result<(String, bool), CapabilityError> {
        self.check_path(operation, raw, ScopedGrants::allows_secret)
    }

    fn check_folder(
        &self,
        operation: &'static str,
        raw: &str,
    ) -> Result<(String, bool), CapabilityError> {
        self.check_path(operation, raw, ScopedGrants::allows_folder)
    }

    /// `raw` normalised (traversal and encodings refused, and audited), and whether
    /// `allows` grants it.
    fn check_path(
        &self,
        operation: &'static str,
        raw: &str,
        allows: fn(&ScopedGrants, &str) -> bool,
    ) -> Result<(String, bool), CapabilityError> {
        let path = normalize_secret_path(raw)
            .map_err(|why| self.calls.invalid("secrets", operation, raw, why))?;
        let allowed = allows(&self.calls.grants, &path);
        Ok((path, allowed))
    }
}
