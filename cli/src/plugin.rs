//! `cfm plugin`: tools for plugin authors and operators.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use cfm_host::runtime::signature_path;
use cfm_host::signature;
use clap::Subcommand;
use sha2::{Digest, Sha256};

#[derive(Subcommand)]
pub enum PluginCommand {
    /// Create an Ed25519 signing key (hex seed, mode 0600) and print its public key, the
    /// value a configuration lists under `trusted-keys`.
    Keygen {
        /// Where to write the key; an existing file is never overwritten.
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a plugin: writes `<FILE>.sig` and prints the file's sha256.
    Sign {
        /// A key made by `cfm plugin keygen`.
        #[arg(long)]
        key: PathBuf,
        file: PathBuf,
    },
    /// Show a component's sha256, size, imports and exports, and the capability grants
    /// it will need.
    Inspect { file: PathBuf },
    /// Load plugins of a configuration as the agent host would (digest, signature,
    /// grants, contract) without running them; all of them unless named.
    Check {
        #[arg(long)]
        config: PathBuf,
        names: Vec<String>,
    },
    /// Check a plugin's `<FILE>.sig` against trusted public keys, as the agent host does.
    Verify {
        /// A base64 public key; repeat for more.
        #[arg(long = "trusted-key", required = true)]
        trusted_keys: Vec<String>,
        file: PathBuf,
    },
}

pub fn run(command: PluginCommand) -> anyhow::Result<()> {
    match command {
        PluginCommand::Keygen { out } => {
            let key = signature::create_key_file(&out)
                .with_context(|| format!("creating {}", out.display()))?;
            println!("{}", signature::encode_public_key(&key.verifying_key()));
        }
        PluginCommand::Sign { key, file } => {
            let key = signature::read_key_file(&key)
                .with_context(|| format!("reading {}", key.display()))?;
            let digest = digest(&file)?;
            let sig_path = signature_path(&file);
            std::fs::write(&sig_path, signature::sign(&key, &digest))
                .with_context(|| format!("writing {}", sig_path.display()))?;
            println!("sha256 {digest}");
            println!("signature {}", sig_path.display());
        }
        PluginCommand::Inspect { file } => {
            let inspection = cfm_host::runtime::inspect(&file)?;
            println!("file: {}", file.display());
            println!("sha256: {}", inspection.sha256);
            println!("size: {} bytes", inspection.size);
            println!("exports:");
            for export in &inspection.exports {
                println!("  {export}");
            }
            println!("imports:");
            for import in &inspection.imports {
                println!("  {import}");
            }
            let needs = inspection.capabilities();
            println!(
                "grants needed: {}",
                if needs.is_empty() {
                    "none".to_string()
                } else {
                    needs.join(", ")
                }
            );
        }
        PluginCommand::Check { config, names } => {
            let config = cfm_host::HostConfig::load(&config)?;
            let mut failed = 0;
            for plugin in &config.plugins {
                if !names.is_empty() && !names.contains(&plugin.name) {
                    continue;
                }
                match cfm_host::runtime::check(&config, plugin) {
                    Ok(()) => println!("{}: ok", plugin.name),
                    Err(e) => {
                        failed += 1;
                        println!("{}: {e}", plugin.name);
                    }
                }
            }
            if let Some(missing) = names
                .iter()
                .find(|n| !config.plugins.iter().any(|p| &p.name == *n))
            {
                bail!("the configuration has no plugin named '{missing}'");
            }
            if failed > 0 {
                bail!("{failed} plugin(s) would not load");
            }
        }
        PluginCommand::Verify { trusted_keys, file } => {
            let digest = digest(&file)?;
            let sig_path = signature_path(&file);
            let signature = std::fs::read_to_string(&sig_path)
                .with_context(|| format!("reading {}", sig_path.display()))?;
            if let Err(e) = signature::verify(&trusted_keys, &digest, &signature) {
                bail!("{}: {e}", file.display());
            }
            println!(
                "{}: signed by a trusted key (sha256 {digest})",
                file.display()
            );
        }
    }
    Ok(())
}

fn digest(file: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}
