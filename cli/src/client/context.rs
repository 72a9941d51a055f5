//! Contexts: named cfm API addresses with the token file to use for each, kept in a
//! TOML file as kubectl keeps its kubeconfig. The file names token files, never holds a
//! token, so it can be shared and backed up without leaking one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde::{Deserialize, Serialize};

use super::{ClientError, Result};

/// Manage contexts: which cfm the client commands talk to.
#[derive(Subcommand)]
pub(crate) enum ContextCommand {
    /// Create or change a context, and use it when none is in use yet.
    Set {
        /// The context's name.
        name: String,
        /// The cfm server's address, e.g. `https://cfm.example.com`.
        #[arg(long)]
        api: String,
        /// A file holding the API token (its first line), e.g. `cfm-data/admin.token`.
        /// Stored as an absolute path.
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Use this context from now on.
    Use { name: String },
    /// List the contexts; `*` marks the one in use.
    List,
    /// Remove a context.
    Delete { name: String },
}

/// The contexts file: `$CFM_CONFIG`, else `$XDG_CONFIG_HOME/cfm/config.toml`, else
/// `~/.config/cfm/config.toml`.
#[derive(Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) struct Contexts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) current_context: Option<String>,
    #[serde(default)]
    pub(super) contexts: BTreeMap<String, Context>,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) struct Context {
    pub(super) api: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) token_file: Option<PathBuf>,
}

impl Contexts {
    /// The file's contexts; none when there is no file.
    pub(super) fn load() -> Result<(Contexts, Option<PathBuf>)> {
        let Some(path) = config_path() else {
            return Ok((Contexts::default(), None));
        };
        let contexts = match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| {
                ClientError::Usage(format!(
                    "the contexts file {} is not valid: {e}",
                    path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Contexts::default(),
            Err(e) => {
                return Err(ClientError::Usage(format!(
                    "cannot read the contexts file {}: {e}",
                    path.display()
                )));
            }
        };
        Ok((contexts, Some(path)))
    }

    /// The context `name` names, or the one in use when `name` is None.
    pub(super) fn resolve(&self, name: Option<&str>) -> Result<Option<&Context>> {
        match name.or(self.current_context.as_deref()) {
            None => Ok(None),
            Some(name) => self.contexts.get(name).map(Some).ok_or_else(|| {
                ClientError::Usage(format!("no context named {name:?} (`cfm context list`)"))
            }),
        }
    }

    fn save(&self, path: &Path) -> Result<()> {
        let fail = |e: &dyn std::fmt::Display| {
            ClientError::Usage(format!(
                "cannot write the contexts file {}: {e}",
                path.display()
            ))
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| fail(&e))?;
        }
        let text = toml::to_string(self).map_err(|e| fail(&e))?;
        // Written whole to a new file of its own beside it, then renamed over: an
        // interrupted write never leaves half a file, and no other file is followed into.
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut partial = tempfile::NamedTempFile::new_in(dir).map_err(|e| fail(&e))?;
        std::io::Write::write_all(&mut partial, text.as_bytes()).map_err(|e| fail(&e))?;
        partial.persist(path).map_err(|e| fail(&e.error))?;
        Ok(())
    }
}

/// Runs a `cfm context` command.
pub(crate) fn run(command: ContextCommand) -> anyhow::Result<()> {
    let (mut contexts, path) = Contexts::load()?;
    let path = path.ok_or_else(|| {
        ClientError::Usage("no place for the contexts file: set CFM_CONFIG or HOME".into())
    })?;
    match command {
        ContextCommand::Set {
            name,
            api,
            token_file,
        } => {
            let token_file = token_file
                .map(|file| std::path::absolute(&file))
                .transpose()
                .map_err(|e| {
                    ClientError::Usage(format!("cannot resolve the token file's path: {e}"))
                })?;
            contexts
                .contexts
                .insert(name.clone(), Context { api, token_file });
            contexts.current_context.get_or_insert(name.clone());
            contexts.save(&path)?;
            println!("context {name} saved in {}", path.display());
        }
        ContextCommand::Use { name } => {
            contexts.resolve(Some(&name))?;
            contexts.current_context = Some(name.clone());
            contexts.save(&path)?;
            println!("using context {name}");
        }
        ContextCommand::List => {
            for (name, context) in &contexts.contexts {
                let mark = if contexts.current_context.as_deref() == Some(name) {
                    "*"
                } else {
                    " "
                };
                let token = context
                    .token_file
                    .as_ref()
                    .map(|f| f.display().to_string())
                    .unwrap_or_else(|| "-".into());
                println!("{mark} {name}\t{}\t{token}", context.api);
            }
        }
        ContextCommand::Delete { name } => {
            if contexts.contexts.remove(&name).is_none() {
                return Err(ClientError::Usage(format!("no context named {name:?}")).into());
            }
            if contexts.current_context.as_deref() == Some(&name) {
                contexts.current_context = None;
            }
            contexts.save(&path)?;
            println!("context {name} deleted");
        }
    }
    Ok(())
}

fn config_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CFM_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))?;
    Some(base.join("cfm").join("config.toml"))
}
