//! Secrets in Vault or OpenBao, through the KV version 2 HTTP API (the `vaultrs` client).
//!
//! A plugin's path `participants/<pc>/api-key` is the KV secret `<prefix><path>` of the
//! mount, holding one field, `value`. `put-if-absent` is one atomic write (check-and-set
//! 0: only when no version exists), so concurrent redeliveries on several agent hosts
//! create a secret once. `delete` removes the metadata with every version, so a later
//! deploy starts from nothing. The token goes in a header and nowhere else: errors name
//! the path and the server's status, never the token.
//!
//! Access credentials for a participant's runtime are AppRole credentials: per folder an
//! ACL policy that reads only that folder, and a role with that policy. Issuing writes both
//! (idempotent) and adds a secret id; revoking deletes the role, which ends every secret id
//! and token it issued, and the policy.

use std::collections::HashMap;
use std::time::Duration;

use vaultrs::api::auth::approle::requests::SetAppRoleRequest;
use vaultrs::api::kv2::requests::SetSecretRequestOptions;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;
use vaultrs::{auth::approle, kv2, sys};

use crate::bindings::cfm::plugin::types::Change;
use crate::capability::BackendError;

use super::SecretsBackend;

/// Where and how to reach the server.
#[derive(Clone)]
pub struct VaultSettings {
    /// `http://127.0.0.1:8200`.
    pub address: String,
    /// The token cfm authenticates with; never logged.
    pub token: String,
    /// The KV v2 mount (`secret` on a dev server).
    pub mount: String,
    /// Prepended to every path, so cfm's secrets stay under one folder of the mount.
    pub prefix: String,
    /// Where the AppRole auth method is mounted (`approle`), for access credentials.
    pub approle_mount: String,
}

impl std::fmt::Debug for VaultSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultSettings")
            .field("address", &self.address)
            .field("token", &"***")
            .field("mount", &self.mount)
            .field("prefix", &self.prefix)
            .field("approle_mount", &self.approle_mount)
            .finish()
    }
}

/// Secrets kept in a Vault (or OpenBao) KV v2 mount.
pub struct VaultSecrets {
    client: VaultClient,
    settings: VaultSettings,
}

/// The one field a cfm secret holds.
type Fields = HashMap<String, String>;
const FIELD: &str = "value";

impl VaultSecrets {
    /// A client for the server `settings` name; it connects on the first call.
    pub fn new(settings: VaultSettings) -> Result<Self, BackendError> {
        let client_settings = VaultClientSettingsBuilder::default()
            .address(&settings.address)
            .token(&settings.token)
            .timeout(Some(Duration::from_secs(10)))
            // Not from VAULT_SKIP_VERIFY: certificates are always checked.
            .verify(true)
            .build()
            .map_err(|e| BackendError::Invalid(format!("vault settings: {e}")))?;
        let client = VaultClient::new(client_settings)
            .map_err(|e| BackendError::Unavailable(format!("vault client: {e}")))?;
        Ok(Self { client, settings })
    }

    fn key(&self, path: &str) -> String {
        format!("{}{path}", self.settings.prefix)
    }

    fn mount(&self) -> &str {
        &self.settings.mount
    }

    /// The policy and role name of a folder: `cfm-participants-<pc>` for the default prefix.
    fn access_name(&self, folder: &str) -> String {
        self.key(folder).trim_matches('/').replace('/', "-")
    }

    async fn read(&self, path: &str) -> Result<Option<String>, BackendError> {
        match kv2::read::<Fields>(&self.client, self.mount(), &self.key(path)).await {
            Ok(mut fields) => Ok(fields.remove(FIELD)),
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(self.failed(path, e)),
        }
    }

    /// Writes `value`; with `cas`, only if the secret is at that version (0: absent).
    /// False when the check-and-set found another version.
    async fn write(&self, path: &str, value: &str, cas: Option<u32>) -> Result<bool, BackendError> {
        let fields = Fields::from([(FIELD.to_string(), value.to_string())]);
        let (mount, key) = (self.mount(), self.key(path));
        let written = match cas {
            Some(cas) => {
                kv2::set_with_options(
                    &self.client,
                    mount,
                    &key,
                    &fields,
                    SetSecretRequestOptions { cas },
                )
                .await
            }
            None => kv2::set(&self.client, mount, &key, &fields).await,
        };
        match written {
            Ok(_) => Ok(true),
            Err(ClientError::APIError { code: 400, errors })
                if errors.iter().any(|e| e.contains("check-and-set")) =>
            {
                Ok(false)
            }
            Err(e) => Err(self.failed(path, e)),
        }
    }

