//! The `secrets` capability: grant check in front of a secret store.

pub mod embedded;
pub mod vault;

use super::{BackendError, Capabilities};
use crate::bindings::cfm::plugin::secrets::{AccessCredential, Host};
use crate::bindings::cfm::plugin::types::{CapabilityError, Change};
use crate::grants::{Capability, ScopedGrants, normalize_secret_path};

/// A store of secret strings by path. Implementations must make `put_if_absent` atomic.
#[async_trait::async_trait]
pub trait SecretsBackend: Send + Sync {
    /// The secret at `path`; None when nothing is stored there.
    async fn get(&self, path: &str) -> Result<Option<String>, BackendError>;
    /// Returns the stored value (the existing one if there was one) and whether it was created.
    async fn put_if_absent(
        &self,
        path: &str,
        value: &str,
    ) -> Result<(String, Change), BackendError>;
    /// Stores `value` at `path`, replacing what is there, and says what changed.
    async fn put(&self, path: &str, value: &str) -> Result<Change, BackendError>;
    /// Removes the secret at `path`; false when there was none.
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

impl Host for Capabilities {
    async fn get(&mut self, path: String) -> Result<Option<String>, CapabilityError> {
        let (path, allowed) = self.check_secret("get", &path)?;
        let backend = self.calls.backends.secrets.clone();
        self.calls
            .guarded(
                Capability::Secrets,
                "get",
                &path,
                allowed,
                backend.get(&path),
            )
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
                Capability::Secrets,
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
            .guarded(
                Capability::Secrets,
                "put",
                &path,
                allowed,
                backend.put(&path, &value),
            )
            .await
    }

    async fn delete(&mut self, path: String) -> Result<bool, CapabilityError> {
        let (path, allowed) = self.check_secret("delete", &path)?;
        let backend = self.calls.backends.secrets.clone();
        self.calls
            .guarded(
                Capability::Secrets,
                "delete",
                &path,
                allowed,
                backend.delete(&path),
            )
            .await
    }

