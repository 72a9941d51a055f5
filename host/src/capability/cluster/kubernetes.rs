//! Kubernetes objects through the API server (`kube`): server-side apply under cfm's field
//! manager, get and delete.
//!
//! Apply is forced, as controllers do: cfm owns the objects it creates for a participant,
//! so a field someone changed by hand is set back rather than blocking onboarding with a
//! conflict. Whether an apply changed anything is read from `resourceVersion`, which the
//! API server changes only when the object does, so a redelivery reports `unchanged`.
//!
//! Plugins name objects by kind (the capability's `get` and `delete` carry no
//! apiVersion), so the kinds plugins may manage are mapped to their resources here; any
//! other kind is refused as invalid.

use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::config::KubeConfigOptions;
use kube::core::ApiResource;
use kube::{Client, Config};
use serde_json::Value;

use super::{ClusterBackend, ObjectRef};
use crate::bindings::cfm::plugin::types::Change;
use crate::capability::BackendError;

/// Kind, apiVersion, plural resource name, namespaced.
const KINDS: &[(&str, &str, &str, bool)] = &[
    ("Namespace", "v1", "namespaces", false),
    ("ConfigMap", "v1", "configmaps", true),
    ("Secret", "v1", "secrets", true),
    ("Service", "v1", "services", true),
    ("ServiceAccount", "v1", "serviceaccounts", true),
    ("Deployment", "apps/v1", "deployments", true),
    (
        "NetworkPolicy",
        "networking.k8s.io/v1",
        "networkpolicies",
        true,
    ),
    ("Ingress", "networking.k8s.io/v1", "ingresses", true),
    (
        "HTTPRoute",
        "gateway.networking.k8s.io/v1",
        "httproutes",
        true,
    ),
];

/// How a target names a context of the kubeconfig kubectl would read, not a URL:
/// `context:NAME`.
pub const CONTEXT_PREFIX: &str = "context:";