    /// A 5xx or no answer is worth retrying; anything else (a token without the right
    /// policy, a bad mount) is the configuration's fault. Names `what`, never the token.
    fn failed(&self, what: &str, error: ClientError) -> BackendError {
        match error {
            ClientError::APIError { code, errors } if code < 500 => BackendError::Invalid(format!(
                "vault refused {what}: {code}{}",
                explained(&errors)
            )),
            ClientError::APIError { code, errors } => BackendError::Unavailable(format!(
                "vault answered {code} for {what}{}",
                explained(&errors)
            )),
            other => BackendError::Unavailable(format!(
                "vault at {} for {what}: {}",
                self.settings.address,
                chain(&other)
            )),
        }
    }
}

#[async_trait::async_trait]
impl SecretsBackend for VaultSecrets {
    async fn get(&self, path: &str) -> Result<Option<String>, BackendError> {
        self.read(path).await
    }

    async fn put_if_absent(
        &self,
        path: &str,
        value: &str,
    ) -> Result<(String, Change), BackendError> {
        // One atomic write: several agent hosts redelivering the same task create it once.
        if self.write(path, value, Some(0)).await? {
            return Ok((value.to_string(), Change::Created));
        }
        match self.read(path).await? {
            Some(existing) => Ok((existing, Change::Unchanged)),
            None => Err(BackendError::Unavailable(format!(
                "{path} exists in vault without a readable value (a deleted version?)"
            ))),
        }
    }

    async fn put(&self, path: &str, value: &str) -> Result<Change, BackendError> {
        match self.read(path).await? {
            Some(current) if current == value => Ok(Change::Unchanged),
            existing => {
                self.write(path, value, None).await?;
                Ok(if existing.is_some() {
                    Change::Updated
                } else {
                    Change::Created
                })
            }
        }
    }

    async fn delete(&self, path: &str) -> Result<bool, BackendError> {
        let existed = self.read(path).await?.is_some();
        match kv2::delete_metadata(&self.client, self.mount(), &self.key(path)).await {
            Ok(()) => Ok(existed),
            Err(e) if status(&e) == Some(404) => Ok(existed),
            Err(e) => Err(self.failed(path, e)),
        }
    }

    async fn issue_access(&self, folder: &str) -> Result<(String, String), BackendError> {
        let name = self.access_name(folder);
        let (mount, key) = (self.mount(), self.key(folder));
        let policy = format!(
            "path \"{mount}/data/{key}/*\" {{ capabilities = [\"read\"] }}\n\
             path \"{mount}/metadata/{key}/*\" {{ capabilities = [\"read\", \"list\"] }}\n"
        );
        sys::policy::set(&self.client, &name, &policy)
            .await
            .map_err(|e| self.failed(&format!("the access policy of {folder}"), e))?;
        let what = format!("the access role of {folder}");
        let approle_mount = &self.settings.approle_mount;
        approle::role::set(
            &self.client,
            approle_mount,
            &name,
            Some(
                SetAppRoleRequest::builder()
                    .token_policies(vec![name.clone()])
                    .token_ttl("1h")
                    .token_max_ttl("24h"),
            ),
        )
        .await
        .map_err(|e| self.failed(&what, e))?;
        let role = approle::role::read_id(&self.client, approle_mount, &name)
            .await
            .map_err(|e| self.failed(&what, e))?;
        let secret = approle::role::secret::generate(&self.client, approle_mount, &name, None)
            .await
            .map_err(|e| self.failed(&what, e))?;
        Ok((role.role_id, secret.secret_id))
    }

    async fn revoke_access(&self, folder: &str) -> Result<bool, BackendError> {
        let name = self.access_name(folder);
        let what = format!("the access role of {folder}");
        let approle_mount = &self.settings.approle_mount;
        let existed = match approle::role::read(&self.client, approle_mount, &name).await {
            Ok(_) => true,
            Err(e) if status(&e) == Some(404) => false,
            Err(e) => return Err(self.failed(&what, e)),
        };
        // The role first: with it go every secret id and token it issued.
        approle::role::delete(&self.client, approle_mount, &name)
            .await
            .map_err(|e| self.failed(&what, e))?;
        sys::policy::delete(&self.client, &name)
            .await
            .map_err(|e| self.failed(&format!("the access policy of {folder}"), e))?;
        Ok(existed)
    }
}

/// The HTTP status of a Vault answer that was not a success.
fn status(error: &ClientError) -> Option<u16> {
    match error {
        ClientError::APIError { code, .. } => Some(*code),
        _ => None,
    }
}

fn explained(errors: &[String]) -> String {
    if errors.is_empty() {
        String::new()
    } else {
        format!(" ({})", errors.join("; "))
    }
}

/// An error with its causes: the client's own messages say little on their own.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