    async fn issue_access(&mut self, folder: String) -> Result<AccessCredential, CapabilityError> {
        let (folder, allowed) = self.check_folder("issue-access", &folder)?;
        let backend = self.calls.backends.secrets.clone();
        let (id, secret) = self
            .calls
            .guarded(
                Capability::Secrets,
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
                Capability::Secrets,
                "revoke-access",
                &folder,
                allowed,
                backend.revoke_access(&folder),
            )
            .await
    }
}

impl Capabilities {
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
        let path = normalize_secret_path(raw).map_err(|why| {
            self.calls
                .invalid(Capability::Secrets, operation, raw, why.to_string())
        })?;
        let allowed = allows(&self.calls.grants, &path);
        Ok((path, allowed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capability::fixture::Fixture;
    use crate::grants::Grants;

    fn granted() -> Fixture {
        Fixture::new(Grants {
            secrets: vec!["participants/{participantContextId}/**".into()],
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn a_granted_path_reaches_the_store() {
        let mut fixture = granted();
        let secrets = &mut fixture.capabilities;
        let created = secrets
            .put_if_absent("participants/p1/api-key".into(), "first".into())
            .await
            .unwrap();
        assert_eq!(created, ("first".to_string(), Change::Created));
        let again = secrets
            .put_if_absent("participants/p1/api-key".into(), "second".into())
            .await
            .unwrap();
        assert_eq!(again, ("first".to_string(), Change::Unchanged));
        let read = secrets.get("participants/p1/api-key".into()).await.unwrap();
        assert_eq!(read.as_deref(), Some("first"));
        assert!(
            fixture
                .stored("secrets/participants/p1/api-key.secret")
                .exists()
        );
        let record = fixture.last_audit();
        assert_eq!(record["capability"], "secrets");
        assert_eq!(record["operation"], "put-if-absent");
        assert_eq!(record["target"], "participants/p1/api-key");
        assert_eq!(record["decision"], "allowed");
        assert_eq!(record["effect"], "unchanged");
    }

    #[tokio::test]
    async fn another_participants_path_is_denied_and_audited() {
        let mut fixture = granted();
        let refused = fixture
            .capabilities
            .put("participants/p2/api-key".into(), "stolen".into())
            .await
            .unwrap_err();
        fixture.assert_denied(refused, "secrets", "put", "participants/p2/api-key");
        assert!(!fixture.stored("secrets/participants/p2").exists());
    }

    #[tokio::test]
    async fn audited_calls_are_reported_with_the_outcome_and_stay_bounded() {
        use crate::audit::{Decision, Effect};
        use crate::capability::context::MAX_REPORTED_CALLS;
        let mut fixture = granted();
        let secrets = &mut fixture.capabilities;
        secrets
            .put("participants/p1/api-key".into(), "k".into())
            .await
            .unwrap();
        secrets.get("participants/p1/api-key".into()).await.unwrap();
        secrets
            .put("participants/p2/api-key".into(), "stolen".into())
            .await
            .unwrap_err();
        let reported = fixture.capabilities.take_reported_calls();
        let seen: Vec<_> = reported
            .iter()
            .map(|c| (c.operation.as_str(), c.target.as_str(), c.decision))
            .collect();
        // The read is not audited, so not reported either.
        assert_eq!(
            seen,
            [
                (
                    "put",
                    "participants/p1/api-key",
                    Decision::Allowed(Effect::Created)
                ),
                ("put", "participants/p2/api-key", Decision::Denied),
            ]
        );
        assert!(reported.iter().all(|c| c.plugin == "under-test"
            && c.capability == "secrets"
            && !c.dry_run
            && c.at.ends_with('Z')));
        assert_eq!(fixture.audit().len(), 2, "the audit log has the same calls");

        // A plugin writing in a loop reports the first calls and one line on the rest.
        for _ in 0..MAX_REPORTED_CALLS + 50 {
            fixture
                .capabilities
                .put("participants/p1/api-key".into(), "k".into())
                .await
                .unwrap();
        }
        let reported = fixture.capabilities.take_reported_calls();
        assert_eq!(reported.len(), MAX_REPORTED_CALLS + 1);
        assert_eq!(
            reported[MAX_REPORTED_CALLS].target,
            "(further calls of this invocation are not reported)"
        );
        assert!(fixture.capabilities.take_reported_calls().is_empty());

        // A verify reports its refusals, not the writes it only pretended.
        let drift = std::sync::Arc::new(crate::capability::dry_run::DriftLog::default());
        let grants = Grants {
            secrets: vec!["participants/{participantContextId}/**".into()],
            ..Default::default()
        };
        let mut verify = fixture.verifying(&grants, drift);
        verify
            .put("participants/p1/api-key".into(), "other".into())
            .await
            .unwrap();
        verify
            .put("participants/p2/api-key".into(), "stolen".into())
            .await
            .unwrap_err();
        let reported = verify.take_reported_calls();
        assert_eq!(reported.len(), 1, "{reported:?}");
        assert_eq!(reported[0].decision, Decision::Denied);
        assert!(reported[0].dry_run);
    }

    #[tokio::test]
    async fn a_token_or_control_character_in_a_target_is_never_recorded() {
        let mut fixture = granted();
        let token = "eyJhbGciOiJFUzI1NiJ9.handed-to-the-plugin";
        fixture.capabilities.calls.used(token);
        fixture
            .capabilities
            .put(format!("participants/p2/{token}\u{1b}[2J"), "x".into())
            .await
            .unwrap_err();
        let reported = fixture.capabilities.take_reported_calls();
        let shown = "participants/p2/[token]\u{FFFD}[2J";
        assert_eq!(reported[0].target, shown);
        assert_eq!(fixture.last_audit()["target"], shown);

        // A right-to-left override cannot make a target read as another; a long one is
        // cut, however many characters were replaced, and says so.
        let long = format!("participants/p2/\u{202E}{}", "\u{7}".repeat(400));
        fixture
            .capabilities
            .put(long, "x".into())
            .await
            .unwrap_err();
        let target = fixture.capabilities.take_reported_calls()[0].target.clone();
        assert!(target.starts_with("participants/p2/\u{FFFD}"), "{target}");
        assert!(target.ends_with('…'), "{target}");
        assert!(target.len() <= 256 + '…'.len_utf8(), "{}", target.len());
    }

    #[tokio::test]
    async fn a_traversal_is_invalid_and_audited_as_a_denial() {
        let mut fixture = granted();
        let refused = fixture
            .capabilities
            .get("participants/p1/../p2/api-key".into())
            .await
            .unwrap_err();
        assert!(
            matches!(&refused, CapabilityError::Invalid(m) if m.contains("'..'")),
            "{refused:?}"
        );
        let record = fixture.last_audit();
        assert_eq!(record["target"], "participants/p1/../p2/api-key");
        assert_eq!(record["decision"], "denied");
    }

    #[tokio::test]
    async fn access_needs_the_whole_folder_and_a_store_that_issues_it() {
        let mut fixture = granted();
        let denied = fixture
            .capabilities
            .issue_access("participants".into())
            .await
            .unwrap_err();
        assert!(matches!(denied, CapabilityError::Denied(_)), "{denied:?}");
        // Granted, but files in the data directory have no credentials to issue.
        let unsupported = fixture
            .capabilities
            .issue_access("participants/p1".into())
            .await
            .unwrap_err();
        assert!(
            matches!(&unsupported, CapabilityError::Invalid(m) if m.contains("--vault-addr")),
            "{unsupported:?}"
        );
    }
}
