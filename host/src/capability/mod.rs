//! Capabilities a plugin can be granted: one module per WIT interface (and `http` for
//! `wasi:http`), each with its grant check (`mod.rs`) and its backends side by side.
//!
//! The grant check sits in front of every backend, so swapping the embedded backends
//! for Vault, Kubernetes or RFC 2136 later changes nothing a plugin may reach. Each
//! capability implements its WIT host trait on [`Capabilities`], the per-invocation
//! context the runtime's store data owns.

pub mod cluster;
mod context;
pub mod dns;
pub mod dry_run;
pub mod files;
#[cfg(test)]
mod fixture;
pub mod http;
pub mod log;
pub mod secrets;
pub mod tokens;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// What a write did; backends answer it.
pub use crate::bindings::cfm::plugin::types::Change;
pub use context::{CallContext, Capabilities, MAX_AUDITED_DENIALS};

/// The backends capability calls end in.
#[derive(Clone)]
pub struct Backends {
    /// Where the `secrets` capability keeps secrets.
    pub secrets: Arc<dyn secrets::SecretsBackend>,
    /// Where the `cluster` capability keeps objects.
    pub cluster: Arc<dyn cluster::ClusterBackend>,
    /// Where the `dns` capability keeps records.
    pub dns: Arc<dyn dns::DnsBackend>,
    /// Where the `tokens` capability gets tokens, and the http capability the subject token.
    pub tokens: Arc<dyn tokens::TokenBackend>,
    /// With the embedded cluster backend: one folder of manifests per cell, which
    /// [`Backends::for_cell`] picks for each invocation.
    pub cluster_per_cell: Option<Arc<cluster::manifests::FolderPerCell>>,
    /// Cells with a cluster of their own (a Kubernetes API server or kubeconfig context),
    /// by cell id or external id: they take precedence over `cluster`.
    pub cluster_by_cell: Arc<BTreeMap<String, Arc<dyn cluster::ClusterBackend>>>,
}

impl Backends {
    /// The embedded backends: everything kept in files under `data_dir`.
    pub fn embedded(data_dir: &Path) -> Self {
        Self {
            secrets: Arc::new(secrets::embedded::EmbeddedSecrets::new(
                data_dir.join("secrets"),
            )),
            cluster: Arc::new(cluster::manifests::ManifestCluster::new(
                data_dir.join("cluster"),
            )),
            dns: Arc::new(dns::zonefile::ZoneFiles::new(data_dir.join("dns"))),
            tokens: Arc::new(tokens::Unconfigured),
            cluster_per_cell: Some(Arc::new(cluster::manifests::FolderPerCell::new(
                data_dir.join("cluster"),
            ))),
            cluster_by_cell: Arc::default(),
        }
    }

    /// The backends an invocation acting on a cell (its id and external id) uses: the
    /// cell's own cluster when it was given one; else, with the embedded cluster, the
    /// cell's own folder (`cluster/<cell id>/...`), so that moving a participant between
    /// cells really moves its objects; anything else is shared by every cell.
    pub fn for_cell(&self, cell_id: &str, external_id: &str) -> Self {
        let own = [cell_id, external_id]
            .into_iter()
            .filter(|key| !key.is_empty())
            .find_map(|key| self.cluster_by_cell.get(key));
        if let Some(cluster) = own {
            return Self {
                cluster: cluster.clone(),
                ..self.clone()
            };
        }
        match self.cluster_per_cell.as_ref().and_then(|f| f.cell(cell_id)) {
            Some(cluster) => Self {
                cluster,
                ..self.clone()
            },
            None => self.clone(),
        }
    }

    /// The same, with `cell` (its id or external id) keeping its objects in `cluster`.
    pub fn with_cell_cluster(
        mut self,
        cell: impl Into<String>,
        cluster: Arc<dyn cluster::ClusterBackend>,
    ) -> Self {
        Arc::make_mut(&mut self.cluster_by_cell).insert(cell.into(), cluster);
        self
    }

    /// The same, with secrets kept by `secrets` (Vault/OpenBao) instead.
    pub fn with_secrets(self, secrets: Arc<dyn secrets::SecretsBackend>) -> Self {
        Self { secrets, ..self }
    }

    /// The same, with cluster objects kept by `cluster` (the Kubernetes API) instead.
    pub fn with_cluster(self, cluster: Arc<dyn cluster::ClusterBackend>) -> Self {
        Self {
            cluster,
            cluster_per_cell: None,
            ..self
        }
    }

    /// The same, with DNS records kept by `dns` (an authoritative server) instead.
    pub fn with_dns(self, dns: Arc<dyn dns::DnsBackend>) -> Self {
        Self { dns, ..self }
    }

    /// The same, with tokens exchanged by `tokens` (a token service) instead of refused.
    pub fn with_tokens(self, tokens: Arc<dyn tokens::TokenBackend>) -> Self {
        Self { tokens, ..self }
    }
}

/// Why a backend call failed, before it is handed to the plugin.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The call is malformed, or the backend refuses it: the same call gets the same answer.
    #[error("{0}")]
    Invalid(String),
    /// The backend could not be reached or failed: a later try may succeed.
    #[error("{0}")]
    Unavailable(String),
}

impl From<std::io::Error> for BackendError {
    fn from(e: std::io::Error) -> Self {
        BackendError::Unavailable(format!("storage error: {e}"))
    }
}