/// Why no client for the cluster could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The API server's URL does not parse. The URL is not repeated: one that does not
    /// parse may still carry credentials, and errors end up in logs.
    #[error("the Kubernetes API server URL does not parse: {source}")]
    ApiServer {
        /// Why it does not parse.
        #[source]
        source: http::uri::InvalidUri,
    },
    /// No cluster in `KUBECONFIG`, `~/.kube/config` or a pod's service account.
    #[error("finding the Kubernetes cluster: {0}")]
    Infer(#[source] kube::config::InferConfigError),
    /// The kubeconfig has no such context, or it cannot be used.
    #[error("kubeconfig context '{context}': {source}")]
    Context {
        /// The context as given.
        context: String,
        /// Why it cannot be used.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// No client could be made for the cluster.
    #[error("Kubernetes client for {server}: {source}")]
    Client {
        /// The API server it was for.
        server: String,
        /// Why not.
        #[source]
        source: kube::Error,
    },
}

/// Cluster objects kept by a Kubernetes API server.
pub struct KubernetesCluster {
    client: Client,
    field_manager: String,
    server: String,
}

impl KubernetesCluster {
    /// Connects to `api_server` (a URL, or `context:NAME` for a context of the kubeconfig
    /// kubectl would read), or with none to the cluster kubectl would use (`KUBECONFIG`,
    /// `~/.kube/config`, or the in-cluster service account).
    pub async fn connect(
        api_server: Option<&str>,
        field_manager: &str,
    ) -> Result<Self, ConnectError> {
        let config = match api_server {
            Some(target) if target.starts_with(CONTEXT_PREFIX) => {
                let context = &target[CONTEXT_PREFIX.len()..];
                let options = KubeConfigOptions {
                    context: Some(context.to_string()),
                    ..KubeConfigOptions::default()
                };
                Config::from_kubeconfig(&options)
                    .await
                    .map_err(|source| ConnectError::Context {
                        context: context.to_string(),
                        source,
                    })?
            }
            Some(url) => Config::new(
                url.parse()
                    .map_err(|source| ConnectError::ApiServer { source })?,
            ),
            None => Config::infer().await.map_err(ConnectError::Infer)?,
        };
        let server = config.cluster_url.to_string();
        let client = Client::try_from(config).map_err(|source| ConnectError::Client {
            server: server.clone(),
            source,
        })?;
        Ok(Self {
            client,
            field_manager: field_manager.to_string(),
            server,
        })
    }

    /// The API server this backend talks to, for the log.
    pub fn server(&self) -> &str {
        &self.server
    }

    fn api(&self, object: &ObjectRef) -> Result<(Api<DynamicObject>, &'static str), BackendError> {
        let Some(&(kind, api_version, plural, namespaced)) =
            KINDS.iter().find(|k| k.0 == object.kind)
        else {
            let known: Vec<&str> = KINDS.iter().map(|k| k.0).collect();
            return Err(BackendError::Invalid(format!(
                "kind {} is not managed through the Kubernetes backend; known kinds: {}",
                object.kind,
                known.join(", ")
            )));
        };
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let resource = ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: api_version.into(),
            kind: kind.into(),
            plural: plural.into(),
        };
        let client = self.client.clone();
        let api = if namespaced {
            Api::namespaced_with(client, &object.namespace, &resource)
        } else {
            Api::all_with(client, &resource)
        };
        Ok((api, api_version))
    }

    fn failed(&self, object: &ObjectRef, error: kube::Error) -> BackendError {
        match error {
            // Passing states: throttling that outlasted kube's own retries (it retries 429,
            // 503 and 504 with backoff, honouring Retry-After), a conflict with a deletion in
            // progress, a namespace still terminating from an earlier dispose. Worth another
            // try of the activity.
            kube::Error::Api(status)
                if status.code == 429
                    || status.code == 409
                    || status.message.contains("being terminated") =>
            {
                BackendError::Unavailable(format!(
                    "Kubernetes deferred {}: {} ({})",
                    object.describe(),
                    status.message,
                    status.code
                ))
            }
            // The API server said no: a forbidden namespace, an invalid object. Retrying
            // the same request gets the same answer.
            kube::Error::Api(status) if (400..500).contains(&status.code) => {
                BackendError::Invalid(format!(
                    "Kubernetes refused {}: {} ({})",
                    object.describe(),
                    status.message,
                    status.code
                ))
            }
            other => {
                BackendError::Unavailable(format!("Kubernetes API server {}: {other}", self.server))
            }
        }
    }
}

#[async_trait::async_trait]
impl ClusterBackend for KubernetesCluster {
    async fn apply(&self, object: &ObjectRef, manifest: Value) -> Result<Change, BackendError> {
        let (api, api_version) = self.api(object)?;
        if manifest["apiVersion"] != api_version {
            return Err(BackendError::Invalid(format!(
                "{} must have apiVersion {api_version}",
                object.kind
            )));
        }
        let before = api
            .get_opt(&object.name)
            .await
            .map_err(|e| self.failed(object, e))?;
        let params = PatchParams::apply(&self.field_manager).force();
        let after = api
            .patch(&object.name, &params, &Patch::Apply(&manifest))
            .await
            .map_err(|e| self.failed(object, e))?;
        Ok(match before {
            None => Change::Created,
            Some(before) if before.metadata.resource_version == after.metadata.resource_version => {
                Change::Unchanged
            }
            Some(_) => Change::Updated,
        })
    }

    async fn get(&self, object: &ObjectRef) -> Result<Option<Value>, BackendError> {
        let (api, _) = self.api(object)?;
        let found = api
            .get_opt(&object.name)
            .await
            .map_err(|e| self.failed(object, e))?;
        found
            .map(|o| serde_json::to_value(o).map_err(|e| BackendError::Unavailable(e.to_string())))
            .transpose()
    }

    async fn delete(&self, object: &ObjectRef) -> Result<bool, BackendError> {
        let (api, _) = self.api(object)?;
        match api.delete(&object.name, &DeleteParams::default()).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
            Err(e) => Err(self.failed(object, e)),
        }
    }
}
