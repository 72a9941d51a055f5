//! Loading a plugin: read its file, check the pinned digest and the signature, compile
//! it (or take the cached artifact), refuse imports its grants do not open, and link
//! what it was granted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::{Component, HasSelf, Linker};

use super::cache::CompileCache;
use super::invoke::Invocation;
use crate::bindings::ActivityPluginPre;
use crate::bindings::cfm::plugin::{cluster, dns, log, secrets, tokens};
use crate::capability::Capabilities;
use crate::capability::http::PluginHttp;
use crate::config::{HostConfig, Limits, PluginConfig};
use crate::error::HostError;
use crate::grants::{Capability, Grants};

/// A plugin ready to be instantiated, with what each invocation of it needs.
pub(super) struct LoadedPlugin {
    pub(super) name: Arc<str>,
    /// The sha256 of the component file, lowercase hex: reported with every outcome.
    pub(super) sha256: Arc<str>,
    pub(super) pre: ActivityPluginPre<Invocation>,
    pub(super) limits: Limits,
    pub(super) grants: Grants,
    pub(super) settings: String,
    /// Present when the plugin has an `http` grant.
    pub(super) http: Option<PluginHttp>,
}

/// Where a plugin's signature lives: beside it, `.sig` appended.
pub fn signature_path(plugin: &Path) -> PathBuf {
    let mut name = plugin.as_os_str().to_owned();
    name.push(".sig");
    name.into()
}

/// Every plugin of `config`, by the activity types it serves.
pub(super) fn load_all(
    engine: &Engine,
    config: &HostConfig,
    cache: Option<&CompileCache>,
) -> Result<HashMap<String, Arc<LoadedPlugin>>, HostError> {
    let mut by_activity_type = HashMap::new();
    // Several entries may run one component under different grants (the EDC-V agents do):
    // it is compiled once.
    let mut compiled = HashMap::new();
    for plugin in &config.plugins {
        let loaded = Arc::new(load(engine, config, plugin, cache, &mut compiled)?);
        for activity_type in &plugin.activity_types {
            by_activity_type.insert(activity_type.clone(), loaded.clone());
        }
        tracing::info!(plugin = %plugin.name, sha256 = %plugin.sha256, types = ?plugin.activity_types, "plugin loaded");
    }
    Ok(by_activity_type)
}

pub(super) fn load(
    engine: &Engine,
    config: &HostConfig,
    plugin: &PluginConfig,
    cache: Option<&CompileCache>,
    compiled: &mut HashMap<String, Component>,
) -> Result<LoadedPlugin, HostError> {
    let path = config.plugin_path(plugin);
    let failed = |message: String| HostError::Load {
        plugin: plugin.name.clone(),
        message,
    };
    let bytes = std::fs::read(&path).map_err(|source| HostError::Io {
        what: format!("plugin '{}': reading {}", plugin.name, path.display()),
        source,
    })?;
    let actual = hex::encode(Sha256::digest(&bytes));
    if !actual.eq_ignore_ascii_case(&plugin.sha256) {
        return Err(HostError::Digest {
            plugin: plugin.name.clone(),
            path: path.display().to_string(),
            expected: plugin.sha256.to_ascii_lowercase(),
            actual,
        });
    }
    if !plugin.trusted_keys.is_empty() {
        check_signature(plugin, &path, &actual)?;
    }
    let component = match compiled.get(&actual) {
        Some(component) => component.clone(),
        None => {
            let component = compile(engine, &bytes, &actual, cache).map_err(|e| {
                failed(format!(
                    "{} is not a valid component: {e:#}",
                    path.display()
                ))
            })?;
            compiled.insert(actual.clone(), component.clone());
            component
        }
    };

    // Deny by default: a plugin that imports a capability its configuration does not
    // grant is refused at load time, naming the capability, rather than failing later.
    let grants = &plugin.grants;
    for (import, _) in component.component_type().imports(engine) {
        let Some(needed) = Capability::from_import(import) else {
            continue;
        };
        if !grants.opens(needed) {
            return Err(failed(format!(
                "it imports the '{needed}' capability, but its configuration grants none; add a [plugin.grants] entry for it"
            )));
        }
    }

    let mut linker: Linker<Invocation> = Linker::new(engine);
    let link = |e: wasmtime::Error| failed(format!("linking: {e:#}"));
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(link)?;
    log::add_to_linker::<_, HasSelf<Capabilities>>(&mut linker, Invocation::capabilities)
        .map_err(link)?;
    // Only granted capabilities are linked.
    if grants.opens(Capability::Secrets) {
        secrets::add_to_linker::<_, HasSelf<Capabilities>>(&mut linker, Invocation::capabilities)
            .map_err(link)?;
    }
    if grants.opens(Capability::Cluster) {
        cluster::add_to_linker::<_, HasSelf<Capabilities>>(&mut linker, Invocation::capabilities)
            .map_err(link)?;
    }
    if grants.opens(Capability::Dns) {
        dns::add_to_linker::<_, HasSelf<Capabilities>>(&mut linker, Invocation::capabilities)
            .map_err(link)?;
    }
    if grants.opens(Capability::Tokens) {
        tokens::add_to_linker::<_, HasSelf<Capabilities>>(&mut linker, Invocation::capabilities)
            .map_err(link)?;
    }
    let http = match &grants.http {
        Some(grant) => {
            wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(link)?;
            Some(PluginHttp::new(grant).map_err(|e| failed(e.to_string()))?)
        }
        None => None,
    };
    let pre = linker
        .instantiate_pre(&component)
        .and_then(ActivityPluginPre::new)
        .map_err(|e| failed(format!("does not fit the cfm:plugin contract: {e:#}")))?;
    let settings = serde_json::to_string(&plugin.settings)
        .map_err(|e| failed(format!("settings cannot be turned into JSON: {e}")))?;
    Ok(LoadedPlugin {
        name: plugin.name.as_str().into(),
        sha256: plugin.sha256.to_ascii_lowercase().into(),
        pre,
        limits: plugin.limits,
        grants: plugin.grants.clone(),
        settings,
        http,
    })
}

/// The plugin's signature file must verify with one of its trusted keys.
fn check_signature(plugin: &PluginConfig, path: &Path, digest: &str) -> Result<(), HostError> {
    let signature_path = signature_path(path);
    let refused = |reason: String| HostError::Signature {
        plugin: plugin.name.clone(),
        path: signature_path.display().to_string(),
        reason,
    };
    let signature = match std::fs::read_to_string(&signature_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(refused(
                "missing, and the configuration requires a signature by a trusted key".into(),
            ));
        }
        Err(e) => return Err(refused(e.to_string())),
    };
    crate::signature::verify(&plugin.trusted_keys, digest, &signature)
        .map_err(|e| refused(e.to_string()))
}

/// Compiles a component, or loads the artifact a previous run compiled from the same
/// bytes with the same engine settings and wasmtime version.
fn compile(
    engine: &Engine,
    bytes: &[u8],
    digest: &str,
    cache: Option<&CompileCache>,
) -> wasmtime::Result<Component> {
    let Some(cache) = cache else {
        return Component::new(engine, bytes);
    };
    if let Some(component) = cache.load(engine, digest) {
        return Ok(component);
    }
    let component = Component::new(engine, bytes)?;
    cache.store(engine, digest, &component);
    Ok(component)
}
