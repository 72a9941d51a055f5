//! Secrets in Vault or OpenBao, through the KV version 2 HTTP API.
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

use std::time::Duration;

use serde_json::{Value, json};

use crate::bindings::cfm::plugin::types::Change;
use crate::capability::BackendError;

use super::SecretsBackend;

/// Where and how to reach the server.
#[derive(Clone)]
pub struct VaultSettings {
    /// `http://127.0.0.1:8200`.
    pub address: String,
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

pub struct VaultSecrets {
    http: reqwest::Client,
    settings: VaultSettings,
}

impl VaultSecrets {
    pub fn new(settings: VaultSettings) -> Result<Self, BackendError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| BackendError::Unavailable(format!("HTTP client: {e}")))?;
        Ok(Self { http, settings })
    }

    fn url(&self, kind: &str, path: &str) -> String {
        self.api(&format!(
            "{}/{kind}/{}{path}",
            self.settings.mount, self.settings.prefix
        ))
    }

    fn api(&self, path: &str) -> String {
        format!("{}/v1/{path}", self.settings.address.trim_end_matches('/'))
    }

    /// The policy and role name of a folder: `cfm-participants-<pc>` for the default prefix.
    fn access_name(&self, folder: &str) -> String {
        format!("{}{folder}", self.settings.prefix)
            .trim_matches('/')
            .replace('/', "-")
    }

    fn role_url(&self, name: &str, rest: &str) -> String {
        self.api(&format!(
            "auth/{}/role/{name}{rest}",
            self.settings.approle_mount
        ))
    }

    /// Sends an administrative request; anything but 2xx is a refusal naming `what`.
    async fn admin(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<Value, BackendError> {
        let (status, body) = self.send(request, what).await?;
        if status.is_success() {
            Ok(body)
        } else {
            Err(refused(status, what, &body))
        }
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        path: &str,
    ) -> Result<(reqwest::StatusCode, Value), BackendError> {
        let response = request
            .header("X-Vault-Token", &self.settings.token)
            .send()
            .await
            .map_err(|e| {
                BackendError::Unavailable(format!(
                    "vault at {}: {}",
                    self.settings.address,
                    e.without_url()
                ))
            })?;
        let status = response.status();
        let body = response.json::<Value>().await.unwrap_or(Value::Null);
        if status.is_server_error() {
            return Err(BackendError::Unavailable(format!(
                "vault answered {status} for {path}"
            )));
        }
        Ok((status, body))
    }

    async fn read(&self, path: &str) -> Result<Option<String>, BackendError> {
        let (status, body) = self
            .send(self.http.get(self.url("data", path)), path)
            .await?;
        match status.as_u16() {
            200 => Ok(body["data"]["data"]["value"].as_str().map(String::from)),
            404 => Ok(None),
            _ => Err(refused(status, path, &body)),
        }
    }

    async fn write(&self, path: &str, value: &str, cas: Option<u64>) -> Result<bool, BackendError> {
        let mut payload = json!({"data": {"value": value}});
        if let Some(cas) = cas {
            payload["options"] = json!({"cas": cas});
        }
        let request = self.http.post(self.url("data", path)).json(&payload);
        let (status, body) = self.send(request, path).await?;
        match status.as_u16() {
            200 | 204 => Ok(true),
            400 if body.to_string().contains("check-and-set") => Ok(false),
            _ => Err(refused(status, path, &body)),
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
        let (status, body) = self
            .send(self.http.delete(self.url("metadata", path)), path)
            .await?;
        match status.as_u16() {
            200 | 204 | 404 => Ok(existed),
            _ => Err(refused(status, path, &body)),
        }
    }

    async fn issue_access(&self, folder: &str) -> Result<(String, String), BackendError> {
        let name = self.access_name(folder);
        let (mount, prefix) = (&self.settings.mount, &self.settings.prefix);
        let policy = format!(
            "path \"{mount}/data/{prefix}{folder}/*\" {{ capabilities = [\"read\"] }}\n\
             path \"{mount}/metadata/{prefix}{folder}/*\" {{ capabilities = [\"read\", \"list\"] }}\n"
        );
        let what = format!("the access policy of {folder}");
        self.admin(
            self.http
                .put(self.api(&format!("sys/policies/acl/{name}")))
                .json(&json!({ "policy": policy })),
            &what,
        )
        .await?;
        let what = format!("the access role of {folder}");
        self.admin(
            self.http.post(self.role_url(&name, "")).json(&json!({
                "token_policies": [name],
                "token_ttl": "1h",
                "token_max_ttl": "24h",
            })),
            &what,
        )
        .await?;
        let role = self
            .admin(self.http.get(self.role_url(&name, "/role-id")), &what)
            .await?;
        let secret = self
            .admin(self.http.post(self.role_url(&name, "/secret-id")), &what)
            .await?;
        match (
            role["data"]["role_id"].as_str(),
            secret["data"]["secret_id"].as_str(),
        ) {
            (Some(id), Some(secret)) => Ok((id.to_string(), secret.to_string())),
            _ => Err(BackendError::Unavailable(format!(
                "vault answered {what} without a role id or secret id"
            ))),
        }
    }

    async fn revoke_access(&self, folder: &str) -> Result<bool, BackendError> {
        let name = self.access_name(folder);
        let what = format!("the access role of {folder}");
        let (status, body) = self
            .send(self.http.get(self.role_url(&name, "")), &what)
            .await?;
        let existed = match status.as_u16() {
            200 => true,
            404 => false,
            _ => return Err(refused(status, &what, &body)),
        };
        // The role first: with it go every secret id and token it issued.
        self.admin(self.http.delete(self.role_url(&name, "")), &what)
            .await?;
        let what = format!("the access policy of {folder}");
        self.admin(
            self.http
                .delete(self.api(&format!("sys/policies/acl/{name}"))),
            &what,
        )
        .await?;
        Ok(existed)
    }
}

/// A 4xx other than "not found": a token without the right policy, a bad mount.
fn refused(status: reqwest::StatusCode, path: &str, body: &Value) -> BackendError {
    let errors = body["errors"].as_array().map(|e| {
        e.iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join("; ")
    });
    BackendError::Invalid(format!(
        "vault refused {path}: {status}{}",
        errors.map(|e| format!(" ({e})")).unwrap_or_default()
    ))
}
