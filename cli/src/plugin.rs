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
